"""Reads for releases, rollouts and upgrades. Progress is a fixed number of aggregate queries (an
index on ``(rollout, state, phase)``), whatever the size of the rollout."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.db.models import Count, Q, QuerySet

from fleet.core.errors import NotFound
from fleet.core.models import Box
from fleet.firmware.choices import (
    FAILURE_STATES,
    IN_FLIGHT_STATES,
    WAITING_STATES,
    ReleaseState,
    UpgradeState,
)
from fleet.firmware.models import BoxUpgradePolicy, Release, Rollout, Upgrade
from fleet.firmware.targeting import phases_validate, target_normalize, target_plan

TOP_REASONS = 20


def releases_list(*, include_unpublished: bool) -> QuerySet[Release]:
    releases = Release.objects.all()
    if not include_unpublished:
        releases = releases.filter(state=ReleaseState.PUBLISHED)
    return releases.order_by("-created_at")


def releases_published() -> QuerySet[Release]:
    """The releases a rollout may send, latest published first."""
    return Release.objects.filter(state=ReleaseState.PUBLISHED).order_by("-published_at", "-created_at")


def release_get(*, release_id: Any) -> Release:
    """One release; NotFound for an unknown or malformed id."""
    try:
        return Release.objects.get(pk=UUID(str(release_id)))
    except (Release.DoesNotExist, ValueError) as exc:
        raise NotFound("release not found") from exc


def rollouts_list() -> QuerySet[Rollout]:
    return Rollout.objects.select_related("release").order_by("-created_at")


def rollout_get(*, rollout_id: Any) -> Rollout:
    """One rollout with its release; NotFound for an unknown or malformed id."""
    try:
        return Rollout.objects.select_related("release").get(pk=UUID(str(rollout_id)))
    except (Rollout.DoesNotExist, ValueError) as exc:
        raise NotFound("rollout not found") from exc


def rollout_preview(
    *, release: Release, target: Any, phases: list[int], force: bool = False
) -> dict[str, Any]:
    """What ``rollout_create`` would do, without writing: boxes per filter, skipped by reason,
    boxes per phase."""
    plan = target_plan(
        release=release,
        target=target_normalize(target),
        phases=phases_validate(phases),
        force=force,
        rollout_key="preview",
    )
    return plan.as_preview()


def rollout_failure_counts(*, rollout: Rollout) -> tuple[int, int]:
    """(failures in the current phase, failures in the whole rollout), in one query."""
    counts = rollout.upgrades.aggregate(
        phase=Count("pk", filter=Q(state__in=FAILURE_STATES, phase=rollout.current_phase)),
        total=Count("pk", filter=Q(state__in=FAILURE_STATES)),
    )
    return counts["phase"], counts["total"]


def rollout_state_counts(*, rollout_id: Any) -> dict[int, dict[str, int]]:
    """``{phase: {state: count}}`` for a rollout, one GROUP BY."""
    by_phase: dict[int, dict[str, int]] = {}
    rows = (
        Upgrade.objects.filter(rollout_id=rollout_id)
        .values_list("phase", "state")
        .annotate(n=Count("pk"))
        .order_by()
    )
    for phase, state, count in rows:
        by_phase.setdefault(phase, {})[state] = count
    return by_phase


def rollout_progress(*, rollout: Rollout) -> dict[str, Any]:
    """Counts per state and per phase, the most common failure reasons, the current phase and why
    the rollout is paused: three queries, whatever the number of boxes."""
    by_phase = rollout_state_counts(rollout_id=rollout.pk)
    totals: dict[str, int] = dict.fromkeys(UpgradeState.values, 0)
    for states in by_phase.values():
        for state, count in states.items():
            totals[state] += count
    reasons = list(
        Upgrade.objects.filter(rollout_id=rollout.pk, state__in=[*FAILURE_STATES, UpgradeState.SKIPPED])
        .values_list("state", "reason")
        .annotate(n=Count("pk"))
        .order_by("-n", "reason")[:TOP_REASONS]
    )
    phases = []
    for index, pct in enumerate(rollout.phases):
        states = {
            state: count for state, count in by_phase.get(index, {}).items() if state != UpgradeState.SKIPPED
        }
        phases.append(
            {
                "index": index,
                "percent": pct,
                "size": rollout.phase_sizes[index] if index < len(rollout.phase_sizes) else 0,
                "open": index <= rollout.current_phase,
                "states": states,
            }
        )
    return {
        "state": rollout.state,
        "current_phase": rollout.current_phase,
        "phase_opened_at": rollout.phase_opened_at,
        "pause_reason": rollout.pause_reason,
        "total": rollout.total,
        "counts": totals,
        "in_flight": sum(totals[state] for state in IN_FLIGHT_STATES),
        "phases": phases,
        "failure_reasons": [
            {"state": state, "reason": reason, "count": count} for state, reason, count in reasons
        ],
    }


def rollout_upgrades(*, rollout: Rollout, state: str | None = None) -> QuerySet[Upgrade]:
    upgrades = Upgrade.objects.filter(rollout=rollout).select_related("box")
    if state:
        upgrades = upgrades.filter(state=state)
    return upgrades.order_by("phase", "id")


def box_upgrades(*, box: Box) -> QuerySet[Upgrade]:
    return Upgrade.objects.filter(box=box).select_related("release", "rollout").order_by("-created_at")


def box_waiting_upgrade(*, box: Box) -> Upgrade | None:
    """The box's upgrade that waits for its window (pending or scheduled), if any: what a customer
    may postpone."""
    return box_upgrades(box=box).filter(state__in=WAITING_STATES).first()


def box_upgrade_policy(*, box: Box) -> BoxUpgradePolicy:
    """The box's policy, or an unsaved default one (nightly window)."""
    return BoxUpgradePolicy.objects.filter(box=box).first() or BoxUpgradePolicy(box=box)


def release_downloadable_by_box(*, release_id: Any, box: Box) -> Release | None:
    """The release a box may download: a published image (never a draft or a withdrawn one: a
    withdrawal stops downloads at once) that fits the box's model or that the box is being
    upgraded to."""
    try:
        release = Release.objects.get(pk=release_id)
    except (Release.DoesNotExist, ValueError, TypeError):
        return None
    if not release.image:
        return None
    if release.state != ReleaseState.PUBLISHED:
        return None
    if box.model in release.hardware_models:
        return release
    if Upgrade.objects.filter(box=box, release=release, state__in=IN_FLIGHT_STATES).exists():
        return release
    return None
