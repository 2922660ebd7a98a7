#!/bin/sh
# otb-agent apply hook for OpenWrt 23.05+ (busybox ash).
#
#   otb-agent run --apply-hook /usr/share/otb-agent/openwrt-apply.sh
#
# Called with the path of config.json (the config served by GET /api/v1/agent/config).
# Applies the WAN policy:
#   * uci network.<wan>.multipath = on | backup | off (per role; failover -> backups are "backup"),
#     network.<wan>.metric, mwan3.<wan>.enabled
#   * MPTCP endpoints: one "subflow" endpoint per usable WAN address ("backup" flag for backups)
#   * WireGuard peer of the aggregation server (network.otb_tun), if the config has one
# Exit 0 = applied. Any failure: message on stderr + non-zero exit; the agent reports the last
# stderr lines to the server as the apply error.
#
# Environment: OTB_AGENT_STATE_DIR (for wg_private_key), OTB_HOOK_DRY_RUN=1 (print, do not apply).

set -eu

CFG="${1:?usage: $0 /path/to/config.json}"
STATE_DIR="${OTB_AGENT_STATE_DIR:-$(dirname "$CFG")}"
DRY="${OTB_HOOK_DRY_RUN:-0}"

die() { echo "openwrt-apply: $*" >&2; exit 1; }
run() {
	if [ "$DRY" = "1" ]; then echo "+ $*"; else "$@"; fi
}
jf() { jsonfilter -i "$CFG" -e "$1" 2>/dev/null || true; }

command -v jsonfilter >/dev/null 2>&1 || die "jsonfilter not found"
[ -r "$CFG" ] || die "cannot read $CFG"

MODE="$(jf '@.wan_policy.mode')"
case "$MODE" in
	aggregate|load-balance|failover) ;;
	"") die "config has no wan_policy.mode" ;;
	*) die "unknown wan_policy.mode '$MODE'" ;;
esac

COUNT="$(jf '@.wan_policy.interfaces[*].name' | wc -l)"
[ "$COUNT" -gt 0 ] || die "wan_policy.interfaces is empty"

# ---- MPTCP endpoints ---------------------------------------------------------------------
if command -v ip >/dev/null 2>&1 && ip mptcp endpoint show >/dev/null 2>&1; then
	HAVE_MPTCP=1
	run ip mptcp endpoint flush
	run ip mptcp limits set subflows 8 add_addr_accepted 8
else
	HAVE_MPTCP=0
	echo "openwrt-apply: ip mptcp not available, skipping endpoints" >&2
fi

i=0
metric=10
while [ "$i" -lt "$COUNT" ]; do
	NAME="$(jf "@.wan_policy.interfaces[$i].name")"
	ROLE="$(jf "@.wan_policy.interfaces[$i].role")"
	i=$((i + 1))
	[ -n "$NAME" ] || continue
	case "$NAME" in *[!A-Za-z0-9_]*) die "invalid interface name '$NAME'" ;; esac

	case "$ROLE" in
		primary) MP=on ;;
		backup) if [ "$MODE" = "failover" ]; then MP=backup; else MP=on; fi ;;
		disabled) MP=off ;;
		*) die "interface $NAME: unknown role '$ROLE'" ;;
	esac

	uci -q get "network.$NAME" >/dev/null || die "interface $NAME does not exist in /etc/config/network"
	run uci set "network.$NAME.multipath=$MP"
	run uci set "network.$NAME.metric=$metric"
	metric=$((metric + 10))
	if uci -q get "mwan3.$NAME" >/dev/null; then
		if [ "$MP" = "off" ]; then run uci set "mwan3.$NAME.enabled=0"; else run uci set "mwan3.$NAME.enabled=1"; fi
	fi

	[ "$HAVE_MPTCP" = "1" ] && [ "$MP" != "off" ] || continue
	STATUS="$(ubus call "network.interface.$NAME" status 2>/dev/null || true)"
	[ -n "$STATUS" ] || { echo "openwrt-apply: $NAME is not known to netifd yet" >&2; continue; }
	DEV="$(echo "$STATUS" | jsonfilter -e '@.l3_device' 2>/dev/null || true)"
	ADDR="$(echo "$STATUS" | jsonfilter -e '@["ipv4-address"][0].address' 2>/dev/null || true)"
	if [ -z "$DEV" ] || [ -z "$ADDR" ]; then
		echo "openwrt-apply: $NAME has no address yet, its endpoint will be added when it comes up" >&2
		continue
	fi
	if [ "$MP" = "backup" ]; then
		run ip mptcp endpoint add "$ADDR" dev "$DEV" subflow backup
	else
		run ip mptcp endpoint add "$ADDR" dev "$DEV" subflow
	fi
done

# ---- WireGuard peer of the aggregation server (optional) ------------------------------------
SRV_HOST="$(jf '@.server.host')"
SRV_PORT="$(jf '@.server.port')"
SRV_KEY="$(jf '@.server.wg_public_key')"
TUN_ADDR="$(jf '@.tunnel.address')"
if [ -n "$SRV_HOST" ] && [ -n "$SRV_KEY" ] && [ -r "$STATE_DIR/wg_private_key" ]; then
	run uci set network.otb_tun=interface
	run uci set network.otb_tun.proto=wireguard
	run uci set "network.otb_tun.private_key=$(cat "$STATE_DIR/wg_private_key")"
	[ -n "$TUN_ADDR" ] && run uci set "network.otb_tun.addresses=$TUN_ADDR"
	run uci set network.otb_tun_peer=wireguard_otb_tun
	run uci set "network.otb_tun_peer.public_key=$SRV_KEY"
	run uci set "network.otb_tun_peer.endpoint_host=$SRV_HOST"
	run uci set "network.otb_tun_peer.endpoint_port=${SRV_PORT:-51820}"
	run uci set network.otb_tun_peer.persistent_keepalive=25
	run uci set network.otb_tun_peer.route_allowed_ips=0
	run uci set "network.otb_tun_peer.allowed_ips=0.0.0.0/0"
fi

run uci commit network
if uci -q get mwan3.globals >/dev/null; then
	run uci commit mwan3
	if [ -x /etc/init.d/mwan3 ]; then run /etc/init.d/mwan3 reload; fi
fi
if [ -x /etc/init.d/network ]; then run /etc/init.d/network reload; fi
echo "openwrt-apply: applied $(jf '@.config_hash') (mode $MODE, $COUNT interfaces)"
