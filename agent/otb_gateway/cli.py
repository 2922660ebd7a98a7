"""Command line and main loop: ``otb-gateway --server URL --token-file F --state-dir D --upstream IFACE``.

The loop polls the peers document every ``--poll-interval`` seconds with If-None-Match (a 304 costs
the backend one indexed query and the gateway nothing), converges when it changed, watches the child
processes, and reports every ``--report-interval`` seconds. Every ``RESYNC_S`` seconds, and after a
round with errors (with backoff), it reads the host again and repairs what drifted. Until the first
peers document arrives it changes nothing: a gateway restarted while the backend is unreachable
keeps (adopts) what its predecessor configured.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import time
from typing import Callable, List, Optional, Tuple

from otb_agent.httpapi import HttpError
from otb_agent.util import Logger, ensure_dir

from . import __version__
from .converge import WG_CHILD, Converger, Result, box_pieces
from .peers import Peer, PeersError, fetch_peers, keep_previous, parse_peers
from .ping import PingResponder
from .plan import Plan, build_plan
from .report import Reporter, send_report
from .runner import DryRunRunner, Runner
from .supervise import Supervisor

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
RESYNC_S = 60.0
RETRY_CAP_S = 60.0
DEFAULT_STATE_DIR = "/var/lib/otb-gateway"


class Gateway:
    def __init__(
        self,
        *,
        server: str,
        token: str,
        wg_port: int,
        runner: Runner,
        supervisor: Supervisor,
        converger: Converger,
        reporter: Reporter,
        log: Logger,
        poll_interval: float = 2.0,
        report_interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        ping: Optional[PingResponder] = None,
    ) -> None:
        self.server = server
        self.token = token
        self.wg_port = wg_port
        self.runner = runner
        self.supervisor = supervisor
        self.converger = converger
        self.reporter = reporter
        self.log = log
        self.poll_interval = poll_interval
        self.report_interval = report_interval
        self.clock = clock
        self.ping = ping
        self.stop_event = threading.Event()
        self.etag: Optional[str] = None
        self.peers: Tuple[Peer, ...] = ()
        self.have_peers = False
        self.plan: Optional[Plan] = None
        self.errors: List[str] = []  # of the last round (and the document's problems)
        self.problems: List[str] = []  # peers the last document left out
        self.fetch_error = ""
        self.failed_rounds = 0

    # -- steps ----------------------------------------------------------------------------------

    def fetch(self) -> bool:
        """Poll the peers document; True when it changed (and was usable)."""
        try:
            status, body, etag = fetch_peers(self.server, self.token, self.etag)
            if status == 304:
                self.fetch_error = ""
                return False
            document = parse_peers(body, etag=etag or "", wg_port=self.wg_port)
        except HttpError as e:
            self._fetch_failed("peers_fetch_failed", f"HTTP {e.status} {e.code}: {e.message}")
            return False
        except (ConnectionError, OSError) as e:
            self._fetch_failed("peers_fetch_failed", str(e))
            return False
        except PeersError as e:
            self._fetch_failed("peers_document_invalid", str(e))
            return False
        self.fetch_error = ""
        for problem in document.problems:
            self.log.error("peer_invalid", problem=str(problem), box_id=problem.box_id)
        self.peers = keep_previous(document, self.peers)
        self.problems = [str(problem) for problem in document.problems]
        self.etag = etag
        self.have_peers = True
        self.log.info("peers_changed", etag=etag, peers=len(document.peers), problems=len(document.problems))
        return True

    def _fetch_failed(self, event: str, message: str) -> None:
        if message != self.fetch_error:
            self.log.error(event, error=message)
        self.fetch_error = message

    def converge(self) -> Result:
        plan = build_plan(self.peers, wg_port=self.wg_port)
        before = self.plan
        started = self.clock()
        result = self.converger.converge(plan)
        self.plan = plan
        if self.ping is not None:
            # /ping is answered on the server end of each box's tunnel pair (the boxes' monitoring_ip)
            self.ping.allow(peer.tunnel.server_address for peer in self.peers if peer.tunnel is not None)
        self.errors = [*self.problems, *result.errors]
        self.failed_rounds = self.failed_rounds + 1 if result.errors else 0
        if result.commands or result.errors:
            self.log.info(
                "converged",
                boxes=len(plan.boxes),
                changes=result.commands,
                touched=sorted(result.touched),
                errors=len(result.errors),
                took_ms=int((self.clock() - started) * 1000),
            )
        for box_id in sorted(result.touched):
            box = plan.boxes.get(box_id)
            if box is None:
                self.log.info("box_removed", box_id=box_id)
            elif before is None:
                self.log.info("box_converged", box_id=box_id, serial=box.serial, **box_pieces(box))
            elif box_id not in before.boxes:
                self.log.info("box_added", box_id=box_id, serial=box.serial, **box_pieces(box))
            else:
                self.log.info("box_changed", box_id=box_id, serial=box.serial, **box_pieces(box))
        return result

    def report(self) -> bool:
        errors = list(self.errors)
        if self.fetch_error:
            errors.append(f"peers: {self.fetch_error}")
        try:
            document = self.reporter.build(
                plan=self.plan, wg_public_key=self.converger.public_key(), errors=errors
            )
            send_report(self.server, self.token, document)
        except HttpError as e:
            self.log.error("report_failed", error=f"HTTP {e.status} {e.code}: {e.message}", fields=e.fields)
            return False
        except (ConnectionError, OSError, ValueError) as e:
            self.log.error("report_failed", error=str(e))
            return False
        return True

    # -- loops ----------------------------------------------------------------------------------

    def once(self) -> int:
        """Adopt, fetch, converge, report, and exit: 0 when the host matches the peers document."""
        self.supervisor.adopt()
        if not self.fetch():
            return EXIT_FAILED
        result = self.converge()
        self.report()
        return EXIT_FAILED if result.errors else EXIT_OK

    def run(self) -> int:
        adopted = self.supervisor.adopt()
        self.log.info("gateway_start", version=__version__, server=self.server, adopted=adopted)
        if self.ping is not None:
            self.ping.start()
        try:
            return self._loop()
        finally:
            if self.ping is not None:
                self.ping.stop()

    def _loop(self) -> int:
        now = self.clock()
        next_poll, next_report, next_resync = now, now + min(2.0, self.report_interval), now + RESYNC_S
        retry_at = 0.0
        while not self.stop_event.is_set():
            now = self.clock()
            if now >= next_poll:
                next_poll = now + self.poll_interval
                changed = self.fetch()
                due_retry = self.failed_rounds > 0 and now >= retry_at
                due_resync = now >= next_resync
                if self.have_peers and (changed or due_retry or due_resync):
                    if due_resync and not changed:
                        self.converger.invalidate()
                        next_resync = now + RESYNC_S
                    result = self.converge()
                    if result.errors:
                        retry_at = now + min(
                            RETRY_CAP_S, self.poll_interval * 2 ** min(self.failed_rounds, 6)
                        )
            restarted = self.supervisor.poll()
            if WG_CHILD in restarted and self.have_peers:
                self.log.warning("wireguard_restarted")
                self.converger.invalidate()
                self.converge()
            if now >= next_report:
                next_report = now + self.report_interval
                self.report()
            due = self.supervisor.next_due()
            wait = min(next_poll, next_report, due if due is not None else next_poll) - self.clock()
            self.stop_event.wait(max(0.05, min(wait, 1.0)))
        self.log.info("gateway_stop", note="children left running; `otb-gateway --cleanup` removes them")
        return EXIT_OK

    def stop(self) -> None:
        self.stop_event.set()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="otb-gateway",
        description="OTB aggregation server: converge this host to the peers the backend assigns it",
    )
    p.add_argument("--version", action="version", version=f"otb-gateway {__version__}")
    p.add_argument("--server", help="backend base URL, e.g. https://fleet.example.com")
    p.add_argument("--token-file", help="file holding the server token (otbs_...)")
    p.add_argument(
        "--state-dir",
        default=os.environ.get("OTB_GATEWAY_STATE_DIR") or DEFAULT_STATE_DIR,
        help=f"wg.key, ss-server configurations, pidfiles, child logs (default {DEFAULT_STATE_DIR})",
    )
    p.add_argument("--upstream", help="the internet-facing interface (its byte counters are reported)")
    p.add_argument("--wg-port", type=int, default=51819, help="the one WireGuard listen port (default 51819)")
    p.add_argument("--poll-interval", type=float, default=2.0, help="seconds between peers polls (default 2)")
    p.add_argument("--report-interval", type=float, default=10.0, help="seconds between reports (default 10)")
    p.add_argument("--dry-run", action="store_true", help="read the host, print the changes, change nothing")
    p.add_argument("--once", action="store_true", help="converge once, report, and exit (1 on errors)")
    p.add_argument(
        "--cleanup",
        action="store_true",
        help="stop the children, delete the nftables table and otbgw0, and exit (no backend needed)",
    )
    p.add_argument(
        "--ping-port",
        type=int,
        default=80,
        help="port of the GET /ping responder stock OverTheBox boxes poll on their monitoring_ip "
        "(the server end of their tunnel pair); 0 turns it off (default 80)",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def _usage_error(message: str) -> int:
    print(f"otb-gateway: {message}", file=sys.stderr)
    return EXIT_USAGE


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    args.state_dir = os.path.abspath(args.state_dir)  # children get it in their command lines
    log = Logger(level=args.log_level, component="gateway")
    runner: Runner = DryRunRunner() if args.dry_run else Runner()
    if not 1 <= args.wg_port <= 65535:
        return _usage_error("--wg-port must be from 1 to 65535")
    if not 0 <= args.ping_port <= 65535:
        return _usage_error("--ping-port must be from 0 (off) to 65535")
    if args.poll_interval <= 0 or args.report_interval <= 0:
        return _usage_error("--poll-interval and --report-interval must be positive")
    if not args.dry_run:
        for sub in ("", "run", "log", "ss"):
            ensure_dir(os.path.join(args.state_dir, sub))
    supervisor = Supervisor(runner, args.state_dir, log)
    converger = Converger(runner, supervisor, args.state_dir, log)
    if args.cleanup:
        supervisor.adopt()
        result = converger.teardown()
        log.info("gateway_cleanup", changes=result.commands, errors=result.errors)
        return EXIT_FAILED if result.errors else EXIT_OK
    if not args.server or not args.token_file:
        return _usage_error("--server and --token-file are required")
    try:
        with open(args.token_file, encoding="utf-8") as f:
            token = f.read().strip()
    except OSError as e:
        return _usage_error(f"cannot read --token-file: {e}")
    if not token:
        return _usage_error(f"--token-file {args.token_file} is empty")
    gateway = Gateway(
        server=args.server,
        token=token,
        wg_port=args.wg_port,
        runner=runner,
        supervisor=supervisor,
        converger=converger,
        reporter=Reporter(runner, upstream=args.upstream),
        log=log,
        poll_interval=args.poll_interval,
        report_interval=args.report_interval,
        ping=PingResponder(port=args.ping_port, log=log) if args.ping_port else None,
    )
    if args.once or args.dry_run:
        return gateway.once()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):
            signal.signal(sig, lambda *_: gateway.stop())
    return gateway.run()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
