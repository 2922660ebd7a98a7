"""Which boxes a rollout targets, which of them are skipped and why, and which phase each one is in.

Shared by the preview (counts only) and the creation (rows), so what staff previewed is what runs.
A target is a dict of optional filters, all of which must match:

``channels`` (box release channels; default: the channels that take the release's channel),
``models`` (matched whatever their case), ``organizations`` (ids), ``version_min`` /
``version_max`` (``min <= v < max``; each must look like a version, e.g. ``5.2.1``),
``tags`` (a box with any of them), ``boxes`` (explicit ids or serials).

Only claimed boxes are ever targeted. Matching boxes the release cannot go to are kept as
``skipped`` upgrades with a reason (model, version, opt-out, channel, already in an open upgrade),
so nothing waits forever on a box that can never take the image.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Count, Q

from fleet.core.choices import BoxState, ReleaseChannel
from fleet.core.errors import InvalidInput
from fleet.core.models import Box
from fleet.firmware.choices import OPEN_STATES, SkipReason
from fleet.firmware.models import Release, Upgrade
from fleet.firmware.versions import version_in_range, version_key

# A version bound: digits first (an optional "v"), dot-separated parts, an optional suffix
# ("24.10.1-otb3"). Anything else would compare after every real version and match nothing.
VERSION_BOUND_RE = re.compile(r"^[vV]?\d+(?:\.\d+)*(?:[-+][0-9A-Za-z][0-9A-Za-z.+-]*)?$")
TARGET_KEYS = ("channels", "models", "organizations", "version_min", "version_max", "tags", "boxes")
MAX_EXPLICIT_BOXES = 100_000

# Which box channels take a release of a channel: dev boxes take everything, stable boxes only stable.
CHANNELS_TAKING: dict[str, list[str]] = {
    ReleaseChannel.STABLE: [ReleaseChannel.STABLE, ReleaseChannel.BETA, ReleaseChannel.DEV],
    ReleaseChannel.BETA: [ReleaseChannel.BETA, ReleaseChannel.DEV],
    ReleaseChannel.DEV: [ReleaseChannel.DEV],
}


def _string_list(value: Any, name: str, *, max_len: int = 64, max_items: int = 1000) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise InvalidInput("Give a list of non-empty texts.", field=f"target.{name}")
    if len(value) > max_items:
        raise InvalidInput(f"Give at most {max_items} items.", field=f"target.{name}")
    if any(len(item) > max_len for item in value):
        raise InvalidInput(f"Each item is at most {max_len} characters.", field=f"target.{name}")
    return list(dict.fromkeys(value))


def target_normalize(target: Any) -> dict[str, Any]:
    """Validate a target; raise InvalidInput naming ``target.<filter>``. Empty filters are dropped."""
    if target is None:
        return {}
    if not isinstance(target, dict):
        raise InvalidInput("The target is an object of filters.", field="target")
    unknown = set(target) - set(TARGET_KEYS)
    if unknown:
        name = sorted(unknown)[0]
        raise InvalidInput(
            f"There is no filter named {name!r}: use {', '.join(TARGET_KEYS)}.", field=f"target.{name}"
        )
    clean: dict[str, Any] = {}
    if target.get("channels"):
        channels = _string_list(target["channels"], "channels")
        bad = [c for c in channels if c not in ReleaseChannel.values]
        if bad:
            raise InvalidInput(
                f"There is no channel {bad[0]!r}: choose {', '.join(ReleaseChannel.values)}.",
                field="target.channels",
            )
        clean["channels"] = channels
    if target.get("models"):
        clean["models"] = _string_list(target["models"], "models")
    if target.get("organizations"):
        ids = _string_list(target["organizations"], "organizations")
        try:
            clean["organizations"] = [str(uuid.UUID(item)) for item in ids]
        except ValueError as exc:
            raise InvalidInput(
                "Choose customers from the list (ids are UUIDs).", field="target.organizations"
            ) from exc
    for bound in ("version_min", "version_max"):
        value = target.get(bound)
        if value in (None, ""):
            continue
        if not isinstance(value, str) or len(value) > 64 or not VERSION_BOUND_RE.fullmatch(value.strip()):
            raise InvalidInput(
                f"The version “{str(value)[:64]}” is not valid: give numbers separated by dots, e.g. "
                "5.2.1 or 24.10.1-otb3.",
                field=f"target.{bound}",
            )
        clean[bound] = value.strip()
    if (
        "version_min" in clean
        and "version_max" in clean
        and version_key(clean["version_min"]) >= version_key(clean["version_max"])
    ):
        raise InvalidInput(
            "The upper version must be above the lower one (boxes from the lower version, below the upper).",
            field="target.version_max",
        )
    if target.get("tags"):
        clean["tags"] = _string_list(target["tags"], "tags", max_len=40)
    if target.get("boxes"):
        clean["boxes"] = _string_list(target["boxes"], "boxes", max_items=MAX_EXPLICIT_BOXES)
    return clean


def _explicit_q(items: list[str]) -> Q:
    ids, serials = [], []
    for item in items:
        try:
            ids.append(uuid.UUID(item))
        except ValueError:
            serials.append(item)
    return Q(pk__in=ids) | Q(serial__in=serials)


def _models_in_fleet(models: list[str]) -> list[str]:
    """The fleet's model names that match ``models`` whatever the case (``otb-v2c`` is ``OTB-v2c``):
    few distinct models, so the filter stays an indexed IN list."""
    wanted = {model.casefold() for model in models}
    fleet_models = Box.objects.filter(state=BoxState.CLAIMED).values_list("model", flat=True).distinct()
    return [model for model in fleet_models if model.casefold() in wanted]


def _filter_qs(target: dict[str, Any], release: Release, versions: list[str] | None) -> dict[str, Q]:
    """One Q per filter, so the preview can count each alone and the creation can AND them."""
    filters: dict[str, Q] = {
        "channels": Q(release_channel__in=target.get("channels") or CHANNELS_TAKING[release.channel]),
    }
    if "models" in target:
        filters["models"] = Q(model__in=_models_in_fleet(target["models"]))
    if "organizations" in target:
        filters["organizations"] = Q(organization_id__in=target["organizations"])
    if versions is not None:
        filters["version_range"] = Q(firmware_version__in=versions)
    if "tags" in target:
        filters["tags"] = Q(tags__overlap=target["tags"])
    if "boxes" in target:
        filters["boxes"] = _explicit_q(target["boxes"])
    return filters


def _versions_in_range(target: dict[str, Any]) -> list[str] | None:
    """The distinct versions of the fleet inside the range: few, so the range becomes an IN list."""
    if "version_min" not in target and "version_max" not in target:
        return None
    fleet_versions = Box.objects.filter(state=BoxState.CLAIMED).values_list("firmware_version", flat=True)
    return [
        version
        for version in fleet_versions.distinct()
        if version_in_range(version, target.get("version_min"), target.get("version_max"))
    ]


def skip_reason(
    *,
    release: Release,
    model: str,
    firmware_version: str,
    channel: str,
    auto_upgrade: bool,
    force: bool,
    busy: bool,
) -> str:
    """Why a matched box cannot take the release, or "" when it can."""
    if model not in release.hardware_models:
        return SkipReason.MODEL_UNSUPPORTED
    if channel not in CHANNELS_TAKING[release.channel]:
        return SkipReason.CHANNEL
    if firmware_version == release.version:
        return SkipReason.ALREADY_ON_VERSION
    if firmware_version and version_key(firmware_version) > version_key(release.version):
        return SkipReason.DOWNGRADE
    if not auto_upgrade and not force:
        return SkipReason.AUTO_UPGRADE_OFF
    if busy:
        return SkipReason.IN_OTHER_ROLLOUT
    return ""


def phase_sizes(phases: list[int], eligible: int) -> list[int]:
    """How many of ``eligible`` boxes each cumulative-percentage phase adds (at least one per
    non-empty phase, so a 1 % first phase of a small fleet still tests one box)."""
    sizes, done = [], 0
    for pct in phases:
        upto = min(eligible, max(math.ceil(eligible * pct / 100), 1 if eligible else 0))
        sizes.append(max(upto - done, 0))
        done = max(done, upto)
    if sizes and done < eligible:
        sizes[-1] += eligible - done
    return sizes


def _spread(rollout_key: str, box_id: uuid.UUID) -> bytes:
    # A stable pseudo-random order: the phases sample the fleet evenly (models, organisations),
    # and the same rollout always puts a box in the same phase.
    return hashlib.blake2b(box_id.bytes, key=rollout_key.encode()[:64], digest_size=8).digest()


@dataclass
class TargetPlan:
    """The evaluated target: upgrade rows to write and counts for the preview."""

    filter_counts: dict[str, int] = field(default_factory=dict)
    matched: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    phase_sizes: list[int] = field(default_factory=list)
    # (box_id, firmware_version, phase or -1, skip reason) for every matched box
    rows: list[tuple[uuid.UUID, str, int, str]] = field(default_factory=list)

    @property
    def eligible(self) -> int:
        return self.matched - sum(self.skipped.values())

    def as_preview(self) -> dict[str, Any]:
        return {
            "matched": self.matched,
            "eligible": self.eligible,
            "filters": self.filter_counts,
            "skipped": self.skipped,
            "phase_sizes": self.phase_sizes,
        }


def target_plan(
    *, release: Release, target: dict[str, Any], phases: list[int], force: bool, rollout_key: str
) -> TargetPlan:
    """Evaluate a normalised target: a fixed handful of queries whatever the fleet size."""
    versions = _versions_in_range(target)
    filters = _filter_qs(target, release, versions)
    claimed = Box.objects.filter(state=BoxState.CLAIMED)
    counts = claimed.aggregate(**{name: Count("pk", filter=q) for name, q in filters.items()})
    combined = Q()
    for q in filters.values():
        combined &= q
    matched = list(
        claimed.filter(combined).values_list(
            "pk", "model", "firmware_version", "release_channel", "auto_upgrade"
        )
    )
    busy = set(
        Upgrade.objects.filter(state__in=OPEN_STATES, box_id__in=[row[0] for row in matched]).values_list(
            "box_id", flat=True
        )
        if len(matched) < 5000
        else Upgrade.objects.filter(state__in=OPEN_STATES).values_list("box_id", flat=True)
    )
    plan = TargetPlan(filter_counts=counts, matched=len(matched))
    eligible: list[tuple[bytes, uuid.UUID, str]] = []
    for box_id, model, firmware_version, channel, auto_upgrade in matched:
        reason = skip_reason(
            release=release,
            model=model,
            firmware_version=firmware_version,
            channel=channel,
            auto_upgrade=auto_upgrade,
            force=force,
            busy=box_id in busy,
        )
        if reason:
            plan.skipped[reason] = plan.skipped.get(reason, 0) + 1
            plan.rows.append((box_id, firmware_version, -1, reason))
        else:
            eligible.append((_spread(rollout_key, box_id), box_id, firmware_version))
    eligible.sort()
    plan.phase_sizes = phase_sizes(phases, len(eligible))
    position = 0
    for phase, size in enumerate(plan.phase_sizes):
        for _, box_id, firmware_version in eligible[position : position + size]:
            plan.rows.append((box_id, firmware_version, phase, ""))
        position += size
    return plan


MAX_PHASES = 10


def int_in(value: Any, name: str, low: int, high: int) -> int:
    """``value`` if it is a JSON integer within [low, high]; else InvalidInput naming ``name``."""
    if type(value) is not int or not low <= value <= high:
        raise InvalidInput(f"Give a whole number from {low} to {high}.", field=name)
    return value


def phases_validate(phases: Any) -> list[int]:
    """The cumulative percentages of a rollout's phases: increasing integers, the last one 100."""
    if not isinstance(phases, list) or not phases or len(phases) > MAX_PHASES:
        raise InvalidInput(
            f"Give 1 to {MAX_PHASES} phases, as cumulative percentages, e.g. 1, 10, 50, 100.", field="phases"
        )
    for value in phases:
        if type(value) is not int or not 1 <= value <= 100:
            raise InvalidInput(
                f"Each phase is a percentage from 1 to 100 of the eligible boxes ({value} is not).",
                field="phases",
            )
    if any(b <= a for a, b in itertools.pairwise(phases)):
        raise InvalidInput(
            "Each phase is a larger share than the one before it (cumulative percentages, e.g. 1, 10, 50, "
            "100).",
            field="phases",
        )
    if phases[-1] != 100:
        raise InvalidInput(
            "The last phase must be 100, so that every eligible box is upgraded.", field="phases"
        )
    return list(phases)
