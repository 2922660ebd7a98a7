"""The data plane in the network lab (root): a box with two WANs shaped to 20 Mbit/s each, the real
otb-agent and otb-gateway, the real backend. One JSON line:

{"bench": "lab", "links": 2, "link_mbps": 20, "single_mbps": ..., "aggregate_mbps": ..., "ratio_vs_sum": ...,
 "failover_stall_s": ..., "recover_s": ..., "public_ip_ok": true, "gateway_cpu_pct": ...}

``single_mbps`` is one link alone *through the tunnel* (the other disabled by policy): the baseline
of the same run. Quick mode transfers for 4 s (10 s for the cut); ``--full`` for 10 s (26 s) and adds
the gateway at scale: 200 boxes in its peer list (idle), the time to converge from empty and after
one change, and the memory of the gateway with its children.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from netlab.environment import lab_database_drop, lab_environment, redis_flush
from netlab.measure import headline
from netlab.scale import gateway_at_scale
from netlab.scenario import Lab


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--full", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print(json.dumps({"bench": "lab", "error": "needs root (network namespaces)"}))
        return 1
    env = lab_environment()
    try:
        with Lab(prefix="otblabb", links=2, link_mbps=20.0, env=env) as lab:
            result = headline(lab, lab.boxes[0], seconds=10.0 if args.full else 4.0)
            if args.full:
                result.update(gateway_at_scale(lab, boxes=200))
    finally:
        redis_flush(env)
        lab_database_drop(env)
    print(json.dumps({"bench": "lab", **result}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
