"""The supervisor of the gateway's children: start, restart with backoff, stop, adopt after a restart."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence

import pytest
from otb_agent.util import Logger
from otb_gateway.runner import CommandError
from otb_gateway.supervise import ChildSpec, Supervisor

from tests.gateway.fakehost import FakeHost, FakeProcess
from tests.gateway.test_converge import Clock

STATE = "/state"
SS = ChildSpec(name="ss-a", argv=("ss-server", "-c", "/state/ss/a.json", "--mptcp"), fingerprint="f1")


def supervisor(host: FakeHost, clock: Clock) -> Supervisor:
    return Supervisor(host, STATE, Logger(stream=io.StringIO()), clock=clock, sleep=clock.sleep)


def test_ensure_starts_once_and_writes_a_pidfile() -> None:
    host, clock = FakeHost(), Clock()
    sup = supervisor(host, clock)

    assert sup.ensure(SS) is True
    assert sup.ensure(SS) is False

    pid = host.pid_of("ss-server")
    assert [line for line in host.changes if line.startswith("start")] == [
        "start ss-server -c /state/ss/a.json --mptcp"
    ]
    assert json.loads(host.files["/state/run/ss-a.pid"]) == {
        "pid": pid,
        "argv": list(SS.argv),
        "fingerprint": "f1",
    }


def test_a_new_fingerprint_restarts_the_child() -> None:
    host, clock = FakeHost(), Clock()
    sup = supervisor(host, clock)
    sup.ensure(SS)
    old = host.pid_of("ss-server")

    assert sup.ensure(ChildSpec(name=SS.name, argv=SS.argv, fingerprint="f2")) is True

    assert host.pid_of("ss-server") not in (None, old)
    assert json.loads(host.files["/state/run/ss-a.pid"])["fingerprint"] == "f2"


def test_a_dead_child_is_restarted_with_growing_backoff_and_at_once_after_a_long_life() -> None:
    host, clock = FakeHost(), Clock()
    sup = supervisor(host, clock)
    sup.ensure(SS)

    # it dies at once three times: 1 s, 2 s, 4 s before each new start
    for delay in (1.0, 2.0, 4.0):
        host.kill(host.pid_of("ss-server") or 0)
        assert sup.poll() == []
        assert sup.next_due() == clock.now + delay
        clock.now += delay - 0.01
        assert sup.poll() == []
        clock.now += 0.01
        assert sup.poll() == ["ss-a"]
    # after living 30 s it is started again on the spot
    clock.now += 30
    host.kill(host.pid_of("ss-server") or 0)
    assert sup.poll() == ["ss-a"]
    assert sup.deaths == 4


def test_stop_escalates_to_sigkill_for_a_child_that_ignores_sigterm() -> None:
    host, clock = FakeHost(), Clock()
    sup = supervisor(host, clock)
    sup.ensure(SS)
    pid = host.pid_of("ss-server") or 0
    host.processes[pid].stubborn = True

    sup.stop("ss-a")

    assert not host.processes[pid].alive
    assert [line.split(" (")[0] for line in host.changes if line.startswith("kill")] == [
        f"kill -15 {pid}",
        f"kill -9 {pid}",
    ]
    assert "/state/run/ss-a.pid" not in host.files and sup.names() == []


def test_adopt_takes_over_live_children_and_drops_stale_pidfiles() -> None:
    # given pidfiles left by a previous gateway
    host, clock = FakeHost(), Clock()
    alive = 4001
    host.processes[alive] = FakeProcess(argv=("/usr/bin/ss-server", "-c", "/state/ss/a.json", "--mptcp"))
    reused = 4002  # the pid now belongs to another program
    host.processes[reused] = FakeProcess(argv=("sshd",))
    zombie = 4003
    host.processes[zombie] = FakeProcess(argv=("ss-server", "-c", "/state/ss/c.json", "--mptcp"), zombie=True)

    def pidfile(name: str, pid: int, argv: list[str]) -> None:
        host.files[f"/state/run/{name}.pid"] = json.dumps({"pid": pid, "argv": argv, "fingerprint": "f1"})

    pidfile("ss-a", alive, list(SS.argv))
    pidfile("ss-b", reused, ["ss-server", "-c", "/state/ss/b.json", "--mptcp"])
    pidfile("ss-c", zombie, ["ss-server", "-c", "/state/ss/c.json", "--mptcp"])
    pidfile("ss-d", 4999, ["ss-server", "-c", "/state/ss/d.json", "--mptcp"])
    host.files["/state/run/ss-e.pid"] = "not json"

    # when a new gateway adopts
    sup = supervisor(host, clock)
    adopted = sup.adopt()

    # then only the live child with its own command line is adopted, nobody was signalled, stale files went
    assert adopted == ["ss-a"] and sup.alive("ss-a")
    assert sup.ensure(SS) is False  # same command line and fingerprint: kept running
    assert host.processes[reused].alive and not [line for line in host.changes if line.startswith("kill")]
    assert sorted(p for p in host.files if p.startswith("/state/run/")) == ["/state/run/ss-a.pid"]


def test_a_start_that_fails_is_retried_later() -> None:
    # given a host where the first start of ss-server fails
    host, clock = FakeHost(), Clock()
    sup = supervisor(host, clock)
    real_spawn = host.spawn
    calls: list[Sequence[str]] = []

    def spawn(argv: Sequence[str], *, log_path: str) -> int:
        calls.append(argv)
        if len(calls) == 1:
            raise CommandError(argv, -1, "No such file or directory: 'ss-server'")
        return real_spawn(argv, log_path=log_path)

    host.spawn = spawn  # type: ignore[method-assign]

    # when it is asked for, the error reaches the caller
    with pytest.raises(CommandError, match="ss-server"):
        sup.ensure(SS)

    # then the supervisor tries again once the backoff has passed
    assert sup.poll() == []
    clock.now += 1.0
    assert sup.poll() == ["ss-a"] and sup.alive("ss-a")
