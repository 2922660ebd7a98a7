"""URLconf for provisioning API tests: the provisioning routes as mounted in config/urls.py, without the
other apps' pages, so these tests do not depend on work in progress elsewhere."""

from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

urlpatterns = [
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/v1/", include("provisioning.urls")),
]
