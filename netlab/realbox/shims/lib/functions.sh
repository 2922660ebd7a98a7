# The parts of OpenWrt's /lib/functions.sh the box scripts use: config_load, config_get,
# config_foreach, over the uci shim.
config_load() {
	CONFIG_PACKAGE=$1
}

config_get() {
	# config_get <var> <section> <option> [default]
	local __value
	__value=$(uci -q get "$CONFIG_PACKAGE.$2.$3") || __value=$4
	[ -n "$__value" ] || __value=$4
	eval "$1=\$__value"
}

config_foreach() {
	# config_foreach <callback> [type] [args...]
	local __callback=$1 __type=$2 __section
	shift 2
	for __section in $(uci -q show "$CONFIG_PACKAGE" | sed -n "s/^$CONFIG_PACKAGE\.\([^.=]*\)=$__type\$/\1/p"); do
		"$__callback" "$__section" "$@"
	done
}
