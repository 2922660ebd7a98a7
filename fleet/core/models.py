"""Regions, organisations, their people and tokens, the boxes and their agent credentials, the audit
log and the box timeline (events).

Public ids are UUIDs. Secrets (tokens, factory secrets, claim codes) are stored only as SHA-256
digests; see ``fleet.core.tokens``.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.db.models import F, Q
from django.db.models.functions import Upper

from fleet.core.choices import BoxProtocol, BoxState, EventKind, ReleaseChannel, Role, WanMode


def default_wan_policy() -> dict:
    return {"mode": WanMode.AGGREGATE.value, "interfaces": []}


class Region(models.Model):
    """A geographic region: organisations prefer one for their boxes; aggregation servers and address
    pools (``provisioning``) belong to one."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    code = models.SlugField(max_length=32, unique=True)
    name = models.CharField(max_length=100)

    class Meta:
        ordering = ["code"]

    def __str__(self) -> str:
        return self.code


class Organization(models.Model):
    """A customer account. Boxes, members and tokens belong to exactly one organisation."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=120, unique=True)
    slug = models.SlugField(max_length=120, unique=True)
    preferred_region = models.ForeignKey(
        Region, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    timezone = models.CharField(max_length=64, default="Europe/Paris")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    """A user's role in an organisation; one row per (user, organisation)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "organization"], name="membership_unique_user_org"),
        ]

    def __str__(self) -> str:
        return f"{self.user} @ {self.organization} ({self.role})"


class Invitation(models.Model):
    """An owner's invitation for an email address to join with a role; accepted once, expires."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="invitations")
    email = models.EmailField()
    role = models.CharField(max_length=16, choices=Role.choices)
    token_hash = models.CharField(max_length=64, unique=True)
    invited_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.email} -> {self.organization_id} ({self.role})"


class ApiToken(models.Model):
    """A personal API token: acts as its user within one organisation; hashed, expiring, revocable."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    token_prefix = models.CharField(max_length=16)
    token_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.token_prefix}…)"


class EnrollmentToken(models.Model):
    """Lets boxes that were never imported enroll straight into an organisation.

    Hashed, expiring, optionally single-use, revocable.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="enrollment_tokens")
    name = models.CharField(max_length=100)
    token_prefix = models.CharField(max_length=16)
    token_hash = models.CharField(max_length=64, unique=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    single_use = models.BooleanField(default=False)
    uses = models.PositiveIntegerField(default=0)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.token_prefix}…)"


class Box(models.Model):
    """A bonding box. Claimed boxes have an organisation; unclaimed and decommissioned ones have none.

    ``config_hash`` is the hash of the desired configuration (recomputed by the services whenever an
    input of it changes); ``applied_config_hash`` is what the box last reported applying.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    serial = models.CharField(max_length=64, unique=True)
    model = models.CharField(max_length=64, blank=True, default="")
    mac = models.CharField(max_length=17, blank=True, default="", db_index=True)
    factory_secret_hash = models.CharField(max_length=64, blank=True, default="")
    claim_code_hash = models.CharField(max_length=64, blank=True, default="")
    state = models.CharField(max_length=16, choices=BoxState.choices, default=BoxState.UNCLAIMED)
    organization = models.ForeignKey(
        Organization, null=True, blank=True, on_delete=models.PROTECT, related_name="boxes"
    )
    name = models.CharField(max_length=100, blank=True, default="")
    tags = ArrayField(models.CharField(max_length=40), default=list, blank=True)
    server = models.ForeignKey(
        "provisioning.AggregationServer",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="boxes",
    )
    tunnel_port = models.PositiveIntegerField(null=True, blank=True)
    wg_public_key = models.CharField(max_length=64, blank=True, default="")
    wan_policy = models.JSONField(default=default_wan_policy)
    port_forwards = models.JSONField(default=list, blank=True)
    config_hash = models.CharField(max_length=64, blank=True, default="")
    applied_config_hash = models.CharField(max_length=64, blank=True, default="")
    applied_at = models.DateTimeField(null=True, blank=True)
    apply_error = models.TextField(blank=True, default="")
    firmware_version = models.CharField(max_length=64, blank=True, default="")
    agent_version = models.CharField(max_length=64, blank=True, default="")
    protocol = models.CharField(max_length=8, choices=BoxProtocol.choices, default=BoxProtocol.AGENT)
    release_channel = models.CharField(
        max_length=16, choices=ReleaseChannel.choices, default=ReleaseChannel.STABLE
    )
    auto_upgrade = models.BooleanField(default=True)
    enrolled_at = models.DateTimeField(null=True, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    decommissioned_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["serial"]
        verbose_name_plural = "boxes"
        constraints = [
            models.CheckConstraint(
                condition=(Q(state=BoxState.CLAIMED) & Q(organization__isnull=False))
                | (~Q(state=BoxState.CLAIMED) & Q(organization__isnull=True)),
                name="box_claimed_iff_organization",
            ),
            models.UniqueConstraint(
                fields=["server", "tunnel_port"],
                condition=Q(server__isnull=False),
                name="box_unique_tunnel_port_per_server",
            ),
        ]
        indexes = [
            models.Index(fields=["organization", "serial"], name="box_org_serial_idx"),
            # A claim matches the typed serial ignoring case (``serial__iexact``: UPPER(serial) = UPPER(%s)).
            models.Index(Upper("serial"), name="box_serial_upper_idx"),
        ]

    def __str__(self) -> str:
        return self.serial

    @property
    def config_drift(self) -> bool:
        """The box does not run its desired configuration: it last applied another one, or it failed
        to apply the desired one (``BOX_DRIFTING`` is the same rule for querysets)."""
        return bool(self.config_hash) and (
            self.config_hash != self.applied_config_hash or bool(self.apply_error)
        )


# Boxes whose ``config_drift`` is true, as a query condition (lists, filters, counts).
BOX_DRIFTING = ~Q(config_hash="") & (~Q(config_hash=F("applied_config_hash")) | ~Q(apply_error=""))


class AgentCredential(models.Model):
    """The token an on-box agent authenticates with. At most one live (unrevoked) per box."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    box = models.ForeignKey(Box, on_delete=models.CASCADE, related_name="agent_credentials")
    token_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["box"], condition=Q(revoked_at__isnull=True), name="agent_credential_one_live_per_box"
            ),
        ]

    def __str__(self) -> str:
        return f"agent credential of box {self.box_id}" + (" (revoked)" if self.revoked_at else "")


class AuditLog(models.Model):
    """Who changed what: every state change made by a person, an operator, a box or the system."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_label = models.CharField(max_length=150)
    organization = models.ForeignKey(
        Organization, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    box = models.ForeignKey(Box, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    action = models.CharField(max_length=64, db_index=True)
    target_type = models.CharField(max_length=64, blank=True, default="")
    target_id = models.CharField(max_length=64, blank=True, default="")
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    request_id = models.CharField(max_length=64, blank=True, default="")
    source_ip = models.GenericIPAddressField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["organization", "-created_at"], name="audit_org_created_idx"),
            models.Index(fields=["box", "-created_at"], name="audit_box_created_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.actor_label} {self.action}"


class Event(models.Model):
    """One fact on a box's timeline at ``ts``. ``organization`` is the box's organisation at the
    time (null for an unclaimed box) so organisation timelines stay correct after a release."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    box = models.ForeignKey(Box, on_delete=models.CASCADE, related_name="events")
    organization = models.ForeignKey(
        Organization, null=True, blank=True, on_delete=models.CASCADE, related_name="events"
    )
    kind = models.CharField(max_length=32, choices=EventKind.choices)
    ts = models.DateTimeField()
    data = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-ts", "-id"]
        indexes = [
            models.Index(fields=["box", "-ts"], name="event_box_ts_idx"),
            models.Index(fields=["organization", "-ts"], name="event_org_ts_idx"),
            models.Index(fields=["ts"], name="event_ts_idx"),  # retention
        ]

    def __str__(self) -> str:
        return f"{self.ts:%Y-%m-%d %H:%M:%S} {self.kind}"
