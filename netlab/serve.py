"""The otb-fleet ASGI server (uvicorn) listening on a lab address only.

``python -m netlab.serve NAMESPACE ADDRESS PORT``: the listening socket is made inside the lab's
namespace, the process itself stays in the host's namespace, where PostgreSQL and Redis are. The
boxes and the aggregation server reach the backend only through the lab's own links and routes."""

from __future__ import annotations

import sys

import uvicorn

from netlab.netns import listening_socket


def main() -> None:
    namespace, address, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    sock = listening_socket(namespace, address, port)
    config = uvicorn.Config(
        "config.asgi:application",
        ws_max_size=65536,
        log_level="warning",
        timeout_graceful_shutdown=3,
    )
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
