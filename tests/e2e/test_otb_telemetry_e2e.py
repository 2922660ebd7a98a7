"""A stock OverTheBox box's telemetry against a real uvicorn server, with curl shaped like the box's
``otb_call`` (tests/e2e/test_otb_identity_e2e.py): events, properties as a JSON string, metrics posted
twice (as otb-graph does every minute), then read back through our own telemetry API, and a
diagnostic run attached to its command."""

from __future__ import annotations

import concurrent.futures
import json
import shutil
import time
import urllib.parse
import urllib.request
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from fleet.commands.models import Command
from fleet.commands.services import command_create
from fleet.core.audit import Actor
from fleet.core.choices import BoxProtocol, EventKind
from fleet.core.models import Box, Event
from fleet.telemetry.models import BoxStatus, WanStatus
from otbcompat.binding import device_claim
from otbcompat.services import service_name
from tests.e2e.otbbox import box_subscribe, otb_call
from tests.otbcompat.test_telemetry import properties_document

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(shutil.which("curl") is None, reason="curl is needed to call like the box"),
]


def graph(
    rx: dict[str, int], tx: dict[str, int], latency: dict[str, float], mem_free: int = 1523400
) -> list[dict[str, Any]]:
    """What otb-graph posts: a counter per /proc/net/dev interface and direction, the tracker's
    latency per WAN, the load and free memory; no timestamps."""
    mapping = {"eth0": "lan", "eth1": "wan1", "wwan0": "wan2", "tun0": "tun0", "lo": "none"}
    body: list[dict[str, Any]] = []
    for device, uci in mapping.items():
        if uci in latency:
            tags = {"host": "none", "iface": device, "uci_name": uci}
            body.append({"name": "icmp_latency", "value": latency[uci], "tags": tags})
        for direction, counters in (("in", rx), ("out", tx)):
            tags = {"host": "none", "direction": direction, "iface": device, "uci_name": uci}
            body.append({"name": "linux_net_bytes", "value": counters.get(device, 0), "tags": tags})
    body.append({"name": "proc_loadavg_1m", "value": 0.42, "tags": {"host": "none"}})
    body.append({"name": "os_mem_free", "value": mem_free, "tags": {"host": "none"}})
    return body


def api_get(base: str, path: str, token: str) -> Any:
    request = urllib.request.Request(f"{base}{path}", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_events_properties_metrics_and_diagnostics_over_real_http(
    asgi_server: Any, people: Any, provisioned_region: Any, api_token_factory: Any
) -> None:
    base = asgi_server.url
    # given a subscribed box, claimed by its owner by the device id it shows (not yet confirmed)
    answer = box_subscribe(base, "00:0d:b9:4a:22:01")
    box = device_claim(actor=Actor.system("test"), organization=people.org, device_id=answer["device_id"]).box
    assert box.protocol == BoxProtocol.OTB
    jwt, device = answer["jwt"], f"devices/{answer['device_id']}"

    # the daemon's start: its start event and its properties (a JSON string)
    status, _ = otb_call(
        base, "POST", f"{device}/events", {"event_name": "start", "timestamp": int(time.time())}, jwt
    )
    assert status == 200
    status, _ = otb_call(base, "POST", f"{device}/properties", json.dumps(properties_document()), jwt)
    assert status == 200
    assert set(WanStatus.objects.filter(box=box).values_list("iface", flat=True)) == {"wan1", "wan2"}
    assert Box.objects.get(pk=box.pk).firmware_version == "1.1.3"
    # the 4G link comes up
    ifup = {
        "event_name": "ifup",
        "timestamp": int(time.time()),
        "details": {"interface": "wan2", "device": "wwan0"},
    }
    status, _ = otb_call(base, "POST", f"{device}/events", ifup, jwt)
    assert status == 200
    assert WanStatus.objects.get(box=box, iface="wan2").up is True
    assert Event.objects.filter(box=box, kind=EventKind.WAN_UP, data__iface="wan2").exists()

    # metrics, twice (otb-graph posts every minute; here a little over a second apart)
    metrics = f"{device}/service/{service_name(box)}/metrics"
    first = graph(
        rx={"eth1": 10_000_000, "wwan0": 5_000_000, "tun0": 12_000_000},
        tx={"eth1": 2_000_000, "wwan0": 1_000_000, "tun0": 2_500_000},
        latency={"wan1": 12.5, "wan2": 48.0},
    )
    status, body = otb_call(base, "POST", metrics, first, jwt)
    assert status == 200, body
    time.sleep(1.5)
    second = graph(
        rx={"eth1": 10_000_000 + 1_250_000, "wwan0": 5_000_000, "tun0": 12_000_000 + 1_000_000},
        tx={"eth1": 2_000_000 + 250_000, "wwan0": 1_000_000, "tun0": 2_500_000 + 200_000},
        latency={"wan1": 14.5},
        mem_free=1400000,
    )
    status, body = otb_call(base, "POST", metrics, second, jwt)
    assert status == 200, body

    # then our telemetry API reads them like an agent's: per-WAN throughput and RTT, box load
    token = api_token_factory(people.owner, people.org)
    now = timezone.now()
    window = urllib.parse.urlencode(
        {
            "from": (now - timedelta(minutes=5)).isoformat(),
            "to": (now + timedelta(minutes=1)).isoformat(),
            "resolution": "raw",
            "max_points": 1000,
        }
    )
    series = api_get(base, f"/api/v1/boxes/{box.pk}/telemetry?{window}", token)
    wans = {wan["iface"]: wan["points"] for wan in series["wans"]}
    assert set(wans) == {"wan1", "wan2"}  # lan, tun0, lo are no WAN links
    wan1 = wans["wan1"]
    assert sum(point["samples"] for point in wan1) == 2
    # 1,250,000 bytes in ~1.5 s: about 6.7 Mbit/s down, 1.3 Mbit/s up
    top_rx = max(point["rx_max_bps"] for point in wan1)
    assert 4_000_000 < top_rx < 10_000_000, wan1
    assert 800_000 < max(point["tx_max_bps"] for point in wan1) < 2_000_000
    assert {point["rtt_ms"] for point in wan1} <= {12.5, 14.5, 13.5}
    assert max(point["rtt_max_ms"] for point in wan1) == 14.5
    assert max(point["up_ratio"] for point in wans["wan2"]) == 1.0  # its state came from its ifup
    assert max(point["load1"] for point in series["box"]) == 0.42
    # its free memory (kB) in every point, the lowest too; no percentage (the box sends no total)
    assert {point["mem_free_min_kb"] for point in series["box"]} <= {1523400.0, 1400000.0}
    assert min(point["mem_free_min_kb"] for point in series["box"]) == 1400000.0
    assert all(point["mem_pct"] is None for point in series["box"])
    # the box's throughput is the tunnel's; none on the first report (no previous counters)
    tunnel = [point["rx_max_bps"] for point in series["box"] if point["rx_max_bps"] is not None]
    assert len(tunnel) == 1 and 4_000_000 < tunnel[0] < 8_000_000, series["box"]
    # and the live status: the box's link rows with the last measurements, nothing non-finite
    live = api_get(base, f"/api/v1/boxes/{box.pk}/status", token)
    live_wans = {wan["iface"]: wan for wan in live["wans"]}
    assert live_wans["wan1"]["rtt_ms"] == 14.5 and live_wans["wan1"]["public_ip"] == "198.51.100.7"
    assert live_wans["wan2"]["up"] is True and live["load1"] == 0.42 and live["mem_pct"] is None
    assert live["mem_free_kb"] == 1400000
    assert live["tunnel_up"] is True and live["wans_up"] == 2  # tun0 had an address in the properties
    assert BoxStatus.objects.get(box=box).last_seq == 2  # the box's own sequence: one per report
    # reports of one box arriving together each get their own number: none is dropped as a duplicate
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        statuses = list(pool.map(lambda _: otb_call(base, "POST", metrics, second, jwt)[0], range(3)))
    assert statuses == [200, 200, 200]
    assert BoxStatus.objects.get(box=box).last_seq == 5
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT seq, mem_free_kb FROM telemetry_box_sample WHERE box_id = %s ORDER BY seq", [box.pk]
        )
        assert cursor.fetchall() == [(1, 1523400), (2, 1400000), (3, 1400000), (4, 1400000), (5, 1400000)]

    # a diagnostic run of our diagnostics command: its items join the command's result
    command = command_create(actor=Actor.system("test"), box=box, kind="diagnostics")
    status, started = otb_call(
        base, "POST", f"{device}/diagnostics", {"device_action_id": str(command.pk)}, jwt
    )
    assert status == 200, started
    item = {
        "name": "uptime",
        "cmd": "/usr/share/otb/diagnostics.d/uptime",
        "exit_code": 0,
        "output": "+ uptime\n 21:14:03 up 3 days,  2:01,  load average: 0.42, 0.40, 0.38",
    }
    status, _ = otb_call(base, "PUT", f"{device}/diagnostics/{started['diagnostic_id']}", item, jwt)
    assert status == 200
    result = Command.objects.get(pk=command.pk).result or {}
    assert result["checks"]["uptime"]["ok"] is True and "load average" in result["checks"]["uptime"]["output"]


def test_a_diagnostics_command_runs_as_the_box_runs_its_diagnostic_action(
    asgi_server: Any, people: Any, provisioned_region: Any
) -> None:
    base = asgi_server.url
    # given a claimed box that confirmed its service
    answer = box_subscribe(base, "00:0d:b9:4a:22:02")
    box = device_claim(actor=Actor.system("test"), organization=people.org, device_id=answer["device_id"]).box
    jwt, device = answer["jwt"], f"devices/{answer['device_id']}"
    status, _ = otb_call(base, "POST", f"{device}/service/{service_name(box)}/confirm", None, jwt)
    assert status == 200
    # when its owner orders diagnostics, the box's poll hands out the diagnostic action (after the
    # derived actions a new box gets first)
    command = command_create(actor=Actor.system("test"), box=box, kind="diagnostics")
    for _ in range(6):
        status, action = otb_call(base, "GET", f"{device}/actions/todo", None, jwt)
        assert status == 200, action
        if action["action"] == "diagnostic":
            break
    assert action == {"id": str(command.pk), "action": "diagnostic", "arguments": {}}
    # and the box does what otb-action-diagnostic does: a run with the action id, one PUT per script,
    # then the action's result (its output: the names and the server's answers)
    status, started = otb_call(base, "POST", f"{device}/diagnostics", {"device_action_id": action["id"]}, jwt)
    assert status == 200, started
    for name, code, output in (("uptime", 0, "+ uptime\n up 3 days"), ("dig", 9, ";; connection timed out")):
        item = {
            "name": name,
            "cmd": f"/usr/share/otb/diagnostics.d/{name}",
            "exit_code": code,
            "output": output,
        }
        status, _ = otb_call(base, "PUT", f"{device}/diagnostics/{started['diagnostic_id']}", item, jwt)
        assert status == 200
    report = {"status": "done", "details": "uptime\n{}\ndig\n{}\n"}
    status, _ = otb_call(base, "PUT", f"{device}/actions/{action['id']}", report, jwt)
    assert status == 200
    # then the command succeeded with the items and the action's report in its result
    finished = Command.objects.get(pk=command.pk)
    result = finished.result or {}
    assert finished.state == "succeeded" and result["details"] == report["details"]
    assert result["checks"]["uptime"]["ok"] is True and result["checks"]["dig"]["error"] == "exit status 9"
