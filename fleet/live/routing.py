"""Websocket routes of the fleet app (collected by config/websocket_routing.py).

``/ws/agent/`` is the agent's live session; ``/ws/live/`` is the portal's live websocket (session
auth). ``/ws/echo/`` is a bare echo consumer, routed only for the ingest benchmark baseline
(``OTB_BENCH_ECHO=1``).
"""

from __future__ import annotations

from typing import Any

from channels.auth import AuthMiddlewareStack
from channels.security.websocket import AllowedHostsOriginValidator
from django.conf import settings
from django.urls import path, re_path

from fleet.live.agent import AgentConsumer
from fleet.live.people import PortalConsumer

websocket_urlpatterns: list[Any] = [
    path("ws/agent/", AgentConsumer.as_asgi()),
]

# The portal's live websocket authenticates with the Django session: only this route gets the session
# middleware (the agent route stays free of it), behind an Origin check against ALLOWED_HOSTS
# (cookies are sent cross-site, so the Origin is what stops another site opening the socket).
websocket_urlpatterns.append(
    re_path(r"^ws/live/$", AllowedHostsOriginValidator(AuthMiddlewareStack(PortalConsumer.as_asgi())))
)

if settings.OTB.get("BENCH_ECHO"):
    from bench.echo import EchoConsumer

    websocket_urlpatterns.append(path("ws/echo/", EchoConsumer.as_asgi()))
