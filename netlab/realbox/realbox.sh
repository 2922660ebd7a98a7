#!/bin/bash
# Run the stock OverTheBox box scripts (a checkout of ovh/overthebox-feeds) against an otb-fleet
# server, on Debian, as root: a network namespace (eth0 on a veth to the host, br-lan for the LAN)
# and a private mount namespace where /etc and /usr are overlays (the scripts' hard-coded paths:
# /etc/config, /lib/overthebox, /bin/otb-*, /usr/share/otb) and /tmp is a tmpfs. Nothing of the
# host is changed. The only edit to the scripts is their base URL (OTB_PROVISIONING in
# /lib/overthebox); OpenWrt's own tools are replaced by the small shims beside this file.
#
#   realbox.sh up <feeds checkout> <server host:port> <CA file>   build the box, start nothing
#   realbox.sh exec <command...>                                   run a command inside the box
#   realbox.sh daemon-start | daemon-stop                          /bin/otb-daemon, in the background
#   realbox.sh reboot                                              what a reboot does: the daemon killed,
#                                                                  /tmp emptied, the flashed version (if
#                                                                  sysupgrade ran) installed, daemon started
#   realbox.sh down                                                stop everything, remove the box
#
# State lives in $REALBOX_DIR (default /tmp/realbox-box). The server must listen on the host side of
# the veth (10.213.0.1) with TLS: the box calls https://<host:port>/1.0/... and trusts the system CA
# bundle, which inside the box is the host's plus <CA file>.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
DIR="${REALBOX_DIR:-/tmp/realbox-box}"
NS=realbox
HOST_IP=10.213.0.1
BOX_IP=10.213.0.2
BOX_MAC=00:0d:b9:52:aa:01
PYTHON="${REALBOX_PYTHON:-$(command -v python3)}"

holder_pid() { cat "$DIR/holder.pid"; }
inbox() { nsenter -t "$(holder_pid)" -m -n -- env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
	REALBOX_LOG=/usr/local/realbox/log "$@"; }

install_tree() {  # install_tree <source dir> : files/{bin,lib,usr,etc} of one feeds package
	local src=$1 rel dest
	[ -d "$src" ] || return 0
	(cd "$src" && find . -type f) | while read -r rel; do
		rel=${rel#./}
		case "$rel" in
			bin/*|sbin/*|lib/*) dest="$DIR/usr/upper/$rel" ;;
			usr/*) dest="$DIR/usr/upper/${rel#usr/}" ;;
			etc/*) dest="$DIR/etc/upper/${rel#etc/}" ;;
			*) continue ;;
		esac
		mkdir -p "$(dirname "$dest")"
		cp -p "$src/$rel" "$dest"
	done
}

up() {
	local feeds=$1 server=$2 ca=$3
	mkdir -p "$DIR"/{usr,etc}/{upper,work} "$DIR/usr/upper/local/realbox/log" "$DIR/usr/upper/bin" \
		"$DIR/usr/upper/sbin" "$DIR/etc/upper/config" "$DIR/etc/upper/opkg/keys" \
		"$DIR/etc/upper/init.d" "$DIR/etc/upper/ssl/certs"

	# the box scripts, as the packages install them
	install_tree "$feeds/overthebox/files"
	install_tree "$feeds/otb-diagnostics/files"
	install_tree "$feeds/otb-backup/files"
	[ -f "$feeds/otb-backup/otb-action-backup" ] && install -m 755 "$feeds/otb-backup/otb-action-backup" "$DIR/usr/upper/bin/"
	[ -f "$feeds/otb-backup/otb-action-restore" ] && [ ! -f "$DIR/usr/upper/bin/otb-action-restore" ] &&
		install -m 755 "$feeds/otb-backup/otb-action-restore" "$DIR/usr/upper/bin/"
	[ -f "$feeds/otb-graph/bin" ] && install -m 755 "$feeds/otb-graph/bin" "$DIR/usr/upper/bin/otb-graph"
	# the one change: the base URL
	sed -i "s|^OTB_PROVISIONING=.*|OTB_PROVISIONING=\"$server\"|" "$DIR/usr/upper/lib/overthebox"
	grep -n '^OTB_PROVISIONING=' "$DIR/usr/upper/lib/overthebox"

	# OpenWrt's tools: shims (Python ones run with $PYTHON, which needs the cryptography package)
	local shim
	for shim in uci ubus ipcalc.sh logger reload_config sysupgrade usign; do
		sed "1s|^#!/usr/bin/env python3|#!$PYTHON|" "$HERE/shims/$shim" > "$DIR/usr/upper/bin/$shim"
		chmod 755 "$DIR/usr/upper/bin/$shim"
	done
	cp -r "$HERE/shims/lib/." "$DIR/usr/upper/lib/"
	ln -sf /usr/bin/busybox "$DIR/usr/upper/bin/sh"  # OpenWrt's /bin/sh is busybox ash

	# /etc: the box's identity and base config
	echo "${REALBOX_VERSION:-1.1.3}" > "$DIR/etc/upper/otb-version"
	cat > "$DIR/etc/upper/os-release" <<-OSR
	NAME="OpenWrt"
	VERSION="${REALBOX_VERSION:-1.1.3}"
	ID="openwrt"
	OPENWRT_BOARD="x86/64"
	OPENWRT_ARCH="x86_64"
	OSR
	cat /etc/ssl/certs/ca-certificates.crt "$ca" > "$DIR/etc/upper/ssl/certs/ca-certificates.crt"
	cat > "$DIR/etc/upper/config/network" <<-NET
	config interface 'loopback'
		option device 'lo'
		option proto 'static'
		option ipaddr '127.0.0.1'
		option netmask '255.0.0.0'

	config interface 'lan'
		option device 'br-lan'
		option proto 'static'
		option ipaddr '192.168.100.1'
		option netmask '255.255.255.0'

	config interface 'wan'
		option device 'eth0'
		option proto 'static'
		option label 'Fibre'
		option multipath 'on'
		option dns '10.213.0.1'
	NET
	cat > "$DIR/etc/upper/config/firewall" <<-FW
	config zone 'wan'
		option name 'wan'
		list network 'wan'

	config zone 'lan'
		option name 'lan'
		list network 'lan'

	config zone 'tun'
		option name 'tun'
	FW
	printf "config system\n\toption hostname 'OverTheBox'\n" > "$DIR/etc/upper/config/system"
	printf "config overthebox 'me'\n" > "$DIR/etc/upper/config/overthebox"
	printf "config defaults 'defaults'\n" > "$DIR/etc/upper/config/otb-tracker"
	: > "$DIR/etc/upper/config/glorytun"; : > "$DIR/etc/upper/config/shadowsocks"; : > "$DIR/etc/upper/config/graph"
	local svc
	for svc in glorytun shadowsocks otb-qos otb-graph; do
		printf '#!/bin/sh\necho "%s: $1 (harness)"\n' "$svc" > "$DIR/etc/upper/init.d/$svc"
		chmod 755 "$DIR/etc/upper/init.d/$svc"
	done

	# the network: eth0 (WAN) on a veth to the host, br-lan (LAN) a bridge without ports
	ip netns add "$NS"
	ip link add rb-host type veth peer name eth0 netns "$NS"
	ip addr add "$HOST_IP/24" dev rb-host
	ip link set rb-host up
	ip -n "$NS" link set eth0 address "$BOX_MAC"
	ip -n "$NS" addr add "$BOX_IP/24" dev eth0
	ip -n "$NS" link set eth0 up
	ip -n "$NS" link set lo up
	ip -n "$NS" link add br-lan type bridge
	ip -n "$NS" addr add 192.168.100.1/24 dev br-lan
	ip -n "$NS" link set br-lan up
	ip -n "$NS" route add default via "$HOST_IP"

	# the mount namespace, held open by a sleeping process
	ip netns exec "$NS" unshare -m --propagation private sh -c "
		mount -t overlay overlay -o lowerdir=/usr,upperdir=$DIR/usr/upper,workdir=$DIR/usr/work /usr &&
		mount -t overlay overlay -o lowerdir=/etc,upperdir=$DIR/etc/upper,workdir=$DIR/etc/work /etc &&
		mount -t tmpfs -o size=64m tmpfs /tmp &&
		mkdir -p /tmp/sysinfo && echo pc-engines-apu2 > /tmp/sysinfo/board_name &&
		exec sleep infinity" </dev/null >/dev/null 2>&1 &
	echo $! > "$DIR/holder.pid"
	sleep 1
	# $! is the ip-netns-exec process, which execs unshare then sh then sleep: the same pid
	inbox sh -c 'cat /etc/otb-version; ls /lib/overthebox /tmp/sysinfo/board_name'
}

LOG="$DIR/usr/upper/local/realbox/log"

daemon_start() {
	inbox sh -c 'nohup /bin/otb-daemon >> /usr/local/realbox/log/otb-daemon.out 2>&1 & echo $!' > "$LOG/daemon.pid"
	cat "$LOG/daemon.pid"
}

daemon_stop() {
	# what a reboot does to the daemon: gone, whatever it was doing (no TERM trap to finish a loop)
	[ -f "$LOG/daemon.pid" ] && kill -9 "$(cat "$LOG/daemon.pid")" 2>/dev/null || true
	rm -f "$LOG/daemon.pid"
}

reboot() {
	daemon_stop
	inbox sh -c 'rm -rf /tmp/otb-* /tmp/img.gz /tmp/img.gz.sig'
	if [ -f "$LOG/flashed.img.gz" ]; then
		local version
		version=$(zcat "$LOG/flashed.img.gz" | sed -n 's/^OTB-VERSION=//p' | head -n 1)
		[ -n "$version" ] && echo "$version" > "$DIR/etc/upper/otb-version"
		rm -f "$LOG/flashed.img.gz"
	fi
	echo "booting on $(cat "$DIR/etc/upper/otb-version")"
	daemon_start
}

down() {
	daemon_stop
	[ -f "$DIR/holder.pid" ] && kill "$(holder_pid)" 2>/dev/null || true
	ip link del rb-host 2>/dev/null || true
	ip netns del "$NS" 2>/dev/null || true
	rm -rf "$DIR"
}

case "${1:-}" in
	up) shift; up "$@" ;;
	exec) shift; inbox "$@" ;;
	daemon-start) daemon_start ;;
	daemon-stop) daemon_stop ;;
	reboot) reboot ;;
	down) down ;;
	*) echo "usage: $0 up <feeds> <host:port> <ca> | exec <cmd...> | daemon-start | daemon-stop | down" >&2; exit 2 ;;
esac
