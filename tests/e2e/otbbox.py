"""A stock OverTheBox box's ``otb_call`` (lib/overthebox in ovh/overthebox-feeds v1.1.x) with its base URL
swapped, for the end-to-end tests: curl with ``--max-time 5``, ``Content-Type: application/json`` and
``X-Overthebox-Version`` on every call, the Bearer only when a JWT is stored, pretty-printed bodies,
no redirect followed (no ``-L``). It prints the body, then the status on the last line."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from django.db.models import F
from django.utils import timezone

from fleet.core.choices import BoxProtocol
from fleet.core.models import Box
from otbcompat.models import OtbDevice

OTB_CALL = r"""
otb_call() {
    method=$1; path=$2; shift 2
    set -- --silent --show-error --max-time 5 -X "$method" \
        -H "Content-Type: application/json" -H "X-Overthebox-Version: $VERSION" "$@"
    [ -n "$JWT" ] && set -- "$@" -H "Authorization: Bearer $JWT"
    curl "$@" -w '\n%{http_code}' "$OTB_BASE/1.0/$path"
}
otb_call "$@"
"""


def otb_call(
    base: str, method: str, path: str, body: Any = None, jwt: str = "", version: str = "1.1.3"
) -> tuple[int, Any]:
    """(status, the JSON answer); None for an empty body, the raw text of one that is not JSON (a 404
    page of an unknown path)."""
    args = ["-d", json.dumps(body, indent=2)] if body is not None else []
    done = subprocess.run(
        ["bash", "-c", OTB_CALL, "otb_call", method, path, *args],
        env={"PATH": "/usr/bin:/bin", "OTB_BASE": base, "JWT": jwt, "VERSION": version},
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    text, _, status = done.stdout.rpartition("\n")
    if not text.strip():
        return int(status), None
    try:
        return int(status), json.loads(text)
    except ValueError:
        return int(status), text


def box_subscribe(base: str, mac: str, board: str = "pc-engines-apu2") -> dict[str, Any]:
    """The box's anonymous ``subscribe``: its answer (device id, token, JWT), checked 200."""
    body = {"private_ips": ["192.168.100.1"], "board": board, "macaddr": mac}
    status, answer = otb_call(base, "POST", "subscribe", body)
    assert status == 200, answer
    return dict(answer)


def linked_device(base: str, box: Box, mac: str, **box_fields: Any) -> dict[str, Any]:
    """A subscribed device linked to ``box`` and confirmed, the box an OTB box running its desired
    configuration (so its polls are idle), with ``box_fields`` set too; the subscribe answer."""
    answer = box_subscribe(base, mac, board="apu2")
    now = timezone.now()
    OtbDevice.objects.filter(id=answer["device_id"]).update(box=box, linked_at=now, confirmed_at=now)
    Box.objects.filter(pk=box.pk).update(
        protocol=BoxProtocol.OTB, applied_config_hash=F("config_hash"), **box_fields
    )
    return answer
