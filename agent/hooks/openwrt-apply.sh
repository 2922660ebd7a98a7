#!/bin/sh
# otb-agent apply hook for OpenWrt 23.05+ (busybox ash).
#
#   otb-agent run --apply-hook /usr/share/otb-agent/openwrt-apply.sh
#
# Called with the path of config.json (the config served by GET /api/v1/agent/config). The data
# plane is planned once, by `otb-agent plan` (the same plan the Linux applier uses, see
# docs/data-plane.md): this hook feeds it the WANs as netifd sees them and applies the plan:
#   * uci network.<wan>.multipath = on | backup | off, network.<wan>.metric, mwan3.<wan>.enabled
#   * MPTCP limits and endpoints (replaced only when they differ from the plan's)
#   * the plan's routing rules and routes (per-WAN tables, the route to the aggregation server,
#     LAN traffic to the tunnel), added when missing
#   * WireGuard to the aggregation server (netifd interface otb0), nftables table inet otb_box,
#     the ss-redir config (restarted through /etc/init.d/otb-ss-redir when it changed)
# Exit 0 = applied. Any failure: message on stderr + non-zero exit; the agent reports the last
# stderr lines to the server as the apply error.
#
# Environment: OTB_AGENT_STATE_DIR (for wg_private_key), OTB_HOOK_DRY_RUN=1 (print, do not apply),
# OTB_AGENT (the agent command, default otb-agent).

set -eu

CFG="${1:?usage: $0 /path/to/config.json}"
STATE_DIR="${OTB_AGENT_STATE_DIR:-$(dirname "$CFG")}"
DRY="${OTB_HOOK_DRY_RUN:-0}"
AGENT="${OTB_AGENT:-otb-agent}"
PLAN="$STATE_DIR/plan.json"

die() { echo "openwrt-apply: $*" >&2; exit 1; }
run() {
	if [ "$DRY" = "1" ]; then echo "+ $*"; else "$@"; fi
}
jf() { jsonfilter -i "$CFG" -e "$1" 2>/dev/null || true; }
pf() { jsonfilter -i "$PLAN" -e "$1" 2>/dev/null || true; }
count() { pf "$1" | wc -l; }

command -v jsonfilter >/dev/null 2>&1 || die "jsonfilter not found"
[ -r "$CFG" ] || die "cannot read $CFG"

# ---- the WANs as netifd has them -> the plan ------------------------------------------------
COUNT="$(jf '@.wan_policy.interfaces[*].name' | wc -l)"
LINKS="{"
i=0
while [ "$i" -lt "$COUNT" ]; do
	NAME="$(jf "@.wan_policy.interfaces[$i].name")"
	i=$((i + 1))
	case "$NAME" in "" | *[!A-Za-z0-9_.-]*) die "invalid interface name '$NAME'" ;; esac
	uci -q get "network.$NAME" >/dev/null || die "interface $NAME does not exist in /etc/config/network"
	STATUS="$(ubus call "network.interface.$NAME" status 2>/dev/null || true)"
	UP=false DEV="$NAME" ADDR="" GW=""
	if [ -n "$STATUS" ]; then
		[ "$(echo "$STATUS" | jsonfilter -e '@.up' 2>/dev/null || true)" = "true" ] && UP=true
		DEV="$(echo "$STATUS" | jsonfilter -e '@.l3_device' 2>/dev/null || echo "$NAME")"
		ADDR="$(echo "$STATUS" | jsonfilter -e '@["ipv4-address"][0].address' 2>/dev/null || true)"
		GW="$(echo "$STATUS" | jsonfilter -e '@.route[@.target="0.0.0.0"].nexthop' 2>/dev/null | head -n 1 || true)"
	fi
	[ "$LINKS" = "{" ] || LINKS="$LINKS,"
	LINKS="$LINKS\"$NAME\":{\"up\":$UP,\"device\":\"${DEV:-$NAME}\",\"address\":\"$ADDR\",\"gateway\":\"$GW\"}"
done
LINKS="$LINKS}"

"$AGENT" plan "$CFG" --links "$LINKS" --state-dir "$STATE_DIR" >"$PLAN.tmp" || die "no plan (see above)"
mv "$PLAN.tmp" "$PLAN"
MODE="$(pf '@.mode')"

# ---- uci: multipath role and metric per WAN ------------------------------------------------
n="$(count '@.wans[*].name')"
i=0
metric=10
while [ "$i" -lt "$n" ]; do
	NAME="$(pf "@.wans[$i].name")"
	ROLE="$(pf "@.wans[$i].role")"
	FLAGS="$(pf "@.wans[$i].endpoint_flags[*]" | tr '\n' ' ')"
	i=$((i + 1))
	case "$ROLE:$FLAGS" in
		disabled:*) MP=off ;;
		*backup*) MP=backup ;;
		*) MP=on ;;
	esac
	run uci set "network.$NAME.multipath=$MP"
	run uci set "network.$NAME.metric=$metric"
	metric=$((metric + 10))
	if uci -q get "mwan3.$NAME" >/dev/null; then
		if [ "$MP" = "off" ]; then run uci set "mwan3.$NAME.enabled=0"; else run uci set "mwan3.$NAME.enabled=1"; fi
	fi
done

# ---- MPTCP limits and endpoints ------------------------------------------------------------
if command -v ip >/dev/null 2>&1 && ip mptcp limits show >/dev/null 2>&1; then
	SUBFLOWS="$(pf '@.mptcp.limits.subflows')"
	LIMITS="add_addr_accepted 0 subflows $SUBFLOWS"
	[ "$(ip mptcp limits show | tr -s ' \n' '  ' | sed 's/ $//')" = "$LIMITS" ] ||
		run ip mptcp limits set subflows "$SUBFLOWS" add_addr_accepted 0
	WANT=""
	n="$(count '@.mptcp.endpoints[*].id')"
	i=0
	while [ "$i" -lt "$n" ]; do
		WANT="$WANT$(pf "@.mptcp.endpoints[$i].address") id $(pf "@.mptcp.endpoints[$i].id") $(pf "@.mptcp.endpoints[$i].flags[*]" | tr '\n' ' ')dev $(pf "@.mptcp.endpoints[$i].dev")
"
		i=$((i + 1))
	done
	HAVE="$(ip mptcp endpoint show | sed 's/ *$//')"
	if [ "$HAVE" != "$(printf '%s' "$WANT" | sed 's/ *$//')" ]; then
		run ip mptcp endpoint flush
		i=0
		while [ "$i" -lt "$n" ]; do
			# shellcheck disable=SC2046 # the flags are words
			run ip mptcp endpoint add "$(pf "@.mptcp.endpoints[$i].address")" dev "$(pf "@.mptcp.endpoints[$i].dev")" \
				id "$(pf "@.mptcp.endpoints[$i].id")" $(pf "@.mptcp.endpoints[$i].flags[*]")
			i=$((i + 1))
		done
	fi
else
	echo "openwrt-apply: ip mptcp not available, skipping endpoints" >&2
fi

# ---- WireGuard to the aggregation server (netifd) -------------------------------------------
if [ -n "$(pf '@.wireguard.interface')" ]; then
	KEYFILE="$(pf '@.wireguard.private_key_file')"
	[ -r "$KEYFILE" ] || die "no WireGuard private key in $KEYFILE (enroll the box first)"
	ENDPOINT="$(pf '@.wireguard.peer.endpoint')"
	run uci set network.otb0=interface
	run uci set network.otb0.proto=wireguard
	run uci set "network.otb0.private_key=$(cat "$KEYFILE")"
	run uci -q delete network.otb0.addresses || true
	for A in $(pf '@.wireguard.addresses[*]'); do run uci add_list "network.otb0.addresses=$A"; done
	run uci set network.otb0_server=wireguard_otb0
	run uci set "network.otb0_server.public_key=$(pf '@.wireguard.peer.public_key')"
	PSK="$(pf '@.wireguard.peer.preshared_key')"
	[ -n "$PSK" ] && [ "$PSK" != null ] && run uci set "network.otb0_server.preshared_key=$PSK"
	run uci set "network.otb0_server.endpoint_host=${ENDPOINT%:*}"
	run uci set "network.otb0_server.endpoint_port=${ENDPOINT##*:}"
	run uci set "network.otb0_server.persistent_keepalive=$(pf '@.wireguard.peer.persistent_keepalive')"
	run uci set network.otb0_server.route_allowed_ips=0
	run uci -q delete network.otb0_server.allowed_ips || true
	for A in $(pf '@.wireguard.peer.allowed_ips[*]'); do run uci add_list "network.otb0_server.allowed_ips=$A"; done
fi

run uci commit network
if uci -q get mwan3.globals >/dev/null; then
	run uci commit mwan3
	if [ -x /etc/init.d/mwan3 ]; then run /etc/init.d/mwan3 reload; fi
fi
if [ -x /etc/init.d/network ]; then run /etc/init.d/network reload; fi

# ---- routing: rules (added when their preference is free) and routes (replace) --------------
n="$(count '@.routes[*].table')"
i=0
while [ "$i" -lt "$n" ]; do
	TYPE="$(pf "@.routes[$i].type")"
	VIA="$(pf "@.routes[$i].via")"
	DEV="$(pf "@.routes[$i].dev")"
	METRIC="$(pf "@.routes[$i].metric")"
	# shellcheck disable=SC2046
	run ip -4 route replace $TYPE "$(pf "@.routes[$i].dst")" ${VIA:+via "$VIA"} ${DEV:+dev "$DEV"} \
		${METRIC:+metric "$METRIC"} table "$(pf "@.routes[$i].table")"
	i=$((i + 1))
done
if [ -n "$(pf '@.server_route.dst')" ]; then
	HOPS=""
	n="$(count '@.server_route.nexthops[*].dev')"
	i=0
	while [ "$i" -lt "$n" ]; do
		VIA="$(pf "@.server_route.nexthops[$i].via")"
		HOP="${VIA:+via $VIA }dev $(pf "@.server_route.nexthops[$i].dev")"
		if [ "$n" -gt 1 ]; then HOP="nexthop $HOP weight $(pf "@.server_route.nexthops[$i].weight")"; fi
		HOPS="$HOPS $HOP"
		i=$((i + 1))
	done
	# shellcheck disable=SC2086 # the hops are words
	run ip -4 route replace "$(pf '@.server_route.dst')" proto 111 $HOPS
fi
n="$(count '@.rules[*].pref')"
i=0
while [ "$i" -lt "$n" ]; do
	PREF="$(pf "@.rules[$i].pref")"
	if [ -z "$(ip -4 rule show pref "$PREF" 2>/dev/null || true)" ]; then
		FROM="$(pf "@.rules[$i].from")"
		IIF="$(pf "@.rules[$i].iif")"
		SUPPRESS="$(pf "@.rules[$i].suppress_prefixlength")"
		run ip -4 rule add pref "$PREF" ${FROM:+from "$FROM"} ${IIF:+iif "$IIF"} table "$(pf "@.rules[$i].table")" \
			${SUPPRESS:+suppress_prefixlength "$SUPPRESS"}
	fi
	i=$((i + 1))
done

# ---- nftables table inet otb_box -------------------------------------------------------------
if [ -n "$(pf '@.nft.table')" ]; then
	{
		echo "table inet otb_box {}"
		echo "delete table inet otb_box"
		pf '@.nft.ruleset'
	} >"$STATE_DIR/otb_box.nft"
	run nft -f "$STATE_DIR/otb_box.nft"
elif command -v nft >/dev/null 2>&1 && nft list table inet otb_box >/dev/null 2>&1; then
	run nft delete table inet otb_box
fi

# ---- ss-redir ----------------------------------------------------------------------------------
SS_FILE="$(pf '@.ss_redir.config_file')"
if [ -n "$SS_FILE" ]; then
	NEW="$(pf '@.ss_redir.config')"
	if [ "$NEW" != "$(cat "$SS_FILE" 2>/dev/null || true)" ]; then
		(umask 077 && printf '%s' "$NEW" >"$SS_FILE")
		if [ -x /etc/init.d/otb-ss-redir ]; then run /etc/init.d/otb-ss-redir restart; fi
	fi
fi

echo "openwrt-apply: applied $(jf '@.config_hash') (mode $MODE, $COUNT interfaces)"
