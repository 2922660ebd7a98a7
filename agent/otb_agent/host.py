"""The real box: :class:`HostSystem` runs the commands on the host the agent runs on.

The blocking work (programs, sockets, downloads) runs in a worker thread. Missing tools are
reported in the result, never raised: diagnostics on a box without ``traceroute`` still answer.
"""

from __future__ import annotations

import asyncio
import functools
import os
import shlex
import socket
import subprocess
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple
from urllib.parse import urlsplit

from otb_protocol import DIAGNOSTIC_CHECKS

from . import firmware, httpapi
from .system import BoxSystem, CommandOutcome, Progress

MAX_OUTPUT_CHARS = 4000


def _clip(text: str, limit: int = MAX_OUTPUT_CHARS) -> str:
    if len(text) <= limit:
        return text
    return text[: limit - 40] + f"\n...[{len(text) - limit + 40} chars truncated]"


def run_command(argv: Sequence[str], timeout: float = 120.0) -> Dict[str, Any]:
    """Run argv; never raises for a missing tool or timeout (reported in the result)."""
    t0 = time.monotonic()
    try:
        p = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        return {
            "ok": False,
            "output": "",
            "error": f"{argv[0]}: not found",
            "duration_s": 0.0,
            "missing": True,
        }
    except subprocess.TimeoutExpired:
        return {"ok": False, "output": "", "error": f"timed out after {timeout:g}s", "duration_s": timeout}
    except OSError as e:
        return {"ok": False, "output": "", "error": str(e), "duration_s": round(time.monotonic() - t0, 3)}
    err = (p.stderr or "").strip()
    return {
        "ok": p.returncode == 0,
        "output": _clip(p.stdout or ""),
        "error": None if p.returncode == 0 else _clip(err or f"exit status {p.returncode}", 1000),
        "duration_s": round(time.monotonic() - t0, 3),
    }


def split_command(cmd: str) -> List[str]:
    return shlex.split(cmd)


def server_host_port(server: str) -> "tuple[str, int]":
    u = urlsplit(server)
    port = u.port or (443 if u.scheme in ("https", "wss") else 80)
    return u.hostname or "", port


def check_dns(host: str) -> Dict[str, Any]:
    t0 = time.monotonic()
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
        addrs = sorted({str(i[4][0]) for i in infos})
        return {
            "ok": True,
            "output": ", ".join(addrs),
            "error": None,
            "duration_s": round(time.monotonic() - t0, 3),
        }
    except OSError as e:
        return {"ok": False, "output": "", "error": str(e), "duration_s": round(time.monotonic() - t0, 3)}


def check_tcp(host: str, port: int, timeout: float = 5.0) -> Dict[str, Any]:
    t0 = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            peer = s.getpeername()
        dt = round(time.monotonic() - t0, 3)
        return {
            "ok": True,
            "output": f"connected to {peer[0]}:{peer[1]} in {dt * 1000:.1f} ms",
            "error": None,
            "duration_s": dt,
        }
    except OSError as e:
        return {"ok": False, "output": "", "error": str(e), "duration_s": round(time.monotonic() - t0, 3)}


def diagnostics(
    server: str,
    progress: Optional[Callable[[int, str], None]] = None,
    checks: Optional[Sequence[str]] = None,
    tunnel_iface: Optional[str] = None,
) -> Dict[str, Any]:
    """Run the fixed diagnostics checks; each check -> {ok, output, error, duration_s}.

    ``dns`` also carries a TCP connect to the server (``tcp_connect`` in its output)."""
    host, port = server_host_port(server)

    def dns_and_tcp() -> Dict[str, Any]:
        res = check_dns(host)
        tcp = check_tcp(host, port)
        res["tcp_connect"] = tcp
        res["ok"] = res["ok"] and tcp["ok"]
        if tcp["error"] and not res["error"]:
            res["error"] = f"tcp connect to {host}:{port}: {tcp['error']}"
        return res

    def tunnel() -> Dict[str, Any]:
        if tunnel_iface:
            return run_command(["ip", "-j", "link", "show", "dev", tunnel_iface], timeout=15)
        return run_command(["wg", "show"], timeout=15)

    all_steps = {
        "interfaces": lambda: run_command(["ip", "-j", "addr"], timeout=15),
        "routes": lambda: run_command(["ip", "route"], timeout=15),
        "dns": dns_and_tcp,
        "ping": lambda: run_command(["ping", "-c", "3", "-W", "1", host], timeout=15),
        "mptcp": lambda: run_command(["ip", "mptcp", "endpoint", "show"], timeout=15),
        "tunnel": tunnel,
        "traceroute": lambda: run_command(
            ["traceroute", "-n", "-w", "1", "-q", "1", "-m", "15", host], timeout=40
        ),
    }
    wanted = [c for c in DIAGNOSTIC_CHECKS if checks is None or c in checks]
    results: Dict[str, Any] = {}
    for i, name in enumerate(wanted):
        try:
            results[name] = all_steps[name]()
        except Exception as e:  # a broken check must not kill the others
            results[name] = {"ok": False, "output": "", "error": repr(e), "duration_s": 0.0}
        if progress is not None:
            progress(int((i + 1) * 100 / len(wanted)), f"{name} done")
    return {"checks": results, "server": {"host": host, "port": port}}


class HostSystem(BoxSystem):
    """The box the agent runs on. ``reboot_command`` and ``restart_command`` are shell-like
    command lines; ``firmware_apply_command`` installs a verified image (``{image}`` is its path)."""

    def __init__(
        self,
        *,
        reboot_command: str = "reboot",
        restart_command: str = "/etc/init.d/network restart",
        firmware_apply_command: Optional[str] = None,
    ) -> None:
        self.reboot_command = reboot_command
        self.restart_command = restart_command
        self.firmware_apply_command = (
            firmware_apply_command
            or os.environ.get("OTB_FIRMWARE_APPLY_COMMAND")
            or firmware.DEFAULT_APPLY_COMMAND
        )

    async def reboot(self) -> CommandOutcome:
        res = await asyncio.to_thread(run_command, split_command(self.reboot_command), 60.0)
        if res["ok"]:
            return True, {"rebooting": True, "output": res["output"]}, None
        return False, {"output": res["output"]}, res["error"]

    async def restart_services(self) -> CommandOutcome:
        res = await asyncio.to_thread(run_command, split_command(self.restart_command), 120.0)
        return res["ok"], {"output": res["output"], "duration_s": res["duration_s"]}, res["error"]

    async def diagnostics(
        self, *, server: str, checks: Optional[Sequence[str]], tunnel_iface: Optional[str], progress: Progress
    ) -> Dict[str, Any]:
        return await asyncio.to_thread(diagnostics, server, progress.report_from_thread, checks, tunnel_iface)

    def speed_test_output(self) -> Dict[str, Any]:
        return {}

    async def speed_test(
        self, *, server: str, token: str, direction: str, nbytes: int, iface: Optional[str]
    ) -> Tuple[int, float]:
        transfer = httpapi.speedtest if direction == "download" else httpapi.speedtest_upload
        return await asyncio.to_thread(transfer, server, token, nbytes, httpapi.SPEEDTEST_TIMEOUT, iface)

    async def firmware_upgrade(
        self,
        upgrade: firmware.UpgradeParams,
        *,
        server: str,
        token: str,
        state_dir: Optional[str],
        current_version: str,
        progress: Progress,
    ) -> CommandOutcome:
        job = functools.partial(
            firmware.run_upgrade,
            upgrade,
            state_dir=state_dir or os.path.join(os.path.expanduser("~"), ".otb-agent"),
            server=server,
            token=token,
            public_key=firmware.signing_key_from_config(state_dir),
            current_version=current_version,
            apply_command=self.firmware_apply_command,
            progress=progress.report_from_thread,
        )
        try:
            output = await asyncio.to_thread(job)
        except firmware.FirmwareError as exc:
            return False, {"code": exc.code}, str(exc)
        return True, output, None

    def reboot_pending(self) -> bool:
        return False  # the reboot command stops the agent's process with the rest of the box

    async def complete_reboot(self, stopping: asyncio.Event) -> None:
        return None

    def link_dropped(self) -> bool:
        return False
