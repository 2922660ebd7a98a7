"""Output shapes of boxes as people see them (list, detail, claim), with their server and region."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from fleet.core.serializers import OrganizationRefSerializer


class ServerRefSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    region = serializers.CharField(source="region.code")


class BoxOutputSerializer(serializers.Serializer):
    """A box as customers and staff see it (list and detail)."""

    id = serializers.UUIDField()
    serial = serializers.CharField()
    name = serializers.CharField()
    model = serializers.CharField()
    mac = serializers.CharField()
    state = serializers.CharField()
    protocol = serializers.CharField(help_text="agent (otb-agent) or otb (the stock OverTheBox firmware)")
    organization = OrganizationRefSerializer(allow_null=True)
    server = ServerRefSerializer(allow_null=True)
    public_ipv4 = serializers.SerializerMethodField()
    firmware_version = serializers.CharField()
    agent_version = serializers.CharField()
    config_hash = serializers.CharField()
    applied_config_hash = serializers.CharField()
    applied_at = serializers.DateTimeField(allow_null=True)
    apply_error = serializers.CharField()
    drift = serializers.BooleanField(source="config_drift")
    enrolled_at = serializers.DateTimeField(allow_null=True)
    claimed_at = serializers.DateTimeField(allow_null=True)
    tags = serializers.ListField(child=serializers.CharField())

    def get_public_ipv4(self, box: Any) -> str | None:
        return getattr(box, "public_ipv4", None) or None
