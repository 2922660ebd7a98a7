"""Page forms: they parse and shape input only. Rules live in the services, whose errors are shown
on the field they name (``frontend.errors.form_add_domain_error``; a form maps a service's field
name to one of its own with ``domain_field``). Every message is a sentence written for people."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any, cast

from django import forms
from django.contrib.auth.forms import AuthenticationForm
from django.db import models

from fleet.commands.choices import CommandKind
from fleet.core.choices import ReleaseChannel, Role, WanMode, WanRole
from fleet.core.errors import DomainError
from fleet.firmware.signing import signature_from_file
from fleet.firmware.targeting import phases_validate, target_normalize
from fleet.monitoring.choices import TargetKind
from provisioning.wan_policy import WAN_MAX_KBPS


class PortalForm(forms.Form):
    """A page form. ``domain_field`` says which of its fields a service error is about (by the
    service's field name); None puts it on the form as a whole."""

    def domain_field(self, name: str | None) -> str | None:
        return name if name in self.fields else None


def _required(message: str) -> dict[str, str]:
    return {"required": message}


class SignInForm(AuthenticationForm):
    """Django's sign-in form, saying which field is missing in words."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["username"].error_messages["required"] = (
            "Type the email address or username of your account."
        )
        self.fields["password"].error_messages["required"] = "Type your password."

    def incomplete(self) -> bool:
        """A field was left empty: nothing was checked, so it is not a failed sign-in."""
        return self.has_error("username", "required") or self.has_error("password", "required")


class InvitationAcceptForm(PortalForm):
    token = forms.CharField(
        label="Invitation token",
        max_length=200,
        help_text="It is in the invitation email and starts with otbi_.",
        error_messages=_required("Paste the invitation token from the email."),
    )


class InvitationSignUpForm(InvitationAcceptForm):
    """Accept an invitation by creating an account: the password is chosen here, twice."""

    password1 = forms.CharField(
        label="Choose a password",
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        error_messages=_required("Choose a password for your account."),
    )
    password2 = forms.CharField(
        label="Password again",
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        error_messages=_required("Type the password a second time."),
    )

    def domain_field(self, name: str | None) -> str | None:
        return "password1" if name == "password" else super().domain_field(name)

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        first, second = data.get("password1"), data.get("password2")
        if first and second and first != second:
            self.add_error("password2", "The two passwords are not the same. Type the same password twice.")
        return data


class FleetStatus(models.TextChoices):
    """The fleet page's status filter: from the live status (online) or the configuration (drift)."""

    ONLINE = "online", "Online"
    OFFLINE = "offline", "Offline"
    DRIFT = "drift", "Config pending"


SEARCH_MAX = 100
TOO_LONG = "Search for at most %(limit_value)d characters (this one has %(show_value)d)."
PAGE_INVALID = "There is no page “{value}”: pages are numbered 1, 2, 3… Showing the first page instead."


class FilterForm(PortalForm):
    """A list page's filters. A bad filter is said next to its field (the list is then not run: it
    would silently show everything); a bad ``page`` only falls back to the first page, with a note."""

    page = forms.IntegerField(required=False, min_value=1)

    def filter_errors(self) -> bool:
        return any(name != "page" for name in self.errors)

    def page_number(self) -> int:
        return (self.cleaned_data.get("page") or 1) if "page" not in self.errors else 1

    def page_error(self) -> str:
        if "page" not in self.errors:
            return ""
        return PAGE_INVALID.format(value=str(self.data.get("page", ""))[:20])


class FleetFilterForm(FilterForm):
    """The fleet page's search and filters (all optional)."""

    q = forms.CharField(
        label="Search", required=False, max_length=SEARCH_MAX, error_messages={"max_length": TOO_LONG}
    )
    status = forms.ChoiceField(
        label="Status",
        required=False,
        choices=[("", "Any status"), *FleetStatus.choices],
        error_messages={"invalid_choice": "Choose a status from the list."},
    )
    region = forms.ChoiceField(
        label="Region", required=False, error_messages={"invalid_choice": "Choose a region from the list."}
    )
    firmware = forms.CharField(
        label="Firmware",
        required=False,
        max_length=64,
        error_messages={"max_length": "A firmware version is at most %(limit_value)d characters."},
    )

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


class BoxClaimForm(PortalForm):
    """Serial + claim code (every box), or the device id a stock OverTheBox box shows."""

    serial = forms.CharField(
        label="Serial number", max_length=64, required=False, help_text="On the label under the box."
    )
    claim_code = forms.CharField(
        label="Claim code",
        max_length=128,
        strip=False,
        required=False,
        help_text="Printed next to the serial number.",
    )
    device_id = forms.CharField(
        label="OverTheBox device id",
        max_length=64,
        required=False,
        help_text="For a box running the OverTheBox firmware: the device id its web interface shows "
        "(alone, or with the serial and claim code of imported hardware).",
    )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        has_serial_or_code = any((cleaned.get(field) or "").strip() for field in ("serial", "claim_code"))
        if (cleaned.get("device_id") or "").strip() and not has_serial_or_code:
            return cleaned
        missing = {
            "serial": "Type the serial number printed on the box's label (or an OverTheBox device id).",
            "claim_code": "Type the claim code printed next to the serial number.",
        }
        for field, message in missing.items():
            if not (cleaned.get(field) or "").strip() and field not in self.errors:
                self.add_error(field, message)
        return cleaned


class BoxRenameForm(PortalForm):
    name = forms.CharField(
        label="Name",
        required=False,
        max_length=100,
        error_messages={
            "max_length": "A name is at most %(limit_value)d characters (this one has %(show_value)d)."
        },
    )
    tags = forms.CharField(
        label="Tags",
        required=False,
        max_length=900,
        help_text="Separated by spaces or commas.",
        error_messages={"max_length": "The tags are at most %(limit_value)d characters in all."},
    )

    def domain_field(self, name: str | None) -> str | None:
        return "tags" if name and name.startswith("tags") else super().domain_field(name)

    def cleaned_tags(self) -> list[str]:
        raw = self.cleaned_data.get("tags") or ""
        return [tag for tag in raw.replace(",", " ").split() if tag]


class WanPolicyForm(PortalForm):
    """Mode plus one role per interface; the interface fields are added from the editor's links
    (``frontend.views.box._policy_interfaces``). A link the box does not report also gets a
    ``forget_<n>`` box that removes it from the policy. A service error about the links as a whole
    (``interfaces``) is shown with the roles."""

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
            if interface.get("reported") == "no":
                self.fields[f"forget_{index}"] = forms.BooleanField(
                    label="Remove from the policy", required=False
                )

    def role_fields(self) -> list[tuple[dict, forms.BoundField, forms.BoundField | None]]:
        return [
            (
                interface,
                self[f"role_{index}"],
                self[f"forget_{index}"] if f"forget_{index}" in self.fields else None,
            )
            for index, interface in enumerate(self.interfaces)
        ]

    def domain_field(self, name: str | None) -> str | None:
        # ``interfaces[2].role`` is the third link's role field; ``interfaces`` is every role at once
        # (the template shows the form's own errors with the roles).
        match = re.fullmatch(r"interfaces\[(\d+)\]\.role", name or "")
        if match and f"role_{match.group(1)}" in self.fields:
            return f"role_{match.group(1)}"
        return super().domain_field(name)

    def policy_interfaces(self) -> list[dict]:
        """The interfaces as the service takes them, keeping what the editor does not show and
        leaving out the ones to forget."""
        result = []
        for index, interface in enumerate(self.interfaces):
            if self.cleaned_data.get(f"forget_{index}"):
                continue
            entry = {
                key: interface[key] for key in ("name", "kind", "up_kbps", "down_kbps") if key in interface
            }
            entry["role"] = self.cleaned_data[f"role_{index}"]
            result.append(entry)
        return result


WEEKDAYS = [(0, "Mon"), (1, "Tue"), (2, "Wed"), (3, "Thu"), (4, "Fri"), (5, "Sat"), (6, "Sun")]


class FirmwareSettingsForm(PortalForm):
    """Automatic upgrades and the box's maintenance window (hours in its organisation's time zone)."""

    auto_upgrade = forms.BooleanField(label="Upgrade automatically in the maintenance window", required=False)
    window_days = forms.TypedMultipleChoiceField(
        label="Maintenance window days",
        coerce=int,
        choices=WEEKDAYS,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        error_messages={"invalid_choice": "Choose days of the week from the list."},
    )
    window_start = forms.TimeField(
        label="Window starts",
        widget=forms.TimeInput(attrs={"type": "time"}, format="%H:%M"),
        error_messages={
            "required": "Give the time the window starts, e.g. 02:00.",
            "invalid": "Give the time the window starts as hours and minutes, e.g. 02:00.",
        },
    )
    window_end = forms.TimeField(
        label="Window ends",
        widget=forms.TimeInput(attrs={"type": "time"}, format="%H:%M"),
        error_messages={
            "required": "Give the time the window ends, e.g. 05:00.",
            "invalid": "Give the time the window ends as hours and minutes, e.g. 05:00.",
        },
    )


class UpgradeNowForm(PortalForm):
    """Upgrade now restarts the box: the person ticks ``confirm`` (a request without it is refused)."""

    confirm = forms.BooleanField(label="Yes, restart the box to install it now", required=False)

    def __init__(self, *args: Any, version: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.version = version
        if version:
            self.fields["confirm"].label = f"Yes, restart the box to install {version} now"

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if not data.get("confirm"):
            self.add_error(
                "confirm",
                f"Installing {self.version or 'the new firmware'} restarts the box: its links drop for a "
                "minute or two. Tick the box to confirm.",
            )
        return data


class PostponeForm(PortalForm):
    days = forms.TypedChoiceField(
        label="Postpone by",
        coerce=int,
        choices=[(1, "1 day"), (3, "3 days"), (6, "6 days")],
        initial=3,
        error_messages={"invalid_choice": "Choose how long to postpone from the list."},
    )


# Commands that cut the box's connections: the person confirms them (``CommandForm.confirm``).
DISRUPTIVE_COMMANDS: dict[str, str] = {
    CommandKind.REBOOT: "Reboot restarts the box: every link and the tunnel drop for about two minutes.",
    CommandKind.RESTART_SERVICES: "Restarting services drops the tunnel and the connections through the box "
    "for a few seconds.",
}


class CommandSelect(forms.Select):
    """The command menu: disruptive commands are marked, so the page shows the confirmation with them."""

    def create_option(self, name: str, value: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        option = super().create_option(name, value, *args, **kwargs)
        if str(value) in DISRUPTIVE_COMMANDS:
            option["attrs"]["data-disruptive"] = "true"
        if str(value) == CommandKind.SPEED_TEST:
            option["attrs"]["data-speed-test"] = "true"
        return option


class CommandForm(PortalForm):
    """A command to send. No command is chosen in advance, and a disruptive one needs ``confirm``
    ticked: a request without it (a replay, a script) is refused with the reason."""

    kind = forms.ChoiceField(
        label="Command",
        choices=[
            ("", "Choose a command…"),
            (CommandKind.DIAGNOSTICS, "Run diagnostics"),
            (CommandKind.SPEED_TEST, "Speed test"),
            (CommandKind.REFRESH_CONFIG, "Refresh configuration"),
            (CommandKind.BACKUP, "Back up configuration"),
            (CommandKind.RESTART_SERVICES, "Restart services"),
            (CommandKind.REBOOT, "Reboot"),
        ],
        widget=CommandSelect,
        error_messages={
            "required": "Choose the command to send.",
            "invalid_choice": "Choose a command from the list.",
        },
    )
    # Speed test only: which way, and through which WAN (the box's known links; blank = its default route).
    direction = forms.ChoiceField(
        label="Speed test",
        required=False,
        choices=[("download", "Download"), ("upload", "Upload"), ("both", "Download and upload")],
        initial="download",
        error_messages={"invalid_choice": "Choose download, upload or both."},
    )
    iface = forms.ChoiceField(
        label="Through",
        required=False,
        choices=[("", "All links (tunnel)")],
        error_messages={
            "invalid_choice": "Choose one of the box's links from the list (it does not report that one)."
        },
    )
    confirm = forms.BooleanField(label="Yes, interrupt the box now", required=False)

    def __init__(self, *args: Any, wans: Sequence[Any] = (), **kwargs: Any) -> None:
        kwargs.setdefault("auto_id", "id_command_%s")
        super().__init__(*args, **kwargs)
        cast(forms.ChoiceField, self.fields["iface"]).choices = [("", "All links (tunnel)")] + [
            (wan.iface, f"{wan.label or wan.iface} ({wan.iface})") for wan in wans
        ]

    def domain_field(self, name: str | None) -> str | None:
        return {"params.iface": "iface", "params.direction": "direction"}.get(
            name or "", super().domain_field(name)
        )

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        kind = data.get("kind")
        if kind in DISRUPTIVE_COMMANDS and not data.get("confirm"):
            self.add_error(
                "confirm", f"{DISRUPTIVE_COMMANDS[kind]} Tick the box to confirm, then send again."
            )
        return data

    def command_params(self) -> dict[str, Any]:
        """The command's params from a valid form (speed test: direction and interface)."""
        if self.cleaned_data["kind"] != CommandKind.SPEED_TEST:
            return {}
        params: dict[str, Any] = {"direction": self.cleaned_data.get("direction") or "download"}
        if self.cleaned_data.get("iface"):
            params["iface"] = self.cleaned_data["iface"]
        return params


class BackupCompareForm(PortalForm):
    """Choose two backups of the box to compare (a GET form: the diff page's query)."""

    old = forms.ChoiceField(label="Compare", error_messages={"required": "Choose a backup to compare."})
    new = forms.ChoiceField(
        label="with", error_messages={"required": "Choose the backup to compare it with."}
    )

    def __init__(self, *args: Any, backups: Sequence[Any] = (), **kwargs: Any) -> None:
        kwargs.setdefault("auto_id", "id_compare_%s")
        super().__init__(*args, **kwargs)
        choices = [
            (str(item.pk), f"{item.created_at:%Y-%m-%d %H:%M} ({item.file_count} files)") for item in backups
        ]
        cast(forms.ChoiceField, self.fields["old"]).choices = choices
        cast(forms.ChoiceField, self.fields["new"]).choices = choices


class BackupActionForm(PortalForm):
    """Restore or delete a backup: the person ticks ``confirm`` (a request without it is refused)."""

    MESSAGES = {
        "restore": "Restoring writes the backup's files back on the box, replacing its configuration.",
        "delete": "A deleted backup cannot be restored.",
    }
    confirm = forms.BooleanField(required=False)

    def __init__(self, *args: Any, action: str, **kwargs: Any) -> None:
        kwargs.setdefault("auto_id", f"id_{action}_%s")
        super().__init__(*args, **kwargs)
        self.action = action
        self.fields["confirm"].label = (
            "Yes, restore this backup on the box" if action == "restore" else "Yes, delete this backup"
        )

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if not data.get("confirm"):
            self.add_error("confirm", f"{self.MESSAGES[self.action]} Tick the box to confirm.")
        return data


class RemoteAccessRequestForm(PortalForm):
    """Ask for a remote access session to a stock OverTheBox box."""

    exposed_port = forms.IntegerField(
        label="Port of the box",
        initial=22,
        min_value=1,
        max_value=65535,
        help_text="22 for SSH, 443 for its web interface",
        error_messages={"required": "Give the box's port to reach.", "invalid": "Give a port number."},
    )
    public_key = forms.CharField(
        label="SSH public key let in",
        max_length=1024,
        help_text="one OpenSSH public key line, e.g. ssh-ed25519 AAAA… you@example",
        error_messages={"required": "Paste the SSH public key of the person connecting."},
    )
    hours = forms.IntegerField(
        label="For (hours)",
        initial=24,
        min_value=1,
        max_value=168,
        error_messages={"required": "Say for how many hours.", "invalid": "Give a whole number of hours."},
    )

    def domain_field(self, name: str | None) -> str | None:
        return {"duration_s": "hours"}.get(name or "", super().domain_field(name))


class RemoteAccessActionForm(PortalForm):
    """Approve (ticking ``confirm``: it lets someone into the box), reject or close a remote access."""

    confirm = forms.BooleanField(required=False, label="Yes, let this key into the box for the time asked")

    def __init__(self, *args: Any, action: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.action = action

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if self.action == "approve" and not data.get("confirm"):
            self.add_error(
                "confirm",
                "Approving lets the key shown into the box until the session ends. Tick the box to confirm.",
            )
        return data


class InviteForm(PortalForm):
    email = forms.EmailField(
        label="Email",
        error_messages={
            "required": "Give the email address of the person to invite.",
            "invalid": "Give a valid email address, e.g. jane@example.com.",
        },
    )
    role = forms.ChoiceField(
        label="Role",
        choices=Role.choices,
        initial=Role.VIEWER,
        error_messages={"invalid_choice": "Choose a role from the list."},
    )


class MemberRoleForm(PortalForm):
    role = forms.ChoiceField(
        label="Role", choices=Role.choices, error_messages={"invalid_choice": "Choose a role from the list."}
    )


class ApiTokenForm(PortalForm):
    name = forms.CharField(
        label="Name",
        max_length=100,
        help_text="What uses it, e.g. “monitoring script”.",
        error_messages=_required("Name the token after what uses it, e.g. “monitoring script”."),
    )
    expires_in_days = forms.TypedChoiceField(
        label="Expires in",
        coerce=int,
        choices=[(7, "7 days"), (30, "30 days"), (90, "90 days"), (365, "1 year")],
        initial=90,
        error_messages={"invalid_choice": "Choose when the token expires from the list."},
    )


class ConsoleSearchForm(PortalForm):
    q = forms.CharField(
        label="Find a box by serial, MAC, public IP or customer",
        max_length=SEARCH_MAX,
        required=False,
        error_messages={"max_length": TOO_LONG},
    )


class AuditFilterForm(FilterForm):
    q = forms.CharField(
        label="Search", required=False, max_length=SEARCH_MAX, error_messages={"max_length": TOO_LONG}
    )
    action = forms.CharField(
        label="Action starts with",
        required=False,
        max_length=64,
        error_messages={"max_length": "An action is at most %(limit_value)d characters, e.g. box.claim."},
    )
    actor = forms.CharField(
        label="Actor",
        required=False,
        max_length=150,
        error_messages={"max_length": "An actor is at most %(limit_value)d characters."},
    )
    serial = forms.CharField(
        label="Box serial",
        required=False,
        max_length=64,
        error_messages={"max_length": "A serial number is at most %(limit_value)d characters."},
    )


class StaffActionForm(PortalForm):
    confirm_serial = forms.CharField(
        label="Type the serial number to confirm",
        max_length=64,
        error_messages=_required("Type the box's serial number to confirm."),
    )
    server = forms.ChoiceField(
        label="Target server",
        required=False,
        error_messages={"invalid_choice": "Choose a server from the list (that one is gone or full)."},
    )


class AlertRuleForm(PortalForm):
    """A new alert rule, or (``editing``) an existing one, whose kind is fixed."""

    name = forms.CharField(
        label="Name", max_length=100, error_messages=_required("Name the rule, e.g. “Office offline”.")
    )
    kind = forms.ChoiceField(
        label="When", error_messages={"invalid_choice": "Choose when the rule fires from the list."}
    )
    threshold = forms.FloatField(
        label="Threshold",
        required=False,
        help_text="Loss in %, RTT in ms, free memory in MiB.",
        error_messages={"invalid": "Give the threshold as a number, e.g. 5 or 150."},
    )
    duration_minutes = forms.IntegerField(
        label="For (minutes)",
        min_value=1,
        max_value=1440,
        initial=5,
        error_messages={
            "required": "Give how many minutes the condition must hold, from 1 to 1440.",
            "invalid": "Give the duration as a whole number of minutes, from 1 to 1440.",
            "min_value": "Give a duration of at least 1 minute.",
            "max_value": "Give a duration of at most 1440 minutes (a day).",
        },
    )
    box = forms.ChoiceField(
        label="Box", required=False, error_messages={"invalid_choice": "Choose a box from the list."}
    )
    targets = forms.MultipleChoiceField(
        label="Notify",
        required=False,
        widget=forms.CheckboxSelectMultiple,
        error_messages={"invalid_choice": "Choose notification targets from the list."},
    )

    def __init__(
        self,
        *args: Any,
        kinds: Iterable[tuple[str, str]] = (),
        boxes: Iterable[tuple[str, str]] = (),
        targets: Iterable[tuple[str, str]] = (),
        editing: bool = False,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("auto_id", "id_rule_%s")
        super().__init__(*args, **kwargs)
        if editing:
            del self.fields["kind"]
        else:
            cast(forms.ChoiceField, self.fields["kind"]).choices = list(kinds)
        cast(forms.ChoiceField, self.fields["box"]).choices = [("", "Every box"), *boxes]
        cast(forms.ChoiceField, self.fields["targets"]).choices = list(targets)


class NotificationTargetForm(PortalForm):
    name = forms.CharField(
        label="Name", max_length=100, error_messages=_required("Name the target, e.g. “On-call email”.")
    )
    kind = forms.ChoiceField(
        label="Kind",
        choices=TargetKind.choices,
        error_messages={"invalid_choice": "Choose email or webhook."},
    )
    email = forms.CharField(label="Email address", required=False, max_length=254)
    url = forms.CharField(label="Webhook URL", required=False, max_length=500)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("auto_id", "id_target_%s")
        super().__init__(*args, **kwargs)


class RolloutForm(PortalForm):
    """A rollout's release and target; the target's rules are checked by the rollout service, whose
    ``target.<filter>`` errors are shown on the filter's field."""

    name = forms.CharField(
        label="Name", max_length=120, error_messages=_required("Name the rollout, e.g. “3.0.0 for Acme”.")
    )
    release = forms.ChoiceField(
        label="Release",
        error_messages={
            "required": "Choose the release to roll out (publish one first if the list is empty).",
            "invalid_choice": "Choose a published release from the list.",
        },
    )
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
        error_messages=_required("Give the phases as percentages, e.g. 1, 10, 50, 100."),
        help_text="Each phase waits for the previous one to be healthy.",
    )
    soak_minutes = forms.IntegerField(
        label="Soak time between phases (minutes)",
        required=False,
        initial=60,
        min_value=0,
        max_value=30 * 24 * 60,
        error_messages={
            "invalid": "Give the soak time as a whole number of minutes, e.g. 60.",
            "min_value": "The soak time cannot be negative.",
            "max_value": "The soak time is at most 30 days (43,200 minutes).",
        },
        help_text="Once a phase has settled, the next one opens after this long (empty: 60).",
    )
    max_failure_pct = forms.FloatField(
        label="Pause when a phase's failures exceed (%)",
        required=False,
        initial=2.0,
        min_value=0,
        max_value=100,
        error_messages={
            "invalid": "Give the failure threshold as a number, e.g. 2 or 0.5.",
            "min_value": "The failure threshold is a percentage from 0 to 100.",
            "max_value": "The failure threshold is a percentage from 0 to 100.",
        },
        help_text="Counted in the open phase; the rollout pauses and says why (empty: 2).",
    )
    max_failures = forms.IntegerField(
        label="…or when the rollout's failures exceed (boxes)",
        required=False,
        min_value=0,
        max_value=10_000_000,
        error_messages={
            "invalid": "Give the failure count as a whole number, or leave it empty.",
            "min_value": "The failure count cannot be negative.",
            "max_value": "The failure count is at most 10,000,000.",
        },
        help_text="Empty: no limit on the count.",
    )
    max_in_flight = forms.IntegerField(
        label="Upgrades in flight at once",
        required=False,
        initial=500,
        min_value=1,
        max_value=100_000,
        error_messages={
            "invalid": "Give how many upgrades may run at once as a whole number, e.g. 500.",
            "min_value": "At least one upgrade must be allowed in flight.",
            "max_value": "At most 100,000 upgrades may be in flight at once.",
        },
        help_text="Sent and not finished; the next are sent as these finish (empty: 500).",
    )
    force = forms.BooleanField(
        label="Force: also boxes with automatic upgrades off, and ignore maintenance windows",
        required=False,
        help_text="Boxes are then upgraded as soon as their phase opens, at any hour, "
        "including customers who turned automatic upgrades off.",
    )

    # the rollout service's names for the settings above
    SERVICE_FIELDS = {"soak_s": "soak_minutes"}

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

    def domain_field(self, name: str | None) -> str | None:
        name = (name or "").removeprefix("target.")
        return super().domain_field(self.SERVICE_FIELDS.get(name, name))

    def policy(self) -> dict[str, Any]:
        """The rollout's pace and failure policy, as ``rollout_create`` takes them (a field left
        empty keeps the service's default)."""
        data = self.cleaned_data
        policy = {
            "soak_s": data["soak_minutes"] * 60 if data.get("soak_minutes") is not None else None,
            "max_failure_pct": data.get("max_failure_pct"),
            "max_failures": data.get("max_failures"),
            "max_in_flight": data.get("max_in_flight"),
        }
        return {key: value for key, value in policy.items() if value is not None}

    def clean_phases(self) -> list[int]:
        try:
            phases = [int(item) for item in self._split(self.cleaned_data["phases"])]
        except ValueError as exc:
            raise forms.ValidationError(
                "Give the phases as whole percentages separated by commas, e.g. 1, 10, 50, 100."
            ) from exc
        if not phases:
            raise forms.ValidationError("Give at least one phase, e.g. 100.")
        # the rollout service's own rule, checked here too so every error shows at once
        try:
            return phases_validate(phases)
        except DomainError as exc:
            raise forms.ValidationError(exc.message) from exc

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        try:
            target_normalize(self.target())
        except DomainError as exc:
            field = self.domain_field(exc.field)
            if field is None or field not in self.errors:
                self.add_error(field, exc.message)
        return data

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


class ReleaseSignatureField(forms.FileField):
    """A detached signature file (raw 64 bytes or their base64), read as the base64 text a release
    stores."""

    def clean(self, data: Any, initial: Any = None) -> str:
        upload = super().clean(data, initial)
        if not upload:
            return ""
        if upload.size > 4096:
            raise forms.ValidationError(
                "This is not a signature file: a signature is 64 bytes (88 in base64)."
            )
        try:
            return signature_from_file(upload.read())
        except ValueError as exc:
            raise forms.ValidationError(f"This file is not an ed25519 signature: {exc}.") from exc


class ReleaseForm(forms.Form):
    """A new release: what it is, its image and (optionally) its detached signature. The image comes
    last in the page: an upload cut off at the size limit loses the fields after it."""

    version = forms.CharField(label="Version", max_length=64, help_text="For example 24.10.1-otb3.")
    hardware_models = forms.CharField(
        label="Hardware models",
        max_length=500,
        help_text="The models it fits, comma separated (OTB-v2c, OTB-v2b).",
    )
    channel = forms.ChoiceField(
        label="Channel", choices=ReleaseChannel.choices, initial=ReleaseChannel.STABLE
    )
    notes = forms.CharField(label="Release notes", required=False, widget=forms.Textarea(attrs={"rows": 3}))
    signature = ReleaseSignatureField(
        label="Detached signature (optional)",
        required=False,
        help_text="From manage.py sign_firmware (base64) or the raw 64 bytes; "
        "or sign with the service's key afterwards.",
    )
    image = forms.FileField(
        label="Image", help_text="The sysupgrade image; its size and SHA-256 are computed here."
    )

    def clean_hardware_models(self) -> list[str]:
        models = [item.strip() for item in self.cleaned_data["hardware_models"].split(",") if item.strip()]
        if not models:
            raise forms.ValidationError("Give at least one hardware model, e.g. OTB-v2c.")
        return models


class ReleaseSignatureForm(forms.Form):
    """A detached signature for a draft: a file, or its base64 text pasted."""

    signature_file = ReleaseSignatureField(label="Signature file", required=False)
    signature = forms.CharField(
        label="…or the signature as base64",
        required=False,
        max_length=200,
        widget=forms.TextInput(attrs={"class": "mono"}),
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if not self.errors and not data.get("signature_file") and not data.get("signature", "").strip():
            raise forms.ValidationError("Choose a signature file or paste the signature.")
        return data

    def signature_value(self) -> str:
        return self.cleaned_data.get("signature_file") or self.cleaned_data.get("signature", "").strip()


class ReleaseWithdrawForm(forms.Form):
    reason = forms.CharField(
        label="Why",
        max_length=500,
        help_text="Shown on the release and in the audit log; its rollouts are aborted.",
    )


OTB_DEVICE_STATES = [
    ("pending", "Pending (not claimed)"),
    ("linked", "Linked (service not confirmed)"),
    ("active", "Active"),
    ("revoked", "Revoked"),
    ("all", "Any state"),
]


class OtbDeviceFilterForm(PortalForm):
    q = forms.CharField(
        label="Device id, MAC or board",
        max_length=SEARCH_MAX,
        required=False,
        error_messages={"max_length": TOO_LONG},
    )
    state = forms.ChoiceField(label="State", choices=OTB_DEVICE_STATES, required=False)


class StaffDeviceClaimForm(PortalForm):
    """Support staff claim a stock OverTheBox device for a customer (the choices are set by the view)."""

    device_id = forms.CharField(
        label="OverTheBox device id",
        max_length=64,
        error_messages=_required("Type the device id the box shows."),
    )
    organization = forms.ChoiceField(
        label="For the customer", error_messages=_required("Pick the customer who owns the box.")
    )
