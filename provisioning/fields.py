"""PostgreSQL ``cidr`` column as a Django field: values are normalised network strings ("10.0.0.0/31")."""

from __future__ import annotations

import ipaddress
from typing import Any

from django.core.exceptions import ValidationError
from django.db import models


class CidrField(models.Field):
    description = "An IPv4 or IPv6 network (PostgreSQL cidr)"

    def db_type(self, connection: Any) -> str:
        return "cidr"

    def to_python(self, value: Any) -> str | None:
        if value is None or value == "":
            return None
        try:
            return str(ipaddress.ip_network(str(value), strict=True))
        except ValueError as exc:
            raise ValidationError(f"{value!r} is not a valid network: {exc}", code="invalid") from exc

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> str | None:
        return None if value is None else str(value)

    def get_prep_value(self, value: Any) -> str | None:
        value = super().get_prep_value(value)
        return self.to_python(value)
