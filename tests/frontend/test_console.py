"""The support console: staff only; health, search, confirmed staff actions, rollouts, audit log."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from fleet.core.audit import Actor
from fleet.core.choices import BoxState, EventKind
from fleet.core.events import EVENT_NOTICE_TASK
from fleet.core.models import AuditLog, Box, Event
from fleet.firmware.choices import RolloutState
from fleet.firmware.models import Rollout
from provisioning.choices import ServerStatus
from provisioning.models import GatewayHealth
from tests.fleet.firmware.firmware_helpers import make_fleet, make_release

pytestmark = pytest.mark.django_db


def logged_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_the_console_is_for_staff_only(people) -> None:
    for user in (people.owner, people.viewer):
        client = logged_in(user)
        for url in ("/console/", "/console/search/?q=x", "/console/rollouts/", "/console/audit/"):
            assert client.get(url).status_code == 403, url
    assert Client().get("/console/").status_code == 302


def test_fleet_health_shows_online_share_servers_and_regions(
    people, claimed_box_factory, provisioned_region
) -> None:
    claimed_box_factory(people.org, "ACME-0001")
    response = logged_in(people.staff).get("/console/")
    assert response.status_code == 200
    content = response.content.decode()
    assert "Online" in content and "Telemetry ingest" in content and "Alerts firing" in content
    assert provisioned_region.server.name in content and "eu-west" in content
    assert "1 / 200" in content  # boxes on the server against its capacity


def test_servers_show_what_their_gateway_last_reported(people, provisioned_region_factory) -> None:
    reporting = provisioned_region_factory("eu-west").server
    silent = provisioned_region_factory(
        "eu-east", public="198.51.100.0/26", tunnel="100.65.0.0/24", ipv6="2001:db8:100::/44"
    ).server
    GatewayHealth.objects.create(
        server=reporting,
        last_report_at=timezone.now(),
        gateway_version="0.1.0",
        uptime_s=60,
        load1=0.75,
        cpu_pct=12.5,
        mem_pct=30.0,
        peers=3,
        converge_errors=1,
        last_error="box x: nftables: it broke",
        upstream_rx_bps=250_000_000,
        upstream_tx_bps=1_500_000,
    )
    content = logged_in(people.staff).get("/console/").content.decode()
    row = content[content.index(reporting.name) :]
    assert "load 0.75" in row and "CPU 12.5 %" in row and "mem 30.0 %" in row
    assert "↓ 250.0 Mbit/s ↑ 1.5 Mbit/s" in row and "3 boxes" in row
    assert "1 error" in row and 'title="box x: nftables: it broke"' in row and "otb-gateway 0.1.0" in row
    assert "no report yet" in content[content.index(silent.name) :]


def test_search_by_serial_mac_public_ip_and_customer(people, claimed_box_factory) -> None:
    box = claimed_box_factory(people.org, "ACME-0042")
    client = logged_in(people.staff)
    public_ip = Box.objects.filter(pk=box.pk).values_list("addresses__prefix", flat=True)
    ipv4 = next(prefix for prefix in public_ip if prefix and prefix.endswith("/32")).split("/")[0]
    for query in ("ACME-0042", box.mac, ipv4, "Acme"):
        content = client.get("/console/search/", {"q": query}).content.decode()
        assert "ACME-0042" in content, query
    # a single match with "go" opens the box straight away
    response = client.get("/console/search/", {"q": "ACME-0042", "go": "1"})
    assert response.status_code == 302 and response["Location"] == f"/console/boxes/{box.pk}/"
    assert b"No box matches" in client.get("/console/search/", {"q": "nothing-like-it"}).content


def test_staff_box_page_has_the_customer_views_and_staff_actions(people, claimed_box_factory) -> None:
    box = claimed_box_factory(people.org, "ACME-0007")
    content = logged_in(people.staff).get(f"/console/boxes/{box.pk}/").content.decode()
    assert "ACME-0007" in content and "Staff actions" in content and "Decommission" in content
    assert 'id="policy-form"' in content


def test_decommission_needs_the_serial_typed_then_is_audited(people, claimed_box_factory) -> None:
    box = claimed_box_factory(people.org, "ACME-0009")
    client = logged_in(people.staff)
    url = f"/console/boxes/{box.pk}/decommission/"
    assert b"cannot be undone" in client.get(url).content
    # when the confirmation does not match, nothing happens and the field says why
    refused = client.post(url, {"confirm_serial": "ACME-0008"})
    assert refused.status_code == 400 and b"ACME-0009, exactly as shown to confirm." in refused.content
    box.refresh_from_db()
    assert box.state == BoxState.CLAIMED
    # when it matches, the box is decommissioned and the action is in the audit log
    done = client.post(url, {"confirm_serial": "ACME-0009"})
    assert done.status_code == 302
    box.refresh_from_db()
    assert box.state == BoxState.DECOMMISSIONED
    entry = AuditLog.objects.get(action="box.decommission", box=box)
    assert entry.actor_label == "staff:staff@example.com"


def test_reassigning_says_the_public_ip_changes_and_the_customer_sees_it(
    people,
    claimed_box_factory,
    provisioned_region_factory,
    queued_event_tasks,
    django_capture_on_commit_callbacks,
) -> None:
    # given a customer's box on a server of eu-west, and a server in another region
    box = claimed_box_factory(people.org, "ACME-0012")
    east = provisioned_region_factory(
        "us-east", public="198.51.100.0/26", tunnel="100.65.0.0/24", ipv6="2001:db8:100::/44"
    )
    client = logged_in(people.staff)
    url = f"/console/boxes/{box.pk}/reassign/"

    # when staff open the confirmation, it says the customer's public IP changes, naming it
    page = client.get(url).content.decode()
    assert 'id="public-ip-change"' in page and "The customer's public IP changes." in page
    assert "203.0.113.1" in page and "Acme" in page and "Reassign and change the public IP" in page

    # and when they confirm, the result says from what to what, and that the customer is notified
    with django_capture_on_commit_callbacks(execute=True):
        done = client.post(url, {"confirm_serial": "ACME-0012", "server": str(east.server.pk)}, follow=True)
    assert done.status_code == 200
    assert (
        "Its public IP changed from 203.0.113.1 to 198.51.100.1; the customer is notified."
        in done.content.decode()
    )
    event = Event.objects.get(box=box, kind=EventKind.PUBLIC_IP_CHANGED)
    assert (EVENT_NOTICE_TASK, (str(event.pk),)) in queued_event_tasks

    # then the customer's box page shows it on the timeline
    timeline = logged_in(people.owner).get(f"/boxes/{box.pk}/").content.decode()
    assert "Public IP changed" in timeline
    assert '203.0.113.1</span> → <span class="mono">198.51.100.1' in timeline


def test_release_addresses_and_revoke_credentials(people, claimed_box_factory) -> None:
    box = claimed_box_factory(people.org, "ACME-0010")
    client = logged_in(people.staff)
    assert (
        client.post(f"/console/boxes/{box.pk}/release/", {"confirm_serial": "ACME-0010"}).status_code == 302
    )
    assert client.post(f"/console/boxes/{box.pk}/revoke/", {"confirm_serial": "ACME-0010"}).status_code == 302
    actions = set(AuditLog.objects.filter(box=box).values_list("action", flat=True))
    assert {"box.release_addresses", "box.revoke_credentials"} <= actions
    assert client.get(f"/console/boxes/{box.pk}/explode/").status_code == 404


def test_staff_actions_are_refused_to_customers(people, claimed_box_factory) -> None:
    box = claimed_box_factory(people.org, "ACME-0011")
    response = logged_in(people.owner).post(
        f"/console/boxes/{box.pk}/decommission/", {"confirm_serial": "ACME-0011"}
    )
    assert response.status_code == 403
    box.refresh_from_db()
    assert box.state == BoxState.CLAIMED


def test_rollout_preview_create_and_pause(people) -> None:
    # given a published release and three boxes on an older version
    release = make_release("2.0.0")
    make_fleet(3, organization=people.org, version="1.0.0")
    client = logged_in(people.staff)
    form = {
        "name": "2.0.0 to Acme",
        "release": str(release.pk),
        "organizations": [str(people.org.pk)],
        "phases": "50, 100",
    }
    # when staff preview it
    preview = client.post("/console/rollouts/new/", {**form, "intent": "preview"}, HTTP_HX_REQUEST="true")
    # then the preview shows the matched and eligible boxes, without creating anything
    assert preview.status_code == 200
    content = preview.content.decode()
    assert 'id="preview-matched">3<' in content and 'id="preview-eligible">3<' in content
    assert not Rollout.objects.exists()
    # when they create and start it, then pause it
    created = client.post("/console/rollouts/new/", {**form, "intent": "create", "start": "1"})
    rollout = Rollout.objects.get()
    assert created.status_code == 302 and created["Location"] == f"/console/rollouts/{rollout.pk}/"
    rollout.refresh_from_db()
    assert rollout.state in {"running", "scheduled"}
    page = client.get(f"/console/rollouts/{rollout.pk}/").content.decode()
    assert "Pause" in page
    assert client.post(f"/console/rollouts/{rollout.pk}/pause/").status_code == 302
    rollout.refresh_from_db()
    assert rollout.state == "paused"
    assert (
        'data-state="paused"'
        in client.get(f"/console/rollouts/{rollout.pk}/", HTTP_HX_REQUEST="true").content.decode()
    )
    assert AuditLog.objects.filter(action__startswith="rollout.").count() >= 2


@pytest.mark.parametrize(
    ("state", "buttons"),
    [
        (RolloutState.DRAFT, {"Start", "Abort"}),
        (RolloutState.SCHEDULED, {"Pause", "Abort"}),  # it starts at start_at: no Start button
        (RolloutState.RUNNING, {"Pause", "Abort"}),
        (RolloutState.PAUSED, {"Resume", "Abort"}),
        (RolloutState.COMPLETED, set()),
        (RolloutState.ABORTED, set()),
    ],
)
def test_the_rollout_page_offers_what_the_state_allows(people, state, buttons) -> None:
    # given a rollout in the state
    rollout = Rollout.objects.create(name="r", release=make_release("4.0.0"), state=state)
    # when staff open it
    content = logged_in(people.staff).get(f"/console/rollouts/{rollout.pk}/").content.decode()
    # then the buttons are the model's next actions, and the badge carries the state
    offered = {name for name in ("Start", "Pause", "Resume", "Abort") if f">{name}</button>" in content}
    assert offered == buttons
    assert f'data-state="{state}"' in content
    assert "Retry failed" not in content  # nothing failed


def test_retry_failed_is_offered_while_upgrades_failed_and_the_state_allows_it(people) -> None:
    from fleet.firmware.choices import UpgradeState
    from fleet.firmware.models import Upgrade

    # given a completed rollout with a failed upgrade
    release = make_release("4.1.0")
    rollout = Rollout.objects.create(name="r", release=release, state=RolloutState.COMPLETED)
    box = make_fleet(1, organization=people.org, version="1.0.0")[0]
    Upgrade.objects.create(
        rollout=rollout, box=box, release=release, state=UpgradeState.FAILED, state_changed_at=timezone.now()
    )
    client = logged_in(people.staff)
    # then the page offers to retry it, and retrying sends the rollout running again
    assert "Retry failed (1)" in client.get(f"/console/rollouts/{rollout.pk}/").content.decode()
    assert client.post(f"/console/rollouts/{rollout.pk}/retry-failed/").status_code == 302
    rollout.refresh_from_db()
    assert rollout.state == RolloutState.RUNNING
    assert Upgrade.objects.get(rollout=rollout).state == UpgradeState.PENDING
    # and an action that is not one is not found
    assert client.post(f"/console/rollouts/{rollout.pk}/explode/").status_code == 404


def test_server_status_badges(people, provisioned_region) -> None:
    provisioned_region.server.status = ServerStatus.DRAINING
    provisioned_region.server.save(update_fields=["status"])
    content = logged_in(people.staff).get("/console/").content.decode()
    assert '<span class="badge warn">Draining (no new boxes)</span>' in content


def test_rollout_form_errors_name_the_field(people) -> None:
    release = make_release("2.1.0")
    response = logged_in(people.staff).post(
        "/console/rollouts/new/",
        {
            "name": "x",
            "release": str(release.pk),
            "phases": "ten",
            "version_min": "3.0",
            "version_max": "2.0",
            "intent": "preview",
        },
    )
    assert response.status_code == 400
    content = response.content.decode()
    # every error at once, each next to its field, in a sentence
    assert re.search(r'id="id_phases-errors"[^>]*><li>Give the phases as whole percentages', content)
    assert re.search(r'id="id_version_max-errors"[^>]*><li>The upper version must be above', content)


def test_audit_log_is_searchable(people, claimed_box_factory) -> None:
    box = claimed_box_factory(people.org, "ACME-0020")
    from provisioning.services.configuration import box_update

    box_update(actor=Actor.for_user(people.owner), box=box, name="Lyon")
    client = logged_in(people.staff)
    content = client.get("/console/audit/", {"serial": "ACME-0020", "action": "box.update"}).content.decode()
    assert "box.update" in content and "user:owner@example.com" in content and "box.claim" not in content
    assert "box.claim" in client.get("/console/audit/", {"q": "ACME-0020"}).content.decode()


def test_bad_console_searches_say_what_is_wrong_instead_of_showing_everything(
    people, claimed_box_factory
) -> None:
    claimed_box_factory(people.org, "ACME-0030")
    client = logged_in(people.staff)
    # a search over 100 characters is said next to the field
    search = client.get("/console/search/", {"q": "x" * 120})
    assert search.status_code == 400
    assert "Search for at most 100 characters (this one has 120)." in search.content.decode()
    # the audit log: a filter too long is said next to it (also in an htmx answer, out of band), and
    # no entry is listed
    audit = client.get("/console/audit/", {"serial": "S" * 65})
    assert audit.status_code == 400
    content = audit.content.decode()
    assert re.search(r'id="id_serial-errors"[^>]*><li>A serial number is at most 64 characters\.', content)
    assert "box.claim" not in content
    rows = client.get(
        "/console/audit/", {"serial": "S" * 65}, HTTP_HX_REQUEST="true", HTTP_HX_TARGET="audit-results"
    )
    assert 'id="id_serial-slot" hx-swap-oob="true"' in rows.content.decode()
    # a page that is not a number: the first page, with a note
    content = client.get("/console/audit/", {"page": "abc"}).content.decode()
    assert "There is no page “abc”" in content and "box.claim" in content
