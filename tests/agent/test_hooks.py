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
TOKEN = r'\.([A-Za-z0-9_]+)|\["([^"]+)"\]|\[(\d+|\*)\]|\[@\.(\w+)="([^"]*)"\]'
for tok in re.findall(TOKEN, expr[1:]):
    name, qname, idx, fkey, fval = tok
    nxt = []
    for v in vals:
        if fkey:
            items = v if isinstance(v, list) else []
            nxt.extend(x for x in items if isinstance(x, dict) and x.get(fkey) == fval)
        elif name or qname:
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
    if v is None:
        continue
    print(str(v).lower() if isinstance(v, bool) else v if not isinstance(v, (dict, list)) else json.dumps(v))
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
    "network.interface.wan": {
        "up": True,
        "l3_device": "eth1",
        "ipv4-address": [{"address": "203.0.113.45"}],
        "route": [
            {"target": "203.0.113.0", "mask": 24},
            {"target": "0.0.0.0", "mask": 0, "nexthop": "203.0.113.1"},
        ],
    },
    "network.interface.lte": {
        "up": True,
        "l3_device": "wwan0",
        "ipv4-address": [{"address": "100.72.14.9"}],
        "route": [{"target": "0.0.0.0", "mask": 0, "nexthop": "100.72.14.1"}],
    },
    "network.interface.vdsl": {"up": False},
}
AGENT = f"""#!/bin/sh
exec {sys.executable} -m otb_agent.cli "$@"
"""


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
    (bindir / "nft").write_text(LOGGER)  # never the host's own nftables
    (bindir / "otb-agent").write_text(AGENT)
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


def hook_config(mode="failover"):
    return {
        "config_hash": "abc123",
        "server": {
            "host": "agg1.example.net",
            "public_ipv4": "192.0.2.10",
            "port": 40001,
            "protocol": "wireguard",
            "wg_public_key": "c2VydmVyLWtleS0zMi1ieXRlcy1sb25nLi4uLi4uLi4=",
        },
        "credentials": {
            "wireguard": {"preshared_key": "cHNrLWtleS0zMi1ieXRlcy1sb25nLi4uLi4uLi4uLi4="},
            "shadowsocks": {"password": "pw", "method": "chacha20-ietf-poly1305"},
        },
        "tunnel": {"box_address": "100.64.0.1", "server_address": "100.64.0.0", "prefix": "100.64.0.0/31"},
        "public_ipv4": "198.51.100.5",
        "wan_policy": {
            "mode": mode,
            "interfaces": [
                {"name": "wan", "role": "primary", "kind": "fiber", "up_kbps": 300000, "down_kbps": 900000},
                {"name": "lte", "role": "backup", "kind": "lte", "up_kbps": 20000, "down_kbps": 80000},
                {"name": "vdsl", "role": "disabled", "kind": "vdsl", "up_kbps": 1, "down_kbps": 1},
            ],
        },
    }


def test_hook_applies_the_plan_of_a_failover_policy(stubs, tmp_path):
    env, log = stubs
    (tmp_path / "wg_private_key").write_text("cHJpdmF0ZS1rZXktMzItYnl0ZXMtbG9uZy4uLi4uLi4=\n")
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(hook_config()))
    env = {**env, "OTB_AGENT_STATE_DIR": str(tmp_path)}
    p = run_hook(env, cfg)
    assert p.returncode == 0, p.stderr
    calls = log.read_text().splitlines()
    # the plan otb-agent printed, from the links as netifd reported them
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["mode"] == "failover"
    assert [(w["name"], w["device"], w["up"], w["gateway"]) for w in plan["wans"]] == [
        ("wan", "eth1", True, "203.0.113.1"),
        ("lte", "wwan0", True, "100.72.14.1"),
        ("vdsl", "vdsl", False, None),
    ]
    assert "ip mptcp limits set subflows 2 add_addr_accepted 0" in calls
    assert "ip mptcp endpoint flush" in calls
    assert "ip mptcp endpoint add 203.0.113.45 dev eth1 id 1 subflow" in calls
    assert "ip mptcp endpoint add 100.72.14.9 dev wwan0 id 2 subflow backup" in calls
    assert not any("endpoint add" in c and "vdsl" in c for c in calls)
    assert "uci set network.wan.multipath=on" in calls
    assert "uci set network.lte.multipath=backup" in calls
    assert "uci set network.vdsl.multipath=off" in calls
    assert "uci set mwan3.lte.enabled=1" in calls
    assert "uci set network.otb0.proto=wireguard" in calls
    assert "uci add_list network.otb0.addresses=100.64.0.1/31" in calls
    assert "uci add_list network.otb0.addresses=198.51.100.5/32" in calls
    assert "uci set network.otb0_server.endpoint_host=192.0.2.10" in calls
    assert "uci set network.otb0_server.endpoint_port=40001" in calls
    assert "uci set network.otb0_server.preshared_key=cHNrLWtleS0zMi1ieXRlcy1sb25nLi4uLi4uLi4uLi4=" in calls
    assert "uci commit network" in calls
    # the plan's routing: per-WAN table and rule, the server route through the primary, LAN -> otb0
    assert "ip -4 route replace default via 203.0.113.1 dev eth1 table 100" in calls
    assert "ip -4 route replace 192.0.2.10/32 proto 111 via 203.0.113.1 dev eth1" in calls
    assert "ip -4 rule add pref 1000 from 203.0.113.45 table 100" in calls
    assert "ip -4 rule add pref 1990 table main suppress_prefixlength 0" in calls
    assert "ip -4 route replace default dev otb0 table 200" in calls
    assert f"nft -f {tmp_path / 'otb_box.nft'}" in calls
    nft = (tmp_path / "otb_box.nft").read_text()
    assert nft.startswith("table inet otb_box {}\ndelete table inet otb_box\ntable inet otb_box {")
    assert "redirect to :11080" in nft
    assert json.loads((tmp_path / "ss-redir.json").read_text())["server_port"] == 40001
    assert "applied abc123 (mode failover, 3 interfaces)" in p.stdout


def test_hook_rejects_bad_config(stubs, tmp_path):
    env, _ = stubs
    cfg = tmp_path / "config.json"
    cfg.write_text(
        json.dumps({"wan_policy": {"mode": "turbo", "interfaces": [{"name": "wan", "role": "primary"}]}})
    )
    p = run_hook(env, cfg)
    assert p.returncode != 0 and "wan_policy.mode: must be one of" in p.stderr and "'turbo'" in p.stderr
    cfg.write_text(
        json.dumps({"wan_policy": {"mode": "aggregate", "interfaces": [{"name": "nope", "role": "primary"}]}})
    )
    p = run_hook(env, cfg)
    assert p.returncode != 0 and "nope does not exist" in p.stderr
