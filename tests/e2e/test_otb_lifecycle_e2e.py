"""The whole life of one stock OverTheBox box over real HTTP against a real uvicorn (PostgreSQL, Redis):
the box's side with curl shaped like its ``otb_call`` (tests/e2e/test_otb_identity_e2e.py: pretty-printed
bodies, ``Content-Type: application/json`` on GETs too, no redirect followed), its owner's side through
our REST API with a personal API token. Subscribe, claim, askServiceConfirmation, confirm, configure and
config, events, properties (a JSON string), metrics twice, commands handed out as actions with their
results (a second one accepted), diagnostics, backup then restore, and a JWT that expired: 401 with the
class the box acts on, renewal with the old Bearer still attached, polling again. Every step is checked
by what our own API shows."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import tarfile
import time
import urllib.parse
from datetime import timedelta
from typing import Any

import httpx
import pytest
from django.utils import timezone

from otbcompat.models import OtbDevice
from tests.e2e.otbbox import box_subscribe, otb_call
from tests.e2e.test_otb_telemetry_e2e import graph
from tests.otbcompat.test_telemetry import expired_jwt, properties_document

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(shutil.which("curl") is None, reason="curl is needed to call like the box"),
]

# What the box pastes unquoted into `uci batch`: every configuration value must stay within it.
UCI_SAFE = re.compile(r"[A-Za-z0-9_.:/+=-]*")


def scalars(value: Any) -> list[Any]:
    """Every leaf value of a JSON document."""
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in scalars(item)]
    if isinstance(value, list):
        return [leaf for item in value for leaf in scalars(item)]
    return [value]


def next_action(base: str, device: str, jwt: str) -> dict[str, Any]:
    status, action = otb_call(base, "GET", f"{device}/actions/todo", jwt=jwt)
    assert status == 200, action
    return dict(action)


def report(base: str, device: str, jwt: str, action_id: str, status: str, details: str) -> None:
    answer = otb_call(
        base, "PUT", f"{device}/actions/{action_id}", {"status": status, "details": details}, jwt
    )
    assert answer[0] == 200, answer


def test_otb_box_lifecycle_over_real_http(
    asgi_server: Any, people: Any, api_token_factory: Any, provisioned_region: Any
) -> None:
    base = asgi_server.url
    api = httpx.Client(
        base_url=base,
        headers={"Authorization": f"Bearer {api_token_factory(people.admin, people.org)}"},
        timeout=10,
    )

    # subscribe: anonymous, a pending device; nothing to do until its owner claims it
    subscribed = box_subscribe(base, "00:0d:b9:4a:31:01")
    device_id, jwt = subscribed["device_id"], subscribed["jwt"]
    device = f"devices/{device_id}"
    assert next_action(base, device, jwt)["action"] == "wait"

    # claim by the device id the box shows
    claimed = api.post("/api/v1/boxes/claim", json={"device_id": device_id})
    assert claimed.status_code == 201, claimed.text
    box_id = claimed.json()["id"]
    service = f"overthebox.{box_id}"
    shown = api.get(f"/api/v1/boxes/{box_id}/").json()
    assert shown["protocol"] == "otb" and shown["mac"].lower() == "00:0d:b9:4a:31:01"
    assert shown["applied_at"] is None

    # askServiceConfirmation, service/associated, confirm
    assert next_action(base, device, jwt) == {"id": None, "action": "askServiceConfirmation", "arguments": {}}
    assert otb_call(base, "GET", f"{device}/service/associated", jwt=jwt) == (200, {"service": service})
    assert otb_call(base, "POST", f"{device}/service/{service}/confirm", jwt=jwt)[0] == 200

    # configure, then the config pulled: built from our provisioning, every value safe for uci batch
    assert next_action(base, device, jwt) == {"id": None, "action": "configure", "arguments": {}}
    status, config = otb_call(base, "GET", f"{device}/config", jwt=jwt)
    assert status == 200, config
    assert config["glorytun_mud_conf"]["dev"] == "tun0"
    assert config["shadow_conf"]["server"] == provisioned_region.server.public_ipv4
    for key in ("glorytun_mud_conf", "tracker_conf", "shadow_conf", "ipv6_conf", "log_conf", "graph_conf"):
        assert key in config, key
    unsafe = [v for v in scalars(config) if v is not None and not UCI_SAFE.fullmatch(str(v))]
    assert unsafe == [], unsafe
    shown = api.get(f"/api/v1/boxes/{box_id}/").json()
    assert shown["applied_at"] is not None and shown["applied_config_hash"] == shown["config_hash"]
    assert next_action(base, device, jwt)["action"] == "wait"  # configured: idle again

    # events and properties, as otb-daemon sends them when it starts
    start = {"event_name": "start", "timestamp": int(time.time())}
    assert otb_call(base, "POST", f"{device}/events", start, jwt)[0] == 200
    status, _ = otb_call(base, "POST", f"{device}/properties", json.dumps(properties_document()), jwt)
    assert status == 200
    # the fibre drops then comes back (netifd's hotplug: ifdown, ifup)
    for name in ("ifdown", "ifup"):
        event = {
            "event_name": name,
            "timestamp": int(time.time()),
            "details": {"interface": "wan1", "device": "eth1"},
        }
        assert otb_call(base, "POST", f"{device}/events", event, jwt)[0] == 200
    events = api.get(f"/api/v1/boxes/{box_id}/events/").json()["results"]
    timeline = [(e["kind"], e["data"].get("iface")) for e in events]
    assert {("box_started", None), ("wan_down", "wan1"), ("wan_up", "wan1")} <= set(timeline), timeline
    assert api.get(f"/api/v1/boxes/{box_id}/").json()["firmware_version"] == "1.1.3"
    live = api.get(f"/api/v1/boxes/{box_id}/status").json()
    links = {wan["iface"]: wan for wan in live["wans"]}
    assert links["wan1"]["up"] is True and links["wan1"]["public_ip"] == "198.51.100.7"

    # metrics, twice, read back through our telemetry API
    metrics = f"{device}/service/{service}/metrics"
    first = graph(rx={"eth1": 10_000_000, "tun0": 12_000_000}, tx={"eth1": 2_000_000}, latency={"wan1": 12.5})
    assert otb_call(base, "POST", metrics, first, jwt)[0] == 200
    time.sleep(1.2)
    second = graph(
        rx={"eth1": 11_000_000, "tun0": 13_000_000}, tx={"eth1": 2_200_000}, latency={"wan1": 14.5}
    )
    assert otb_call(base, "POST", metrics, second, jwt)[0] == 200
    now = timezone.now()
    window = urllib.parse.urlencode(
        {
            "from": (now - timedelta(minutes=5)).isoformat(),
            "to": (now + timedelta(minutes=1)).isoformat(),
            "resolution": "raw",
            "max_points": 1000,
        }
    )
    series = api.get(f"/api/v1/boxes/{box_id}/telemetry?{window}").json()
    wan1 = next(wan["points"] for wan in series["wans"] if wan["iface"] == "wan1")
    assert sum(point["samples"] for point in wan1) == 2
    assert max(point["rtt_max_ms"] for point in wan1) == 14.5
    assert max(point["rx_max_bps"] or 0 for point in wan1) > 0

    # a command from the API becomes an action; its result lands, a second one is accepted and kept
    created = api.post(
        f"/api/v1/boxes/{box_id}/commands/",
        json={"kind": "restart_services", "params": {"services": ["glorytun"]}},
    )
    assert created.status_code == 201, created.text
    restart = created.json()["id"]
    action = next_action(base, device, jwt)
    assert (action["id"], action["action"]) == (restart, "restartServices"), action
    report(base, device, jwt, restart, "done", "restarted\n")
    report(base, device, jwt, restart, "error", "late")
    seen = api.get(f"/api/v1/commands/{restart}/").json()
    assert seen["state"] == "succeeded" and seen["result"]["details"] == "restarted\n"
    assert seen["result"]["late_reports"][0]["status"] == "error"

    # diagnostics: the run and its items join the command's result
    diagnostics = api.post(f"/api/v1/boxes/{box_id}/commands/", json={"kind": "diagnostics"}).json()["id"]
    assert next_action(base, device, jwt) == {"id": diagnostics, "action": "diagnostic", "arguments": {}}
    status, run = otb_call(base, "POST", f"{device}/diagnostics", {"device_action_id": diagnostics}, jwt)
    assert status == 200, run
    item = {
        "name": "uptime",
        "cmd": "/usr/share/otb/diagnostics.d/uptime",
        "exit_code": 0,
        "output": "up 3 days",
    }
    assert otb_call(base, "PUT", f"{device}/diagnostics/{run['diagnostic_id']}", item, jwt)[0] == 200
    report(base, device, jwt, diagnostics, "done", "uptime\n{}\n")
    seen = api.get(f"/api/v1/commands/{diagnostics}/").json()
    assert seen["state"] == "succeeded"
    assert (
        seen["result"]["checks"]["uptime"]["ok"] is True
        and "up 3 days" in seen["result"]["checks"]["uptime"]["output"]
    )

    # backup: the box starts one for the action, PUTs one file per call, reports done
    backup_command = api.post(f"/api/v1/boxes/{box_id}/commands/", json={"kind": "backup"}).json()["id"]
    assert next_action(base, device, jwt)["action"] == "backup"
    backups = f"{device}/service/{service}/backups"
    status, started = otb_call(base, "POST", backups, {"device_action_id": backup_command}, jwt)
    assert status == 200, started
    network = "config interface 'lan'\n\toption ipaddr \"192.168.100.1\"\n"
    plain = {"uid": 0, "is_symlink": False, "symlink": ""}
    files = [
        {**plain, "filename": "/etc/config/network", "mode": "644", "gid": 0, "content": network},
        {**plain, "filename": "/etc/shadow", "mode": "600", "gid": 42, "content": "root:x:1::::::"},
    ]
    for file in files:
        status, answer = otb_call(base, "PUT", f"{backups}/{started['backup_id']}", file, jwt)
        assert status == 200, answer
    report(base, device, jwt, backup_command, "done", "")
    assert api.get(f"/api/v1/commands/{backup_command}/").json()["state"] == "succeeded"
    listed = api.get(f"/api/v1/boxes/{box_id}/backups/").json()["results"]
    assert [(b["id"], b["file_count"]) for b in listed] == [(started["backup_id"], 2)]

    # restore from the API: the box gets the action, fetches its backup_url with plain curl (a tar.gz)
    restored = api.post(f"/api/v1/boxes/{box_id}/backups/{started['backup_id']}/restore")
    assert restored.status_code == 201, restored.text
    restore = restored.json()["id"]
    action = next_action(base, device, jwt)
    assert action == {"id": restore, "action": "restore", "arguments": {"backup_id": started["backup_id"]}}
    status, link = otb_call(base, "GET", f"{backups}/{started['backup_id']}", jwt=jwt)
    assert status == 200 and link["backup_url"].startswith("http"), link
    archive = subprocess.run(
        ["curl", "--silent", "--show-error", "--fail", "--max-time", "10", link["backup_url"]],
        capture_output=True,
        timeout=15,
        check=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        members = {member.name.lstrip("/"): member for member in tar.getmembers()}
        assert (members["etc/shadow"].mode, members["etc/shadow"].gid) == (0o600, 42)
        extracted = tar.extractfile(members["etc/config/network"])
        assert extracted is not None and extracted.read().decode() == network
    report(base, device, jwt, restore, "done", "")
    assert api.get(f"/api/v1/commands/{restore}/").json()["state"] == "succeeded"

    # the JWT expires: the poll answers 401 with the class the box acts on
    stale = expired_jwt(OtbDevice.objects.get(id=device_id), seconds_ago=5)
    status, error = otb_call(base, "GET", f"{device}/actions/todo", jwt=stale)
    assert status == 401 and error["class"] == "Client::Unauthorized", error
    # renew_jwt with {id, token} and the old Bearer still attached, then polling resumes
    status, renewed = otb_call(
        base, "POST", "renew_jwt", {"id": device_id, "token": subscribed["token"]}, stale
    )
    assert status == 200 and renewed["jwt"] and renewed["jwt"] != stale, renewed
    assert next_action(base, device, renewed["jwt"]) == {
        "id": None,
        "action": "wait",
        "arguments": {"delay": 10},
    }
    # and its owner's commands still reach it
    reboot = api.post(f"/api/v1/boxes/{box_id}/commands/", json={"kind": "reboot"}).json()["id"]
    assert next_action(base, device, renewed["jwt"])["id"] == reboot
