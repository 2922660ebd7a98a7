"""ASGI application: Django for HTTP, Channels routing for the agent and portal websockets."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from config.websocket_routing import websocket_urlpatterns  # noqa: E402
from fleet.checkin import ConfigNotModifiedFastPath  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": ConfigNotModifiedFastPath(django_asgi_app),
        "websocket": URLRouter(websocket_urlpatterns),
    }
)
