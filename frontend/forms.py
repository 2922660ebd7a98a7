"""Page forms: they parse and shape input only. Rules live in the services, whose errors are shown
on the field they name (``frontend.errors.form_add_domain_error``)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, cast

from django import forms
from django.db import models

from fleet.commands.choices import CommandKind
from fleet.core.choices import ReleaseChannel, Role, WanMode, WanRole
from fleet.monitoring.choices import TargetKind
from provisioning.wan_policy import WAN_MAX_KBPS


class InvitationAcceptForm(forms.Form):
    token = forms.CharField(
        label="Invitation token",
        max_length=200,
        help_text="It is in the invitation email and starts with otbi_.",
    )


class FleetStatus(models.TextChoices):
    """The fleet page's status filter: from the live status (online) or the configuration (drift)."""

    ONLINE = "online", "Online"
    OFFLINE = "offline", "Offline"
    DRIFT = "drift", "Config pending"


class FleetFilterForm(forms.Form):
    """The fleet page's search and filters (all optional; bad values are ignored, not a 500)."""

    q = forms.CharField(label="Search", required=False, max_length=100)
    status = forms.ChoiceField(
        label="Status", required=False, choices=[("", "Any status"), *FleetStatus.choices]
    )
    region = forms.ChoiceField(label="Region", required=False)
    firmware = forms.CharField(label="Firmware", required=False, max_length=64)
    page = forms.IntegerField(required=False, min_value=1)

    def __init__(self, *args: Any, regions: list[tuple[str, str]] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cast(forms.ChoiceField, self.fields["region"]).choices = [("", "Any region"), *(regions or [])]

    def box_filters(self) -> dict[str, Any]:
        """What a valid form asks ``fleet.core.selectors.box_list`` for (drift included)."""
        filters: dict[str, Any] = {
            key: self.cleaned_data[key] for key in ("q", "region", "firmware") if self.cleaned_data.get(key)
        }
        if self.cleaned_data.get("status") == FleetStatus.DRIFT:
            filters["drift"] = True
        return filters

    def online(self) -> bool | None:
        """True for online boxes only, False for offline ones, None for any."""
        status = self.cleaned_data.get("status")
        if status == FleetStatus.ONLINE:
            return True
        if status == FleetStatus.OFFLINE:
            return False
        return None


class BoxClaimForm(forms.Form):
    serial = forms.CharField(label="Serial number", max_length=64, help_text="On the label under the box.")
    claim_code = forms.CharField(
        label="Claim code", max_length=128, strip=False, help_text="Printed next to the serial number."
    )


class BoxRenameForm(forms.Form):
    name = forms.CharField(label="Name", required=False, max_length=100)
    tags = forms.CharField(
        label="Tags", required=False, max_length=900, help_text="Separated by spaces or commas."
    )

    def cleaned_tags(self) -> list[str]:
        raw = self.cleaned_data.get("tags") or ""
        return [tag for tag in raw.replace(",", " ").split() if tag]


class WanPolicyForm(forms.Form):
    """Mode plus one role per interface; the interface fields are added from the box's links."""

    mode = forms.ChoiceField(label="Mode", choices=WanMode.choices)
    download_kbps = forms.IntegerField(
        label="Download limit (kbit/s)",
        required=False,
        min_value=1,
        max_value=WAN_MAX_KBPS,
        help_text="What the aggregation server lets through to the box; empty: no limit.",
    )
    upload_kbps = forms.IntegerField(
        label="Upload limit (kbit/s)",
        required=False,
        min_value=1,
        max_value=WAN_MAX_KBPS,
        help_text="What the aggregation server accepts from the box; empty: no limit.",
    )

    def __init__(self, *args: Any, interfaces: list[dict] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.interfaces = interfaces or []
        for index, interface in enumerate(self.interfaces):
            self.fields[f"role_{index}"] = forms.ChoiceField(
                label=f"Role of {interface.get('label') or interface['name']}",
                choices=WanRole.choices,
                initial=interface.get("role", WanRole.PRIMARY),
            )

    def role_fields(self) -> list[tuple[dict, forms.BoundField]]:
        return [(interface, self[f"role_{index}"]) for index, interface in enumerate(self.interfaces)]

    def policy_interfaces(self) -> list[dict]:
        """The interfaces as the service takes them, keeping what the editor does not show."""
        result = []
        for index, interface in enumerate(self.interfaces):
            entry = {
                key: interface[key] for key in ("name", "kind", "up_kbps", "down_kbps") if key in interface
            }
            entry["role"] = self.cleaned_data[f"role_{index}"]
            result.append(entry)
        return result


class FirmwareSettingsForm(forms.Form):
    auto_upgrade = forms.BooleanField(label="Upgrade automatically in the maintenance window", required=False)


class PostponeForm(forms.Form):
    days = forms.TypedChoiceField(
        label="Postpone by",
        coerce=int,
        choices=[(1, "1 day"), (3, "3 days"), (6, "6 days")],
        initial=3,
    )


class CommandForm(forms.Form):
    kind = forms.ChoiceField(
        label="Command",
        choices=[
            (CommandKind.REBOOT, "Reboot"),
            (CommandKind.DIAGNOSTICS, "Run diagnostics"),
            (CommandKind.SPEED_TEST, "Speed test"),
            (CommandKind.RESTART_SERVICES, "Restart services"),
            (CommandKind.REFRESH_CONFIG, "Refresh configuration"),
        ],
    )
    # Speed test only: which way, and through which WAN (the box's known links; blank = its default route).
    direction = forms.ChoiceField(
        label="Speed test",
        required=False,
        choices=[("download", "Download"), ("upload", "Upload"), ("both", "Download and upload")],
        initial="download",
    )
    iface = forms.ChoiceField(label="Through", required=False, choices=[("", "Default route")])

    def __init__(self, *args: Any, wans: Sequence[Any] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cast(forms.ChoiceField, self.fields["iface"]).choices = [("", "Default route")] + [
            (wan.iface, f"{wan.label or wan.iface} ({wan.iface})") for wan in wans
        ]

    def command_params(self) -> dict[str, Any]:
        """The command's params from a valid form (speed test: direction and interface)."""
        if self.cleaned_data["kind"] != CommandKind.SPEED_TEST:
            return {}
        params: dict[str, Any] = {"direction": self.cleaned_data.get("direction") or "download"}
        if self.cleaned_data.get("iface"):
            params["iface"] = self.cleaned_data["iface"]
        return params


class InviteForm(forms.Form):
    email = forms.EmailField(label="Email")
    role = forms.ChoiceField(label="Role", choices=Role.choices, initial=Role.VIEWER)


class MemberRoleForm(forms.Form):
    role = forms.ChoiceField(label="Role", choices=Role.choices)


class ApiTokenForm(forms.Form):
    name = forms.CharField(label="Name", max_length=100, help_text="What uses it, e.g. “monitoring script”.")
    expires_in_days = forms.TypedChoiceField(
        label="Expires in",
        coerce=int,
        choices=[(7, "7 days"), (30, "30 days"), (90, "90 days"), (365, "1 year")],
        initial=90,
    )


class ConsoleSearchForm(forms.Form):
    q = forms.CharField(label="Serial, MAC, public IP or customer", max_length=100, required=False)


class AuditFilterForm(forms.Form):
    q = forms.CharField(label="Search", required=False, max_length=100)
    action = forms.CharField(label="Action starts with", required=False, max_length=64)
    actor = forms.CharField(label="Actor", required=False, max_length=150)
    serial = forms.CharField(label="Box serial", required=False, max_length=64)
    page = forms.IntegerField(required=False, min_value=1)


class StaffActionForm(forms.Form):
    confirm_serial = forms.CharField(label="Type the serial number to confirm", max_length=64)
    server = forms.ChoiceField(label="Target server", required=False)


class AlertRuleForm(forms.Form):
    name = forms.CharField(label="Name", max_length=100)
    kind = forms.ChoiceField(label="When")
    threshold = forms.FloatField(label="Threshold", required=False, help_text="Loss in % or RTT in ms.")
    duration_minutes = forms.IntegerField(label="For (minutes)", min_value=1, max_value=1440, initial=5)
    box = forms.ChoiceField(label="Box", required=False)
    targets = forms.MultipleChoiceField(label="Notify", required=False, widget=forms.CheckboxSelectMultiple)

    def __init__(
        self,
        *args: Any,
        kinds: Iterable[tuple[str, str]] = (),
        boxes: Iterable[tuple[str, str]] = (),
        targets: Iterable[tuple[str, str]] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        cast(forms.ChoiceField, self.fields["kind"]).choices = list(kinds)
        cast(forms.ChoiceField, self.fields["box"]).choices = [("", "Every box"), *boxes]
        cast(forms.ChoiceField, self.fields["targets"]).choices = list(targets)


class NotificationTargetForm(forms.Form):
    name = forms.CharField(label="Name", max_length=100)
    kind = forms.ChoiceField(label="Kind", choices=TargetKind.choices)
    email = forms.CharField(label="Email address", required=False, max_length=254)
    url = forms.CharField(label="Webhook URL", required=False, max_length=500)


class RolloutForm(forms.Form):
    """A rollout's release and target; the target's rules are checked by the rollout service."""

    name = forms.CharField(label="Name", max_length=120)
    release = forms.ChoiceField(label="Release")
    channels = forms.MultipleChoiceField(
        label="Box channels",
        required=False,
        choices=ReleaseChannel.choices,
        widget=forms.CheckboxSelectMultiple,
        help_text="Empty: every channel that takes the release.",
    )
    models = forms.CharField(
        label="Hardware models", required=False, max_length=500, help_text="Comma separated."
    )
    organizations = forms.MultipleChoiceField(label="Customers", required=False)
    version_min = forms.CharField(label="From version (included)", required=False, max_length=64)
    version_max = forms.CharField(label="Below version", required=False, max_length=64)
    tags = forms.CharField(label="Tags", required=False, max_length=500, help_text="A box with any of them.")
    boxes = forms.CharField(
        label="Only these boxes",
        required=False,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="Serials, separated by spaces, commas or lines.",
    )
    phases = forms.CharField(
        label="Phases (% of eligible boxes)",
        initial="1, 10, 50, 100",
        max_length=100,
        help_text="Each phase waits for the previous one to be healthy.",
    )
    force = forms.BooleanField(label="Also boxes with automatic upgrades off", required=False)

    def __init__(
        self,
        *args: Any,
        releases: Iterable[tuple[str, str]] = (),
        organizations: Iterable[tuple[str, str]] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        cast(forms.ChoiceField, self.fields["release"]).choices = list(releases)
        cast(forms.ChoiceField, self.fields["organizations"]).choices = list(organizations)

    @staticmethod
    def _split(value: str) -> list[str]:
        return [item for item in value.replace(",", " ").split() if item]

    def clean_phases(self) -> list[int]:
        try:
            phases = [int(item) for item in self._split(self.cleaned_data["phases"])]
        except ValueError as exc:
            raise forms.ValidationError("phases are whole percentages, e.g. 1, 10, 50, 100") from exc
        if not phases:
            raise forms.ValidationError("give at least one phase")
        return phases

    def target(self) -> dict:
        data = self.cleaned_data
        target: dict = {}
        if data.get("channels"):
            target["channels"] = list(data["channels"])
        for key in ("models", "tags", "boxes"):
            if data.get(key):
                target[key] = self._split(data[key])
        if data.get("organizations"):
            target["organizations"] = list(data["organizations"])
        for key in ("version_min", "version_max"):
            if data.get(key):
                target[key] = data[key].strip()
        return target
