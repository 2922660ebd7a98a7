"""The gateway's command line and main loop, against a fake backend (tests/gateway/fakepeers.py) and
the pretend host."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path

import pytest
from otb_agent.util import Logger
from otb_gateway.cli import Gateway, main
from otb_gateway.report import Reporter

from tests.gateway.fakehost import FakeHost
from tests.gateway.peerdata import box_id, key, peer
from tests.gateway.test_converge import STATE, gateway
from tests.gateway.test_peers import fake_backend  # noqa: F401  (fixture)


def make_gateway(
    host: FakeHost, url: str, poll_interval: float = 2.0, report_interval: float = 10.0
) -> tuple[Gateway, io.StringIO]:
    supervisor, converger = gateway(host)
    logs = io.StringIO()
    log = Logger(stream=logs)
    supervisor.log = converger.log = log
    return (
        Gateway(
            server=url,
            token="otbs_good",
            wg_port=51819,
            runner=host,
            supervisor=supervisor,
            converger=converger,
            reporter=Reporter(host, upstream=None),
            log=log,
            poll_interval=poll_interval,
            report_interval=report_interval,
        ),
        logs,
    )


def reports(directory: Path) -> list[dict]:
    path = directory / "reports.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_once_fetches_converges_and_reports(fake_backend: tuple[str, Path]) -> None:  # noqa: F811
    url, directory = fake_backend
    host = FakeHost()
    gw, _ = make_gateway(host, url)

    assert gw.once() == 0

    assert host.listening() == {51820, 51821}
    (report,) = reports(directory)
    assert report["peers"] == 2 and report["converge_errors"] == 0
    assert report["wg_public_key"] == gw.converger.public_key()
    assert {row["box_id"] for row in report["boxes"]} == {box_id(0), box_id(1)}


def test_once_exits_1_when_the_backend_refuses_and_changes_nothing(fake_backend: tuple[str, Path]) -> None:  # noqa: F811
    url, _ = fake_backend
    host = FakeHost()
    gw, logs = make_gateway(host, url)
    gw.token = "otbs_wrong"

    assert gw.once() == 1

    assert host.changes == []
    assert '"event":"peers_fetch_failed"' in logs.getvalue() and "HTTP 401" in logs.getvalue()


def test_a_problem_in_the_document_is_logged_and_reported_and_the_rest_converges(
    fake_backend: tuple[str, Path],  # noqa: F811
) -> None:
    url, directory = fake_backend
    (directory / "peers.json").write_text(json.dumps([peer(0), peer(1, tunnel_port=70000)]))
    host = FakeHost()
    gw, logs = make_gateway(host, url)

    gw.once()

    assert host.listening() == {51820}
    (report,) = reports(directory)
    assert report["converge_errors"] == 1 and report["last_error"].startswith("peers[1].tunnel_port")
    assert '"event":"peer_invalid"' in logs.getvalue()


def test_the_loop_reacts_to_a_change_within_a_poll_interval_and_stops_on_request(
    fake_backend: tuple[str, Path],  # noqa: F811
) -> None:
    # given the gateway running its loop, polling every 0.1 s
    url, directory = fake_backend
    host = FakeHost()
    gw, _ = make_gateway(host, url, poll_interval=0.1, report_interval=0.3)
    thread = threading.Thread(target=gw.run)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while host.listening() != {51820, 51821} and time.monotonic() < deadline:
            time.sleep(0.02)
        assert host.listening() == {51820, 51821}

        # when box 1 leaves the list
        (directory / "peers.json").write_text(json.dumps([peer(0)]))
        changed_at = time.monotonic()
        while host.listening() != {51820} and time.monotonic() < deadline:
            time.sleep(0.02)

        # then it is gone within a few poll intervals, and reports keep coming
        assert host.listening() == {51820} and time.monotonic() - changed_at < 2.0
        assert host.link is not None and set(host.link.peers) == {key("box-0")}
        while len(reports(directory)) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(reports(directory)) >= 2
    finally:
        gw.stop()
        thread.join(timeout=10)
    assert not thread.is_alive()
    # the children are left running for the next gateway to adopt
    assert host.pid_of("ss-server") is not None and f"{STATE}/run/wireguard-go.pid" in host.files


def test_main_refuses_missing_or_empty_token_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").write_text("\n")
    base = ["--server", "http://127.0.0.1:9", "--state-dir", str(tmp_path / "s")]
    assert main(base) == 2
    assert main([*base, "--token-file", str(tmp_path / "missing")]) == 2
    assert main([*base, "--token-file", str(tmp_path / "empty")]) == 2
    assert main([*base, "--token-file", str(tmp_path / "empty"), "--wg-port", "0"]) == 2
    err = capsys.readouterr().err
    assert "--server and --token-file are required" in err and "cannot read --token-file" in err
    assert "is empty" in err and "--wg-port" in err


def test_dry_run_prints_the_changes_and_makes_none(
    fake_backend: tuple[str, Path],  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # given a host without the gateway (this test's host: the dry run only reads it)
    url, directory = fake_backend
    state = tmp_path / "state"

    # when the gateway runs dry
    rc = main(
        ["--server", url, "--token-file", str(directory / "token"), "--state-dir", str(state), "--dry-run"]
    )

    # then it printed what it would do, and did none of it
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "+ start wireguard-go -f otbgw0" in out
    assert "+ ip addr add 100.64.0.0/31 dev otbgw0" in out
    assert "+ nft -f -" in out and "add element inet otb_gateway box_ports { 51820 }" in out
    assert f"+ wg set otbgw0 peer {key('box-0')} preshared-key /dev/stdin" in out
    assert "secret-0" not in out and key("psk-0") not in out
    assert not state.exists()
