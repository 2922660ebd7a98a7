"""The box page's WAN links, from the box's WAN policy and its latest report (``box_wans``): the rows
of the WAN table, the WAN policy editor's links, and how a link is named. Pure functions: the views
read the rows and pass them in."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fleet.core.choices import WanKind, WanRole

# Words that already say a link's kind when its label holds them ("Fibre", "4G backup").
KIND_WORDS: dict[str, tuple[str, ...]] = {
    WanKind.FIBER: ("fiber", "fibre", "ftth"),
    WanKind.LTE: ("lte", "4g"),
    WanKind.NR: ("5g",),
    WanKind.SATELLITE: ("satellite", "starlink"),
    WanKind.OTHER: ("other",),
}


@dataclass(frozen=True)
class WanRow:
    """One row of the WAN table: a link the box reports (``wan``), or a link the policy disables,
    which the box does not monitor (``wan`` None)."""

    iface: str
    title: str
    detail: str
    role: str
    wan: Any = None


def link_caption(*, label: str, kind: str, iface: str) -> tuple[str, str]:
    """(title, detail) naming a link without saying anything twice: the label, then its kind unless
    the label says it, and the interface unless it is the label (``("VDSL", "wan2")``,
    ``("wan", "Fiber")``, ``("Office fibre", "wan")``)."""
    title = label or iface
    folded = title.casefold()
    kind_label = str(WanKind(kind).label) if kind in WanKind.values else kind
    words = KIND_WORDS.get(kind, (kind, kind_label.casefold()))
    parts = []
    if kind and not any(word in folded for word in words) and kind_label.casefold() not in folded:
        parts.append(kind_label)
    if iface != title:
        parts.append(iface)
    return title, " · ".join(parts)


def _policy_roles(box: Any) -> dict[str, dict[str, Any]]:
    policy = box.wan_policy or {}
    return {
        item["name"]: item
        for item in policy.get("interfaces", [])
        if isinstance(item, dict) and isinstance(item.get("name"), str)
    }


def wan_rows(box: Any, wans: list[Any]) -> list[WanRow]:
    """The WAN table: the links the box reports, by name, each with its role in the policy (a link
    it does not name is a primary), then the links the policy disables (not monitored)."""
    named = _policy_roles(box)
    rows = []
    for wan in wans:
        title, detail = link_caption(label=wan.label, kind=wan.kind, iface=wan.iface)
        role = named.get(wan.iface, {}).get("role", WanRole.PRIMARY)
        rows.append(WanRow(iface=wan.iface, title=title, detail=detail, role=role, wan=wan))
    reported = {wan.iface for wan in wans}
    for name, item in named.items():
        if name not in reported and item.get("role") == WanRole.DISABLED:
            title, detail = link_caption(label=name, kind=item.get("kind", ""), iface=name)
            rows.append(WanRow(iface=name, title=title, detail=detail, role=WanRole.DISABLED))
    return rows


def policy_links(box: Any, wans: list[Any]) -> list[dict[str, Any]]:
    """The WAN policy editor's links: the policy's, in its order (the links' order of preference),
    then the links the box reports that the policy does not name yet (primaries by default).

    Each says whether the box reports it (``reported``: ``yes``; ``no`` for a link named by the
    policy but missing from the box's latest report, which the editor flags and lets one remove;
    ``disabled`` for a disabled one, never monitored so never reported; ``unknown`` while the box
    has not reported any link). A reported link takes the kind and label the box reports."""
    policy = box.wan_policy or {}
    interfaces = [dict(item) for item in policy.get("interfaces", []) if isinstance(item, dict)]
    reported = {wan.iface: wan for wan in wans}
    known = {item.get("name") for item in interfaces}
    for wan in wans:
        if wan.iface not in known:
            interfaces.append({"name": wan.iface, "role": WanRole.PRIMARY})
    for item in interfaces:
        wan = reported.get(item.get("name"))
        if wan is not None:
            item["kind"] = wan.kind if wan.kind in WanKind.values else WanKind.OTHER
            item["label"] = wan.label or wan.iface
            item["reported"] = "yes"
        else:
            item["label"] = item.get("name")
            item["reported"] = (
                "unknown" if not wans else "disabled" if item.get("role") == WanRole.DISABLED else "no"
            )
    return interfaces


def unreported_links(box: Any, wans: list[Any]) -> list[str]:
    """The links the policy gives a role to that the box does not report (their role has no effect)."""
    return [item["name"] for item in policy_links(box, wans) if item["reported"] == "no"]
