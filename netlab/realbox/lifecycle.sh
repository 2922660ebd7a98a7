#!/bin/bash
# The lifecycle of one stock box, driven end to end: the box side by the unchanged feeds scripts in a
# box built by `realbox.sh up`, the owner's side through otb-fleet's REST API. Each step is checked
# on both sides; the first failure stops the run (exit 1).
#
#   lifecycle.sh <base URL, e.g. https://10.213.0.1:18443> <owner API token> <CA file> [release id]
#
# With a release id (published, with an image fitting the box's model, signed), the run ends with an
# "upgrade now": the box downloads <url>.sig and <url>, checks them with usign, "flashes" and reboots.
set -euo pipefail

BASE=$1 TOKEN=$2 CA=$3 RELEASE=${4:-}
HERE="$(cd "$(dirname "$0")" && pwd)"
BOX="$HERE/realbox.sh"

api() {  # api METHOD PATH [JSON]
	curl -sS --fail-with-body --cacert "$CA" -X "$1" -H "Authorization: Bearer $TOKEN" \
		-H 'Content-Type: application/json' "$BASE/api/v1/$2" ${3:+-d "$3"}
}
box_uci() { "$BOX" exec uci -q get "$1" 2>/dev/null || true; }
step() { printf '\n== %s\n' "$*"; }
fail() { echo "FAILED: $*" >&2; exit 1; }
wait_for() {  # wait_for <seconds> <description> <command...>
	local limit=$1 what=$2 i
	shift 2
	for i in $(seq 1 "$limit"); do
		"$@" >/dev/null 2>&1 && return 0
		sleep 1
	done
	fail "$what (after ${limit}s)"
}

command_run() {  # command_run <kind> [params JSON] -> prints the command's final JSON
	local id state i
	id=$(api POST "boxes/$BOX_ID/commands/" "{\"kind\":\"$1\",\"params\":${2:-{\}}}" | jq -r .id)
	for i in $(seq 1 90); do
		state=$(api GET "commands/$id/" | jq -r .state)
		case "$state" in succeeded|failed|expired|cancelled) break ;; esac
		sleep 1
	done
	api GET "commands/$id/"
}

expect_succeeded() {  # expect_succeeded <kind> [params]
	local answer
	answer=$(command_run "$@")
	echo "$answer" | jq -c '{kind, state, error, details: ((.result.details // "") | tostring | .[0:120])}'
	[ "$(echo "$answer" | jq -r .state)" = succeeded ] || fail "$1 did not succeed"
}

step "subscribe: otb-daemon starts and subscribes"
"$BOX" daemon-start >/dev/null
wait_for 30 "the box has a device id" sh -c "[ -n \"\$('$BOX' exec uci -q get overthebox.me.device_id)\" ]"
DEVICE=$(box_uci overthebox.me.device_id)
echo "device $DEVICE"

step "claim by the owner"
BOX_ID=$(api POST boxes/claim "{\"device_id\":\"$DEVICE\"}" | jq -r .id)
echo "box $BOX_ID"

step "askServiceConfirmation: the box stores its service"
wait_for 60 "service stored on the box" sh -c "[ \"\$('$BOX' exec uci -q get overthebox.me.needs_activation)\" = true ]"
[ "$(box_uci overthebox.me.service)" = "overthebox.$BOX_ID" ] || fail "service is $(box_uci overthebox.me.service)"

step "confirm (the LuCI Activate button), then configure"
"$BOX" exec otb-confirm-service >/dev/null
wait_for 30 "shadowsocks configured" sh -c "[ -n \"\$('$BOX' exec uci -q get shadowsocks.proxy.password)\" ]"
[ "$(box_uci network.tun0)" = interface ] || fail "network.tun0 is not an interface"
"$BOX" exec uci show glorytun.tun0 | grep -v '\.key=' || true
"$BOX" exec uci show shadowsocks.proxy | grep -v '\.password=' || true
api GET "boxes/$BOX_ID/" | jq -e '.applied_at != null and .applied_config_hash == .config_hash' >/dev/null \
	|| fail "the server does not record the configuration as applied"

step "properties and events (sent by otb-daemon), metrics (otb-graph)"
"$BOX" exec sh -c 'timeout 7 otb-graph "$(uci -q get system.@system[0].hostname)" 5' >/dev/null 2>&1 || true
api GET "boxes/$BOX_ID/status" | jq -c '{online, firmware_version, load1, wans: [.wans[] | {iface, up, rx_bps}]}'
api GET "boxes/$BOX_ID/" | jq -e '.firmware_version != ""' >/dev/null || fail "no firmware version from the properties"

step "commands as actions, with their results"
expect_succeeded refresh_properties
expect_succeeded restart_services '{"services":["glorytun"]}'
expect_succeeded diagnostics
expect_succeeded backup
BACKUP=$(api GET "boxes/$BOX_ID/backups/" | jq -r '.results[0].id')
"$BOX" exec uci set system.@system[0].hostname=changed-after-backup
expect_succeeded restore "{\"backup_id\":\"$BACKUP\"}"
[ "$(box_uci system.@system[0].hostname)" != changed-after-backup ] || fail "restore did not restore /etc/config/system"
answer=$(command_run update_release_channel)
if [ "$(echo "$answer" | jq -r .state)" = succeeded ]; then
	"$BOX" exec cat /etc/opkg/distfeeds.conf
else
	echo "update_release_channel: $(echo "$answer" | jq -r .error)"
fi
command_run speed_test | jq -c '{kind, state, error: (.error | .[0:100])}'

if [ -n "$RELEASE" ]; then
	step "sysupgrade: download, usign, flash, reboot, back on the new version"
	api POST "boxes/$BOX_ID/upgrade-now" "{\"release\":\"$RELEASE\"}" | jq -c '{state}'
	wait_for 90 "the box saved the action id (sysupgrade started)" sh -c "[ -n \"\$('$BOX' exec uci -q get overthebox.me.action_id)\" ]"
	wait_for 60 "the box flashed" sh -c "! kill -0 \$(cat '${REALBOX_DIR:-/tmp/realbox-box}/usr/upper/local/realbox/log/daemon.pid') 2>/dev/null"
	"$BOX" reboot
	wait_for 120 "the upgrade succeeded" sh -c "curl -sS --cacert '$CA' -H 'Authorization: Bearer $TOKEN' '$BASE/api/v1/boxes/$BOX_ID/upgrades/' | jq -e '.results[0].state == \"succeeded\"'"
	api GET "boxes/$BOX_ID/" | jq -c '{firmware_version}'
fi

step "all steps passed"
