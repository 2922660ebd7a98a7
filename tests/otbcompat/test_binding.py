"""Binding stock OverTheBox boxes: the claim by device id (and by serial + claim code for imported
hardware), ``service/associated``, ``service/{sid}/confirm``, and what unclaim/decommission do to the
device. /1.0 calls are shaped like the box's ``otb_call`` (tests/otbcompat/test_identity.py)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.test import Client

from fleet.core.audit import Actor
from fleet.core.choices import BoxProtocol, BoxState
from fleet.core.models import AuditLog, Box
from otbcompat.binding import box_claim_with_device, device_claim
from otbcompat.models import OtbDevice
from provisioning.models import AddressAssignment, TunnelCredential
from provisioning.services.lifecycle import box_decommission, box_unclaim
from tests.conftest import CLAIM_CODE
from tests.otbcompat.test_identity import otb_call, subscribe

pytestmark = pytest.mark.django_db

MAC = "00:0d:b9:4a:11:22"


def claim(client: Any, body: dict[str, Any]) -> Any:
    return client.post("/api/v1/boxes/claim", body, format="json")


def associated(client: Client, answer: dict[str, Any], jwt: str | None = None) -> Any:
    return otb_call(
        client, "GET", f"devices/{answer['device_id']}/service/associated", jwt=jwt or answer["jwt"]
    )


def confirm(client: Client, answer: dict[str, Any], service: str, jwt: str | None = None) -> Any:
    return otb_call(
        client, "POST", f"devices/{answer['device_id']}/service/{service}/confirm", jwt=jwt or answer["jwt"]
    )


def test_claim_by_device_id_provisions_a_box_and_links_the_device(
    people, client_for, provisioned_region
) -> None:
    # given a stock box that subscribed (pending: no service yet)
    box_client = Client()
    answer = subscribe(box_client, mac=MAC)
    assert associated(box_client, answer).json() == {"service": None}
    # when the organisation's admin claims it by the device id the box shows
    response = claim(client_for(people.admin), {"device_id": answer["device_id"]})
    # then a box is made, claimed, provisioned like every claim, and linked to the device
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["protocol"] == "otb" and body["state"] == "claimed"
    assert body["public_ipv4"] and body["server"]["name"] == provisioned_region.server.name
    box = Box.objects.get(pk=body["id"])
    assert box.protocol == BoxProtocol.OTB and box.organization_id == people.org.pk
    assert box.mac == MAC and box.model == "pc-engines-apu2" and box.config_hash
    assert AddressAssignment.objects.filter(box=box, state="active").count() == 3
    assert TunnelCredential.objects.filter(box=box, revoked_at__isnull=True).count() == 3
    device = OtbDevice.objects.get(id=answer["device_id"])
    assert device.box_id == box.pk and device.linked_at is not None and device.confirmed_at is None
    assert AuditLog.objects.filter(action="box.claim", box=box).exists()
    assert AuditLog.objects.filter(action="otb.device_link", box=box).exists()
    # and the box learns its service, then confirms it (idempotent: the first time stays)
    service = f"overthebox.{box.pk}"
    assert associated(box_client, answer).json() == {"service": service}
    assert confirm(box_client, answer, service).status_code == 200
    first = OtbDevice.objects.get(id=device.id).confirmed_at
    assert first is not None
    assert confirm(box_client, answer, service).status_code == 200
    assert OtbDevice.objects.get(id=device.id).confirmed_at == first
    # a retried claim changes nothing
    again = claim(client_for(people.admin), {"device_id": answer["device_id"]})
    assert again.status_code == 200 and again.json()["id"] == str(box.pk)
    assert Box.objects.filter(mac=MAC).count() == 1


def test_claim_by_serial_code_and_device_id_links_the_device_subscribed_with_the_box_mac(
    people, client_for, box_factory, provisioned_region
) -> None:
    # given imported hardware and the box itself, which subscribed with that MAC
    box = box_factory("OTB-HW-0001", mac=MAC)
    box_client = Client()
    answer = subscribe(box_client, mac=MAC)
    # when the owner claims it by serial and claim code, with the device id the box shows
    body = {"serial": "OTB-HW-0001", "claim_code": CLAIM_CODE, "device_id": answer["device_id"]}
    response = claim(client_for(people.admin), body)
    # then the box is claimed and the device is linked to it
    assert response.status_code == 201, response.content
    assert response.json()["protocol"] == "otb"
    assert OtbDevice.objects.get(id=answer["device_id"]).box_id == box.pk
    box.refresh_from_db()
    assert box.protocol == BoxProtocol.OTB and box.state == BoxState.CLAIMED
    assert associated(box_client, answer).json() == {"service": f"overthebox.{box.pk}"}
    # and the same request again changes nothing
    assert claim(client_for(people.admin), body).status_code == 200


def test_a_device_subscribed_with_the_box_mac_is_never_linked_by_the_mac_alone(
    people, client_for, box_factory, provisioned_region
) -> None:
    # given imported hardware whose MAC someone else subscribed first (a MAC is not a secret)
    box = box_factory("OTB-HW-0002", mac=MAC)
    impostor = subscribe(Client(), mac=MAC)
    # when the owner claims it by serial and claim code only
    response = claim(client_for(people.admin), {"serial": "OTB-HW-0002", "claim_code": CLAIM_CODE})
    # then the box is claimed, and no device gets its service (nor its tunnel credentials)
    assert response.status_code == 201 and response.json()["protocol"] == "agent"
    assert not OtbDevice.objects.filter(box=box).exists()
    assert associated(Client(), impostor).json() == {"service": None}


def test_a_device_id_of_another_mac_undoes_the_whole_claim(
    people, client_for, box_factory, provisioned_region
) -> None:
    box = box_factory("OTB-HW-0005", mac=MAC)
    other = subscribe(Client(), mac="00:0d:b9:4a:99:99")
    body = {"serial": "OTB-HW-0005", "claim_code": CLAIM_CODE, "device_id": other["device_id"]}
    response = claim(client_for(people.admin), body)
    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"] == "device_mismatch"
    assert "device_id" in response.json()["error"]["fields"]
    box.refresh_from_db()
    assert box.organization_id is None and box.state == BoxState.UNCLAIMED and box.server_id is None
    assert OtbDevice.objects.get(id=other["device_id"]).box_id is None


def test_device_id_of_imported_hardware_is_refused_without_its_claim_code(
    people, client_for, box_factory, provisioned_region
) -> None:
    # given imported hardware, and a device that subscribed with its MAC (perhaps not the box at all)
    box = box_factory("OTB-HW-0003", mac=MAC)
    answer = subscribe(Client(), mac=MAC)
    response = claim(client_for(people.admin), {"device_id": answer["device_id"]})
    assert response.status_code == 409, response.content
    assert response.json()["error"]["code"] == "imported_hardware"
    assert "device_id" in response.json()["error"]["fields"]
    assert Box.objects.get(pk=box.pk).organization_id is None
    assert OtbDevice.objects.get(id=answer["device_id"]).box_id is None
    # once the owner claimed the hardware with its code, the device id links to that box
    claim(client_for(people.admin), {"serial": "OTB-HW-0003", "claim_code": CLAIM_CODE})
    OtbDevice.objects.filter(id=answer["device_id"]).update(box=None, linked_at=None)
    relinked = claim(client_for(people.admin), {"device_id": answer["device_id"]})
    assert relinked.status_code == 201 and relinked.json()["id"] == str(box.pk)


@pytest.mark.parametrize("case", ["unknown", "malformed", "revoked", "other_org"])
def test_bad_device_ids_are_clear_4xx_and_count_as_failed_claims(
    case, people, client_for, provisioned_region, settings
) -> None:
    settings.OTB = {**settings.OTB, "CLAIM_MAX_FAILURES": 2, "AUTH_FAILURE_WINDOW_S": 600}
    answer = subscribe(Client(), mac=MAC)
    device_id = answer["device_id"]
    expected = 400
    if case == "unknown":
        device_id = str(uuid.uuid4())
    elif case == "malformed":
        device_id = "not-a-device"
    elif case == "revoked":
        OtbDevice.objects.filter(id=device_id).update(revoked_at="2026-01-01T00:00:00Z")
    else:
        assert claim(client_for(people.outsider), {"device_id": device_id}).status_code == 201
        expected = 409
    admin = client_for(people.admin)
    for _ in range(2):
        refused = claim(admin, {"device_id": device_id})
        assert refused.status_code == expected, refused.content
        assert "device_id" in refused.json()["error"]["fields"]
    # the third attempt is over the limit (per device id and organisation), whatever the id
    limited = claim(admin, {"device_id": device_id})
    assert limited.status_code == 429 and limited["Retry-After"]
    assert not Box.objects.filter(organization=people.org).exists()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "serial"),
        ({"serial": "X-1"}, "claim_code"),
        ({"device_id": str(uuid.uuid4()), "serial": "X-1"}, "claim_code"),
        ({"device_id": 12}, "device_id"),
        ({"device_id": "x" * 65}, "device_id"),
        ({"device_id": str(uuid.uuid4()), "colour": "red"}, "colour"),
    ],
)
def test_claim_bad_input_names_the_field(body, field, people, client_for, provisioned_region) -> None:
    response = claim(client_for(people.admin), body)
    assert response.status_code == 400, response.content
    assert field in response.json()["error"]["fields"]
    assert not Box.objects.exists() and not AuditLog.objects.filter(action="box.claim").exists()


def test_a_viewer_cannot_claim_a_device(people, client_for, provisioned_region) -> None:
    answer = subscribe(Client(), mac=MAC)
    response = claim(client_for(people.viewer), {"device_id": answer["device_id"]})
    assert response.status_code == 403
    assert OtbDevice.objects.get(id=answer["device_id"]).box_id is None


def test_staff_claim_a_device_for_an_organization(people, client_for, provisioned_region) -> None:
    answer = subscribe(Client(), mac=MAC)
    response = claim(
        client_for(people.staff), {"device_id": answer["device_id"], "organization": str(people.org.pk)}
    )
    assert response.status_code == 201
    assert Box.objects.get(pk=response.json()["id"]).organization_id == people.org.pk


def test_another_devices_jwt_and_another_service_are_forbidden(people, provisioned_region) -> None:
    box_client = Client()
    mine = subscribe(box_client, mac=MAC)
    other = subscribe(box_client, mac="00:0d:b9:4a:11:99")
    actor = Actor.for_user(people.admin)
    mine_box = device_claim(actor=actor, organization=people.org, device_id=mine["device_id"]).box
    other_box = device_claim(actor=actor, organization=people.org, device_id=other["device_id"]).box
    # another device's id in the path, with my JWT
    stolen = otb_call(box_client, "GET", f"devices/{other['device_id']}/service/associated", jwt=mine["jwt"])
    assert stolen.status_code == 403 and stolen.json()["class"] == "Client::Forbidden"
    # confirming another box's service with my own id
    wrong = confirm(box_client, mine, f"overthebox.{other_box.pk}")
    assert wrong.status_code == 403 and wrong.json()["class"] == "Client::Forbidden"
    assert OtbDevice.objects.get(id=other["device_id"]).confirmed_at is None
    assert OtbDevice.objects.get(id=mine["device_id"]).confirmed_at is None
    # confirming before any link is refused too
    pending = subscribe(box_client, mac="00:0d:b9:4a:11:98")
    assert confirm(box_client, pending, f"overthebox.{mine_box.pk}").status_code == 403


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "service/associated", None),
        ("GET", "service/associated", {"x": 1}),
        ("GET", "service/{sid}/confirm", None),
        ("POST", "service/{sid}/confirm", {"unexpected": True}),
        ("POST", "service/{sid}/confirm", "[1"),
    ],
)
def test_binding_routes_bad_input_is_a_clear_4xx(method, path, body, people, provisioned_region) -> None:
    box_client = Client()
    answer = subscribe(box_client, mac=MAC)
    box = device_claim(
        actor=Actor.for_user(people.admin), organization=people.org, device_id=answer["device_id"]
    ).box
    url = f"/1.0/devices/{answer['device_id']}/" + path.format(sid=f"overthebox.{box.pk}")
    data = body if isinstance(body, str) else ("" if body is None else __import__("json").dumps(body))
    response = box_client.generic(
        method, url, data, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {answer['jwt']}"
    )
    assert response.status_code in (400, 405), response.content
    assert response.json()["class"] in ("Client::BadRequest", "Client::MethodNotAllowed")
    assert OtbDevice.objects.get(id=answer["device_id"]).confirmed_at is None


def test_unclaim_unlinks_the_device_and_its_jwts_stop_working(people, provisioned_region) -> None:
    box_client = Client()
    answer = subscribe(box_client, mac=MAC)
    actor = Actor.for_user(people.admin)
    box = device_claim(actor=actor, organization=people.org, device_id=answer["device_id"]).box
    # when the owner unclaims the box (by any path)
    box_unclaim(actor=actor, box=box)
    # then the box's next call is refused with the class that makes it renew
    stale = associated(box_client, answer)
    assert stale.status_code == 401 and stale.json()["class"] == "Client::Unauthorized"
    device = OtbDevice.objects.get(id=answer["device_id"])
    assert device.box_id is None and device.linked_at is None
    # it renews with its token and is a pending device again, claimable anew by its id
    jwt = otb_call(
        box_client, "POST", "renew_jwt", {"id": answer["device_id"], "token": answer["token"]}
    ).json()["jwt"]
    assert associated(box_client, answer, jwt=jwt).json() == {"service": None}
    again = device_claim(actor=actor, organization=people.org, device_id=answer["device_id"])
    assert again.box.pk == box.pk and again.newly_claimed


def test_decommission_revokes_the_device(people, provisioned_region) -> None:
    box_client = Client()
    answer = subscribe(box_client, mac=MAC)
    box = device_claim(
        actor=Actor.for_user(people.admin), organization=people.org, device_id=answer["device_id"]
    ).box
    box_decommission(actor=Actor.for_user(people.staff), box=box)
    gone = associated(box_client, answer)
    assert gone.status_code == 403 and gone.json()["class"] == "Client::Unauthorized"  # it subscribes again
    renew = otb_call(box_client, "POST", "renew_jwt", {"id": answer["device_id"], "token": answer["token"]})
    assert renew.status_code == 403
    assert OtbDevice.objects.get(id=answer["device_id"]).box_id is None


def test_a_serial_reclaim_links_the_device_afresh_after_an_unclaim(
    people, box_factory, provisioned_region
) -> None:
    # given imported hardware claimed by serial + code, its device linked and confirmed
    box = box_factory("OTB-HW-0004", mac=MAC)
    box_client = Client()
    answer = subscribe(box_client, mac=MAC)
    actor = Actor.for_user(people.admin)
    box_claim_with_device(
        actor=actor,
        organization=people.org,
        serial="OTB-HW-0004",
        claim_code=CLAIM_CODE,
        device_id=answer["device_id"],
    )
    assert confirm(box_client, answer, f"overthebox.{box.pk}").status_code == 200
    # when the owner unclaims it and another customer claims it with the code, before the box calls
    box_unclaim(actor=actor, box=Box.objects.get(pk=box.pk))
    claimed = box_claim_with_device(
        actor=Actor.for_user(people.outsider),
        organization=people.other_org,
        serial="OTB-HW-0004",
        claim_code=CLAIM_CODE,
        device_id=answer["device_id"],
    )
    # then the device is linked to the new claim but must confirm again, with a new JWT
    device = OtbDevice.objects.get(id=answer["device_id"])
    assert claimed.device is not None and claimed.device.id == device.id
    assert device.box_id == box.pk and device.confirmed_at is None
    stale = associated(box_client, answer)
    assert stale.status_code == 401 and stale.json()["class"] == "Client::Unauthorized"
