from __future__ import annotations

import base64
import io
import json
import os
import stat
import sys
from types import SimpleNamespace

import pytest
from otb_agent import cli, x25519
from otb_agent.collectors.simulated import SimulatedCollector
from otb_agent.simulate import Simulation, load_boxes


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_enroll_with_factory_secret(fake_http, tmp_path, capsys):
    state = tmp_path / "state"
    rc = cli.main(
        [
            "enroll",
            "--server",
            fake_http.url,
            "--serial",
            "BOX1",
            "--secret",
            "s3cret",
            "--state-dir",
            str(state),
            "--model",
            "OTB-v2c",
            "--mac",
            "02:00:00:00:00:01",
        ]
    )
    assert rc == 0
    assert "enrolled BOX1" in capsys.readouterr().out
    req = fake_http.requests[-1]
    assert req["path"] == "/api/v1/agent/enroll"
    body = req["body"]
    assert body["serial"] == "BOX1" and body["factory_secret"] == "s3cret"
    assert body["model"] == "OTB-v2c" and body["mac"] == "02:00:00:00:00:01" and body["agent_version"]
    assert len(base64.b64decode(body["wg_public_key"])) == 32
    creds = json.loads((state / "credentials.json").read_text())
    assert creds["serial"] == "BOX1" and creds["agent_token"].startswith("otba_") and creds["box_id"]
    assert creds["server"] == fake_http.url
    assert mode(state) == 0o700
    for name in ("credentials.json", "wg_private_key", "wg_public_key"):
        assert mode(state / name) == 0o600, name
    priv = (state / "wg_private_key").read_text().strip()
    assert x25519.b64(x25519.public_key(x25519.from_b64(priv))) == body["wg_public_key"]
    # re-enrolling keeps the key pair unless --new-key
    assert (
        cli.main(
            [
                "enroll",
                "--server",
                fake_http.url,
                "--serial",
                "BOX1",
                "--secret",
                "s3cret",
                "--state-dir",
                str(state),
            ]
        )
        == 0
    )
    assert fake_http.requests[-1]["body"]["wg_public_key"] == body["wg_public_key"]


def test_enroll_with_token_after_rate_limit(fake_http, tmp_path):
    fake_http.rate_limit_next = 2
    rc = cli.main(
        [
            "enroll",
            "--server",
            fake_http.url,
            "--serial",
            "NEW1",
            "--enrollment-token",
            "enroll-token",
            "--state-dir",
            str(tmp_path / "s"),
        ]
    )
    assert rc == 0
    enrolls = [r for r in fake_http.requests if r["path"] == "/api/v1/agent/enroll"]
    assert len(enrolls) == 3 and enrolls[-1]["body"]["enrollment_token"] == "enroll-token"


def test_enroll_wrong_secret(fake_http, tmp_path, capsys):
    rc = cli.main(
        [
            "enroll",
            "--server",
            fake_http.url,
            "--serial",
            "BOX1",
            "--secret",
            "nope",
            "--state-dir",
            str(tmp_path / "s"),
        ]
    )
    assert rc == cli.EXIT_ENROLL_REJECTED
    assert "HTTP 401" in capsys.readouterr().err
    assert not (tmp_path / "s" / "credentials.json").exists()


def test_enroll_refuses_an_invalid_serial_before_any_request(fake_http, tmp_path, capsys):
    state = tmp_path / "s"
    args = ["enroll", "--server", fake_http.url, "--serial", "BOX 1", "--secret", "s3cret"]
    rc = cli.main([*args, "--state-dir", str(state)])
    assert rc == cli.EXIT_ENROLL_REJECTED
    assert "serial must be 1 to 64 characters" in capsys.readouterr().err
    assert fake_http.requests == [] and not state.exists()


def test_status_and_run_not_enrolled(tmp_path, capsys):
    assert cli.main(["run", "--state-dir", str(tmp_path)]) == cli.EXIT_USAGE
    assert "not enrolled" in capsys.readouterr().err
    assert cli.main(["status", "--state-dir", str(tmp_path)]) == 1
    (tmp_path / "status.json").write_text(
        json.dumps(
            {
                "state": "backoff",
                "session_id": None,
                "buffer_depth": 12,
                "dropped_total": 3,
                "last_acked_seq": 40,
                "pid": os.getpid(),
                "last_errors": [{"ts": 1700000000, "event": "connect_failed", "message": "refused"}],
            }
        )
    )
    assert cli.main(["status", "--state-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "backoff" in out and "12 messages" in out and "connect_failed: refused" in out
    assert cli.main(["status", "--state-dir", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["buffer_depth"] == 12


def _sim_args(tmp_path, server, **kw):
    base = dict(
        boxes=None,
        server=server,
        enrollment_token=None,
        boxes_csv=None,
        credentials_file=None,
        serial_prefix="SIM",
        interval=0.2,
        fail_fraction=0.0,
        memory_buffer=True,
        buffer_cap=100,
        concurrency=10,
        enroll_concurrency=4,
        ramp=0.2,
        no_config=False,
        progress_interval=0.5,
        duration=2.5,
        state_dir=str(tmp_path / "sim"),
        log_level="error",
    )
    base.update(kw)
    return SimpleNamespace(**base)


async def test_simulate_enrolls_and_streams(fleet, tmp_path, monkeypatch):
    fake_http, ws = fleet
    monkeypatch.setenv("OTB_AGENT_WS_URL", ws.url)
    args = _sim_args(tmp_path, fake_http.url, boxes=4, enrollment_token="enroll-token", fail_fraction=0.25)
    out = io.StringIO()
    sim = Simulation(args, load_boxes(args), out=out)
    summary = await sim.main()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines[-1]["event"] == "summary" and any(li["event"] == "progress" for li in lines)
    assert summary["enrolled"] == 4 and summary["started"] == 4
    assert summary["acked"] > 0 and summary["sessions"] >= 4
    assert len(ws.stored) == 4 and all(seqs == list(range(1, len(seqs) + 1)) for seqs in ws.stored.values())
    assert sorted(h["model"] for h in ws.hellos)  # hellos validated by the fake server
    assert ws.invalid == []
    # credentials reused on a re-run: no new enrollment
    n_enroll = len([r for r in fake_http.requests if r["path"].endswith("/enroll")])
    sim2 = Simulation(
        _sim_args(tmp_path, fake_http.url, boxes=4, enrollment_token="enroll-token", duration=0.8),
        load_boxes(args),
        out=io.StringIO(),
    )
    s2 = await sim2.main()
    assert s2["enrolled"] == 0
    assert len([r for r in fake_http.requests if r["path"].endswith("/enroll")]) == n_enroll


async def test_simulate_credentials_file_and_csv(fleet, tmp_path, monkeypatch):
    fake_http, ws = fleet
    monkeypatch.setenv("OTB_AGENT_WS_URL", ws.url)
    creds = tmp_path / "creds.jsonl"
    lines = []
    for i in range(3):
        tok = f"otba_tok{i}"
        fake_http.tokens[tok] = f"C{i}"
        lines.append(json.dumps({"serial": f"C{i}", "agent_token": tok}))
    creds.write_text("\n".join(lines) + "\n")
    args = _sim_args(tmp_path, fake_http.url, credentials_file=str(creds), no_config=True, duration=1.5)
    summary = await Simulation(args, load_boxes(args), out=io.StringIO()).main()
    assert summary["boxes"] == 3 and summary["enrolled"] == 0 and summary["acked"] > 0
    assert not any(r["path"].endswith("/config") for r in fake_http.requests)

    csv_path = tmp_path / "boxes.csv"
    csv_path.write_text("serial,factory_secret,model\nBOX1,s3cret,x\nBOX2,wrong,x\n")
    args = _sim_args(tmp_path, fake_http.url, boxes_csv=str(csv_path), boxes=5, duration=1.5)
    boxes = load_boxes(args)
    assert [b["serial"] for b in boxes] == ["BOX1", "BOX2"]
    summary = await Simulation(args, boxes, out=io.StringIO()).main()
    assert summary["enrolled"] == 1 and summary["enroll_failed"] == 1


async def test_simulate_takes_each_box_links_from_the_csv(fleet, tmp_path, monkeypatch):
    # given the demo's CSV, which names each box's links (as its seeded WAN policy does)
    fake_http, ws = fleet
    monkeypatch.setenv("OTB_AGENT_WS_URL", ws.url)
    csv_path = tmp_path / "boxes.csv"
    csv_path.write_text("serial,factory_secret,wans\nBOX1,s3cret,wan:fiber wan2:lte\n")
    args = _sim_args(tmp_path, fake_http.url, boxes_csv=str(csv_path), duration=0.8, no_config=True)
    boxes = load_boxes(args)
    assert boxes[0]["wans"] == [("wan", "fiber"), ("wan2", "lte")]
    # when the box runs, it reports exactly those links
    sim = Simulation(args, boxes, out=io.StringIO())
    await sim.main()
    collector = sim.agents[0].collector
    assert isinstance(collector, SimulatedCollector)
    assert [(w.iface, w.kind) for w in collector.wans] == [("wan", "fiber"), ("wan2", "lte")]
    # and a malformed column names its line
    csv_path.write_text("serial,factory_secret,wans\nBOX1,s3cret,wan:fiber\nBOX2,x,wan2:warp\n")
    with pytest.raises(SystemExit, match="line 3: wans: 'wan2:warp'"):
        load_boxes(args)


async def test_a_restarted_simulated_box_applies_the_configuration_it_kept(fleet, tmp_path, monkeypatch):
    # given a simulated box that applied a policy disabling wan2 before the simulator stopped
    fake_http, ws = fleet
    monkeypatch.setenv("OTB_AGENT_WS_URL", ws.url)
    csv_path = tmp_path / "boxes.csv"
    csv_path.write_text("serial,factory_secret,wans\nBOX1,s3cret,wan:fiber wan2:lte\n")
    args = _sim_args(
        tmp_path, fake_http.url, boxes_csv=str(csv_path), duration=0.8, no_config=True, memory_buffer=False
    )
    state = tmp_path / "sim" / "BOX1"
    state.mkdir(parents=True)
    policy = {
        "mode": "failover",
        "interfaces": [{"name": "wan", "role": "primary"}, {"name": "wan2", "role": "disabled"}],
    }
    (state / "config.json").write_text(json.dumps({"config_hash": "ab12", "wan_policy": policy}))
    # when the simulator starts again (the server answers 304: the configuration did not change)
    sim = Simulation(args, load_boxes(args), out=io.StringIO())
    await sim.main()
    # then the box runs with that policy from the start
    collector = sim.agents[0].collector
    assert isinstance(collector, SimulatedCollector)
    assert collector.mode == "failover" and [w.role for w in collector.wans] == ["primary", "disabled"]
    assert [wan["iface"] for wan in collector.collect()["wans"]] == ["wan"]


def test_console_script_entry_point():
    from importlib.metadata import entry_points

    eps = entry_points()
    group = eps.select(group="console_scripts") if hasattr(eps, "select") else eps["console_scripts"]
    assert any(ep.name == "otb-agent" and ep.value == "otb_agent.cli:main" for ep in group)


def test_agent_never_imports_django():
    import subprocess

    code = (
        "import sys, otb_agent.cli, otb_agent.agent, otb_agent.simulate, otb_protocol;"
        "import otb_agent.collectors.openwrt, otb_agent.collectors.linux, otb_agent.collectors.simulated;"
        "top={m.split('.')[0] for m in sys.modules};"
        "bad=sorted(top & {'django','fleet','provisioning','rest_framework'});"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_simulate_cli_parses(tmp_path):
    parser = cli.build_parser()
    args = parser.parse_args(
        [
            "simulate",
            "--boxes",
            "3",
            "--server",
            "http://x",
            "--enrollment-token",
            "t",
            "--memory-buffer",
            "--interval",
            "5",
        ]
    )
    assert args.boxes == 3 and args.memory_buffer and args.interval == 5.0 and args.log_level == "warning"
