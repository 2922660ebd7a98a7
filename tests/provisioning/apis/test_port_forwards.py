"""Port forwards: validation naming the field, who may set them, the audit record, and the agent's
configuration document carrying them with a new hash."""

from __future__ import annotations

from typing import Any

import pytest

from fleet.core.errors import InvalidInput
from fleet.core.models import AuditLog, Box
from provisioning.port_forwards import PORT_FORWARDS_MAX, port_forwards_validate
from provisioning.selectors.configuration import box_config_document

pytestmark = pytest.mark.django_db

WEB = {"proto": "tcp", "port": 8080, "to_address": "192.168.50.10", "to_port": 80}


@pytest.mark.parametrize(
    ("forwards", "field"),
    [
        ({}, "port_forwards"),
        (["x"], "port_forwards[0]"),
        ([{**WEB, "proto": "icmp"}], "port_forwards[0].proto"),
        ([{**WEB, "port": 0}], "port_forwards[0].port"),
        ([{**WEB, "port": True}], "port_forwards[0].port"),
        ([{**WEB, "port": "80"}], "port_forwards[0].port"),
        ([{**WEB, "to_port": 70000}], "port_forwards[0].to_port"),
        ([{**WEB, "to_address": "8.8.8.8"}], "port_forwards[0].to_address"),
        ([{**WEB, "to_address": "192.168.1.300"}], "port_forwards[0].to_address"),
        ([{**WEB, "to_address": None}], "port_forwards[0].to_address"),
        ([{**WEB, "extra": 1}], "port_forwards[0].extra"),
        ([{**WEB, "description": "a\x00b"}], "port_forwards[0].description"),
        ([WEB, {**WEB, "to_port": 81}], "port_forwards[1].port"),
        ([{**WEB, "port": n} for n in range(1, PORT_FORWARDS_MAX + 2)], "port_forwards"),
    ],
)
def test_bad_forwards_are_refused_naming_the_field(forwards: Any, field: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        port_forwards_validate(forwards)
    assert refused.value.field == field


def test_forwards_are_normalised_and_sorted() -> None:
    cleaned = port_forwards_validate(
        [{"port": 53, "proto": "udp", "to_address": "10.0.0.2"}, {"port": 22, "to_address": "172.16.1.1"}]
    )
    assert cleaned == [
        {"proto": "tcp", "port": 22, "to_address": "172.16.1.1", "to_port": 22},
        {"proto": "udp", "port": 53, "to_address": "10.0.0.2", "to_port": 53},
    ]
    # the same port on the two protocols is two forwards
    assert len(port_forwards_validate([{**WEB, "proto": "udp"}, WEB])) == 2


def test_admin_sets_forwards_the_config_carries_them(
    client_for: Any, people: Any, claimed_box_factory: Any
) -> None:
    box = claimed_box_factory(people.org)
    url = f"/api/v1/boxes/{box.pk}/port-forwards"
    before = box_config_document(box=Box.objects.get(pk=box.pk))
    assert before["port_forwards"] == []

    response = client_for(people.admin).put(url, {"port_forwards": [WEB]}, format="json")
    assert response.status_code == 200, response.content
    assert response.json() == {"port_forwards": [WEB]}
    assert client_for(people.viewer).get(url).json() == {"port_forwards": [WEB]}

    stored = Box.objects.get(pk=box.pk)
    document = box_config_document(box=stored)
    assert document["port_forwards"] == [WEB]
    assert stored.config_hash == document["config_hash"] != before["config_hash"]
    entry = AuditLog.objects.get(action="box.set_port_forwards")
    assert entry.before == {"port_forwards": []} and entry.after == {"port_forwards": [WEB]}

    # the same list again changes nothing and records nothing
    client_for(people.admin).put(url, {"port_forwards": [WEB]}, format="json")
    assert AuditLog.objects.filter(action="box.set_port_forwards").count() == 1


def test_viewers_and_other_organisations_cannot_set_forwards(
    client_for: Any, people: Any, claimed_box_factory: Any
) -> None:
    box = claimed_box_factory(people.org)
    url = f"/api/v1/boxes/{box.pk}/port-forwards"
    assert client_for(people.viewer).put(url, {"port_forwards": [WEB]}, format="json").status_code == 403
    assert client_for(people.outsider).put(url, {"port_forwards": [WEB]}, format="json").status_code == 404
    assert client_for(people.outsider).get(url).status_code == 404
    assert Box.objects.get(pk=box.pk).port_forwards == []


def test_bad_body_answers_400_naming_the_field(
    client_for: Any, people: Any, claimed_box_factory: Any
) -> None:
    box = claimed_box_factory(people.org)
    url = f"/api/v1/boxes/{box.pk}/port-forwards"
    response = client_for(people.admin).put(
        url, {"port_forwards": [{**WEB, "to_address": "1.1.1.1"}]}, format="json"
    )
    assert response.status_code == 400
    assert "port_forwards[0].to_address" in response.json()["error"]["fields"]
    assert Box.objects.get(pk=box.pk).port_forwards == []


def test_stale_stored_hash_heals_on_the_agents_fetch(
    api_client: Any, people: Any, claimed_box_factory: Any, agent_token_factory: Any
) -> None:
    box = claimed_box_factory(people.org)
    token = agent_token_factory(box)
    Box.objects.filter(pk=box.pk).update(config_hash="0" * 64)
    response = api_client.get("/api/v1/agent/config", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 200
    assert Box.objects.get(pk=box.pk).config_hash == response.json()["config_hash"]
