"""The rules both sides apply, written once in otb_protocol.rules."""

from __future__ import annotations

import pytest
from otb_protocol import (
    COMMAND_KINDS,
    SCHEMA,
    SERIAL_RE,
    WAN_INTERFACE_NAME_RE,
    WAN_KINDS,
    interface_name_problem,
    serial_problem,
)


@pytest.mark.parametrize("serial", ["OTB2C-0001", "SIM-00001", "a.b_c-d", "x" * 64])
def test_valid_serials(serial: str) -> None:
    assert serial_problem(serial) is None and SERIAL_RE.fullmatch(serial)


@pytest.mark.parametrize("serial", ["", "x" * 65, "OTB 1", "OTB/1", "é", None, 12])
def test_invalid_serials_say_why(serial: object) -> None:
    assert serial_problem(serial) == "must be 1 to 64 characters from A-Z a-z 0-9 . _ -"


@pytest.mark.parametrize("name", ["wan", "wan2", "lte0", "eth0.100", "wg_otb", "a-b"])
def test_wan_policy_names_are_valid_interface_names(name: str) -> None:
    assert WAN_INTERFACE_NAME_RE.fullmatch(name) and interface_name_problem(name) is None


@pytest.mark.parametrize("name", ["", ".", "..", "Eth0", "eth 0", "eth0:1", "w" * 16, "wan/1"])
def test_names_a_wan_policy_refuses(name: str) -> None:
    assert not WAN_INTERFACE_NAME_RE.fullmatch(name)


def test_every_name_a_wan_policy_accepts_is_a_kernel_interface_name() -> None:
    alphabet = "abz09._-"
    names = [a + b + c for a in alphabet for b in ["", *alphabet] for c in ["", *alphabet]]
    accepted = [n for n in names if WAN_INTERFACE_NAME_RE.fullmatch(n)]
    assert accepted and all(interface_name_problem(n) is None for n in accepted)


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        (None, "must be a network interface name"),
        ("", "must be a network interface name"),
        ("w" * 16, "must be a network interface name of at most 15 bytes"),
        ("..", "is not a valid network interface name: '..'"),
        ("wan 1", "is not a valid network interface name: 'wan 1'"),
        ("Wan1", None),
    ],
)
def test_the_kernel_interface_name_rule(name: object, problem: str | None) -> None:
    assert interface_name_problem(name) == problem


def test_the_schema_and_the_rules_list_the_same_values() -> None:
    defs = SCHEMA["$defs"]
    wan = defs["telemetry"]["properties"]["samples"]["items"]["properties"]["wans"]["items"]
    assert tuple(wan["properties"]["kind"]["enum"]) == WAN_KINDS
    assert tuple(defs["command"]["properties"]["kind"]["enum"]) == COMMAND_KINDS
    pending = defs["welcome"]["properties"]["pending_commands"]["items"]
    assert tuple(pending["properties"]["kind"]["enum"]) == COMMAND_KINDS
