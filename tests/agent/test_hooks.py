"""Run agent/hooks/openwrt-apply.sh against stub jsonfilter/uci/ubus/ip binaries."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HOOK = Path(__file__).resolve().parents[2] / "agent" / "hooks" / "openwrt-apply.sh"

JSONFILTER = r"""
import json, re, sys
args = sys.argv[1:]
src = args[args.index("-i") + 1] if "-i" in args else None
expr = args[args.index("-e") + 1]
data = json.load(open(src)) if src else json.load(sys.stdin)
vals = [data]
for tok in re.findall(r'\.([A-Za-z0-9_]+)|\["([^"]+)"\]|\[(\d+|\*)\]', expr[1:]):
    name, qname, idx = tok
    nxt = []
    for v in vals:
        if name or qname:
            k = name or qname
            if isinstance(v, dict) and k in v:
                nxt.append(v[k])
        elif idx == "*":
            nxt.extend(v if isinstance(v, list) else [])
        elif isinstance(v, list) and int(idx) < len(v):
            nxt.append(v[int(idx)])
    vals = nxt
if not vals:
    sys.exit(1)
for v in vals:
    print(v if not isinstance(v, (dict, list)) else json.dumps(v))
"""

LOGGER = """#!/bin/sh
echo "$(basename "$0") $*" >> "$STUB_LOG"
"""

UCI = """#!/bin/sh
echo "uci $*" >> "$STUB_LOG"
if [ "$1" = "-q" ] && [ "$2" = "get" ]; then
  case "$3" in network.wan|network.lte|network.vdsl|mwan3.wan|mwan3.lte|mwan3.globals) exit 0 ;; esac
  exit 1
fi
exit 0
"""

UBUS = """#!/bin/sh
echo "ubus $*" >> "$STUB_LOG"
cat "$(dirname "$STUB_LOG")/ubus/$2.json" 2>/dev/null || exit 4
"""

UBUS_STATUS = {
    "network.interface.wan": {"up": True, "l3_device": "eth1", "ipv4-address": [{"address": "203.0.113.45"}]},
    "network.interface.lte": {"up": True, "l3_device": "wwan0", "ipv4-address": [{"address": "100.72.14.9"}]},
    "network.interface.vdsl": {"up": False},
}


@pytest.fixture
def stubs(tmp_path):
    if shutil.which("sh") is None:
        pytest.skip("no sh")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "jsonfilter").write_text(f"#!{sys.executable}\n{JSONFILTER}")
    (bindir / "uci").write_text(UCI)
    (bindir / "ubus").write_text(UBUS)
    (bindir / "ip").write_text(LOGGER)
    for f in bindir.iterdir():
        f.chmod(0o755)
    (tmp_path / "ubus").mkdir()
    for name, status in UBUS_STATUS.items():
        (tmp_path / "ubus" / f"{name}.json").write_text(json.dumps(status))
    log = tmp_path / "calls.log"
    log.write_text("")
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "STUB_LOG": str(log)}
    return env, log


def run_hook(env, cfg_path):
    return subprocess.run(
        ["sh", str(HOOK), str(cfg_path)], env=env, capture_output=True, text=True, timeout=60
    )


def test_hook_applies_failover_policy(stubs, tmp_path):
    env, log = stubs
    (tmp_path / "wg_private_key").write_text("cHJpdmF0ZS1rZXktMzItYnl0ZXMtbG9uZy4uLi4uLi4=\n")
    cfg = tmp_path / "config.json"
    cfg.write_text(
        json.dumps(
            {
                "config_hash": "abc123",
                "server": {
                    "host": "agg1.example.net",
                    "port": 51820,
                    "protocol": "wireguard",
                    "wg_public_key": "c2VydmVyLWtleS0zMi1ieXRlcy1sb25nLi4uLi4uLi4=",
                },
                "tunnel": {"address": "10.255.0.2/32"},
                "wan_policy": {
                    "mode": "failover",
                    "interfaces": [
                        {
                            "name": "wan",
                            "role": "primary",
                            "kind": "fiber",
                            "up_kbps": 300000,
                            "down_kbps": 900000,
                        },
                        {
                            "name": "lte",
                            "role": "backup",
                            "kind": "lte",
                            "up_kbps": 20000,
                            "down_kbps": 80000,
                        },
                        {"name": "vdsl", "role": "disabled", "kind": "vdsl", "up_kbps": 1, "down_kbps": 1},
                    ],
                },
            }
        )
    )
    env = {**env, "OTB_AGENT_STATE_DIR": str(tmp_path)}
    p = run_hook(env, cfg)
    assert p.returncode == 0, p.stderr
    calls = log.read_text().splitlines()
    assert "ip mptcp endpoint flush" in calls
    assert "ip mptcp endpoint add 203.0.113.45 dev eth1 subflow" in calls
    assert "ip mptcp endpoint add 100.72.14.9 dev wwan0 subflow backup" in calls
    assert not any("endpoint add" in c and "vdsl" in c for c in calls)
    assert "uci set network.wan.multipath=on" in calls
    assert "uci set network.lte.multipath=backup" in calls
    assert "uci set network.vdsl.multipath=off" in calls
    assert "uci set mwan3.lte.enabled=1" in calls
    assert "uci set network.otb_tun_peer.endpoint_host=agg1.example.net" in calls
    assert "uci commit network" in calls
    assert "applied abc123" in p.stdout


def test_hook_rejects_bad_config(stubs, tmp_path):
    env, _ = stubs
    cfg = tmp_path / "config.json"
    cfg.write_text(
        json.dumps({"wan_policy": {"mode": "turbo", "interfaces": [{"name": "wan", "role": "primary"}]}})
    )
    p = run_hook(env, cfg)
    assert p.returncode != 0 and "unknown wan_policy.mode 'turbo'" in p.stderr
    cfg.write_text(
        json.dumps({"wan_policy": {"mode": "aggregate", "interfaces": [{"name": "nope", "role": "primary"}]}})
    )
    p = run_hook(env, cfg)
    assert p.returncode != 0 and "nope does not exist" in p.stderr
