"""The agent's provisioning endpoints: enrollment, the configuration document with its ETag and
one-query 304, the applied report."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from fleet.core.audit import Actor
from fleet.core.models import AgentCredential, Box
from provisioning.services.configuration import box_set_wan_policy
from tests.conftest import FACTORY_SECRET, WG_KEY, bearer

pytestmark = pytest.mark.django_db


def test_enroll_returns_the_agent_token_once(
    api_client: Any, box_factory: Any, provisioned_region: Any
) -> None:
    box = box_factory()
    response = api_client.post(
        "/api/v1/agent/enroll",
        {
            "serial": box.serial,
            "factory_secret": FACTORY_SECRET,
            "wg_public_key": WG_KEY,
            "agent_version": "1.0",
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["box_id"] == str(box.pk) and body["serial"] == box.serial
    assert body["agent_token"].startswith("otba_")
    assert api_client.get("/api/v1/agent/config", **bearer(body["agent_token"])).status_code == 200


def test_enroll_with_a_wrong_secret_is_401_then_429(api_client: Any, box_factory: Any, settings: Any) -> None:
    settings.OTB = {**settings.OTB, "ENROLL_MAX_FAILURES": 2}
    box = box_factory()
    payload = {"serial": box.serial, "factory_secret": "wrong-secret"}
    for _ in range(2):
        response = api_client.post("/api/v1/agent/enroll", payload, format="json")
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "enroll_failed"
    response = api_client.post(
        "/api/v1/agent/enroll", {"serial": box.serial, "factory_secret": FACTORY_SECRET}, format="json"
    )
    assert response.status_code == 429
    assert int(response["Retry-After"]) > 0
    assert response.json()["error"]["code"] == "rate_limited"
    assert not AgentCredential.objects.exists()


def test_config_etag_and_304_hot_path_is_one_query(
    api_client: Any, people: Any, claimed_box_factory: Any, agent_token_factory: Any
) -> None:
    # given an enrolled, provisioned box
    box = claimed_box_factory(people.org)
    token = agent_token_factory(box)
    # when it fetches its config
    first = api_client.get("/api/v1/agent/config", **bearer(token))
    # then it gets the document with its hash as a strong ETag
    assert first.status_code == 200
    config_hash = first.json()["config_hash"]
    assert first["ETag"] == f'"{config_hash}"'
    assert config_hash == Box.objects.get(pk=box.pk).config_hash
    assert first.json()["server"]
    # and when it polls with that ETag, the answer is an empty 304 after a single query
    with CaptureQueriesContext(connection) as queries:
        again = api_client.get("/api/v1/agent/config", HTTP_IF_NONE_MATCH=f'"{config_hash}"', **bearer(token))
    assert again.status_code == 304
    assert again.content == b""
    assert len(queries) == 1, [query["sql"] for query in queries]


def test_config_changes_after_a_wan_policy_change(
    api_client: Any, people: Any, claimed_box_factory: Any, agent_token_factory: Any
) -> None:
    box = claimed_box_factory(people.org)
    token = agent_token_factory(box)
    old_hash = api_client.get("/api/v1/agent/config", **bearer(token)).json()["config_hash"]
    box_set_wan_policy(
        actor=Actor.for_user(people.owner),
        box=box,
        mode="failover",
        interfaces=[{"name": "wan1", "role": "primary"}],
    )
    response = api_client.get("/api/v1/agent/config", HTTP_IF_NONE_MATCH=f'"{old_hash}"', **bearer(token))
    assert response.status_code == 200
    assert response.json()["config_hash"] != old_hash
    assert response.json()["wan_policy"]["mode"] == "failover"


def test_config_of_a_box_without_hash_is_built_once(
    api_client: Any, box_factory: Any, agent_token_factory: Any
) -> None:
    box = box_factory()
    assert box.config_hash == ""
    token = agent_token_factory(box)
    response = api_client.get("/api/v1/agent/config", **bearer(token))
    assert response.status_code == 200
    assert Box.objects.get(pk=box.pk).config_hash == response.json()["config_hash"]


def test_config_applied_is_recorded(
    api_client: Any, people: Any, claimed_box_factory: Any, agent_token_factory: Any
) -> None:
    box = claimed_box_factory(people.org)
    token = agent_token_factory(box)
    response = api_client.post(
        "/api/v1/agent/config/applied",
        {"config_hash": box.config_hash, "error": None},
        format="json",
        **bearer(token),
    )
    assert response.status_code == 200, response.content
    assert response.json()["drift"] is False
    assert Box.objects.get(pk=box.pk).applied_config_hash == box.config_hash


def test_a_failed_apply_keeps_the_last_good_hash_and_the_box_drifting(
    api_client: Any, client_for: Any, people: Any, claimed_box_factory: Any, agent_token_factory: Any
) -> None:
    # given a box that applied its desired configuration
    box = claimed_box_factory(people.org)
    token = agent_token_factory(box)
    url = "/api/v1/agent/config/applied"
    good = api_client.post(url, {"config_hash": box.config_hash}, format="json", **bearer(token))
    assert good.json()["drift"] is False
    # when it reports that applying the same configuration again failed
    failed = api_client.post(
        url,
        {"config_hash": box.config_hash, "error": "ss-redir: bind failed"},
        format="json",
        **bearer(token),
    )
    # then the last good hash is kept, the box drifts, and the error is shown
    assert failed.status_code == 200, failed.content
    assert failed.json() == {
        "applied_config_hash": box.config_hash,
        "config_hash": box.config_hash,
        "drift": True,
        "apply_error": "ss-redir: bind failed",
    }
    listed = client_for(people.viewer).get("/api/v1/boxes/?drift=true").json()["results"]
    assert [item["serial"] for item in listed] == [box.serial]
    assert listed[0]["apply_error"] == "ss-redir: bind failed"
    # and a later success clears the error and the drift
    again = api_client.post(url, {"config_hash": box.config_hash}, format="json", **bearer(token))
    assert again.json()["drift"] is False and again.json()["apply_error"] == ""
    assert client_for(people.viewer).get("/api/v1/boxes/?drift=true").json()["results"] == []


def test_a_failure_to_apply_a_new_configuration_keeps_the_previous_one(
    api_client: Any, people: Any, claimed_box_factory: Any, agent_token_factory: Any
) -> None:
    # given a box running its configuration, whose desired configuration then changes
    box = claimed_box_factory(people.org)
    token = agent_token_factory(box)
    url = "/api/v1/agent/config/applied"
    api_client.post(url, {"config_hash": box.config_hash}, format="json", **bearer(token))
    previous = box.config_hash
    Box.objects.filter(pk=box.pk).update(config_hash="cd" * 32)
    # when applying the new one fails
    failed = api_client.post(
        url, {"config_hash": "cd" * 32, "error": "no such interface"}, format="json", **bearer(token)
    )
    # then the box still runs (and reports) the previous configuration, drifting
    assert failed.json()["applied_config_hash"] == previous
    assert failed.json()["drift"] is True
    stored = Box.objects.get(pk=box.pk)
    assert stored.applied_config_hash == previous and stored.apply_error == "no such interface"
