"""A stock OverTheBox box as its own /1.0 protocol knows it: a device subscribed anonymously."""

from __future__ import annotations

import uuid

from django.db import models


class OtbDevice(models.Model):
    """One anonymous subscription. The box identifies itself by ``id`` (its ``device_id``) and proves it
    with a long-lived token, kept here only as its SHA-256. ``jwt_generation`` is written into every JWT;
    raising it revokes every JWT issued before (as does ``revoked_at``)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    mac = models.CharField(max_length=17, db_index=True)
    board = models.CharField(max_length=64)
    private_ips = models.JSONField(default=list, blank=True)
    token_hash = models.CharField(max_length=64, unique=True)
    jwt_generation = models.PositiveIntegerField(default=1)
    source_ip = models.GenericIPAddressField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    # Linked by a claim (pending until then); active once the box confirmed the service.
    box = models.OneToOneField(
        "fleet.Box", null=True, blank=True, on_delete=models.SET_NULL, related_name="otb_device"
    )
    linked_at = models.DateTimeField(null=True, blank=True)
    confirmed_at = models.DateTimeField(null=True, blank=True)
    last_seen_at = models.DateTimeField(null=True, blank=True)
    # The last ``properties`` document the box posted, normalised and bounded (otbcompat.telemetry):
    # every UCI interface with its addresses, public IP, AS and multipath status, mounts, board, release.
    properties = models.JSONField(default=dict, blank=True)
    properties_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.board} {self.mac} ({self.id})"


class OtbDiagnostic(models.Model):
    """One run of the box's ``diagnostic`` action (``POST devices/{id}/diagnostics``): the box then
    PUTs its items to ``diagnostics/{id}``, which join the result of ``command`` (the diagnostics
    command the action came from) under ``checks``. Only the device that created it may add items."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    device = models.ForeignKey(OtbDevice, on_delete=models.CASCADE, related_name="diagnostics")
    command = models.ForeignKey("commands.Command", on_delete=models.CASCADE, related_name="+")
    items = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"diagnostic {self.id} of command {self.command_id}"
