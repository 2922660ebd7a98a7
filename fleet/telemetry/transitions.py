"""The rules of a WAN link's live state, as the telemetry writer applies them to a box's samples.
Pure: no database, no clock, no asyncio; the writer reads the previous states in its transaction,
calls :func:`wans_advance` and writes what it returns.

- A link is up or down as its latest sample says. A change from the previous state is a transition
  (``wan_up`` / ``wan_down``) at the sample's time, which becomes ``up_changed_at``.
- A link seen for the first time starts in the state it reports, at the sample's time: reported
  down it is a ``wan_down`` (someone should know), reported up it is no event.
- A link is degraded while up with loss >= ``DEGRADED_LOSS_PCT`` or RTT >= ``DEGRADED_RTT_MS``;
  ``degraded_since`` is the time of the first degraded sample of the run, cleared by the first
  sample that is not (a link going down is not degraded: it is down).
- Samples apply in the order the box produced them: messages by seq (a clock that jumped back does
  not reorder them), the samples of one message by timestamp (stable for equal times).
- A link not reported in these samples keeps its row as it is.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, TypeVar

DEGRADED_LOSS_PCT: Final = 5.0
DEGRADED_RTT_MS: Final = 500.0
WAN_UP: Final = "wan_up"
WAN_DOWN: Final = "wan_down"

# One WAN entry of a sample, as the protocol defines it (``iface``, ``up``, ``loss_pct``, ``rtt_ms``...).
Reading = Mapping[str, Any]
# A sample with its (sanitised) time: (ts, sample) where sample["wans"] is a list of readings.
TimedSample = tuple[datetime, Mapping[str, Any]]
Key = TypeVar("Key", bound=Hashable)


@dataclass(frozen=True, slots=True)
class WanState:
    """What a link's status row says: up or down since when, degraded since when."""

    up: bool
    up_changed_at: datetime
    degraded_since: datetime | None = None


@dataclass(frozen=True, slots=True)
class Transition:
    """A link went up or down (``kind`` is ``wan_up`` or ``wan_down``) at ``ts``; ``reading`` is the
    WAN entry of the sample that said so."""

    iface: str
    kind: str
    ts: datetime
    reading: Reading


@dataclass(frozen=True, slots=True)
class LinkAdvance:
    """A reported link after the samples: its new state, the last reading applied (the row's
    measurements) and its time, and whether the state differs from the stored one (or is new)."""

    state: WanState
    latest: Reading
    latest_ts: datetime
    changed: bool


@dataclass(slots=True)
class BoxWans:
    """What a box's samples did to its links: the reported links by name, the transitions in order."""

    links: dict[str, LinkAdvance] = field(default_factory=dict)
    transitions: list[Transition] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """A transition, a degraded change or a new link: the rows must be written now."""
        return any(link.changed for link in self.links.values())


def is_degraded(wan: Reading) -> bool:
    """Up, but losing at least DEGRADED_LOSS_PCT or slower than DEGRADED_RTT_MS."""
    if not wan["up"]:
        return False
    loss = wan.get("loss_pct")
    rtt = wan.get("rtt_ms")
    return (loss is not None and loss >= DEGRADED_LOSS_PCT) or (rtt is not None and rtt >= DEGRADED_RTT_MS)


def samples_in_order(messages: Iterable[Sequence[TimedSample]]) -> Iterator[TimedSample]:
    """The samples of messages given in seq order, in the order they apply: message by message, each
    message's samples by time (stable: equal times keep the order the agent sent)."""
    for timed in messages:
        yield from sorted(timed, key=_time)


def _time(pair: TimedSample) -> datetime:
    return pair[0]


def _iface(wan: Reading) -> str:
    return str(wan["iface"])


class _Link:
    """A link's state while the samples apply (mutable; frozen into a LinkAdvance at the end)."""

    __slots__ = ("changed", "degraded_since", "latest", "latest_ts", "up", "up_changed_at")

    def __init__(self, up: bool, up_changed_at: datetime, degraded_since: datetime | None, changed: bool):
        self.up = up
        self.up_changed_at = up_changed_at
        self.degraded_since = degraded_since
        self.changed = changed
        self.latest: Reading | None = None
        self.latest_ts: datetime | None = None


def wans_advance(
    previous: Mapping[str, WanState],
    messages: Iterable[Sequence[TimedSample]],
    *,
    name: Callable[[Reading], str] = _iface,
) -> BoxWans:
    """Apply a box's new samples (its messages in seq order, see :func:`samples_in_order`) to its
    links' ``previous`` states (by link name); returns the reported links and the transitions.
    ``name`` gives the name a reading's link is stored under."""
    links: dict[str, _Link] = {}
    transitions: list[Transition] = []
    for ts, sample in samples_in_order(messages):
        for wan in sample["wans"]:
            iface = name(wan)
            up = bool(wan["up"])
            link = links.get(iface)
            if link is None:
                known = previous.get(iface)
                if known is None:
                    link = links[iface] = _Link(up, ts, None, changed=True)
                    if not up:
                        transitions.append(Transition(iface, WAN_DOWN, ts, wan))
                else:
                    link = links[iface] = _Link(known.up, known.up_changed_at, known.degraded_since, False)
            if link.up != up:
                link.up = up
                link.up_changed_at = ts
                link.changed = True
                transitions.append(Transition(iface, WAN_UP if up else WAN_DOWN, ts, wan))
            degraded = is_degraded(wan)
            if degraded and link.degraded_since is None:
                link.degraded_since = ts
                link.changed = True
            elif not degraded and link.degraded_since is not None:
                link.degraded_since = None
                link.changed = True
            link.latest = wan
            link.latest_ts = ts
    return BoxWans(
        links={
            iface: LinkAdvance(
                WanState(link.up, link.up_changed_at, link.degraded_since),
                link.latest,  # type: ignore[arg-type]  # set by the reading that created the link
                link.latest_ts,  # type: ignore[arg-type]
                link.changed,
            )
            for iface, link in links.items()
        },
        transitions=transitions,
    )


def boxes_due(
    advances: Mapping[Key, BoxWans], last_written: Mapping[Key, float], *, now: float, min_interval: float
) -> set[Key]:
    """The boxes whose link rows to write now: every box with a change, else a box whose rows were
    last written at least ``min_interval`` seconds before ``now`` (monotonic seconds). At the agents'
    normal pace (one message per 10 s) that is every message; during a buffer flush or a burst it
    caps the rewriting of the same rows many times a second."""
    return {
        box
        for box, advance in advances.items()
        if advance.links and (advance.changed or now - last_written.get(box, float("-inf")) >= min_interval)
    }
