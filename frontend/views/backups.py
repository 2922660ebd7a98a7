"""Configuration backups on the box page: the list (a section of the page), one backup with its files,
the comparison of two backups, the tar.gz, and restore and delete once confirmed.

Backups are made by the ``backup`` command (the page's command form); everything here calls the
services of ``fleet.commands.backups``, as the API does.
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from fleet.commands.backup_apis import backup_archive_response
from fleet.commands.backups import (
    backup_delete,
    backup_diff,
    backup_files,
    backup_get_for_box,
    backup_list_for_box,
    backup_restore,
)
from fleet.commands.models import Backup
from fleet.core.access import ROLE_RANK, box_for, box_visible, is_staff, require_role
from fleet.core.audit import Actor
from fleet.core.choices import Role
from fleet.core.errors import InvalidInput
from fleet.core.models import Box
from frontend.errors import errors_on_form, form_error_summary, page_errors
from frontend.forms import BackupActionForm, BackupCompareForm

BACKUPS_SHOWN = 20


def box_backups(box: Box) -> list[Backup]:
    """The newest backups of a box, for its page."""
    return list(backup_list_for_box(box_id=box.pk)[:BACKUPS_SHOWN])


def _can_edit(request: HttpRequest, box: Box) -> bool:
    if is_staff(request.user):
        return True
    if box.organization_id is None:
        return False
    role = require_role(request.user, box.organization_id, Role.VIEWER)
    return ROLE_RANK[Role(role)] >= ROLE_RANK[Role.ADMIN]


def _box_url(box: Box, anchor: str = "backups") -> str:
    return f"{reverse('frontend:box', args=[box.pk])}#{anchor}"


@login_required
@require_GET
@page_errors
def backup_page(request: HttpRequest, box_id: str, backup_id: str) -> HttpResponse:
    """One backup: its files with their text, the comparison with another one, restore and delete."""
    box = box_for(request.user, box_id, Role.VIEWER)
    backup = backup_get_for_box(box_id=box.pk, backup_id=backup_id)
    others = [other for other in box_backups(box) if other.pk != backup.pk]
    context = {
        "nav": "boxes",
        "box": box,
        "backup": backup,
        "files": backup_files(backup=backup),
        "can_edit": _can_edit(request, box),
        "compare_form": BackupCompareForm(backups=others, initial={"new": backup.pk}),
        "restore_form": BackupActionForm(action="restore"),
        "delete_form": BackupActionForm(action="delete"),
    }
    return render(request, "frontend/box/backup.html", context)


@login_required
@require_GET
@page_errors
def backup_diff_page(request: HttpRequest, box_id: str) -> HttpResponse:
    """Two backups of the box compared file by file (``?old=…&new=…``)."""
    box = box_for(request.user, box_id, Role.VIEWER)
    old_id, new_id = request.GET.get("old", ""), request.GET.get("new", "")
    old = backup_get_for_box(box_id=box.pk, backup_id=old_id)
    new = backup_get_for_box(box_id=box.pk, backup_id=new_id)
    if old.created_at > new.created_at:
        old, new = new, old
    files = backup_diff(old=old, new=new)
    context = {
        "nav": "boxes",
        "box": box,
        "old": old,
        "new": new,
        "files": [item for item in files if item["status"] != "unchanged"],
        "unchanged": sum(1 for item in files if item["status"] == "unchanged"),
    }
    return render(request, "frontend/box/backup_diff.html", context)


@login_required
@require_GET
@page_errors
def backup_archive(request: HttpRequest, box_id: str, backup_id: str) -> HttpResponse:
    """The backup as a tar.gz download."""
    box = box_for(request.user, box_id, Role.VIEWER)
    return backup_archive_response(backup_get_for_box(box_id=box.pk, backup_id=backup_id))


@login_required
@require_POST
@page_errors
def backup_action(request: HttpRequest, box_id: str, backup_id: str, action: str) -> HttpResponse:
    """Restore (queues a ``restore`` command) or delete a backup, once the person ticked ``confirm``."""
    actor = Actor.from_request(request)
    box = box_visible(actor, box_id)
    backup = backup_get_for_box(box_id=box.pk, backup_id=backup_id)
    if action not in ("restore", "delete"):
        raise InvalidInput("unknown backup action", field="action")
    form = BackupActionForm(request.POST, action=action)
    if form.is_valid():
        with errors_on_form(form):
            if action == "restore":
                backup_restore(actor=actor, backup=backup)
                messages.success(request, "Restore sent: the box writes the backup's files back.")
                return redirect(_box_url(box, "commands"))
            backup_delete(actor=actor, backup=backup)
            messages.success(request, "Backup deleted.")
            return redirect(_box_url(box))
    messages.error(request, "Not done. " + form_error_summary(form))
    return redirect(reverse("frontend:box_backup", args=[box.pk, backup.pk]))


def backups_context(box: Box) -> dict[str, Any]:
    """What the box page's backups section shows."""
    backups = box_backups(box)
    return {"backups": backups, "backup_compare_form": BackupCompareForm(backups=backups)}
