"""The gateway at scale (the ``lab`` benchmark's full mode): many boxes in one aggregation server's
peer list, most of them idle. Measures the time to converge from an empty server, the time to
converge after one change, and the memory of the gateway with everything it runs."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from netlab.backend import ROOT, Api
from netlab.scenario import Lab, _stop, log, namespace_pids, wait_for


def rss_mib(pids: list[int]) -> float:
    total_kib = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kib += int(line.split()[1])
        except OSError:
            continue
    return round(total_kib / 1024, 1)


def listening_ports(lab: Lab) -> set[int]:
    out = lab.topo.ns.exec("srv", "ss", "-ltnH")
    ports = set()
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 4 and ":" in fields[3]:
            ports.add(int(fields[3].rsplit(":", 1)[1]))
    return ports


def wg_peers(lab: Lab) -> int:
    out = lab.topo.ns.exec("srv", "wg", "show", "otbgw0", "peers", check=False)
    return len(out.split())


def gateway_at_scale(lab: Lab, boxes: int) -> dict[str, Any]:
    assert lab.staff is not None
    lab.staff.call("PATCH", f"/api/v1/servers/{lab.server['id']}/", {"capacity": boxes + 10})
    region = lab.server["region"]
    for name, cidr, purpose, length in (
        ("public-scale", "203.0.113.0/24", "public_ipv4", None),
        ("tunnel-scale", "100.64.4.0/22", "tunnel_p2p", 31),
    ):
        body: dict[str, Any] = {
            "name": f"{lab.prefix}-{name}",
            "cidr": cidr,
            "purpose": purpose,
            "region": region,
        }
        if length:
            body["prefix_length"] = length
        lab.staff.post("/api/v1/pools/", body)
    people = json.loads(
        subprocess.check_output(
            [sys.executable, "-m", "netlab.bootstrap", str(boxes)], cwd=ROOT, env=lab.env, text=True
        )
    )
    owner = Api(lab.backend.url, lab.topo.ns.name("inet"), people["owner_token"])
    claimed = []
    for index, factory in enumerate(people["boxes"], 1):
        box = owner.post(
            "/api/v1/boxes/claim",
            {
                "serial": factory["serial"],
                "claim_code": factory["claim_code"],
                "organization": people["organization"],
            },
        )
        claimed.append(box)
        if index % 50 == 0:
            log(f"claimed {index}/{boxes} idle boxes")
    # Every box gets its ss-server; only boxes whose agent enrolled (and so sent a WireGuard key)
    # get a WireGuard peer: the idle ones here never ran an agent.
    keyed = len([box for box in lab.boxes if box.box_id])
    expected = len(claimed) + keyed

    # From empty: the gateway stopped and everything it made on the server removed.
    _stop(lab.gateway)
    lab.topo.ns.exec("srv", "pkill", "-f", "ss-server", check=False)
    lab.topo.ns.exec("srv", "pkill", "-f", "wireguard-go", check=False)
    lab.topo.ns.ip("srv", "link", "del", "otbgw0", check=False)
    lab.topo.ns.exec("srv", "nft", "delete", "table", "inet", "otb_gateway", check=False)
    wait_for(lambda: wg_peers(lab) == 0 and len(listening_ports(lab)) == 0, 20, "an empty server")
    state = lab.workdir / "gateway"
    for child in state.glob("*"):
        if child.name != "token":
            subprocess.run(["rm", "-rf", str(child)], check=False)
    started = time.monotonic()
    lab._start_gateway_process(state)
    wait_for(
        lambda: wg_peers(lab) >= keyed and len(listening_ports(lab)) >= expected, 120, "convergence", 0.5
    )
    from_empty = time.monotonic() - started
    log(f"{expected} peers converged from empty in {from_empty:.1f} s")
    time.sleep(3)
    memory = rss_mib(namespace_pids(lab, "srv"))

    # One change: one idle box unclaimed; the time until its ss-server is gone.
    listening = len(listening_ports(lab))
    changed = time.monotonic()
    owner.post(f"/api/v1/boxes/{claimed[-1]['id']}/unclaim")
    wait_for(lambda: len(listening_ports(lab)) == listening - 1, 60, "the change", 0.1)
    one_change = time.monotonic() - changed
    return {
        "scale_boxes": expected,
        "scale_converge_from_empty_s": round(from_empty, 2),
        "scale_converge_one_change_s": round(one_change, 2),
        "scale_gateway_rss_mib": memory,
    }
