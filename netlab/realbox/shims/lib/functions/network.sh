# OpenWrt's /lib/functions/network.sh getters the box scripts use, from `ubus call network.interface.X status`.
__network_status() {
	ubus call "network.interface.$1" status 2>/dev/null
}

network_get_ipaddr() {
	eval "$1=\$(__network_status \"\$2\" | jq -r '.\"ipv4-address\"[0].address // empty')"
}

network_get_subnet() {
	eval "$1=\$(__network_status \"\$2\" | jq -r '.\"ipv4-address\"[0] | select(.) | \"\\(.address)/\\(.mask)\"')"
}

network_get_gateway() {
	eval "$1=\$(__network_status \"\$2\" | jq -r '[.route[]? | select(.target == \"0.0.0.0\" and .mask == 0)][0].nexthop // empty')"
}

network_get_device() {
	eval "$1=\$(__network_status \"\$2\" | jq -r '.l3_device // empty')"
}
