"""The configuration document a stock OverTheBox box pulls (``GET /1.0/devices/{id}/config``), mapped
from our own provisioning of its box: the same document ``otb-agent`` gets
(``provisioning.selectors.configuration.box_config_document``: server, port, tunnel pair, IPv6 prefix,
credentials), reshaped into the sections the box's ``otb-action-configure`` writes into UCI.

Our data plane is shadowsocks over MPTCP for TCP plus WireGuard for the rest (docs/data-plane.md); the
box's is shadowsocks plus glorytun-mud. The shadowsocks half maps one to one (our ``ss-server`` of the
box on ``server:port`` with the box's password and method), so TCP (the bulk of the traffic) is bonded
and leaves with the box's public IPv4. ``otb-gateway`` does not terminate glorytun: ``glorytun_mud_conf``
carries our values (the box's glorytun key, port, tunnel pair) so the box builds ``tun0`` and stops
re-pulling, but ``tun0`` is given the least preferred route (``TUN_METRIC``) so that a tunnel nobody
answers never takes the box's default route. See docs/otb-protocol.md, "Binding".

Every value is pasted unquoted into ``uci batch`` by the box, so every one is checked against
``UCI_SAFE`` before it is served (the generators in ``provisioning.secrets`` already keep to it)."""

from __future__ import annotations

import ipaddress
import logging
import re
from typing import Any, cast

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from fleet.core.models import Box
from otbcompat.errors import OtbError
from provisioning.secrets import UCI_SAFE
from provisioning.selectors.configuration import box_config_document

logger = logging.getLogger(__name__)

TUN_DEV = "tun0"  # otb-check-config pulls the config every second until network.tun0 exists
TUN_MTU = 1420  # the MTU of the gateway's tunnel interface (docs/gateway.md)
TUN_METRIC = 1000  # after every WAN: tun0 never becomes the default route (see the module docstring)
TUN_TABLE = 100  # the box uses 50 for the LAN and 200 upwards for its WANs
SS_LOCAL_PORT = 8388  # the box's ss-track traffic is redirected to :8388, so sslocal must listen there
SS_TIMEOUT_S = 600
TRACK_INTERVAL_S = 5
TRACK_TIMEOUT_S = 3
TRACK_RETRY = 3
TRACKER_INTERVAL_S = 5
_SAFE = re.compile(UCI_SAFE)


class OtbConfigUnavailable(OtbError):
    """The config is refused: the box reads ``error`` (v1.1) or ``class`` (older scripts) and keeps
    its previous configuration."""

    status = 409
    error_class = "Client::Conflict"

    def body(self) -> dict[str, str]:
        return {"error": self.message, **super().body()}


def _uci_checked(document: dict[str, Any], *, box_id: Any) -> dict[str, Any]:
    """``document`` when every leaf is a number, a boolean or a string within ``UCI_SAFE``."""
    for section, values in document.items():
        for key, value in (values or {}).items():
            if isinstance(value, dict):
                leaves = list(value.items())
            elif isinstance(value, list):
                leaves = [(key, item) for item in value]
            else:
                leaves = [(key, value)]
            for name, leaf in leaves:
                if isinstance(leaf, bool | int) or leaf is None:
                    continue
                if not isinstance(leaf, str) or not _SAFE.fullmatch(leaf):
                    logger.error(
                        "otb_config_unsafe_value",
                        extra={"box_id": str(box_id), "field": f"{section}.{name}"},
                    )
                    raise OtbConfigUnavailable(f"{section}.{name}: a value the box cannot take")
    return document


def _ipv6_conf(prefix: str | None) -> dict[str, Any] | None:
    if not prefix:
        return None
    network = ipaddress.ip_network(prefix, strict=False)
    return {"lan_conf": {"ipv6_prefix": str(network.network_address), "ipv6_range": network.prefixlen}}


def otb_config_build(*, box: Box) -> dict[str, Any]:
    """The /1.0 config document of a provisioned box (at most three queries: server, addresses,
    credentials); OtbConfigUnavailable when something it needs is missing (no server, tunnel pair or
    credentials) or a value would not survive ``uci batch``."""
    ours = box_config_document(box=box)
    server, tunnel = ours["server"], ours["tunnel"]
    credentials = ours["credentials"]
    shadowsocks, glorytun = credentials.get("shadowsocks"), credentials.get("glorytun")
    if server is None or tunnel is None or shadowsocks is None or glorytun is None or not server["port"]:
        raise OtbConfigUnavailable("the box is not provisioned yet (server, tunnel or credentials missing)")
    document = {
        "tun_conf": {"app": "glorytun_mud"},  # scripts before v1.1 choose the tunnel by this
        "glorytun_mud_conf": {
            "dev": TUN_DEV,
            "server": server["public_ipv4"],
            "port": server["port"],
            "key": glorytun["key"],
            "mtu": TUN_MTU,
            "mtu_auto": 0,
            "ip_local": tunnel["box_address"],
            "ip_peer": tunnel["server_address"],
            "metric": TUN_METRIC,
            "table": TUN_TABLE,
        },
        "ipv6_conf": _ipv6_conf(ours["ipv6_prefix"]),
        # otb-tracker pings these over every WAN to judge each link. Feeds releases whose
        # otb-action-configure reads it iterate ``.hosts[]`` under ``set -e``: without this section
        # the script stops right after tun0 and never writes shadowsocks, syslog nor graph.
        "tracker_conf": {"hosts": [server["public_ipv4"]], "interval_seconds": TRACKER_INTERVAL_S},
        "shadow_conf": {
            "server": server["public_ipv4"],
            "port": server["port"],
            "lport": SS_LOCAL_PORT,
            "method": shadowsocks["method"],
            "password": shadowsocks["password"],
            "timeout": SS_TIMEOUT_S,
            "reuse_port": 1,
            "fast_open": 0,
            "disable_sni": 1,
            # otb-gateway answers GET /ping on the server's end of the box's tunnel pair, which its
            # ss-server reaches locally; never the shadowsocks server itself (the box would loop).
            "monitoring_ip": tunnel["server_address"],
            "track_interval": TRACK_INTERVAL_S,
            "track_timeout": TRACK_TIMEOUT_S,
            "track_retry": TRACK_RETRY,
            "disabled": 0,
        },
        # No remote syslog and no OpenTSDB endpoint: empty values switch them off on the box;
        # metrics come through the /1.0 API every ``write_frequency`` seconds.
        "log_conf": {"host": "", "port": "", "protocol": "", "key": ""},
        "graph_conf": {"host": "", "write_frequency": int(cast(Any, settings.OTB)["TELEMETRY_INTERVAL_S"])},
    }
    return _uci_checked(document, box_id=box.pk)


def otb_config_serve(*, box: Box | None, confirmed: bool) -> dict[str, Any]:
    """The document for a linked, confirmed device's box, recording that the box applies it
    (``applied_config_hash`` = ``config_hash``, ``applied_at``: one UPDATE, only when it changes)."""
    if box is None:
        raise OtbConfigUnavailable("this device is not linked to a service; ask its owner to claim it")
    if not confirmed:
        raise OtbConfigUnavailable("the service is not confirmed yet; confirm it on the box first")
    document = otb_config_build(box=box)
    if box.config_hash and box.applied_config_hash != box.config_hash:
        Box.objects.filter(pk=box.pk).filter(~Q(applied_config_hash=box.config_hash)).update(
            applied_config_hash=box.config_hash, applied_at=timezone.now()
        )
    return document
