"""A bare echo consumer: the ingest benchmark's baseline.

It does what a websocket server cannot avoid for a telemetry frame (receive it, decode the JSON,
answer with a small ``ack``) and nothing else: no authentication, no validation, no storage.
``application`` is the product's ASGI application with ``/ws/echo/`` added in front of it; only the
ingest benchmark serves it (``uvicorn bench.echo:application``): product code never routes to it.
"""

from __future__ import annotations

import json
from typing import Any

from channels.generic.websocket import AsyncWebsocketConsumer

from config.asgi import application as product_application
from fleet.live.agent import AgentConsumer, LeanDispatchMixin


class EchoConsumer(LeanDispatchMixin, AsyncWebsocketConsumer):
    # Same transport path as fleet.live.agent.AgentConsumer (its consumer loop, and its dispatch that
    # skips channels' per-frame aclose_old_connections hop), so the ratio measures validation +
    # durable storage only.
    dispatch = AgentConsumer.dispatch

    async def connect(self) -> None:
        await self.accept()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if text_data is None:
            return
        message = json.loads(text_data)
        if message.get("type") == "telemetry":
            await self.send(text_data=json.dumps({"type": "ack", "seq": message["seq"]}))
        elif message.get("type") == "hello":
            await self.send(text_data=json.dumps({"type": "welcome", "last_acked_seq": 0}))


_echo = EchoConsumer.as_asgi()


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The product, plus the echo consumer at ``/ws/echo/``."""
    if scope["type"] == "websocket" and scope["path"] == "/ws/echo/":
        await _echo(scope, receive, send)
    else:
        await product_application(scope, receive, send)
