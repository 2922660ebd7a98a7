"""The box event timeline, alert rules, alerts and their notifications.

Events are append-only facts about a box (session, presence, WAN transitions, configuration,
firmware, commands, alerts, a changed public IP). Alerts are rows with states evaluated periodically
from the presence tables (``fleet.telemetry`` BoxStatus/WanStatus); each notification (of an alert, or
a notice of a box event) to each recipient is a delivery row sent and retried by Celery.
"""

from __future__ import annotations

import uuid

from django.db import models
from django.db.models import Q
from django.utils import timezone

from fleet.monitoring.choices import (
    AlertRuleKind,
    AlertState,
    DeliveryState,
    NotificationEvent,
    TargetKind,
)


class NotificationTarget(models.Model):
    """Where an organisation's alerts go: an email address or a webhook URL (http/https). A webhook
    has a signing secret, generated on creation, shown once, stored encrypted (Fernet)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organization = models.ForeignKey(
        "fleet.Organization", on_delete=models.CASCADE, related_name="notification_targets"
    )
    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=16, choices=TargetKind.choices)
    email = models.EmailField(blank=True, default="")
    url = models.URLField(max_length=500, blank=True, default="")
    secret_ciphertext = models.TextField(blank=True, default="")
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    # re-encrypted by ``manage.py secrets_reencrypt`` (fleet.core.secrets)
    encrypted_fields = ("secret_ciphertext",)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=(Q(kind=TargetKind.EMAIL) & ~Q(email="") & Q(url=""))
                | (Q(kind=TargetKind.WEBHOOK) & ~Q(url="") & Q(email="") & ~Q(secret_ciphertext="")),
                name="notification_target_address_matches_kind",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.kind})"


class AlertRule(models.Model):
    """An organisation's rule: fire when the condition held for ``duration_minutes``. ``threshold``
    is the loss % or RTT ms for ``loss_above``/``rtt_above``, the free memory in MiB for
    ``mem_free_below`` (required there, unused otherwise).
    ``box`` null means every box of the organisation."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organization = models.ForeignKey(
        "fleet.Organization", on_delete=models.CASCADE, related_name="alert_rules"
    )
    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=16, choices=AlertRuleKind.choices)
    threshold = models.FloatField(null=True, blank=True)
    duration_minutes = models.PositiveIntegerField(default=5)
    box = models.ForeignKey(
        "fleet.Box", null=True, blank=True, on_delete=models.CASCADE, related_name="alert_rules"
    )
    enabled = models.BooleanField(default=True)
    targets = models.ManyToManyField(NotificationTarget, blank=True, related_name="rules")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(duration_minutes__gte=1) & Q(duration_minutes__lte=1440),
                name="alert_rule_duration_range",
            ),
            models.CheckConstraint(
                condition=~Q(kind__in=["loss_above", "rtt_above", "mem_free_below"])
                | Q(threshold__isnull=False),
                name="alert_rule_threshold_required",
            ),
        ]
        indexes = [models.Index(fields=["organization", "enabled"], name="alert_rule_org_enabled_idx")]

    def __str__(self) -> str:
        return self.name


class Alert(models.Model):
    """One occurrence of a rule's condition on a box (and WAN ``iface``; blank for box-level).

    At most one open (pending or firing) alert per (rule, box, iface), enforced by the database.
    ``started_at`` is when the condition began; ``last_notified_at`` throttles notifications."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    rule = models.ForeignKey(AlertRule, on_delete=models.CASCADE, related_name="alerts")
    organization = models.ForeignKey("fleet.Organization", on_delete=models.CASCADE, related_name="alerts")
    box = models.ForeignKey("fleet.Box", on_delete=models.CASCADE, related_name="alerts")
    iface = models.CharField(max_length=32, blank=True, default="")
    state = models.CharField(max_length=16, choices=AlertState.choices, default=AlertState.PENDING)
    value = models.FloatField(null=True, blank=True)
    started_at = models.DateTimeField()
    fired_at = models.DateTimeField(null=True, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    last_notified_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-started_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["rule", "box", "iface"],
                condition=Q(state__in=["pending", "firing"]),
                name="alert_one_open_per_rule_box_iface",
            ),
        ]
        indexes = [
            models.Index(fields=["organization", "state", "-started_at"], name="alert_org_state_idx"),
            models.Index(fields=["rule", "box", "iface", "-started_at"], name="alert_rule_box_iface_idx"),
        ]

    def __str__(self) -> str:
        where = f"{self.box_id}/{self.iface}" if self.iface else str(self.box_id)
        return f"{self.rule_id} {where} ({self.state})"

    @property
    def is_firing(self) -> bool:
        return self.state == AlertState.FIRING


class NotificationDelivery(models.Model):
    """One notification to one recipient, sent and retried by Celery, every attempt recorded
    (``attempts``, ``last_error``, ``response_status``).

    It tells either an alert event (``alert``, ``event`` firing/resolved) or a notice of a box event
    (``box_event``, ``event`` notice), never both. The recipient is a notification ``target``, or for
    a notice to an organisation without an enabled target, an owner's address (``email``)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    alert = models.ForeignKey(
        Alert, null=True, blank=True, on_delete=models.CASCADE, related_name="deliveries"
    )
    box_event = models.ForeignKey(
        "fleet.Event", null=True, blank=True, on_delete=models.CASCADE, related_name="deliveries"
    )
    target = models.ForeignKey(
        NotificationTarget, null=True, blank=True, on_delete=models.CASCADE, related_name="deliveries"
    )
    email = models.EmailField(blank=True, default="")
    event = models.CharField(max_length=16, choices=NotificationEvent.choices)
    state = models.CharField(max_length=16, choices=DeliveryState.choices, default=DeliveryState.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    # When the next attempt is due (creation, then after each failure the backoff). A task that comes
    # early (a duplicate) does nothing; a pending delivery overdue by NOTIFY_STALE_AFTER_S lost its
    # task (a worker killed mid-delivery, a broker restart) and the sweep queues it again.
    next_attempt_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "notification deliveries"
        constraints = [
            models.UniqueConstraint(
                fields=["alert", "target", "event"], name="notification_delivery_once_per_event"
            ),
            models.UniqueConstraint(
                fields=["box_event", "target"],
                condition=Q(box_event__isnull=False, target__isnull=False),
                name="notification_delivery_notice_once_per_target",
            ),
            models.UniqueConstraint(
                fields=["box_event", "email"],
                condition=Q(box_event__isnull=False) & ~Q(email=""),
                name="notification_delivery_notice_once_per_email",
            ),
            models.CheckConstraint(
                condition=(
                    Q(alert__isnull=False, box_event__isnull=True, target__isnull=False, email="")
                    & ~Q(event=NotificationEvent.NOTICE)
                )
                | (
                    Q(alert__isnull=True, box_event__isnull=False, event=NotificationEvent.NOTICE)
                    & (Q(target__isnull=False, email="") | (Q(target__isnull=True) & ~Q(email="")))
                ),
                name="notification_delivery_subject_and_recipient",
            ),
        ]
        indexes = [
            models.Index(fields=["state", "created_at"], name="delivery_state_idx"),
            models.Index(
                fields=["next_attempt_at"],
                condition=Q(state=DeliveryState.PENDING),
                name="delivery_pending_due_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event} -> {self.target_id or self.email} ({self.state})"
