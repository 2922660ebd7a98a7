"""``otb-agent simulate``: many virtual boxes in one asyncio process.

Each box: a SimulatedCollector and its SimulatedSystem (the simulated box: its links from the
optional ``wans`` column of ``--boxes-csv`` or field of ``--credentials-file``, e.g.
``wan:fiber wan2:lte``, else drawn from its
serial; its traffic follows the WAN policy it applied), a MemoryStore
(``--memory-buffer``) or SqliteStore in ``D/<serial>/``, one Agent task. Handshakes go through a
semaphore (``--concurrency``) and the first connections are spread over ``--ramp`` seconds.
Progress is one JSON line on stdout every ``--progress-interval`` seconds, and a final summary on
exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Optional

from .agent import Agent, Stats
from .backoff import Backoff
from .collectors.simulated import SimulatedCollector, SimulatedSystem, wans_from_spec
from .enrollment import EnrollError, enroll_box
from .store import MemoryStore, SqliteStore, Store
from .util import CONFIG_FILE, CREDENTIALS_FILE, DB_FILE, Logger, read_json


def simulated_pick(index: int, fraction: float) -> bool:
    """Whether box ``index`` of a simulated fleet is in ``fraction`` (exact over the fleet)."""
    if fraction <= 0:
        return False
    return int((index + 1) * fraction) > int(index * fraction)


def load_boxes(args: Any) -> List[Dict[str, Any]]:
    boxes: List[Dict[str, Any]] = []
    if args.credentials_file:
        with open(args.credentials_file, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                row = json.loads(line)
                try:
                    wans = wans_from_spec(str(row.get("wans") or ""))
                except ValueError as e:
                    where = f"{args.credentials_file}: {row.get('serial')}"
                    raise SystemExit(f"otb-agent: {where}: {e}") from None
                boxes.append(
                    {"serial": str(row["serial"]), "agent_token": str(row["agent_token"]), "wans": wans}
                )
    elif args.boxes_csv:
        with open(args.boxes_csv, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"serial", "factory_secret"} <= set(reader.fieldnames):
                raise SystemExit("otb-agent: --boxes-csv needs a header with serial,factory_secret")
            for number, row in enumerate(reader, start=2):
                if row.get("serial"):
                    box: Dict[str, Any] = {
                        "serial": row["serial"].strip(),
                        "factory_secret": row["factory_secret"].strip(),
                    }
                    try:  # optional: the box's links, as the demo seed gave them to its WAN policy
                        box["wans"] = wans_from_spec(row.get("wans") or "")
                    except ValueError as e:
                        raise SystemExit(f"otb-agent: {args.boxes_csv} line {number}: {e}") from None
                    boxes.append(box)
    else:
        n = args.boxes or 1
        boxes = [
            {"serial": f"{args.serial_prefix}-{i:05d}", "enrollment_token": args.enrollment_token}
            for i in range(1, n + 1)
        ]
    if args.boxes is not None:
        boxes = boxes[: max(0, args.boxes)]
    return boxes


def _raise_nofile() -> None:
    try:
        import resource  # Unix only: imported here so that the simulator still runs without it

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or hard > soft:
            resource.setrlimit(
                resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 1 << 20, hard)
            )
    except (ImportError, ValueError, OSError):
        pass


def _rss_kib() -> Optional[int]:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class Simulation:
    def __init__(self, args: Any, boxes: List[Dict[str, Any]], out: Any = None) -> None:
        self.args = args
        self.boxes = boxes
        self.out = out or sys.stdout
        self.stats = Stats()
        self.agents: List[Agent] = []
        self.stop_event: Optional[asyncio.Event] = None
        self.started = 0
        self.enrolled = 0
        self.enroll_failed = 0
        self.t0 = time.monotonic()
        self.log = Logger(stream=sys.stderr, level=args.log_level)

    def emit(self, event: str) -> Dict[str, Any]:
        s = self.stats
        line = {
            "event": event,
            "t": round(time.monotonic() - self.t0, 1),
            "boxes": len(self.boxes),
            "started": self.started,
            "connected": s.connected,
            "sessions": s.sessions,
            "sent": s.sent,
            "acked": s.acked,
            "errors": s.errors,
            "unauthorized": s.unauthorized,
            "enrolled": self.enrolled,
            "enroll_failed": self.enroll_failed,
            "commands": s.commands,
            "buffered": sum(a.store.depth() for a in self.agents),
            "rss_kib": _rss_kib(),
        }
        self.out.write(json.dumps(line) + "\n")
        self.out.flush()
        return line

    def stop(self) -> None:
        if self.stop_event is not None and not self.stop_event.is_set():
            self.stop_event.set()
            for a in self.agents:
                a.stop()

    async def _sleep(self, delay: float) -> bool:
        """Sleep unless stopped; True if stopped."""
        assert self.stop_event is not None
        if delay <= 0:
            return self.stop_event.is_set()
        try:
            await asyncio.wait_for(self.stop_event.wait(), delay)
            return True
        except asyncio.TimeoutError:
            return False

    async def _box(
        self,
        i: int,
        box: Dict[str, Any],
        conn_sem: asyncio.Semaphore,
        http_sem: asyncio.Semaphore,
        executor: ThreadPoolExecutor,
    ) -> None:
        args = self.args
        n = len(self.boxes)
        ramp = args.ramp if args.ramp is not None else min(30.0, n / 1000.0)
        if await self._sleep(ramp * i / max(1, n)):
            return
        serial = box["serial"]
        state_dir = os.path.join(args.state_dir, serial)
        token = box.get("agent_token")
        if token is None:
            creds = read_json(os.path.join(state_dir, CREDENTIALS_FILE))
            if creds and creds.get("agent_token"):
                token = creds["agent_token"]
            else:
                try:
                    async with http_sem:
                        enrolled = await asyncio.get_running_loop().run_in_executor(
                            executor,
                            lambda: enroll_box(
                                args.server,
                                serial,
                                state_dir,
                                secret=box.get("factory_secret"),
                                enrollment_token=box.get("enrollment_token"),
                                model="OTB-SIM",
                                log=self.log,
                            ),
                        )
                    token = enrolled["agent_token"]
                    self.enrolled += 1
                except EnrollError as e:
                    self.enroll_failed += 1
                    self.log.error("enroll_failed", serial=serial, error=str(e))
                    return
        if self.stop_event is not None and self.stop_event.is_set():
            return
        flaky = args.fail_fraction > 0 and ((i * 2654435761) % 10000) / 10000.0 < args.fail_fraction
        collector = SimulatedCollector(serial, flaky=flaky, wans=box.get("wans"))
        saved = None if args.memory_buffer else read_json(os.path.join(state_dir, CONFIG_FILE))
        if isinstance(saved, dict):  # as `otb-agent run` does: a 304 later does not apply it again
            collector.configure(saved)
        system = SimulatedSystem(
            collector,
            flaky=flaky,
            reboot_delay=getattr(args, "reboot_delay", 3.0),
            # firmware (rollouts): which boxes fail their upgrade or come back from it unhealthy
            upgrade_fails=simulated_pick(i, getattr(args, "upgrade_fail_fraction", 0.0)),
            upgrade_unhealthy=simulated_pick(i, getattr(args, "upgrade_unhealthy_fraction", 0.0)),
        )
        store: Store
        if args.memory_buffer:
            store = MemoryStore(cap=args.buffer_cap)
        else:
            os.makedirs(state_dir, mode=0o700, exist_ok=True)
            store = SqliteStore(os.path.join(state_dir, DB_FILE), cap=args.buffer_cap)
        interval = args.interval or 10.0
        agent = Agent(
            server=args.server,
            token=token,
            serial=serial,
            collector=collector,
            store=store,
            system=system,
            log=self.log.bind(serial=serial),
            state_dir=None if args.memory_buffer else state_dir,
            stats=self.stats,
            backoff=Backoff(rng=None),
            telemetry_interval=args.interval,
            fetch_config=not args.no_config,
            connect_semaphore=conn_sem,
            http_semaphore=http_sem,
            ping_interval=None,
            first_tick_delay=collector.rng.random() * interval,
        )
        self.agents.append(agent)
        self.started += 1
        try:
            await agent.run(self.stop_event)
        finally:
            store.close()

    async def main(self) -> Dict[str, Any]:
        args = self.args
        self.stop_event = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)
        executor = ThreadPoolExecutor(max_workers=max(1, args.enroll_concurrency))
        conn_sem = asyncio.Semaphore(max(1, args.concurrency))
        http_sem = asyncio.Semaphore(max(1, args.enroll_concurrency))
        tasks = [
            loop.create_task(self._box(i, box, conn_sem, http_sem, executor))
            for i, box in enumerate(self.boxes)
        ]

        async def progress() -> None:
            while not await self._sleep(args.progress_interval):
                self.emit("progress")

        ptask = loop.create_task(progress())
        if args.duration:
            loop.call_later(args.duration, self.stop)
        try:
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            ptask.cancel()
            executor.shutdown(wait=False)
        return self.emit("summary")


def run_simulation(args: Any) -> int:
    boxes = load_boxes(args)
    if not boxes:
        print("otb-agent: no boxes to simulate", file=sys.stderr)
        return 2
    _raise_nofile()
    sim = Simulation(args, boxes)
    summary = asyncio.run(sim.main())
    return 0 if summary["errors"] == 0 or summary["sessions"] > 0 else 1
