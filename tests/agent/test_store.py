from __future__ import annotations

import json
import os
import stat

import pytest
from otb_agent.store import MemoryStore, SqliteStore


def sample(i: int) -> dict:
    return {
        "ts": 1700000000.0 + i,
        "cpu_pct": 1.0,
        "mem_pct": 2.0,
        "load1": 0.0,
        "uptime_s": i,
        "tunnel_up": True,
        "conntrack": 0,
        "rx_bps": 0,
        "tx_bps": 0,
        "wans": [],
    }


@pytest.fixture(params=["sqlite", "memory"])
def make_store(request, tmp_path):
    def make(cap=10_000):
        if request.param == "sqlite":
            return SqliteStore(str(tmp_path / "agent.db"), cap=cap)
        return MemoryStore(cap=cap)

    return make


def test_order_and_ack(make_store):
    s = make_store()
    seqs = [s.append([sample(i)]) for i in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    pend = s.pending(0, 3)
    assert [p[0] for p in pend] == [1, 2, 3]
    msg = json.loads(pend[0][1])
    assert msg == {"type": "telemetry", "seq": 1, "samples": [sample(0)]}
    assert [p[0] for p in s.pending(3, 10)] == [4, 5]
    assert s.ack(2) and not s.ack(2)
    assert [p[0] for p in s.pending(0, 10)] == [1, 3, 4, 5]
    assert s.ack_upto(4) == 3
    assert s.depth() == 1
    assert s.append([sample(9)]) == 6


def test_cap_drops_oldest_and_counts(make_store):
    s = make_store(cap=3)
    for i in range(5):
        s.append([sample(i)])
    assert s.depth() == 3
    assert [p[0] for p in s.pending(0, 10)] == [3, 4, 5]
    assert s.dropped_total == 2
    msgs = [json.loads(t) for _, t in s.pending(0, 10)]
    # each dropped sample is carried by exactly one queued message
    assert sum(m.get("dropped", 0) for m in msgs) == 2
    assert s.dropped_unreported() == 2
    # when a message carrying a drop count is itself dropped, the count moves forward
    for i in range(3):
        s.append([sample(10 + i)])
    msgs = [json.loads(t) for _, t in s.pending(0, 10)]
    assert sum(m.get("dropped", 0) for m in msgs) == 5 == s.dropped_total
    s.ack_upto(100)
    assert s.dropped_unreported() == 0


def test_ack_upto_bumps_seq(make_store):
    s = make_store()
    s.append([sample(0)])
    s.ack_upto(41)  # server already has up to 41 (e.g. state was lost)
    assert s.append([sample(1)]) == 42


def test_sqlite_persists_across_reopen(tmp_path):
    path = str(tmp_path / "agent.db")
    s = SqliteStore(path, cap=4)
    for i in range(6):
        s.append([sample(i)])
    s.ack(3)
    s.command_start("c1", "reboot", "boot-a")
    s.command_finish("c1", {"type": "command_result", "id": "c1", "ok": True, "output": {}, "error": None})
    s.meta_set("applied_config_hash", "abc")
    s.close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    s2 = SqliteStore(path, cap=4)
    assert s2.depth() == 3
    assert [p[0] for p in s2.pending(0, 10)] == [4, 5, 6]
    assert s2.dropped_total == 2
    assert s2.append([sample(7)]) == 7  # never reuses a seq
    stored = s2.command_get("c1")
    assert stored is not None and stored["result"]["ok"] is True
    assert s2.meta_get("applied_config_hash") == "abc"
    # even when everything was acked, the seq counter survives
    s2.ack_upto(7)
    s2.close()
    s3 = SqliteStore(path)
    assert s3.append([sample(8)]) == 8


def test_command_records(make_store):
    s = make_store()
    assert s.command_get("x") is None
    s.command_start("x", "diagnostics", "b1")
    rec = s.command_get("x")
    assert rec["state"] == "running" and rec["boot_id"] == "b1" and rec["result"] is None
    s.command_finish("x", {"ok": False})
    assert s.command_get("x")["state"] == "done"


def test_renumber_after_numbers_the_queue_past_the_servers_watermark(make_store):
    s = make_store()
    for i in range(3):
        s.append([sample(i)])
    assert s.renumber_after(41) == 3
    assert [p[0] for p in s.pending(0, 10)] == [42, 43, 44]
    assert [json.loads(t)["seq"] for _, t in s.pending(0, 10)] == [42, 43, 44]
    assert [json.loads(t)["samples"] for _, t in s.pending(0, 10)] == [[sample(i)] for i in range(3)]
    assert s.append([sample(3)]) == 45
    assert s.ack_upto(41) == 0 and s.depth() == 4
