"""Every websocket route of the product: the agent's live session and the people's live view."""

from __future__ import annotations

from fleet.live.routing import websocket_urlpatterns

__all__ = ["websocket_urlpatterns"]
