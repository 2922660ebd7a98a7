"""The support console (staff only): fleet health, box search, staff actions on a box, rollouts,
and the audit log. The Django admin stays available for everything else."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from functools import wraps
from typing import Any, cast

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST

from fleet.core import selectors as fleet_selectors
from fleet.core.access import box_for, box_visible, is_staff
from fleet.core.audit import Actor
from fleet.core.choices import Role
from fleet.core.errors import DomainError
from fleet.core.models import Box
from fleet.firmware import selectors as firmware_selectors
from fleet.firmware import services as firmware_services
from fleet.firmware.choices import FAILURE_STATES, WAITING_STATES, RolloutAction, UpgradeState
from frontend import selectors
from frontend.errors import errors_on_form, form_add_domain_error, page_errors, sentence
from frontend.forms import (
    AuditFilterForm,
    ConsoleSearchForm,
    OtbDeviceFilterForm,
    RolloutForm,
    StaffActionForm,
    StaffDeviceClaimForm,
)
from frontend.views.box import box_context
from otbcompat import selectors as otb_selectors
from otbcompat.binding import device_claim
from otbcompat.selectors import box_otb_device
from provisioning.addressing import host_address
from provisioning.choices import PoolPurpose
from provisioning.selectors import infrastructure as provisioning_selectors
from provisioning.selectors.boxes import box_addresses
from provisioning.services import lifecycle as provisioning_services

AUDIT_PAGE_SIZE = 50

STAFF_ACTIONS: dict[str, dict[str, str]] = {
    "reassign": {
        "title": "Reassign to another server",
        "explain": "The box moves to another aggregation server (the least loaded active one in its region "
        "unless you pick one). Its tunnel restarts on the new server, and the customer's public IP "
        "address changes to a new address from the new server's pools (its IPv6 prefix too, if the "
        "server is in another region). The change goes on the box's timeline and the customer is notified.",
        "button": "Reassign and change the public IP",
    },
    "release": {
        "title": "Release its addresses",
        "explain": "Every public IP and tunnel address of the box is released and quarantined. The customer "
        "loses their public IP until the box is provisioned again.",
        "button": "Release addresses",
    },
    "revoke": {
        "title": "Revoke its credentials",
        "explain": "The tunnel keys and the agent's credential are revoked at once, and a claimed "
        "box gets new tunnel keys: the box disconnects, must enroll again, then gets the new keys "
        "with its configuration. A stock OverTheBox box's device token and JWTs stop too: the box "
        "subscribes again as a new device, which its owner (or staff, under OTB devices) claims "
        "again by the device id the box shows.",
        "button": "Revoke credentials",
    },
    "decommission": {
        "title": "Decommission",
        "explain": "The box is retired for good: released from its customer, its server, its "
        "addresses and its credentials. This cannot be undone.",
        "button": "Decommission",
    },
}


def staff_required(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not is_staff(request.user):
            raise PermissionDenied("support staff only")
        return view(request, *args, **kwargs)

    return login_required(wrapper)


def _percent(part: int, whole: int) -> int:
    return round(100 * part / whole) if whole else 0


@staff_required
def console_home(request: HttpRequest) -> HttpResponse:
    """Fleet health: online share, ingest, alerts; per region and server the boxes against both caps
    (slots, and public IPv4 addresses left in the pools: the one that runs out first), and per server
    what its gateway last reported, flagged when that is older than ``OTB_GATEWAY_STALE_S``."""
    health = selectors.fleet_health()
    servers = provisioning_selectors.server_capacity_summary()
    regions = selectors.boxes_per_region()
    ipv4 = provisioning_selectors.public_ipv4_usage()
    stale_s = settings.OTB.get("GATEWAY_STALE_S")
    stale_after = dt.timedelta(seconds=stale_s if isinstance(stale_s, int) and stale_s > 0 else 60)
    now = timezone.now()
    capacity_by_region: dict[str, dict[str, int]] = {}
    for server in servers:
        totals = capacity_by_region.setdefault(server["region"], {"capacity": 0, "assigned": 0})
        totals["capacity"] += server["capacity"]
        totals["assigned"] += server["assigned"]
        server["used_pct"] = _percent(server["assigned"], server["capacity"])
        server["ipv4"] = ipv4["servers"].get(server["id"], {})
        # what the server can still take: the first of its two caps to run out
        server["room"] = min(max(server["spare"], 0), server["ipv4"].get("available", 0))
        gateway = server["gateway"]
        if gateway is not None:
            gateway["stale"] = now - gateway["last_report_at"] > stale_after
    for region in regions:
        region.update(capacity_by_region.get(region["code"], {"capacity": 0, "assigned": 0}))
        region["ipv4"] = ipv4["regions"].get(
            region["code"], {"size": 0, "active": 0, "quarantined": 0, "free": 0}
        )
        region["ipv4"]["used_pct"] = _percent(
            region["ipv4"]["active"] + region["ipv4"]["quarantined"], region["ipv4"]["size"]
        )
        slots_left = max(region["capacity"] - region["assigned"], 0)
        region["room"] = min(slots_left, region["ipv4"]["free"])
        region["cap"] = "addresses" if region["ipv4"]["free"] < slots_left else "slots"
    template = (
        "frontend/console/_health.html" if request.headers.get("HX-Request") else "frontend/console/home.html"
    )
    return render(
        request,
        template,
        {
            "nav": "console",
            "health": health,
            "servers": servers,
            "regions": regions,
            "stale_after_s": int(stale_after.total_seconds()),
            "search": ConsoleSearchForm(),
        },
    )


@staff_required
def console_search(request: HttpRequest) -> HttpResponse:
    """Any box by serial, MAC, public IP or customer."""
    form = ConsoleSearchForm(request.GET or None)
    boxes: list[Any] = []
    if form.is_valid() and form.cleaned_data["q"].strip():
        boxes = list(selectors.console_box_search(query=form.cleaned_data["q"]))
        if len(boxes) == 1 and request.GET.get("go") == "1":
            return redirect("frontend:console_box", box_id=boxes[0].pk)
    return render(
        request,
        "frontend/console/search.html",
        {"nav": "console", "search": form, "boxes": boxes},
        status=400 if form.errors else 200,
    )


@staff_required
@page_errors
def console_box(request: HttpRequest, box_id: str) -> HttpResponse:
    """The customer's box page plus the staff actions."""
    box = box_for(request.user, box_id, Role.VIEWER)
    return render(request, "frontend/box/page.html", box_context(request, box, console=True))


def _server_choices(box: Any) -> list[tuple[str, str]]:
    return [("", "Least loaded active server in the region")] + [
        (server["id"], f"{server['name']} · {server['region']} · {server['spare']} free · {server['status']}")
        for server in provisioning_selectors.server_capacity_summary()
        if str(box.server_id) != server["id"]
    ]


def _public_ipv4(box: Any) -> str | None:
    """The box's public IPv4 address now (None without one)."""
    return next(
        (
            host_address(assignment.prefix)
            for assignment in box_addresses(box=box)
            if assignment.purpose == PoolPurpose.PUBLIC_IPV4
        ),
        None,
    )


def _revoked_message(box: Box) -> str:
    """What a revocation did, said to the staff member who asked for it."""
    revoked: dict[str, Any] = getattr(box, "credentials_revoked", {})
    parts = [
        f"{revoked.get('tunnel_credentials', 0)} tunnel credential(s)"
        + (" (new ones issued)" if revoked.get("reissued") else ""),
        f"{revoked.get('agent_credentials', 0)} agent credential(s)",
    ]
    if revoked.get("otb_device"):
        parts.append(
            f"the token and JWTs of OverTheBox device {revoked['otb_device']} (the box subscribes again "
            "as a new device, to be claimed again)"
        )
    return f"Revoked for {box.serial}: {', '.join(parts)}."


@staff_required
@page_errors
def console_box_action(request: HttpRequest, box_id: str, action: str) -> HttpResponse:
    """A staff action on a box: GET asks for confirmation (type the serial), POST carries it out."""

    if action not in STAFF_ACTIONS:
        raise Http404("unknown action")
    actor = Actor.from_request(request)
    box = box_visible(actor, box_id)
    form = StaffActionForm(request.POST or None)
    cast(forms.ChoiceField, form.fields["server"]).choices = (
        _server_choices(box) if action == "reassign" else [("", "")]
    )
    public_ipv4 = _public_ipv4(box)
    status = 200
    if request.method == "POST":
        if form.is_valid() and form.cleaned_data["confirm_serial"].strip() != box.serial:
            form.add_error(
                "confirm_serial", f"Type the box's serial number, {box.serial}, exactly as shown to confirm."
            )
        if form.is_valid():
            with errors_on_form(form):
                if action == "reassign":
                    server_id = form.cleaned_data.get("server")
                    server = provisioning_selectors.server_get(server_id=server_id) if server_id else None
                    box = provisioning_services.box_reassign_server(actor=actor, box=box, server=server)
                    done = (
                        f"{box.serial} now terminates on {box.server.name if box.server else 'no server'}. "
                        f"Its public IP changed from {public_ipv4 or 'none'} to "
                        f"{_public_ipv4(box) or 'none'}; the customer is notified."
                    )
                elif action == "release":
                    provisioning_services.box_release_addresses(actor=actor, box=box)
                    done = f"The addresses of {box.serial} are released."
                elif action == "revoke":
                    # Replaced, not only revoked: the box (re-enrolled, or its OTB device claimed
                    # again) must get working keys, and only it can fetch them.
                    box = provisioning_services.box_revoke_credentials(
                        actor=actor, box=box, include_agent=True, reissue=True
                    )
                    done = _revoked_message(box)
                else:
                    provisioning_services.box_decommission(actor=actor, box=box)
                    done = f"{box.serial} is decommissioned."
                messages.success(request, done)
                return redirect("frontend:console_box", box_id=box.pk)
        status = 400
    return render(
        request,
        "frontend/console/box_action.html",
        {
            "nav": "console",
            "box": box,
            "action": action,
            "meta": STAFF_ACTIONS[action],
            "form": form,
            "public_ipv4": public_ipv4,
            # what a revocation will stop besides the box's keys: its OverTheBox device, if linked
            "otb_device": box_otb_device(box=box) if action == "revoke" else None,
        },
        status=status,
    )


@staff_required
@page_errors
def console_otb_devices(request: HttpRequest) -> HttpResponse:
    """Stock OverTheBox devices (the pending ones by default: subscribed, nobody claimed them yet), and
    a claim of one for a customer (the same claim as the customer's, audited as the staff member)."""
    filters = OtbDeviceFilterForm(request.GET or None)
    claim = StaffDeviceClaimForm(request.POST or None, initial={"device_id": request.GET.get("device", "")})
    cast(forms.ChoiceField, claim.fields["organization"]).choices = [
        ("", "Pick a customer"),
        *selectors.organization_choices(),
    ]
    status = 200
    if request.method == "POST":
        if claim.is_valid():
            organization = selectors.organization_get(organization_id=claim.cleaned_data["organization"])
            if organization is None:
                claim.add_error("organization", "Pick the customer who owns the box.")
            else:
                with errors_on_form(claim):
                    claimed = device_claim(
                        actor=Actor.from_request(request),
                        organization=organization,
                        device_id=claim.cleaned_data["device_id"].strip(),
                    )
                    messages.success(
                        request,
                        f"Box {claimed.box.serial} is now part of {organization.name}, linked to the device.",
                    )
                    return redirect("frontend:console_box", box_id=claimed.box.pk)
        status = 400
    query, state = "", otb_selectors.PENDING
    if filters.is_valid():
        query = filters.cleaned_data["q"]
        state = filters.cleaned_data["state"] or otb_selectors.PENDING
    elif filters.errors:
        status = 400
    devices = [
        (device, otb_selectors.device_state(device))
        for device in otb_selectors.devices_for_console(query=query, state="" if state == "all" else state)
    ]
    return render(
        request,
        "frontend/console/otb_devices.html",
        {
            "nav": "console",
            "filters": filters,
            "claim": claim,
            "devices": devices,
            "state_labels": otb_selectors.STATE_LABELS,
            "limit": otb_selectors.CONSOLE_LIMIT,
        },
        status=status,
    )


@staff_required
def console_audit(request: HttpRequest) -> HttpResponse:
    """The audit log, searchable by text, action, actor and box serial."""
    form = AuditFilterForm(request.GET or None)
    filters: dict[str, Any] = {}
    page_number = 1
    entries: Any = []
    filter_errors = form.is_bound and not form.is_valid() and form.filter_errors()
    if not filter_errors:
        if form.is_bound:
            filters = {key: value for key, value in form.cleaned_data.items() if key != "page" and value}
            page_number = form.page_number()
        entries = fleet_selectors.audit_visible(user=request.user, filters=filters)
    page = Paginator(entries, AUDIT_PAGE_SIZE).get_page(page_number)
    page_error = form.page_error() if form.is_bound else ""
    if not page_error and page.number != page_number:
        page_error = f"There is no page {page_number}: showing page {page.number}, the last one."
    query = request.GET.copy()
    query.pop("page", None)
    htmx_rows = request.headers.get("HX-Target") == "audit-results"
    return render(
        request,
        "frontend/console/_audit_rows.html" if htmx_rows else "frontend/console/audit.html",
        {
            "nav": "console",
            "form": form,
            "page": page,
            "page_error": page_error,
            "filter_errors": filter_errors,
            "entries": list(page.object_list),
            "query": query.urlencode(),
            "oob": htmx_rows,
        },
        status=400 if filter_errors else 200,
    )


# -- rollouts --------------------------------------------------------------------------------------


def _rollout_form(data: Any = None, initial: dict[str, Any] | None = None) -> RolloutForm:
    return RolloutForm(
        data,
        initial=initial,
        releases=[
            (str(release.pk), f"{release.version} ({release.channel})")
            for release in firmware_selectors.releases_published()
        ],
        organizations=selectors.organization_choices(),
    )


@staff_required
def rollout_list(request: HttpRequest) -> HttpResponse:
    rollouts = list(firmware_selectors.rollouts_list()[:100])
    return render(request, "frontend/console/rollouts.html", {"nav": "console", "rollouts": rollouts})


@staff_required
@page_errors
def rollout_new(request: HttpRequest) -> HttpResponse:
    """Create a rollout; "Preview" shows which boxes match and which are skipped, and why."""
    form = _rollout_form(request.POST or None, initial={"release": request.GET.get("release", "")})
    preview = None
    status = 200
    if request.method == "POST":
        if form.is_valid():
            release = firmware_selectors.release_get(release_id=form.cleaned_data["release"])
            arguments = {
                "release": release,
                "target": form.target(),
                "phases": form.cleaned_data["phases"],
                "force": form.cleaned_data["force"],
            }
            try:
                if request.POST.get("intent") == "create":
                    rollout = firmware_services.rollout_create(
                        actor=Actor.from_request(request),
                        name=form.cleaned_data["name"],
                        **arguments,
                        **form.policy(),
                    )
                    if request.POST.get("start") == "1":
                        firmware_services.rollout_start(actor=Actor.from_request(request), rollout=rollout)
                    messages.success(request, f"Rollout “{rollout.name}” created.")
                    return redirect("frontend:rollout", rollout_id=rollout.pk)
                preview = firmware_selectors.rollout_preview(**arguments)
                preview["skipped_total"] = sum(preview.get("skipped", {}).values())
            except DomainError as exc:
                form_add_domain_error(form, exc)
        if form.errors:
            status = 400
    # htmx (Preview): the form and the preview together, so errors land next to their fields
    template = (
        "frontend/console/_rollout_editor.html"
        if request.headers.get("HX-Request")
        else "frontend/console/rollout_new.html"
    )
    return render(request, template, {"nav": "console", "form": form, "preview": preview}, status=status)


def _rollout_progress(rollout: Any) -> dict[str, Any]:
    """The rollout engine's progress summary, with the shares the progress bar and its legend need
    (of the upgrades not skipped; what is neither done, in flight nor failed is still to do)."""
    progress = firmware_selectors.rollout_progress(rollout=rollout)
    counts = progress["counts"]
    progress["succeeded"] = counts.get(UpgradeState.SUCCEEDED, 0)
    progress["waiting"] = sum(counts.get(state, 0) for state in WAITING_STATES)
    progress["failed"] = sum(counts.get(state, 0) for state in FAILURE_STATES)
    progress["skipped"] = counts.get(UpgradeState.SKIPPED, 0)
    progress["cancelled"] = counts.get(UpgradeState.CANCELLED, 0)
    progress["considered"] = sum(counts.values()) - progress["skipped"]
    considered = max(progress["considered"], 1)
    progress["pct_done"] = round(100 * progress["succeeded"] / considered)
    progress["pct_in_flight"] = round(100 * progress["in_flight"] / considered)
    progress["pct_failed"] = round(100 * progress["failed"] / considered)
    progress["pct_rest"] = max(
        0, 100 - progress["pct_done"] - progress["pct_in_flight"] - progress["pct_failed"]
    )
    return progress


UPGRADES_PAGE_SIZE = 50


def _rollout_boxes(request: HttpRequest, rollout: Any) -> dict[str, Any]:
    """The page of the rollout's per-box list asked for (``?state=``, ``?page=``): a bad value shows
    every state, or the nearest page, with a note."""
    state = request.GET.get("state", "")
    note = ""
    if state and state not in UpgradeState.values:
        note = f"There is no upgrade state “{state[:40]}”: every state is listed."
        state = ""
    upgrades = firmware_selectors.rollout_upgrades(rollout=rollout, state=state or None).select_related(
        "box__organization", "box__status"
    )
    paginator = Paginator(upgrades, UPGRADES_PAGE_SIZE)
    page = paginator.get_page(request.GET.get("page"))
    return {
        "upgrades_page": page,
        "upgrades": list(page.object_list),
        "state_filter": state,
        "state_choices": UpgradeState.choices,
        "boxes_note": note,
        "boxes_query": f"state={state}&" if state else "",
    }


@staff_required
@page_errors
def rollout_detail(request: HttpRequest, rollout_id: str) -> HttpResponse:
    """A rollout's progress, why it waits and until when, and its boxes, refreshed live while it runs."""
    rollout = firmware_selectors.rollout_get(rollout_id=rollout_id)
    context = {
        "nav": "console",
        "rollout": rollout,
        "progress": _rollout_progress(rollout),
        "waiting": firmware_selectors.rollout_waiting(rollout=rollout),
        **_rollout_boxes(request, rollout),
    }
    if request.headers.get("HX-Request"):
        return render(request, "frontend/console/_rollout_live.html", context)
    return render(request, "frontend/console/rollout.html", context)


@staff_required
@require_POST
@page_errors
def rollout_action(request: HttpRequest, rollout_id: str, action: str) -> HttpResponse:
    """Start, pause, resume, abort or retry the failed upgrades (the buttons the rollout's state allows)."""
    if action not in RolloutAction.values:
        raise Http404("unknown action")
    rollout = firmware_selectors.rollout_get(rollout_id=rollout_id)
    try:
        firmware_services.rollout_act(
            actor=Actor.from_request(request),
            rollout=rollout,
            action=action,
            reason=request.POST.get("reason", "")[:500],
        )
    except DomainError as exc:
        messages.error(request, sentence(exc.message))
    else:
        messages.success(request, f"Rollout: {RolloutAction(action).label.lower()} done.")
    return redirect(reverse("frontend:rollout", args=[rollout.pk]))
