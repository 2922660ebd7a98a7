"""Strict input fields and the output shapes shared by several endpoints.

Input is strict: unknown keys are refused (naming them), strings must be JSON strings, numbers JSON
integers and booleans JSON booleans - no silent coercion of ``"12"`` or ``1``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import cache
from typing import Any

from rest_framework import serializers

from fleet.core.validators import SERIAL_RE

# The JSON type each kind of field takes, checked before DRF would coerce (``1`` into ``"1"``,
# ``"12"`` into 12, ``"yes"`` into True). Order matters: BooleanField before IntegerField's kin,
# serializers (objects) before the generic string fields.
_STRING_FIELDS = (
    serializers.CharField,
    serializers.ChoiceField,
    serializers.UUIDField,
    serializers.DateTimeField,
    serializers.DateField,
    serializers.TimeField,
    serializers.RelatedField,
)


def json_type_errors(field: serializers.Field, value: Any, name: str) -> dict[str, list[str]]:
    """What is wrong with the JSON type of ``value`` for ``field`` (keyed by the field's path,
    ``targets[2]``), before any conversion; lists are checked item by item. A string longer than
    the field's ``max_length`` is refused before DRF trims its whitespace, so the schema's
    ``maxLength`` is exactly what the API takes."""
    if value is None or isinstance(field, serializers.JSONField):
        return {}  # null: the field's allow_null decides; JSON: anything goes
    expected: tuple[type, ...]
    if isinstance(field, serializers.BooleanField):
        expected, message = (bool,), "must be true or false"
    elif isinstance(field, serializers.IntegerField):
        expected, message = (int,), "must be a whole number"
    elif isinstance(field, serializers.FloatField | serializers.DecimalField):
        expected, message = (int, float), "must be a number"
    elif isinstance(field, serializers.ListSerializer | serializers.ListField):
        if not isinstance(value, list):
            return {name: ["must be a list"]}
        child = field.child
        errors: dict[str, list[str]] = {}
        for index, item in enumerate(value):
            errors.update(json_type_errors(child, item, f"{name}[{index}]"))  # type: ignore[arg-type]
        return errors
    elif isinstance(field, serializers.BaseSerializer | serializers.DictField):
        expected, message = (dict,), "must be an object"
    elif isinstance(field, _STRING_FIELDS):
        expected, message = (str,), "must be a string"
    else:
        return {}
    if isinstance(value, bool) and bool not in expected:
        return {name: [message]}
    if not isinstance(value, expected):
        return {name: [message]}
    max_length = getattr(field, "max_length", None)
    too_long = max_length is not None and isinstance(value, str) and len(value) > max_length
    if too_long and isinstance(field, serializers.CharField):
        return {name: [f"at most {max_length} characters"]}
    return {}


class StrictFieldsMixin:
    """Refuse keys the serializer does not declare (``{"fields": {"<key>": ["unknown field"]}}``)
    and values of the wrong JSON type (``json_type_errors``), naming each."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, Mapping):
            fields = {name: field for name, field in self.fields.items() if not field.read_only}  # type: ignore[attr-defined]
            unknown = sorted(str(key) for key in data if key not in fields)
            if unknown:
                raise serializers.ValidationError({key: ["unknown field"] for key in unknown})
            errors: dict[str, list[str]] = {}
            for name, value in data.items():
                errors.update(json_type_errors(fields[name], value, name))
            if errors:
                raise serializers.ValidationError(errors)
        return super().to_internal_value(data)  # type: ignore[misc]


class StrictSerializer(StrictFieldsMixin, serializers.Serializer):
    """A request body: no unknown key, no value of the wrong JSON type (the schema says which:
    ``additionalProperties: false``, fleet.core.apis.base.ApiSchema)."""


@cache
def _output_serializer(serializer_class: type[serializers.Serializer]) -> serializers.Serializer:
    return serializer_class()


def represent(serializer_class: type[serializers.Serializer], instance: Any) -> dict[str, Any]:
    """``serializer_class(instance).data`` without building the serializer again: one bound
    instance per class is kept and reused. DRF deep-copies every declared field for each new
    serializer, which was a tenth of a claim's CPU. Only for output serializers that do not read
    ``self.context`` (they are shared between threads and never hold per-call state)."""
    return _output_serializer(serializer_class).to_representation(instance)


class FiniteFloatField(serializers.FloatField):
    """An output float that is null unless finite: JSON has no NaN or infinity, so one stored value
    (say, from before the agent protocol bounded every number) would otherwise fail the response."""

    def to_representation(self, value: Any) -> Any:
        number = float(value)
        return number if math.isfinite(number) else None


class StrictCharField(serializers.CharField):
    default_error_messages = {"invalid": "must be a string"}

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictIntegerField(serializers.IntegerField):
    default_error_messages = {"invalid": "must be a whole number"}

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictFloatField(serializers.FloatField):
    """A JSON number (integer or not), finite; never a string or a boolean."""

    default_error_messages = {"invalid": "must be a number"}

    def to_internal_value(self, data: Any) -> float:
        if isinstance(data, bool) or not isinstance(data, int | float) or not math.isfinite(data):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    default_error_messages = {"invalid": "must be true or false"}

    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            self.fail("invalid")
        return data


class SerialField(StrictCharField):
    """A box serial: 1 to 64 ASCII letters, digits, dot, underscore or dash."""

    default_error_messages = {
        "invalid": "must be a string",
        "serial": "a serial is 1 to 64 characters from A-Z a-z 0-9 . _ -",
    }

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("trim_whitespace", False)
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> str:
        value = super().to_internal_value(data)
        if not SERIAL_RE.fullmatch(value):
            self.fail("serial")
        return value


class StrictUUIDField(serializers.UUIDField):
    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, str):
            self.fail("invalid", value=data)
        return super().to_internal_value(data)


class QuerySerializer(serializers.Serializer):
    """Typed query parameters (``?state=&from=``). A parameter given empty is refused naming it:
    DRF reads a query string like a form and takes ``?state=`` as no filter at all, which is not what
    the schema says (an enum, a UUID, a date-time) nor what the caller meant."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, Mapping):
            blank = sorted(
                name
                for name, field in self.fields.items()
                if data.get(name) == "" and not getattr(field, "allow_blank", False)
            )
            if blank:
                raise serializers.ValidationError({name: ["must not be empty"] for name in blank})
        return super().to_internal_value(data)


class OrganizationRefSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()


class RegionRefSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    code = serializers.CharField()
    name = serializers.CharField()


class AuditEntrySerializer(serializers.Serializer):
    id = serializers.UUIDField()
    created_at = serializers.DateTimeField()
    actor = serializers.CharField(source="actor_label")
    action = serializers.CharField()
    organization_id = serializers.UUIDField(allow_null=True)
    box_id = serializers.UUIDField(allow_null=True)
    box_serial = serializers.SerializerMethodField()
    target_type = serializers.CharField()
    target_id = serializers.CharField()
    before = serializers.JSONField(allow_null=True)
    after = serializers.JSONField(allow_null=True)
    request_id = serializers.CharField()
    source_ip = serializers.IPAddressField(allow_null=True)

    def get_box_serial(self, entry: Any) -> str | None:
        return entry.box.serial if entry.box_id and entry.box else None
