from django.contrib import admin
from django.urls import include, path, re_path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from config.metrics import metrics_view
from fleet.core.health import healthz
from frontend.views.accounts import admin_login

# Under /api/ even a failure outside any view answers in the API's error shape (fleet.core.api_errors).
handler400 = "fleet.core.api_errors.bad_request_handler"
handler403 = "fleet.core.api_errors.permission_denied_handler"
handler404 = "fleet.core.api_errors.not_found_handler"
handler500 = "fleet.core.api_errors.server_error_handler"

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("metrics", metrics_view, name="metrics"),
    path("admin/login/", admin_login, name="admin-login"),
    # Models that moved to the fleet core keep their old admin addresses as redirects (bookmarks).
    re_path(
        r"^admin/provisioning/region/(?P<rest>.*)$",
        RedirectView.as_view(url="/admin/fleet/region/%(rest)s", permanent=True, query_string=True),
    ),
    re_path(
        r"^admin/monitoring/event/(?P<rest>.*)$",
        RedirectView.as_view(url="/admin/fleet/event/%(rest)s", permanent=True, query_string=True),
    ),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/v1/", include("fleet.core.urls")),
    path("api/v1/", include("fleet.telemetry.urls")),
    # The claim (serial + code, or an OverTheBox device id) is otbcompat's: it may link an OTB device.
    path("api/v1/", include("otbcompat.api_urls")),
    path("api/v1/", include("provisioning.urls")),
    path("api/v1/", include("fleet.firmware.urls")),
    path("api/v1/", include("fleet.commands.urls")),
    path("api/v1/", include("fleet.monitoring.urls")),
    # Stock OverTheBox boxes: their /1.0 device protocol, routes exactly as the box writes them.
    path("1.0/", include("fleet.firmware.otb_urls")),
    path("1.0/", include("otbcompat.urls")),
    path("", include("frontend.urls")),
]
