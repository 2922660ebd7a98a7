"""The documents provisioning serves: a box's desired configuration and its hash, and an aggregation
server's peers document. Every function here runs a constant number of queries."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.db.models import Prefetch, QuerySet

from fleet.core.choices import BoxState
from fleet.core.models import Box
from provisioning.addressing import host_address, tunnel_ends
from provisioning.choices import AssignmentState, PoolPurpose, TunnelKind
from provisioning.models import AddressAssignment, AggregationServer, TunnelCredential
from provisioning.secrets import secret_decrypt

SHADOWSOCKS_METHOD = "chacha20-ietf-poly1305"
TUNNEL_PROTOCOL = "wireguard"


def canonical_hash(document: Any) -> str:
    """sha256 of the canonical JSON (sorted keys, compact separators) of ``document``."""
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _active_assignments() -> QuerySet[AddressAssignment]:
    return AddressAssignment.objects.filter(state=AssignmentState.ACTIVE).only(
        "id", "box_id", "purpose", "prefix"
    )


def _live_credentials() -> QuerySet[TunnelCredential]:
    return TunnelCredential.objects.filter(revoked_at__isnull=True).only(
        "id", "box_id", "kind", "public_key", "secret_ciphertext"
    )


def _addresses(assignments: Iterable[AddressAssignment]) -> dict[str, Any]:
    by_purpose = {assignment.purpose: assignment.prefix for assignment in assignments}
    tunnel = None
    if tunnel_prefix := by_purpose.get(PoolPurpose.TUNNEL_P2P):
        server_address, box_address = tunnel_ends(tunnel_prefix)
        tunnel = {"box_address": box_address, "server_address": server_address, "prefix": tunnel_prefix}
    public = by_purpose.get(PoolPurpose.PUBLIC_IPV4)
    return {
        "public_ipv4": host_address(public) if public else None,
        "tunnel": tunnel,
        "ipv6_prefix": by_purpose.get(PoolPurpose.IPV6_PREFIX),
    }


def _secrets(credentials: Iterable[TunnelCredential], plaintext: bool = False) -> dict[str, tuple[str, str]]:
    """kind -> (public_key, decrypted secret); with ``plaintext``, rows just issued carry the secret
    in ``.plaintext`` and nothing is decrypted."""
    return {
        credential.kind: (
            credential.public_key,
            credential.plaintext  # type: ignore[attr-defined]
            if plaintext
            else (secret_decrypt(credential.secret_ciphertext) if credential.secret_ciphertext else ""),
        )
        for credential in credentials
    }


def config_document_build(
    *,
    box: Box,
    server: AggregationServer | None,
    assignments: Iterable[AddressAssignment],
    credentials: Iterable[TunnelCredential],
    plaintext: bool = False,
) -> dict[str, Any]:
    """The configuration document from already loaded rows, without ``config_hash`` (no queries)."""
    by_kind = _secrets(credentials, plaintext)
    wireguard = by_kind.get(TunnelKind.WIREGUARD)
    glorytun = by_kind.get(TunnelKind.GLORYTUN)
    shadowsocks = by_kind.get(TunnelKind.SHADOWSOCKS)
    return {
        "box": {"id": str(box.id), "serial": box.serial, "name": box.name},
        "server": (
            {
                "name": server.name,
                "host": server.hostname,
                "public_ipv4": server.public_ipv4,
                "port": box.tunnel_port,
                "protocol": TUNNEL_PROTOCOL,
                "wg_public_key": server.wg_public_key,
            }
            if server is not None
            else None
        ),
        "credentials": {
            "wireguard": (
                {"preshared_key": wireguard[1], "box_public_key": wireguard[0] or box.wg_public_key}
                if wireguard
                else None
            ),
            "glorytun": {"key": glorytun[1]} if glorytun else None,
            "shadowsocks": (
                {"password": shadowsocks[1], "method": SHADOWSOCKS_METHOD} if shadowsocks else None
            ),
        },
        **_addresses(assignments),
        "wan_policy": box.wan_policy,
        "port_forwards": box.port_forwards,
        "telemetry_interval_s": settings.OTB["TELEMETRY_INTERVAL_S"],
        "firmware_signing_public_key": settings.OTB["FIRMWARE_SIGNING_PUBLIC_KEY"],
    }


def box_config_document(*, box: Box) -> dict[str, Any]:
    """The desired configuration the box's agent fetches, with ``config_hash`` (sha256 of the canonical
    JSON of everything else). At most three queries; the stored ``box.config_hash`` is not consulted."""
    server = None
    if box.server_id is not None:
        cached = Box.server.is_cached(box)
        server = box.server if cached else AggregationServer.objects.filter(pk=box.server_id).first()
    document = config_document_build(
        box=box,
        server=server,
        assignments=list(_active_assignments().filter(box=box)),
        credentials=list(_live_credentials().filter(box=box)),
    )
    return {"config_hash": canonical_hash(document), **document}


def boxes_config_hashes(*, boxes: QuerySet[Box]) -> dict[Any, str]:
    """box id -> config hash for every box of ``boxes``, in three queries whatever their number."""
    rows = boxes.select_related("server").prefetch_related(
        Prefetch("addresses", queryset=_active_assignments(), to_attr="active_addresses"),
        Prefetch("tunnel_credentials", queryset=_live_credentials(), to_attr="live_credentials"),
    )
    return {
        box.id: canonical_hash(
            config_document_build(
                box=box,
                server=box.server,
                assignments=box.active_addresses,
                credentials=box.live_credentials,
            )
        )
        for box in rows
    }


def _bandwidth_limits(wan_policy: Any) -> tuple[str, list[dict[str, Any]], dict[str, Any] | None]:
    """(mode, per-link figures, the box's rate limit or None) of a stored WAN policy
    (``provisioning.wan_policy``: ``down_kbps``/``up_kbps`` per link, ``download_kbps``/
    ``upload_kbps`` for the box); the peers document names them ``download_kbps``/``upload_kbps``."""
    policy = wan_policy if isinstance(wan_policy, dict) else {}
    interfaces = []
    for interface in policy.get("interfaces") or []:
        if not isinstance(interface, dict) or not interface.get("name"):
            continue
        interfaces.append(
            {
                "name": interface["name"],
                "role": interface.get("role", "primary"),
                "download_kbps": interface.get("down_kbps"),
                "upload_kbps": interface.get("up_kbps"),
            }
        )
    download, upload = policy.get("download_kbps"), policy.get("upload_kbps")
    rate_limit = {"download_kbps": download, "upload_kbps": upload} if download or upload else None
    return str(policy.get("mode") or ""), interfaces, rate_limit


def server_peers_document(*, server: AggregationServer) -> tuple[list[dict[str, Any]], str]:
    """Every claimed box the server terminates, with what it needs to do so, and the ETag (sha256 of the
    canonical JSON of the list). Three queries whatever the number of boxes."""
    boxes = (
        Box.objects.filter(server=server, state=BoxState.CLAIMED)
        .order_by("tunnel_port")
        .only("id", "serial", "wg_public_key", "tunnel_port", "wan_policy")
        .prefetch_related(
            Prefetch("addresses", queryset=_active_assignments(), to_attr="active_addresses"),
            Prefetch("tunnel_credentials", queryset=_live_credentials(), to_attr="live_credentials"),
        )
    )
    peers = []
    for box in boxes:
        by_kind = _secrets(box.live_credentials)
        wan_mode, interfaces, rate_limit = _bandwidth_limits(box.wan_policy)
        wireguard = by_kind.get(TunnelKind.WIREGUARD, ("", ""))
        peers.append(
            {
                "box_id": str(box.id),
                "serial": box.serial,
                "wg_public_key": wireguard[0] or box.wg_public_key,
                "wg_preshared_key": wireguard[1] or None,
                "tunnel_port": box.tunnel_port,
                **_addresses(box.active_addresses),
                "glorytun_key": by_kind.get(TunnelKind.GLORYTUN, ("", ""))[1] or None,
                "shadowsocks": (
                    {"password": by_kind[TunnelKind.SHADOWSOCKS][1], "method": SHADOWSOCKS_METHOD}
                    if TunnelKind.SHADOWSOCKS in by_kind
                    else None
                ),
                "wan_mode": wan_mode,
                "interfaces": interfaces,
                "rate_limit": rate_limit,
            }
        )
    return peers, canonical_hash(peers)
