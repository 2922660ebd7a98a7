"""The agent's speed test (``/api/v1/agent/speedtest``): a payload of zero bytes to download, an upload
that is counted and thrown away, and at most one test per box at a time.

Neither direction holds more than one chunk in memory nor stores anything. The upload is the one
request body the API reads past ``DATA_UPLOAD_MAX_MEMORY_SIZE``: it is read in chunks and refused
beyond ``SPEEDTEST_MAX_BYTES``, the same cap as the download.

The per-box slot is a Redis key taken with ``cache.add`` (atomic SET NX). Its TTL is refreshed while
bytes move, so it measures *no progress*, not the length of the test: a slow 100 MB test keeps its
slot, and a process that dies mid-test frees it after ``SLOT_TTL_S``. The slot is released when the
upload has been read, or when the server closes the download's stream (also on a client disconnect).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol
from uuid import UUID

from django.core.cache import cache

from fleet.core.errors import InvalidInput, LengthRequired, RateLimited, TooLarge

SPEEDTEST_MAX_BYTES = 100 * 1024 * 1024
SPEEDTEST_DEFAULT_BYTES = 10 * 1024 * 1024
SPEEDTEST_CHUNK = 1024 * 1024
UPLOAD_READ_CHUNK = 64 * 1024
# A test that moves no byte for this long loses its slot.
SLOT_TTL_S = 60
# Retry-After of a refused test: long enough for a typical 10 MB test to end.
BUSY_RETRY_AFTER_S = 15

_ZEROS = bytes(SPEEDTEST_CHUNK)


class Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


@dataclass
class SpeedtestSlot:
    """The box's one speed-test slot, held by this request (see the module docstring)."""

    box_id: UUID
    owner: str = field(default_factory=lambda: secrets.token_hex(8))
    touched_at: float = field(default_factory=time.monotonic)

    @property
    def key(self) -> str:
        return f"speedtest:{self.box_id}"

    def keep(self) -> None:
        """Called as bytes move: push the expiry back, at most every third of the TTL."""
        now = time.monotonic()
        if now - self.touched_at >= SLOT_TTL_S / 3:
            cache.touch(self.key, SLOT_TTL_S)
            self.touched_at = now

    def release(self) -> None:
        """Free the slot if it is still ours (it may have expired and been taken by another test)."""
        if cache.get(self.key) == self.owner:
            cache.delete(self.key)


def speedtest_slot_acquire(*, box_id: UUID) -> SpeedtestSlot:
    """Take the box's speed-test slot; RateLimited (429, Retry-After) while another test runs."""
    slot = SpeedtestSlot(box_id=box_id)
    if not cache.add(slot.key, slot.owner, timeout=SLOT_TTL_S):
        raise RateLimited(
            "another speed test of this box is running; try again when it has finished",
            retry_after_s=BUSY_RETRY_AFTER_S,
            code="speedtest_busy",
        )
    return slot


def speedtest_download_size(raw: str | None) -> int:
    """The ``bytes`` query parameter of a download (default 10 MiB, at most 100 MiB)."""
    if raw is None:
        return SPEEDTEST_DEFAULT_BYTES
    if not raw.isascii() or not raw.isdigit() or int(raw) > SPEEDTEST_MAX_BYTES:
        raise InvalidInput(f"bytes must be a whole number from 0 to {SPEEDTEST_MAX_BYTES}", field="bytes")
    return int(raw)


class SpeedtestPayload:
    """The download: ``size`` zero bytes in chunks of up to 1 MiB. The server calls ``close()`` when
    the response ends, however it ends, which frees the slot."""

    def __init__(self, size: int, slot: SpeedtestSlot) -> None:
        self.size = size
        self.slot = slot
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        remaining = self.size
        while remaining > 0:
            chunk = min(remaining, SPEEDTEST_CHUNK)
            yield _ZEROS if chunk == SPEEDTEST_CHUNK else _ZEROS[:chunk]
            remaining -= chunk
            self.slot.keep()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.slot.release()


def speedtest_upload_size(content_length: str | None) -> int:
    """The declared size of an upload, from its ``Content-Length`` header."""
    if content_length is None or content_length == "":
        raise LengthRequired(
            "an upload needs a Content-Length header (chunked bodies are not accepted)",
            field="Content-Length",
        )
    if not content_length.isascii() or not content_length.isdigit():
        raise InvalidInput("Content-Length must be a whole number of bytes", field="Content-Length")
    size = int(content_length)
    if size > SPEEDTEST_MAX_BYTES:
        raise TooLarge(f"an upload is at most {SPEEDTEST_MAX_BYTES} bytes (100 MiB)", field="Content-Length")
    return size


def speedtest_receive(*, stream: Readable, size: int, slot: SpeedtestSlot) -> dict[str, Any]:
    """Read and discard exactly ``size`` bytes of ``stream``; answer the count and the seconds from
    the first byte to the last, as the server saw them."""
    received = 0
    first_at = last_at = 0.0
    while received < size:
        # The first read asks for one byte, so the clock starts as soon as the body starts arriving.
        chunk = stream.read(1 if received == 0 else min(UPLOAD_READ_CHUNK, size - received))
        if not chunk:
            break
        last_at = time.monotonic()
        if received == 0:
            first_at = last_at
        received += len(chunk)
        slot.keep()
    if received < size:
        raise InvalidInput(f"the body ended after {received} of {size} bytes", field="Content-Length")
    return {"bytes": received, "duration_s": round(last_at - first_at, 6)}


__all__ = [
    "SPEEDTEST_MAX_BYTES",
    "SpeedtestPayload",
    "SpeedtestSlot",
    "speedtest_download_size",
    "speedtest_receive",
    "speedtest_slot_acquire",
    "speedtest_upload_size",
]
