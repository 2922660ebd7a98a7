"""Staff revoking a box's credentials stops a stock OverTheBox box's device too: its JWT and its
long-lived token fail at once (403 ``Client::Unauthorized``: the box subscribes again), from the
console, the staff API and the admin alike; the box recovers as a new device its owner claims again,
landing on the same box. /1.0 calls are shaped like the box's ``otb_call``."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.messages import get_messages
from django.test import Client

from fleet.core.audit import Actor
from fleet.core.errors import Forbidden
from fleet.core.models import AgentCredential, AuditLog, Box
from fleet.core.tokens import digest
from otbcompat.binding import device_claim
from otbcompat.models import OtbDevice
from provisioning.models import TunnelCredential
from provisioning.services.lifecycle import box_revoke_credentials
from tests.otbcompat.test_binding import associated, claim, confirm
from tests.otbcompat.test_identity import otb_call, subscribe

pytestmark = pytest.mark.django_db

MAC = "00:0d:b9:4a:71:01"


def todo(client: Client, answer: dict[str, Any], jwt: str | None = None) -> Any:
    return otb_call(client, "GET", f"devices/{answer['device_id']}/actions/todo", jwt=jwt or answer["jwt"])


def renew(client: Client, answer: dict[str, Any]) -> Any:
    # the box sends its old JWT as Bearer with {id, token} (research section 5.4)
    body = {"id": answer["device_id"], "token": answer["token"]}
    return otb_call(client, "POST", "renew_jwt", body, jwt=answer["jwt"])


def active_box(people: Any, box_client: Client, mac: str = MAC) -> tuple[dict[str, Any], Box]:
    """A subscribed device claimed by its owner and confirmed: an active OTB box."""
    answer = subscribe(box_client, mac=mac)
    box = device_claim(
        actor=Actor.for_user(people.admin), organization=people.org, device_id=answer["device_id"]
    ).box
    assert confirm(box_client, answer, f"overthebox.{box.pk}").status_code == 200
    assert todo(box_client, answer).status_code == 200
    return answer, box


def assert_stopped(box_client: Client, answer: dict[str, Any]) -> None:
    """Its JWT and its token fail at once, with the answer the box re-subscribes on."""
    for response in (todo(box_client, answer), renew(box_client, answer), associated(box_client, answer)):
        assert response.status_code == 403, response.content
        assert response.json()["class"] == "Client::Unauthorized"
    assert "jwt" not in renew(box_client, answer).json()


def test_console_revoke_stops_the_device_then_the_box_resubscribes_and_is_claimed_again(
    people: Any, client_for: Any, provisioned_region: Any
) -> None:
    # given an active OTB box and the tunnel key its config carries
    box_client = Client()
    answer, box = active_box(people, box_client)
    config = otb_call(box_client, "GET", f"devices/{answer['device_id']}/config", jwt=answer["jwt"])
    assert config.status_code == 200, config.content
    old_key = config.json()["glorytun_mud_conf"]["key"]
    # when staff revoke its credentials in the console: the confirmation page names the device
    console = Client()
    console.force_login(people.staff)
    page = console.get(f"/console/boxes/{box.pk}/revoke/").content.decode()
    assert 'id="otb-device-revoked"' in page and answer["device_id"] in page
    response = console.post(f"/console/boxes/{box.pk}/revoke/", {"confirm_serial": box.serial})
    assert response.status_code == 302
    # then the console says what it revoked, the device among it
    [message] = [str(m) for m in get_messages(response.wsgi_request)]
    assert f"OverTheBox device {answer['device_id']}" in message
    assert "3 tunnel credential(s) (new ones issued)" in message
    # and the device's JWT and token stop working at once; it is unlinked and revoked
    assert_stopped(box_client, answer)
    device = OtbDevice.objects.get(id=answer["device_id"])
    assert device.revoked_at is not None and device.box_id is None and device.confirmed_at is None
    # both audit entries name it
    entry = AuditLog.objects.get(action="box.revoke_credentials", box=box)
    assert entry.after is not None and entry.after["otb_device_revoked"] == answer["device_id"]
    assert entry.actor_label == "staff:staff@example.com"
    device_entry = AuditLog.objects.get(action="otb.device_revoke", box=box)
    assert device_entry.before is not None and device_entry.before["device"] == answer["device_id"]
    assert device_entry.after is not None and device_entry.after["token_revoked"]

    # recovery: the box, told 403 Client::Unauthorized, subscribes again (a new pending device) ...
    again = subscribe(box_client, mac=MAC)
    assert again["device_id"] != answer["device_id"]
    assert associated(box_client, again).json() == {"service": None}
    # ... and its owner claims the device id it now shows: it lands on the same box
    claimed = claim(client_for(people.admin), {"device_id": again["device_id"]})
    assert claimed.status_code == 201, claimed.content
    assert claimed.json()["id"] == str(box.pk)
    service = f"overthebox.{box.pk}"
    assert associated(box_client, again).json() == {"service": service}
    assert confirm(box_client, again, service).status_code == 200
    assert todo(box_client, again).status_code == 200
    # and its configuration carries the new tunnel keys, issued at the revocation
    config = otb_call(box_client, "GET", f"devices/{again['device_id']}/config", jwt=again["jwt"])
    assert config.status_code == 200, config.content
    assert config.json()["glorytun_mud_conf"]["key"] != old_key
    # the revoked device stays revoked
    assert_stopped(box_client, answer)


def test_the_staff_api_and_the_admin_revoke_the_device_too(
    people: Any, client_for: Any, superuser_client: Client, provisioned_region: Any
) -> None:
    # given two active OTB boxes
    first_client, second_client = Client(), Client()
    first, first_box = active_box(people, first_client)
    second, second_box = active_box(people, second_client, mac="00:0d:b9:4a:71:02")
    # when staff revoke the first one's tunnel credentials only (the API's default)
    api = client_for(people.staff)
    url = f"/api/v1/boxes/{first_box.pk}/revoke-credentials"
    assert api.post(url, {}, format="json").status_code == 200
    # then the device keeps working (it proves nothing with the tunnel keys)
    assert todo(first_client, first).status_code == 200
    # when they include the box's own credentials
    assert api.post(url, {"include_agent": True}, format="json").status_code == 200
    assert_stopped(first_client, first)
    # and the admin's action does the same for the second one
    response = superuser_client.post(
        "/admin/fleet/box/",
        {"action": "revoke_credentials", "_selected_action": [str(second_box.pk)]},
    )
    assert response.status_code == 302, response.content[:500]
    assert_stopped(second_client, second)


def test_a_revocation_without_a_device_and_one_refused_change_nothing(
    people: Any, provisioned_region: Any
) -> None:
    # given an agent box (no OTB device) and an active OTB box
    agent_box = Box.objects.create(serial="AGENT-0001", mac="00:0d:b9:4a:71:09")
    AgentCredential.objects.create(box=agent_box, token_hash=digest("otba_revoke_me"))
    box_client = Client()
    answer, box = active_box(people, box_client)
    # when staff revoke the agent box's credentials
    revoked = box_revoke_credentials(actor=Actor.for_user(people.staff), box=agent_box, include_agent=True)
    # then its agent credential goes, and the audit says no device was there
    assert getattr(revoked, "credentials_revoked", None) == {
        "tunnel_credentials": 0,
        "agent_credentials": 1,
        "otb_device": None,
        "reissued": False,
    }
    assert not AgentCredential.objects.filter(box=agent_box, revoked_at__isnull=True).exists()
    # when a customer admin tries it on the OTB box: refused, and nothing of it happened
    with pytest.raises(Forbidden):
        box_revoke_credentials(actor=Actor.for_user(people.admin), box=box, include_agent=True)
    assert todo(box_client, answer).status_code == 200
    assert TunnelCredential.objects.filter(box=box, revoked_at__isnull=True).count() == 3
    assert not AuditLog.objects.filter(action="otb.device_revoke").exists()
