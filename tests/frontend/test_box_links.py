"""The box page's links: named without repeating themselves, with their roles, the disabled ones
listed though the box does not report them."""

from __future__ import annotations

from types import SimpleNamespace

from frontend.box_links import link_caption, wan_rows


def test_a_link_is_named_without_saying_anything_twice() -> None:
    assert link_caption(label="VDSL", kind="vdsl", iface="wan") == ("VDSL", "wan")
    assert link_caption(label="Fibre", kind="fiber", iface="wan") == ("Fibre", "wan")
    assert link_caption(label="4G", kind="lte", iface="wan3") == ("4G", "wan3")
    assert link_caption(label="wan", kind="fiber", iface="wan") == ("wan", "Fiber")
    assert link_caption(label="", kind="5g", iface="wwan0") == ("wwan0", "5G")
    assert link_caption(label="Office", kind="cable", iface="eth1") == ("Office", "Cable · eth1")


def test_the_wan_table_has_each_reported_link_with_its_role_then_the_disabled_ones() -> None:
    box = SimpleNamespace(
        wan_policy={
            "mode": "failover",
            "interfaces": [
                {"name": "wan", "role": "primary", "kind": "fiber"},
                {"name": "wan2", "role": "backup", "kind": "lte"},
                {"name": "wan3", "role": "disabled", "kind": "adsl"},
                {"name": "lte0", "role": "backup", "kind": "lte"},
            ],
        }
    )
    wans = [
        SimpleNamespace(iface="wan", label="Fibre", kind="fiber"),
        SimpleNamespace(iface="wan2", label="4G", kind="lte"),
        SimpleNamespace(iface="wan4", label="wan4", kind="other"),
    ]
    rows = wan_rows(box, wans)
    assert [(row.iface, row.role, row.wan is not None) for row in rows] == [
        ("wan", "primary", True),
        ("wan2", "backup", True),
        ("wan4", "primary", True),  # not named by the policy: a primary
        ("wan3", "disabled", False),  # disabled: not reported, still listed
    ]
