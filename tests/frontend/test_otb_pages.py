"""Stock OverTheBox boxes in the portal and the console: the protocol ("OverTheBox firmware x.y.z"),
the device's binding state (pending, linked, active), the pending devices staff see, and the claim
staff make for a customer."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from fleet.core.audit import Actor
from fleet.core.models import AuditLog, Box
from otbcompat.binding import device_claim
from otbcompat.models import OtbDevice
from otbcompat.services import device_revoke
from tests.frontend.test_portal import logged_in
from tests.otbcompat.test_identity import otb_call, subscribe

pytestmark = pytest.mark.django_db

MAC = "00:0d:b9:4a:51:01"


def claimed_otb_box(people: Any) -> tuple[Client, dict[str, Any], Box]:
    box_client = Client()
    answer = subscribe(box_client, mac=MAC)
    box = device_claim(
        actor=Actor.for_user(people.admin), organization=people.org, device_id=answer["device_id"]
    ).box
    Box.objects.filter(pk=box.pk).update(firmware_version="1.1.3")
    return box_client, answer, Box.objects.get(pk=box.pk)


def test_an_otb_box_page_shows_its_protocol_and_binding_state(people, provisioned_region) -> None:
    box_client, answer, box = claimed_otb_box(people)
    client = logged_in(people.viewer)
    # linked: the box has not confirmed its service yet
    page = client.get(f"/boxes/{box.pk}/")
    assert page.status_code == 200
    content = page.content.decode()
    assert "OverTheBox firmware 1.1.3" in content
    assert "Linked: waiting for the box to confirm its service" in content and answer["device_id"] in content
    # everything else the box page shows is there for it too
    for section in ("overview-title", "live-title", "history-title", "policy-title", "network-title",
                    "firmware-title", "events-title", "commands-title", "backups-title"):  # fmt: skip
        assert f'id="{section}"' in content, section
    # once the box confirms, it is active (the status fragment says so too)
    service = f"overthebox.{box.pk}"
    otb_call(
        box_client, "POST", f"devices/{answer['device_id']}/service/{service}/confirm", jwt=answer["jwt"]
    )
    fragment = client.get(f"/boxes/{box.pk}/status/")
    assert fragment.status_code == 200 and ">Active<" in fragment.content.decode()
    # the fleet list says which boxes run the OverTheBox firmware
    assert "OverTheBox 1.1.3" in client.get("/boxes/").content.decode()
    # and the console shows the same page to staff
    assert (
        "OverTheBox firmware 1.1.3"
        in logged_in(people.staff).get(f"/console/boxes/{box.pk}/").content.decode()
    )


def test_an_agent_box_page_names_its_agent(people, claimed_box_factory) -> None:
    box = claimed_box_factory(people.org)
    Box.objects.filter(pk=box.pk).update(agent_version="0.9.2")
    content = logged_in(people.viewer).get(f"/boxes/{box.pk}/").content.decode()
    assert "otb-agent 0.9.2" in content and "OverTheBox device" not in content


def test_staff_see_pending_devices_and_claim_one_for_a_customer(people, provisioned_region) -> None:
    pending = subscribe(Client(), mac=MAC)
    revoked = subscribe(Client(), mac="00:0d:b9:4a:51:02")
    device_revoke(OtbDevice.objects.get(id=revoked["device_id"]))
    staff = logged_in(people.staff)
    page = staff.get("/console/otb-devices/")
    assert page.status_code == 200
    content = page.content.decode()
    assert pending["device_id"] in content and revoked["device_id"] not in content
    assert 'aria-current="page">OverTheBox devices' in content
    # searched by MAC, in any state
    found = staff.get("/console/otb-devices/", {"q": "4a:51:02", "state": "all"}).content.decode()
    assert revoked["device_id"] in found and pending["device_id"] not in found
    # when staff claim the pending one for the customer
    response = staff.post(
        "/console/otb-devices/", {"device_id": pending["device_id"], "organization": str(people.org.pk)}
    )
    # then the box is claimed and linked, audited as the staff member, and staff land on the box
    device = OtbDevice.objects.select_related("box").get(id=pending["device_id"])
    assert device.box is not None and device.box.organization_id == people.org.pk
    assert response.status_code == 302 and response["Location"] == f"/console/boxes/{device.box.pk}/"
    assert AuditLog.objects.filter(
        action="otb.device_link", box=device.box, actor_label__startswith="staff:"
    ).exists()
    # it is no longer pending
    assert f'data-device="{pending["device_id"]}"' not in staff.get("/console/otb-devices/").content.decode()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"device_id": "00000000-0000-0000-0000-000000000000", "organization": "ORG"}, "device_id"),
        ({"device_id": "", "organization": "ORG"}, "device_id"),
        ({"device_id": "DEVICE", "organization": ""}, "organization"),
        ({"device_id": "DEVICE", "organization": "not-an-org"}, "organization"),
    ],
)
def test_a_staff_claim_with_bad_input_names_the_field(body, field, people, provisioned_region) -> None:
    pending = subscribe(Client(), mac=MAC)
    data = {
        key: value.replace("ORG", str(people.org.pk)).replace("DEVICE", pending["device_id"])
        for key, value in body.items()
    }
    response = logged_in(people.staff).post("/console/otb-devices/", data)
    assert response.status_code == 400
    assert f'id="id_{field}-errors"' in response.content.decode()
    assert OtbDevice.objects.get(id=pending["device_id"]).box_id is None


def test_only_staff_see_the_devices(people) -> None:
    subscribe(Client(), mac=MAC)
    assert logged_in(people.owner).get("/console/otb-devices/").status_code == 403
    assert logged_in(people.owner).post("/console/otb-devices/", {}).status_code == 403
    assert logged_in(people.staff).get("/console/otb-devices/", {"q": "x" * 101}).status_code == 400


def test_a_device_of_an_unclaimed_box_shows_as_pending_in_the_console(people, provisioned_region) -> None:
    from provisioning.services.lifecycle import box_unclaim

    _, answer, box = claimed_otb_box(people)
    box_unclaim(actor=Actor.for_user(people.admin), box=box)
    content = logged_in(people.staff).get("/console/otb-devices/").content.decode()
    assert f'data-device="{answer["device_id"]}"' in content
