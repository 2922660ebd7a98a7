"""Websocket routes (collected by config/websocket_routing.py).

``/ws/agent/`` is the agent's live session; ``/ws/live/`` is the portal's live websocket (session
auth). (The ingest benchmark's echo baseline is served by its own application, ``bench.echo``.)
"""

from __future__ import annotations

from typing import Any

from channels.auth import AuthMiddlewareStack
from channels.security.websocket import AllowedHostsOriginValidator
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
