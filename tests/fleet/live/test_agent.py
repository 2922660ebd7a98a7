"""The agent websocket session against the real ASGI application, Redis channel layer and PostgreSQL."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import connection

from config.asgi import application
from fleet.core.doorbells import doorbell_command, doorbell_config_changed
from fleet.core.models import Box, Event
from fleet.live.gate import SessionGate, _gates, close_session_gate
from fleet.telemetry.models import BoxStatus, WanStatus
from fleet.telemetry.writer import TelemetryWriter, _writers, close_writer

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


@pytest.fixture(autouse=True)
async def _writer_closed() -> Any:
    yield
    await close_writer()
    await close_session_gate()


@pytest.fixture
def agent_box(people: Any, box_factory: Any, agent_token_factory: Any) -> tuple[Box, str]:
    box = box_factory(organization=people.org, config_hash="c" * 64, firmware_version="1.0.0")
    return box, agent_token_factory(box)


def hello(**overrides: Any) -> dict[str, Any]:
    frame = {
        "type": "hello",
        "v": 1,
        "agent_version": "0.1.0",
        "firmware_version": "1.0.0",
        "model": "OTB-v2c",
        "applied_config_hash": None,
        "boot_id": "boot-1",
        "uptime_s": 100,
        "dropped_samples": 0,
    }
    frame.update(overrides)
    return frame


def wan(iface: str = "wan1", *, up: bool = True, rtt: float | None = 12.5, loss: float | None = 0.0) -> dict:
    return {
        "iface": iface,
        "label": iface.upper(),
        "kind": "fiber",
        "up": up,
        "rtt_ms": rtt,
        "jitter_ms": 1.0,
        "loss_pct": loss,
        "rx_bps": 1000,
        "tx_bps": 500,
        "public_ip": "198.51.100.7",
        "subflows": 2,
    }


def sample(ts: float | None = None, wans: list[dict] | None = None) -> dict[str, Any]:
    return {
        "ts": ts or time.time(),
        "cpu_pct": 12.0,
        "mem_pct": 40.0,
        "load1": 0.5,
        "uptime_s": 100,
        "tunnel_up": True,
        "conntrack": 42,
        "rx_bps": 3000,
        "tx_bps": 1500,
        "wans": wans if wans is not None else [wan("wan1"), wan("wan2")],
    }


def telemetry(seq: int, samples: list[dict] | None = None) -> dict[str, Any]:
    return {"type": "telemetry", "seq": seq, "samples": samples or [sample()]}


async def open_session(token: str | None, *, say_hello: bool = True) -> tuple[WebsocketCommunicator, dict]:
    headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
    communicator = WebsocketCommunicator(application, "/ws/agent/", headers=headers)
    connected, _ = await communicator.connect(timeout=5)
    assert connected
    welcome: dict[str, Any] = {}
    if say_hello:
        await communicator.send_json_to(hello())
        welcome = await communicator.receive_json_from(timeout=5)
    return communicator, welcome


async def receive_close(communicator: WebsocketCommunicator) -> tuple[list[dict], int]:
    """Frames received before the close, and the close code."""
    frames: list[dict] = []
    while True:
        output = await communicator.receive_output(timeout=5)
        if output["type"] == "websocket.close":
            return frames, output.get("code", 1000)
        frames.append(json.loads(output["text"]))


@database_sync_to_async
def stored_rows(box_id: uuid.UUID) -> dict[str, Any]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT seq, idx FROM telemetry_box_sample WHERE box_id = %s ORDER BY seq, idx", [box_id]
        )
        box_rows = cursor.fetchall()
        cursor.execute("SELECT count(*) FROM telemetry_wan_sample WHERE box_id = %s", [box_id])
        wan_rows = cursor.fetchone()[0]
    return {"box": box_rows, "wan": wan_rows}


@database_sync_to_async
def status_of(box_id: uuid.UUID) -> BoxStatus:
    return BoxStatus.objects.get(box_id=box_id)


async def test_unknown_token_is_closed_with_4001(db: Any) -> None:
    # given a token nobody issued
    communicator, _ = await open_session("otba_not-a-real-token", say_hello=False)
    # when the server answers, then it closes with 4001 after an error frame
    frames, code = await receive_close(communicator)
    assert code == 4001
    assert frames[0]["code"] == "unauthorized"
    await communicator.disconnect(timeout=5)


async def test_missing_authorization_is_closed_with_4001(db: Any) -> None:
    communicator, _ = await open_session(None, say_hello=False)
    _, code = await receive_close(communicator)
    assert code == 4001
    await communicator.disconnect(timeout=5)


async def test_hello_gets_welcome_and_marks_box_online(agent_box: tuple[Box, str]) -> None:
    # given an enrolled box
    box, token = agent_box
    # when its agent says hello
    communicator, welcome = await open_session(token)
    # then the welcome carries the session, intervals, desired hash and watermark
    assert welcome["type"] == "welcome"
    assert welcome["desired_config_hash"] == "c" * 64
    assert welcome["last_acked_seq"] == 0
    assert welcome["pending_commands"] == []
    assert welcome["telemetry_interval_s"] >= 1
    status = await status_of(box.pk)
    assert status.online is True
    assert status.session_id == welcome["session_id"]
    assert status.boot_id == "boot-1"
    await communicator.disconnect(timeout=5)
    # and disconnecting marks it offline
    status = await status_of(box.pk)
    assert status.online is False
    assert status.offline_since is not None


async def test_server_shutdown_leaves_the_box_online_for_its_reconnect(agent_box: tuple[Box, str]) -> None:
    # given a box with a live session
    box, token = agent_box
    communicator, welcome = await open_session(token)
    # when the server shuts down (uvicorn closes every session with 1012)
    await communicator.disconnect(code=1012, timeout=5)
    # then the box is not marked offline (it reconnects within seconds; the sweep covers it if not)
    status = await status_of(box.pk)
    assert status.online is True
    assert status.session_id == welcome["session_id"]
    # and its reconnect takes the session over
    second, again = await open_session(token)
    assert again["session_id"] != welcome["session_id"]
    assert (await status_of(box.pk)).session_id == again["session_id"]
    await second.disconnect(timeout=5)
    assert (await status_of(box.pk)).online is False


async def test_hello_reports_new_firmware_on_the_box(agent_box: tuple[Box, str]) -> None:
    box, token = agent_box
    communicator, _ = await open_session(token, say_hello=False)
    await communicator.send_json_to(hello(firmware_version="2.0.0", agent_version="0.2.0"))
    await communicator.receive_json_from(timeout=5)
    refreshed = await database_sync_to_async(Box.objects.get)(pk=box.pk)
    assert (refreshed.firmware_version, refreshed.agent_version) == ("2.0.0", "0.2.0")
    await communicator.disconnect(timeout=5)


async def test_telemetry_is_acked_only_once_committed(agent_box: tuple[Box, str]) -> None:
    # given a session after hello
    box, token = agent_box
    communicator, _ = await open_session(token)
    # when the agent sends two samples with two WANs each
    await communicator.send_json_to(telemetry(1, [sample(time.time() - 10), sample()]))
    ack = await communicator.receive_json_from(timeout=5)
    # then the ack comes and the rows are already committed in the partitioned tables
    assert ack == {"type": "ack", "seq": 1}
    rows = await stored_rows(box.pk)
    assert rows["box"] == [(1, 0), (1, 1)]
    assert rows["wan"] == 4
    status = await status_of(box.pk)
    assert status.last_seq == 1
    assert status.wans_up == 2
    assert status.wans_total == 2
    wans = await database_sync_to_async(lambda: list(WanStatus.objects.filter(box=box).order_by("iface")))()
    assert [(w.iface, w.up, w.public_ip) for w in wans] == [
        ("wan1", True, "198.51.100.7"),
        ("wan2", True, "198.51.100.7"),
    ]
    await communicator.disconnect(timeout=5)


async def test_duplicate_seq_is_acked_but_not_stored_twice(agent_box: tuple[Box, str]) -> None:
    box, token = agent_box
    communicator, _ = await open_session(token)
    await communicator.send_json_to(telemetry(5))
    assert await communicator.receive_json_from(timeout=5) == {"type": "ack", "seq": 5}
    # when the agent resends seq 5 and an older seq 3
    await communicator.send_json_to(telemetry(5))
    assert await communicator.receive_json_from(timeout=5) == {"type": "ack", "seq": 5}
    await communicator.send_json_to(telemetry(3))
    assert await communicator.receive_json_from(timeout=5) == {"type": "ack", "seq": 3}
    # then only the first copy is stored
    rows = await stored_rows(box.pk)
    assert rows["box"] == [(5, 0)]
    await communicator.disconnect(timeout=5)
    # and a new session learns the watermark in its welcome
    communicator, welcome = await open_session(token)
    assert welcome["last_acked_seq"] == 5
    await communicator.disconnect(timeout=5)


async def test_wan_transition_updates_up_changed_at(agent_box: tuple[Box, str]) -> None:
    box, token = agent_box
    communicator, _ = await open_session(token)
    t0 = time.time() - 20
    await communicator.send_json_to(telemetry(1, [sample(t0, [wan("wan1")])]))
    await communicator.receive_json_from(timeout=5)
    await communicator.send_json_to(
        telemetry(2, [sample(t0 + 10, [wan("wan1", up=False, rtt=None, loss=100.0)])])
    )
    await communicator.receive_json_from(timeout=5)
    status = await database_sync_to_async(WanStatus.objects.get)(box=box, iface="wan1")
    assert status.up is False
    assert abs(status.up_changed_at.timestamp() - (t0 + 10)) < 0.01
    assert (await status_of(box.pk)).wans_up == 0
    await communicator.disconnect(timeout=5)


async def test_storage_unavailable_sends_error_and_no_ack(agent_box: tuple[Box, str]) -> None:
    # given a writer whose database cannot be reached
    box, token = agent_box
    communicator, _ = await open_session(token)
    import asyncio

    _writers[asyncio.get_running_loop()] = TelemetryWriter(
        conninfo={"host": "127.0.0.1", "port": 1, "dbname": "nowhere", "user": "nobody"}
    )
    # when telemetry arrives
    await communicator.send_json_to(telemetry(1))
    frame = await communicator.receive_json_from(timeout=10)
    # then the agent is told to retry and nothing is acknowledged or stored
    assert frame["type"] == "error"
    assert frame["code"] == "storage_unavailable"
    assert frame["retry_after_s"] > 0
    # and the session ends with 1013, so the agent reconnects and resends what it holds in flight
    # (it would otherwise stall once its window is full of refused frames)
    output = await communicator.receive_output(timeout=5)
    assert output["type"] == "websocket.close" and output.get("code") == 1013
    assert (await stored_rows(box.pk))["box"] == []
    assert (await status_of(box.pk)).last_seq == 0


async def test_database_down_at_connect_refuses_with_retry_after(agent_box: tuple[Box, str]) -> None:
    # given a process whose session gate cannot reach the database
    _, token = agent_box
    import asyncio

    _gates[asyncio.get_running_loop()] = SessionGate(
        conninfo={"host": "127.0.0.1", "port": 1, "dbname": "nowhere", "user": "nobody"}
    )
    # when an agent connects, then it is told to come back later (not "unauthorized")
    communicator, _ = await open_session(token, say_hello=False)
    frames, code = await receive_close(communicator)
    assert code == 4029
    assert frames[0]["code"] == "unavailable"
    assert frames[0]["retry_after_s"] > 0
    await communicator.disconnect(timeout=5)


async def test_heartbeat_is_answered(agent_box: tuple[Box, str]) -> None:
    _, token = agent_box
    communicator, _ = await open_session(token)
    await communicator.send_json_to({"type": "heartbeat", "ts": time.time()})
    frame = await communicator.receive_json_from(timeout=5)
    assert frame["type"] == "heartbeat"
    assert isinstance(frame["ts"], float)
    await communicator.disconnect(timeout=5)


async def test_config_changed_doorbell_reaches_the_session(agent_box: tuple[Box, str]) -> None:
    box, token = agent_box
    communicator, _ = await open_session(token)
    # when a service rings the doorbell (sync function, as from on_commit)
    await database_sync_to_async(doorbell_config_changed)(box.pk, "d" * 64)
    # then the agent receives config_changed
    frame = await communicator.receive_json_from(timeout=5)
    assert frame == {"type": "config_changed", "desired_config_hash": "d" * 64}
    await communicator.disconnect(timeout=5)


async def test_commands_are_delivered_in_welcome_and_by_doorbell(
    agent_box: tuple[Box, str], people: Any
) -> None:
    from django.apps import apps

    if not apps.is_installed("fleet.commands"):
        pytest.skip("fleet.commands (ops) is not installed yet: command delivery cannot be exercised")
    from fleet.commands.services import command_create
    from fleet.core.audit import Actor

    box, token = agent_box
    actor = Actor.for_user(people.owner)
    # given a command queued before the session
    first = await database_sync_to_async(command_create)(actor=actor, box=box, kind="diagnostics", params={})
    communicator, welcome = await open_session(token)
    # then the welcome carries it
    assert [command["id"] for command in welcome["pending_commands"]] == [str(first.pk)]
    # when another command is queued during the session (its service rings the doorbell on commit)
    second = await database_sync_to_async(command_create)(actor=actor, box=box, kind="reboot", params={})
    frame = await communicator.receive_json_from(timeout=5)
    # then the session sends it (the first one is redelivered too: sent, not finished)
    ids = {frame["id"]}
    if frame["id"] != str(second.pk):
        ids.add((await communicator.receive_json_from(timeout=5))["id"])
    assert str(second.pk) in ids
    # and the agent's result completes the command
    await communicator.send_json_to(
        {"type": "command_result", "id": str(second.pk), "ok": True, "output": {"done": 1}, "error": None}
    )
    await communicator.send_json_to({"type": "heartbeat", "ts": time.time()})
    assert (await communicator.receive_json_from(timeout=5))["type"] == "heartbeat"
    await second.arefresh_from_db()
    assert second.state == "succeeded"
    await communicator.disconnect(timeout=5)


async def test_command_doorbell_without_commands_sends_nothing(agent_box: tuple[Box, str]) -> None:
    box, token = agent_box
    communicator, _ = await open_session(token)
    await database_sync_to_async(doorbell_command)(box.pk)
    assert await communicator.receive_nothing(timeout=0.5)
    await communicator.disconnect(timeout=5)


async def test_second_session_replaces_the_first(agent_box: tuple[Box, str]) -> None:
    box, token = agent_box
    first, _ = await open_session(token)
    # when the same box opens a second session
    second, welcome = await open_session(token)
    # then the first is closed with 4002 and the box stays online on the second
    _, code = await receive_close(first)
    assert code == 4002
    await first.disconnect(timeout=5)
    status = await status_of(box.pk)
    assert status.online is True
    assert status.session_id == welcome["session_id"]
    await second.send_json_to(telemetry(1))
    assert await second.receive_json_from(timeout=5) == {"type": "ack", "seq": 1}
    await second.disconnect(timeout=5)


async def test_invalid_json_gets_an_error_frame(agent_box: tuple[Box, str]) -> None:
    _, token = agent_box
    communicator, _ = await open_session(token)
    # invalid JSON, and text that is not standard JSON: constants, a lone surrogate (PostgreSQL would
    # refuse it in text), nesting past the parser's limit
    nested = "[" * 2000 + "]" * 2000
    for text in ("{not json", '{"type": "heartbeat", "ts": NaN}', '{"type": "heartbeat", "ts": -Infinity}',
                 '{"type": "error", "code": "x", "message": "\\ud800"}',
                 nested):  # fmt: skip
        await communicator.send_to(text_data=text)
        frame = await communicator.receive_json_from(timeout=5)
        assert frame["code"] == "invalid_frame", (text[:40], frame)
        assert "JSON" in frame["message"]
    # and the session keeps working
    await communicator.send_json_to(telemetry(1))
    assert await communicator.receive_json_from(timeout=5) == {"type": "ack", "seq": 1}
    await communicator.disconnect(timeout=5)


async def test_schema_error_names_the_field(agent_box: tuple[Box, str]) -> None:
    _, token = agent_box
    communicator, _ = await open_session(token)
    bad = telemetry(1, [sample(wans=[wan("wan1", loss=250.0)])])
    await communicator.send_json_to(bad)
    frame = await communicator.receive_json_from(timeout=5)
    assert frame["type"] == "error"
    assert frame["field"] == "samples[0].wans[0].loss_pct"
    await communicator.disconnect(timeout=5)


async def test_unknown_type_is_refused(agent_box: tuple[Box, str]) -> None:
    _, token = agent_box
    communicator, _ = await open_session(token)
    await communicator.send_json_to({"type": "teleport", "where": "mars"})
    frame = await communicator.receive_json_from(timeout=5)
    assert frame["code"] == "unknown_type"
    assert frame["field"] == "type"
    await communicator.send_json_to({"type": "welcome", "session_id": "x"})
    assert (await communicator.receive_json_from(timeout=5))["type"] == "error"
    await communicator.disconnect(timeout=5)


async def test_telemetry_before_hello_is_refused(agent_box: tuple[Box, str]) -> None:
    box, token = agent_box
    communicator, _ = await open_session(token, say_hello=False)
    await communicator.send_json_to(telemetry(1))
    frame = await communicator.receive_json_from(timeout=5)
    assert frame["code"] == "hello_required"
    assert (await stored_rows(box.pk))["box"] == []
    await communicator.disconnect(timeout=5)


async def test_oversize_frame_closes_with_1009(agent_box: tuple[Box, str]) -> None:
    _, token = agent_box
    communicator, _ = await open_session(token)
    await communicator.send_to(text_data=json.dumps({"type": "heartbeat", "ts": 1, "pad": "x" * 70000}))
    _, code = await receive_close(communicator)
    assert code == 1009
    await communicator.disconnect(timeout=5)


async def test_too_many_invalid_frames_close_4003_then_penalty_4029(agent_box: tuple[Box, str]) -> None:
    _, token = agent_box
    communicator, _ = await open_session(token)
    # when the agent sends 10 invalid frames
    for _ in range(10):
        await communicator.send_to(text_data="[]")
    frames, code = await receive_close(communicator)
    # then 10 error frames then 4003
    assert len(frames) == 10
    assert code == 4003
    await communicator.disconnect(timeout=5)
    # and reconnecting during the penalty gets an error with retry_after_s then 4029
    again, _ = await open_session(token, say_hello=False)
    frames, code = await receive_close(again)
    assert code == 4029
    assert frames[0]["code"] == "rate_limited"
    assert frames[0]["retry_after_s"] > 0
    await again.disconnect(timeout=5)


async def test_sessions_beyond_the_process_limit_are_shed(agent_box: tuple[Box, str], settings: Any) -> None:
    _, token = agent_box
    settings.OTB = {**settings.OTB, "MAX_SESSIONS_PER_PROCESS": 0}
    communicator, _ = await open_session(token, say_hello=False)
    frames, code = await receive_close(communicator)
    assert code == 4029
    assert frames[0]["code"] == "overloaded"
    assert frames[0]["retry_after_s"] > 0
    await communicator.disconnect(timeout=5)


async def test_a_channel_layer_message_nobody_handles_ends_the_session_like_channels(
    agent_box: tuple[Box, str],
) -> None:
    # given a live session
    box, token = agent_box
    communicator, _ = await open_session(token)
    # when the channel layer delivers a message type the consumer has no handler for
    from fleet.core.doorbells import agent_group, agroup_send

    assert await agroup_send(agent_group(box.pk), {"type": "no.such.handler"})
    # then the consumer ends with that error (as Channels' own loop does), not silently
    with pytest.raises(ValueError, match=r"No handler for message type no\.such\.handler"):
        await communicator.receive_output(timeout=5)
    # and the box can open a new session at once
    other, welcome = await open_session(token)
    assert welcome["type"] == "welcome"
    await other.disconnect(timeout=5)


@pytest.mark.parametrize("version", [2, 99])
async def test_a_hello_in_an_unknown_protocol_version_is_refused(
    agent_box: tuple[Box, str], version: int
) -> None:
    # given an enrolled box whose agent speaks a protocol version this server does not
    box, token = agent_box
    communicator, _ = await open_session(token, say_hello=False)
    # when it says hello
    await communicator.send_json_to(hello(v=version))
    # then it gets an unsupported_version error naming the field, no welcome, and the session closes
    frames, code = await receive_close(communicator)
    assert [frame["type"] for frame in frames] == ["error"]
    assert frames[0]["code"] == "unsupported_version" and frames[0]["field"] == "v"
    assert code == 1008
    assert (await status_of(box.pk)).online is False


async def test_a_frame_naming_a_key_twice_is_refused_naming_the_key(agent_box: tuple[Box, str]) -> None:
    # given a live session
    box, token = agent_box
    communicator, _ = await open_session(token)
    text = json.dumps(telemetry(1, [sample(wans=[wan("wan1"), wan("wan2")])]), separators=(",", ":"))
    first, second = text.index('"rtt_ms"'), text.index('"rtt_ms"', text.index('"rtt_ms"') + 1)
    repeated = {
        # the last value used to win silently (issue #14 item 10)
        "seq": text.replace('"seq":1,', '"seq":1,"seq":2,'),
        "samples[0].wans[1].rtt_ms": text[:second] + '"rtt_ms":1.0,' + text[second:],
        # a colon spelled \u003a in a string does not hide the repeated key
        "samples[0].wans[0].label": text[:first] + '"label":"a\\u003ab",' + text[first:],
    }
    # when the agent sends each of them, then each is refused naming the repeated key, nothing stored
    for path, frame in repeated.items():
        await communicator.send_to(text_data=frame)
        answer = await communicator.receive_json_from(timeout=5)
        assert (answer["code"], answer.get("field")) == ("invalid_frame", path), answer
        assert "duplicate key" in answer["message"]
    assert (await stored_rows(box.pk))["box"] == []
    # and a frame with no repeated key but colons (escaped or not) in its strings is stored
    plain = text.replace('"label":"WAN1"', '"label":"a\\u003ab:c"')
    assert plain != text
    await communicator.send_to(text_data=plain)
    assert await communicator.receive_json_from(timeout=5) == {"type": "ack", "seq": 1}
    wans = await database_sync_to_async(lambda: list(WanStatus.objects.filter(box=box).order_by("iface")))()
    assert wans[0].label == "a:b:c"
    await communicator.disconnect(timeout=5)


async def test_a_link_named_with_a_nul_character_is_stored_and_its_event_recorded(
    agent_box: tuple[Box, str],
) -> None:
    # given a live session (found by the protocol fuzz: the wan_down event of a new link reported down
    # carried the raw label into a jsonb column, which refuses \u0000: the batch was rejected, never acked)
    box, token = agent_box
    communicator, _ = await open_session(token)
    link = wan("wan\x001", up=False, rtt=None, loss=None)
    link["label"] = "Fibre\x00 1"
    # when the agent reports it
    await communicator.send_json_to(telemetry(1, [sample(wans=[link])]))
    # then it is acked and stored, the NUL dropped as in the WAN's row
    assert await communicator.receive_json_from(timeout=5) == {"type": "ack", "seq": 1}
    status = await database_sync_to_async(WanStatus.objects.get)(box=box)
    assert (status.iface, status.label) == ("wan1", "Fibre 1")
    event = await database_sync_to_async(lambda: Event.objects.get(box=box, kind="wan_down"))()
    assert (event.data["iface"], event.data["label"]) == ("wan1", "Fibre 1")
    await communicator.disconnect(timeout=5)
