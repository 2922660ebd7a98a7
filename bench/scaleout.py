"""Scale-out: the ingest load of bench/ingest.py through Debian's nginx, against one uvicorn process and
then two, in the same run (same database, same boxes). Prints one JSON line:

{"bench": "scaleout", "one_process_msgs_per_s": ..., "two_processes_msgs_per_s": ..., "speedup": ...,
 "cpu_us_per_msg": {"one": {...}, "two": {...}}, "lost": 0, "duplicated": 0}

nginx proxies plain HTTP here with the shipped site's websocket settings (TLS would add its cost to
both phases alike, on the same two cores). On this 2-core machine PostgreSQL, Redis, nginx, the load
generator and the servers share the cores: the CPU split per message says where they went, and the
speedup is the figure to explain, not to force (docs/scale-out.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from common import cpu_ms_per, cpu_snapshot, free_port, log, raise_nofile
from ingest import Server, create_boxes, drop_database, fresh_database, run_load_attributed, verify_storage


def nginx_conf(directory: Path, port: int, upstreams: list[int]) -> Path:
    servers = "\n".join(f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=5s;" for p in upstreams)
    conf = directory / "nginx.conf"
    conf.write_text(
        f"""user root;
worker_processes 1;
worker_rlimit_nofile 65536;
pid {directory}/nginx.pid;
error_log {directory}/error.log warn;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    client_body_temp_path {directory}/body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
    map $http_upgrade $connection_upgrade {{ default upgrade; "" ""; }}
    upstream otb_fleet {{
{servers}
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=16384;
        proxy_http_version 1.1;
        proxy_set_header Host $host;
        proxy_set_header X-Forwarded-For $remote_addr;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection $connection_upgrade;
        location /ws/ {{ proxy_pass http://otb_fleet; proxy_read_timeout 120s; proxy_buffering off; }}
        location / {{ proxy_pass http://otb_fleet; }}
    }}
}}
"""
    )
    return conf


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--connections", type=int)
    parser.add_argument("--duration", type=float)
    args = parser.parse_args()
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists() or os.geteuid() != 0:
        print(json.dumps({"bench": "scaleout", "error": "needs Debian's nginx and root"}))
        return 1
    connections = args.connections or (1000 if args.full else 200)
    duration = args.duration or (20.0 if args.full else 8.0)
    raise_nofile()
    name = "otb_bench_scaleout"
    database_url = fresh_database(name)
    boxes = create_boxes(database_url, connections, "BENCH-SCALE")
    extra = {"OTB_TELEMETRY_MAX_PENDING": "100000", "OTB_PROCESS_NAME": "bench-scaleout"}
    servers = [Server(database_url, extra_env=extra) for _ in range(2)]
    workdir = Path(tempfile.mkdtemp(prefix="otb-scaleout-"))
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (workdir / sub).mkdir()
    port = free_port()
    proxy: subprocess.Popen | None = None
    phases = {}
    acked_by_box: dict[str, list[int]] = {}
    try:
        for server in servers:
            server.start()
        pgids = {server.process.pid for server in servers if server.process is not None}
        for label, upstreams in (("one", [servers[0].port]), ("two", [server.port for server in servers])):
            conf = nginx_conf(workdir, port, upstreams)
            if proxy is not None:
                proxy.send_signal(signal.SIGQUIT)
                proxy.wait(10)
            proxy = subprocess.Popen([nginx, "-p", str(workdir), "-c", str(conf), "-g", "daemon off;"])
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                        break
                except OSError:
                    time.sleep(0.2)
            log(f"{label} process(es): {connections} agents through nginx for {duration:.0f} s")
            before = cpu_snapshot(pgids, nginx=True)
            result = run_load_attributed(
                f"ws://127.0.0.1:{port}", boxes, duration=duration, window=4, workers=2
            )
            after = cpu_snapshot(pgids, nginx=True)
            for box_id, seqs in result["acked_by_box"].items():
                acked_by_box.setdefault(box_id, []).extend(seqs)
            phases[label] = {
                "msgs_per_s": result["msgs_per_s"],
                "failed": len(result["failed"]),
                "cpu": cpu_ms_per(before, after, result["acked"], unit_s=1e-6),
            }
            log(f"{label}: {result['msgs_per_s']:.0f} msg/s, failed connections {len(result['failed'])}")
    finally:
        if proxy is not None and proxy.poll() is None:
            proxy.send_signal(signal.SIGQUIT)
            proxy.wait(10)
        for server in servers:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    check = verify_storage(database_url, boxes, acked_by_box)
    drop_database(name)
    one, two = phases["one"]["msgs_per_s"], phases["two"]["msgs_per_s"]
    report = {
        "bench": "scaleout",
        "connections": connections,
        "duration_s": duration,
        "one_process_msgs_per_s": round(one, 1),
        "two_processes_msgs_per_s": round(two, 1),
        "speedup": round(two / one, 3) if one else None,
        "cpu_us_per_msg": {"one": phases["one"]["cpu"], "two": phases["two"]["cpu"]},
        "failed_connections": phases["one"]["failed"] + phases["two"]["failed"],
        "lost": check["lost"],
        "duplicated": check["duplicated"],
    }
    print(json.dumps(report), flush=True)
    return 0 if check["lost"] == 0 and check["duplicated"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
