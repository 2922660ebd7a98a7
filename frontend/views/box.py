"""The box page (customer portal and, with staff actions, the support console) and its fragments.

Fragments are small GETs that htmx swaps in: status, configuration state, events, commands. The
page's script refreshes them when the people websocket (``ws/live/``) says something changed, and
polls the configuration state while the box has not applied the desired configuration.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from fleet.commands.selectors import command_list_for_box
from fleet.commands.services import command_create
from fleet.core.access import ROLE_RANK, box_for, box_visible, is_staff, require_role
from fleet.core.audit import Actor
from fleet.core.choices import Role, WanKind, WanMode, WanRole
from fleet.core.errors import Conflict, InvalidInput, NotFound
from fleet.core.models import Box
from fleet.firmware.choices import OPEN_STATES as OPEN_UPGRADE_STATES
from fleet.firmware.choices import WAITING_STATES
from fleet.firmware.selectors import box_upgrade_policy, box_upgrades, box_waiting_upgrade
from fleet.firmware.services import (
    box_upgrade_now,
    box_upgrade_policy_update,
    latest_release_for,
    upgrade_postpone,
)
from fleet.monitoring.selectors import event_list
from fleet.telemetry.selectors import box_live_status, box_wans
from frontend.errors import errors_as_message, errors_on_form, page_errors
from frontend.forms import BoxRenameForm, CommandForm, FirmwareSettingsForm, PostponeForm, WanPolicyForm
from provisioning.selectors.boxes import box_addresses
from provisioning.selectors.infrastructure import box_tunnel_status
from provisioning.services.configuration import box_set_wan_policy, box_settings_authorize, box_update

EVENTS_SHOWN = 30
COMMANDS_SHOWN = 15


def _role(request: HttpRequest, box: Box) -> str:
    if is_staff(request.user):
        return Role.OWNER
    if box.organization_id is None:
        raise NotFound("box not found")
    return require_role(request.user, box.organization_id, Role.VIEWER)


def _can_edit(role: str) -> bool:
    return ROLE_RANK[Role(role)] >= ROLE_RANK[Role.ADMIN]


def _policy_interfaces(box: Box, wans: list[Any]) -> list[dict[str, Any]]:
    """The policy's interfaces, plus links the box reports that the policy does not name yet."""
    policy = box.wan_policy or {}
    interfaces = [dict(item) for item in policy.get("interfaces", []) if isinstance(item, dict)]
    labels = {wan.iface: wan.label for wan in wans}
    known = {item.get("name") for item in interfaces}
    for wan in wans:
        if wan.iface not in known:
            kind = wan.kind if wan.kind in WanKind.values else WanKind.OTHER
            interfaces.append({"name": wan.iface, "role": WanRole.PRIMARY, "kind": kind})
    for item in interfaces:
        item["label"] = labels.get(item.get("name")) or item.get("name")
    return interfaces


def _events(box: Box) -> list[Any]:
    return list(event_list(box_id=box.pk)[:EVENTS_SHOWN])


def _commands(box: Box) -> list[Any]:
    return list(command_list_for_box(box_id=box.pk)[:COMMANDS_SHOWN])


def _firmware(box: Box) -> dict[str, Any]:
    """What the rollout engine says about this box's firmware: latest release, open upgrade, window."""

    upgrades = list(box_upgrades(box=box)[:5])
    open_upgrade = next((upgrade for upgrade in upgrades if upgrade.state in OPEN_UPGRADE_STATES), None)
    latest = latest_release_for(box) if box.organization_id else None
    return {
        "latest_version": latest.version if latest else "",
        "upgrade_available": bool(latest and latest.version != box.firmware_version),
        "open_upgrade": open_upgrade,
        "can_postpone": open_upgrade is not None and open_upgrade.state in WAITING_STATES,
        "recent_upgrades": upgrades,
        "policy": box_upgrade_policy(box=box),
    }


def box_context(request: HttpRequest, box: Box, *, console: bool = False) -> dict[str, Any]:
    role = _role(request, box)
    status, wans = box_live_status(box_id=box.pk)
    commands = _commands(box)
    return {
        "nav": "console" if console else "boxes",
        "console": console,
        "box": box,
        "role": role,
        "can_edit": _can_edit(role),
        "status": status,
        "wans": wans,
        "addresses": box_addresses(box=box),
        "tunnel": box_tunnel_status(box_id=box.pk),
        "events": _events(box),
        "commands": commands,
        "commands_open": any(command.is_open for command in commands),
        "firmware": _firmware(box),
        "policy_form": WanPolicyForm(
            initial={
                "mode": (box.wan_policy or {}).get("mode", WanMode.AGGREGATE),
                "download_kbps": (box.wan_policy or {}).get("download_kbps"),
                "upload_kbps": (box.wan_policy or {}).get("upload_kbps"),
            },
            interfaces=_policy_interfaces(box, wans),
        ),
        "rename_form": BoxRenameForm(initial={"name": box.name, "tags": " ".join(box.tags)}),
        "firmware_form": FirmwareSettingsForm(initial={"auto_upgrade": box.auto_upgrade}),
        "postpone_form": PostponeForm(),
        "command_form": CommandForm(wans=wans),
        "box_url": reverse("frontend:console_box" if console else "frontend:box", args=[box.pk]),
    }


@login_required
@require_GET
@page_errors
def box_page(request: HttpRequest, box_id: str) -> HttpResponse:
    """Everything about one box, live."""
    box = box_for(request.user, box_id, Role.VIEWER)
    return render(request, "frontend/box/page.html", box_context(request, box))


@login_required
@require_GET
@page_errors
def box_status_fragment(request: HttpRequest, box_id: str) -> HttpResponse:
    box = box_for(request.user, box_id, Role.VIEWER)
    status, wans = box_live_status(box_id=box.pk)
    return render(request, "frontend/box/_status.html", {"box": box, "status": status, "wans": wans})


@login_required
@require_GET
@page_errors
def box_config_fragment(request: HttpRequest, box_id: str) -> HttpResponse:
    """Whether the box has applied the desired configuration (polled while it has not)."""
    box = box_for(request.user, box_id, Role.VIEWER)
    return render(request, "frontend/box/_config_state.html", {"box": box})


@login_required
@require_GET
@page_errors
def box_events_fragment(request: HttpRequest, box_id: str) -> HttpResponse:
    box = box_for(request.user, box_id, Role.VIEWER)
    return render(request, "frontend/box/_events.html", {"box": box, "events": _events(box)})


@login_required
@require_GET
@page_errors
def box_commands_fragment(request: HttpRequest, box_id: str) -> HttpResponse:
    box = box_for(request.user, box_id, Role.VIEWER)
    commands = _commands(box)
    return render(
        request,
        "frontend/box/_commands.html",
        {
            "box": box,
            "commands": commands,
            "commands_open": any(command.is_open for command in commands),
        },
    )


def _back(request: HttpRequest, box: Box, anchor: str) -> HttpResponse:
    console = request.POST.get("console") == "1" and is_staff(request.user)
    url = reverse("frontend:console_box" if console else "frontend:box", args=[box.pk])
    return redirect(f"{url}#{anchor}")


@login_required
@require_POST
@page_errors
def box_policy_update(request: HttpRequest, box_id: str) -> HttpResponse:
    """Save the WAN policy; the page then shows "waiting for the box to apply" until it has."""
    actor = Actor.from_request(request)
    box = box_visible(actor, box_id)
    box_settings_authorize(actor=actor, box=box)
    form = WanPolicyForm(request.POST, interfaces=_policy_interfaces(box, box_wans(box_id=box.pk)))
    if form.is_valid():
        with errors_on_form(form):
            box = box_set_wan_policy(
                actor=actor,
                box=box,
                mode=form.cleaned_data["mode"],
                interfaces=form.policy_interfaces(),
                download_kbps=form.cleaned_data.get("download_kbps"),
                upload_kbps=form.cleaned_data.get("upload_kbps"),
            )
    status = 400 if form.errors else 200
    if request.headers.get("HX-Request"):
        return render(
            request,
            "frontend/box/_policy.html",
            {"box": box, "policy_form": form, "can_edit": True, "saved": not form.errors},
            status=status,
        )
    if form.errors:
        messages.error(request, "The WAN policy was not saved: " + "; ".join(_error_texts(form)))
    else:
        messages.success(request, "WAN policy saved. Waiting for the box to apply it.")
    return _back(request, box, "policy")


def _error_texts(form: Any) -> list[str]:
    return [
        f"{'' if field == '__all__' else field + ': '}{error}"
        for field, errors in form.errors.items()
        for error in errors
    ]


@login_required
@require_POST
@page_errors
def box_rename(request: HttpRequest, box_id: str) -> HttpResponse:
    actor = Actor.from_request(request)
    box = box_visible(actor, box_id)
    box_settings_authorize(actor=actor, box=box)
    form = BoxRenameForm(request.POST)
    if form.is_valid():
        with errors_on_form(form):
            box_update(actor=actor, box=box, name=form.cleaned_data["name"], tags=form.cleaned_tags())
    if form.errors:
        messages.error(request, "Not saved: " + "; ".join(_error_texts(form)))
    else:
        messages.success(request, "Saved.")
    return _back(request, box, "overview")


@login_required
@require_POST
@page_errors
def box_command_create(request: HttpRequest, box_id: str) -> HttpResponse:
    """Send a command (reboot, diagnostics, speed test...) to the box."""
    actor = Actor.from_request(request)
    box = box_visible(actor, box_id)
    form = CommandForm(request.POST, wans=box_wans(box_id=box.pk))
    if form.is_valid():
        with errors_on_form(form):
            command = command_create(
                actor=actor,
                box=box,
                kind=form.cleaned_data["kind"],
                params=form.command_params(),
            )
            messages.success(request, f"{command.get_kind_display()} sent to {box.name or box.serial}.")
    if form.errors:
        messages.error(request, "Not sent: " + "; ".join(_error_texts(form)))
    return _back(request, box, "commands")


@login_required
@require_POST
@page_errors
def box_firmware_settings(request: HttpRequest, box_id: str) -> HttpResponse:
    """Automatic upgrades on or off (the rollout engine's upgrade policy)."""
    actor = Actor.from_request(request)
    box = box_visible(actor, box_id)
    form = FirmwareSettingsForm(request.POST)
    if form.is_valid():
        with errors_on_form(form):
            box_upgrade_policy_update(actor=actor, box=box, auto_upgrade=form.cleaned_data["auto_upgrade"])
    if form.errors:
        messages.error(request, "Not saved: " + "; ".join(_error_texts(form)))
    else:
        messages.success(request, "Firmware settings saved.")
    return _back(request, box, "firmware")


@login_required
@require_POST
@page_errors
def box_firmware_action(request: HttpRequest, box_id: str, action: str) -> HttpResponse:
    """Upgrade now, or postpone the waiting upgrade by a few days."""

    actor = Actor.from_request(request)
    box = box_visible(actor, box_id)
    with errors_as_message(request):
        if action == "upgrade":
            upgrade = box_upgrade_now(actor=actor, box=box)
            messages.success(
                request, f"Upgrade to {upgrade.release.version} sent: the box installs it and restarts."
            )
        elif action == "postpone":
            form = PostponeForm(request.POST)
            if not form.is_valid():
                raise InvalidInput("choose how long to postpone", field="days")
            waiting = box_waiting_upgrade(box=box)
            if waiting is None:
                raise Conflict("there is no waiting upgrade to postpone")
            upgrade_postpone(
                actor=actor, upgrade=waiting, until=timezone.now() + timedelta(days=form.cleaned_data["days"])
            )
            messages.success(request, f"Upgrade postponed by {form.cleaned_data['days']} day(s).")
        else:
            raise Http404("unknown firmware action")
    return _back(request, box, "firmware")
