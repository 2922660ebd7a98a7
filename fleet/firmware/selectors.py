"""Reads for releases, rollouts and upgrades. Progress is a fixed number of aggregate queries (an
index on ``(rollout, state, phase)``), whatever the size of the rollout."""

from __future__ import annotations

import datetime as dt
from typing import Any
from uuid import UUID

from django.db.models import Count, Max, Q, QuerySet
from django.utils import timezone

from fleet.core.errors import NotFound
from fleet.core.models import Box
from fleet.firmware.choices import (
    FAILURE_STATES,
    IN_FLIGHT_STATES,
    WAITING_STATES,
    ReleaseState,
    RolloutState,
    UpgradeState,
)
from fleet.firmware.models import BoxUpgradePolicy, Release, Rollout, Upgrade
from fleet.firmware.targeting import phases_validate, target_normalize, target_plan
from fleet.firmware.windows import next_window_start

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


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds % 86400 == 0 and seconds >= 86400:
        return f"{seconds // 86400} day{'s' if seconds >= 172800 else ''}"
    if seconds % 3600 == 0 and seconds >= 3600:
        return f"{seconds // 3600} h"
    if seconds >= 60:
        return f"{seconds // 60} min"
    return f"{seconds} s"


def rollout_waiting(*, rollout: Rollout, now: dt.datetime | None = None) -> list[dict[str, Any]]:
    """Why the rollout is waiting and until when, as the engine (``fleet.firmware.engine``) decides
    it: the start time, the soak time before the next phase, the maintenance windows of boxes whose
    phase is open, the in-flight limit, offline and postponed boxes. Each item is ``{"kind", "text",
    "until" (aware datetime or None), "boxes" (count or None), "last" (the last window to open)}``;
    a fixed number of queries (windows grouped by time zone and policy: few distinct values)."""
    now = now or timezone.now()
    reasons: list[dict[str, Any]] = []

    def say(kind: str, text: str, until: dt.datetime | None = None, boxes: int | None = None) -> None:
        reasons.append({"kind": kind, "text": text, "until": until, "boxes": boxes, "last": None})

    if rollout.state == RolloutState.DRAFT:
        say("draft", "Not started yet: nothing is sent until someone starts it.")
        return reasons
    if rollout.state == RolloutState.SCHEDULED and rollout.start_at and rollout.start_at > now:
        say("start", "Scheduled: the first phase opens at the start time.", rollout.start_at)
        return reasons
    if rollout.state == RolloutState.PAUSED:
        say(
            "paused",
            f"Paused: {rollout.pause_reason or 'no reason given'}. Nothing is sent until it is resumed.",
        )
        return reasons
    if rollout.state != RolloutState.RUNNING or rollout.current_phase < 0:
        return reasons
    current, last = rollout.current_phase, len(rollout.phases) - 1
    upgrades = Upgrade.objects.filter(rollout_id=rollout.pk)
    if rollout.phase_settled_at is not None and current < last:
        opens = rollout.phase_settled_at + dt.timedelta(seconds=rollout.soak_s)
        if opens > now:
            say(
                "soak",
                f"Phase {current + 1} has settled: phase {current + 2} ({rollout.phases[current + 1]} %) "
                f"opens after the soak time of {_duration(rollout.soak_s)}.",
                opens,
            )
    in_flight = upgrades.filter(state__in=IN_FLIGHT_STATES).count()
    if in_flight >= rollout.max_in_flight:
        say(
            "in_flight",
            f"The in-flight limit is reached ({rollout.max_in_flight} at once): the next upgrades are "
            "sent as these finish.",
            boxes=in_flight,
        )
    if not rollout.force:
        closed: list[tuple[dt.datetime | None, int]] = []
        groups = (
            upgrades.filter(state=UpgradeState.SCHEDULED, phase__lte=current, forced=False)
            .values_list(
                "box__organization__timezone",
                "box__upgrade_policy__window_days",
                "box__upgrade_policy__window_start",
                "box__upgrade_policy__window_end",
            )
            .annotate(n=Count("pk"))
        )
        for zone, days, start, end, count in groups:
            opens_at = next_window_start(now, zone or "UTC", days, start, end)
            if opens_at is None or opens_at > now:
                closed.append((opens_at, count))
        if closed:
            boxes = sum(count for _, count in closed)
            times = sorted(opens_at for opens_at, _ in closed if opens_at is not None)
            say(
                "window",
                f"{boxes} box{'es' if boxes != 1 else ''} of the open phases wait{'s' if boxes == 1 else ''} "
                "for their maintenance window (each box's, in its customer's time zone).",
                times[0] if times else None,
                boxes,
            )
            if len(times) > 1 and times[-1] != times[0]:
                reasons[-1]["last"] = times[-1]
    pending = upgrades.filter(state=UpgradeState.PENDING, phase__lte=current)
    postponed = pending.filter(not_before__gt=now).aggregate(n=Count("pk"), latest=Max("not_before"))
    if postponed["n"]:
        say(
            "postponed",
            f"{postponed['n']} box{'es' if postponed['n'] != 1 else ''} postponed by the customer.",
            postponed["latest"],
            postponed["n"],
        )
    offline = pending.exclude(not_before__gt=now).filter(
        Q(box__status__online=False) | Q(box__status__isnull=True)
    )
    offline_count = offline.count()
    if offline_count:
        grace = (
            rollout.phase_opened_at + dt.timedelta(seconds=rollout.offline_grace_s)
            if rollout.phase_opened_at and current == last
            else None
        )
        say(
            "offline",
            f"{offline_count} box{'es' if offline_count != 1 else ''} of the open phases "
            f"{'are' if offline_count != 1 else 'is'} offline: upgraded when back"
            + (", waited for until the offline grace ends." if grace else "."),
            grace,
            offline_count,
        )
    return reasons
