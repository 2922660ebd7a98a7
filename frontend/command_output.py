"""How a command's result reads on the box page: a headline in words, labelled facts, and for the
diagnostics one line per check (with the tool's own output one click away), never a raw dict.

The agents answer in the formats of docs/agent-protocol.md (``command_result``): the diagnostics
carry the output of ``ip -j addr``, ``ip route``, ``ping``, ``ip mptcp endpoint show``, ``wg show``
(or ``ip -j link``) and ``traceroute``, the same on a real box and a simulated one. Anything this
module does not recognise is still shown, as labelled facts. Checks are listed in the protocol's
order (the database keeps a JSON object's keys in an order of its own).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from otb_protocol import DIAGNOSTIC_CHECKS

from fleet.commands.choices import CommandKind, CommandState

TUNNEL_TARGET = "all links (tunnel)"
NO_VALUE = "\N{EN DASH}"
CHECK_LABELS = {
    "interfaces": "Interfaces",
    "routes": "Routes",
    "dns": "Name lookup and connection",
    "ping": "Ping",
    "mptcp": "MPTCP endpoints",
    "tunnel": "Tunnel",
    "traceroute": "Traceroute",
}
_PING_COUNTS = re.compile(r"(\d+) packets transmitted, (\d+) (?:packets )?received")
_PING_RTT = re.compile(r"= [\d.]+/([\d.]+)/")
_HOP = re.compile(r"^\s*\d+\s")


@dataclass(frozen=True)
class CheckView:
    """One diagnostics check: what it found (``summary``) and the tool's output (``detail``, or
    ``table`` rows for the interfaces)."""

    name: str
    label: str
    ok: bool
    summary: str
    detail: str = ""
    table: list[tuple[str, str, str]] = field(default_factory=list)
    duration_s: float | None = None


@dataclass(frozen=True)
class CommandView:
    """A finished command's result as the page shows it."""

    headline: str = ""
    target: str = ""
    facts: list[tuple[str, str]] = field(default_factory=list)
    checks: list[CheckView] = field(default_factory=list)
    excerpt: str = ""
    simulated: bool = False


def rate(mbps: float | None) -> str:
    """A bit rate given in Mbit/s, as people write it: ``423 Mbit/s``, ``8.4 Mbit/s``, ``1.23 Gbit/s``."""
    if mbps is None:
        return NO_VALUE
    value = float(mbps)
    if value >= 1000:
        return f"{value / 1000:.3g} Gbit/s"
    if value < 1:
        return f"{value * 1000:.3g} kbit/s"
    text = f"{value:.0f}" if value >= 100 else f"{value:.1f}".removesuffix(".0")
    return f"{text} Mbit/s"


def command_view(command: Any, labels: Mapping[str, str] | None = None) -> CommandView:
    """The result of ``command`` (a ``Command``) for people; ``labels`` names the box's links by
    interface. An open command, or one that ended without a result, has an empty view."""
    result = command.result if isinstance(command.result, dict) else {}
    if not result:
        return CommandView()
    simulated = bool(result.get("simulated"))
    if result.get("truncated"):
        return CommandView(
            headline="The result was too large to keep; its beginning is below.",
            excerpt=str(result.get("excerpt") or ""),
            simulated=simulated,
        )
    kind = command.kind
    if kind == CommandKind.SPEED_TEST:
        view = _speed_test(command, result, labels or {})
    elif kind == CommandKind.DIAGNOSTICS and isinstance(result.get("checks"), dict):
        view = _diagnostics(command, result)
    else:
        output = result.get("output")
        excerpt = output if isinstance(output, str) else ""
        view = CommandView(
            headline=_sentence(kind, result),
            facts=_facts(result, skip=_SENTENCE_KEYS | {"output"}),
            excerpt=excerpt,
        )
    return CommandView(**{**view.__dict__, "simulated": simulated})


# -- speed tests ----------------------------------------------------------------------------------


def _figures(result: Mapping[str, Any]) -> tuple[float | None, float | None]:
    """(download Mbit/s, upload Mbit/s) of a speed test's output."""
    down = result.get("mbps") if result.get("direction", "download") in ("download", "both") else None
    upload = result.get("upload")
    up = upload.get("mbps") if isinstance(upload, dict) else None
    return _number(down), _number(up)


def speed_test_headline(result: Mapping[str, Any]) -> str:
    down, up = _figures(result)
    parts = ([f"↓ {rate(down)}"] if down is not None else []) + ([f"↑ {rate(up)}"] if up is not None else [])
    return " ".join(parts)


def target_label(iface: str | None, labels: Mapping[str, str]) -> str:
    if not iface:
        return TUNNEL_TARGET
    label = labels.get(iface)
    return f"{label} ({iface})" if label and label != iface else iface


def _speed_test(command: Any, result: Mapping[str, Any], labels: Mapping[str, str]) -> CommandView:
    facts = []
    if result.get("bytes") is not None and result.get("duration_s") is not None:
        facts.append(("Download", _moved(result["bytes"], result["duration_s"])))
    upload = result.get("upload")
    if isinstance(upload, dict) and upload.get("bytes") is not None and upload.get("duration_s") is not None:
        facts.append(("Upload", _moved(upload["bytes"], upload["duration_s"])))
    iface = result.get("iface") or (command.params or {}).get("iface")
    return CommandView(headline=speed_test_headline(result), target=target_label(iface, labels), facts=facts)


def _moved(nbytes: Any, seconds: Any) -> str:
    return f"{float(nbytes) / 1e6:g} MB in {float(seconds):.2f} s"


def speed_test_history(commands: Iterable[Any]) -> list[dict[str, Any]]:
    """The succeeded speed tests among ``commands``, oldest first: ``{"ts", "target" (the interface,
    "" through the tunnel), "down_mbps", "up_mbps"}`` (the speed-test chart's data)."""
    points = []
    for command in commands:
        if command.kind != CommandKind.SPEED_TEST or command.state != CommandState.SUCCEEDED:
            continue
        result = command.result if isinstance(command.result, dict) else {}
        down, up = _figures(result)
        when = command.finished_at or command.created_at
        iface = result.get("iface") or (command.params or {}).get("iface") or ""
        points.append(
            {"ts": when.isoformat(), "target": iface, "down_mbps": down, "up_mbps": up, "_at": when}
        )
    points.sort(key=lambda point: point["_at"])
    return [{key: value for key, value in point.items() if key != "_at"} for point in points]


def speed_test_latest(history: list[dict[str, Any]], labels: Mapping[str, str]) -> list[dict[str, Any]]:
    """The latest speed test through the tunnel and through each link: the total first."""
    latest: dict[str, dict[str, Any]] = {}
    for point in history:
        latest[point["target"]] = point
    rows = []
    for target in sorted(latest, key=lambda name: (name != "", name)):
        point = latest[target]
        rows.append(
            {
                "label": target_label(target, labels).capitalize()
                if not target
                else target_label(target, labels),
                "target": target,
                "down": rate(point["down_mbps"]) if point["down_mbps"] is not None else NO_VALUE,
                "up": rate(point["up_mbps"]) if point["up_mbps"] is not None else NO_VALUE,
                "ts": point["ts"],
            }
        )
    return rows


# -- diagnostics ----------------------------------------------------------------------------------


def _diagnostics(command: Any, result: Mapping[str, Any]) -> CommandView:
    server = result.get("server")
    host = str(server.get("host") or "the server") if isinstance(server, dict) else "the server"
    order = {name: index for index, name in enumerate(DIAGNOSTIC_CHECKS)}
    named = sorted(result["checks"].items(), key=lambda item: (order.get(item[0], len(order)), item[0]))
    checks = [_check(name, check, host) for name, check in named if isinstance(check, dict)]
    failed = [check.name for check in checks if not check.ok]
    if failed:
        headline = f"Failed: {', '.join(failed)} ({len(checks) - len(failed)} of {len(checks)} passed)"
    else:
        headline = f"All {len(checks)} checks passed"
    return CommandView(headline=headline, checks=checks)


def _check(name: str, check: Mapping[str, Any], host: str) -> CheckView:
    output = str(check.get("output") or "")
    ok = bool(check.get("ok"))
    table: list[tuple[str, str, str]] = []
    detail = output
    summary = ""
    if name == "interfaces":
        table, summary = _interfaces(output)
        detail = "" if table else output
    elif name == "routes":
        summary = _routes(output)
    elif name == "dns":
        connect = check.get("tcp_connect")
        connected = connect.get("output") if isinstance(connect, dict) else ""
        summary = f"Resolved to {output}" + (f"; {connected}" if connected else "") if output else ""
    elif name == "ping":
        summary = _ping(output)
    elif name == "mptcp":
        endpoints = [line for line in output.splitlines() if " id " in line]
        backups = sum(1 for line in endpoints if " backup" in line)
        summary = f"{len(endpoints)} endpoint{'s' if len(endpoints) != 1 else ''}" + (
            f" ({backups} backup)" if backups else ""
        )
    elif name == "tunnel":
        summary = _tunnel(output)
    elif name == "traceroute":
        hops = [line for line in output.splitlines() if _HOP.match(line)]
        summary = f"{len(hops)} hop{'s' if len(hops) != 1 else ''} to {host}" if hops else ""
    if not ok:
        error = str(check.get("error") or "failed")
        summary = error[:1].upper() + error[1:]
    return CheckView(
        name=name,
        label=CHECK_LABELS.get(name, name.replace("_", " ").capitalize()),
        ok=ok,
        summary=summary or _first_line(output) or ("Passed" if ok else "Failed"),
        detail=detail.strip("\n"),
        table=table,
        duration_s=_number(check.get("duration_s")),
    )


def _interfaces(output: str) -> tuple[list[tuple[str, str, str]], str]:
    try:
        items = json.loads(output)
    except ValueError:
        return [], ""
    if not isinstance(items, list):
        return [], ""
    rows = []
    up = 0
    for item in items:
        if not isinstance(item, dict):
            continue
        state = str(item.get("operstate") or "")
        is_up = state != "DOWN" and "UP" in (item.get("flags") or [])
        up += is_up
        addresses = ", ".join(
            f"{address.get('local')}/{address.get('prefixlen')}"
            for address in item.get("addr_info") or []
            if isinstance(address, dict) and address.get("local")
        )
        rows.append((str(item.get("ifname") or "?"), "up" if is_up else "down", addresses or NO_VALUE))
    return rows, f"{len(rows)} interfaces, {up} up"


def _routes(output: str) -> str:
    defaults = [line.split() for line in output.splitlines() if line.startswith("default")]
    if not defaults:
        return "No default route"
    first = defaults[0]
    via = first[first.index("via") + 1] if "via" in first else ""
    dev = first[first.index("dev") + 1] if "dev" in first else ""
    text = "Default route" + (f" via {via}" if via else "") + (f" dev {dev}" if dev else "")
    return text + (f" (+{len(defaults) - 1} more)" if len(defaults) > 1 else "")


def _ping(output: str) -> str:
    counts = _PING_COUNTS.search(output)
    if counts is None:
        return ""
    sent, received = int(counts.group(1)), int(counts.group(2))
    average = _PING_RTT.search(output)
    text = f"{received} of {sent} replies"
    return text + (f", average {float(average.group(1)):.1f} ms" if average and received else "")


def _tunnel(output: str) -> str:
    endpoint = re.search(r"endpoint: (\S+)", output)
    if endpoint is not None:
        handshake = re.search(r"latest handshake: (.+)", output)
        return f"Peer {endpoint.group(1)}" + (f", last handshake {handshake.group(1)}" if handshake else "")
    try:
        links = json.loads(output)
    except ValueError:
        return ""
    if isinstance(links, list) and links and isinstance(links[0], dict):
        return f"{links[0].get('ifname')} is {str(links[0].get('operstate', '')).lower() or 'present'}"
    return ""


# -- other kinds ----------------------------------------------------------------------------------

_SENTENCE_KEYS = {
    "rebooting",
    "rebooted",
    "restarted",
    "config_hash",
    "changed",
    "stage",
    "version",
    "simulated",
}


def _sentence(kind: str, result: Mapping[str, Any]) -> str:
    if kind == CommandKind.REBOOT:
        if result.get("rebooted"):
            return "The box restarted."
        return "The box is restarting." if result.get("rebooting") else ""
    if kind == CommandKind.RESTART_SERVICES:
        return "Network services restarted." if result.get("restarted", True) else ""
    if kind == CommandKind.REFRESH_CONFIG:
        if result.get("queued"):
            return "Queued behind the configuration update in progress."
        if result.get("changed"):
            return f"Configuration {str(result.get('config_hash', ''))[:12]}… applied."
        return "The configuration was already up to date." if "changed" in result else ""
    if kind == CommandKind.FIRMWARE_UPGRADE:
        if result.get("stage") == "rebooting":
            return f"Installed {result.get('version')}; the box is restarting into it."
        return f"Not installed ({result['code']})." if result.get("code") else ""
    return ""


def _facts(result: Mapping[str, Any], skip: set[str]) -> list[tuple[str, str]]:
    return [
        (key.replace("_", " ").capitalize(), _value(value))
        for key, value in result.items()
        if key not in skip and value not in (None, "", [], {})
    ]


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return "; ".join(f"{key}: {_value(item)}" for key, item in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(_value(item) for item in value)
    return str(value)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")
