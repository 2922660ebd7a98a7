"""The bounds of every number of an agent frame, held on receipt by a live session and stored in columns
that hold them (issue #14 item 1). The fields come from the protocol schema itself."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.utils import timezone
from otb_protocol import AGENT_TO_SERVER

from fleet.commands.models import Command
from fleet.commands.services import command_create, command_mark_sent
from fleet.core.audit import Actor
from fleet.core.models import Box
from fleet.live.gate import close_session_gate
from fleet.telemetry.storage import telemetry_rollup
from fleet.telemetry.writer import close_writer
from tests.fleet.live.test_agent import hello, open_session, sample, stored_rows, telemetry, wan
from tests.protocol.schema_walk import NumericField, numeric_fields, with_value

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

AGENT_FIELDS = numeric_fields(AGENT_TO_SERVER)
COMMAND_ID = "0b7e1f52-9c3d-4a61-8e2f-5d4c3b2a1f00"


@pytest.fixture(autouse=True)
async def _writer_closed() -> Any:
    yield
    await close_writer()
    await close_session_gate()


@pytest.fixture
def agent_box(people: Any, box_factory: Any, agent_token_factory: Any) -> tuple[Box, str]:
    box = box_factory(organization=people.org, config_hash="c" * 64)
    return box, agent_token_factory(box)


def valid_frame(message: str) -> dict[str, Any]:
    """A valid agent frame of each kind, as a live session takes it."""
    frames: dict[str, dict[str, Any]] = {
        "hello": hello(),
        "telemetry": telemetry(1, [sample(wans=[wan("wan1")])]),
        "heartbeat": {"type": "heartbeat", "ts": time.time()},
        "command_progress": {"type": "command_progress", "id": COMMAND_ID, "progress": 5, "message": ""},
        "command_result": {
            "type": "command_result",
            "id": COMMAND_ID,
            "ok": True,
            "output": {},
            "error": None,
        },
        "error": {"type": "error", "code": "x", "message": "y", "retry_after_s": 1},
    }
    return frames[message]


def field_id(field: NumericField) -> str:
    return f"{field.message}.{field.path}"


def test_every_agent_frame_has_numeric_fields_to_test() -> None:
    assert {field.message for field in AGENT_FIELDS} == {
        "hello",
        "telemetry",
        "heartbeat",
        "command_progress",
        "error",
    }


@pytest.mark.parametrize("field", AGENT_FIELDS, ids=field_id)
async def test_one_past_each_bound_gets_an_error_naming_the_field(
    agent_box: tuple[Box, str],
    field: NumericField,
) -> None:
    # given a live session (before its hello when the field is one of the hello's)
    box, token = agent_box
    communicator, _ = await open_session(token, say_hello=field.message != "hello")
    frame = valid_frame(field.message)
    # when the agent sends the value one past each bound of the field
    for value in field.past():
        await communicator.send_json_to(with_value(frame, field.parts, value))
        answer = await communicator.receive_json_from(timeout=5)
        # then an error frame names the field, and nothing is stored
        assert answer["type"] == "error", answer
        assert (answer["code"], answer["field"]) == ("invalid_frame", field.path), answer
    assert (await stored_rows(box.pk))["box"] == []
    # and the session goes on
    await communicator.send_json_to({"type": "heartbeat", "ts": time.time()})
    assert (await communicator.receive_json_from(timeout=5))["type"] == "heartbeat"
    await communicator.disconnect(timeout=5)


async def test_load1_of_1e39_is_refused_and_the_telemetry_stays_readable(
    agent_box: tuple[Box, str],
    people: Any,
    client_for: Any,
) -> None:
    # given a live session
    box, token = agent_box
    communicator, _ = await open_session(token)
    # when the agent sends a sample with load1 1e39 (was acked, stored as Infinity in a real column)
    bad = sample()
    bad["load1"] = 1e39
    await communicator.send_json_to(telemetry(1, [bad]))
    answer = await communicator.receive_json_from(timeout=5)
    # then it is refused, naming the field, and nothing is stored
    assert answer["type"] == "error" and answer["field"] == "samples[0].load1", answer
    assert (await stored_rows(box.pk))["box"] == []
    # and the same text with a literal too large for a double, NaN or Infinity, is refused too
    text = json.dumps(telemetry(2, [sample(wans=[])]), separators=(",", ":"))
    assert '"load1":0.5' in text
    for literal in ("1e400", "NaN", "Infinity", "-Infinity"):
        await communicator.send_to(text_data=text.replace('"load1":0.5', f'"load1":{literal}'))
        answer = await communicator.receive_json_from(timeout=5)
        assert answer["code"] == "invalid_frame", (literal, answer)
    # and the box's telemetry stays readable
    client = await database_sync_to_async(client_for)(people.viewer)
    response = await database_sync_to_async(client.get)(f"/api/v1/boxes/{box.pk}/telemetry?resolution=raw")
    assert response.status_code == 200, response.content
    await communicator.disconnect(timeout=5)


def extremes(bound: str) -> dict[str, Any]:
    """A telemetry sample and WAN with every number at its ``minimum`` or ``maximum`` (the sample's
    time stays now: a time at a bound is stored at the receive time, see test_late_data)."""
    frame = telemetry(1, [sample(wans=[wan("wan1")])])
    for field in numeric_fields(frozenset({"telemetry"})):
        if field.parts[-1] != "ts":
            frame = with_value(frame, field.parts, field.node[bound])
    return frame


async def test_every_bound_is_stored_and_read_back_at_every_resolution(
    agent_box: tuple[Box, str],
    people: Any,
    client_for: Any,
) -> None:
    # given a box whose agent reports every number at its maximum, then at its minimum
    box, token = agent_box
    communicator, _ = await open_session(token, say_hello=False)
    await communicator.send_json_to(hello(uptime_s=2**63 - 1, dropped_samples=2**63 - 1))
    assert (await communicator.receive_json_from(timeout=5))["type"] == "welcome"
    client = await database_sync_to_async(client_for)(people.viewer)
    status_url = f"/api/v1/boxes/{box.pk}/status"
    response = await database_sync_to_async(client.get)(status_url)
    assert response.status_code == 200, response.content
    assert (response.json()["uptime_s"], response.json()["dropped_samples"]) == (2**63 - 1, 2**63 - 1)
    high, low = extremes("maximum"), extremes("minimum")
    high["seq"], low["seq"] = 2**63 - 2, 2**63 - 1  # in order: the highest seq goes last
    for frame in (high, low):
        await communicator.send_json_to(frame)
        assert await communicator.receive_json_from(timeout=5) == {"type": "ack", "seq": frame["seq"]}
        # and the live status holds each extreme
        response = await database_sync_to_async(client.get)(status_url)
        assert response.status_code == 200, response.content
        status, reported = response.json(), frame["samples"][0]
        assert (status["load1"], status["rx_bps"]) == (reported["load1"], reported["rx_bps"])
        assert status["wans"][0]["rtt_ms"] == reported["wans"][0]["rtt_ms"]
    # and the agent reports a command result with numbers at the bounds of a free-form output
    command = await database_sync_to_async(_sent_command)(box)
    output = {"bytes": 2**53 - 1, "figures": [{"mbps": -(2**53 - 1)}, 1e15]}
    await communicator.send_json_to(
        {"type": "command_result", "id": str(command.pk), "ok": True, "output": output, "error": None}
    )
    await communicator.send_json_to({"type": "heartbeat", "ts": time.time()})
    answers = [await communicator.receive_json_from(timeout=5)]
    while answers[-1]["type"] != "heartbeat":  # the command itself may come first (its doorbell)
        answers.append(await communicator.receive_json_from(timeout=5))
    assert [answer for answer in answers if answer["type"] == "error"] == []
    await communicator.disconnect(timeout=5)
    # when the rollups run over them
    await database_sync_to_async(telemetry_rollup)(now=timezone.now() + timedelta(hours=2))
    # then every resolution reads, with the extremes in it
    now = timezone.now()
    window = {"from": (now - timedelta(hours=2)).isoformat(), "to": (now + timedelta(hours=2)).isoformat()}
    for resolution in ("raw", "5m", "1h"):
        response = await database_sync_to_async(client.get)(
            f"/api/v1/boxes/{box.pk}/telemetry", {**window, "resolution": resolution, "max_points": 2000}
        )
        assert response.status_code == 200, (resolution, response.content)
        points = response.json()["box"]
        assert sum(point["samples"] for point in points) == 2, (resolution, points)
        assert max(point["cpu_max_pct"] for point in points) == 100.0
        assert max(point["rx_max_bps"] for point in points) == float(2**63 - 1)
        rtt = [point["rtt_max_ms"] for point in response.json()["wans"][0]["points"]]
        assert max(rtt) == 600000.0, (resolution, rtt)
    response = await database_sync_to_async(client.get)(f"/api/v1/commands/{command.pk}/")
    assert response.status_code == 200, response.content
    assert response.json()["result"] == output


def _sent_command(box: Box) -> Command:
    command = command_create(actor=Actor.system("test"), box=box, kind="diagnostics", params={})
    command_mark_sent(command_id=command.pk)
    return Command.objects.get(pk=command.pk)
