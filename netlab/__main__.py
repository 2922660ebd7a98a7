"""``make lab``: build the lab, measure the bond (one JSON line, as the ``lab`` benchmark prints it)
and take it down; ``--keep`` leaves it up until Ctrl-C to look around
(``ip netns exec otblab-lan bash``)."""

from __future__ import annotations

import argparse
import json
import signal

from netlab.environment import lab_database_drop, lab_environment, redis_flush
from netlab.measure import headline
from netlab.scenario import Lab, log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--links", type=int, default=2)
    parser.add_argument("--link-mbps", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--keep", action="store_true", help="leave the lab up until Ctrl-C")
    args = parser.parse_args()
    env = lab_environment()
    try:
        with Lab(prefix="otblab", links=args.links, link_mbps=args.link_mbps, env=env) as lab:
            print(
                json.dumps({"lab": "otblab", **headline(lab, lab.boxes[0], seconds=args.seconds)}), flush=True
            )
            if args.keep:
                log(f"lab up: backend {lab.backend.url}; namespaces otblab-*; Ctrl-C to take it down")
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
                signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        redis_flush(env)
        lab_database_drop(env)


if __name__ == "__main__":
    main()
