"""Box inventory (import), enrollment of agents, the applied-configuration report, and the
customer-editable settings of a box (name, tags, WAN policy)."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone
from otb_protocol import SERIAL_RE, WAN_INTERFACE_NAME_RE

from fleet.audit import Actor, audit_record
from fleet.choices import BoxState, WanKind, WanMode, WanRole
from fleet.errors import Conflict, Forbidden, InvalidInput, NotAuthenticated
from fleet.models import AgentCredential, Box, EnrollmentToken
from fleet.throttling import enroll_failures_per_ip, enroll_failures_per_serial
from fleet.tokens import TokenKind, box_secret_digest, box_secret_matches, digest, token_issue, token_kind

TAG_RE = re.compile(r"[A-Za-z0-9._:-]{1,40}")
SECRET_MIN, SECRET_MAX = 8, 128
IMPORT_BATCH_SIZE = 1000
APPLY_ERROR_MAX_BYTES = 4096
WAN_MAX_INTERFACES = 16
WAN_MAX_KBPS = 10_000_000
MAX_TAGS = 20
IMPORT_FIELDS = ("serial", "model", "mac", "factory_secret", "claim_code")


# -- validation shared by the services and the serializers ------------------------------------


def serial_clean(value: Any, *, field: str = "serial") -> str:
    """A serial: 1 to 64 ASCII letters, digits, dot, underscore or dash."""
    if not isinstance(value, str) or not SERIAL_RE.fullmatch(value.strip()):
        raise InvalidInput("a serial is 1 to 64 characters from A-Z a-z 0-9 . _ -", field=field)
    return value.strip()


def mac_normalise(value: Any, *, field: str = "mac") -> str:
    """A MAC address in lowercase colon form; accepts colons, dashes, dots or no separator."""
    if not isinstance(value, str):
        raise InvalidInput("a MAC address is a string", field=field)
    hexdigits = re.sub(r"[:.\-]", "", value.strip()).lower()
    if not re.fullmatch(r"[0-9a-f]{12}", hexdigits):
        raise InvalidInput("not a MAC address (expected 12 hex digits, e.g. 00:11:22:aa:bb:cc)", field=field)
    return ":".join(hexdigits[i : i + 2] for i in range(0, 12, 2))


def secret_clean(value: Any, *, field: str) -> str:
    if not isinstance(value, str) or not SECRET_MIN <= len(value) <= SECRET_MAX or not value.isascii():
        raise InvalidInput(f"must be {SECRET_MIN} to {SECRET_MAX} ASCII characters", field=field)
    if not value.isprintable() or value != value.strip():
        raise InvalidInput("must not contain spaces at the ends or control characters", field=field)
    return value


def wg_public_key_clean(value: Any, *, field: str = "wg_public_key") -> str:
    """A WireGuard public key: standard base64 of exactly 32 bytes."""
    if not isinstance(value, str) or len(value) != 44:
        raise InvalidInput("a WireGuard public key is base64 of 32 bytes (44 characters)", field=field)
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput("a WireGuard public key is base64 of 32 bytes", field=field) from exc
    if len(raw) != 32:
        raise InvalidInput("a WireGuard public key is base64 of 32 bytes", field=field)
    return value


def _short_text(value: Any, *, field: str, max_length: int = 64) -> str:
    if not isinstance(value, str) or len(value) > max_length or not value.isprintable():
        raise InvalidInput(f"must be printable text of at most {max_length} characters", field=field)
    return value.strip()


# -- import -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportRowError:
    line: int
    serial: str
    field: str
    reason: str
    kind: str = "invalid"  # invalid | conflict | decommissioned


@dataclass
class ImportReport:
    """What an import did: counts and, per rejected row, its line, field and reason."""

    created: int = 0
    unchanged: int = 0
    rejected: int = 0
    errors: list[ImportRowError] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.created + self.unchanged + self.rejected

    def reject(self, error: ImportRowError) -> None:
        self.rejected += 1
        self.errors.append(error)

    def as_dict(self) -> dict[str, Any]:
        return {
            "created": self.created,
            "unchanged": self.unchanged,
            "rejected": self.rejected,
            "errors": [error.__dict__ for error in self.errors],
        }


@dataclass(frozen=True)
class _ImportRow:
    line: int
    serial: str
    model: str
    mac: str
    factory_secret: str
    claim_code: str


def _import_row_clean(line: int, row: dict[str, Any]) -> _ImportRow:
    if not isinstance(row, dict):
        raise InvalidInput("not a row of named columns", field="row")
    unknown = sorted(str(key) for key in row if key not in IMPORT_FIELDS and key is not None)
    if unknown:
        raise InvalidInput(f"unknown column(s): {', '.join(unknown)}", field=unknown[0])
    if None in row:  # csv.DictReader puts extra cells under the key None
        raise InvalidInput("more cells than columns", field="row")
    serial = serial_clean(row.get("serial") or "")
    model = _short_text(row.get("model") or "", field="model")
    mac_raw = (row.get("mac") or "").strip()
    mac = mac_normalise(mac_raw) if mac_raw else ""
    factory_secret = secret_clean(row.get("factory_secret") or "", field="factory_secret")
    claim_code = secret_clean(row.get("claim_code") or "", field="claim_code")
    return _ImportRow(line, serial, model, mac, factory_secret, claim_code)


def _import_compare(row: _ImportRow, box: Box) -> ImportRowError | None:
    """None when the stored box holds exactly this row's data, else why the row is refused."""
    if box.state == BoxState.DECOMMISSIONED:
        return ImportRowError(row.line, row.serial, "serial", "box is decommissioned", "decommissioned")
    if not box_secret_matches(row.serial, row.factory_secret, box.factory_secret_hash):
        return ImportRowError(
            row.line, row.serial, "factory_secret", "box exists with a different factory secret", "conflict"
        )
    if not box_secret_matches(row.serial, row.claim_code, box.claim_code_hash):
        return ImportRowError(
            row.line, row.serial, "claim_code", "box exists with a different claim code", "conflict"
        )
    for name in ("model", "mac"):
        if getattr(row, name) != getattr(box, name):
            return ImportRowError(
                row.line, row.serial, name, f"box exists with a different {name}", "conflict"
            )
    return None


def _import_batch(actor: Actor, batch: list[_ImportRow], report: ImportReport) -> None:
    with transaction.atomic():
        existing = {box.serial: box for box in Box.objects.filter(serial__in=[row.serial for row in batch])}
        new_boxes: list[Box] = []
        for row in batch:
            box = existing.get(row.serial)
            if box is None:
                new_boxes.append(
                    Box(
                        serial=row.serial,
                        model=row.model,
                        mac=row.mac,
                        factory_secret_hash=box_secret_digest(row.serial, row.factory_secret),
                        claim_code_hash=box_secret_digest(row.serial, row.claim_code),
                        state=BoxState.UNCLAIMED,
                    )
                )
                continue
            error = _import_compare(row, box)
            if error is None:
                report.unchanged += 1
            else:
                report.reject(error)
        if new_boxes:
            # A concurrent import may write the same serial first: ignore_conflicts skips it, and
            # the rows not written (their client-side uuid is absent) are compared like existing ones.
            Box.objects.bulk_create(new_boxes, batch_size=IMPORT_BATCH_SIZE, ignore_conflicts=True)
            written = set(
                Box.objects.filter(pk__in=[box.pk for box in new_boxes]).values_list("serial", flat=True)
            )
            report.created += len(written)
            lost = [row for row in batch if row.serial not in written and row.serial not in existing]
            for row in lost:
                error = _import_compare(row, Box.objects.get(serial=row.serial))
                if error is None:
                    report.unchanged += 1
                else:
                    report.reject(error)
            audit_record(
                actor=actor,
                action="box.import",
                after={"created": len(written), "serials": sorted(written)[:50]},
            )


def boxes_import(
    *,
    actor: Actor,
    rows: Iterable[dict[str, Any]],
    progress: Callable[[ImportReport], None] | None = None,
) -> ImportReport:
    """Import factory data (``serial,model,mac,factory_secret,claim_code``) into the inventory.

    Idempotent: a serial already stored with identical data counts as unchanged; one with other
    secrets or hardware data is rejected as a conflict (a factory secret is never overwritten), and
    so is a decommissioned box. New boxes are bulk-written in batches of 1000, each batch in its
    own transaction; ``progress`` is called after every batch. Row numbers in the report are file
    line numbers (the header is line 1).
    """
    report = ImportReport()
    batch: list[_ImportRow] = []
    seen: dict[str, _ImportRow] = {}
    for line, raw in enumerate(rows, start=2):
        try:
            row = _import_row_clean(line, raw)
        except InvalidInput as exc:
            serial = str(raw.get("serial") or "")[:64] if isinstance(raw, dict) else ""
            report.reject(ImportRowError(line, serial, exc.field or "row", exc.message))
            continue
        first = seen.get(row.serial)
        if first is not None:
            same = (first.model, first.mac, first.factory_secret, first.claim_code) == (
                row.model,
                row.mac,
                row.factory_secret,
                row.claim_code,
            )
            if same:
                report.unchanged += 1
            else:
                report.reject(
                    ImportRowError(
                        line,
                        row.serial,
                        "serial",
                        f"serial repeated with other data (line {first.line})",
                        "conflict",
                    )
                )
            continue
        seen[row.serial] = row
        batch.append(row)
        if len(batch) >= IMPORT_BATCH_SIZE:
            _import_batch(actor, batch, report)
            batch = []
            if progress is not None:
                progress(report)
    if batch:
        _import_batch(actor, batch, report)
    if progress is not None:
        progress(report)
    return report


# -- enrollment ---------------------------------------------------------------------------------


def _credential_rotate(box: Box) -> tuple[str, int]:
    """Revoke the box's live agent credential (if any) and issue a new one; returns (value, revoked)."""
    revoked = AgentCredential.objects.filter(box=box, revoked_at__isnull=True).update(
        revoked_at=timezone.now()
    )
    issued = token_issue(TokenKind.AGENT)
    AgentCredential.objects.create(box=box, token_hash=issued.digest)
    return issued.value, revoked


def _wireguard_key_store(box: Box, wg_public_key: str | None) -> bool:
    """Store a (new) WireGuard key on the box and on its live tunnel credential; True if changed."""
    if not wg_public_key or wg_public_key == box.wg_public_key:
        return False
    from provisioning.choices import TunnelKind
    from provisioning.models import TunnelCredential

    box.wg_public_key = wg_public_key
    TunnelCredential.objects.filter(box=box, kind=TunnelKind.WIREGUARD, revoked_at__isnull=True).update(
        public_key=wg_public_key
    )
    return True


def _enroll_factory(box: Box | None, serial: str, factory_secret: str) -> Box:
    if box is None or not box_secret_matches(serial, factory_secret, box.factory_secret_hash):
        raise NotAuthenticated("unknown serial or wrong factory secret", code="enroll_failed")
    if box.state == BoxState.DECOMMISSIONED:
        raise Forbidden("this box is decommissioned and cannot enroll", field="serial", code="decommissioned")
    return box


def _enroll_token(box: Box | None, serial: str, token_value: str, *, model: str, mac: str) -> Box:
    from provisioning.services import box_provision

    if token_kind(token_value) != TokenKind.ENROLLMENT or len(token_value) > 200:
        raise NotAuthenticated("invalid, expired or revoked enrollment token", code="enroll_failed")
    token = (
        EnrollmentToken.objects.select_for_update()
        .select_related("organization")
        .filter(token_hash=digest(token_value))
        .first()
    )
    now = timezone.now()
    if (
        token is None
        or token.revoked_at is not None
        or token.expires_at <= now
        or (token.single_use and token.uses > 0)
    ):
        raise NotAuthenticated("invalid, expired, used or revoked enrollment token", code="enroll_failed")
    organization = token.organization
    if box is None:
        try:
            with transaction.atomic():
                box = Box.objects.create(
                    serial=serial,
                    model=model,
                    mac=mac,
                    state=BoxState.CLAIMED,
                    organization=organization,
                    claimed_at=now,
                )
        except IntegrityError as exc:
            raise Conflict("this serial is being enrolled concurrently; retry", field="serial") from exc
        box = Box.objects.select_for_update().get(pk=box.pk)
        box_provision(box=box, organization=organization)
        box.refresh_from_db()
    elif box.organization_id != organization.pk:
        # Unclaimed inventory is claimed with its claim code, never by serial alone.
        raise Forbidden("this serial is registered to another owner", field="serial", code="serial_taken")
    token.uses += 1
    token.save(update_fields=["uses"])
    return box


def box_enroll(
    *,
    serial: str,
    factory_secret: str | None = None,
    enrollment_token: str | None = None,
    wg_public_key: str | None = None,
    model: str | None = None,
    mac: str | None = None,
    agent_version: str | None = None,
    source_ip: str | None,
) -> tuple[Box, str]:
    """Give an agent its credential. Either with the factory secret of an imported box, or with an
    organisation's enrollment token (an unknown serial is then created, claimed and provisioned in
    that organisation). Any previous agent credential of the box is revoked: one live per box.

    Failed attempts are counted per serial and per source IP; over the limit, RateLimited is raised
    before the secret is even checked. Returns the box and the agent token (shown once).
    """
    serial = serial_clean(serial)
    if (factory_secret is None) == (enrollment_token is None):
        raise InvalidInput("give exactly one of factory_secret or enrollment_token", field="factory_secret")
    if factory_secret is not None and (
        not isinstance(factory_secret, str) or len(factory_secret) > SECRET_MAX
    ):
        raise InvalidInput(f"must be at most {SECRET_MAX} characters", field="factory_secret")
    if enrollment_token is not None and not isinstance(enrollment_token, str):
        raise InvalidInput("must be a string", field="enrollment_token")
    wg_key = wg_public_key_clean(wg_public_key) if wg_public_key else None
    mac_clean = mac_normalise(mac) if mac else ""
    model_clean = _short_text(model, field="model") if model else ""
    agent_version_clean = _short_text(agent_version, field="agent_version") if agent_version else ""

    per_serial, per_ip = enroll_failures_per_serial(), enroll_failures_per_ip()
    ip = source_ip or "unknown"
    per_ip.check(ip, message="too many failed enrollment attempts from this address; retry later")
    per_serial.check(serial, message="too many failed enrollment attempts for this serial; retry later")
    try:
        with transaction.atomic():
            box = Box.objects.select_for_update().filter(serial=serial).first()
            if factory_secret is not None:
                box = _enroll_factory(box, serial, factory_secret)
                method = "factory_secret"
            else:
                box = _enroll_token(box, serial, enrollment_token or "", model=model_clean, mac=mac_clean)
                method = "enrollment_token"
            token, revoked = _credential_rotate(box)
            fields = ["enrolled_at", "updated_at"]
            box.enrolled_at = timezone.now()
            if _wireguard_key_store(box, wg_key):
                fields.append("wg_public_key")
            if agent_version_clean:
                box.agent_version = agent_version_clean
                fields.append("agent_version")
            if model_clean and not box.model:
                box.model = model_clean
                fields.append("model")
            if mac_clean and not box.mac:
                box.mac = mac_clean
                fields.append("mac")
            box.save(update_fields=fields)
            audit_record(
                actor=Actor(label=f"box:{serial}", source_ip=source_ip),
                action="box.enroll",
                box=box,
                target=box,
                after={
                    "method": method,
                    "revoked_credentials": revoked,
                    "wg_public_key": box.wg_public_key or None,
                    "agent_version": box.agent_version or None,
                },
            )
            from provisioning.services import box_config_refresh

            box_config_refresh(box=box)
    except NotAuthenticated:
        per_serial.hit(serial)
        per_ip.hit(ip)
        raise
    per_serial.reset(serial)
    return box, token


# -- configuration state reported by the box ------------------------------------------------------


def _event_record(box: Box, error_text: str) -> None:
    """A config_applied / config_failed event on the box's timeline, when the events module exists."""
    try:
        from fleet.monitoring.services.events import event_record
    except ImportError:
        try:
            from fleet.live.events import event_record  # type: ignore[import-not-found,no-redef]
        except ImportError:
            return
    event_record(
        box_id=box.pk,
        kind="config_failed" if error_text else "config_applied",
        data={"config_hash": box.applied_config_hash, "error": error_text or None},
        organization_id=box.organization_id,
    )


def box_config_applied(*, box: Box, config_hash: str, error: str | None = None) -> Box:
    """Record what the box reports having applied: hash, time and error (capped at 4 KiB).

    Only ``applied_*``/``apply_error`` are written, so a concurrent config change is never lost.
    """
    if not isinstance(config_hash, str) or not re.fullmatch(r"[0-9a-fA-F]{1,64}", config_hash):
        raise InvalidInput("config_hash must be the hex hash of a configuration", field="config_hash")
    if error is not None and not isinstance(error, str):
        raise InvalidInput("error must be text or null", field="error")
    error_text = (error or "").encode("utf-8", "replace")[:APPLY_ERROR_MAX_BYTES].decode("utf-8", "ignore")
    with transaction.atomic():
        box = Box.objects.select_for_update().get(pk=box.pk)
        changed = box.applied_config_hash != config_hash.lower() or box.apply_error != error_text
        before = {"applied_config_hash": box.applied_config_hash, "apply_error": box.apply_error or None}
        box.applied_config_hash = config_hash.lower()
        box.apply_error = error_text
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
        if changed:
            _event_record(box, error_text)
    return box


# -- customer settings --------------------------------------------------------------------------


def _tags_clean(tags: Any) -> list[str]:
    if not isinstance(tags, list):
        raise InvalidInput("tags is a list of strings", field="tags")
    if len(tags) > MAX_TAGS:
        raise InvalidInput(f"at most {MAX_TAGS} tags", field="tags")
    cleaned: list[str] = []
    for index, tag in enumerate(tags):
        if not isinstance(tag, str) or not TAG_RE.fullmatch(tag):
            raise InvalidInput("a tag is 1 to 40 characters from A-Z a-z 0-9 . _ : -", field=f"tags[{index}]")
        if tag not in cleaned:
            cleaned.append(tag)
    return cleaned


@transaction.atomic
def box_update(*, actor: Actor, box: Box, name: str | None = None, tags: list[str] | None = None) -> Box:
    """Rename a box or replace its tags."""
    box = Box.objects.select_for_update().get(pk=box.pk)
    before = {"name": box.name, "tags": list(box.tags)}
    fields: list[str] = []
    if name is not None:
        if not isinstance(name, str) or len(name.strip()) > 100 or not name.isprintable():
            raise InvalidInput("name must be printable text of at most 100 characters", field="name")
        box.name = name.strip()
        fields.append("name")
    if tags is not None:
        box.tags = _tags_clean(tags)
        fields.append("tags")
    if fields and {"name": box.name, "tags": box.tags} != before:
        box.save(update_fields=[*fields, "updated_at"])
        audit_record(
            actor=actor,
            action="box.update",
            box=box,
            target=box,
            before=before,
            after={"name": box.name, "tags": list(box.tags)},
        )
    return box


def _kbps_clean(value: Any, *, field: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= WAN_MAX_KBPS:
        raise InvalidInput(f"must be a whole number from 1 to {WAN_MAX_KBPS}", field=field)
    return value


def wan_policy_validate(*, mode: Any, interfaces: Any) -> dict[str, Any]:
    """The normalised WAN policy, or InvalidInput naming the offending field (``interfaces[2].name``)."""
    if mode not in WanMode.values:
        raise InvalidInput(f"mode must be one of {', '.join(WanMode.values)}", field="mode")
    if not isinstance(interfaces, list):
        raise InvalidInput("interfaces is a list of objects", field="interfaces")
    if len(interfaces) > WAN_MAX_INTERFACES:
        raise InvalidInput(f"at most {WAN_MAX_INTERFACES} interfaces", field="interfaces")
    allowed = {"name", "role", "kind", "up_kbps", "down_kbps"}
    cleaned: list[dict[str, Any]] = []
    names: set[str] = set()
    for index, item in enumerate(interfaces):
        where = f"interfaces[{index}]"
        if not isinstance(item, dict):
            raise InvalidInput("an interface is an object", field=where)
        unknown = sorted(str(key) for key in item if key not in allowed)
        if unknown:
            raise InvalidInput(f"unknown field: {unknown[0]}", field=f"{where}.{unknown[0]}")
        name = item.get("name")
        if not isinstance(name, str) or not WAN_INTERFACE_NAME_RE.fullmatch(name):
            raise InvalidInput(
                "an interface name is 1 to 15 characters from a-z 0-9 . _ -", field=f"{where}.name"
            )
        if name in names:
            raise InvalidInput(f"interface {name!r} is listed twice", field=f"{where}.name")
        names.add(name)
        role = item.get("role", WanRole.PRIMARY.value)
        if role not in WanRole.values:
            raise InvalidInput(f"role must be one of {', '.join(WanRole.values)}", field=f"{where}.role")
        kind = item.get("kind", WanKind.OTHER.value)
        if kind not in WanKind.values:
            raise InvalidInput(f"kind must be one of {', '.join(WanKind.values)}", field=f"{where}.kind")
        entry: dict[str, Any] = {"name": name, "role": role, "kind": kind}
        for key in ("up_kbps", "down_kbps"):
            value = _kbps_clean(item.get(key), field=f"{where}.{key}")
            if value is not None:
                entry[key] = value
        cleaned.append(entry)
    roles = [entry["role"] for entry in cleaned]
    if mode == WanMode.FAILOVER and WanRole.PRIMARY not in roles:
        raise InvalidInput("failover needs at least one primary interface", field="interfaces")
    if mode != WanMode.FAILOVER and all(role == WanRole.DISABLED for role in roles):
        raise InvalidInput(f"{mode} needs at least one interface that is not disabled", field="interfaces")
    return {"mode": mode, "interfaces": cleaned}


@transaction.atomic
def box_set_wan_policy(*, actor: Actor, box: Box, mode: str, interfaces: list[dict[str, Any]]) -> Box:
    """Replace the box's WAN policy (validated, see ``wan_policy_validate``) and recompute its
    configuration hash so the agent picks it up."""
    from provisioning.services import box_config_refresh

    policy = wan_policy_validate(mode=mode, interfaces=interfaces)
    box = Box.objects.select_for_update().get(pk=box.pk)
    before = box.wan_policy
    box.wan_policy = policy
    box.save(update_fields=["wan_policy", "updated_at"])
    box_config_refresh(box=box)
    audit_record(actor=actor, action="box.set_wan_policy", box=box, target=box, before=before, after=policy)
    return box
