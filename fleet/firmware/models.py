"""Firmware releases, the per-box upgrade policy, rollouts and the per-box upgrades they drive.

Invariants kept by PostgreSQL: a version is released once; a release has an uploaded image or an
external URL, never both; a published release has its size, SHA-256 and signature; a box is in a
rollout at most once and has at most one upgrade in flight at any time.
"""

from __future__ import annotations

import datetime as dt
import uuid

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.db.models import Q

from fleet.core.choices import ReleaseChannel
from fleet.firmware.choices import (
    IN_FLIGHT_STATES,
    ReleaseState,
    RolloutAction,
    RolloutState,
    UpgradeState,
)
from fleet.firmware.transitions import ROLLOUT_ACTIONS, rollout_actions

DEFAULT_WINDOW_DAYS = [0, 1, 2, 3, 4, 5, 6]  # Monday = 0, as datetime.weekday()
DEFAULT_WINDOW_START = dt.time(2, 0)
DEFAULT_WINDOW_END = dt.time(5, 0)


def default_window_days() -> list[int]:
    return list(DEFAULT_WINDOW_DAYS)


def release_image_path(instance: Release, filename: str) -> str:
    return f"firmware/{instance.pk}/{filename}"


class Release(models.Model):
    """A firmware image for some hardware models on a channel.

    The image is either uploaded into storage (``image``, served to agents with HTTP Range
    support) or hosted elsewhere (``external_url``). ``signature`` is the base64 detached ed25519
    signature of the image bytes made by ``manage.py sign_firmware``. Withdrawing a release aborts
    every rollout of it.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    version = models.CharField(max_length=64, unique=True)
    hardware_models = ArrayField(models.CharField(max_length=64), default=list)
    channel = models.CharField(max_length=16, choices=ReleaseChannel.choices, default=ReleaseChannel.STABLE)
    image = models.FileField(upload_to=release_image_path, max_length=255, blank=True, default="")
    external_url = models.URLField(max_length=500, blank=True, default="")
    size = models.BigIntegerField(null=True, blank=True)
    sha256 = models.CharField(max_length=64, blank=True, default="")
    signature = models.CharField(max_length=100, blank=True, default="")
    notes = models.TextField(blank=True, default="")
    state = models.CharField(max_length=16, choices=ReleaseState.choices, default=ReleaseState.DRAFT)
    published_at = models.DateTimeField(null=True, blank=True)
    withdrawn_at = models.DateTimeField(null=True, blank=True)
    withdrawn_reason = models.TextField(blank=True, default="")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=Q(image="") | Q(external_url=""), name="release_image_xor_external_url"
            ),
            models.CheckConstraint(
                condition=Q(state=ReleaseState.DRAFT)
                | (
                    Q(size__gt=0)
                    & ~Q(sha256="")
                    & ~Q(signature="")
                    & (~Q(image="") | ~Q(external_url=""))
                    & Q(published_at__isnull=False)
                ),
                name="release_published_is_complete",
            ),
        ]
        indexes = [models.Index(fields=["state", "channel"], name="release_state_channel_idx")]

    def __str__(self) -> str:
        return self.version

    @property
    def has_image(self) -> bool:
        return bool(self.image) or bool(self.external_url)


class BoxUpgradePolicy(models.Model):
    """When a box may be upgraded: weekdays and hours in its organisation's time zone.

    A box without a row uses the default (every night 02:00-05:00). ``window_end <= window_start``
    means the window runs past midnight (the day listed is the day it starts); equal means all day.
    The customer's auto-upgrade opt-out is ``fleet.Box.auto_upgrade``.
    """

    box = models.OneToOneField(
        "fleet.Box", primary_key=True, on_delete=models.CASCADE, related_name="upgrade_policy"
    )
    window_days = ArrayField(models.PositiveSmallIntegerField(), default=default_window_days)
    window_start = models.TimeField(default=DEFAULT_WINDOW_START)
    window_end = models.TimeField(default=DEFAULT_WINDOW_END)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "box upgrade policies"
        constraints = [
            models.CheckConstraint(
                condition=Q(window_days__contained_by=DEFAULT_WINDOW_DAYS), name="upgrade_policy_days_0_to_6"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.box_id} {self.window_days} {self.window_start}-{self.window_end}"


class Rollout(models.Model):
    """A release sent to a target set of boxes in phases.

    ``phases`` are cumulative percentages of the target (e.g. ``[1, 10, 50, 100]``); each upgrade
    row is assigned its phase at creation. The periodic ``rollouts`` task opens phase ``k + 1``
    once phase ``k`` has settled and soaked ``soak_s`` seconds, keeps at most ``max_in_flight``
    upgrades in flight, and pauses the rollout (recording ``pause_reason``) as soon as the failure
    rate of the open phase exceeds ``max_failure_pct`` or the failures exceed ``max_failures``.
    ``force`` ignores maintenance windows and the customers' auto-upgrade opt-out.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=120)
    release = models.ForeignKey(Release, on_delete=models.PROTECT, related_name="rollouts")
    state = models.CharField(max_length=16, choices=RolloutState.choices, default=RolloutState.DRAFT)
    target = models.JSONField(default=dict, blank=True)
    phases = ArrayField(models.PositiveSmallIntegerField(), default=list)
    phase_sizes = ArrayField(models.PositiveIntegerField(), default=list)
    soak_s = models.PositiveIntegerField(default=3600)
    max_failure_pct = models.FloatField(default=2.0)
    max_failures = models.PositiveIntegerField(null=True, blank=True)
    max_in_flight = models.PositiveIntegerField(default=500)
    force = models.BooleanField(default=False)
    health_window_s = models.PositiveIntegerField(default=900)
    upgrade_timeout_s = models.PositiveIntegerField(default=3600)
    offline_grace_s = models.PositiveIntegerField(default=7 * 24 * 3600)
    start_at = models.DateTimeField(null=True, blank=True)
    current_phase = models.SmallIntegerField(default=-1)
    phase_opened_at = models.DateTimeField(null=True, blank=True)
    phase_settled_at = models.DateTimeField(null=True, blank=True)
    # failures acknowledged by the last resume: the policy counts only failures beyond them
    phase_failure_baseline = models.PositiveIntegerField(default=0)
    failure_baseline = models.PositiveIntegerField(default=0)
    pause_reason = models.TextField(blank=True, default="")
    paused_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    total = models.PositiveIntegerField(default=0)
    skipped = models.PositiveIntegerField(default=0)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=Q(max_failure_pct__gte=0) & Q(max_failure_pct__lte=100),
                name="rollout_failure_pct_0_100",
            ),
            models.CheckConstraint(condition=Q(max_in_flight__gte=1), name="rollout_in_flight_at_least_1"),
        ]
        indexes = [models.Index(fields=["state"], name="rollout_state_idx")]

    def __str__(self) -> str:
        return f"{self.name} ({self.state})"

    # What a person may do next is the state's row of transitions.ROLLOUT_ACTIONS: the services
    # check it under the row lock, the console shows its buttons and the API its "actions" from it.

    def allows(self, action: str) -> bool:
        """Whether ``action`` (a RolloutAction) is legal in the rollout's current state."""
        return action in ROLLOUT_ACTIONS.get(self.state, frozenset())

    @property
    def next_actions(self) -> tuple[RolloutAction, ...]:
        """The actions legal now, in RolloutAction's order (empty once aborted)."""
        return rollout_actions(self.state)

    @property
    def can_start(self) -> bool:
        return self.allows(RolloutAction.START)

    @property
    def can_pause(self) -> bool:
        return self.allows(RolloutAction.PAUSE)

    @property
    def can_resume(self) -> bool:
        return self.allows(RolloutAction.RESUME)

    @property
    def can_abort(self) -> bool:
        return self.allows(RolloutAction.ABORT)

    @property
    def can_retry_failed(self) -> bool:
        return self.allows(RolloutAction.RETRY_FAILED)

    @property
    def is_paused(self) -> bool:
        return self.state == RolloutState.PAUSED


class Upgrade(models.Model):
    """One box's upgrade to a release, inside a rollout or alone (a customer's "upgrade now").

    ``state`` moves only through ``fleet.firmware.transitions``; each state has its own
    timestamp column. ``command_id`` is the ``fleet.commands`` command that delivered it;
    ``boot_id_at_send`` lets the health check tell a reboot from a reconnect.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    rollout = models.ForeignKey(
        Rollout, null=True, blank=True, on_delete=models.CASCADE, related_name="upgrades"
    )
    box = models.ForeignKey("fleet.Box", on_delete=models.CASCADE, related_name="firmware_upgrades")
    release = models.ForeignKey(Release, on_delete=models.PROTECT, related_name="upgrades")
    phase = models.SmallIntegerField(default=0)
    state = models.CharField(max_length=16, choices=UpgradeState.choices, default=UpgradeState.PENDING)
    reason = models.TextField(blank=True, default="")
    from_version = models.CharField(max_length=64, blank=True, default="")
    command_id = models.UUIDField(null=True, blank=True, db_index=True)
    progress = models.PositiveSmallIntegerField(default=0)
    boot_id_at_send = models.CharField(max_length=64, blank=True, default="")
    # The box's telemetry watermark when it was first seen back after the reboot: its health counts
    # only from telemetry sent after that (the status row still holds pre-reboot values at hello).
    seq_at_return = models.BigIntegerField(null=True, blank=True)
    not_before = models.DateTimeField(null=True, blank=True)
    forced = models.BooleanField(default=False)
    attempt = models.PositiveSmallIntegerField(default=1)
    state_changed_at = models.DateTimeField()
    pending_at = models.DateTimeField(null=True, blank=True)
    scheduled_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    downloading_at = models.DateTimeField(null=True, blank=True)
    verifying_at = models.DateTimeField(null=True, blank=True)
    installing_at = models.DateTimeField(null=True, blank=True)
    rebooting_at = models.DateTimeField(null=True, blank=True)
    succeeded_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)
    timed_out_at = models.DateTimeField(null=True, blank=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)
    skipped_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["rollout_id", "phase", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["rollout", "box"], condition=Q(rollout__isnull=False), name="upgrade_once_per_rollout"
            ),
            models.UniqueConstraint(
                fields=["box"], condition=Q(state__in=IN_FLIGHT_STATES), name="upgrade_one_in_flight_per_box"
            ),
        ]
        indexes = [
            models.Index(fields=["rollout", "state", "phase"], name="upgrade_rollout_state_idx"),
            models.Index(fields=["box", "-created_at"], name="upgrade_box_created_idx"),
            models.Index(
                fields=["state"], condition=Q(state__in=IN_FLIGHT_STATES), name="upgrade_in_flight_idx"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.box_id} -> {self.release_id} ({self.state})"
