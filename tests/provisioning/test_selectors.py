"""The box configuration document and its hash; the peers document; capacity summary."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.conf import settings
from django.test import override_settings

from fleet.core.audit import Actor
from fleet.core.models import Box, Organization
from provisioning.selectors.configuration import box_config_document, canonical_hash, server_peers_document
from provisioning.selectors.infrastructure import server_capacity_summary
from provisioning.services.configuration import box_config_refresh
from provisioning.services.infrastructure import server_update
from provisioning.services.lifecycle import box_claim, box_reassign_server
from tests.provisioning.conftest import CLAIM_CODE

pytestmark = pytest.mark.django_db


def _claimed(actor: Actor, org: Organization, make_box: Callable[..., Box], **fields: Any) -> Box:
    box = make_box(**fields)
    box_claim(actor=actor, organization=org, serial=box.serial, claim_code=CLAIM_CODE)
    return Box.objects.get(pk=box.pk)


def test_config_document_shape(actor, org, provisioned, make_box):
    # given a claimed box with a known WireGuard public key
    box = _claimed(actor, org, make_box, wg_public_key="box-wg-public-key", name="Office")
    server = provisioned["server"]

    # when its document is built
    document = box_config_document(box=box)

    # then it carries everything the agent needs, and the hash covers the rest of it
    assert document["box"] == {"id": str(box.pk), "serial": box.serial, "name": "Office"}
    assert document["server"] == {
        "name": server.name,
        "host": server.hostname,
        "public_ipv4": server.public_ipv4,
        "port": box.tunnel_port,
        "protocol": "wireguard",
        "wg_public_key": server.wg_public_key,
    }
    assert document["public_ipv4"] == "203.0.113.1"  # the first host address of the pool
    assert document["tunnel"] == {
        "box_address": "100.64.0.1",
        "server_address": "100.64.0.0",
        "prefix": "100.64.0.0/31",
    }
    assert document["ipv6_prefix"] == "2001:db8::/56"
    assert document["credentials"]["wireguard"]["box_public_key"] == "box-wg-public-key"
    assert document["credentials"]["shadowsocks"]["method"] == "chacha20-ietf-poly1305"
    assert document["wan_policy"] == box.wan_policy
    assert document["telemetry_interval_s"] == settings.OTB["TELEMETRY_INTERVAL_S"]
    rest = {key: value for key, value in document.items() if key != "config_hash"}
    assert document["config_hash"] == canonical_hash(rest) == box.config_hash


def test_unprovisioned_box_document_has_nulls(make_box):
    document = box_config_document(box=make_box())
    assert document["server"] is None and document["public_ipv4"] is None and document["tunnel"] is None
    assert document["credentials"] == {"wireguard": None, "glorytun": None, "shadowsocks": None}


def test_same_inputs_same_hash_and_each_input_changes_it(
    actor, org, provisioned, region, make_server, make_box
):
    # given a claimed box
    box = _claimed(actor, org, make_box)
    first = box_config_document(box=box)["config_hash"]

    # then rebuilding gives the same hash
    assert box_config_document(box=Box.objects.get(pk=box.pk))["config_hash"] == first

    # and a WAN policy change moves it
    Box.objects.filter(pk=box.pk).update(wan_policy={"mode": "failover", "interfaces": [{"name": "wan0"}]})
    after_policy = box_config_refresh(box=Box.objects.get(pk=box.pk))
    assert after_policy != first and Box.objects.get(pk=box.pk).config_hash == after_policy

    # and a server change moves it
    server_update(actor=actor, server=provisioned["server"], wg_public_key="rotated-server-key")
    after_server = Box.objects.get(pk=box.pk).config_hash
    assert after_server not in {first, after_policy}

    # and new addresses move it
    other, _ = make_server(region, capacity=5)
    box_reassign_server(actor=actor, box=box, server=other)
    after_move = Box.objects.get(pk=box.pk).config_hash
    assert after_move not in {first, after_policy, after_server}

    # and a settings input (telemetry interval) moves it too
    with override_settings(OTB={**settings.OTB, "TELEMETRY_INTERVAL_S": 99}):
        assert box_config_document(box=Box.objects.get(pk=box.pk))["config_hash"] != after_move


def test_config_document_is_a_few_queries(actor, org, provisioned, make_box, django_assert_max_num_queries):
    box = _claimed(actor, org, make_box)
    fresh = Box.objects.get(pk=box.pk)
    with django_assert_max_num_queries(3):
        box_config_document(box=fresh)


@pytest.mark.parametrize("count", [1, 20])
def test_peers_document_is_constant_queries(
    actor, org, provisioned, make_box, django_assert_num_queries, count
):
    # given `count` boxes on the server, each with bandwidth figures in its WAN policy (as
    # wan_policy_validate stores them: down_kbps/up_kbps per link, download_kbps/upload_kbps per box)
    policy = {
        "mode": "aggregate",
        "interfaces": [
            {"name": "wan0", "role": "primary", "kind": "fiber", "down_kbps": 100000, "up_kbps": 20000}
        ],
        "download_kbps": 50000,
        "upload_kbps": 10000,
    }
    for _ in range(count):
        _claimed(actor, org, make_box, wan_policy=policy, wg_public_key="k")

    # when the peers document is built, then it takes the same three queries
    with django_assert_num_queries(3):
        peers, etag = server_peers_document(server=provisioned["server"])

    assert len(peers) == count and len(etag) == 64
    assert len({peer["public_ipv4"] for peer in peers}) == count
    assert peers[0]["wan_mode"] == "aggregate"
    assert peers[0]["interfaces"] == [
        {"name": "wan0", "role": "primary", "download_kbps": 100000, "upload_kbps": 20000}
    ]
    assert peers[0]["rate_limit"] == {"download_kbps": 50000, "upload_kbps": 10000}
    assert [p["tunnel_port"] for p in peers] == sorted(p["tunnel_port"] for p in peers)
    assert server_peers_document(server=provisioned["server"])[1] == etag


def test_capacity_summary(actor, org, provisioned, make_box):
    _claimed(actor, org, make_box)
    [row] = server_capacity_summary()
    assert row["capacity"] == 100 and row["assigned"] == 1 and row["spare"] == 99
    assert row["region"] == "eu-west" and row["status"] == "active"


def test_peers_document_has_no_rate_limit_for_a_box_without_one(actor, org, provisioned, make_box):
    _claimed(actor, org, make_box, wan_policy={"mode": "aggregate", "interfaces": [{"name": "wan0"}]})
    [peer] = server_peers_document(server=provisioned["server"])[0]
    assert peer["rate_limit"] is None
    assert peer["interfaces"] == [
        {"name": "wan0", "role": "primary", "download_kbps": None, "upload_kbps": None}
    ]
