"""Aggregation servers, address pools and assignments, tunnel credentials (regions are the fleet core's).

Address invariants live in PostgreSQL: pools never overlap, an assigned prefix never overlaps
another one (active or quarantined), a box holds at most one active assignment per purpose, and a
server never holds more boxes than its capacity.
"""

from __future__ import annotations

import ipaddress
import uuid

from django.contrib.postgres.constraints import ExclusionConstraint
from django.contrib.postgres.fields import RangeOperators
from django.contrib.postgres.indexes import OpClass
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import F, Q

from fleet.core.models import Region
from provisioning.choices import AssignmentState, PoolPurpose, ServerStatus, TunnelKind
from provisioning.fields import CidrField


class AggregationServer(models.Model):
    """A server terminating box tunnels. Only ``active`` servers receive new boxes.

    ``assigned_boxes`` is maintained under a row lock by the provisioning services and checked
    against ``capacity`` by the database.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=100, unique=True)
    region = models.ForeignKey(Region, on_delete=models.PROTECT, related_name="servers")
    hostname = models.CharField(max_length=253)
    public_ipv4 = models.GenericIPAddressField(protocol="IPv4")
    public_ipv6 = models.GenericIPAddressField(protocol="IPv6", null=True, blank=True)
    tunnel_port_min = models.PositiveIntegerField(default=51820)
    tunnel_port_max = models.PositiveIntegerField(default=52819)
    capacity = models.PositiveIntegerField()
    assigned_boxes = models.PositiveIntegerField(default=0)
    # Lowest tunnel port that may be free: every port below it is taken. Raised on allocation and
    # lowered when a port is freed, so the gap search starts here instead of scanning every box.
    free_port_hint = models.PositiveIntegerField(default=0)
    status = models.CharField(max_length=16, choices=ServerStatus.choices, default=ServerStatus.ACTIVE)
    wg_public_key = models.CharField(max_length=64, blank=True, default="")
    token_prefix = models.CharField(max_length=16, blank=True, default="")
    token_hash = models.CharField(max_length=64, unique=True, null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(assigned_boxes__lte=F("capacity")), name="server_assigned_within_capacity"
            ),
            models.CheckConstraint(
                condition=Q(tunnel_port_min__gte=1)
                & Q(tunnel_port_max__lte=65535)
                & Q(tunnel_port_min__lte=F("tunnel_port_max")),
                name="server_tunnel_port_range_valid",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if self.tunnel_port_min and self.tunnel_port_max and self.tunnel_port_min > self.tunnel_port_max:
            raise ValidationError({"tunnel_port_max": "must be at least tunnel_port_min"})
        port_count = (self.tunnel_port_max or 0) - (self.tunnel_port_min or 0) + 1
        if self.capacity is not None and self.capacity > port_count:
            raise ValidationError({"capacity": f"exceeds the {port_count} ports of the tunnel port range"})


class AddressPool(models.Model):
    """A block handed out in equal prefixes of ``prefix_length`` (a /32 public address, a /31 tunnel
    pair, a /56 delegated prefix). Tied to a region or to one server, never both; pools never overlap.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=100, unique=True)
    region = models.ForeignKey(Region, null=True, blank=True, on_delete=models.PROTECT, related_name="pools")
    server = models.ForeignKey(
        AggregationServer, null=True, blank=True, on_delete=models.PROTECT, related_name="pools"
    )
    cidr = CidrField()
    purpose = models.CharField(max_length=16, choices=PoolPurpose.choices)
    prefix_length = models.PositiveSmallIntegerField()
    # Lowest index that may be free: every index below it is taken (active or quarantined). Raised on
    # allocation and lowered when quarantined rows are deleted, so the gap search starts here.
    free_index_hint = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=(Q(region__isnull=False) & Q(server__isnull=True))
                | (Q(region__isnull=True) & Q(server__isnull=False)),
                name="pool_region_xor_server",
            ),
            ExclusionConstraint(
                name="pool_no_overlap",
                index_type="GIST",
                expressions=[(OpClass("cidr", name="inet_ops"), RangeOperators.OVERLAPS)],
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.cidr})"

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return ipaddress.ip_network(self.cidr)

    @property
    def size(self) -> int:
        """How many prefixes of ``prefix_length`` the pool holds."""
        return 1 << (self.prefix_length - self.network.prefixlen)

    def clean(self) -> None:
        errors: dict[str, str] = {}
        try:
            network = ipaddress.ip_network(self.cidr, strict=True)
        except (TypeError, ValueError) as exc:
            raise ValidationError({"cidr": f"not a valid network: {exc}"}) from exc
        expected_family = 6 if self.purpose == PoolPurpose.IPV6_PREFIX else None
        if self.purpose == PoolPurpose.PUBLIC_IPV4 and network.version != 4:
            errors["cidr"] = "a public IPv4 pool must be an IPv4 network"
        if expected_family == 6 and network.version != 6:
            errors["cidr"] = "a delegated IPv6 prefix pool must be an IPv6 network"
        max_len = network.max_prefixlen
        if self.prefix_length is not None and not network.prefixlen <= self.prefix_length <= max_len:
            errors["prefix_length"] = f"must be between {network.prefixlen} and {max_len}"
        if self.purpose == PoolPurpose.PUBLIC_IPV4 and self.prefix_length not in (None, 32):
            errors["prefix_length"] = "public IPv4 pools hand out single addresses (/32)"
        if errors:
            raise ValidationError(errors)


class AddressAssignment(models.Model):
    """One prefix of a pool held by a box (active) or cooling down after release (quarantined).

    ``index`` is the prefix's position in the pool. Quarantined rows keep occupying their prefix
    until the cool-down passes and the row is deleted, so a released address is not reused early.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    pool = models.ForeignKey(AddressPool, on_delete=models.PROTECT, related_name="assignments")
    box = models.ForeignKey(
        "fleet.Box", null=True, blank=True, on_delete=models.PROTECT, related_name="addresses"
    )
    purpose = models.CharField(max_length=16, choices=PoolPurpose.choices)
    index = models.PositiveIntegerField()
    prefix = CidrField()
    state = models.CharField(max_length=16, choices=AssignmentState.choices, default=AssignmentState.ACTIVE)
    assigned_at = models.DateTimeField(auto_now_add=True)
    released_at = models.DateTimeField(null=True, blank=True)
    quarantine_until = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["pool", "index"]
        constraints = [
            models.UniqueConstraint(fields=["pool", "index"], name="assignment_unique_pool_index"),
            models.UniqueConstraint(fields=["prefix"], name="assignment_unique_prefix"),
            ExclusionConstraint(
                name="assignment_no_overlap",
                index_type="GIST",
                expressions=[(OpClass("prefix", name="inet_ops"), RangeOperators.OVERLAPS)],
            ),
            models.UniqueConstraint(
                fields=["box", "purpose"],
                condition=Q(state=AssignmentState.ACTIVE),
                name="assignment_one_active_per_box_purpose",
            ),
            models.CheckConstraint(
                condition=(Q(state=AssignmentState.ACTIVE) & Q(box__isnull=False))
                | (Q(state=AssignmentState.QUARANTINED) & Q(quarantine_until__isnull=False)),
                name="assignment_state_consistent",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.prefix} ({self.state})"


class TunnelCredential(models.Model):
    """A box's credential for one tunnel type; at most one live per (box, kind).

    WireGuard: the box's public key (its private key never leaves the box) and a preshared key.
    Glorytun- and shadowsocks-style: a random symmetric key. Symmetric material is encrypted at rest
    (``provisioning.secrets``).
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    box = models.ForeignKey("fleet.Box", on_delete=models.CASCADE, related_name="tunnel_credentials")
    kind = models.CharField(max_length=16, choices=TunnelKind.choices)
    public_key = models.CharField(max_length=64, blank=True, default="")
    secret_ciphertext = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    # re-encrypted by ``manage.py secrets_reencrypt`` (fleet.core.secrets)
    encrypted_fields = ("secret_ciphertext",)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["box", "kind"],
                condition=Q(revoked_at__isnull=True),
                name="tunnel_credential_one_live",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} ({'revoked' if self.revoked_at else 'live'})"


class GatewayHealth(models.Model):
    """The latest report of a server's gateway (``otb-gateway``, POST /api/v1/servers/self/report):
    one row per server, replaced by each report. Upstream rates are computed from the previous
    report's counters (null when there is none, or when a counter went backwards: a restart)."""

    server = models.OneToOneField(
        AggregationServer, primary_key=True, on_delete=models.CASCADE, related_name="gateway_health"
    )
    last_report_at = models.DateTimeField()
    gateway_version = models.CharField(max_length=64)
    uptime_s = models.BigIntegerField()
    load1 = models.FloatField(null=True, blank=True)
    cpu_pct = models.FloatField(null=True, blank=True)
    mem_pct = models.FloatField(null=True, blank=True)
    peers = models.PositiveIntegerField()
    converge_errors = models.PositiveIntegerField()
    last_error = models.TextField(blank=True, default="")
    upstream_iface = models.CharField(max_length=15, blank=True, default="")
    upstream_rx_bytes = models.BigIntegerField(null=True, blank=True)
    upstream_tx_bytes = models.BigIntegerField(null=True, blank=True)
    upstream_rx_bps = models.BigIntegerField(null=True, blank=True)
    upstream_tx_bps = models.BigIntegerField(null=True, blank=True)

    def __str__(self) -> str:
        return f"gateway of {self.server_id} at {self.last_report_at:%Y-%m-%d %H:%M:%S}"


class BoxTunnelStatus(models.Model):
    """A box's tunnel as its server's gateway last reported it. ``rx`` is what the gateway received
    from the box (its upload), ``tx`` what it sent to the box (its download); bytes are the
    gateway's cumulative counters, rates come from the previous report's (null when unknown).
    A box the gateway stops reporting loses its row; a box that moves gets the new server's."""

    box = models.OneToOneField(
        "fleet.Box", primary_key=True, on_delete=models.CASCADE, related_name="tunnel_status"
    )
    server = models.ForeignKey(AggregationServer, on_delete=models.CASCADE, related_name="box_tunnels")
    reported_at = models.DateTimeField()
    rx_bytes = models.BigIntegerField()
    tx_bytes = models.BigIntegerField()
    rx_bps = models.BigIntegerField(null=True, blank=True)
    tx_bps = models.BigIntegerField(null=True, blank=True)
    connections = models.PositiveIntegerField()
    handshake_age_s = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "box tunnel statuses"

    def __str__(self) -> str:
        return f"tunnel of {self.box_id}"
