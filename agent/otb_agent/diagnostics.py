"""Programs run on the host, and the diagnostics checks (blocking: the agent runs them in a thread).

A missing tool or a timeout is reported in the result, never raised: diagnostics on a box without
``traceroute`` still answer.
"""

from __future__ import annotations

import shlex
import socket
import subprocess
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple
from urllib.parse import urlsplit

from otb_protocol import DIAGNOSTIC_CHECKS

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


def server_host_port(server: str) -> Tuple[str, int]:
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


def run_checks(
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
