"""What a stock OverTheBox box reports over /1.0: events, properties, diagnostics, bad input, security and
the expired-JWT grace of the telemetry routes. Requests are shaped like the box's ``otb_call``
(pretty-printed bodies, ``Content-Type: application/json``, ``X-Overthebox-Version``), by devices
claimed through ``otbcompat.binding.device_claim``; the properties
body is a JSON *string*, as the box sends it. (Metrics go through the telemetry writer on its own
connections: tests/e2e/test_otb_telemetry_e2e.py, over real HTTP.)"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import pytest
from django.conf import settings
from django.test import Client
from django.test.utils import override_settings
from django.utils import timezone

from fleet.commands.choices import CommandState
from fleet.commands.models import Command
from fleet.commands.services import command_complete, command_create
from fleet.core.audit import Actor
from fleet.core.choices import BoxProtocol, EventKind
from fleet.core.models import AuditLog, Box, Event
from fleet.telemetry.models import BoxStatus, WanStatus
from fleet.telemetry.selectors import box_wans
from otbcompat.binding import device_claim
from otbcompat.jwt import jwt_encode
from otbcompat.models import OtbDevice, OtbDiagnostic
from otbcompat.services import device_revoke, jwts_revoke, service_name
from otbcompat.telemetry.metrics import counter_rates

pytestmark = pytest.mark.django_db


def otb_call(
    client: Client, method: str, path: str, body: Any = None, jwt: str = "", version: str = "1.1.3"
) -> Any:
    """The box's otb_call: curl -X METHOD -H 'Content-Type: application/json' [-H Bearer] -d <pretty JSON>."""
    headers: dict[str, Any] = {"HTTP_X_OVERTHEBOX_VERSION": version}
    if jwt:
        headers["HTTP_AUTHORIZATION"] = f"Bearer {jwt}"
    data = body if isinstance(body, bytes) else (json.dumps(body, indent=2) if body is not None else "")
    return client.generic(method, f"/1.0/{path}", data, content_type="application/json", **headers)


@dataclass
class Linked:
    device: OtbDevice
    box: Box
    jwt: str
    token: str
    client: Client

    @property
    def base(self) -> str:
        return f"devices/{self.device.pk}"

    def call(self, method: str, sub: str, body: Any = None, **extra: Any) -> Any:
        extra.setdefault("jwt", self.jwt)
        return otb_call(self.client, method, f"{self.base}/{sub}", body, **extra)


def subscribe(client: Client, mac: str) -> dict[str, Any]:
    response = otb_call(
        client,
        "POST",
        "subscribe",
        {"private_ips": ["192.168.100.1"], "board": "pc-engines-apu2", "macaddr": mac},
    )
    assert response.status_code == 200, response.content
    return dict(response.json())


@pytest.fixture
def link(people: Any, provisioned_region: Any) -> Any:
    """link(organization=people.org) -> a subscribed device claimed by its device id into the
    organisation (otbcompat.binding: a provisioned box with protocol otb), not yet confirmed."""
    counter = iter(range(10, 99))

    def make(organization: Any = None) -> Linked:
        client = Client()
        answer = subscribe(client, f"00:0d:b9:4a:11:{next(counter)}")
        claimed = device_claim(
            actor=Actor.system("test"), organization=organization or people.org, device_id=answer["device_id"]
        )
        device = OtbDevice.objects.select_related("box").get(pk=answer["device_id"])
        assert device.box == claimed.box and claimed.box.protocol == BoxProtocol.OTB
        return Linked(device=device, box=claimed.box, jwt=answer["jwt"], token=answer["token"], client=client)

    return make


def properties_document(**overrides: Any) -> dict[str, Any]:
    """What otb-action-refreshProperties builds: every UCI interface, "" where a value is unknown."""
    document = {
        "interfaces": [
            {
                "as": None,
                "ip": "127.0.0.1",
                "netmask": "255.0.0.0",
                "gateway": "",
                "public_ip": "",
                "dns_servers": [],
                "name": "loopback",
                "label": "",
                "device": "lo",
                "traffic_control": "",
                "upload": 0,
                "download": 0,
                "multipath_status": "",
            },
            {
                "as": None,
                "ip": "192.168.100.1",
                "netmask": "255.255.255.0",
                "gateway": "",
                "public_ip": "",
                "dns_servers": None,
                "name": "lan",
                "label": "",
                "device": "eth0",
                "multipath_status": "off",
            },
            {
                "as": {"country": "FR", "description": "OVH", "number": 16276},
                "ip": "192.168.1.20",
                "netmask": "255.255.255.0",
                "gateway": "192.168.1.1",
                "public_ip": "198.51.100.7",
                "dns_servers": ["192.168.1.1"],
                "name": "wan1",
                "label": "Fibre",
                "device": "eth1",
                "multipath_status": "master",
            },
            {
                "as": None,
                "ip": "",
                "netmask": "",
                "gateway": "",
                "public_ip": "",
                "dns_servers": None,
                "name": "wan2",
                "label": "4G",
                "device": "wwan0",
                "multipath_status": "on",
            },
            {
                "as": None,
                "ip": "10.166.1.2",
                "netmask": "255.255.255.0",
                "gateway": "10.166.1.1",
                "public_ip": "",
                "dns_servers": [],
                "name": "tun0",
                "label": "",
                "device": "tun0",
                "multipath_status": "off",
            },
        ],
        "mounts": [{"device": "/dev/root", "mount_point": "/", "fs": "ext4", "options": "rw,noatime"}],
        "release": {
            "distribution": "otb",
            "version": "v1.1.3",
            "revision": "r16554-1d4dea6d4f",
            "target": "x86/64",
            "description": "otb v1.1.3",
        },
        "board": {
            "kernel": "5.10.176",
            "hostname": "OverTheBox",
            "system": "AMD GX-412TC SOC",
            "model": "PC Engines APU2",
            "board_name": "pc-engines-apu2",
            "rootfs_type": "ext4",
            "mac_addr": "00:0d:b9:4a:11:22",
        },
    }
    document.update(overrides)
    return document


def as_string_body(document: Any) -> bytes:
    """The box's properties body: the document JSON-encoded, then sent as a JSON string."""
    return json.dumps(json.dumps(document)).encode()


def expired_jwt(device: OtbDevice, *, seconds_ago: int, generation: int | None = None) -> str:
    now = int(time.time())
    claims = {
        "sub": str(device.pk),
        "gen": device.jwt_generation if generation is None else generation,
        "iat": now - seconds_ago - 3600,
        "exp": now - seconds_ago,
    }
    return jwt_encode(claims, settings.OTB_COMPAT_JWT_KEYS)


# -- events ---------------------------------------------------------------------------------------


def test_boot_start_and_lan_events_join_the_timeline_at_the_box_time(link: Any) -> None:
    linked = link()
    at = int(time.time()) - 120
    for name, details in (("boot", None), ("start", None), ("ifup", {"interface": "lan", "device": "eth0"})):
        response = linked.call(
            "POST", "events", {"event_name": name, "timestamp": at, "details": details or {}}
        )
        assert response.status_code == 200, response.content
    kinds = list(Event.objects.filter(box=linked.box).order_by("kind").values_list("kind", flat=True))
    assert kinds == [EventKind.BOX_BOOTED, EventKind.BOX_STARTED, EventKind.IFACE_UP]
    lan = Event.objects.get(box=linked.box, kind=EventKind.IFACE_UP)
    assert lan.data == {"iface": "lan", "device": "eth0", "source": "otb"}
    assert int(lan.ts.timestamp()) == at and lan.organization_id == linked.box.organization_id
    assert not WanStatus.objects.filter(box=linked.box).exists()  # the LAN is no WAN link


def test_wan_ifdown_then_ifup_move_the_link_and_record_wan_down_and_up(link: Any) -> None:
    linked = link()
    at = int(time.time()) - 60
    ifdown = {"event_name": "ifdown", "timestamp": at, "details": {"interface": "wan1", "device": "eth1"}}
    assert linked.call("POST", "events", ifdown).status_code == 200
    wan = WanStatus.objects.get(box=linked.box, iface="wan1")
    assert wan.up is False and int(wan.up_changed_at.timestamp()) == at
    # the same event again changes nothing and records nothing
    assert linked.call("POST", "events", ifdown).status_code == 200
    ifup = {"event_name": "ifup", "timestamp": at + 30, "details": {"interface": "wan1", "device": "eth1"}}
    assert linked.call("POST", "events", ifup).status_code == 200
    wan.refresh_from_db()
    assert wan.up is True and int(wan.up_changed_at.timestamp()) == at + 30
    kinds = list(Event.objects.filter(box=linked.box).order_by("ts").values_list("kind", flat=True))
    assert kinds == [EventKind.WAN_DOWN, EventKind.WAN_UP]
    # a late ifdown, older than the last change, never undoes it
    late = {"event_name": "ifdown", "timestamp": at + 10, "details": {"interface": "wan1", "device": "eth1"}}
    assert linked.call("POST", "events", late).status_code == 200
    wan.refresh_from_db()
    assert wan.up is True


def test_before_the_properties_only_wan_and_digits_names_a_wan_link(link: Any) -> None:
    linked = link()
    at = int(time.time())
    for interface in ("wan2", "wan1_6", "wwan"):
        body = {"event_name": "ifup", "timestamp": at, "details": {"interface": interface, "device": "eth2"}}
        assert linked.call("POST", "events", body).status_code == 200
    assert list(WanStatus.objects.filter(box=linked.box).values_list("iface", flat=True)) == ["wan2"]
    assert Event.objects.filter(box=linked.box, kind=EventKind.IFACE_UP).count() == 2


def test_unknown_event_names_are_kept_not_refused_and_an_unsynced_clock_is_replaced(link: Any) -> None:
    linked = link()
    before = timezone.now()
    body = {
        "event_name": "SHUTDOWN",
        "timestamp": 12,
        "details": {"reason": "power", "nested": {"a": [1, 2]}},
    }
    response = linked.call("POST", "events", body)
    assert response.status_code == 200, response.content
    event = Event.objects.get(box=linked.box)
    assert event.kind == EventKind.BOX_REPORTED
    assert event.data == {"name": "shutdown", "source": "otb", "details": body["details"]}
    assert event.ts >= before  # 1970 from a box without NTP yet: stored at the receive time


def test_the_box_page_timeline_shows_the_boxs_events(link: Any, people: Any, client_for: Any) -> None:
    linked = link()
    at = int(time.time())
    for body in (
        {"event_name": "ifdown", "timestamp": at, "details": {"interface": "wan1", "device": "eth1"}},
        {"event_name": "ifup", "timestamp": at, "details": {"interface": "lan", "device": "eth0"}},
        {"event_name": "free", "timestamp": at, "details": {}},
    ):
        assert linked.call("POST", "events", body).status_code == 200
    page = client_for(people.viewer).get(f"/boxes/{linked.box.pk}/events/").content.decode()
    assert "WAN down" in page and "Interface up" in page and "Box reported an event" in page
    assert ">wan1<" in page and ">lan<" in page and ">free<" in page


def test_events_of_a_device_linked_to_no_box_are_accepted_and_not_kept() -> None:
    client = Client()
    answer = subscribe(client, "00:0d:b9:4a:11:01")
    response = otb_call(
        client,
        "POST",
        f"devices/{answer['device_id']}/events",
        {"event_name": "boot", "timestamp": 1},
        jwt=answer["jwt"],
    )
    assert response.status_code == 200 and not Event.objects.exists()


# -- properties -----------------------------------------------------------------------------------


def test_properties_as_a_json_string_set_the_wan_list_public_ips_and_firmware(link: Any) -> None:
    linked = link()
    response = linked.call("POST", "properties", as_string_body(properties_document()), version="1.1.3")
    assert response.status_code == 200, response.content
    # then only the bonded links are WANs, with their label, public IP and state
    wans = {wan.iface: wan for wan in WanStatus.objects.filter(box=linked.box)}
    assert set(wans) == {"wan1", "wan2"}
    assert (wans["wan1"].label, wans["wan1"].public_ip, wans["wan1"].up) == ("Fibre", "198.51.100.7", True)
    assert (wans["wan2"].label, wans["wan2"].kind, wans["wan2"].up) == ("4G", "lte", False)
    assert Event.objects.filter(box=linked.box, kind=EventKind.WAN_DOWN, data__iface="wan2").count() == 1
    # the document is kept with the device (AS per link, multipath status, board, mounts)
    linked.device.refresh_from_db()
    stored = linked.device.properties
    assert stored["wans"] == ["wan1", "wan2"]
    wan1 = next(item for item in stored["interfaces"] if item["name"] == "wan1")
    assert wan1["as"] == {"country": "FR", "description": "OVH", "number": 16276}
    assert wan1["multipath_status"] == "master" and stored["board"]["model"] == "PC Engines APU2"
    assert [item["name"] for item in stored["interfaces"]] == ["loopback", "lan", "wan1", "wan2", "tun0"]
    box = Box.objects.get(pk=linked.box.pk)
    assert box.firmware_version == "1.1.3"  # release.version without its "v"
    assert AuditLog.objects.filter(box_id=box.pk, action="box.versions_reported").count() == 1


def test_an_event_on_one_link_keeps_every_link_of_the_box_listed(link: Any) -> None:
    # the box's links are those of its latest report (box_wans); a stock box reports one link per
    # event, so an ifdown of wan1 must not hide wan2 (found by the lifecycle test)
    linked = link()
    assert linked.call("POST", "properties", as_string_body(properties_document())).status_code == 200
    ifdown = {
        "event_name": "ifdown",
        "timestamp": int(time.time()),
        "details": {"interface": "wan1", "device": "eth1"},
    }
    assert linked.call("POST", "events", ifdown).status_code == 200
    assert [wan.iface for wan in box_wans(box_id=linked.box.pk)] == ["wan1", "wan2"]
    # a link the properties add joins the others too
    document = properties_document()
    extra = dict(document["interfaces"][3], name="wan3", label="VDSL", device="eth3")
    document["interfaces"].insert(4, extra)
    assert linked.call("POST", "properties", document).status_code == 200
    assert [wan.iface for wan in box_wans(box_id=linked.box.pk)] == ["wan1", "wan2", "wan3"]


def test_properties_as_an_object_also_work_and_a_link_no_longer_bonded_leaves_the_list(link: Any) -> None:
    linked = link()
    assert linked.call("POST", "properties", properties_document()).status_code == 200
    document = properties_document()
    document["interfaces"][3]["multipath_status"] = "off"  # wan2 switched off by its owner
    assert linked.call("POST", "properties", as_string_body(document)).status_code == 200
    assert list(WanStatus.objects.filter(box=linked.box).values_list("iface", flat=True)) == ["wan1"]


def test_properties_before_activation_are_accepted(link: Any) -> None:
    linked = link()
    assert linked.device.confirmed_at is None
    assert linked.call("POST", "properties", as_string_body(properties_document())).status_code == 200
    assert WanStatus.objects.filter(box=linked.box).count() == 2


def test_the_version_header_moves_the_firmware_and_its_5_character_cut_does_not(link: Any) -> None:
    linked = link()
    document = properties_document(release={"version": "v1.10.2"})
    assert linked.call("POST", "properties", as_string_body(document), version="1.10.").status_code == 200
    assert Box.objects.get(pk=linked.box.pk).firmware_version == "1.10.2"
    # the header, cut to 5 characters by the box, is the same version: nothing changes
    boot = {"event_name": "boot", "timestamp": int(time.time())}
    assert linked.call("POST", "events", boot, version="1.10.").status_code == 200
    assert Box.objects.get(pk=linked.box.pk).firmware_version == "1.10.2"
    assert not Event.objects.filter(box=linked.box, kind=EventKind.FIRMWARE_CHANGED).exists()
    # after an upgrade the header names another version: recorded, with firmware_changed
    assert linked.call("POST", "events", boot, version="1.11").status_code == 200
    assert Box.objects.get(pk=linked.box.pk).firmware_version == "1.11"
    changed = Event.objects.get(box=linked.box, kind=EventKind.FIRMWARE_CHANGED)
    assert changed.data == {"from": "1.10.2", "to": "1.11"}
    # the box's fallback when /etc/otb-version is missing names no version
    assert linked.call("POST", "events", boot, version="0.0-0").status_code == 200
    assert Box.objects.get(pk=linked.box.pk).firmware_version == "1.11"


def test_polls_keep_the_full_version_the_properties_gave_and_the_status_is_healthy_for_rollouts(
    link: Any,
) -> None:
    from otbcompat.presence import presence_flush

    linked = link()
    presence_flush()  # whatever earlier tests left
    document = properties_document(release={"version": "v1.10.2"})
    assert linked.call("POST", "properties", as_string_body(document), version="1.10.").status_code == 200
    # the polls carry the 5-character cut of it: the live status keeps the full version the rollout
    # engine compares with its release, and the tunnel state the properties gave (tun0 has an address)
    assert linked.call("GET", "actions/todo", version="1.10.").status_code == 200
    presence_flush()
    status = BoxStatus.objects.get(box=linked.box)
    assert (status.firmware_version, status.tunnel_up, status.online) == ("1.10.2", True, True)
    # another version in a poll's header is recorded there
    assert linked.call("GET", "actions/todo", version="1.11").status_code == 200
    presence_flush()
    assert BoxStatus.objects.get(box=linked.box).firmware_version == "1.11"


def test_tun0_events_set_the_tunnel_state(link: Any) -> None:
    linked = link()
    at = int(time.time())
    for name, expected in (("ifup", True), ("ifdown", False)):
        body = {"event_name": name, "timestamp": at, "details": {"interface": "tun0", "device": "tun0"}}
        assert linked.call("POST", "events", body).status_code == 200
        assert BoxStatus.objects.get(box=linked.box).tunnel_up is expected
    assert not WanStatus.objects.filter(box=linked.box).exists()


# -- diagnostics ----------------------------------------------------------------------------------


def diagnostics_command(box: Box) -> Command:
    return command_create(actor=Actor.system("test"), box=box, kind="diagnostics")


def test_diagnostics_items_join_the_commands_result_and_survive_the_action_result(link: Any) -> None:
    linked = link()
    command = diagnostics_command(linked.box)
    started = linked.call("POST", "diagnostics", {"device_action_id": str(command.pk)})
    assert started.status_code == 200, started.content
    diagnostic_id = started.json()["diagnostic_id"]
    command.refresh_from_db()
    assert command.state == CommandState.RUNNING
    trace = "+ ip -4 route show table all\n" + "default via 192.168.1.1 dev eth1\n" * 2000  # ~70 KB
    items = [
        {"name": "./iproute", "cmd": "/usr/share/otb/diagnostics.d/iproute", "exit_code": 0, "output": trace},
        {"name": "dig", "cmd": "/usr/share/otb/diagnostics.d/dig", "exit_code": 9, "output": "timed out"},
    ]
    for item in items:
        response = linked.call("PUT", f"diagnostics/{diagnostic_id}", item)
        assert response.status_code == 200, response.content
    # the action's own result comes last (actions part) and keeps the items
    command_complete(
        box_id=linked.box.pk, command_id=command.pk, ok=True, output={"details": "iproute\ndig\n"}, error=None
    )
    command.refresh_from_db()
    result = command.result or {}
    checks = result["checks"]
    assert set(checks) == {"iproute", "dig"} and result["details"] == "iproute\ndig\n"
    assert checks["iproute"]["ok"] is True and checks["iproute"]["output"].startswith("+ ip -4 route")
    assert len(checks["iproute"]["output"]) <= 16 * 1024 and "characters cut" in checks["iproute"]["output"]
    assert checks["dig"] == {
        "ok": False,
        "exit_code": 9,
        "cmd": "/usr/share/otb/diagnostics.d/dig",
        "output": "timed out",
        "error": "exit status 9",
    }


def test_diagnostics_of_another_box_are_refused(link: Any) -> None:
    mine, theirs = link(), link()
    their_command = diagnostics_command(theirs.box)
    refused = mine.call("POST", "diagnostics", {"device_action_id": str(their_command.pk)})
    assert refused.status_code == 400 and "device_action_id" in refused.json()["message"]
    assert not OtbDiagnostic.objects.exists()
    # a run of theirs cannot be written to by me
    started = theirs.call("POST", "diagnostics", {"device_action_id": str(their_command.pk)})
    diagnostic_id = started.json()["diagnostic_id"]
    item = {"name": "uptime", "cmd": "uptime", "exit_code": 0, "output": "up"}
    response = mine.call("PUT", f"diagnostics/{diagnostic_id}", item)
    assert response.status_code == 404 and response.json()["class"] == "Client::NotFound"
    their_command.refresh_from_db()
    assert not (their_command.result or {}).get("checks")


# -- security -------------------------------------------------------------------------------------


def test_a_box_cannot_report_as_another_device_or_into_another_service(link: Any) -> None:
    mine, theirs = link(), link()
    # another device's path with my JWT
    for method, sub, body in (
        ("POST", "events", {"event_name": "boot", "timestamp": 1}),
        ("POST", "properties", properties_document()),
        ("POST", f"service/{service_name(theirs.box)}/metrics", []),
        ("POST", "diagnostics", {"device_action_id": "x"}),
    ):
        response = otb_call(mine.client, method, f"{theirs.base}/{sub}", body, jwt=mine.jwt)
        assert response.status_code == 403 and response.json()["class"] == "Client::Forbidden", sub
    # my device path, their service id
    response = mine.call("POST", f"service/{service_name(theirs.box)}/metrics", [])
    assert response.status_code == 403 and response.json()["class"] == "Client::Forbidden"
    assert not Event.objects.exists() and not WanStatus.objects.exists()
    theirs.device.refresh_from_db()
    assert theirs.device.properties == {}


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sub", "body", "field"),
    [
        ("events", {"timestamp": 1}, "event_name"),
        ("events", {"event_name": "boot", "timestamp": "soon"}, "timestamp"),
        ("events", {"event_name": "boot", "timestamp": 1, "details": []}, "details"),
        (
            "events",
            {"event_name": "ifup", "timestamp": 1, "details": {"device": "eth1"}},
            "details.interface",
        ),
        ("events", {"event_name": "ifup", "timestamp": 1, "details": {"interface": 7}}, "details.interface"),
        ("events", {"event_name": "x", "timestamp": 1, "details": {"blob": "x" * 5000}}, "details"),
        ("events", b'{"event_name": "boot", "timestamp": NaN}', "JSON"),
        ("events", b'{"event_name": "boot", "timestamp": 1e999}', "JSON"),
        ("properties", as_string_body({"interfaces": [{"name": ""}]}), "interfaces[0].name"),
        ("properties", as_string_body({"interfaces": "wan1"}), "interfaces"),
        (
            "properties",
            as_string_body({"interfaces": [{"name": "wan1", "as": {"number": "AS1"}}]}),
            "as.number",
        ),
        ("properties", json.dumps("{not json").encode(), "body"),
        ("properties", b"[1, 2]", "body"),
        ("properties", as_string_body({"interfaces": [{"name": "wan1"}, {"name": "wan1"}]}), "interfaces"),
        ("properties", as_string_body({"mounts": [{"device": 3}]}), "mounts[0].device"),
        ("diagnostics", {}, "device_action_id"),
        ("diagnostics", {"device_action_id": "not-an-id"}, "device_action_id"),
        ("METRICS", {"name": "linux_net_bytes"}, "body"),
        (
            "METRICS",
            [{"name": "linux_net_bytes", "value": -1, "tags": {"direction": "in", "iface": "eth1"}}],
            "[0].value",
        ),
        (
            "METRICS",
            [{"name": "linux_net_bytes", "value": 1, "tags": {"direction": "up", "iface": "eth1"}}],
            "[0].tags.direction",
        ),
        ("METRICS", [{"name": "linux_net_bytes", "value": 1, "tags": {"direction": "in"}}], "[0].tags.iface"),
        ("METRICS", [{"name": "icmp_latency", "value": 1e9, "tags": {"uci_name": "wan1"}}], "[0].value"),
        ("METRICS", [{"name": "proc_loadavg_1m", "value": "high"}], "[0].value"),
        ("METRICS", [{"name": "os_mem_free", "value": 2**70}], "[0].value"),
        ("METRICS", [{"value": 1}], "[0].name"),
        ("METRICS", [{"name": "proc_loadavg_1m", "value": 1, "tags": "x"}], "[0].tags"),
    ],
)
def test_bad_input_is_a_400_naming_the_field_and_writes_nothing(
    link: Any, sub: str, body: Any, field: str
) -> None:
    linked = link()
    if sub == "METRICS":
        sub = f"service/{service_name(linked.box)}/metrics"
    response = linked.call("POST", sub, body)
    assert response.status_code == 400, response.content
    assert response.json()["class"] == "Client::BadRequest" and field in response.json()["message"]
    linked.device.refresh_from_db()
    assert not Event.objects.exists() and not WanStatus.objects.exists() and linked.device.properties == {}
    assert not OtbDiagnostic.objects.exists()
    assert Box.objects.get(pk=linked.box.pk).firmware_version == ""  # a refused report records no version


def test_bad_diagnostic_items_are_a_400_naming_the_field(link: Any) -> None:
    linked = link()
    command = diagnostics_command(linked.box)
    diagnostic_id = linked.call("POST", "diagnostics", {"device_action_id": str(command.pk)}).json()[
        "diagnostic_id"
    ]
    for body, field in (
        ({"cmd": "x", "exit_code": 0, "output": ""}, "name"),
        ({"name": "df", "cmd": "df", "exit_code": "zero", "output": ""}, "exit_code"),
        ({"name": "df", "cmd": "df", "exit_code": 0, "output": ["x"]}, "output"),
    ):
        response = linked.call("PUT", f"diagnostics/{diagnostic_id}", body)
        assert response.status_code == 400 and field in response.json()["message"], response.content
    assert linked.call("PUT", "diagnostics/not-a-uuid", {"name": "df"}).status_code == 404
    command.refresh_from_db()
    assert not (command.result or {}).get("checks")


# -- the expired-JWT grace ------------------------------------------------------------------------


def test_a_recently_expired_jwt_still_delivers_the_queued_start_event_and_properties(link: Any) -> None:
    linked = link()
    stale = expired_jwt(linked.device, seconds_ago=600)
    start = {"event_name": "start", "timestamp": int(time.time())}
    assert linked.call("POST", "events", start, jwt=stale).status_code == 200
    assert (
        linked.call("POST", "properties", as_string_body(properties_document()), jwt=stale).status_code == 200
    )
    assert Event.objects.filter(box=linked.box, kind=EventKind.BOX_STARTED).exists()
    assert WanStatus.objects.filter(box=linked.box).count() == 2
    # the poll is not a telemetry route: there the same JWT is a 401 and the box renews
    todo = linked.call("GET", "actions/todo", jwt=stale)
    assert todo.status_code == 401 and todo.json()["class"] == "Client::Unauthorized"


@override_settings(OTB={**settings.OTB, "OTB_COMPAT_TELEMETRY_JWT_GRACE_S": 300})
def test_the_grace_is_bounded_and_never_covers_a_revoked_jwt_or_device(link: Any) -> None:
    linked = link()
    start = {"event_name": "start", "timestamp": int(time.time())}
    too_old = linked.call("POST", "events", start, jwt=expired_jwt(linked.device, seconds_ago=600))
    assert too_old.status_code == 401 and too_old.json()["class"] == "Client::Unauthorized"
    jwts_revoke(linked.device)  # a JWT of a revoked generation, even recent
    linked.device.refresh_from_db()
    old_generation = expired_jwt(linked.device, seconds_ago=10, generation=linked.device.jwt_generation - 1)
    assert linked.call("POST", "events", start, jwt=old_generation).status_code == 401
    forged = jwt_encode(
        {"sub": str(linked.device.pk), "gen": linked.device.jwt_generation, "exp": 1}, ["wrong"]
    )
    assert linked.call("POST", "events", start, jwt=forged).status_code == 401
    device_revoke(linked.device)
    revoked = linked.call("POST", "events", start, jwt=expired_jwt(linked.device, seconds_ago=10))
    assert revoked.status_code == 403 and revoked.json()["class"] == "Client::Unauthorized"
    assert not Event.objects.exists()


# -- metrics: rates from the box's counters --------------------------------------------------------


def test_rates_come_from_consecutive_counters_and_a_counter_reset_gives_none(link: Any) -> None:
    from otbcompat.telemetry.metrics import metrics_parse

    linked = link()

    def rates(rx: int, tx: int, at: float) -> dict[tuple[str, str], int | None]:
        report = metrics_parse(
            [
                {
                    "name": "linux_net_bytes",
                    "value": rx,
                    "tags": {"direction": "in", "iface": "eth1", "uci_name": "wan1"},
                },
                {
                    "name": "linux_net_bytes",
                    "value": tx,
                    "tags": {"direction": "out", "iface": "eth1", "uci_name": "wan1"},
                },
            ]
        )
        return counter_rates(linked.box.pk, report.counters, at)

    t0 = float(int(time.time()))
    assert rates(1_000_000, 500_000, t0) == {("wan1", "in"): None, ("wan1", "out"): None}  # nothing before
    # 7.5 MB in and 1.5 MB out over 60 s: 1 Mbit/s and 200 kbit/s
    assert rates(8_500_000, 2_000_000, t0 + 60) == {("wan1", "in"): 1_000_000, ("wan1", "out"): 200_000}
    # the box rebooted: its counters start again from zero, which is no rate (not a negative or huge one)
    assert rates(20_000, 10_000, t0 + 120) == {("wan1", "in"): None, ("wan1", "out"): None}
    assert rates(620_000, 10_000, t0 + 180) == {("wan1", "in"): 80_000, ("wan1", "out"): 0}
    # a report less than a second after the previous one gives no rate either
    assert rates(700_000, 20_000, t0 + 180.5)[("wan1", "in")] is None


def test_free_memory_is_the_samples_and_no_percentage_is_made_up(link: Any) -> None:
    from otbcompat.telemetry.metrics import metrics_parse, metrics_sample

    # given a report with the box's free memory (kB) and its load; nothing tells its total memory
    linked = link()
    body = [{"name": "os_mem_free", "value": 1523400, "tags": {"host": "none"}}]
    report = metrics_parse([*body, {"name": "proc_loadavg_1m", "value": 0.5}])
    # when it becomes a sample of our pipeline
    sample = metrics_sample(device=linked.device, box=linked.box, report=report, received=time.time())
    # then the free memory is kept as it came, and mem_pct stays unknown
    assert (sample["mem_free_kb"], sample["mem_pct"], sample["load1"]) == (1523400, None, 0.5)
    # and a report without it has none (not 0)
    assert (
        metrics_sample(device=linked.device, box=linked.box, report=metrics_parse([]), received=time.time())[
            "mem_free_kb"
        ]
        is None
    )


def test_an_unmapped_counter_and_a_multiline_uci_name_are_read_as_the_box_means_them() -> None:
    from otbcompat.telemetry.metrics import metrics_parse

    # uci_name "none" is unmapped (the device's name stands); "wan1\nwan1_dev" is what `uci show | grep`
    # gives when two sections name the device: the first line is the interface
    body = (
        b'[{"name":"linux_net_bytes","value":5,"tags":{"direction":"in","iface":"eth3","uci_name":"none"}},\n'
        b'{"name":"icmp_latency","value":9.5,"tags":{"host":"none","iface":"eth1","uci_name":"wan1\nwan1_dev"}}]'
    )
    from otbcompat.wire import json_loads

    report = metrics_parse(json_loads(body, strict=False))
    assert [(counter.iface, counter.direction) for counter in report.counters] == [("eth3", "in")]
    assert report.latency == {"wan1": 9.5}
    # with the box's properties: the candidate that is a WAN wins over a device section listed first,
    # and a device its properties name is that interface
    properties = {
        "wans": ["wan1", "wan2"],
        "interfaces": [{"name": "wan2", "device": "eth3"}, {"name": "wan1", "device": ""}],
    }
    body = body.replace(b'"wan1\nwan1_dev"', b'"wan1_dev\nwan1"')
    report = metrics_parse(json_loads(body, strict=False), properties)
    assert [(counter.iface, counter.direction) for counter in report.counters] == [("wan2", "in")]
    assert report.latency == {"wan1": 9.5}
