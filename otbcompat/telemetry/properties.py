"""``POST devices/{id}/properties``: the box's description of itself, posted at every daemon start and
on ``refreshProperties`` (already before activation: linked, not yet confirmed). The body is a JSON
*string* holding the document (since 2021; an object is accepted too):

``{"interfaces": [{"name", "label", "device", "ip", "netmask", "gateway", "public_ip", "dns_servers",
"multipath_status", "as": {"country", "description", "number"} | null, …}], "mounts": [{"device",
"mount_point", "fs", "options"}], "release": {…}, "board": {"model", "board_name", "mac_addr", …}}``

Every UCI interface is listed (``loopback``, ``lan``, ``tun0`` once configured); any field may be
``""`` or null. The document is kept, normalised and bounded, in ``OtbDevice.properties`` (with
``wans``, the names of the WAN links); on the linked box it sets the WAN list
(``links.links_from_properties``: label, public IP), the tunnel's state (``tun0`` with an address:
up), the firmware version (``release.version``) and,
when the box has none, its model (``board.board_name``).
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils import timezone

from fleet.core.events import events_record_batch
from fleet.core.models import Box
from otbcompat.errors import OtbBadRequest
from otbcompat.models import OtbDevice
from otbcompat.telemetry import fields
from otbcompat.telemetry.firmware import firmware_release_report
from otbcompat.telemetry.links import (
    TUNNEL,
    WAN_MULTIPATH,
    ReportedLink,
    links_from_properties,
    tunnel_state_set,
)
from otbcompat.wire import json_loads

MAX_INTERFACES = 64
MAX_MOUNTS = 64
MAX_DNS = 16
AS_NUMBER_MAX = 2**32 - 1
RELEASE_KEYS = ("distribution", "version", "revision", "target", "description")
BOARD_KEYS = ("kernel", "hostname", "system", "model", "board_name", "rootfs_type", "mac_addr")


def properties_document(body: Any) -> dict[str, Any]:
    """The document from the body (a JSON string of it, or the object), normalised; 400 naming the
    first wrong field."""
    if isinstance(body, str):
        try:
            body = json_loads(body, strict=False)
        except (ValueError, RecursionError) as exc:
            raise OtbBadRequest("body: the string is not a JSON document") from exc
    document = fields.mapping(body, "body")
    interfaces = [
        _interface(item, f"interfaces[{index}]")
        for index, item in enumerate(
            fields.listing(document.get("interfaces"), "interfaces", max_items=MAX_INTERFACES)
        )
    ]
    names = [item["name"] for item in interfaces]
    if len(set(names)) != len(names):
        raise fields.bad("interfaces", "an interface name is listed twice")
    mounts = [
        _mount(item, f"mounts[{index}]")
        for index, item in enumerate(fields.listing(document.get("mounts"), "mounts", max_items=MAX_MOUNTS))
    ]
    return {
        "interfaces": interfaces,
        "wans": [item["name"] for item in interfaces if item["multipath_status"] in WAN_MULTIPATH],
        "mounts": mounts,
        "release": _strings(document.get("release"), "release", RELEASE_KEYS),
        "board": _strings(document.get("board"), "board", BOARD_KEYS),
    }


def _mount(value: Any, path: str) -> dict[str, str]:
    item = fields.mapping(value, path)
    return {
        "device": fields.text(item.get("device"), f"{path}.device", max_len=256),
        "mount_point": fields.text(item.get("mount_point"), f"{path}.mount_point", max_len=256),
        "fs": fields.text(item.get("fs"), f"{path}.fs", max_len=32),
        "options": fields.text(item.get("options"), f"{path}.options", max_len=512),
    }


def _strings(value: Any, path: str, keys: tuple[str, ...]) -> dict[str, str]:
    if value is None:
        return {}
    section = fields.mapping(value, path)
    return {
        key: fields.text(section.get(key), f"{path}.{key}", max_len=128)
        for key in keys
        if section.get(key) is not None
    }


def _interface(value: Any, path: str) -> dict[str, Any]:
    item = fields.mapping(value, path)
    autonomous = item.get("as")
    as_info = None
    if autonomous is not None:
        autonomous = fields.mapping(autonomous, f"{path}.as")
        number = autonomous.get("number")
        as_info = {
            "country": fields.text(autonomous.get("country"), f"{path}.as.country", max_len=8),
            "description": fields.text(autonomous.get("description"), f"{path}.as.description", max_len=256),
            "number": None
            if number in (None, "")
            else fields.integer(number, f"{path}.as.number", minimum=0, maximum=AS_NUMBER_MAX),
        }
    return {
        "name": fields.text(item.get("name"), f"{path}.name", max_len=32, required=True).strip(),
        "label": fields.text(item.get("label"), f"{path}.label", max_len=64),
        "device": fields.text(item.get("device"), f"{path}.device", max_len=32),
        "ip": fields.text(item.get("ip"), f"{path}.ip", max_len=64),
        "netmask": fields.text(item.get("netmask"), f"{path}.netmask", max_len=64),
        "gateway": fields.text(item.get("gateway"), f"{path}.gateway", max_len=64),
        "public_ip": fields.ip_or_none(item.get("public_ip"), f"{path}.public_ip"),
        "dns_servers": [
            fields.text(server, f"{path}.dns_servers[{index}]", max_len=64)
            for index, server in enumerate(
                fields.listing(item.get("dns_servers"), f"{path}.dns_servers", max_items=MAX_DNS)
            )
        ],
        "multipath_status": fields.text(item.get("multipath_status"), f"{path}.multipath_status", max_len=16),
        "as": as_info,
    }


def properties_report(*, device: OtbDevice, body: Any) -> dict[str, Any]:
    """Validate the document whole, then keep it on the device and apply it to the linked box."""
    document = properties_document(body)
    box = device.box
    with transaction.atomic():
        OtbDevice.objects.filter(pk=device.pk).update(properties=document, properties_at=timezone.now())
        device.properties = document
        if box is not None:
            reported = [
                ReportedLink(
                    name=item["name"],
                    label=item["label"],
                    device=item["device"],
                    public_ip=item["public_ip"],
                    has_address=bool(item["ip"]),
                )
                for item in document["interfaces"]
                if item["name"] in document["wans"]
            ]
            events_record_batch(links_from_properties(box=box, reported=reported))
            tunnel = next((item for item in document["interfaces"] if item["name"] == TUNNEL), None)
            tunnel_state_set(box=box, up=tunnel is not None and bool(tunnel["ip"]))
            model = document["board"].get("board_name", "")[:64]
            if model and not box.model:
                Box.objects.filter(pk=box.pk, model="").update(model=model)
                box.model = model
            firmware_release_report(box, document["release"].get("version", ""))
    return document
