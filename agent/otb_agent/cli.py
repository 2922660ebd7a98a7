"""Command line: ``otb-agent enroll | run | status | plan | simulate``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from . import __version__
from .agent import EXIT_UNAUTHORIZED, Agent
from .backoff import Backoff
from .collectors import Collector, make_collector, parse_wan_arg
from .collectors.probe import DEFAULT_COMMAND, PingProbe
from .collectors.simulated import SimulatedCollector, SimulatedSystem
from .dataplane import TUNNEL_INTERFACE
from .diagnostics import server_host_port
from .host import HostSystem
from .store import SqliteStore
from .system import BoxSystem
from .util import (
    CONFIG_FILE,
    CREDENTIALS_FILE,
    DB_FILE,
    STATUS_FILE,
    Logger,
    Status,
    default_state_dir,
    read_json,
)

if TYPE_CHECKING:
    from .dataplane.linux import LinuxDataplane

EXIT_USAGE = 2
EXIT_ENROLL_REJECTED = 4


# ---------------------------------------------------------------------------- commands


def cmd_enroll(args: argparse.Namespace) -> int:
    # Imported here on purpose, like the simulator below: enrollment (key generation, x25519) runs
    # once per box, and `otb-agent run` stays within its memory budget (bench/agent.py: <= 30 MiB).
    from .enrollment import EnrollError, enroll_box, local_mac, local_model

    log = Logger(level=args.log_level)
    try:
        creds = enroll_box(
            args.server,
            args.serial,
            args.state_dir,
            secret=args.secret,
            enrollment_token=args.enrollment_token,
            model=args.model or local_model(),
            mac=args.mac or local_mac(),
            new_key=args.new_key,
            log=log,
        )
    except EnrollError as e:
        print(f"otb-agent: {e}", file=sys.stderr)
        return EXIT_ENROLL_REJECTED
    print(f"enrolled {creds['serial']} as box {creds['box_id']}; credentials in {args.state_dir}")
    return 0


def _build_collector(
    args: argparse.Namespace, server: str, serial: Optional[str], dataplane: Optional[LinuxDataplane] = None
) -> Collector:
    name = args.collector or ("openwrt" if os.path.exists("/etc/openwrt_release") else "linux")
    probe = None
    if name != "simulated" and not args.no_probe:
        target = args.probe_target or server_host_port(server)[0]
        probe = PingProbe(target, command=args.probe_command or DEFAULT_COMMAND, count=args.probe_count)
    wans = [parse_wan_arg(w) for w in args.wan or []]
    if dataplane is not None:
        return make_collector(
            name,
            serial=serial,
            wans=wans,
            probe=probe,
            tunnel_iface=dataplane.tunnel_interface,
            proxy_alive=dataplane.proxy_alive,
        )
    return make_collector(name, serial=serial, wans=wans, probe=probe, tunnel_iface=args.tunnel_iface)


def _build_system(args: argparse.Namespace, collector: Collector) -> BoxSystem:
    """The real box, or a simulated one for ``--collector simulated``."""
    if isinstance(collector, SimulatedCollector):
        return SimulatedSystem(collector)
    return HostSystem(
        reboot_command=args.reboot_command,
        restart_command=args.restart_command,
        firmware_apply_command=args.firmware_apply_command,
    )


def cmd_run(args: argparse.Namespace) -> int:
    state_dir = args.state_dir
    creds = read_json(os.path.join(state_dir, CREDENTIALS_FILE))
    if not creds or not creds.get("agent_token"):
        print(
            f"otb-agent: not enrolled (no {CREDENTIALS_FILE} in {state_dir}); run 'otb-agent enroll'",
            file=sys.stderr,
        )
        return EXIT_USAGE
    log = Logger(level=args.log_level, serial=creds.get("serial"))
    server = args.server or creds["server"]
    dataplane = None
    if args.apply == "linux":
        # Imported here on purpose (see cmd_enroll): only a box applying its own data plane pays for it.
        from .dataplane.linux import LinuxDataplane

        dataplane = LinuxDataplane(
            state_dir=state_dir, log=log, tunnel_interface=args.tunnel_iface or TUNNEL_INTERFACE
        )
    collector = _build_collector(args, server, creds.get("serial"), dataplane)
    saved = read_json(os.path.join(state_dir, CONFIG_FILE))
    if isinstance(saved, dict):
        collector.configure(saved)
        if dataplane is not None:
            dataplane.config = saved  # the data plane comes up before the server is reached
    store = SqliteStore(os.path.join(state_dir, DB_FILE), cap=args.buffer_cap)
    status = Status(os.path.join(state_dir, STATUS_FILE))
    agent = Agent(
        server=server,
        token=creds["agent_token"],
        serial=creds.get("serial") or "",
        collector=collector,
        store=store,
        system=_build_system(args, collector),
        log=log,
        status=status,
        state_dir=state_dir,
        apply_hook=args.apply_hook,
        config_applier=dataplane.apply_config if dataplane is not None else None,
        backoff=Backoff(base=args.backoff_base, cap=args.backoff_cap),
        telemetry_interval=args.telemetry_interval,
    )

    async def main() -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, agent.stop)
        log.info(
            "agent_start", version=__version__, server=server, collector=collector.name, state_dir=state_dir
        )
        if dataplane is None:
            return await agent.run()
        stop = asyncio.Event()
        watcher = asyncio.ensure_future(dataplane.run(stop))
        try:
            return await agent.run(stop)
        finally:
            stop.set()
            await watcher  # stops ss-redir and wireguard-go

    try:
        rc = asyncio.run(main())
    finally:
        store.close()
    if rc == EXIT_UNAUTHORIZED:
        print(
            "otb-agent: the server rejected the agent token (revoked or unknown). The agent stopped; "
            "re-enroll this box with 'otb-agent enroll'.",
            file=sys.stderr,
        )
    return rc


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cmd_status(args: argparse.Namespace) -> int:
    st = read_json(os.path.join(args.state_dir, STATUS_FILE))
    creds = read_json(os.path.join(args.state_dir, CREDENTIALS_FILE)) or {}
    if args.json:
        print(json.dumps(st or {}, indent=2, sort_keys=True))
        return 0 if st else 1
    if not st:
        enrolled = "enrolled" if creds.get("agent_token") else "not enrolled"
        print(f"no status yet in {args.state_dir} ({enrolled}; is the agent running?)")
        return 1
    state = st.get("state")
    if state != "stopped" and not _pid_alive(st.get("pid")):
        state = f"{state} (agent process {st.get('pid')} not running)"
    lines = [
        f"box:             {creds.get('serial', '?')} ({creds.get('box_id', '?')})",
        f"server:          {creds.get('server', '?')}",
        f"state:           {state}",
        f"session:         {st.get('session_id') or '-'}",
        f"buffer depth:    {st.get('buffer_depth', 0)} messages",
        f"last acked seq:  {st.get('last_acked_seq', 0)}",
        f"dropped samples: {st.get('dropped_total', 0)} (total)",
        f"applied config:  {st.get('applied_config_hash') or '-'}",
    ]
    if st.get("updated_at"):
        lines.append(
            f"updated:         {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(st['updated_at']))}"
        )
    errs: List[Dict[str, Any]] = st.get("last_errors") or []
    lines.append(f"last errors:     {'none' if not errs else ''}")
    for e in errs[-5:]:
        ts = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.get("ts", 0)))
        lines.append(f"  {ts} {e.get('event')}: {e.get('message')}")
    print("\n".join(lines))
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    # Imported here on purpose (see cmd_enroll): `otb-agent run` without --apply linux does not need it.
    from .dataplane.linux import LinkObserver, subprocess_runner
    from .dataplane.plan import PlanError, plan_build, plan_json

    config = read_json(args.config)
    if not isinstance(config, dict):
        print(f"otb-agent: {args.config} holds no config object", file=sys.stderr)
        return 1
    state_dir = args.state_dir or os.path.dirname(os.path.abspath(args.config))
    if args.links:
        text = args.links
        if not text.lstrip().startswith("{"):
            with open(text, encoding="utf-8") as f:
                text = f.read()
        try:
            links = json.loads(text)
        except ValueError as e:
            print(f"otb-agent: --links is not JSON: {e}", file=sys.stderr)
            return 1
        direct = None
    else:
        policy = config.get("wan_policy")
        interfaces = policy.get("interfaces") if isinstance(policy, dict) else None
        names = [str(i["name"]) for i in interfaces or [] if isinstance(i, dict) and i.get("name")]
        observer = LinkObserver(subprocess_runner)
        links = observer.observe([(n, n) for n in names])
        direct = observer.direct_networks
    try:
        plan = plan_build(
            config, links, state_dir=state_dir, tunnel_interface=args.tunnel_iface, direct_networks=direct
        )
    except PlanError as e:
        print(f"otb-agent: {e}", file=sys.stderr)
        return 1
    print(plan_json(plan))
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    # Imported here on purpose: the fleet simulator is not part of what a box runs (see cmd_enroll).
    from .simulate import run_simulation

    return run_simulation(args)


# ---------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="otb-agent", description="OTB box agent")
    p.add_argument("--version", action="version", version=f"otb-agent {__version__}")
    p.add_argument(
        "--state-dir",
        dest="top_state_dir",
        metavar="STATE_DIR",
        help="state directory, before the command (same as the command's own --state-dir)",
    )
    sub = p.add_subparsers(dest="command")
    sub.required = True

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--state-dir",
            default=default_state_dir(),
            help="state directory (default $OTB_AGENT_STATE_DIR or /var/lib/otb-agent)",
        )
        sp.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    e = sub.add_parser("enroll", help="enroll this box and store its credentials")
    common(e)
    e.add_argument("--server", required=True, help="server base URL, e.g. https://fleet.example.com")
    e.add_argument("--serial", required=True)
    g = e.add_mutually_exclusive_group(required=True)
    g.add_argument("--secret", help="factory secret")
    g.add_argument("--enrollment-token", help="enrollment token")
    e.add_argument("--model")
    e.add_argument("--mac")
    e.add_argument("--new-key", action="store_true", help="generate a new WireGuard key pair")
    e.set_defaults(func=cmd_enroll)

    r = sub.add_parser("run", help="hold the session with the server")
    common(r)
    r.add_argument("--server", help="override the server URL from credentials.json")
    r.add_argument("--collector", choices=["linux", "openwrt", "simulated"])
    applying = r.add_mutually_exclusive_group()
    applying.add_argument(
        "--apply-hook", help="script run with the config.json path after each config change"
    )
    applying.add_argument(
        "--apply",
        choices=["linux"],
        help="apply each config to this Linux host (MPTCP, routing, ss-redir, WireGuard, nftables) "
        "and follow the WANs' state",
    )
    r.add_argument("--probe-target", help="host pinged through each WAN (default: the server host)")
    r.add_argument(
        "--probe-command", help="probe command template, default 'ping -c {count} -W 1 -I {iface} {target}'"
    )
    r.add_argument("--probe-count", type=int, default=3)
    r.add_argument("--no-probe", action="store_true", help="do not probe WAN latency")
    r.add_argument(
        "--wan",
        action="append",
        metavar="IFACE[:KIND[:LABEL]]",
        help="WAN interface (repeatable; default: from the applied config)",
    )
    r.add_argument(
        "--tunnel-iface",
        help="tunnel interface for aggregate throughput (default from config); with --apply linux, the "
        f"WireGuard interface the agent creates (default {TUNNEL_INTERFACE})",
    )
    r.add_argument("--buffer-cap", type=int, default=10_000, help="max queued telemetry messages")
    r.add_argument("--telemetry-interval", type=float, help="override the server's telemetry interval (s)")
    r.add_argument("--backoff-base", type=float, default=1.0)
    r.add_argument("--backoff-cap", type=float, default=60.0)
    r.add_argument("--reboot-command", default="reboot")
    r.add_argument(
        "--firmware-apply-command",
        default=os.environ.get("OTB_FIRMWARE_APPLY_COMMAND", "sysupgrade {image}"),
        help="command installing a verified firmware image ({image} is its path)",
    )
    r.add_argument("--restart-command", default="/etc/init.d/network restart")
    r.set_defaults(func=cmd_run)

    s = sub.add_parser("status", help="show the agent session state")
    s.add_argument("--state-dir", default=default_state_dir())
    s.add_argument("--json", action="store_true", help="print status.json as is")
    s.set_defaults(func=cmd_status)

    pl = sub.add_parser("plan", help="print the data-plane plan of a config (JSON)")
    pl.add_argument("config", help="config.json as GET /api/v1/agent/config serves it")
    pl.add_argument(
        "--links",
        help="observed WANs as JSON (or a file holding it): {name: {up, address, gateway, device}}; "
        "default: read from the kernel, with the main table's routes (LAN TCP to them is not "
        "redirected; with --links, the private ranges are not)",
    )
    pl.add_argument("--state-dir", help="where the agent keeps its files (default: the config's folder)")
    pl.add_argument("--tunnel-iface", default=TUNNEL_INTERFACE, help="WireGuard interface name")
    pl.set_defaults(func=cmd_plan)

    m = sub.add_parser("simulate", help="run N simulated boxes in one process")
    common(m)
    m.set_defaults(log_level="warning")
    m.add_argument(
        "--boxes", type=int, help="number of boxes (default: all rows of --boxes-csv/--credentials-file)"
    )
    m.add_argument("--server", required=True)
    src = m.add_mutually_exclusive_group(required=True)
    src.add_argument("--enrollment-token", help="enroll SIM-00001.. with this token")
    src.add_argument("--boxes-csv", help="CSV with a header containing serial,factory_secret")
    src.add_argument("--credentials-file", help="JSON lines {serial, agent_token} (already enrolled)")
    m.add_argument("--serial-prefix", default="SIM")
    m.add_argument("--interval", type=float, help="telemetry interval override (s)")
    m.add_argument(
        "--fail-fraction",
        type=float,
        default=0.0,
        help="fraction of flaky boxes (links fail 8x more often, connections drop at random)",
    )
    m.add_argument(
        "--memory-buffer", action="store_true", help="in-memory telemetry buffer instead of SQLite"
    )
    # firmware (rollouts): fake upgrades
    m.add_argument("--upgrade-fail-fraction", type=float, default=0.0, help="fraction of upgrades that fail")
    m.add_argument(
        "--upgrade-unhealthy-fraction",
        type=float,
        default=0.0,
        help="fraction of upgraded boxes that come back with every link down",
    )
    m.add_argument("--reboot-delay", type=float, default=3.0, help="simulated reboot downtime (s)")
    m.add_argument("--buffer-cap", type=int, default=1000)
    m.add_argument("--concurrency", type=int, default=200, help="max websocket handshakes in flight")
    m.add_argument("--enroll-concurrency", type=int, default=16)
    m.add_argument("--ramp", type=float, help="spread the first connections over this many seconds")
    m.add_argument("--no-config", action="store_true", help="do not fetch/apply configs")
    m.add_argument("--progress-interval", type=float, default=5.0)
    m.add_argument("--duration", type=float, help="stop after this many seconds")
    m.set_defaults(func=cmd_simulate)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    top = getattr(args, "top_state_dir", None)
    if top and hasattr(args, "state_dir") and args.state_dir in (None, default_state_dir()):
        args.state_dir = top
    if (
        args.command == "simulate"
        and args.state_dir == default_state_dir()
        and "--state-dir" not in (argv or sys.argv)
    ):
        args.state_dir = os.path.join(os.getcwd(), "sim-state")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `otb-agent status | head`
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
