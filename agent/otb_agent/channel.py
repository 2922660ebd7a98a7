"""The box's current websocket session, as the parts of the agent use it to send frames."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, Dict, Optional

import otb_protocol

from .reporting import Reporter


class Channel:
    """Frames go out through the session the agent holds, if any; ``welcomed`` once the server
    answered hello. The session loop (:class:`otb_agent.agent.Agent`) opens and closes it."""

    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter
        self.ws: Optional[Any] = None  # a websockets connection (its class depends on the version)
        self.welcomed = False
        self.last_send = 0.0

    async def send(self, msg: Dict[str, Any]) -> bool:
        """Validate, encode and send one message; False if it could not be sent."""
        if self.ws is None:
            return False
        try:
            text = otb_protocol.encode(msg)
        except otb_protocol.ProtocolError as e:
            self.reporter.error("encode_failed", str(e), level="error", type=msg.get("type"))
            return False
        return await self.send_text(text)

    async def send_text(self, text: str) -> bool:
        """Send one encoded frame; False if there is no session or it failed (the session loop
        notices a closed connection)."""
        ws = self.ws
        if ws is None:
            return False
        try:
            await ws.send(text)
        except Exception as e:
            self.reporter.log.debug("send_failed", error=repr(e))
            return False
        self.last_send = time.monotonic()
        return True

    async def close(self, code: int, reason: str) -> None:
        """Close the current session, if any (best effort)."""
        ws = self.ws
        if ws is not None:
            await close_quietly(ws, code, reason)


async def close_quietly(ws: Any, code: int, reason: str) -> None:
    """Close ``ws`` with ``code``, giving up after 5 s; errors are ignored (best effort)."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(ws.close(code, reason), 5)
