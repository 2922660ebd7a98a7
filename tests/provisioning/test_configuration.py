"""A box's configuration inputs (provisioning.services.configuration): the applied report, name and
tags, the WAN policy and the config hash it changes."""

from __future__ import annotations

from typing import Any

import pytest

from fleet.core.audit import Actor
from fleet.core.errors import InvalidInput
from fleet.core.models import AuditLog, Box
from provisioning.selectors.configuration import server_peers_document
from provisioning.services.configuration import box_config_applied, box_set_wan_policy, box_update

pytestmark = pytest.mark.django_db


# -- configuration applied -------------------------------------------------------------------------


def test_config_applied_records_hash_time_and_capped_error(people: Any, claimed_box_factory: Any) -> None:
    box = claimed_box_factory(people.org)
    box_config_applied(box=box, config_hash=box.config_hash)
    box.refresh_from_db()
    assert box.applied_config_hash == box.config_hash and not box.config_drift
    assert box.applied_at is not None
    from fleet.core.models import Event

    assert Event.objects.filter(box_id=box.pk, kind="config_applied").count() == 1
    box_config_applied(box=box, config_hash="ab" * 32, error="é" * 5000)
    box.refresh_from_db()
    assert len(box.apply_error.encode()) <= 4096
    assert box.config_drift
    assert Event.objects.filter(box_id=box.pk, kind="config_failed").count() == 1


def test_config_applied_refuses_a_non_hash(people: Any, box_factory: Any) -> None:
    box = box_factory()
    with pytest.raises(InvalidInput) as exc:
        box_config_applied(box=box, config_hash="not hex!")
    assert exc.value.field == "config_hash"


# -- box settings ----------------------------------------------------------------------------------


def test_box_update_cleans_tags(people: Any, box_factory: Any) -> None:
    box = box_factory(organization=people.org)
    box = box_update(actor=Actor.for_user(people.admin), box=box, name=" Paris office ", tags=["a", "b", "a"])
    assert (box.name, box.tags) == ("Paris office", ["a", "b"])
    with pytest.raises(InvalidInput) as exc:
        box_update(actor=Actor.for_user(people.admin), box=box, tags=["ok", "not ok"])
    assert exc.value.field == "tags[1]"


@pytest.mark.parametrize(
    ("mode", "interfaces", "field"),
    [
        ("turbo", [], "mode"),
        ("aggregate", "eth0", "interfaces"),
        ("aggregate", [{"name": "eth0"}, {"name": "eth1"}, {"name": "eth0"}], "interfaces[2].name"),
        ("aggregate", [{"name": "Eth 0"}], "interfaces[0].name"),
        ("aggregate", [{"name": "eth0", "role": "boss"}], "interfaces[0].role"),
        ("aggregate", [{"name": "eth0", "kind": "carrier-pigeon"}], "interfaces[0].kind"),
        ("aggregate", [{"name": "eth0", "up_kbps": 10_000_001}], "interfaces[0].up_kbps"),
        ("aggregate", [{"name": "eth0", "down_kbps": 0}], "interfaces[0].down_kbps"),
        ("aggregate", [{"name": "eth0", "down_kbps": True}], "interfaces[0].down_kbps"),
        ("aggregate", [{"name": "eth0", "colour": "red"}], "interfaces[0].colour"),
        ("failover", [{"name": "eth0", "role": "backup"}], "interfaces"),
        ("load-balance", [{"name": "eth0", "role": "disabled"}], "interfaces"),
        ("aggregate", [{"name": f"eth{index}"} for index in range(17)], "interfaces"),
    ],
)
def test_wan_policy_validation_names_the_field(
    people: Any, box_factory: Any, mode: str, interfaces: Any, field: str
) -> None:
    box = box_factory(organization=people.org)
    with pytest.raises(InvalidInput) as exc:
        box_set_wan_policy(actor=Actor.for_user(people.admin), box=box, mode=mode, interfaces=interfaces)
    assert exc.value.field == field
    assert Box.objects.get(pk=box.pk).wan_policy == {"mode": "aggregate", "interfaces": []}


def test_box_level_rate_limits_are_validated_stored_and_served_to_the_server(
    people: Any, claimed_box_factory: Any
) -> None:
    # given a claimed box
    box = claimed_box_factory(people.org)
    interfaces = [{"name": "wan1", "down_kbps": 100_000, "up_kbps": 20_000}]
    # when its policy gets a download limit only
    box = box_set_wan_policy(
        actor=Actor.for_user(people.admin),
        box=box,
        mode="aggregate",
        interfaces=interfaces,
        download_kbps=50_000,
    )
    # then the policy keeps it (and no upload key), and the server's peers document carries it
    stored = Box.objects.get(pk=box.pk).wan_policy
    assert stored["download_kbps"] == 50_000 and "upload_kbps" not in stored
    assert box.server is not None
    peers, _ = server_peers_document(server=box.server)
    [peer] = [p for p in peers if p["box_id"] == str(box.pk)]
    assert peer["rate_limit"] == {"download_kbps": 50_000, "upload_kbps": None}
    assert (
        peer["interfaces"][0]["download_kbps"] == 100_000 and peer["interfaces"][0]["upload_kbps"] == 20_000
    )
    # and a policy without them lifts the limit
    box_set_wan_policy(actor=Actor.for_user(people.admin), box=box, mode="aggregate", interfaces=interfaces)
    [peer] = [p for p in server_peers_document(server=box.server)[0] if p["box_id"] == str(box.pk)]
    assert peer["rate_limit"] is None


@pytest.mark.parametrize(
    ("limits", "field"),
    [
        ({"download_kbps": 0}, "download_kbps"),
        ({"download_kbps": "100"}, "download_kbps"),
        ({"upload_kbps": 10_000_001}, "upload_kbps"),
        ({"upload_kbps": False}, "upload_kbps"),
    ],
)
def test_box_level_rate_limits_name_the_field(
    people: Any, box_factory: Any, limits: dict, field: str
) -> None:
    box = box_factory(organization=people.org)
    with pytest.raises(InvalidInput) as exc:
        box_set_wan_policy(
            actor=Actor.for_user(people.admin),
            box=box,
            mode="aggregate",
            interfaces=[{"name": "eth0"}],
            **limits,
        )
    assert exc.value.field == field


def test_wan_policy_change_bumps_the_config_hash_and_is_audited(
    people: Any, claimed_box_factory: Any
) -> None:
    box = claimed_box_factory(people.org)
    before = box.config_hash
    policy: list[dict[str, Any]] = [
        {"name": "wan1", "role": "primary", "kind": "fiber", "down_kbps": 1_000_000, "up_kbps": 500_000},
        {"name": "lte0", "role": "backup", "kind": "lte"},
    ]
    box = box_set_wan_policy(actor=Actor.for_user(people.admin), box=box, mode="failover", interfaces=policy)
    stored = Box.objects.get(pk=box.pk)
    assert stored.wan_policy["mode"] == "failover"
    assert stored.wan_policy["interfaces"][1] == {"name": "lte0", "role": "backup", "kind": "lte"}
    assert stored.config_hash != before
    entry = AuditLog.objects.get(box=box, action="box.set_wan_policy")
    assert entry.before == {"mode": "aggregate", "interfaces": []}
    assert entry.after is not None and entry.after["mode"] == "failover"
