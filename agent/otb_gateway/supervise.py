"""Child processes of the gateway (wireguard-go, one ss-server per box): started, watched, restarted
with backoff when they die, and adopted again after the gateway itself restarts.

Each running child has a pidfile ``<state>/run/<name>.pid`` (JSON: pid, argv, fingerprint of the
configuration it was started with). A gateway that starts reads them: a process that is still alive
with the same command line is adopted (not restarted: its box keeps its connections); a stale file is
removed. Children run in their own session, so they outlive the gateway; ``otb-gateway --cleanup``
stops them.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from otb_agent.util import Logger

from .runner import CommandError, ProcessInfo, Runner

STOP_TIMEOUT_S = 3.0
# A child that lived this long before dying starts again at once; quicker deaths back off.
STABLE_AFTER_S = 30.0


@dataclass(frozen=True)
class ChildSpec:
    name: str
    argv: Tuple[str, ...]
    fingerprint: str = ""  # what it was started with (a hash of its configuration)


@dataclass
class Child:
    spec: ChildSpec
    pid: Optional[int]
    started_at: float
    adopted: bool = False
    failures: int = 0
    next_start: float = 0.0


def same_command(running: Sequence[str], wanted: Sequence[str]) -> bool:
    """A process's command line is the wanted one (its program may have been given as a full path)."""
    if len(running) != len(wanted) or not running:
        return False
    return os.path.basename(running[0]) == os.path.basename(wanted[0]) and tuple(running[1:]) == tuple(
        wanted[1:]
    )


class Supervisor:
    def __init__(
        self,
        runner: Runner,
        state_dir: str,
        log: Logger,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        backoff_base: float = 1.0,
        backoff_cap: float = 30.0,
    ) -> None:
        self.runner = runner
        self.run_dir = os.path.join(state_dir, "run")
        self.log_dir = os.path.join(state_dir, "log")
        self.log = log
        self.clock = clock
        self.sleep = sleep
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.children: Dict[str, Child] = {}
        self.deaths = 0  # children that died since the gateway started

    def pidfile(self, name: str) -> str:
        return os.path.join(self.run_dir, f"{name}.pid")

    # -- adoption -------------------------------------------------------------------------------

    def adopt(self) -> List[str]:
        """Take over the children a previous gateway left running (per their pidfiles); remove the
        pidfiles of processes that are gone. Returns the adopted names."""
        adopted = []
        for entry in self.runner.list_dir(self.run_dir):
            if not entry.endswith(".pid"):
                continue
            name = entry[: -len(".pid")]
            path = os.path.join(self.run_dir, entry)
            record = self._read_pidfile(path)
            info = self.runner.process(record[0]) if record is not None else None
            if record is None or info is None or info.zombie or not same_command(info.argv, record[1]):
                self.log.info("child_stale", child=name, pid=record[0] if record else None)
                self.runner.remove_file(path)
                continue
            pid, argv, fingerprint = record
            self.children[name] = Child(
                spec=ChildSpec(name=name, argv=argv, fingerprint=fingerprint),
                pid=pid,
                started_at=self.clock(),
                adopted=True,
            )
            adopted.append(name)
            self.log.info("child_adopted", child=name, pid=pid)
        return adopted

    def _read_pidfile(self, path: str) -> Optional[Tuple[int, Tuple[str, ...], str]]:
        text = self.runner.read_file(path)
        try:
            data = json.loads(text or "")
            pid, argv, fingerprint = data["pid"], data["argv"], data.get("fingerprint", "")
        except (ValueError, KeyError, TypeError):
            return None
        if (
            not isinstance(pid, int)
            or pid <= 0
            or not isinstance(argv, list)
            or not all(isinstance(part, str) for part in argv)
            or not isinstance(fingerprint, str)
        ):
            return None
        return pid, tuple(argv), fingerprint

    # -- state ----------------------------------------------------------------------------------

    def alive(self, name: str) -> bool:
        child = self.children.get(name)
        return child is not None and child.pid is not None and self._running(child.pid, child.spec.argv)

    def _running(self, pid: int, argv: Sequence[str]) -> bool:
        info: Optional[ProcessInfo] = self.runner.process(pid)
        return info is not None and not info.zombie and same_command(info.argv, argv)

    def names(self, prefix: str = "") -> List[str]:
        return sorted(name for name in self.children if name.startswith(prefix))

    # -- start / stop ---------------------------------------------------------------------------

    def ensure(self, spec: ChildSpec) -> bool:
        """Have ``spec`` running: nothing happens when it already runs with the same command line and
        fingerprint; otherwise the old process is stopped and a new one started. True if started."""
        child = self.children.get(spec.name)
        if child is not None and child.spec == spec:
            if child.pid is not None and self._running(child.pid, spec.argv):
                return False
            if child.pid is None and self.clock() < child.next_start:
                return False  # backing off after deaths; poll() starts it when due
        if child is not None:
            self.stop(spec.name)
        self._start(spec, failures=0)
        return True

    def _start(self, spec: ChildSpec, *, failures: int) -> None:
        now = self.clock()
        try:
            pid = self.runner.spawn(spec.argv, log_path=os.path.join(self.log_dir, f"{spec.name}.log"))
        except CommandError as e:
            delay = self._delay(failures)
            self.children[spec.name] = Child(
                spec=spec, pid=None, started_at=now, failures=failures + 1, next_start=now + delay
            )
            self.log.error("child_start_failed", child=spec.name, error=str(e), retry_in_s=round(delay, 1))
            raise
        self.children[spec.name] = Child(spec=spec, pid=pid, started_at=now, failures=failures)
        self.runner.write_file(
            self.pidfile(spec.name),
            json.dumps({"pid": pid, "argv": list(spec.argv), "fingerprint": spec.fingerprint}) + "\n",
            0o644,
        )
        self.log.info("child_started", child=spec.name, pid=pid)

    def stop(self, name: str) -> None:
        """Stop a child (SIGTERM, then SIGKILL after STOP_TIMEOUT_S) and forget it."""
        child = self.children.pop(name, None)
        if child is not None and child.pid is not None and self._running(child.pid, child.spec.argv):
            self.runner.signal(child.pid, signal.SIGTERM)
            deadline = self.clock() + STOP_TIMEOUT_S
            while self._running(child.pid, child.spec.argv):
                if self.clock() >= deadline:
                    self.runner.signal(child.pid, signal.SIGKILL)
                    break
                self.sleep(0.05)
            self.log.info("child_stopped", child=name, pid=child.pid)
        self.runner.remove_file(self.pidfile(name))

    def stop_all(self) -> None:
        for name in list(self.children):
            self.stop(name)

    def _delay(self, failures: int) -> float:
        return float(min(self.backoff_cap, self.backoff_base * (2 ** min(failures, 16))))

    # -- watching -------------------------------------------------------------------------------

    def next_due(self) -> Optional[float]:
        """When the next child waiting to be restarted is due (clock time), if any."""
        due = [child.next_start for child in self.children.values() if child.pid is None]
        return min(due) if due else None

    def poll(self) -> List[str]:
        """Notice children that died and start them again once their backoff has passed; returns the
        names started in this call."""
        now = self.clock()
        started = []
        for name, child in list(self.children.items()):
            if child.pid is not None:
                if self._running(child.pid, child.spec.argv):
                    continue
                lived = now - child.started_at
                failures = 0 if lived >= STABLE_AFTER_S else child.failures + 1
                delay = 0.0 if failures == 0 else self._delay(failures - 1)
                self.deaths += 1
                self.log.warning(
                    "child_died", child=name, pid=child.pid, lived_s=round(lived, 1), restart_in_s=delay
                )
                self.runner.remove_file(self.pidfile(name))
                child.pid, child.failures, child.next_start = None, failures, now + delay
            if child.pid is None and now >= child.next_start:
                try:
                    self._start(child.spec, failures=child.failures)
                except CommandError:
                    continue
                started.append(name)
        return started
