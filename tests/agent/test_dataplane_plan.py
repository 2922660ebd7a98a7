"""The box's data-plane plan (otb_agent.dataplane.plan): config + observed links -> plan."""

from __future__ import annotations

import json

import pytest
from fakekernel import PSK, SERVER_KEY, box_config, links
from otb_agent import cli
from otb_agent.dataplane.plan import PlanError, plan_build


def endpoints(plan):
    return {ep["wan"]: (ep["id"], ep["address"], ep["dev"], ep["flags"]) for ep in plan["mptcp"]["endpoints"]}


def hops(plan):
    route = plan["server_route"]
    return None if route is None else [(h.get("via"), h["dev"], h.get("weight")) for h in route["nexthops"]]


def test_aggregate_plan_names_every_part_as_the_contract_does():
    plan = plan_build(box_config(), links(), state_dir="/var/lib/otb-agent")
    assert plan["mode"] == "aggregate" and plan["config_hash"] == "h1"
    assert plan["sysctls"]["net/mptcp/enabled"] == "1" and plan["sysctls"]["net/ipv4/ip_forward"] == "1"
    assert plan["sysctls"]["net/ipv4/conf/all/rp_filter"] == "2"
    assert plan["sysctls"]["net/ipv4/conf/wan3/rp_filter"] == "2"
    # WAN i: table 100+i, rule 1000+i, endpoint id i+1; primaries subflow, backups subflow backup
    assert endpoints(plan) == {
        "wan1": (1, "10.0.1.2", "wan1", ["subflow"]),
        "wan2": (2, "10.0.2.2", "wan2", ["subflow"]),
        "wan3": (3, "10.0.3.2", "wan3", ["subflow", "backup"]),
    }
    assert plan["mptcp"]["limits"] == {"subflows": 3, "add_addr_accepted": 0}
    assert {"pref": 1001, "from": "10.0.2.2", "table": 101} in plan["rules"]
    assert {"table": 101, "dst": "default", "via": "10.0.2.1", "dev": "wan2"} in plan["routes"]
    # the disabled WAN has no rule, route or endpoint
    assert not [r for r in plan["rules"] if r.get("table") == 103]
    assert not [r for r in plan["routes"] if r["table"] == 103]
    # the server route leaves by the first primary
    assert plan["server_route"]["dst"] == "203.0.113.10/32" and hops(plan) == [("10.0.1.1", "wan1", None)]
    ss = plan["ss_redir"]
    assert ss["argv"] == ["ss-redir", "-c", "/var/lib/otb-agent/ss-redir.json", "--mptcp"]
    assert ss["config"] == {
        "server": "203.0.113.10",
        "server_port": 40001,
        "local_address": "0.0.0.0",
        "local_port": 11080,
        "password": "s3cret-pw",
        "method": "chacha20-ietf-poly1305",
        "mode": "tcp_only",
        "timeout": 600,
    }
    wg = plan["wireguard"]
    assert wg["interface"] == "otb0" and wg["argv"] == ["wireguard-go", "-f", "otb0"]
    assert wg["private_key_file"] == "/var/lib/otb-agent/wg_private_key"
    assert wg["addresses"] == ["100.64.0.1/31", "198.51.100.5/32"]
    assert wg["peer"] == {
        "public_key": SERVER_KEY,
        "preshared_key": PSK,
        "preshared_key_file": "/var/lib/otb-agent/wg-psk",
        "endpoint": "203.0.113.10:40001",
        "allowed_ips": ["0.0.0.0/0", "::/0"],
        "persistent_keepalive": 25,
    }
    # LAN traffic not redirected: table 200 through otb0, after the main table's specific routes
    assert {"table": 200, "dst": "default", "dev": "otb0"} in plan["routes"]
    assert {"pref": 2000, "table": 200} in plan["rules"]
    assert {"pref": 1990, "table": "main", "suppress_prefixlength": 0} in plan["rules"]
    assert {"pref": 1950, "iif": "lo", "table": "main"} in plan["rules"]
    assert {"pref": 1963, "iif": "wan4", "table": "main"} in plan["rules"]
    assert {"pref": 1900, "from": "198.51.100.5", "table": 200} in plan["rules"]
    nft = plan["nft"]["ruleset"]
    assert nft.startswith("table inet otb_box {")
    assert (
        'iifname != { "wan1", "wan2", "wan3", "wan4", "otb0", "lo" } ip daddr != { 0.0.0.0/8, 10.0.0.0/8, '
        "100.64.0.0/10, 127.0.0.0/8, 169.254.0.0/16, 172.16.0.0/12, 192.168.0.0/16, 224.0.0.0/3 } "
        "meta l4proto tcp redirect to :11080" in nft
    )
    assert 'oifname "otb0" ip saddr != 198.51.100.5 snat ip to 198.51.100.5' in nft
    assert 'iifname "otb0" ip daddr 198.51.100.5 tcp dport 8080 dnat ip to 192.168.50.10:80' in nft
    assert 'tcp dport 11080 ct status dnat counter name "redirect_up"' in nft
    assert 'tcp sport 11080 ct status dnat counter name "redirect_down"' in nft
    assert plan["port_forwards"] == [
        {"proto": "tcp", "port": 8080, "to_address": "192.168.50.10", "to_port": 80}
    ]
    json.dumps(plan)  # JSON-able


def redirect_exclusions(plan):
    line = next(x for x in plan["nft"]["ruleset"].splitlines() if "redirect to" in x)
    return line.split("ip daddr != { ", 1)[1].split(" }", 1)[0].split(", ")


def test_lan_tcp_is_redirected_unless_a_specific_route_of_the_main_table_covers_it():
    """With the main table's routes observed, a private destination with no route of its own (the
    lab's 'internet' is 10.200.200.0/24) goes to ss-redir; the LAN, the WANs' subnets and static
    routes do not, nor the tunnel's own /31."""
    direct = ["192.168.50.0/24", "10.0.1.0/24", "10.0.2.0/24", "192.168.60.0/24", "10.0.1.7"]
    plan = plan_build(box_config(), links(), direct_networks=direct)
    assert redirect_exclusions(plan) == [
        "0.0.0.0/8",
        "10.0.1.0/24",
        "10.0.2.0/24",
        "100.64.0.0/31",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "192.168.50.0/24",
        "192.168.60.0/24",
        "224.0.0.0/3",
    ]
    with pytest.raises(PlanError, match=r"^direct_networks\[1\]: "):
        plan_build(box_config(), links(), direct_networks=["10.0.0.0/8", "nope"])


def test_failover_has_the_same_endpoints_and_the_backup_takes_the_server_route_when_primaries_are_down():
    up = plan_build(box_config("failover"), links())
    assert endpoints(up) == endpoints(plan_build(box_config("aggregate"), links()))
    assert hops(up) == [("10.0.1.1", "wan1", None)]
    one_down = plan_build(box_config("failover"), links(wan1={"up": False}))
    assert "wan1" not in endpoints(one_down) and hops(one_down) == [("10.0.2.1", "wan2", None)]
    all_down = plan_build(box_config("failover"), links(wan1={"up": False}, wan2={"up": False}))
    assert set(endpoints(all_down)) == {"wan3"}
    assert hops(all_down) == [("10.0.3.1", "wan3", None)]
    # the disabled WAN never carries, even when it is the only one up
    none_up = plan_build(
        box_config("failover"), links(wan1={"up": False}, wan2={"up": False}, wan3={"up": False})
    )
    assert endpoints(none_up) == {} and none_up["server_route"] is None


def test_load_balance_spreads_connections_over_the_primaries_without_joins_between_them():
    plan = plan_build(box_config("load-balance"), links())
    assert endpoints(plan) == {"wan3": (3, "10.0.3.2", "wan3", ["subflow", "backup"])}
    assert plan["mptcp"]["limits"]["subflows"] == 1
    assert hops(plan) == [("10.0.1.1", "wan1", 1), ("10.0.2.1", "wan2", 1)]
    assert plan["sysctls"]["net/ipv4/fib_multipath_hash_policy"] == "1"
    # weighted by up_kbps when every primary gives it
    config = box_config("load-balance")
    config["wan_policy"]["interfaces"][0]["up_kbps"] = 30000
    config["wan_policy"]["interfaces"][1]["up_kbps"] = 10000
    assert hops(plan_build(config, links())) == [("10.0.1.1", "wan1", 3), ("10.0.2.1", "wan2", 1)]
    # one primary left: a plain route through it
    assert hops(plan_build(box_config("load-balance"), links(wan2={"up": False}))) == [
        ("10.0.1.1", "wan1", None)
    ]


def test_a_link_down_keeps_its_rule_and_unreachable_fallback_but_loses_its_route_and_endpoint():
    down = plan_build(box_config(), links(wan1={"up": False}))
    assert {"pref": 1000, "from": "10.0.1.2", "table": 100} in down["rules"]
    assert [r for r in down["routes"] if r["table"] == 100] == [
        {"table": 100, "dst": "default", "type": "unreachable", "metric": 4278198272}
    ]
    assert "wan1" not in endpoints(down) and hops(down) == [("10.0.2.1", "wan2", None)]
    back = plan_build(box_config(), links())
    assert {"table": 100, "dst": "default", "via": "10.0.1.1", "dev": "wan1"} in back["routes"]
    assert endpoints(back)["wan1"] == (1, "10.0.1.2", "wan1", ["subflow"])
    # limits do not move with link states (nothing to change on a flap)
    assert down["mptcp"]["limits"] == back["mptcp"]["limits"]
    # a WAN without an address (DHCP pending) or unknown to the observer is down
    assert "wan2" not in endpoints(plan_build(box_config(), links(wan2={"address": None})))
    assert "wan2" not in endpoints(plan_build(box_config(), {"wan1": links()["wan1"]}))


def test_roles_map_to_endpoint_flags_in_every_mode():
    roles = {"wan1": "backup", "wan2": "disabled", "wan3": "primary", "wan4": "primary"}
    for mode, expected in (
        ("aggregate", {"wan1": ["subflow", "backup"], "wan3": ["subflow"], "wan4": ["subflow"]}),
        ("failover", {"wan1": ["subflow", "backup"], "wan3": ["subflow"], "wan4": ["subflow"]}),
        ("load-balance", {"wan1": ["subflow", "backup"]}),
    ):
        plan = plan_build(box_config(mode, roles), links())
        assert {w: e[3] for w, e in endpoints(plan).items()} == expected, mode
        assert [w["name"] for w in plan["wans"] if w["role"] == "disabled"] == ["wan2"]


def test_an_unclaimed_box_gets_routing_only():
    plan = plan_build(box_config(server=None, tunnel=None, public_ipv4=None), links())
    assert plan["ss_redir"] is None and plan["wireguard"] is None and plan["nft"] is None
    assert plan["server_route"] is None and plan["port_forwards"] == []
    assert not [r for r in plan["rules"] if r["pref"] >= 1900]
    assert len(plan["mptcp"]["endpoints"]) == 3


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"wan_policy": {"mode": "turbo", "interfaces": [{"name": "wan1"}]}}, "wan_policy.mode"),
        ({"wan_policy": {"mode": "aggregate", "interfaces": []}}, "wan_policy.interfaces"),
        (
            {"wan_policy": {"mode": "aggregate", "interfaces": [{"name": "eth 0"}]}},
            "wan_policy.interfaces[0].name",
        ),
        (
            {"wan_policy": {"mode": "aggregate", "interfaces": [{"name": "wan1", "role": "boss"}]}},
            "wan_policy.interfaces[0].role",
        ),
        ({"public_ipv4": "not-an-ip"}, "public_ipv4"),
        (
            {"port_forwards": [{"proto": "icmp", "port": 1, "to_address": "10.0.0.1"}]},
            "port_forwards[0].proto",
        ),
        ({"port_forwards": [{"port": 0, "to_address": "10.0.0.1"}]}, "port_forwards[0].port"),
        ({"tunnel": {"box_address": "x"}}, "tunnel.box_address"),
    ],
)
def test_bad_config_is_refused_naming_the_field(change, field):
    with pytest.raises(PlanError) as e:
        plan_build(box_config(**change), links())
    assert e.value.field == field and str(e.value).startswith(f"{field}: ")


def test_bad_links_are_refused_naming_the_link():
    with pytest.raises(PlanError, match=r"^links.wan1.gateway: "):
        plan_build(box_config(), links(wan1={"gateway": "300.1.1.1"}))


def test_the_plan_command_prints_the_plan(tmp_path, capsys):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(box_config("failover")))
    rc = cli.main(["plan", str(config), "--links", json.dumps(links(wan1={"up": False}))])
    assert rc == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["mode"] == "failover" and hops(plan) == [("10.0.2.1", "wan2", None)]
    assert plan["ss_redir"]["config_file"] == str(tmp_path / "ss-redir.json")  # the config's folder
    (tmp_path / "links.json").write_text(json.dumps(links()))
    assert cli.main(["--state-dir", "/s", "plan", str(config), "--links", str(tmp_path / "links.json")]) == 0
    assert json.loads(capsys.readouterr().out)["wireguard"]["private_key_file"] == "/s/wg_private_key"
    config.write_text(json.dumps(box_config(public_ipv4="x")))
    assert cli.main(["plan", str(config), "--links", "{}"]) == 1
    assert "public_ipv4: must be an IPv4 address" in capsys.readouterr().err
