"""Live status of boxes and their WAN links, and the rollup progress watermark.

The raw samples and rollups are natively partitioned PostgreSQL tables created by RunSQL migrations
(``telemetry_box_sample``, ``telemetry_wan_sample``, ``telemetry_{box,wan}_rollup_{5m,1h}``); they are
written with COPY / INSERT ... SELECT by ``fleet.telemetry.writer`` and ``fleet.telemetry.services``
and read with SQL by ``fleet.telemetry.selectors``, so they have no Django model.
"""

from __future__ import annotations

from django.db import models
from django.db.models.functions import Now

from fleet.core.choices import WanKind


class BoxStatus(models.Model):
    """What the cloud knows about a box right now: one row per box.

    ``last_seq`` is the telemetry acknowledgement watermark: every message with ``seq <= last_seq``
    is committed in the sample tables (the writer moves it under a row lock in the same transaction
    as the COPY). ``session_id`` names the box's current websocket session; only that session may
    mark the box offline when it ends. Every defaulted column also has its default in the database
    (``db_default``): the live paths insert rows in raw SQL naming only the columns they set.
    """

    box = models.OneToOneField("fleet.Box", primary_key=True, on_delete=models.CASCADE, related_name="status")
    online = models.BooleanField(default=False, db_default=False)
    session_id = models.CharField(max_length=64, blank=True, default="", db_default="")
    connected_at = models.DateTimeField(null=True, blank=True)
    disconnected_at = models.DateTimeField(null=True, blank=True)
    last_seen_at = models.DateTimeField(null=True, blank=True)
    last_seq = models.BigIntegerField(default=0, db_default=0)
    boot_id = models.CharField(max_length=64, blank=True, default="", db_default="")
    uptime_s = models.BigIntegerField(null=True, blank=True)
    agent_version = models.CharField(max_length=32, blank=True, default="", db_default="")
    firmware_version = models.CharField(max_length=64, blank=True, default="", db_default="")
    tunnel_up = models.BooleanField(null=True, blank=True)
    cpu_pct = models.FloatField(null=True, blank=True)
    mem_pct = models.FloatField(null=True, blank=True)
    # Free memory in kB, from a source that reports it (a stock OverTheBox box's ``os_mem_free``).
    mem_free_kb = models.BigIntegerField(null=True, blank=True)
    load1 = models.FloatField(null=True, blank=True)
    rx_bps = models.BigIntegerField(null=True, blank=True)
    tx_bps = models.BigIntegerField(null=True, blank=True)
    wans_up = models.IntegerField(default=0, db_default=0)
    wans_total = models.IntegerField(default=0, db_default=0)
    dropped_samples = models.BigIntegerField(default=0, db_default=0)
    offline_since = models.DateTimeField(null=True, blank=True)
    # Reconnections are refused until then (the box sent too many invalid frames).
    penalty_until = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True, db_default=Now())

    class Meta:
        verbose_name_plural = "box statuses"
        # No index on last_seen_at/online: they change on every telemetry batch, and an index on them
        # would turn the writer's HOT updates into index insertions (the presence sweep scans instead).

    def __str__(self) -> str:
        return f"{self.box_id} {'online' if self.online else 'offline'}"


class WanStatus(models.Model):
    """The latest reported state of one WAN link of a box; one row per (box, iface).

    ``up_changed_at`` is the time of the last up/down transition; ``degraded_since`` is set while the
    link is up but losing packets or slow (the rules: ``fleet.telemetry.transitions``).
    """

    box = models.ForeignKey("fleet.Box", on_delete=models.CASCADE, related_name="wan_statuses")
    iface = models.CharField(max_length=32)
    label = models.CharField(max_length=64, blank=True, default="", db_default="")
    kind = models.CharField(
        max_length=16, choices=WanKind.choices, default=WanKind.OTHER, db_default=WanKind.OTHER
    )
    up = models.BooleanField(default=False, db_default=False)
    rtt_ms = models.FloatField(null=True, blank=True)
    jitter_ms = models.FloatField(null=True, blank=True)
    loss_pct = models.FloatField(null=True, blank=True)
    rx_bps = models.BigIntegerField(default=0, db_default=0)
    tx_bps = models.BigIntegerField(default=0, db_default=0)
    public_ip = models.GenericIPAddressField(null=True, blank=True)
    subflows = models.IntegerField(default=0, db_default=0)
    up_changed_at = models.DateTimeField()
    degraded_since = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField()

    class Meta:
        ordering = ["box", "iface"]
        constraints = [
            models.UniqueConstraint(fields=["box", "iface"], name="wanstatus_unique_box_iface"),
        ]

    def __str__(self) -> str:
        return f"{self.box_id}/{self.iface} {'up' if self.up else 'down'}"


class RollupWatermark(models.Model):
    """How far a rollup has aggregated: every bucket starting before ``through`` is rolled up
    (re-rolled within the lookback window on each run, so samples in flight are still counted; older
    late samples are re-rolled through ``StaleRollup``)."""

    name = models.CharField(max_length=32, primary_key=True)
    through = models.DateTimeField()
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.name} through {self.through:%Y-%m-%d %H:%M}"


class StaleRollup(models.Model):
    """An hour of one box whose rollups miss samples: the writer marks it, in the transaction that
    stores them, when it stores samples too old for the rollups' lookback (late samples, a clock
    behind); the rollup task consumes the mark and re-rolls that box's 5-minute and hourly buckets of
    the hour (docs/telemetry.md, "Late samples"). At most one mark per box and hour."""

    box = models.ForeignKey("fleet.Box", on_delete=models.CASCADE, related_name="+")
    hour = models.DateTimeField()
    marked_at = models.DateTimeField(auto_now_add=True, db_default=Now())

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["box", "hour"], name="stalerollup_unique_box_hour"),
        ]

    def __str__(self) -> str:
        return f"{self.box_id} {self.hour:%Y-%m-%d %H:00}"
