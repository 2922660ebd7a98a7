from __future__ import annotations

import copy
import json
import math
import re
import time
from pathlib import Path

import otb_protocol
import pytest
from otb_protocol import ProtocolError, UnknownMessageType, decode, encode, validate_message

DOC = Path(__file__).resolve().parents[2] / "docs" / "agent-protocol.md"


def doc_examples() -> list[dict]:
    blocks = re.findall(r"```json\n(.*?)```", DOC.read_text(), re.S)
    return [json.loads(b) for b in blocks]


def wan(i=0, **kw):
    w = {
        "iface": f"wan{i}",
        "label": "Fibre",
        "kind": "fiber",
        "up": True,
        "rtt_ms": 5.2,
        "jitter_ms": 0.4,
        "loss_pct": 0.0,
        "rx_bps": 12345678,
        "tx_bps": 2345678,
        "public_ip": "203.0.113.7",
        "subflows": 2,
    }
    w.update(kw)
    return w


def telemetry(nwans=4):
    return {
        "type": "telemetry",
        "seq": 42,
        "samples": [
            {
                "ts": 1700000000.5,
                "cpu_pct": 12.5,
                "mem_pct": 40.1,
                "load1": 0.3,
                "uptime_s": 3600,
                "tunnel_up": True,
                "conntrack": 120,
                "rx_bps": 100,
                "tx_bps": 200,
                "wans": [wan(i) for i in range(nwans)],
            }
        ],
    }


def test_every_doc_example_is_valid_and_all_types_covered():
    examples = doc_examples()
    assert len(examples) >= 12
    for ex in examples:
        validate_message(ex)
        assert decode(encode(ex)) == ex
    assert {ex["type"] for ex in examples} == set(otb_protocol.MESSAGE_TYPES)


def test_schema_defs_cover_all_types_and_constants():
    assert set(otb_protocol.SCHEMA["$defs"]) == {
        "hello",
        "welcome",
        "telemetry",
        "ack",
        "heartbeat",
        "config_changed",
        "command",
        "command_progress",
        "command_result",
        "error",
    }
    assert otb_protocol.PROTOCOL_VERSION == 1
    assert otb_protocol.CLOSE_UNAUTHORIZED == 4001 and otb_protocol.CLOSE_REPLACED == 4002
    assert otb_protocol.CLOSE_INVALID_FRAMES == 4003 and otb_protocol.CLOSE_RATE_LIMITED == 4029


def expect(msg, path, fragment=""):
    with pytest.raises(ProtocolError) as ei:
        validate_message(msg)
    assert ei.value.field_path == path, str(ei.value)
    assert fragment in ei.value.message
    return ei.value


def test_field_paths_for_bad_values():
    m = telemetry()
    m["samples"][0]["wans"][2]["rtt_ms"] = "5"
    expect(m, "samples[0].wans[2].rtt_ms", "expected number/null")
    m = telemetry()
    m["samples"][0]["wans"][1]["kind"] = "dsl"
    expect(m, "samples[0].wans[1].kind", "must be one of")
    m = telemetry()
    m["samples"][0]["wans"][3]["loss_pct"] = 101
    expect(m, "samples[0].wans[3].loss_pct", "<= 100")
    m = telemetry()
    m["samples"][0]["cpu_pct"] = -1
    expect(m, "samples[0].cpu_pct", ">= 0")


def test_bool_is_not_an_int_nor_a_number():
    m = telemetry()
    m["seq"] = True
    expect(m, "seq", "expected integer")
    m = telemetry()
    m["samples"][0]["load1"] = False
    expect(m, "samples[0].load1", "expected number")
    m = telemetry()
    m["samples"][0]["wans"][0]["subflows"] = 1.0
    expect(m, "samples[0].wans[0].subflows", "expected integer")
    m = telemetry()
    m["samples"][0]["tunnel_up"] = 1
    expect(m, "samples[0].tunnel_up", "expected boolean")


def test_unknown_and_missing_fields():
    m = telemetry()
    m["samples"][0]["wans"][0]["mtu"] = 1500
    expect(m, "samples[0].wans[0].mtu", "unknown field")
    m = telemetry()
    del m["samples"][0]["wans"][1]["public_ip"]
    expect(m, "samples[0].wans[1].public_ip", "missing required")
    expect({"type": "ack"}, "seq", "missing required")
    expect({"type": "ack", "seq": 1, "extra": 1}, "extra", "unknown field")
    # the agent side accepts unknown fields from a newer server
    validate_message({"type": "ack", "seq": 1, "extra": 1}, ignore_unknown_fields=True)


def test_nan_and_infinity_rejected():
    for bad in (math.nan, math.inf, -math.inf):
        m = telemetry()
        m["samples"][0]["wans"][0]["rtt_ms"] = bad
        expect(m, "samples[0].wans[0].rtt_ms", "finite")
    with pytest.raises(ProtocolError):
        decode('{"type": "heartbeat", "ts": NaN}')
    with pytest.raises(ProtocolError):
        decode('{"type": "heartbeat", "ts": Infinity}')
    with pytest.raises(ProtocolError):
        encode({"type": "heartbeat", "ts": math.nan}, validate=False)


def test_array_bounds():
    expect(telemetry(nwans=17), "samples[0].wans", "at most 16")
    m = telemetry()
    m["samples"] = []
    expect(m, "samples", "at least 1")
    m = telemetry()
    m["samples"] = m["samples"] * 61
    expect(m, "samples", "at most 60")
    validate_message(telemetry(nwans=0))


def test_types_and_frames():
    with pytest.raises(UnknownMessageType) as ei:
        validate_message({"type": "firmware_available"})
    assert ei.value.field_path == "type"
    expect({"v": 1}, "type")
    with pytest.raises(ProtocolError):
        validate_message([1, 2])
    with pytest.raises(ProtocolError, match="too big"):
        decode("x" * (otb_protocol.MAX_FRAME_BYTES + 1))
    with pytest.raises(ProtocolError, match="invalid JSON"):
        decode("{nope")
    assert decode(b'{"type":"ack","seq":3}') == {"type": "ack", "seq": 3}
    with pytest.raises(ProtocolError, match="UTF-8"):
        decode(b"\xff\xfe")


def test_commands_and_hello():
    cmd = {"type": "command", "id": "not-a-uuid", "kind": "reboot", "params": {}, "expires_at": 1.0}
    expect(cmd, "id", "must match")
    cmd = {**cmd, "id": "0b7e1f52-9c3d-4a61-8e2f-5d4c3b2a1f00", "kind": "format_disk"}
    expect(cmd, "kind")
    cmd = {**cmd, "kind": "reboot", "params": {"anything": [1, {"nested": None}]}}
    validate_message(cmd)
    hello = next(e for e in doc_examples() if e["type"] == "hello")
    expect({**hello, "applied_config_hash": 5}, "applied_config_hash")
    expect({**hello, "uptime_s": -1}, "uptime_s")
    validate_message({**hello, "applied_config_hash": None})
    welcome = copy.deepcopy(next(e for e in doc_examples() if e["type"] == "welcome"))
    welcome["pending_commands"][0]["type"] = "command"
    validate_message(welcome)
    welcome["pending_commands"][0]["kind"] = "x"
    expect(welcome, "pending_commands[0].kind")


def test_validator_is_fast():
    m = telemetry(nwans=4)
    validate_message(m)
    n = 200
    best = math.inf
    # best of many short batches: robust against a busy (shared, 2-core) CI machine
    for _ in range(50):
        t0 = time.perf_counter()
        for _ in range(n):
            validate_message(m)
        best = min(best, (time.perf_counter() - t0) / n)
        if best < 25e-6:
            break
    assert best < 50e-6, f"{best * 1e6:.1f} us per 4-WAN telemetry message"


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ('{"type":"ack","seq":1,"seq":2}', "seq"),
        ('{"type":"ack","seq":1,"type":"ack"}', "type"),
        # the same key spelled with an escape is the same key
        ('{"type":"ack","seq":1,"s\\u0065q":2}', "seq"),
        (
            '{"type":"command_result","id":"x","ok":true,"output":{"a":{"b":1,"b":2}},"error":null}',
            "output.a.b",
        ),
    ],
)
def test_a_key_repeated_in_an_object_is_refused_naming_it(text: str, path: str) -> None:
    # issue #14 item 10: the last value used to win silently; a frame naming a field twice is ambiguous
    with pytest.raises(ProtocolError) as caught:
        decode(text)
    assert caught.value.field_path == path
    assert "duplicate key" in caught.value.message
    with pytest.raises(ProtocolError) as caught:
        otb_protocol.check_unique_keys(text)
    assert caught.value.field_path == path


def test_a_repeated_key_deep_in_telemetry_is_named_with_its_path() -> None:
    text = encode(telemetry()).replace('"rtt_ms":5.2,', '"rtt_ms":5.2,"rtt_ms":600001,')
    with pytest.raises(ProtocolError) as caught:
        decode(text)
    assert caught.value.field_path == "samples[0].wans[0].rtt_ms"


def test_the_same_key_in_different_objects_is_fine() -> None:
    frame = telemetry(nwans=4)
    assert decode(encode(frame)) == frame
    otb_protocol.check_unique_keys(encode(frame))


def test_the_doc_lists_every_error_code_a_server_sends() -> None:
    text = DOC.read_text()
    section = text[text.index("### `error`") :]
    section = section[: section.index("\n## ")]
    listed = dict(re.findall(r"^\| `([a-z_]+)` \| (.+) \|$", section, re.M))
    assert listed == otb_protocol.ERROR_CODES
