"""Binding a stock OverTheBox box over real HTTP (uvicorn, PostgreSQL, Redis): the box subscribes, its
owner claims it by device id through the REST API, the box learns its service, confirms it and pulls its
configuration, each call made with curl exactly as the box's ``otb_call`` makes it."""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

import pytest

from fleet.core.models import Box
from otbcompat.models import OtbDevice
from otbcompat.services import device_revoke
from tests.e2e.otbbox import box_subscribe, otb_call

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(shutil.which("curl") is None, reason="curl is needed to call like the box"),
]


def api_post(base: str, path: str, token: str, body: Any) -> tuple[int, Any]:
    done = subprocess.run(
        [
            "curl", "--silent", "--show-error", "--max-time", "10", "-X", "POST",
            "-H", "Content-Type: application/json", "-H", f"Authorization: Bearer {token}",
            "-d", json.dumps(body), "-w", "\n%{http_code}", f"{base}{path}",
        ],
        capture_output=True, text=True, timeout=15, check=True,
    )  # fmt: skip
    text, _, status = done.stdout.rpartition("\n")
    return int(status), json.loads(text)


def test_subscribe_claim_associated_confirm_over_real_http(
    asgi_server: Any, people: Any, api_token_factory: Any, provisioned_region: Any
) -> None:
    base = asgi_server.url
    box = box_subscribe(base, "00:0d:b9:4a:21:01")
    device = box["device_id"]
    # pending: no service yet
    status, answer = otb_call(base, "GET", f"devices/{device}/service/associated", jwt=box["jwt"])
    assert (status, answer) == (200, {"service": None})
    # the owner claims it by the device id the box shows
    token = api_token_factory(people.admin, people.org)
    status, claimed = api_post(base, "/api/v1/boxes/claim", token, {"device_id": device})
    assert status == 201, claimed
    service = f"overthebox.{claimed['id']}"
    # the box learns its service (askServiceConfirmation), then confirms it with no body
    status, answer = otb_call(base, "GET", f"devices/{device}/service/associated", jwt=box["jwt"])
    assert (status, answer) == (200, {"service": service})
    status, _ = otb_call(base, "POST", f"devices/{device}/service/{service}/confirm", jwt=box["jwt"])
    assert status == 200
    linked = OtbDevice.objects.get(id=device)
    assert linked.confirmed_at is not None and str(linked.box_id) == claimed["id"]
    # then it pulls its configuration (GET with Content-Type and no body), built from our provisioning
    status, config = otb_call(base, "GET", f"devices/{device}/config", jwt=box["jwt"])
    assert status == 200, config
    assert config["glorytun_mud_conf"]["dev"] == "tun0"
    assert config["shadow_conf"]["server"] == provisioned_region.server.public_ipv4
    assert config["shadow_conf"]["port"] == Box.objects.get(pk=claimed["id"]).tunnel_port
    stored = Box.objects.get(pk=claimed["id"])
    assert stored.protocol == "otb" and stored.applied_config_hash == stored.config_hash


def test_a_box_cannot_bind_to_or_confirm_another(
    asgi_server: Any, people: Any, api_token_factory: Any, provisioned_region: Any
) -> None:
    base = asgi_server.url
    mine = box_subscribe(base, "00:0d:b9:4a:21:02")
    theirs = box_subscribe(base, "00:0d:b9:4a:21:03")
    outsider = api_token_factory(people.outsider, people.other_org)
    status, claimed = api_post(base, "/api/v1/boxes/claim", outsider, {"device_id": theirs["device_id"]})
    assert status == 201, claimed
    their_service = f"overthebox.{claimed['id']}"
    # my JWT on their device id
    status, answer = otb_call(
        base, "GET", f"devices/{theirs['device_id']}/service/associated", jwt=mine["jwt"]
    )
    assert status == 403 and answer["class"] == "Client::Forbidden"
    # my device id confirming their service
    path = f"devices/{mine['device_id']}/service/{their_service}/confirm"
    status, answer = otb_call(base, "POST", path, jwt=mine["jwt"])
    assert status == 403 and answer["class"] == "Client::Forbidden"
    # their device cannot be claimed by my organisation
    admin = api_token_factory(people.admin, people.org)
    status, refused = api_post(base, "/api/v1/boxes/claim", admin, {"device_id": theirs["device_id"]})
    assert status == 409 and "device_id" in refused["error"]["fields"]
    assert OtbDevice.objects.get(id=theirs["device_id"]).confirmed_at is None
    # nor read their config
    status, answer = otb_call(base, "GET", f"devices/{theirs['device_id']}/config", jwt=mine["jwt"])
    assert status == 403 and "shadow_conf" not in answer
    # a revoked device's JWT stops working at once (it must subscribe again)
    device_revoke(OtbDevice.objects.get(id=theirs["device_id"]))
    status, answer = otb_call(base, "GET", f"devices/{theirs['device_id']}/config", jwt=theirs["jwt"])
    assert status == 403 and answer["class"] == "Client::Unauthorized"


def raw_call(base: str, method: str, path: str, body: str, jwt: str) -> tuple[int, Any]:
    """curl as the box calls, with a body given verbatim (malformed on purpose)."""
    done = subprocess.run(
        [
            "curl", "--silent", "--show-error", "--max-time", "5", "-X", method,
            "-H", "Content-Type: application/json", "-H", "X-Overthebox-Version: 1.1.3",
            "-H", f"Authorization: Bearer {jwt}", "--data-binary", body, "-w", "\n%{http_code}",
            f"{base}/1.0/{path}",
        ],
        capture_output=True, text=True, timeout=10, check=True,
    )  # fmt: skip
    text, _, status = done.stdout.rpartition("\n")
    return int(status), json.loads(text)


def test_bad_input_on_every_binding_route_is_a_clear_4xx(
    asgi_server: Any, people: Any, api_token_factory: Any, provisioned_region: Any
) -> None:
    base = asgi_server.url
    box = box_subscribe(base, "00:0d:b9:4a:21:04")
    device = box["device_id"]
    token = api_token_factory(people.admin, people.org)
    # the claim API: malformed JSON, a wrong type, a claim code without its serial, an unknown field
    for body, field in (
        ({"device_id": 7}, "device_id"),
        ({"device_id": device, "claim_code": "x"}, "serial"),
        ({"device_id": device, "colour": "red"}, "colour"),
    ):
        status, answer = api_post(base, "/api/v1/boxes/claim", token, body)
        assert status == 400 and field in answer["error"]["fields"], (body, answer)
    status, claimed = api_post(base, "/api/v1/boxes/claim", token, {"device_id": device})
    assert status == 201
    service = f"overthebox.{claimed['id']}"
    # the /1.0 routes: a body where none belongs, malformed JSON, the wrong method
    for method, path, raw in (
        ("GET", f"devices/{device}/service/associated", '{"x": 1}'),
        ("POST", f"devices/{device}/service/{service}/confirm", "{nope"),
        ("POST", f"devices/{device}/service/{service}/confirm", '["not", "empty"]'),
        ("GET", f"devices/{device}/config", '{"x": 1}'),
        ("PUT", f"devices/{device}/config", "{}"),
        ("DELETE", f"devices/{device}/service/associated", ""),
    ):
        status, answer = raw_call(base, method, path, raw, box["jwt"])
        assert status in (400, 405) and answer["class"].startswith("Client::"), (method, path, answer)
    # nothing was half-written: the service is still unconfirmed, the config not recorded as applied
    assert OtbDevice.objects.get(id=device).confirmed_at is None
    assert Box.objects.get(pk=claimed["id"]).applied_at is None
