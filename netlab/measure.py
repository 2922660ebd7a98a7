"""The lab's headline measurements, shared by ``make lab`` and the ``lab`` benchmark: one link
alone through the tunnel, the bond, a link cut and restored mid-transfer, the source address the
internet sees, and the aggregation server's CPU while it carries the bond."""

from __future__ import annotations

import statistics
import time
from typing import Any

from netlab.scenario import Lab, LabBox, cpu_seconds, log, namespace_pids


def longest_stall_s(intervals: list[tuple[float, float]], floor_mbps: float = 1.0) -> float:
    """The longest run of receiver intervals under ``floor_mbps`` (the transfer not moving)."""
    longest = current = 0.0
    width = intervals[1][0] - intervals[0][0] if len(intervals) > 1 else 0.1
    for _, mbps in intervals:
        current = current + width if mbps < floor_mbps else 0.0
        longest = max(longest, current)
    return round(longest, 2)


def recovery_s(intervals: list[tuple[float, float]], since: float, target_mbps: float) -> float | None:
    """Seconds from ``since`` until a 0.5 s window of the receiver reaches ``target_mbps``."""
    after = [(start, mbps) for start, mbps in intervals if start >= since]
    for index in range(len(after) - 4):
        window = after[index : index + 5]
        if statistics.mean(mbps for _, mbps in window) >= target_mbps:
            return round(window[0][0] - since, 2)
    return None


def headline(lab: Lab, box: LabBox, *, seconds: float = 5.0) -> dict[str, Any]:
    wans = lab.topo.wans_of(box.role)
    public = lab.public_ip(box)
    names = [wan.name for wan in wans]
    lab.set_policy(
        box, "aggregate", {name: ("primary" if i == 0 else "disabled") for i, name in enumerate(names)}
    )
    single = lab.iperf(box, seconds)
    log(f"one link through the tunnel: {single['mbps']:.1f} Mbit/s")
    lab.set_policy(box, "aggregate", dict.fromkeys(names, "primary"))
    server_pids = namespace_pids(lab, "srv")
    cpu_before, wall_before = cpu_seconds(server_pids), time.monotonic()
    bonded = lab.iperf(box, seconds)
    gateway_cpu_pct = 100 * (cpu_seconds(server_pids) - cpu_before) / (time.monotonic() - wall_before)
    log(f"bond of {len(wans)} links: {bonded['mbps']:.1f} Mbit/s")

    marks: dict[str, float] = {}
    cut_at, restore_at, total = seconds * 0.6, seconds * 1.4, seconds * 2.6

    def cut_and_restore() -> None:
        start = time.monotonic()
        time.sleep(cut_at)
        lab.cut(wans[0])
        marks["cut"] = time.monotonic() - start
        time.sleep(max(0.0, restore_at - (time.monotonic() - start)))
        lab.restore(wans[0])
        marks["restore"] = time.monotonic() - start

    failover = lab.iperf(box, total, during=cut_and_restore)
    intervals = failover["intervals"]
    before = statistics.mean(mbps for start, mbps in intervals if 1.0 <= start < marks["cut"] - 0.2)
    recovered = recovery_s(intervals, marks["restore"], 0.85 * before)
    link_mbps = wans[0].mbps
    return {
        "links": len(wans),
        "link_mbps": link_mbps,
        "single_mbps": round(single["mbps"], 2),
        "aggregate_mbps": round(bonded["mbps"], 2),
        "ratio_vs_sum": round(bonded["mbps"] / (link_mbps * len(wans)), 3),
        "ratio_vs_single": round(bonded["mbps"] / single["mbps"], 3),
        "failover_stall_s": longest_stall_s(intervals),
        "recover_s": recovered,
        "public_ip_ok": single["source"] == bonded["source"] == failover["source"] == public,
        "gateway_cpu_pct": round(gateway_cpu_pct, 1),
    }
