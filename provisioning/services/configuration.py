"""The box's desired configuration: the settings a customer edits (name, tags, WAN policy), the config
hash kept current whenever an input of the configuration document changes (with a doorbell to the live
session on commit), and what the box reports having applied.

Every public function runs in ``transaction.atomic`` and audits the change in the same transaction; what
a customer edits needs the admin role in the box's organisation (``fleet.core.access.authorize``)."""

from __future__ import annotations

import re
from typing import Any

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from fleet.core.access import authorize
from fleet.core.audit import Actor, audit_record
from fleet.core.choices import EventKind, Role
from fleet.core.doorbells import doorbell_config_changed
from fleet.core.errors import InvalidInput
from fleet.core.events import event_record
from fleet.core.models import Box
from provisioning.port_forwards import port_forwards_validate
from provisioning.selectors.configuration import box_config_document, boxes_config_hashes
from provisioning.wan_policy import wan_policy_validate

APPLY_ERROR_MAX_BYTES = 4096
MAX_TAGS = 20
TAG_RE = re.compile(r"[A-Za-z0-9._:-]{1,40}")


def config_changed_on_commit(changes: list[tuple[Any, str]]) -> None:
    """Ring the live session of each (box id, new config hash) once the transaction commits."""
    if not changes:
        return

    def ring() -> None:
        for box_id, config_hash in changes:
            doorbell_config_changed(box_id, config_hash)

    transaction.on_commit(ring)


@transaction.atomic
def box_config_refresh(*, box: Box) -> str:
    """Recompute and store the box's config hash; when it changed, ring the live doorbell on commit."""
    config_hash: str = box_config_document(box=box)["config_hash"]
    if box.config_hash != config_hash:
        box.config_hash = config_hash
        Box.objects.filter(pk=box.pk).update(config_hash=config_hash, updated_at=timezone.now())
        config_changed_on_commit([(box.pk, config_hash)])
    return config_hash


@transaction.atomic
def boxes_config_refresh(*, boxes: QuerySet[Box]) -> int:
    """Recompute the config hash of many boxes in a constant number of queries; returns how many
    changed. Each changed box gets a doorbell on commit."""
    hashes = boxes_config_hashes(boxes=boxes)
    current = dict(Box.objects.filter(pk__in=list(hashes)).values_list("pk", "config_hash"))
    changed = [Box(pk=pk, config_hash=value) for pk, value in hashes.items() if current.get(pk) != value]
    if changed:
        Box.objects.bulk_update(changed, ["config_hash"], batch_size=500)
        config_changed_on_commit([(box.pk, box.config_hash) for box in changed])
    return len(changed)


# -- customer settings --------------------------------------------------------------------------


def box_settings_authorize(*, actor: Actor, box: Box) -> None:
    """Who may change a box's settings (name, tags, WAN policy): admins of its organisation (staff and
    the system too). ``box_update`` and ``box_set_wan_policy`` check it at their top; a page checks it
    before reading its form, so a refused person gets 403, not the form's errors."""
    authorize(actor, organization_id=box.organization_id, minimum=Role.ADMIN)


def _tags_clean(tags: Any) -> list[str]:
    if not isinstance(tags, list):
        raise InvalidInput("Tags are a list of texts.", field="tags")
    if len(tags) > MAX_TAGS:
        raise InvalidInput(f"A box has at most {MAX_TAGS} tags.", field="tags")
    cleaned: list[str] = []
    for index, tag in enumerate(tags):
        if not isinstance(tag, str) or not TAG_RE.fullmatch(tag):
            raise InvalidInput(
                f"The tag {str(tag)[:50]!r} is not valid: use 1 to 40 characters from A-Z a-z 0-9 . _ : -.",
                field=f"tags[{index}]",
            )
        if tag not in cleaned:
            cleaned.append(tag)
    return cleaned


@transaction.atomic
def box_update(*, actor: Actor, box: Box, name: str | None = None, tags: list[str] | None = None) -> Box:
    """Rename a box or replace its tags. The name is part of the configuration document, so a rename
    refreshes the config hash. Needs the admin role in the box's organisation."""
    box = Box.objects.select_for_update().get(pk=box.pk)
    box_settings_authorize(actor=actor, box=box)
    before = {"name": box.name, "tags": list(box.tags)}
    fields: list[str] = []
    if name is not None:
        if not isinstance(name, str) or len(name.strip()) > 100 or not name.isprintable():
            raise InvalidInput("Give a name of at most 100 printable characters.", field="name")
        box.name = name.strip()
        fields.append("name")
    if tags is not None:
        box.tags = _tags_clean(tags)
        fields.append("tags")
    if fields and {"name": box.name, "tags": box.tags} != before:
        box.save(update_fields=[*fields, "updated_at"])
        if box.name != before["name"]:
            box_config_refresh(box=box)
        audit_record(
            actor=actor,
            action="box.update",
            box=box,
            target=box,
            before=before,
            after={"name": box.name, "tags": list(box.tags)},
        )
    return box


@transaction.atomic
def box_set_wan_policy(
    *,
    actor: Actor,
    box: Box,
    mode: str,
    interfaces: list[dict[str, Any]],
    download_kbps: int | None = None,
    upload_kbps: int | None = None,
) -> Box:
    """Replace the box's WAN policy (validated, see ``provisioning.wan_policy``; a box-level
    ``download_kbps``/``upload_kbps`` left out is no limit) and recompute its configuration hash so
    the agent and its server's gateway pick it up. Needs the admin role in the box's organisation."""
    box = Box.objects.select_for_update().get(pk=box.pk)
    box_settings_authorize(actor=actor, box=box)
    policy = wan_policy_validate(
        mode=mode, interfaces=interfaces, download_kbps=download_kbps, upload_kbps=upload_kbps
    )
    before = box.wan_policy
    box.wan_policy = policy
    box.save(update_fields=["wan_policy", "updated_at"])
    box_config_refresh(box=box)
    audit_record(actor=actor, action="box.set_wan_policy", box=box, target=box, before=before, after=policy)
    return box


@transaction.atomic
def box_set_port_forwards(*, actor: Actor, box: Box, port_forwards: list[dict[str, Any]]) -> Box:
    """Replace the box's port forwards (validated, see ``provisioning.port_forwards``) and recompute its
    configuration hash so the agent applies them. Needs the admin role in the box's organisation."""
    box = Box.objects.select_for_update().get(pk=box.pk)
    box_settings_authorize(actor=actor, box=box)
    forwards = port_forwards_validate(port_forwards)
    before = box.port_forwards
    if forwards != before:
        box.port_forwards = forwards
        box.save(update_fields=["port_forwards", "updated_at"])
        box_config_refresh(box=box)
        audit_record(
            actor=actor,
            action="box.set_port_forwards",
            box=box,
            target=box,
            before={"port_forwards": before},
            after={"port_forwards": forwards},
        )
    return box


# -- configuration state reported by the box ------------------------------------------------------


@transaction.atomic
def box_config_applied(*, box: Box, config_hash: str, error: str | None = None) -> Box:
    """Record what the box reports having applied, with a ``config_applied``/``config_failed`` event
    on its timeline in the same transaction.

    ``applied_config_hash`` is the last configuration the box applied successfully: a failure keeps
    it, records the error (capped at 4 KiB) and so keeps the box drifting (``Box.config_drift``);
    a success clears the error. Only ``applied_*``/``apply_error`` are written, so a concurrent
    config change is never lost.
    """
    if not isinstance(config_hash, str) or not re.fullmatch(r"[0-9a-fA-F]{1,64}", config_hash):
        raise InvalidInput("config_hash must be the hex hash of a configuration", field="config_hash")
    if error is not None and not isinstance(error, str):
        raise InvalidInput("error must be text or null", field="error")
    error_text = (error or "").encode("utf-8", "replace")[:APPLY_ERROR_MAX_BYTES].decode("utf-8", "ignore")
    reported = config_hash.lower()
    box = Box.objects.select_for_update().get(pk=box.pk)
    before = {"applied_config_hash": box.applied_config_hash, "apply_error": box.apply_error or None}
    if error_text:
        changed = box.apply_error != error_text
        box.apply_error = error_text
        box.save(update_fields=["apply_error"])
    else:
        changed = box.applied_config_hash != reported or bool(box.apply_error)
        box.applied_config_hash = reported
        box.apply_error = ""
        box.applied_at = timezone.now()
        box.save(update_fields=["applied_config_hash", "apply_error", "applied_at"])
    if changed:
        audit_record(
            actor=Actor(label=f"box:{box.serial}"),
            action="box.config_applied",
            box=box,
            target=box,
            before=before,
            after={"applied_config_hash": box.applied_config_hash, "apply_error": error_text or None},
        )
        event_record(
            box_id=box.pk,
            kind=EventKind.CONFIG_FAILED if error_text else EventKind.CONFIG_APPLIED,
            data={"config_hash": reported, "error": error_text or None},
            organization_id=box.organization_id,
        )
    return box
