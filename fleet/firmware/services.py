"""Writes for releases, rollouts, upgrade policies and customers' upgrade requests.

Every public function is the one path for its change (API views, admin actions and the management
commands all call these), authorises its actor at its top (``fleet.core.access``: releases and
rollouts are for staff, a box's upgrades for the admins of its organisation), runs in one
transaction, records an audit entry, and queues outside effects (the rollout task, doorbells) with
``transaction.on_commit``. The periodic engine that
advances rollouts is in ``fleet.firmware.engine``.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import re
import uuid
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from django.conf import settings
from django.core.files.base import File
from django.db import connection, transaction
from django.db.models import F, QuerySet
from django.utils import timezone

from fleet.core.access import authorize, authorize_staff
from fleet.core.audit import Actor, audit_record
from fleet.core.background import task_queue
from fleet.core.choices import BoxState, ReleaseChannel, Role
from fleet.core.errors import Conflict, InvalidInput
from fleet.core.models import Box
from fleet.firmware import signing
from fleet.firmware.choices import (
    ACTIVE_ROLLOUT_STATES,
    FAILURE_STATES,
    IN_FLIGHT_STATES,
    OPEN_STATES,
    WAITING_STATES,
    ReleaseState,
    RolloutAction,
    RolloutState,
    UpgradeState,
)
from fleet.firmware.delivery import commands_cancel_unstarted
from fleet.firmware.engine import rollout_mark_paused, upgrades_dispatch_standalone
from fleet.firmware.models import DEFAULT_WINDOW_DAYS, BoxUpgradePolicy, Release, Rollout, Upgrade
from fleet.firmware.selectors import rollout_failure_counts
from fleet.firmware.targeting import CHANNELS_TAKING, int_in, phases_validate, target_normalize, target_plan
from fleet.firmware.transitions import sources_of, upgrade_transition
from fleet.firmware.versions import version_key

VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
MAX_POSTPONE = dt.timedelta(days=7)


ROLLOUT_ADVANCE_TASK = "fleet.firmware.tasks.rollout_advance_task"


def _kick(rollout_id: Any) -> None:
    """Ask a worker to advance a rollout now instead of at the next beat (best effort: broker down,
    the periodic tick advances it anyway)."""
    task_queue(ROLLOUT_ADVANCE_TASK, str(rollout_id))


# --- releases -------------------------------------------------------------------------------------


def signature_decode(signature: str, *, field: str = "signature") -> bytes:
    try:
        raw = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput("must be base64", field=field) from exc
    if len(raw) != 64:
        raise InvalidInput("an ed25519 signature is 64 bytes", field=field)
    return raw


def _validate_release_fields(
    *,
    version: str | None = None,
    hardware_models: Any = None,
    channel: str | None = None,
    external_url: str | None = None,
    size: Any = None,
    sha256: str | None = None,
    signature: str | None = None,
) -> None:
    if version is not None and not VERSION_RE.match(version):
        raise InvalidInput("letters, digits and . _ + - only, at most 64", field="version")
    if hardware_models is not None and (
        not isinstance(hardware_models, list)
        or not hardware_models
        or not all(isinstance(m, str) and 0 < len(m) <= 64 for m in hardware_models)
    ):
        raise InvalidInput("a non-empty list of hardware model names", field="hardware_models")
    if channel is not None and channel not in ReleaseChannel.values:
        raise InvalidInput(f"one of {', '.join(ReleaseChannel.values)}", field="channel")
    if external_url and not (external_url.startswith("https://") or external_url.startswith("http://")):
        raise InvalidInput("must be an http(s) URL", field="external_url")
    if size is not None and (type(size) is not int or size <= 0):
        raise InvalidInput("must be a positive integer", field="size")
    if sha256 and not SHA256_RE.match(sha256):
        raise InvalidInput("64 lowercase hex digits", field="sha256")
    if signature:
        signature_decode(signature)


def release_create(
    *,
    actor: Actor,
    version: str,
    hardware_models: list[str],
    channel: str = ReleaseChannel.STABLE,
    notes: str = "",
    external_url: str = "",
    size: int | None = None,
    sha256: str = "",
    signature: str = "",
) -> Release:
    """Register a draft release. The image comes later (``release_image_upload``) unless it is
    hosted elsewhere (``external_url`` with its ``size`` and ``sha256``). Raises InvalidInput per
    field, Conflict when the version exists."""
    authorize_staff(actor)
    sha256 = (sha256 or "").lower()
    _validate_release_fields(
        version=version,
        hardware_models=hardware_models,
        channel=channel,
        external_url=external_url,
        size=size,
        sha256=sha256,
        signature=signature,
    )
    with transaction.atomic():
        if Release.objects.filter(version=version).exists():
            raise Conflict(f"release {version} already exists", field="version")
        release = Release.objects.create(
            version=version,
            hardware_models=list(dict.fromkeys(hardware_models)),
            channel=channel,
            notes=notes or "",
            external_url=external_url or "",
            size=size,
            sha256=sha256,
            signature=signature or "",
            created_by=actor.user if getattr(actor.user, "pk", None) else None,
        )
        audit_record(actor=actor, action="release.create", target=release, after=_release_audit(release))
    return release


def _release_audit(release: Release) -> dict[str, Any]:
    return {
        "version": release.version,
        "hardware_models": release.hardware_models,
        "channel": release.channel,
        "state": release.state,
        "size": release.size,
        "sha256": release.sha256,
        "external_url": release.external_url,
    }


def _locked_release(release: Release) -> Release:
    return Release.objects.select_for_update().get(pk=release.pk)


def release_update(
    *,
    actor: Actor,
    release: Release,
    notes: str | None = None,
    signature: str | None = None,
    hardware_models: list[str] | None = None,
    channel: str | None = None,
    external_url: str | None = None,
    size: int | None = None,
    sha256: str | None = None,
) -> Release:
    """Change a release. Release notes may change at any time; everything that describes the image
    only while it is a draft (a published image is immutable). Raises Conflict otherwise."""
    authorize_staff(actor)
    _validate_release_fields(
        hardware_models=hardware_models,
        channel=channel,
        external_url=external_url,
        size=size,
        sha256=(sha256 or "").lower() or None,
        signature=signature,
    )
    with transaction.atomic():
        locked = _locked_release(release)
        before = _release_audit(locked)
        image_fields = {
            "signature": signature,
            "hardware_models": hardware_models,
            "channel": channel,
            "external_url": external_url,
            "size": size,
            "sha256": sha256.lower() if sha256 is not None else None,
        }
        changes = {name: value for name, value in image_fields.items() if value is not None}
        if changes and locked.state != ReleaseState.DRAFT:
            raise Conflict("a published or withdrawn image cannot change", field=next(iter(changes)))
        if changes.get("external_url") and locked.image:
            raise InvalidInput("this release has an uploaded image", field="external_url")
        for name, value in changes.items():
            setattr(locked, name, value)
        if notes is not None:
            locked.notes = notes
        locked.save()
        audit_record(
            actor=actor, action="release.update", target=locked, before=before, after=_release_audit(locked)
        )
    return locked


def image_size_limit() -> int:
    """The largest image accepted, in bytes (``OTB_FIRMWARE_MAX_IMAGE_BYTES``)."""
    limit = settings.OTB.get("FIRMWARE_MAX_IMAGE_BYTES")
    return limit if isinstance(limit, int) and limit > 0 else 256 * 1024 * 1024


def release_image_upload(
    *, actor: Actor, release: Release, upload: Any, filename: str | None = None
) -> Release:
    """Store a draft release's image, computing its size and SHA-256 from the bytes, read in chunks
    (never whole in memory). If a SHA-256 was announced beforehand it must match, and the image may
    not exceed ``image_size_limit()`` (InvalidInput on ``image`` otherwise)."""
    authorize_staff(actor)
    digest = hashlib.sha256()
    size = 0
    limit = image_size_limit()
    for chunk in upload.chunks() if hasattr(upload, "chunks") else iter(lambda: upload.read(1 << 20), b""):
        digest.update(chunk)
        size += len(chunk)
        if size > limit:
            raise InvalidInput(f"The image is larger than the limit of {limit:,} bytes.", field="image")
    if size == 0:
        raise InvalidInput("the image is empty", field="image")
    if hasattr(upload, "seek"):
        upload.seek(0)
    sha256 = digest.hexdigest()
    with transaction.atomic():
        locked = _locked_release(release)
        if locked.state != ReleaseState.DRAFT:
            raise Conflict("only a draft release takes an image", field="image")
        if locked.external_url:
            raise InvalidInput("this release is hosted at an external URL", field="image")
        if locked.sha256 and locked.sha256 != sha256:
            raise InvalidInput(
                f"the image's sha256 is {sha256}, not the announced {locked.sha256}", field="image"
            )
        name = filename or getattr(upload, "name", None) or f"{locked.version}.img"
        if locked.image:
            locked.image.delete(save=False)
        locked.image.save(name.rsplit("/", 1)[-1], File(upload), save=False)
        locked.size = size
        locked.sha256 = sha256
        locked.save()
        audit_record(actor=actor, action="release.image_upload", target=locked, after=_release_audit(locked))
    return locked


def signature_verify(*, public_key_b64: str, signature_b64: str, chunks: Any) -> bool:
    """Whether the detached signature verifies over the image bytes (server side, cryptography)."""

    key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key_b64))
    data = b"".join(chunks)
    try:
        key.verify(base64.b64decode(signature_b64), data)
    except InvalidSignature:
        return False
    return True


def release_publish(*, actor: Actor, release: Release) -> Release:
    """Publish a draft: it needs an image (or URL), size, SHA-256 and signature. When the image is
    ours and a signing public key is configured, the signature must verify over it (so a bad
    signature is caught here, not by thousands of boxes). Raises InvalidInput naming the field."""
    authorize_staff(actor)
    with transaction.atomic():
        locked = _locked_release(release)
        if locked.state != ReleaseState.DRAFT:
            raise Conflict(f"the release is {locked.state}", field="state")
        if not locked.has_image:
            raise InvalidInput("upload the image or set an external URL first", field="image")
        for name in ("size", "sha256", "signature"):
            if not getattr(locked, name):
                raise InvalidInput(f"{name} is required to publish", field=name)
        public_key = str(settings.OTB.get("FIRMWARE_SIGNING_PUBLIC_KEY") or "")
        if public_key and locked.image:
            with locked.image.open("rb") as handle:
                chunks = iter(lambda: handle.read(1 << 20), b"")
                if not signature_verify(
                    public_key_b64=public_key, signature_b64=locked.signature, chunks=chunks
                ):
                    raise InvalidInput(
                        "the signature does not verify with the configured signing key", field="signature"
                    )
        locked.state = ReleaseState.PUBLISHED
        locked.published_at = timezone.now()
        locked.save(update_fields=["state", "published_at", "updated_at"])
        audit_record(actor=actor, action="release.publish", target=locked, after=_release_audit(locked))
    return locked


def release_withdraw(*, actor: Actor, release: Release, reason: str = "") -> Release:
    """Withdraw a published release: its image is no longer served, every active rollout of it is
    aborted and every waiting upgrade to it (customers' included) is cancelled."""
    authorize_staff(actor)
    with transaction.atomic():
        locked = _locked_release(release)
        if locked.state == ReleaseState.WITHDRAWN:
            return locked
        if locked.state != ReleaseState.PUBLISHED:
            raise Conflict("only a published release can be withdrawn", field="state")
        now = timezone.now()
        locked.state = ReleaseState.WITHDRAWN
        locked.withdrawn_at = now
        locked.withdrawn_reason = reason or ""
        locked.save(update_fields=["state", "withdrawn_at", "withdrawn_reason", "updated_at"])
        audit_record(
            actor=actor,
            action="release.withdraw",
            target=locked,
            after={"reason": reason, "state": locked.state},
        )
        for rollout in Rollout.objects.filter(
            release=locked, state__in=[RolloutState.DRAFT, *ACTIVE_ROLLOUT_STATES]
        ):
            rollout_abort(
                actor=actor, rollout=rollout, reason=f"release {locked.version} withdrawn: {reason}".strip()
            )
        _cancel_waiting(
            Upgrade.objects.filter(release=locked, rollout__isnull=True), now=now, reason="release withdrawn"
        )
    return locked


def release_add(
    *,
    actor: Actor,
    version: str,
    hardware_models: list[str],
    upload: Any,
    channel: str = ReleaseChannel.STABLE,
    notes: str = "",
    signature: str = "",
    filename: str | None = None,
) -> Release:
    """A draft release with its uploaded image (and its detached signature when given) in one
    transaction: ``release_create`` then ``release_image_upload``; nothing is kept when either
    refuses (the image is stored only after every check has passed)."""
    with transaction.atomic():
        release = release_create(
            actor=actor,
            version=version,
            hardware_models=hardware_models,
            channel=channel,
            notes=notes,
            signature=signature,
        )
        return release_image_upload(actor=actor, release=release, upload=upload, filename=filename)


def signing_key_configured() -> bool:
    """Whether the service has a signing key of its own (``OTB_FIRMWARE_SIGNING_KEY_FILE``)."""
    return bool(settings.OTB.get("FIRMWARE_SIGNING_KEY_FILE"))


def release_sign(*, actor: Actor, release: Release) -> Release:
    """Sign a draft's uploaded image with the service's key (``OTB_FIRMWARE_SIGNING_KEY_FILE``) and
    store the signature. Conflict when the service has no key, when the key is not the pair of the
    public key the boxes verify with, or when the release is no draft; InvalidInput on ``image``
    without an uploaded image (an external image is signed where it is built). Ed25519 signs the
    whole message at once, so the image is read into memory here (as ``sign_firmware`` does)."""
    authorize_staff(actor)
    path = str(settings.OTB.get("FIRMWARE_SIGNING_KEY_FILE") or "")
    if not path:
        raise Conflict(
            "The service has no signing key (OTB_FIRMWARE_SIGNING_KEY_FILE): upload a detached signature.",
            field="signature",
        )
    try:
        key = signing.private_key_load(Path(path))
    except (OSError, ValueError) as exc:
        raise Conflict(f"The service's signing key cannot be read: {exc}.", field="signature") from exc
    public_key = str(settings.OTB.get("FIRMWARE_SIGNING_PUBLIC_KEY") or "")
    if public_key and signing.public_key_b64(key) != public_key:
        raise Conflict(
            "The service's signing key is not the pair of OTB_FIRMWARE_SIGNING_PUBLIC_KEY, the key the "
            "boxes verify with: boxes would refuse the image.",
            field="signature",
        )
    with transaction.atomic():
        locked = _locked_release(release)
        if locked.state != ReleaseState.DRAFT:
            raise Conflict(f"Only a draft is signed; this release is {locked.state}.", field="state")
        if not locked.image:
            raise InvalidInput(
                "Upload the image first: only an uploaded image is signed here.", field="image"
            )
        with locked.image.open("rb") as handle:
            signature = base64.b64encode(key.sign(handle.read())).decode()
        before = _release_audit(locked)
        locked.signature = signature
        locked.save(update_fields=["signature", "updated_at"])
        audit_record(
            actor=actor,
            action="release.sign",
            target=locked,
            before=before,
            after={**_release_audit(locked), "signed_by": "service key"},
        )
    return locked


# --- rollouts -------------------------------------------------------------------------------------


def rollout_create(
    *,
    actor: Actor,
    release: Release,
    name: str,
    target: dict[str, Any] | None = None,
    phases: list[int] | None = None,
    soak_s: int = 3600,
    max_failure_pct: float = 2.0,
    max_failures: int | None = None,
    max_in_flight: int = 500,
    force: bool = False,
    health_window_s: int = 900,
    upgrade_timeout_s: int = 3600,
    offline_grace_s: int = 7 * 24 * 3600,
    start_at: dt.datetime | None = None,
) -> Rollout:
    """Create a draft rollout and its upgrade rows (skipped ones with their reason), in bulk.

    The target is evaluated once, here, with the same code as the preview; the rows are written
    with COPY, so 100,000 boxes take a few queries. Nothing is sent before ``rollout_start``.
    """
    authorize_staff(actor)
    if not isinstance(name, str) or not 0 < len(name.strip()) <= 120:
        raise InvalidInput("Give the rollout a name of 1 to 120 characters.", field="name")
    if release.state != ReleaseState.PUBLISHED:
        raise Conflict("Only a published release can be rolled out: publish it first.", field="release")
    target = target_normalize(target)
    phases = phases_validate(phases if phases is not None else [1, 10, 50, 100])
    int_in(soak_s, "soak_s", 0, 30 * 24 * 3600)
    if isinstance(max_failure_pct, bool) or not isinstance(max_failure_pct, int | float):
        raise InvalidInput("Give a percentage from 0 to 100.", field="max_failure_pct")
    if not 0 <= max_failure_pct <= 100:
        raise InvalidInput("Give a percentage from 0 to 100.", field="max_failure_pct")
    if max_failures is not None:
        int_in(max_failures, "max_failures", 0, 10_000_000)
    int_in(max_in_flight, "max_in_flight", 1, 100_000)
    int_in(health_window_s, "health_window_s", 30, 24 * 3600)
    int_in(upgrade_timeout_s, "upgrade_timeout_s", 60, 24 * 3600)
    int_in(offline_grace_s, "offline_grace_s", 0, 90 * 24 * 3600)
    if start_at is not None and timezone.is_naive(start_at):
        raise InvalidInput("Give the start time with its time zone.", field="start_at")
    with transaction.atomic():
        rollout = Rollout.objects.create(
            name=name.strip(),
            release=release,
            target=target,
            phases=phases,
            soak_s=soak_s,
            max_failure_pct=float(max_failure_pct),
            max_failures=max_failures,
            max_in_flight=max_in_flight,
            force=bool(force),
            health_window_s=health_window_s,
            upgrade_timeout_s=upgrade_timeout_s,
            offline_grace_s=offline_grace_s,
            start_at=start_at,
            created_by=actor.user if getattr(actor.user, "pk", None) else None,
        )
        plan = target_plan(
            release=release, target=target, phases=phases, force=force, rollout_key=str(rollout.pk)
        )
        _upgrades_copy(rollout, plan.rows)
        rollout.total = plan.matched
        rollout.skipped = plan.matched - plan.eligible
        rollout.phase_sizes = plan.phase_sizes
        rollout.save(update_fields=["total", "skipped", "phase_sizes"])
        audit_record(
            actor=actor,
            action="rollout.create",
            target=rollout,
            after={"release": release.version, "target": target, "phases": phases, **plan.as_preview()},
        )
    return rollout


def _upgrades_copy(rollout: Rollout, rows: list[tuple[Any, str, int, str]]) -> None:
    """Write the rollout's upgrade rows with COPY (one round trip for the whole target)."""
    if not rows:
        return
    now = timezone.now()
    table = Upgrade._meta.db_table
    columns = (
        "id, rollout_id, box_id, release_id, phase, state, reason, from_version, progress, boot_id_at_send, "
        "forced, attempt, state_changed_at, pending_at, skipped_at, created_at"
    )
    with connection.cursor() as cursor:
        raw = cursor.cursor
        with raw.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
            for box_id, firmware_version, phase, reason in rows:
                skipped = bool(reason)
                copy.write_row(
                    (
                        uuid.uuid4(),
                        rollout.pk,
                        box_id,
                        rollout.release_id,
                        max(phase, 0),
                        UpgradeState.SKIPPED if skipped else UpgradeState.PENDING,
                        reason,
                        firmware_version or "",
                        0,
                        "",
                        False,
                        1,
                        now,
                        None if skipped else now,
                        now if skipped else None,
                        now,
                    )
                )


def _locked_rollout(rollout: Rollout) -> Rollout:
    return Rollout.objects.select_for_update().select_related("release").get(pk=rollout.pk)


def _rollout_audit(rollout: Rollout) -> dict[str, Any]:
    return {
        "state": rollout.state,
        "current_phase": rollout.current_phase,
        "pause_reason": rollout.pause_reason,
    }


def rollout_start(*, actor: Actor, rollout: Rollout) -> Rollout:
    """Start a draft rollout: running now, or scheduled until its ``start_at``. The first phase
    opens at the next tick of the ``rollouts`` task (queued at once on commit)."""
    authorize_staff(actor)
    with transaction.atomic():
        locked = _locked_rollout(rollout)
        if not locked.allows(RolloutAction.START):
            raise Conflict(f"This cannot be done now: the rollout is {locked.state}.", field="state")
        if locked.release.state != ReleaseState.PUBLISHED:
            raise Conflict("The release is no longer published: it was withdrawn.", field="release")
        before = _rollout_audit(locked)
        now = timezone.now()
        locked.state = (
            RolloutState.SCHEDULED if locked.start_at and locked.start_at > now else RolloutState.RUNNING
        )
        locked.started_at = now if locked.state == RolloutState.RUNNING else None
        locked.save(update_fields=["state", "started_at", "updated_at"])
        audit_record(
            actor=actor, action="rollout.start", target=locked, before=before, after=_rollout_audit(locked)
        )
        rollout_id = locked.pk
        transaction.on_commit(lambda: _kick(rollout_id))
    return locked


def rollout_pause(*, actor: Actor, rollout: Rollout, reason: str = "") -> Rollout:
    """Stop sending new upgrades; those already in flight are still followed to their end."""
    authorize_staff(actor)
    with transaction.atomic():
        locked = _locked_rollout(rollout)
        if locked.state == RolloutState.PAUSED:
            return locked
        if not locked.allows(RolloutAction.PAUSE):
            raise Conflict(f"This cannot be done now: the rollout is {locked.state}.", field="state")
        before = _rollout_audit(locked)
        rollout_mark_paused(locked, reason=reason or f"paused by {actor.label}", now=timezone.now())
        audit_record(
            actor=actor, action="rollout.pause", target=locked, before=before, after=_rollout_audit(locked)
        )
    return locked


def rollout_resume(*, actor: Actor, rollout: Rollout) -> Rollout:
    """Resume a paused rollout. The failures counted so far are acknowledged: the failure policy
    then counts only new ones (otherwise the rollout would pause again at once)."""
    authorize_staff(actor)
    with transaction.atomic():
        locked = _locked_rollout(rollout)
        if not locked.allows(RolloutAction.RESUME):
            raise Conflict(f"This cannot be done now: the rollout is {locked.state}.", field="state")
        if locked.release.state != ReleaseState.PUBLISHED:
            raise Conflict("The release is no longer published: it was withdrawn.", field="release")
        before = _rollout_audit(locked)
        phase_failures, total_failures = rollout_failure_counts(rollout=locked)
        locked.phase_failure_baseline = phase_failures
        locked.failure_baseline = total_failures
        now = timezone.now()
        locked.state = (
            RolloutState.SCHEDULED if locked.start_at and locked.start_at > now else RolloutState.RUNNING
        )
        if locked.started_at is None and locked.state == RolloutState.RUNNING:
            locked.started_at = now
        locked.pause_reason = ""
        locked.paused_at = None
        locked.save()
        audit_record(
            actor=actor, action="rollout.resume", target=locked, before=before, after=_rollout_audit(locked)
        )
        rollout_id = locked.pk
        transaction.on_commit(lambda: _kick(rollout_id))
    return locked


def _cancel_waiting(upgrades: QuerySet[Upgrade], *, now: dt.datetime, reason: str) -> int:
    cancellable = [state for state in WAITING_STATES if state in sources_of(UpgradeState.CANCELLED)]
    return upgrades.filter(state__in=cancellable).update(
        state=UpgradeState.CANCELLED, cancelled_at=now, state_changed_at=now, reason=reason
    )


def rollout_abort(*, actor: Actor, rollout: Rollout, reason: str = "") -> Rollout:
    """End a rollout for good: waiting upgrades are cancelled, commands not yet started by their box
    are cancelled with their upgrade; upgrades a box is already running are followed to their end
    (an image half-written cannot be called back)."""
    authorize_staff(actor)
    with transaction.atomic():
        locked = _locked_rollout(rollout)
        if not locked.allows(RolloutAction.ABORT):
            raise Conflict(f"This cannot be done now: the rollout is {locked.state}.", field="state")
        before = _rollout_audit(locked)
        now = timezone.now()
        locked.state = RolloutState.ABORTED
        locked.pause_reason = (reason or f"aborted by {actor.label}")[:2000]
        locked.finished_at = now
        locked.save(update_fields=["state", "pause_reason", "finished_at", "updated_at"])
        cancelled = _cancel_waiting(locked.upgrades.all(), now=now, reason="rollout aborted")
        cancelled += _cancel_unstarted(locked.upgrades.all(), now=now, reason="rollout aborted")
        audit_record(
            actor=actor,
            action="rollout.abort",
            target=locked,
            before=before,
            after={**_rollout_audit(locked), "cancelled_upgrades": cancelled},
        )
    return locked


def _cancel_unstarted(upgrades: Any, *, now: dt.datetime, reason: str) -> int:
    sent = dict(
        upgrades.select_for_update(of=("self",))
        .filter(state=UpgradeState.SENT, command_id__isnull=False)
        .values_list("command_id", "pk")
    )
    cancelled_commands = commands_cancel_unstarted(command_ids=list(sent), now=now)
    ids = [sent[command_id] for command_id in cancelled_commands]
    return Upgrade.objects.filter(pk__in=ids, state=UpgradeState.SENT).update(
        state=UpgradeState.CANCELLED, cancelled_at=now, state_changed_at=now, reason=reason
    )


def upgrades_retry_failed(*, actor: Actor, rollout: Rollout, box_ids: list[Any] | None = None) -> int:
    """Put the rollout's failed and timed-out upgrades (or those of ``box_ids``) back to pending for
    another attempt; a completed rollout runs again to send them. Returns how many."""
    authorize_staff(actor)
    with transaction.atomic():
        locked = _locked_rollout(rollout)
        if not locked.allows(RolloutAction.RETRY_FAILED):
            raise Conflict(f"This cannot be done now: the rollout is {locked.state}.", field="state")
        if locked.release.state != ReleaseState.PUBLISHED:
            raise Conflict("The release is no longer published: it was withdrawn.", field="release")
        now = timezone.now()
        upgrades = locked.upgrades.filter(
            state__in=[s for s in FAILURE_STATES if s in sources_of(UpgradeState.PENDING)]
        )
        if box_ids is not None:
            upgrades = upgrades.filter(box_id__in=box_ids)
        count = upgrades.update(
            state=UpgradeState.PENDING,
            pending_at=now,
            state_changed_at=now,
            reason="",
            command_id=None,
            seq_at_return=None,
            progress=0,
            attempt=F("attempt") + 1,
        )
        if count and locked.state == RolloutState.COMPLETED:
            locked.state = RolloutState.RUNNING
            locked.finished_at = None
            locked.phase_settled_at = None
            locked.save(update_fields=["state", "finished_at", "phase_settled_at", "updated_at"])
        audit_record(
            actor=actor,
            action="rollout.retry_failed",
            target=locked,
            after={"retried": count, "boxes": [str(b) for b in box_ids] if box_ids is not None else "all"},
        )
        rollout_id = locked.pk
        transaction.on_commit(lambda: _kick(rollout_id))
    return count


def rollout_act(
    *, actor: Actor, rollout: Rollout, action: str, reason: str = "", box_ids: list[Any] | None = None
) -> tuple[Rollout, int | None]:
    """Take ``action`` (a RolloutAction) on a rollout: the one dispatch the API and the console
    share. Returns the rollout after it and, for retry-failed, how many upgrades were retried.
    ``reason`` goes with a pause or an abort, ``box_ids`` limits a retry."""
    if action == RolloutAction.START:
        return rollout_start(actor=actor, rollout=rollout), None
    if action == RolloutAction.PAUSE:
        return rollout_pause(actor=actor, rollout=rollout, reason=reason), None
    if action == RolloutAction.RESUME:
        return rollout_resume(actor=actor, rollout=rollout), None
    if action == RolloutAction.ABORT:
        return rollout_abort(actor=actor, rollout=rollout, reason=reason), None
    if action == RolloutAction.RETRY_FAILED:
        retried = upgrades_retry_failed(actor=actor, rollout=rollout, box_ids=box_ids)
        rollout.refresh_from_db()
        return rollout, retried
    raise InvalidInput(f"There is no rollout action {action!r}.", field="action")


# --- the box side: policy, upgrade now, postpone --------------------------------------------------


def box_upgrade_policy_update(
    *,
    actor: Actor,
    box: Box,
    auto_upgrade: bool | None = None,
    window_days: list[int] | None = None,
    window_start: dt.time | None = None,
    window_end: dt.time | None = None,
) -> BoxUpgradePolicy:
    """Set a box's auto-upgrade flag and maintenance window (hours in its organisation's time zone).
    Needs the admin role in the box's organisation (staff always)."""
    authorize(actor, organization_id=box.organization_id, minimum=Role.ADMIN)
    if box.organization_id is None:
        raise Conflict("Only a claimed box has automatic upgrades and a maintenance window.", field="box")
    if window_days is not None and (
        not isinstance(window_days, list)
        or not window_days
        or not all(type(d) is int and d in DEFAULT_WINDOW_DAYS for d in window_days)
    ):
        raise InvalidInput(
            "Choose at least one day of the week for the maintenance window (0 is Monday, 6 is Sunday).",
            field="window_days",
        )
    with transaction.atomic():
        policy, _ = BoxUpgradePolicy.objects.select_for_update().get_or_create(box=box)
        locked_box = Box.objects.select_for_update().get(pk=box.pk)
        before = {**policy_as_dict(policy), "auto_upgrade": locked_box.auto_upgrade}
        if window_days is not None:
            policy.window_days = sorted(set(window_days))
        if window_start is not None:
            policy.window_start = window_start
        if window_end is not None:
            policy.window_end = window_end
        policy.save()
        if auto_upgrade is not None and auto_upgrade != locked_box.auto_upgrade:
            locked_box.auto_upgrade = bool(auto_upgrade)
            locked_box.save(update_fields=["auto_upgrade", "updated_at"])
        audit_record(
            actor=actor,
            action="box.upgrade_policy",
            box=locked_box,
            target=policy,
            before=before,
            after={**policy_as_dict(policy), "auto_upgrade": locked_box.auto_upgrade},
        )
    box.auto_upgrade = locked_box.auto_upgrade
    return policy


def policy_as_dict(policy: BoxUpgradePolicy) -> dict[str, Any]:
    return {
        "window_days": list(policy.window_days),
        "window_start": policy.window_start.strftime("%H:%M"),
        "window_end": policy.window_end.strftime("%H:%M"),
    }


def latest_release_for(box: Box) -> Release | None:
    """The newest published release that fits the box's model and channel."""
    candidates = Release.objects.filter(
        state=ReleaseState.PUBLISHED,
        hardware_models__contains=[box.model],
        channel__in=[c for c, takers in CHANNELS_TAKING.items() if box.release_channel in takers],
    )
    return max(candidates, key=lambda r: version_key(r.version), default=None)


def box_upgrade_now(*, actor: Actor, box: Box, release: Release | None = None) -> Upgrade:
    """A customer asks for the upgrade now, outside the maintenance window.

    A waiting upgrade of a running rollout is sent at once (whatever its phase); otherwise a
    standalone upgrade to ``release`` (default: the newest published release for the box) is
    created and sent. Needs the admin role. Raises Conflict when the box is already up to date, is
    being upgraded, or its rollout is paused.
    """
    authorize(actor, organization_id=box.organization_id, minimum=Role.ADMIN)
    if box.state != BoxState.CLAIMED or box.organization_id is None:
        raise Conflict("Only a claimed box can be upgraded.", field="box")
    with transaction.atomic():
        Box.objects.select_for_update().filter(pk=box.pk).first()
        if Upgrade.objects.filter(box=box, state__in=IN_FLIGHT_STATES).exists():
            raise Conflict("This box is being upgraded right now: wait until it has finished.", field="box")
        now = timezone.now()
        waiting = (
            Upgrade.objects.select_for_update(of=("self",))
            .select_related("rollout", "release")
            .filter(box=box, state__in=WAITING_STATES)
            .exclude(rollout__state=RolloutState.DRAFT)
            .order_by("-created_at")
            .first()
        )
        if waiting is not None and (release is None or waiting.release_id == release.pk):
            if waiting.rollout is not None and waiting.rollout.state != RolloutState.RUNNING:
                raise Conflict(
                    f"The rollout of {waiting.release.version} is {waiting.rollout.state}: it must run "
                    "for its upgrade to be sent now.",
                    field="box",
                )
            waiting.forced = True
            waiting.not_before = None
            waiting.save(update_fields=["forced", "not_before"])
            audit_record(actor=actor, action="upgrade.now", box=box, target=waiting, after={"forced": True})
            upgrade = waiting
        else:
            release = release or latest_release_for(box)
            if release is None or release.state != ReleaseState.PUBLISHED:
                raise Conflict("There is no published release for this box yet.", field="release")
            if box.model not in release.hardware_models:
                raise InvalidInput(
                    f"Release {release.version} is not made for the model {box.model}.", field="release"
                )
            if box.firmware_version == release.version:
                raise Conflict(f"The box already runs {release.version}.", field="release")
            upgrade = Upgrade.objects.create(
                box=box,
                release=release,
                state=UpgradeState.PENDING,
                from_version=box.firmware_version,
                forced=True,
                state_changed_at=now,
                pending_at=now,
            )
            audit_record(
                actor=actor, action="upgrade.now", box=box, target=upgrade, after={"release": release.version}
            )

        if upgrade.rollout_id is None:
            upgrades_dispatch_standalone(upgrade_ids=[upgrade.pk], now=now)
        else:
            rollout_id = upgrade.rollout_id
            transaction.on_commit(lambda: _kick(rollout_id))
    upgrade.refresh_from_db()
    return upgrade


def upgrade_postpone(*, actor: Actor, upgrade: Upgrade, until: dt.datetime) -> Upgrade:
    """Postpone a waiting upgrade of the customer's box to ``until`` (at most 7 days ahead).
    Raises InvalidInput on ``until``, Conflict once it has been sent."""
    box = upgrade.box
    authorize(actor, organization_id=box.organization_id, minimum=Role.ADMIN)
    if box.organization_id is None:
        raise Conflict("Only a claimed box has upgrades to postpone.", field="box")
    now = timezone.now()
    if not isinstance(until, dt.datetime) or timezone.is_naive(until):
        raise InvalidInput("Give the date and time with its time zone (ISO 8601).", field="until")
    if until <= now:
        raise InvalidInput("Give a time in the future.", field="until")
    if until > now + MAX_POSTPONE:
        raise InvalidInput("An upgrade can be postponed by at most 7 days.", field="until")
    with transaction.atomic():
        locked = Upgrade.objects.select_for_update().get(pk=upgrade.pk)
        if locked.state not in WAITING_STATES:
            raise Conflict(
                f"Only a waiting upgrade can be postponed, and this one is {locked.state}.", field="state"
            )
        before = {
            "not_before": locked.not_before.isoformat() if locked.not_before else None,
            "state": locked.state,
        }
        locked.not_before = until
        locked.forced = False
        fields = ["not_before", "forced"]
        if locked.state == UpgradeState.SCHEDULED:
            fields += upgrade_transition(locked, UpgradeState.PENDING, now=now)
        locked.save(update_fields=fields)
        audit_record(
            actor=actor,
            action="upgrade.postpone",
            box=box,
            target=locked,
            before=before,
            after={"not_before": until.isoformat(), "state": locked.state},
        )
    return locked


__all__ = [
    "OPEN_STATES",
    "box_upgrade_now",
    "box_upgrade_policy_update",
    "release_create",
    "release_image_upload",
    "release_publish",
    "release_update",
    "release_withdraw",
    "rollout_abort",
    "rollout_create",
    "rollout_pause",
    "rollout_resume",
    "rollout_start",
    "upgrade_postpone",
    "upgrades_retry_failed",
]
