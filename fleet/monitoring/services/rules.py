"""Alert rules and notification targets of an organisation. Each write needs the admin role in it,
checked at its top (``fleet.core.access.authorize``)."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import transaction
from django.utils import timezone

from fleet.core.access import authorize
from fleet.core.audit import Actor, audit_record
from fleet.core.choices import Role
from fleet.core.errors import InvalidInput
from fleet.core.models import Box, Organization
from fleet.monitoring.choices import THRESHOLD_KINDS, AlertRuleKind, AlertState, TargetKind
from fleet.monitoring.models import Alert, AlertRule, NotificationTarget
from fleet.monitoring.webhooks import webhook_secret_generate, webhook_url_validate
from provisioning.secrets import secret_encrypt

THRESHOLD_LIMITS = {
    AlertRuleKind.LOSS_ABOVE: (0.0, 100.0),
    AlertRuleKind.RTT_ABOVE: (0.0, 60000.0),
    AlertRuleKind.MEM_FREE_BELOW: (0.0, 1048576.0),  # up to 1 TiB
}
# (what is compared, its unit, which side of the threshold fires)
THRESHOLD_WHAT = {
    AlertRuleKind.LOSS_ABOVE: ("a link's packet loss", "%", "above"),
    AlertRuleKind.RTT_ABOVE: ("a link's round-trip time", "ms", "above"),
    AlertRuleKind.MEM_FREE_BELOW: ("the box's free memory", "MiB", "below"),
}
UNSET: Any = object()


def _rule_snapshot(rule: AlertRule) -> dict[str, Any]:
    return {
        "name": rule.name,
        "kind": rule.kind,
        "threshold": rule.threshold,
        "duration_minutes": rule.duration_minutes,
        "box": str(rule.box_id) if rule.box_id else None,
        "enabled": rule.enabled,
        "targets": sorted(str(pk) for pk in rule.targets.values_list("pk", flat=True)),
    }


def _clean_threshold(kind: str, threshold: Any) -> float | None:
    if kind not in THRESHOLD_KINDS:
        return None
    low, high = THRESHOLD_LIMITS[AlertRuleKind(kind)]
    what, unit, side = THRESHOLD_WHAT[AlertRuleKind(kind)]
    if threshold is None or isinstance(threshold, bool) or not isinstance(threshold, int | float):
        raise InvalidInput(
            f"Give a threshold in {unit}: the rule fires when {what} stays {side} it.",
            field="threshold",
        )
    if not low <= float(threshold) < high:
        raise InvalidInput(f"Give a threshold from {low:g} to below {high:g} {unit}.", field="threshold")
    return float(threshold)


def _clean_duration(duration_minutes: Any) -> int:
    if type(duration_minutes) is not int or not 1 <= duration_minutes <= 1440:
        raise InvalidInput("Give a duration of 1 to 1440 minutes (a whole number).", field="duration_minutes")
    return duration_minutes


def _clean_name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > 100:
        raise InvalidInput("Give a name of 1 to 100 characters.", field="name")
    return name.strip()


def _clean_box(organization: Organization, box: Any) -> Box | None:
    if box is None:
        return None
    box_id = box.pk if isinstance(box, Box) else box
    found = Box.objects.filter(pk=box_id, organization=organization).first()
    if found is None:
        raise InvalidInput("Choose one of this organisation's boxes.", field="box")
    return found


def _clean_targets(organization: Organization, target_ids: Any) -> list[NotificationTarget]:
    ids = list(dict.fromkeys(str(pk) for pk in (target_ids or [])))
    targets = list(NotificationTarget.objects.filter(organization=organization, pk__in=ids))
    if len(targets) != len(ids):
        raise InvalidInput("Choose notification targets of this organisation.", field="targets")
    return targets


def alert_rule_create(
    *,
    actor: Actor,
    organization: Organization,
    name: str,
    kind: str,
    duration_minutes: int = 5,
    threshold: float | None = None,
    box: Box | Any = None,
    enabled: bool = True,
    target_ids: list[Any] | None = None,
) -> AlertRule:
    """A new rule for the organisation; ``box`` (one of its boxes) narrows it, ``target_ids`` are
    its notification targets. Raises InvalidInput naming the field."""
    authorize(actor, organization_id=organization.pk, minimum=Role.ADMIN)
    if kind not in AlertRuleKind.values:
        raise InvalidInput(f"Choose when the rule fires: {', '.join(AlertRuleKind.values)}.", field="kind")
    clean = {
        "name": _clean_name(name),
        "threshold": _clean_threshold(kind, threshold),
        "duration_minutes": _clean_duration(duration_minutes),
        "box": _clean_box(organization, box),
    }
    targets = _clean_targets(organization, target_ids)
    with transaction.atomic():
        rule = AlertRule.objects.create(organization=organization, kind=kind, enabled=bool(enabled), **clean)
        rule.targets.set(targets)
        audit_record(
            actor=actor,
            action="alert_rule.create",
            organization=organization,
            target=rule,
            after=_rule_snapshot(rule),
        )
    return rule


def _close_open_alerts_silently(rule: AlertRule) -> None:
    now = timezone.now()
    Alert.objects.filter(rule=rule, state=AlertState.PENDING).delete()
    Alert.objects.filter(rule=rule, state=AlertState.FIRING).update(
        state=AlertState.RESOLVED, resolved_at=now
    )


def alert_rule_update(
    *,
    actor: Actor,
    rule: AlertRule,
    name: Any = UNSET,
    threshold: Any = UNSET,
    duration_minutes: Any = UNSET,
    box: Any = UNSET,
    enabled: Any = UNSET,
    target_ids: Any = UNSET,
) -> AlertRule:
    """Change a rule (its kind is fixed). Disabling it, or changing what it watches, closes its open
    alerts without notifying (they would otherwise resolve as if the condition had cleared)."""
    with transaction.atomic():
        rule = AlertRule.objects.select_for_update().select_related("organization").get(pk=rule.pk)
        authorize(actor, organization_id=rule.organization_id, minimum=Role.ADMIN)
        before = _rule_snapshot(rule)
        if name is not UNSET:
            rule.name = _clean_name(name)
        if threshold is not UNSET:
            rule.threshold = _clean_threshold(rule.kind, threshold)
        if duration_minutes is not UNSET:
            rule.duration_minutes = _clean_duration(duration_minutes)
        if box is not UNSET:
            rule.box = _clean_box(rule.organization, box)
        if enabled is not UNSET:
            rule.enabled = bool(enabled)
        rule.save()
        if target_ids is not UNSET:
            rule.targets.set(_clean_targets(rule.organization, target_ids))
        after = _rule_snapshot(rule)
        if not rule.enabled or after["box"] != before["box"] or after["threshold"] != before["threshold"]:
            _close_open_alerts_silently(rule)
        audit_record(
            actor=actor,
            action="alert_rule.update",
            organization=rule.organization,
            target=rule,
            before=before,
            after=after,
        )
    return rule


def alert_rule_delete(*, actor: Actor, rule: AlertRule) -> None:
    """Delete a rule with its alerts and their delivery records."""
    with transaction.atomic():
        authorize(actor, organization_id=rule.organization_id, minimum=Role.ADMIN)
        audit_record(
            actor=actor,
            action="alert_rule.delete",
            organization=rule.organization,
            target=rule,
            before=_rule_snapshot(rule),
        )
        rule.delete()


def _clean_address(kind: str, email: Any, url: Any) -> tuple[str, str]:
    if kind == TargetKind.EMAIL:
        if url:
            raise InvalidInput("An email target has no webhook URL: leave the URL empty.", field="url")
        try:
            validate_email(email or "")
        except ValidationError as exc:
            raise InvalidInput("Give a valid email address, e.g. noc@example.com.", field="email") from exc
        return email, ""
    if email:
        raise InvalidInput("A webhook target has no email address: leave it empty.", field="email")
    return "", webhook_url_validate(url)


def _target_snapshot(target: NotificationTarget) -> dict[str, Any]:
    return {
        "name": target.name,
        "kind": target.kind,
        "email": target.email,
        "url": target.url,
        "enabled": target.enabled,
    }


def notification_target_create(
    *,
    actor: Actor,
    organization: Organization,
    name: str,
    kind: str,
    email: str | None = None,
    url: str | None = None,
    enabled: bool = True,
) -> tuple[NotificationTarget, str | None]:
    """A new email or webhook target. A webhook gets a signing secret, returned here once (and
    stored only encrypted). Raises InvalidInput naming ``kind``/``email``/``url``/``name``."""
    authorize(actor, organization_id=organization.pk, minimum=Role.ADMIN)
    if kind not in TargetKind.values:
        raise InvalidInput(f"Choose a kind of target: {', '.join(TargetKind.values)}.", field="kind")
    clean_name = _clean_name(name)
    clean_email, clean_url = _clean_address(kind, email, url)
    secret = webhook_secret_generate() if kind == TargetKind.WEBHOOK else None
    with transaction.atomic():
        target = NotificationTarget.objects.create(
            organization=organization,
            name=clean_name,
            kind=kind,
            email=clean_email,
            url=clean_url,
            secret_ciphertext=secret_encrypt(secret) if secret else "",
            enabled=bool(enabled),
        )
        audit_record(
            actor=actor,
            action="notification_target.create",
            organization=organization,
            target=target,
            after=_target_snapshot(target),
        )
    return target, secret


def notification_target_update(
    *,
    actor: Actor,
    target: NotificationTarget,
    name: Any = UNSET,
    email: Any = UNSET,
    url: Any = UNSET,
    enabled: Any = UNSET,
    rotate_secret: bool = False,
) -> tuple[NotificationTarget, str | None]:
    """Change a target (its kind is fixed); ``rotate_secret`` issues a new webhook secret, returned
    once."""
    with transaction.atomic():
        target = (
            NotificationTarget.objects.select_for_update().select_related("organization").get(pk=target.pk)
        )
        authorize(actor, organization_id=target.organization_id, minimum=Role.ADMIN)
        before = _target_snapshot(target)
        if name is not UNSET:
            target.name = _clean_name(name)
        if email is not UNSET or url is not UNSET:
            target.email, target.url = _clean_address(
                target.kind,
                target.email if email is UNSET else email,
                target.url if url is UNSET else url,
            )
        if enabled is not UNSET:
            target.enabled = bool(enabled)
        secret = None
        if rotate_secret:
            if target.kind != TargetKind.WEBHOOK:
                raise InvalidInput("Only webhook targets have a signing secret.", field="rotate_secret")
            secret = webhook_secret_generate()
            target.secret_ciphertext = secret_encrypt(secret)
        target.save()
        audit_record(
            actor=actor,
            action="notification_target.update",
            organization=target.organization,
            target=target,
            before=before,
            after={**_target_snapshot(target), "secret_rotated": rotate_secret},
        )
    return target, secret


def notification_target_delete(*, actor: Actor, target: NotificationTarget) -> None:
    """Delete a target (rules drop it; its delivery records go with it)."""
    with transaction.atomic():
        authorize(actor, organization_id=target.organization_id, minimum=Role.ADMIN)
        audit_record(
            actor=actor,
            action="notification_target.delete",
            organization=target.organization,
            target=target,
            before=_target_snapshot(target),
        )
        target.delete()


def notification_target_validate(*, kind: str, email: Any, url: Any) -> None:
    """Raise InvalidInput (field ``email``/``url``) for an address that does not fit ``kind``."""
    _clean_address(kind, email, url)


def alert_rule_validate(
    *, organization: Organization, kind: str, threshold: Any, duration_minutes: Any, box: Any
) -> None:
    """Raise InvalidInput naming the field for a rule that ``alert_rule_create`` would refuse."""
    _clean_threshold(kind, threshold)
    _clean_duration(duration_minutes)
    _clean_box(organization, box)
