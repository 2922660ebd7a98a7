"""Every websocket route of the product, collected from the apps' routing modules."""

from __future__ import annotations

from typing import Any

websocket_urlpatterns: list[Any] = []

try:
    from fleet.live.routing import websocket_urlpatterns as fleet_routes
except ImportError:  # the live session is added by the agent-session work
    fleet_routes = []

websocket_urlpatterns += fleet_routes
