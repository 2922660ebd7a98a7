"""Agent session against the fake websocket server (no database)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import time
import uuid

import otb_protocol
import pytest
from otb_agent import httpapi
from otb_agent.agent import EXIT_UNAUTHORIZED, Agent
from otb_agent.backoff import Backoff
from otb_agent.collectors import Collector
from otb_agent.host import HostSystem
from otb_agent.store import MemoryStore, SqliteStore
from otb_agent.util import Status

from tests.agent.test_store import sample as queued_sample


class StubCollector(Collector):
    name = "stub"

    def __init__(self) -> None:
        self.configured: list = []
        self.n = 0

    def collect(self):
        self.n += 1
        return {
            "ts": time.time(),
            "cpu_pct": 1.0,
            "mem_pct": 2.0,
            "load1": 0.1,
            "uptime_s": 100 + self.n,
            "tunnel_up": True,
            "conntrack": 5,
            "rx_bps": 10,
            "tx_bps": 20,
            "wans": [],
        }

    def configure(self, config):
        self.configured.append(config)

    def boot_id(self):
        return "boot-1"

    def uptime_s(self):
        return 100


def make_agent(fake_http, ws, tmp_path, token, **kw):
    store = kw.pop("store", None) or SqliteStore(str(tmp_path / "agent.db"))
    return Agent(
        server=fake_http.url,
        ws_url=kw.pop("ws_url", ws.url),
        token=token,
        serial="BOX1",
        collector=kw.pop("collector", None) or StubCollector(),
        store=store,
        system=kw.pop("system", None) or HostSystem(),
        state_dir=str(tmp_path),
        status=Status(str(tmp_path / "status.json")),
        backoff=Backoff(base=0.05, cap=0.2, rng=__import__("random").Random(1)),
        telemetry_interval=kw.pop("telemetry_interval", 0.1),
        ping_interval=None,
        **kw,
    )


async def wait_for(pred, timeout=10.0):
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def token_for(fake_http, serial="BOX1"):
    tok = "otba_" + uuid.uuid4().hex
    fake_http.tokens[tok] = serial
    return tok


async def test_a_config_that_could_not_be_fetched_or_reported_is_retried_without_a_new_trigger(
    fleet, tmp_path
):
    """Found in the lab: a config_changed arriving while the box's route to the server is being
    rebuilt (a WAN just came back) failed to fetch, and nothing fetched it again."""
    fake_http, ws = fleet
    agent = make_agent(fake_http, ws, tmp_path, token_for(fake_http))
    agent.config.retry_delays = (0.05, 0.1)
    task = asyncio.create_task(agent.run())
    try:
        await wait_for(lambda: fake_http.applied)
        h2 = fake_http.set_config({"wan_policy": {"mode": "failover", "interfaces": []}})
        fake_http.drop_next["/api/v1/agent/config"] = 2
        fake_http.drop_next["/api/v1/agent/config/applied"] = 1
        await ws.send("BOX1", {"type": "config_changed", "desired_config_hash": h2})
        await wait_for(lambda: fake_http.applied[-1] == {"config_hash": h2, "error": None})
        assert agent.applied_hash == h2
        dropped = [r["path"] for r in fake_http.requests if r.get("dropped")]
        assert dropped == ["/api/v1/agent/config"] * 2 + ["/api/v1/agent/config/applied"]
        # once applied and reported, no more rounds
        rounds = len(fake_http.config_requests())
        await asyncio.sleep(0.3)
        assert len(fake_http.config_requests()) == rounds
    finally:
        agent.stop()
        await asyncio.wait_for(task, 10)


async def test_session_hello_welcome_telemetry_config(fleet, tmp_path):
    fake_http, ws = fleet
    token = token_for(fake_http)
    agent = make_agent(fake_http, ws, tmp_path, token)
    task = asyncio.create_task(agent.run())
    try:
        await wait_for(lambda: len(ws.stored.get("BOX1", [])) >= 5)
        hello = ws.hellos[0]
        assert hello["v"] == 1 and hello["boot_id"] == "boot-1" and hello["applied_config_hash"] is None
        seqs = ws.stored["BOX1"]
        assert seqs == list(range(1, len(seqs) + 1))
        # config fetched and applied at start (desired hash != applied)
        h1 = fake_http.config["config_hash"]
        await wait_for(lambda: fake_http.applied)
        assert fake_http.applied[0] == {"config_hash": h1, "error": None}
        saved = json.loads((tmp_path / "config.json").read_text())
        assert saved["config_hash"] == h1
        assert stat.S_IMODE(os.stat(tmp_path / "config.json").st_mode) == 0o600
        assert agent.applied_hash == h1

        # new config -> config_changed -> fetch with If-None-Match of the old hash -> 200
        h2 = fake_http.set_config({"wan_policy": {"mode": "failover", "interfaces": []}})
        await ws.send("BOX1", {"type": "config_changed", "desired_config_hash": h2})
        await wait_for(lambda: agent.applied_hash == h2)
        req = fake_http.config_requests()[-1]
        assert req["headers"].get("If-None-Match") == f'"{h1}"'
        assert fake_http.applied[-1] == {"config_hash": h2, "error": None}

        # config_changed for a hash we cannot get newer than ours -> 304, nothing re-applied
        n_applied = len(fake_http.applied)
        await ws.send("BOX1", {"type": "config_changed", "desired_config_hash": "f" * 32})
        await wait_for(lambda: fake_http.config_requests()[-1]["headers"].get("If-None-Match") == f'"{h2}"')
        await asyncio.sleep(0.2)
        assert len(fake_http.applied) == n_applied

        # the buffer drains as acks arrive
        await wait_for(lambda: agent.store.depth() <= 2)
        status = json.loads((tmp_path / "status.json").read_text())
        assert status["state"] == "connected"
        assert ws.invalid == []
    finally:
        agent.stop()
        assert await asyncio.wait_for(task, 5) == 0
    assert json.loads((tmp_path / "status.json").read_text())["state"] == "stopped"


async def test_apply_hook_failure_reported(fleet, tmp_path):
    fake_http, ws = fleet
    hook = tmp_path / "hook.sh"
    hook.write_text("#!/bin/sh\necho applying $1\necho 'uci: invalid option' >&2\nexit 3\n")
    hook.chmod(0o755)
    agent = make_agent(fake_http, ws, tmp_path, token_for(fake_http), apply_hook=str(hook))
    task = asyncio.create_task(agent.run())
    try:
        await wait_for(lambda: fake_http.applied)
        rep = fake_http.applied[0]
        assert rep["config_hash"] == fake_http.config["config_hash"]
        assert "exited with 3" in rep["error"] and "uci: invalid option" in rep["error"]
        assert agent.applied_hash is None
    finally:
        agent.stop()
        await asyncio.wait_for(task, 5)


async def test_command_runs_once_even_if_delivered_twice(fleet, tmp_path):
    fake_http, ws = fleet
    counter = tmp_path / "count"
    script = tmp_path / "restart.sh"
    script.write_text(f"#!/bin/sh\necho x >> {counter}\necho restarted\n")
    script.chmod(0o755)
    cid = str(uuid.uuid4())
    cmd = {
        "type": "command",
        "id": cid,
        "kind": "restart_services",
        "params": {},
        "expires_at": time.time() + 60,
    }
    agent = make_agent(
        fake_http, ws, tmp_path, token_for(fake_http), system=HostSystem(restart_command=str(script))
    )
    task = asyncio.create_task(agent.run())
    try:
        await wait_for(lambda: "BOX1" in ws.conns and ws.hellos)
        await ws.send("BOX1", cmd)
        await wait_for(lambda: len(ws.results) == 1)
        assert ws.results[0]["ok"] is True and "restarted" in ws.results[0]["output"]["output"]
        await ws.send("BOX1", cmd)  # duplicate delivery
        await wait_for(lambda: len(ws.results) == 2)
        assert ws.results[1] == ws.results[0]
        # and again through welcome.pending_commands after a reconnect (4002)
        ws.pending_commands = [{k: v for k, v in cmd.items() if k != "type"}]
        await ws.close("BOX1", 4002, "replaced")
        await wait_for(lambda: len(ws.results) == 3)
        assert counter.read_text().count("x") == 1
        # unsupported / expired commands
        fw = {**cmd, "id": str(uuid.uuid4()), "kind": "firmware_upgrade"}
        await ws.send("BOX1", fw)
        old = {**cmd, "id": str(uuid.uuid4()), "expires_at": time.time() - 5}
        await ws.send("BOX1", old)
        await wait_for(lambda: len(ws.results) == 5)
        by_id = {r["id"]: r for r in ws.results}
        # firmware_upgrade without its parameters is refused by the firmware handler (rollouts)
        assert by_id[fw["id"]]["ok"] is False and by_id[fw["id"]]["error"].startswith("invalid_params")
        assert by_id[old["id"]]["error"] == "expired"
    finally:
        agent.stop()
        await asyncio.wait_for(task, 5)


async def test_command_dedupe_survives_restart(fleet, tmp_path):
    fake_http, ws = fleet
    token = token_for(fake_http)
    cid = str(uuid.uuid4())
    ws.pending_commands = [
        {"id": cid, "kind": "refresh_config", "params": {}, "expires_at": time.time() + 60}
    ]
    agent = make_agent(fake_http, ws, tmp_path, token)
    task = asyncio.create_task(agent.run())
    await wait_for(lambda: len(ws.results) == 1)
    agent.stop()
    await asyncio.wait_for(task, 5)
    agent.store.close()
    first = ws.results[0]
    assert first["ok"] is True and first["output"]["config_hash"] == fake_http.config["config_hash"]
    n_config = len(fake_http.config_requests())
    agent2 = make_agent(fake_http, ws, tmp_path, token)
    task2 = asyncio.create_task(agent2.run())
    try:
        await wait_for(lambda: len(ws.results) == 2)
        assert ws.results[1] == first
        assert len(fake_http.config_requests()) == n_config  # not run again; config already applied
    finally:
        agent2.stop()
        await asyncio.wait_for(task2, 5)


async def test_reconnect_after_4002_resends_unacked(fleet, tmp_path):
    fake_http, ws = fleet
    ws.drop_acks = True
    agent = make_agent(fake_http, ws, tmp_path, token_for(fake_http))
    task = asyncio.create_task(agent.run())
    try:
        await wait_for(lambda: len(ws.stored.get("BOX1", [])) >= 4)
        assert agent.store.depth() >= 4  # nothing acked yet
        ws.drop_acks = False
        await ws.close("BOX1", 4002, "replaced")
        await wait_for(lambda: ws.sessions >= 2 and agent.welcomed)
        # after welcome (last_acked_seq = highest stored) the stored seqs were dropped from the buffer
        await wait_for(lambda: agent.store.depth() <= 2)
        seqs = ws.stored["BOX1"]
        assert seqs == list(range(1, len(seqs) + 1))
        assert agent.backoff.attempt <= 1
    finally:
        agent.stop()
        await asyncio.wait_for(task, 5)


async def test_unauthorized_4001_stops(fleet, tmp_path):
    fake_http, ws = fleet
    token = token_for(fake_http)
    ws.revoked.add(token)
    agent = make_agent(fake_http, ws, tmp_path, token)
    t0 = time.monotonic()
    rc = await asyncio.wait_for(agent.run(), 10)
    assert rc == EXIT_UNAUTHORIZED
    assert time.monotonic() - t0 < 5
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["state"] == "stopped"
    assert any(e["event"] == "unauthorized" for e in status["last_errors"])


async def test_rate_limited_4029_honours_retry_after(fleet, tmp_path):
    fake_http, ws = fleet
    agent = make_agent(fake_http, ws, tmp_path, token_for(fake_http), store=MemoryStore())
    task = asyncio.create_task(agent.run())
    try:
        await wait_for(lambda: "BOX1" in ws.conns and agent.welcomed)
        await ws.send(
            "BOX1", {"type": "error", "code": "rate_limited", "message": "shedding", "retry_after_s": 0.7}
        )
        await ws.close("BOX1", 4029, "rate limited")
        t0 = time.monotonic()
        await wait_for(lambda: ws.sessions >= 2)
        assert time.monotonic() - t0 >= 0.6
    finally:
        agent.stop()
        await asyncio.wait_for(task, 5)


async def test_buffering_while_server_down(fake_http, tmp_path):
    from fakefleet import FakeWS

    ws = FakeWS(fake_http)
    await ws.start()
    url = ws.url
    await ws.stop()  # server down: the agent keeps collecting into the buffer
    agent = make_agent(fake_http, ws, tmp_path, token_for(fake_http), ws_url=url)
    task = asyncio.create_task(agent.run())
    try:
        await wait_for(lambda: agent.store.depth() >= 5)
        assert json.loads((tmp_path / "status.json").read_text())["state"] in ("backoff", "connecting")
    finally:
        agent.stop()
        await asyncio.wait_for(task, 5)
    assert agent.store.depth() >= 5


async def test_diagnostics_and_speed_test_commands(fleet, tmp_path):
    fake_http, ws = fleet
    agent = make_agent(fake_http, ws, tmp_path, token_for(fake_http))
    task = asyncio.create_task(agent.run())

    try:
        await wait_for(lambda: "BOX1" in ws.conns and agent.welcomed)
        diag = command("diagnostics", {"checks": ["dns", "interfaces"]})
        speed = command("speed_test", {"bytes": 200_000})
        bad = command("diagnostics", {"checks": ["nope"]})
        reboot_bad = command("reboot", {"delay_s": -1})
        for c in (diag, speed, bad, reboot_bad):
            await ws.send("BOX1", c)
        await wait_for(lambda: len(ws.results) == 4)
        res = {r["id"]: r for r in ws.results}
        d = res[diag["id"]]["output"]
        assert set(d["checks"]) == {"dns", "interfaces"}
        assert d["checks"]["dns"]["ok"] is True and d["checks"]["dns"]["tcp_connect"]["ok"] is True
        assert "ok" in d["checks"]["interfaces"]  # `ip` may be missing: reported, not a crash
        s = res[speed["id"]]
        assert s["ok"] is True and s["output"]["bytes"] == 200_000 and s["output"]["mbps"] > 0
        assert res[bad["id"]]["ok"] is False and "subset" in res[bad["id"]]["error"]
        assert res[reboot_bad["id"]]["ok"] is False and "delay_s" in res[reboot_bad["id"]]["error"]
        assert any(p["id"] == diag["id"] for p in ws.progress)
    finally:
        agent.stop()
        await asyncio.wait_for(task, 5)


def command(kind, params):
    return {
        "type": "command",
        "id": str(uuid.uuid4()),
        "kind": kind,
        "params": params,
        "expires_at": time.time() + 60,
    }


async def run_commands(fake_http, ws, tmp_path, *cmds):
    """Run the commands through a connected agent; their results by command id."""
    agent = make_agent(fake_http, ws, tmp_path, token_for(fake_http))
    task = asyncio.create_task(agent.run())
    try:
        await wait_for(lambda: "BOX1" in ws.conns and agent.welcomed)
        for c in cmds:
            await ws.send("BOX1", c)
        await wait_for(lambda: len(ws.results) == len(cmds), timeout=30)
        return {r["id"]: r for r in ws.results}
    finally:
        agent.stop()
        await asyncio.wait_for(task, 5)


async def test_upload_and_both_speed_tests(fleet, tmp_path):
    fake_http, ws = fleet
    up = command("speed_test", {"bytes": 300_000, "direction": "upload"})
    both = command("speed_test", {"bytes": 250_001, "direction": "both"})
    res = await run_commands(fake_http, ws, tmp_path, up, both)

    # an upload: its figures under "upload", the count being the server's
    u = res[up["id"]]
    assert u["ok"] is True and u["error"] is None, u
    assert set(u["output"]) == {"direction", "upload"} and u["output"]["direction"] == "upload"
    assert u["output"]["upload"]["bytes"] == 300_000
    assert u["output"]["upload"]["duration_s"] >= 0 and u["output"]["upload"]["mbps"] > 0
    # both: the download's figures at the top level (as before uploads existed), then the upload's
    b = res[both["id"]]
    assert b["ok"] is True, b
    assert b["output"]["direction"] == "both"
    assert b["output"]["bytes"] == 250_001 and b["output"]["mbps"] > 0
    assert b["output"]["upload"]["bytes"] == 250_001
    assert sorted(fake_http.uploads) == [250_001, 300_000]
    uploads = [r for r in fake_http.requests if r["method"] == "POST" and "speedtest" in r["path"]]
    assert {r["headers"]["Content-Length"] for r in uploads} == {"300000", "250001"}
    assert all(r["headers"]["Content-Type"] == "application/octet-stream" for r in uploads)
    # the two tests ran one after the other, not at once: their transfer phases never interleave
    # (whether the second had to wait depends on how fast the first was: not asserted)
    messages = [p["message"] for p in ws.progress]
    assert "uploading 300000 bytes" in messages and "uploading 250001 bytes" in messages
    transfers = [p["id"] for p in ws.progress if p["message"].startswith(("uploading", "downloading"))]
    runs = [cid for index, cid in enumerate(transfers) if index == 0 or transfers[index - 1] != cid]
    assert sorted(runs) == sorted([up["id"], both["id"]]), transfers


async def test_a_busy_server_fails_the_speed_test_with_its_reason(fleet, tmp_path):
    fake_http, ws = fleet
    fake_http.speedtest_busy = True
    down = command("speed_test", {"bytes": 1000})
    up = command("speed_test", {"bytes": 1000, "direction": "upload"})
    res = await run_commands(fake_http, ws, tmp_path, down, up)
    assert res[down["id"]]["ok"] is False
    assert res[down["id"]]["error"].startswith("download failed: HTTP 429 speedtest_busy")
    assert res[up["id"]]["ok"] is False
    assert res[up["id"]]["error"].startswith("upload failed: HTTP 429 speedtest_busy")


async def test_a_speed_test_through_a_missing_or_invalid_interface_fails_naming_iface(fleet, tmp_path):
    fake_http, ws = fleet
    missing = command("speed_test", {"bytes": 1000, "direction": "both", "iface": "otbnowan9"})
    invalid = command("speed_test", {"bytes": 1000, "iface": "wan/1"})
    too_long = command("speed_test", {"bytes": 1000, "iface": "w" * 16})
    res = await run_commands(fake_http, ws, tmp_path, missing, invalid, too_long)
    m = res[missing["id"]]
    assert m["ok"] is False
    assert m["error"] == "params.iface: no network interface named 'otbnowan9'"
    assert m["output"] == {"direction": "both", "iface": "otbnowan9"}
    assert res[invalid["id"]]["ok"] is False
    assert res[invalid["id"]]["error"].startswith("params.iface is not a valid network interface name")
    assert res[too_long["id"]]["error"] == "params.iface must be a network interface name of at most 15 bytes"
    # nothing reached the server: the socket was refused its interface before connecting
    assert not [r for r in fake_http.requests if r["path"].startswith("/api/v1/agent/speedtest")]


root_only = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0,
    reason="binding a socket to an interface (SO_BINDTODEVICE) needs root or CAP_NET_RAW",
)


@root_only
async def test_a_speed_test_bound_to_the_loopback_interface(fleet, tmp_path):
    fake_http, ws = fleet  # listening on 127.0.0.1, reachable through lo
    both = command("speed_test", {"bytes": 200_000, "direction": "both", "iface": "lo"})
    res = await run_commands(fake_http, ws, tmp_path, both)
    r = res[both["id"]]
    assert r["ok"] is True, r
    assert r["output"]["iface"] == "lo"
    assert r["output"]["bytes"] == 200_000 and r["output"]["upload"]["bytes"] == 200_000
    assert "downloading 200000 bytes via lo" in [p["message"] for p in ws.progress]


@root_only
def test_the_speed_test_socket_is_bound_to_the_interface(fake_http):
    for iface, expected in (("lo", b"lo"), (None, b"")):
        conn, _ = httpapi._speedtest_connection(fake_http.url, 5.0, iface)
        try:
            conn.connect()
            bound = conn.sock.getsockopt(socket.SOL_SOCKET, httpapi.SO_BINDTODEVICE, otb_protocol.IFNAMSIZ)
            assert bound.rstrip(b"\0") == expected
        finally:
            conn.close()


async def test_an_in_process_applier_gets_the_config_and_its_error_is_the_applied_error(fleet, tmp_path):
    """--apply linux: the config cycle hands the config to the data plane's applier, whose error text
    is what the server gets as the applied-config error (and the hash stays unapplied)."""
    fake_http, ws = fleet
    seen = []
    outcome: list[str | None] = ["ip mptcp endpoint add 10.0.2.2 dev ...: Error: address already in use"]

    async def applier(config):
        seen.append(config)
        return outcome[0]

    agent = make_agent(fake_http, ws, tmp_path, token_for(fake_http), config_applier=applier)
    task = asyncio.create_task(agent.run())
    try:
        await wait_for(lambda: fake_http.applied)
        h1 = fake_http.config["config_hash"]
        assert fake_http.applied[0] == {"config_hash": h1, "error": outcome[0]}
        assert seen[0]["config_hash"] == h1 and agent.applied_hash is None
        outcome[0] = None
        h2 = fake_http.set_config({"wan_policy": {"mode": "failover", "interfaces": []}})
        await ws.send("BOX1", {"type": "config_changed", "desired_config_hash": h2})
        # the agent records h2 as applied before its report reaches the server: wait for both
        await wait_for(lambda: agent.applied_hash == h2 and fake_http.applied[-1]["config_hash"] == h2)
        assert fake_http.applied[-1] == {"config_hash": h2, "error": None}
        assert seen[-1]["wan_policy"]["mode"] == "failover"
    finally:
        agent.stop()
        await asyncio.wait_for(task, 5)


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
async def test_samples_queued_after_a_seq_reset_are_renumbered_not_lost(fleet, tmp_path, kind):
    """The agent lost its state (a new disk, or a memory store after a restart) while the server has
    its telemetry up to 500: what it queued before the welcome was never sent, so it is numbered after
    500 and delivered, not taken as acknowledged."""
    fake_http, ws = fleet
    ws.last_seq["BOX1"] = 500
    store = SqliteStore(str(tmp_path / "agent.db")) if kind == "sqlite" else MemoryStore()
    for index in range(3):
        store.append([{**queued_sample(index), "uptime_s": 1000 + index}])
    agent = make_agent(fake_http, ws, tmp_path, token_for(fake_http), store=store)
    task = asyncio.create_task(agent.run())
    try:
        await wait_for(lambda: len(ws.stored.get("BOX1", [])) >= 4)
        assert ws.stored["BOX1"][:3] == [501, 502, 503]
        sent = [frame for frame in ws.frames if frame["type"] == "telemetry" and frame["seq"] <= 503]
        assert [frame["samples"][0]["uptime_s"] for frame in sent[:3]] == [1000, 1001, 1002]
        assert not ws.invalid
    finally:
        agent.stop()
        await asyncio.wait_for(task, 5)
