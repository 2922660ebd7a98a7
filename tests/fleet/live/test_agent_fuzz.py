"""A fuzz of the agent protocol against live sessions (issue #14, "what must hold"): frames generated from
the protocol's own schema (``tests/protocol/strategies.py``), valid and invalid, sent to the real ASGI
application, channel layer, session gate, writer and PostgreSQL. Every frame gets the answer the
protocol documents for it, decided by the reference validator (``otb_protocol.decode``) and the doc, not
by the server: an ``ack``, a ``welcome``, a ``heartbeat``, nothing, or an ``error`` with a documented
code naming the field the reference names. Afterwards the box's telemetry (raw and rolled up), its status
and its command still read. Bounded: a fixed seed (derandomized) and a small budget."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from otb_protocol import (
    AGENT_TO_SERVER,
    CLOSE_TOO_BIG,
    CLOSE_UNSUPPORTED_VERSION,
    ERROR_CODES,
    MAX_FRAME_BYTES,
    SERVER_TO_AGENT,
    ProtocolError,
    UnknownMessageType,
    decode,
)

from config.asgi import application
from fleet.commands.models import Command
from fleet.commands.services import command_create, command_mark_sent
from fleet.core.audit import Actor
from fleet.core.models import Box
from fleet.live.agent import MAX_INVALID_FRAMES
from fleet.live.gate import close_session_gate
from fleet.telemetry.storage import telemetry_rollup
from fleet.telemetry.writer import close_writer
from tests.fleet.live.test_agent import hello
from tests.protocol.strategies import invalid_texts, text_of, valid_frames, with_awkward_text

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

# Frames an agent sends, valid; the rest of the schema (server frames) an agent must not send.
SERVER_TO_AGENT_ONLY = SERVER_TO_AGENT - AGENT_TO_SERVER
AGENT_FRAMES = valid_frames(AGENT_TO_SERVER)
SERVER_FRAMES = valid_frames(SERVER_TO_AGENT_ONLY)
# The command in flight on the box: half the generated command updates name it, so that they reach the
# services that store them (the other half name commands the box does not have).
FUZZ_COMMAND_ID = "0f0f0f0f-0000-4000-8000-00000000f022"
COMMAND_UPDATES = st.tuples(
    with_awkward_text(valid_frames(frozenset({"command_progress", "command_result"}))), st.booleans()
).map(lambda pair: {**pair[0], "id": FUZZ_COMMAND_ID} if pair[1] else pair[0])


@dataclass
class Expected:
    """What the server must answer to one frame (from the reference validator and the doc)."""

    answer: str  # "ack", "welcome", "heartbeat", "error" or "nothing"
    code: str = ""
    field: str | None = None  # the field an error must name (None: any, or none)
    closes: int | None = None  # the close code that follows, if the protocol closes the session
    invalid: bool = False  # counts toward the invalid-frame limit
    seq: int | None = None


def expected_for(text: str, *, command_id: str) -> Expected:
    try:
        message = decode(text)
    except UnknownMessageType:
        return Expected("error", "unknown_type", "type", invalid=True)
    except ProtocolError as exc:
        return Expected("error", "invalid_frame", exc.field_path or None, invalid=True)
    kind = message["type"]
    if kind in SERVER_TO_AGENT_ONLY:
        return Expected("error", "unknown_type", "type", invalid=True)
    if kind == "hello":
        if message["v"] != 1:
            return Expected("error", "unsupported_version", "v", closes=CLOSE_UNSUPPORTED_VERSION)
        return Expected("welcome")
    if kind == "telemetry":
        return Expected("ack", seq=message["seq"])
    if kind == "heartbeat":
        return Expected("heartbeat")
    if kind in ("command_progress", "command_result"):
        if message["id"].lower() != command_id:
            return Expected("error", "not_found", "id")
        return Expected("nothing")  # stored, or ignored once the command finished
    return Expected("nothing")  # an agent's error frame is logged


@dataclass
class Session:
    token: str
    communicator: WebsocketCommunicator | None = None
    invalid: int = 0
    answered: list[str] = field(default_factory=list)

    async def open(self) -> None:
        self.communicator = WebsocketCommunicator(
            application, "/ws/agent/", headers=[(b"authorization", f"Bearer {self.token}".encode())]
        )
        connected, _ = await self.communicator.connect(timeout=10)
        assert connected
        await self.communicator.send_json_to(hello())
        assert (await self.next_frame())["type"] == "welcome"
        self.invalid = 0

    async def close(self) -> None:
        if self.communicator is not None:
            await self.communicator.disconnect(timeout=5)
            self.communicator = None

    async def next_frame(self) -> dict[str, Any]:
        """The next frame the server sends, skipping what it pushes on its own (commands)."""
        assert self.communicator is not None
        while True:
            output = await self.communicator.receive_output(timeout=10)
            assert output["type"] == "websocket.send", output
            frame = json.loads(output["text"])
            if frame["type"] not in ("command", "config_changed"):
                return frame

    async def expect_close(self, code: int) -> None:
        assert self.communicator is not None
        output = await self.communicator.receive_output(timeout=10)
        assert output["type"] == "websocket.close" and output.get("code") == code, output
        await self.close()

    async def send(self, text: str, expected: Expected) -> None:
        if self.communicator is None or (expected.invalid and self.invalid >= MAX_INVALID_FRAMES - 1):
            await self.close()
            await self.open()
        assert self.communicator is not None
        await self.communicator.send_to(text_data=text)
        if len(text.encode()) > MAX_FRAME_BYTES:
            await self.expect_close(CLOSE_TOO_BIG)
            return
        if expected.answer == "nothing":
            # a heartbeat fences it: its answer is the next frame, and nothing came before it
            await self.communicator.send_json_to({"type": "heartbeat", "ts": time.time()})
            expected = Expected("heartbeat")
        frame = await self.next_frame()
        self.answered.append(frame["type"])
        assert frame["type"] == expected.answer, (text[:300], frame, expected)
        if expected.answer == "ack":
            assert frame["seq"] == expected.seq, (text[:300], frame)
        if expected.answer == "error":
            assert frame["code"] in ERROR_CODES, frame
            assert frame["code"] == expected.code, (text[:300], frame, expected)
            if expected.field is not None and ("field" in frame or "JSON" not in frame["message"]):
                # the reference names the field; the server may only omit it for text its JSON parser
                # refuses outright (a literal such as 1e400, which the reference reads as infinity)
                assert frame.get("field") == expected.field, (text[:300], frame, expected)
        if expected.invalid:
            self.invalid += 1
        if expected.closes is not None:
            await self.expect_close(expected.closes)


def _command_in_flight(box: Box) -> None:
    """A command sent to the box, named ``FUZZ_COMMAND_ID`` (the previous one removed)."""
    Command.objects.filter(pk=FUZZ_COMMAND_ID).delete()
    command = command_create(actor=Actor.system("fuzz"), box=box, kind="diagnostics", params={})
    Command.objects.filter(pk=command.pk).update(id=FUZZ_COMMAND_ID)
    command_mark_sent(command_id=FUZZ_COMMAND_ID)


def _reads(client: Any, box: Box, command_id: str) -> list[tuple[str, int]]:
    """Every read of the box, after a rollup run over all it was sent: (path, status)."""
    telemetry_rollup(now=timezone.now() + timedelta(hours=2))
    paths = [
        *(
            f"/api/v1/boxes/{box.pk}/telemetry?resolution={res}&max_points=2000"
            for res in ("raw", "5m", "1h")
        ),
        f"/api/v1/boxes/{box.pk}/telemetry?resolution=1h&from=1970-01-02T00:00:00Z&to=1972-01-01T00:00:00Z",
        f"/api/v1/boxes/{box.pk}/status",
        f"/api/v1/commands/{command_id}/",
        f"/api/v1/boxes/{box.pk}/commands/",
    ]
    return [(path, client.get(path).status_code) for path in paths]


# Each example is a short session: mostly valid agent frames (telemetry first), with invalid ones and
# server frames mixed in (one_of picks its branches about evenly: a branch listed twice weighs double).
TELEMETRY = valid_frames(frozenset({"telemetry"}))
FRAME_TEXTS = st.one_of(
    TELEMETRY.map(text_of),
    TELEMETRY.map(text_of),
    with_awkward_text(AGENT_FRAMES).map(text_of),
    COMMAND_UPDATES.map(text_of),
    COMMAND_UPDATES.map(text_of),
    invalid_texts(),
    invalid_texts(),
    SERVER_FRAMES.map(text_of),
)


@pytest.fixture
async def fuzz_box(people: Any, box_factory: Any, agent_token_factory: Any, client_for: Any) -> Any:
    """The box the fuzz talks for, its agent token and a person's client, made once for all examples;
    the session's writer and gate are closed after the last."""
    box = await database_sync_to_async(box_factory)("FUZZ-1", organization=people.org, config_hash="c" * 64)
    token = await database_sync_to_async(agent_token_factory)(box)
    client = await database_sync_to_async(client_for)(people.viewer)
    yield box, token, client
    await close_writer()
    await close_session_gate()


@settings(
    max_examples=60,
    derandomize=True,  # a fixed seed: the same frames on every run
    database=None,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(texts=st.lists(FRAME_TEXTS, min_size=1, max_size=12))
async def test_every_generated_frame_gets_its_documented_answer_and_reads_never_fail(
    texts: list[str], fuzz_box: tuple[Box, str, Any]
) -> None:
    # given an enrolled box with a command in flight, and a live session of it
    box, token, client = fuzz_box
    await database_sync_to_async(_command_in_flight)(box)
    session = Session(token)
    try:
        await session.open()
        # when the agent sends each generated frame, then each gets its documented answer
        for text in texts:
            await session.send(text, expected_for(text, command_id=FUZZ_COMMAND_ID))
        # and the session still answers
        await session.send(text_of({"type": "heartbeat", "ts": time.time()}), Expected("heartbeat"))
    finally:
        await session.close()
    # and every read of the box answers
    reads = await database_sync_to_async(_reads)(client, box, FUZZ_COMMAND_ID)
    assert [(path, status) for path, status in reads if status != 200] == []


def test_the_fuzz_reaches_every_answer() -> None:
    # the generator is not degenerate: across its examples, every kind of answer is expected
    seen: set[tuple[str, str]] = set()

    # 1000 examples (no server: about 2 s): with 300, a schema change that only added enum values
    # shifted the derandomised draw enough that no heartbeat came out
    @settings(max_examples=1000, derandomize=True, database=None, deadline=None)
    @given(text=FRAME_TEXTS)
    def collect(text: str) -> None:
        expected = expected_for(text, command_id=FUZZ_COMMAND_ID)
        seen.add((expected.answer, expected.code))

    collect()
    assert {answer for answer, _ in seen} >= {"ack", "welcome", "heartbeat", "error", "nothing"}
    assert {code for _, code in seen} >= {"invalid_frame", "unknown_type", "not_found", "unsupported_version"}
