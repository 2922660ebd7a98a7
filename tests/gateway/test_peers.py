"""The peers document: fetched with If-None-Match, validated strictly, bad rows named and left out."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from otb_agent.httpapi import HttpError
from otb_gateway.peers import PeersError, fetch_peers, keep_previous, parse_peers

from tests.gateway.fakepeers import make_handler
from tests.gateway.peerdata import box_id, document, key, peer


@pytest.fixture
def fake_backend(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    (tmp_path / "token").write_text("otbs_good\n")
    (tmp_path / "peers.json").write_text(json.dumps([peer(0), peer(1)]))
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", tmp_path
    server.shutdown()
    server.server_close()


def test_fetch_sends_the_etag_and_gets_304_until_the_list_changes(fake_backend: tuple[str, Path]) -> None:
    url, directory = fake_backend
    status, body, etag = fetch_peers(url, "otbs_good", None)
    assert status == 200 and etag and body is not None and len(body["peers"]) == 2

    assert fetch_peers(url, "otbs_good", etag) == (304, None, etag)

    (directory / "peers.json").write_text(json.dumps([peer(0)]))
    status, body, new_etag = fetch_peers(url, "otbs_good", etag)
    assert status == 200 and new_etag != etag and body is not None and len(body["peers"]) == 1
    assert (directory / "requests.log").read_text().splitlines() == ["GET ", f'GET "{etag}"', f'GET "{etag}"']


def test_fetch_with_a_wrong_token_raises_the_http_error(fake_backend: tuple[str, Path]) -> None:
    url, _ = fake_backend
    with pytest.raises(HttpError) as caught:
        fetch_peers(url, "otbs_wrong", None)
    assert caught.value.status == 401 and caught.value.code == "not_authenticated"


def test_a_valid_document_gives_every_value() -> None:
    parsed = parse_peers(document(peer(0, rate_limit={"download_kbps": 8000, "upload_kbps": None})))
    assert parsed.problems == ()
    (p,) = parsed.peers
    assert p.box_id == box_id(0) and p.serial == "BOX-0000" and p.tunnel_port == 51820
    assert p.wg_public_key == key("box-0") and p.wg_preshared_key == key("psk-0")
    assert p.tunnel is not None and (p.tunnel.server_address, p.tunnel.box_address) == (
        "100.64.0.0",
        "100.64.0.1",
    )
    assert (
        p.tunnel.prefix_length == 31 and p.public_ipv4 == "203.0.113.10" and p.ipv6_prefix == "2001:db8::/56"
    )
    assert p.shadowsocks is not None and p.shadowsocks.password == "secret-0"
    assert p.rate_limit is not None and (p.rate_limit.download_kbps, p.rate_limit.upload_kbps) == (8000, None)


def test_optional_values_may_be_null_or_absent() -> None:
    entry = peer(
        0,
        wg_public_key="",
        wg_preshared_key=None,
        public_ipv4=None,
        tunnel=None,
        ipv6_prefix=None,
        shadowsocks=None,
    )
    del entry["rate_limit"]  # a backend that does not send it yet
    parsed = parse_peers(document(entry))
    assert parsed.problems == ()
    (p,) = parsed.peers
    assert (p.wg_public_key, p.wg_preshared_key, p.public_ipv4, p.tunnel, p.ipv6_prefix) == (
        "",
        None,
        None,
        None,
        None,
    )
    assert p.shadowsocks is None and p.rate_limit is None


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"box_id": "not-a-uuid"}, "box_id"),
        ({"serial": "has space"}, "serial"),
        ({"tunnel_port": 0}, "tunnel_port"),
        ({"tunnel_port": "51820"}, "tunnel_port"),
        ({"tunnel_port": True}, "tunnel_port"),
        ({"wg_public_key": "short"}, "wg_public_key"),
        ({"wg_preshared_key": "x" * 43 + "="}, "wg_preshared_key"),
        ({"public_ipv4": "2001:db8::1"}, "public_ipv4"),
        ({"public_ipv4": "203.0.113.300"}, "public_ipv4"),
        ({"tunnel": "100.64.0.0/31"}, "tunnel"),
        (
            {
                "tunnel": {
                    "box_address": "100.64.0.1",
                    "server_address": "100.64.0.0",
                    "prefix": "100.64.0.1/31",
                }
            },
            "tunnel.prefix",
        ),
        (
            {
                "tunnel": {
                    "box_address": "100.64.0.9",
                    "server_address": "100.64.0.0",
                    "prefix": "100.64.0.0/31",
                }
            },
            "tunnel.box_address",
        ),
        (
            {
                "tunnel": {
                    "box_address": "100.64.0.1",
                    "server_address": "100.64.0.1",
                    "prefix": "100.64.0.0/31",
                }
            },
            "tunnel.box_address",
        ),
        ({"tunnel": {"box_address": "100.64.0.1", "prefix": "100.64.0.0/31"}}, "tunnel.server_address"),
        ({"ipv6_prefix": "2001:db8::1/56"}, "ipv6_prefix"),
        ({"ipv6_prefix": "2001:db8::/120"}, "ipv6_prefix"),
        ({"shadowsocks": {"password": "", "method": "aes-256-gcm"}}, "shadowsocks.password"),
        ({"shadowsocks": {"password": "a\nb", "method": "aes-256-gcm"}}, "shadowsocks.password"),
        ({"shadowsocks": {"password": "pw", "method": "rc4-md5"}}, "shadowsocks.method"),
        ({"rate_limit": {"download_kbps": 0, "upload_kbps": None}}, "rate_limit.download_kbps"),
        ({"rate_limit": {"download_kbps": None, "upload_kbps": 1.5}}, "rate_limit.upload_kbps"),
        ({"rate_limit": [1000, 1000]}, "rate_limit"),
    ],
)
def test_a_wrong_value_leaves_that_peer_out_naming_the_field(change: dict[str, Any], field: str) -> None:
    parsed = parse_peers(document(peer(0), peer(1, **change)))

    assert [p.box_id for p in parsed.peers] == [box_id(0)]
    (problem,) = parsed.problems
    assert (problem.index, problem.field) == (1, field)
    assert str(problem).startswith(f"peers[1].{field}")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"box_id": box_id(0)}, "box_id"),
        ({"tunnel_port": 51820}, "tunnel_port"),
        ({"wg_public_key": key("box-0")}, "wg_public_key"),
        ({"public_ipv4": "203.0.113.10"}, "public_ipv4"),
        (
            {
                "tunnel": {
                    "box_address": "100.64.0.1",
                    "server_address": "100.64.0.0",
                    "prefix": "100.64.0.0/31",
                }
            },
            "tunnel.prefix",
        ),
        ({"ipv6_prefix": "2001:db8::/48"}, "ipv6_prefix"),
    ],
)
def test_a_peer_holding_what_an_earlier_peer_holds_is_left_out(change: dict[str, Any], field: str) -> None:
    parsed = parse_peers(document(peer(0), peer(1, **change)))
    assert [p.box_id for p in parsed.peers] == [box_id(0)]
    assert [(p.index, p.field) for p in parsed.problems] == [(1, field)]


def test_a_box_on_the_gateways_own_wireguard_port_is_refused() -> None:
    parsed = parse_peers(document(peer(0, tunnel_port=51819)), wg_port=51819)
    assert parsed.peers == () and parsed.problems[0].field == "tunnel_port"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([], "body"),
        ({"peers": {}}, "peers"),
        ({"server": "a", "count": 3, "peers": []}, "count"),
        ({"server": 7, "peers": []}, "server"),
    ],
)
def test_an_unusable_document_is_refused_as_a_whole(body: Any, field: str) -> None:
    with pytest.raises(PeersError) as caught:
        parse_peers(body)
    assert caught.value.field == field


def test_a_bad_row_keeps_its_box_as_it_was_and_a_new_bad_row_adds_nothing() -> None:
    # given the gateway holding boxes 0 and 1
    before = parse_peers(document(peer(0), peer(1))).peers
    # when box 1 comes with a broken key, and an unknown box 5 with a broken port
    parsed = parse_peers(document(peer(0), peer(1, wg_public_key="broken"), peer(5, tunnel_port=-1)))
    kept = keep_previous(parsed, before)
    # then box 1 keeps its previous values and box 5 is not configured
    assert [p.box_id for p in kept] == [box_id(0), box_id(1)]
    assert kept[1] == before[1]
    assert [problem.box_id for problem in parsed.problems] == [box_id(1), box_id(5)]
