"""The box page (customer portal and, with staff actions, the support console) and its fragments.

Fragments are small GETs that htmx swaps in: status, configuration state, events, commands. The
page's script refreshes them when the people websocket (``ws/live/``) says something changed, and
polls the configuration state while the box has not applied the desired configuration.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from fleet.commands.choices import CommandKind, CommandState
from fleet.commands.selectors import command_list_for_box
from fleet.commands.services import command_create
from fleet.core.access import ROLE_RANK, box_for, box_visible, is_staff, require_role
from fleet.core.audit import Actor
from fleet.core.choices import Role, WanMode
from fleet.core.errors import Conflict, NotFound
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
from frontend.box_links import policy_links, unreported_links, wan_rows
from frontend.command_output import speed_test_history, speed_test_latest
from frontend.errors import errors_on_form, form_error_summary, page_errors
from frontend.forms import (
    WEEKDAYS,
    BoxRenameForm,
    CommandForm,
    FirmwareSettingsForm,
    PostponeForm,
    UpgradeNowForm,
    WanPolicyForm,
)
from frontend.views.backups import backups_context
from frontend.views.remote_access import remote_access_context
from otbcompat.selectors import STATE_LABELS, box_otb_device, device_state
from provisioning.selectors.boxes import box_addresses
from provisioning.selectors.infrastructure import box_tunnel_status
from provisioning.services.configuration import box_set_wan_policy, box_settings_authorize, box_update

EVENTS_SHOWN = 30
COMMANDS_SHOWN = 15
SPEED_TESTS_SHOWN = 100  # the speed-test chart's points


def _role(request: HttpRequest, box: Box) -> str:
    if is_staff(request.user):
        return Role.OWNER
    if box.organization_id is None:
        raise NotFound("box not found")
    return require_role(request.user, box.organization_id, Role.VIEWER)


def _can_edit(role: str) -> bool:
    return ROLE_RANK[Role(role)] >= ROLE_RANK[Role.ADMIN]


def _mode_label(box: Box) -> str:
    mode = (box.wan_policy or {}).get("mode", WanMode.AGGREGATE)
    return str(WanMode(mode).label) if mode in WanMode.values else str(mode)


def _events(box: Box) -> list[Any]:
    return list(event_list(box_id=box.pk)[:EVENTS_SHOWN])


def _commands(box: Box) -> list[Any]:
    return list(command_list_for_box(box_id=box.pk)[:COMMANDS_SHOWN])


def _commands_context(box: Box, wans: list[Any]) -> dict[str, Any]:
    """The commands list with the speed tests' latest figures and history (its chart's data)."""
    commands = _commands(box)
    tests = command_list_for_box(
        box_id=box.pk, filters={"kind": CommandKind.SPEED_TEST, "state": CommandState.SUCCEEDED}
    )[:SPEED_TESTS_SHOWN]
    labels = {wan.iface: wan.label for wan in wans if wan.label}
    history = speed_test_history(tests)
    return {
        "commands": commands,
        "commands_open": any(command.is_open for command in commands),
        "wan_labels": labels,
        # in an attribute, not a <script> block: htmx drops scripts from swapped fragments
        "speed_history_json": json.dumps(history),
        "speed_latest": speed_test_latest(history, labels),
    }


def _firmware(box: Box) -> dict[str, Any]:
    """What the rollout engine says about this box's firmware: latest release, open upgrade, window."""

    upgrades = list(box_upgrades(box=box)[:5])
    open_upgrade = next((upgrade for upgrade in upgrades if upgrade.state in OPEN_UPGRADE_STATES), None)
    latest = latest_release_for(box) if box.organization_id else None
    policy = box_upgrade_policy(box=box)
    days = sorted(policy.window_days)
    return {
        "latest_version": latest.version if latest else "",
        "upgrade_available": bool(latest and latest.version != box.firmware_version),
        "open_upgrade": open_upgrade,
        "can_postpone": open_upgrade is not None and open_upgrade.state in WAITING_STATES,
        "recent_upgrades": upgrades,
        "policy": policy,
        "window_days_text": "every day"
        if len(days) == len(WEEKDAYS)
        else ", ".join(label for value, label in WEEKDAYS if value in days),
    }


def _firmware_settings_form(box: Box, data: Any = None) -> FirmwareSettingsForm:
    policy = box_upgrade_policy(box=box)
    return FirmwareSettingsForm(
        data,
        initial={
            "auto_upgrade": box.auto_upgrade,
            "window_days": list(policy.window_days),
            "window_start": policy.window_start,
            "window_end": policy.window_end,
        },
    )


def _firmware_panel(
    box: Box,
    *,
    console: bool,
    settings_form: FirmwareSettingsForm | None = None,
    upgrade_form: UpgradeNowForm | None = None,
    postpone_form: PostponeForm | None = None,
    note: str = "",
) -> dict[str, Any]:
    """What the firmware panel shows: the engine's view of the box and its three forms."""
    firmware = _firmware(box)
    return {
        "box": box,
        "console": console,
        "firmware": firmware,
        "firmware_form": settings_form or _firmware_settings_form(box),
        "upgrade_form": upgrade_form
        or UpgradeNowForm(version=firmware["latest_version"], auto_id="id_upgrade_%s"),
        "postpone_form": postpone_form or PostponeForm(),
        "firmware_note": note,
    }


def _otb(box: Box) -> dict[str, Any]:
    """The stock OverTheBox device of an OTB box and its binding state (pending, linked, active)."""
    device = box_otb_device(box=box)
    state = device_state(device) if device is not None else ""
    return {"otb_device": device, "otb_state": state, "otb_state_label": STATE_LABELS.get(state, "")}


def box_context(request: HttpRequest, box: Box, *, console: bool = False) -> dict[str, Any]:
    role = _role(request, box)
    status, wans = box_live_status(box_id=box.pk)
    return {
        "nav": "console" if console else "boxes",
        "console": console,
        "box": box,
        "role": role,
        "can_edit": _can_edit(role),
        "status": status,
        "wans": wans,
        "wan_rows": wan_rows(box, wans),
        "addresses": box_addresses(box=box),
        "tunnel": box_tunnel_status(box_id=box.pk),
        "events": _events(box),
        **_commands_context(box, wans),
        "policy_form": WanPolicyForm(
            initial={
                "mode": (box.wan_policy or {}).get("mode", WanMode.AGGREGATE),
                "download_kbps": (box.wan_policy or {}).get("download_kbps"),
                "upload_kbps": (box.wan_policy or {}).get("upload_kbps"),
            },
            interfaces=policy_links(box, wans),
        ),
        "rename_form": BoxRenameForm(
            initial={"name": box.name, "tags": " ".join(box.tags)}, auto_id="id_rename_%s"
        ),
        "unreported": unreported_links(box, wans),
        "policy_mode_label": _mode_label(box),
        "command_form": CommandForm(wans=wans),
        "box_url": reverse("frontend:console_box" if console else "frontend:box", args=[box.pk]),
        **backups_context(box),
        **remote_access_context(request, box),
        **_firmware_panel(box, console=console),
        **_otb(box),
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
    return render(
        request,
        "frontend/box/_status.html",
        {"box": box, "status": status, "wans": wans, "wan_rows": wan_rows(box, wans), **_otb(box)},
    )


@login_required
@require_GET
@page_errors
def box_config_fragment(request: HttpRequest, box_id: str) -> HttpResponse:
    """Whether the box has applied the desired configuration (polled while it has not)."""
    box = box_for(request.user, box_id, Role.VIEWER)
    unreported = unreported_links(box, box_wans(box_id=box.pk))
    return render(request, "frontend/box/_config_state.html", {"box": box, "unreported": unreported})


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
    context = {"box": box, **_commands_context(box, box_wans(box_id=box.pk))}
    return render(request, "frontend/box/_commands.html", context)


def _console(request: HttpRequest) -> bool:
    return request.POST.get("console") == "1" and is_staff(request.user)


def _back(request: HttpRequest, box: Box, anchor: str) -> HttpResponse:
    """Without script, a form posts the whole page: back to the box page, at the form's section."""
    url = reverse("frontend:console_box" if _console(request) else "frontend:box", args=[box.pk])
    return redirect(f"{url}#{anchor}")


def _htmx(request: HttpRequest) -> bool:
    return bool(request.headers.get("HX-Request"))


@login_required
@require_POST
@page_errors
def box_policy_update(request: HttpRequest, box_id: str) -> HttpResponse:
    """Save the WAN policy; the page then shows "waiting for the box to apply" until it has."""
    actor = Actor.from_request(request)
    box = box_visible(actor, box_id)
    box_settings_authorize(actor=actor, box=box)
    wans = box_wans(box_id=box.pk)
    form = WanPolicyForm(request.POST, interfaces=policy_links(box, wans))
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
    if _htmx(request):
        return render(
            request,
            "frontend/box/_policy.html",
            {
                "box": box,
                "policy_form": form,
                "can_edit": True,
                "saved": not form.errors,
                "console": _console(request),
                "unreported": unreported_links(box, wans),
            },
            status=status,
        )
    if form.errors:
        messages.error(request, "The WAN policy was not saved. " + form_error_summary(form))
    else:
        messages.success(request, "WAN policy saved. Waiting for the box to apply it.")
    return _back(request, box, "policy")


@login_required
@require_POST
@page_errors
def box_rename(request: HttpRequest, box_id: str) -> HttpResponse:
    actor = Actor.from_request(request)
    box = box_visible(actor, box_id)
    box_settings_authorize(actor=actor, box=box)
    form = BoxRenameForm(request.POST, auto_id="id_rename_%s")
    if form.is_valid():
        with errors_on_form(form):
            box_update(actor=actor, box=box, name=form.cleaned_data["name"], tags=form.cleaned_tags())
    if form.errors and _htmx(request):
        context = {"box": box, "rename_form": form, "console": _console(request)}
        return render(request, "frontend/box/_rename.html", context, status=400)
    if form.errors:
        messages.error(request, "Not saved. " + form_error_summary(form))
        return _back(request, box, "overview")
    messages.success(request, "Name and tags saved.")
    if _htmx(request):
        # the name is in the page's title and heading: reload it (the message shows there)
        response = HttpResponse(status=200)
        response["HX-Refresh"] = "true"
        return response
    return _back(request, box, "overview")


@login_required
@require_POST
@page_errors
def box_command_create(request: HttpRequest, box_id: str) -> HttpResponse:
    """Send a command (diagnostics, speed test, reboot...) to the box; a disruptive one only once
    the person has confirmed it (``CommandForm``)."""
    actor = Actor.from_request(request)
    box = box_visible(actor, box_id)
    wans = box_wans(box_id=box.pk)
    form = CommandForm(request.POST, wans=wans)
    sent = ""
    if form.is_valid():
        with errors_on_form(form):
            command = command_create(
                actor=actor,
                box=box,
                kind=form.cleaned_data["kind"],
                params=form.command_params(),
            )
            sent = f"{command.get_kind_display()} sent to {box.name or box.serial}."
    if _htmx(request):
        context = {
            "box": box,
            "command_form": form if form.errors else CommandForm(wans=wans),
            "command_sent": sent,
            "console": _console(request),
            "can_edit": True,
            # the list below the form shows the new command at once (an out-of-band swap)
            **_commands_context(box, wans),
            "commands_oob": bool(sent),
        }
        return render(request, "frontend/box/_command_form.html", context, status=400 if form.errors else 200)
    if form.errors:
        messages.error(request, "Not sent. " + form_error_summary(form))
    else:
        messages.success(request, sent)
    return _back(request, box, "commands")


def _firmware_answer(request: HttpRequest, box: Box, *, ok: bool, note: str, **forms: Any) -> HttpResponse:
    """The firmware panel again (htmx: with the errors next to the fields, or the note), or back to
    the page with a message."""
    if _htmx(request):
        box.refresh_from_db()
        context = _firmware_panel(box, console=_console(request), note=note if ok else "", **forms)
        context["can_edit"] = True
        return render(request, "frontend/box/_firmware.html", context, status=200 if ok else 400)
    if ok:
        messages.success(request, note)
    else:
        form = next(form for form in forms.values() if form is not None and form.errors)
        messages.error(request, "Not done. " + form_error_summary(form))
    return _back(request, box, "firmware")


@login_required
@require_POST
@page_errors
def box_firmware_settings(request: HttpRequest, box_id: str) -> HttpResponse:
    """Automatic upgrades on or off, and the maintenance window (the rollout engine's upgrade policy)."""
    actor = Actor.from_request(request)
    box = box_visible(actor, box_id)
    form = _firmware_settings_form(box, request.POST)
    if form.is_valid():
        data = form.cleaned_data
        with errors_on_form(form):
            box_upgrade_policy_update(
                actor=actor,
                box=box,
                auto_upgrade=data["auto_upgrade"],
                window_days=list(data["window_days"]),
                window_start=data["window_start"],
                window_end=data["window_end"],
            )
    return _firmware_answer(
        request, box, ok=not form.errors, note="Firmware settings saved.", settings_form=form
    )


@login_required
@require_POST
@page_errors
def box_firmware_action(request: HttpRequest, box_id: str, action: str) -> HttpResponse:
    """Upgrade now (once confirmed: it restarts the box), or postpone the waiting upgrade."""

    actor = Actor.from_request(request)
    box = box_visible(actor, box_id)
    if action == "upgrade":
        latest = latest_release_for(box) if box.organization_id else None
        upgrade_form = UpgradeNowForm(
            request.POST, version=latest.version if latest else "", auto_id="id_upgrade_%s"
        )
        note = ""
        if upgrade_form.is_valid():
            with errors_on_form(upgrade_form):
                upgrade = box_upgrade_now(actor=actor, box=box)
                note = f"Upgrade to {upgrade.release.version} sent: the box installs it and restarts."
        return _firmware_answer(
            request, box, ok=not upgrade_form.errors, note=note, upgrade_form=upgrade_form
        )
    if action == "postpone":
        postpone_form = PostponeForm(request.POST)
        note = ""
        if postpone_form.is_valid():
            days = postpone_form.cleaned_data["days"]
            with errors_on_form(postpone_form):
                waiting = box_waiting_upgrade(box=box)
                if waiting is None:
                    raise Conflict("There is no waiting upgrade to postpone.", field="days")
                upgrade_postpone(actor=actor, upgrade=waiting, until=timezone.now() + timedelta(days=days))
                note = f"Upgrade postponed by {days} day{'s' if days > 1 else ''}."
        return _firmware_answer(
            request, box, ok=not postpone_form.errors, note=note, postpone_form=postpone_form
        )
    raise Http404("unknown firmware action")
