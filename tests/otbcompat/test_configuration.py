"""``GET /1.0/devices/{id}/config``: the document built from our provisioning of the box, its errors
before a link or a confirmation, the record that the box applies it, and the ``uci batch`` rule: the
box pastes every value unquoted into ``uci batch`` (research section 5.6), so every value we generate
must come out of a ``uci batch`` parser exactly as it went in."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from typing import Any

import pytest
from django.test import Client

from fleet.core.audit import Actor
from fleet.core.models import Box
from otbcompat.binding import device_claim
from otbcompat.configuration import OtbConfigUnavailable, _uci_checked
from provisioning.choices import TunnelKind
from provisioning.models import TunnelCredential
from provisioning.secrets import (
    UCI_SAFE,
    password_generate,
    secret_decrypt,
    secret_encrypt,
    symmetric_key_generate,
    wireguard_key_generate,
)
from tests.otbcompat.test_identity import otb_call, subscribe

pytestmark = pytest.mark.django_db

MAC = "00:0d:b9:4a:41:01"


# --- a small `uci batch` line parser, as uci reads what the box's heredoc gives it ----------------


def uci_batch_parse(text: str) -> dict[str, str]:
    """``set a.b.c=value`` lines → {"a.b.c": value}, read the way ``uci batch`` reads a line: words
    split on whitespace, ``#`` and ``;`` end the line, quotes are removed, ``\\`` escapes the next
    character. A ``set`` with more than one word after it keeps only the first (the rest is lost)."""
    options: dict[str, str] = {}
    for line in text.splitlines():
        words: list[str] = []
        word, quote, started, index = "", "", False, 0
        while index < len(line):
            char = line[index]
            if quote:
                if char == quote:
                    quote = ""
                else:
                    word += char
            elif char == "\\" and index + 1 < len(line):
                index += 1
                word += line[index]
                started = True
            elif char in "'\"":
                quote, started = char, True
            elif char in "#;":
                break
            elif char.isspace():
                if started:
                    words.append(word)
                word, started = "", False
            else:
                word += char
                started = True
            index += 1
        if started:
            words.append(word)
        if len(words) >= 2 and words[0] == "set" and "=" in words[1]:
            path, _, value = words[1].partition("=")
            options[path] = value
    return options


def jq_text(value: Any) -> str:
    """How ``jq -r`` prints a value into the box's heredoc (a missing one as the literal ``null``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# (UCI option the box writes, path in our document): what otb-action-configure sets from each value.
BOX_WRITES = [
    ("glorytun.tun0.dev", "glorytun_mud_conf.dev"),
    ("glorytun.tun0.server", "glorytun_mud_conf.server"),
    ("glorytun.tun0.port", "glorytun_mud_conf.port"),
    ("glorytun.tun0.key", "glorytun_mud_conf.key"),
    ("glorytun.tun0.mtu", "glorytun_mud_conf.mtu"),
    ("glorytun.tun0.mtu_auto", "glorytun_mud_conf.mtu_auto"),
    ("network.tun0.ipaddr", "glorytun_mud_conf.ip_local"),
    ("network.tun0.gateway", "glorytun_mud_conf.ip_peer"),
    ("network.tun0.metric", "glorytun_mud_conf.metric"),
    ("network.tun0.ip4table", "glorytun_mud_conf.table"),
    ("glorytun.app.mode", "tun_conf.app"),
    ("shadowsocks.proxy.server", "shadow_conf.server"),
    ("shadowsocks.proxy.port", "shadow_conf.port"),
    ("shadowsocks.proxy.lport", "shadow_conf.lport"),
    ("shadowsocks.proxy.method", "shadow_conf.method"),
    ("shadowsocks.proxy.timeout", "shadow_conf.timeout"),
    ("shadowsocks.proxy.reuse_port", "shadow_conf.reuse_port"),
    ("shadowsocks.proxy.fast_open", "shadow_conf.fast_open"),
    ("shadowsocks.proxy.disable_sni", "shadow_conf.disable_sni"),
    ("shadowsocks.proxy.monitoring_ip", "shadow_conf.monitoring_ip"),
    ("shadowsocks.proxy.track_interval", "shadow_conf.track_interval"),
    ("shadowsocks.proxy.track_timeout", "shadow_conf.track_timeout"),
    ("shadowsocks.proxy.track_retry", "shadow_conf.track_retry"),
    ("shadowsocks.proxy.password", "shadow_conf.password"),
    ("shadowsocks.proxy.disabled", "shadow_conf.disabled"),
    ("network.lan.ip6prefix", "ipv6_conf.lan_conf.ipv6_prefix"),
    ("network.lan.ip6range", "ipv6_conf.lan_conf.ipv6_range"),
    ("system.@system[0].log_ip", "log_conf.host"),
    ("system.@system[0].log_port", "log_conf.port"),
    ("system.@system[0].log_proto", "log_conf.protocol"),
    ("system.@system[0].log_prefix", "log_conf.key"),
    ("graph.opentsdb.url", "graph_conf.host"),
    ("graph.opentsdb.freq", "graph_conf.write_frequency"),
]


def json_get(document: Any, path: str) -> Any:
    for part in path.split("."):
        document = document.get(part) if isinstance(document, dict) else None
    return document


def box_batch(document: dict[str, Any]) -> str:
    """The ``uci batch`` input the box builds: ``set <option>=<value as jq -r prints it>``, unquoted."""
    return "\n".join(f"\tset {option}={jq_text(json_get(document, path))}" for option, path in BOX_WRITES)


def assert_round_trips(document: dict[str, Any]) -> None:
    parsed = uci_batch_parse(box_batch(document))
    for option, path in BOX_WRITES:
        assert parsed.get(option) == jq_text(json_get(document, path)), (option, path)


# --- fixtures ---------------------------------------------------------------------------------------


def linked(people: Any, *, confirm: bool = True) -> tuple[Client, dict[str, Any], Box]:
    client = Client()
    answer = subscribe(client, mac=MAC)
    box = device_claim(
        actor=Actor.for_user(people.admin), organization=people.org, device_id=answer["device_id"]
    ).box
    if confirm:
        service = f"overthebox.{box.pk}"
        path = f"devices/{answer['device_id']}/service/{service}/confirm"
        assert otb_call(client, "POST", path, jwt=answer["jwt"]).status_code == 200
    return client, answer, Box.objects.get(pk=box.pk)


def get_config(client: Client, answer: dict[str, Any]) -> Any:
    return otb_call(client, "GET", f"devices/{answer['device_id']}/config", jwt=answer["jwt"])


def secret_of(box: Box, kind: str) -> str:
    return secret_decrypt(
        TunnelCredential.objects.get(box=box, kind=kind, revoked_at__isnull=True).secret_ciphertext
    )


# --- the document -------------------------------------------------------------------------------------


def test_config_is_built_from_the_boxs_provisioning_and_recorded_as_applied(
    people, provisioned_region
) -> None:
    client, answer, box = linked(people)
    assert box.config_hash and box.applied_config_hash != box.config_hash
    response = get_config(client, answer)
    assert response.status_code == 200, response.content
    document = response.json()
    server = provisioned_region.server
    tunnel = document["glorytun_mud_conf"]
    assert tunnel["dev"] == "tun0"
    assert tunnel["server"] == server.public_ipv4 and tunnel["port"] == box.tunnel_port
    assert tunnel["key"] == secret_of(box, TunnelKind.GLORYTUN)
    assert tunnel["ip_local"].startswith("100.64.0.") and tunnel["ip_peer"].startswith("100.64.0.")
    assert tunnel["metric"] and tunnel["table"] and tunnel["mtu"]
    ss = document["shadow_conf"]
    assert (ss["server"], ss["port"]) == (server.public_ipv4, box.tunnel_port)
    assert (
        ss["password"] == secret_of(box, TunnelKind.SHADOWSOCKS) and ss["method"] == "chacha20-ietf-poly1305"
    )
    assert ss["monitoring_ip"] == tunnel["ip_peer"]  # the gateway answers /ping there, through ss-server
    assert ss["monitoring_ip"] != ss["server"]  # the box must not send its shadowsocks link into itself
    assert ss["lport"] == 8388  # where the box redirects ss-track's traffic
    assert document["ipv6_conf"]["lan_conf"]["ipv6_prefix"].startswith("2001:db8:")
    assert set(document["log_conf"]) == {"host", "port", "protocol", "key"}
    assert document["graph_conf"]["write_frequency"] > 0
    # serving it records that the box applies the desired configuration
    box.refresh_from_db()
    assert box.applied_config_hash == box.config_hash and box.applied_at is not None
    # the box's uci batch reads back every value as it was sent
    assert_round_trips(document)


def box_jq(document: Any, program: str) -> subprocess.CompletedProcess[str]:
    """``_get <section> | jq -c -r <program>`` as otb-action-configure runs it (set -e: a failure ends
    the script)."""
    return subprocess.run(
        ["jq", "-c", "-r", program], input=json.dumps(document), capture_output=True, text=True, check=False
    )


@pytest.mark.skipif(shutil.which("jq") is None, reason="jq is what the box reads its config with")
def test_config_has_the_tracker_section_the_box_iterates_under_set_e(people, provisioned_region) -> None:
    # given a linked, confirmed box; when it pulls its config (recorded from the unchanged feeds
    # script, otb-action-configure's _setup_tracker: `_get tracker_conf | jq -c -r '.hosts[]'`)
    client, answer, _ = linked(people)
    document = get_config(client, answer).json()
    # then jq iterates the hosts without failing: without the section jq exits 5 ("Cannot iterate
    # over null"), set -e ends the script after tun0, and shadowsocks, syslog and graph are never set
    hosts = box_jq(document.get("tracker_conf"), ".hosts[]")
    assert hosts.returncode == 0, hosts.stderr
    assert hosts.stdout.split() == [provisioned_region.server.public_ipv4]
    interval = box_jq(document.get("tracker_conf"), ".interval_seconds")
    assert interval.returncode == 0 and int(interval.stdout) > 0
    assert box_jq(None, ".hosts[]").returncode != 0  # what the box met before


def test_config_before_link_or_confirmation_is_an_error_the_box_understands(
    people, provisioned_region
) -> None:
    client = Client()
    pending = subscribe(client, mac="00:0d:b9:4a:41:02")
    refused = get_config(client, pending)
    assert refused.status_code == 409
    assert refused.json()["error"] and refused.json()["class"]
    client, answer, box = linked(people, confirm=False)
    unconfirmed = get_config(client, answer)
    assert unconfirmed.status_code == 409 and "confirm" in unconfirmed.json()["error"]
    box.refresh_from_db()
    assert box.applied_config_hash == "" and box.applied_at is None


def test_another_devices_config_is_forbidden(people, provisioned_region) -> None:
    client, answer, _ = linked(people)
    other = subscribe(client, mac="00:0d:b9:4a:41:03")
    stolen = otb_call(client, "GET", f"devices/{answer['device_id']}/config", jwt=other["jwt"])
    assert stolen.status_code == 403 and stolen.json()["class"] == "Client::Forbidden"
    assert "shadow_conf" not in stolen.json()


@pytest.mark.parametrize(("method", "body"), [("POST", None), ("GET", {"x": 1}), ("GET", "{nope")])
def test_config_bad_input_is_a_clear_4xx(method, body, people, provisioned_region) -> None:
    client, answer, box = linked(people)
    data = body if isinstance(body, str) else ("" if body is None else json.dumps(body))
    response = client.generic(
        method,
        f"/1.0/devices/{answer['device_id']}/config",
        data,
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {answer['jwt']}",
    )
    assert response.status_code in (400, 405) and response.json()["class"].startswith("Client::")
    assert Box.objects.get(pk=box.pk).applied_at is None


def test_a_value_outside_the_uci_charset_is_never_served(people, provisioned_region) -> None:
    # given a shadowsocks password that uci batch would cut (a space and a '#'), from an old row
    client, answer, box = linked(people)
    TunnelCredential.objects.filter(box=box, kind=TunnelKind.SHADOWSOCKS).update(
        secret_ciphertext=secret_encrypt("pass word#1")
    )
    response = get_config(client, answer)
    assert response.status_code == 409, response.content
    assert "shadow_conf.password" in response.json()["error"] and "pass word" not in response.content.decode()
    assert Box.objects.get(pk=box.pk).applied_at is None


def test_a_list_value_outside_the_uci_charset_is_refused() -> None:
    # the tracker hosts are a list: each item is checked like any other value
    with pytest.raises(OtbConfigUnavailable, match=r"tracker_conf\.hosts"):
        _uci_checked({"tracker_conf": {"hosts": ["192.0.2.1", "not ok"]}}, box_id="x")
    assert _uci_checked({"tracker_conf": {"hosts": ["192.0.2.1"]}}, box_id="x")


# --- the charset where credentials are generated -------------------------------------------------------


@pytest.mark.parametrize("generate", [password_generate, symmetric_key_generate, wireguard_key_generate])
def test_generated_credentials_stay_within_the_uci_charset_and_round_trip(generate) -> None:
    values = [generate() for _ in range(2000)]
    assert all(re.fullmatch(UCI_SAFE, value) for value in values)
    seen = "".join(values)
    # the generators do produce the awkward characters of their alphabets ('-', '_', '+', '/', '='),
    # and each survives the box's uci batch
    for index, value in enumerate(values):
        assert uci_batch_parse(f"set shadowsocks.proxy.password={value}") == {
            "shadowsocks.proxy.password": value
        }, index
    assert len(set(seen)) >= 16


def test_every_charset_character_round_trips_and_the_parser_catches_others() -> None:
    allowed = "ABCXYZabcxyz0123456789_.:/+=-"
    assert uci_batch_parse(f"set a.b.c={allowed}") == {"a.b.c": allowed}
    for bad in ("pass word", "pa#ss", "pa;ss", "pa'ss'x", 'pa"ss"', "pa\\ss"):
        assert not re.fullmatch(UCI_SAFE, bad)
        assert uci_batch_parse(f"set a.b.c={bad}").get("a.b.c") != bad, bad
