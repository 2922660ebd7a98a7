"""REST API for releases, rollouts, customers' upgrade controls and the agents' Range image download."""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from fleet.core.models import AuditLog
from fleet.firmware.choices import ReleaseState, RolloutState, UpgradeState
from fleet.firmware.engine import rollouts_tick
from fleet.firmware.models import Release, Rollout, Upgrade
from fleet.firmware.services import rollout_create
from tests.conftest import streamed_body
from tests.fleet.firmware.firmware_helpers import (
    ACTOR,
    PUBLIC_KEY_B64,
    Responder,
    make_fleet,
    make_release,
    set_online,
    sign,
)

pytestmark = pytest.mark.django_db


def inside_default_window() -> dt.datetime:
    """03:00 today in Europe/Paris: inside the default nightly window (02:00-05:00)."""
    paris = ZoneInfo("Europe/Paris")
    return timezone.now().astimezone(paris).replace(hour=3, minute=0, second=0, microsecond=0)


IMAGE = b"OTB firmware image " * 4096


@pytest.fixture
def media(settings: Any, tmp_path: Any) -> Any:
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path)},
        },
    }
    settings.OTB = {**settings.OTB, "FIRMWARE_SIGNING_PUBLIC_KEY": PUBLIC_KEY_B64}
    return tmp_path


@pytest.fixture
def staff_client(people: Any, client_for: Any) -> APIClient:
    return client_for(people.staff)


def uploaded_release(client: APIClient, version: str = "2.0.0", image: bytes = IMAGE) -> dict[str, Any]:
    created = client.post(
        "/api/v1/firmware/releases/",
        {"version": version, "hardware_models": ["OTB-v2c"], "channel": "stable", "notes": "fixes"},
        format="json",
    )
    assert created.status_code == 201, created.content
    release_id = created.json()["id"]
    uploaded = client.post(
        f"/api/v1/firmware/releases/{release_id}/image",
        {"image": SimpleUploadedFile("fw.img", image)},
        format="multipart",
    )
    assert uploaded.status_code == 200, uploaded.content
    return uploaded.json()


def test_staff_upload_sign_and_publish_a_release(media: Any, staff_client: APIClient) -> None:
    # given an uploaded draft release
    body = uploaded_release(staff_client)

    # then size and sha256 come from the bytes
    assert body["size"] == len(IMAGE)
    assert body["sha256"] == hashlib.sha256(IMAGE).hexdigest()
    assert body["state"] == ReleaseState.DRAFT

    # when publishing without a signature
    refused = staff_client.post(f"/api/v1/firmware/releases/{body['id']}/publish")
    # then it is refused naming the field
    assert refused.status_code == 400
    assert "signature" in refused.json()["error"]["fields"]

    # when a wrong signature is set, publishing is refused too (verified against the configured key)
    staff_client.patch(
        f"/api/v1/firmware/releases/{body['id']}/", {"signature": sign(b"other")}, format="json"
    )
    refused = staff_client.post(f"/api/v1/firmware/releases/{body['id']}/publish")
    assert refused.status_code == 400
    assert "does not verify" in refused.json()["error"]["message"]

    # when the right signature is set
    staff_client.patch(f"/api/v1/firmware/releases/{body['id']}/", {"signature": sign(IMAGE)}, format="json")
    published = staff_client.post(f"/api/v1/firmware/releases/{body['id']}/publish")

    # then it is published and audited
    assert published.status_code == 200, published.content
    assert published.json()["state"] == ReleaseState.PUBLISHED
    assert AuditLog.objects.filter(action="release.publish", target_id=body["id"]).exists()
    # and the published image can no longer change
    changed = staff_client.patch(
        f"/api/v1/firmware/releases/{body['id']}/", {"signature": sign(b"x")}, format="json"
    )
    assert changed.status_code == 409


def test_release_input_errors_name_the_field(staff_client: APIClient) -> None:
    bad = staff_client.post(
        "/api/v1/firmware/releases/", {"version": "bad version!", "hardware_models": ["m"]}, format="json"
    )
    assert bad.status_code == 400 and "version" in bad.json()["error"]["fields"]
    bad = staff_client.post(
        "/api/v1/firmware/releases/",
        {"version": "3.0", "hardware_models": ["m"], "sha256": "zz", "external_url": "https://x.example/i"},
        format="json",
    )
    assert bad.status_code == 400 and "sha256" in bad.json()["error"]["fields"]
    assert not Release.objects.filter(version="3.0").exists()


def test_people_who_are_not_staff_cannot_manage_releases(people: Any, client_for: Any) -> None:
    response = client_for(people.owner).get("/api/v1/firmware/releases/")
    assert response.status_code == 403


def test_preview_then_create_start_pause_resume_abort(staff_client: APIClient) -> None:
    # given 20 boxes of the model, 5 of another model, 3 already on the version, 2 opted out
    make_fleet(20)
    make_fleet(5, model="OTB-mini")
    make_fleet(3, version="2.0.0")
    make_fleet(2, auto_upgrade=False)
    release = make_release()
    body = {"release": str(release.pk), "target": {"channels": ["stable"]}, "phases": [50, 100]}

    # when previewing
    preview = staff_client.post("/api/v1/rollouts/preview", body, format="json")

    # then the counts say what would happen, and nothing was written
    assert preview.status_code == 200, preview.content
    data = preview.json()
    assert data["matched"] == 30
    assert data["skipped"] == {"model_unsupported": 5, "already_on_version": 3, "auto_upgrade_off": 2}
    assert data["phase_sizes"] == [10, 10]
    assert data["filters"]["channels"] == 30
    assert not Rollout.objects.exists()

    # when creating and starting it
    created = staff_client.post("/api/v1/rollouts/", {**body, "name": "r1", "soak_s": 0}, format="json")
    assert created.status_code == 201, created.content
    rollout_id = created.json()["id"]
    assert created.json()["total"] == 30 and created.json()["skipped"] == 10
    started = staff_client.post(f"/api/v1/rollouts/{rollout_id}/start")
    assert started.status_code == 200 and started.json()["state"] == RolloutState.RUNNING
    rollouts_tick(now=inside_default_window())

    # then the detail shows progress
    detail = staff_client.get(f"/api/v1/rollouts/{rollout_id}/").json()
    assert detail["progress"]["counts"]["sent"] == 10
    assert detail["progress"]["counts"]["skipped"] == 10
    assert detail["progress"]["current_phase"] == 0

    # when pausing, resuming and aborting
    assert (
        staff_client.post(f"/api/v1/rollouts/{rollout_id}/pause", {"reason": "look"}, format="json").json()[
            "state"
        ]
        == "paused"
    )
    assert staff_client.post(f"/api/v1/rollouts/{rollout_id}/pause").status_code == 200  # idempotent
    assert staff_client.post(f"/api/v1/rollouts/{rollout_id}/resume").json()["state"] == "running"
    aborted = staff_client.post(f"/api/v1/rollouts/{rollout_id}/abort", {"reason": "enough"}, format="json")

    # then waiting and not-started upgrades are cancelled
    assert aborted.json()["state"] == RolloutState.ABORTED
    assert not Upgrade.objects.filter(
        rollout_id=rollout_id, state__in=["pending", "scheduled", "sent"]
    ).exists()
    assert staff_client.post(f"/api/v1/rollouts/{rollout_id}/resume").status_code == 409


def test_a_rollout_says_what_may_be_done_next(staff_client: APIClient) -> None:
    # given a draft rollout
    make_fleet(2)
    release = make_release()
    body = {"release": str(release.pk), "name": "next steps", "phases": [100]}
    created = staff_client.post("/api/v1/rollouts/", body, format="json").json()
    rollout_id = created["id"]
    # then each answer lists the actions its state allows (Rollout.next_actions)
    assert created["actions"] == ["start", "abort"]
    started = staff_client.post(f"/api/v1/rollouts/{rollout_id}/start").json()
    assert started["actions"] == ["pause", "abort", "retry-failed"]
    paused = staff_client.post(f"/api/v1/rollouts/{rollout_id}/pause").json()
    assert paused["actions"] == ["resume", "abort", "retry-failed"] and "retried" not in paused
    retried = staff_client.post(f"/api/v1/rollouts/{rollout_id}/retry-failed").json()
    assert retried["retried"] == 0 and retried["actions"] == paused["actions"]
    assert staff_client.get(f"/api/v1/rollouts/{rollout_id}/").json()["actions"] == paused["actions"]
    assert staff_client.get("/api/v1/rollouts/").json()["results"][0]["actions"] == paused["actions"]
    # and an action the state does not allow is refused, naming the state
    refused = staff_client.post(f"/api/v1/rollouts/{rollout_id}/start")
    assert refused.status_code == 409 and "state" in refused.json()["error"]["fields"]
    assert staff_client.post(f"/api/v1/rollouts/{rollout_id}/abort").json()["actions"] == []


def test_rollout_input_errors_name_the_field(staff_client: APIClient) -> None:
    release = make_release()
    cases: list[tuple[dict[str, Any], str]] = [
        ({"phases": [50, 40, 100]}, "phases"),
        ({"phases": [10, 50]}, "phases"),
        ({"max_failure_pct": 120}, "max_failure_pct"),
        ({"target": {"channels": ["nightly"]}}, "target.channels"),
        ({"target": {"colour": "red"}}, "target.colour"),
        ({"target": {"version_min": "2.0", "version_max": "1.0"}}, "target.version_max"),
        ({"max_in_flight": 0}, "max_in_flight"),
    ]
    for extra, field in cases:
        response = staff_client.post(
            "/api/v1/rollouts/", {"release": str(release.pk), "name": "x", **extra}, format="json"
        )
        assert response.status_code == 400, (extra, response.content)
        assert field in response.json()["error"]["fields"], (extra, response.json())
    assert not Rollout.objects.exists()


def test_rollout_upgrades_list_and_progress_take_fixed_queries(staff_client: APIClient) -> None:
    # given two rollouts of different sizes
    small = rollout_create(actor=ACTOR, release=make_release("2.0.0"), name="small", phases=[100])
    make_fleet(200)
    large = rollout_create(actor=ACTOR, release=make_release("2.1.0"), name="large", phases=[100])

    def queries(url: str) -> int:
        with CaptureQueriesContext(connection) as ctx:
            assert staff_client.get(url).status_code == 200
        return len(ctx.captured_queries)

    # then the detail (with progress) and the upgrades list cost the same whatever the size
    assert queries(f"/api/v1/rollouts/{small.pk}/") == queries(f"/api/v1/rollouts/{large.pk}/")
    assert queries(f"/api/v1/rollouts/{large.pk}/upgrades/?limit=10") == queries(
        f"/api/v1/rollouts/{large.pk}/upgrades/?limit=100"
    )


def test_customer_policy_upgrade_now_and_postpone(people: Any, client_for: Any) -> None:
    # given a customer's box in a scheduled rollout and the box's owner
    boxes = make_fleet(2, organization=people.org)
    release = make_release()
    rollout = rollout_create(actor=ACTOR, release=release, name="r", phases=[100], soak_s=0)
    owner = client_for(people.owner)

    # when the owner sets a window and turns auto-upgrade off
    response = owner.patch(
        f"/api/v1/boxes/{boxes[0].pk}/upgrade-policy",
        {"auto_upgrade": False, "window_days": [5, 6], "window_start": "23:00", "window_end": "04:00"},
        format="json",
    )

    # then it is stored and audited
    assert response.status_code == 200, response.content
    assert response.json()["window_days"] == [5, 6] and response.json()["auto_upgrade"] is False
    assert AuditLog.objects.filter(action="box.upgrade_policy", box=boxes[0]).exists()
    bad = owner.patch(f"/api/v1/boxes/{boxes[0].pk}/upgrade-policy", {"window_days": [9]}, format="json")
    assert bad.status_code == 400

    # when the owner postpones the waiting upgrade of the second box by 3 days, then by 8
    upgrade = Upgrade.objects.get(rollout=rollout, box=boxes[1])
    until = timezone.now() + dt.timedelta(days=3)
    ok = owner.post(f"/api/v1/upgrades/{upgrade.pk}/postpone", {"until": until.isoformat()}, format="json")
    too_far = owner.post(
        f"/api/v1/upgrades/{upgrade.pk}/postpone",
        {"until": (timezone.now() + dt.timedelta(days=8)).isoformat()},
        format="json",
    )
    assert ok.status_code == 200, ok.content
    assert too_far.status_code == 400 and "until" in too_far.json()["error"]["fields"]

    # and someone of another organisation cannot see it
    assert (
        client_for(people.outsider)
        .post(f"/api/v1/upgrades/{upgrade.pk}/postpone", {"until": until.isoformat()}, format="json")
        .status_code
        == 404
    )

    # when the rollout runs, the postponed box is not sent
    from fleet.firmware.services import rollout_start

    rollout_start(actor=ACTOR, rollout=rollout)
    rollouts_tick()
    upgrade.refresh_from_db()
    assert upgrade.state == UpgradeState.PENDING

    # when the owner asks for it now
    now = owner.post(f"/api/v1/boxes/{boxes[1].pk}/upgrade-now", {}, format="json")

    # then it is sent at once, whatever the window or the postponement
    assert now.status_code == 202, now.content
    rollouts_tick()
    upgrade.refresh_from_db()
    assert upgrade.state == UpgradeState.SENT and upgrade.forced
    # a viewer may not
    assert client_for(people.viewer).post(f"/api/v1/boxes/{boxes[1].pk}/upgrade-now").status_code == 403


def test_standalone_upgrade_now_without_rollout(people: Any, client_for: Any) -> None:
    # given a box with no rollout and a newer published release
    box = make_fleet(1, organization=people.org)[0]
    make_release("2.0.0")
    make_release("2.1.0")

    # when the owner asks for an upgrade now
    response = client_for(people.owner).post(f"/api/v1/boxes/{box.pk}/upgrade-now", {}, format="json")

    # then the newest release is sent at once, and the box's history lists it
    assert response.status_code == 202, response.content
    assert response.json()["version"] == "2.1.0" and response.json()["state"] == UpgradeState.SENT
    responder = Responder()
    responder.respond()
    rollouts_tick()  # back on the new version: health counts from its next telemetry
    responder.telemetry()
    rollouts_tick()
    history = client_for(people.owner).get(f"/api/v1/boxes/{box.pk}/upgrades/").json()["results"]
    assert history[0]["state"] == UpgradeState.SUCCEEDED
    # and asking again says it is up to date
    box.refresh_from_db()
    again = client_for(people.owner).post(f"/api/v1/boxes/{box.pk}/upgrade-now", {}, format="json")
    assert again.status_code == 409


def test_agent_downloads_the_image_with_range(
    media: Any, staff_client: APIClient, agent_token_factory: Any
) -> None:
    # given a published uploaded release and a box of its model
    body = uploaded_release(staff_client)
    staff_client.patch(f"/api/v1/firmware/releases/{body['id']}/", {"signature": sign(IMAGE)}, format="json")
    staff_client.post(f"/api/v1/firmware/releases/{body['id']}/publish")
    box = make_fleet(1)[0]
    agent = APIClient()
    agent.credentials(HTTP_AUTHORIZATION=f"Bearer {agent_token_factory(box)}")
    url = f"/api/v1/agent/firmware/{body['id']}/image"

    # when the agent fetches it whole, then from an offset, then a suffix, then out of range
    whole = agent.get(url)
    part = agent.get(url, HTTP_RANGE="bytes=1000-")
    suffix = agent.get(url, HTTP_RANGE="bytes=-10")
    beyond = agent.get(url, HTTP_RANGE=f"bytes={len(IMAGE)}-")

    # then
    assert whole.status_code == 200 and streamed_body(whole) == IMAGE
    assert whole["Accept-Ranges"] == "bytes"
    assert part.status_code == 206
    assert part["Content-Range"] == f"bytes 1000-{len(IMAGE) - 1}/{len(IMAGE)}"
    assert streamed_body(part) == IMAGE[1000:]
    assert streamed_body(suffix) == IMAGE[-10:]
    assert beyond.status_code == 416 and beyond["Content-Range"] == f"bytes */{len(IMAGE)}"

    # a person's session is not an agent; a box of another model does not get it; withdrawn is gone
    assert staff_client.get(url).status_code == 403
    other = make_fleet(1, model="OTB-mini")[0]
    other_agent = APIClient()
    other_agent.credentials(HTTP_AUTHORIZATION=f"Bearer {agent_token_factory(other)}")
    assert other_agent.get(url).status_code == 404
    staff_client.post(f"/api/v1/firmware/releases/{body['id']}/withdraw", {"reason": "bad"}, format="json")
    assert agent.get(url).status_code == 404


def test_withdrawing_a_release_stops_its_rollouts(staff_client: APIClient) -> None:
    # given a running rollout with boxes waiting
    boxes = make_fleet(10)
    set_online([b.pk for b in boxes[:5]], online=False)
    release = make_release()
    rollout = rollout_create(actor=ACTOR, release=release, name="r", phases=[100], force=True)
    staff_client.post(f"/api/v1/rollouts/{rollout.pk}/start")
    rollouts_tick()

    # when the release is withdrawn
    response = staff_client.post(
        f"/api/v1/firmware/releases/{release.pk}/withdraw", {"reason": "bricks"}, format="json"
    )

    # then the rollout is aborted and nothing waits any more
    assert response.status_code == 200
    rollout.refresh_from_db()
    assert rollout.state == RolloutState.ABORTED and "withdrawn" in rollout.pause_reason
    assert rollout.upgrades.filter(state=UpgradeState.CANCELLED).count() == 10
