"""The peers document (GET /api/v1/servers/self/peers): fetched with If-None-Match, validated strictly.

A document whose shape is wrong (not an object, no ``peers`` list, a count that does not match) is
refused as a whole: the gateway keeps what it converged last. A peer whose values are wrong (a key
that is not a WireGuard key, an address outside its prefix, a port another peer already uses) is
left out and reported as a problem naming the field (``peers[3].tunnel.box_address``); the gateway
keeps that box as it was (see ``cli``), so one bad row never takes the other boxes down.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
import uuid
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Set, Tuple

from otb_protocol import SERIAL_RE

from otb_agent.httpapi import api_url, request

from . import __version__

PEERS_PATH = "/api/v1/servers/self/peers"
MAX_KBPS = 10_000_000
MAX_PASSWORD_LENGTH = 256
# What ss-server 3.3.5 accepts (``ss-server -h``); the AEAD ones are what the backend hands out.
SHADOWSOCKS_METHODS = frozenset(
    {
        "aes-128-gcm",
        "aes-192-gcm",
        "aes-256-gcm",
        "chacha20-ietf-poly1305",
        "xchacha20-ietf-poly1305",
    }
)
_KEY_RE = re.compile(r"[A-Za-z0-9+/]{43}=")


class PeersError(ValueError):
    """The document as a whole cannot be used."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class _PeerInvalid(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Tunnel:
    server_address: str
    box_address: str
    prefix: str  # the network, e.g. "100.64.0.0/31"

    @property
    def prefix_length(self) -> int:
        return ipaddress.ip_network(self.prefix).prefixlen


@dataclass(frozen=True)
class Shadowsocks:
    password: str
    method: str


@dataclass(frozen=True)
class RateLimit:
    download_kbps: Optional[int]
    upload_kbps: Optional[int]


@dataclass(frozen=True)
class Peer:
    """One box the gateway terminates, with every value it needs, validated."""

    box_id: str
    serial: str
    wg_public_key: str  # "" when the box has no WireGuard key yet
    wg_preshared_key: Optional[str]
    tunnel_port: int
    public_ipv4: Optional[str]
    tunnel: Optional[Tunnel]
    ipv6_prefix: Optional[str]
    shadowsocks: Optional[Shadowsocks]
    rate_limit: Optional[RateLimit]


@dataclass(frozen=True)
class PeerProblem:
    """A peer left out of the document, and why."""

    index: int
    box_id: Optional[str]
    field: str
    message: str

    def __str__(self) -> str:
        who = f" (box {self.box_id})" if self.box_id else ""
        return f"peers[{self.index}].{self.field}{who}: {self.message}"


@dataclass(frozen=True)
class PeersDocument:
    server: str
    etag: str
    peers: Tuple[Peer, ...]
    problems: Tuple[PeerProblem, ...] = ()


# --------------------------------------------------------------------------------------- fetch


def fetch_peers(
    server: str, token: str, etag: Optional[str], timeout: float = 10.0
) -> Tuple[int, Optional[Any], Optional[str]]:
    """GET the peers document. Returns (200, body, etag) or (304, None, the etag sent). Raises
    otb_agent.httpapi.HttpError for an HTTP error, ConnectionError when the server cannot be reached,
    PeersError when a 200 body is not JSON."""
    headers = {"User-Agent": f"otb-gateway/{__version__}"}
    if etag:
        headers["If-None-Match"] = f'"{etag}"'
    status, hdrs, raw = request(
        "GET", api_url(server, PEERS_PATH), token=token, headers=headers, timeout=timeout
    )
    if status == 304:
        return 304, None, etag
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise PeersError("body", f"not JSON: {e}") from None
    tag = hdrs.get("etag", "").strip()
    if tag.startswith("W/"):
        tag = tag[2:]
    tag = tag.strip('"')
    if not tag and isinstance(body, dict) and isinstance(body.get("etag"), str):
        tag = body["etag"]
    return status, body, tag or None


# ------------------------------------------------------------------------------------ validate


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _key(value: Any, field: str, *, allow_empty: bool = False) -> str:
    if allow_empty and value == "":
        return ""
    if not isinstance(value, str) or not _KEY_RE.fullmatch(value):
        raise _PeerInvalid(field, "must be a WireGuard key (44 characters of base64)")
    try:
        decoded = base64.b64decode(value, validate=True)
    except binascii.Error:
        decoded = b""
    # wg refuses a key whose unused last bits are not zero: only the canonical encoding is a key.
    if len(decoded) != 32 or base64.b64encode(decoded).decode("ascii") != value:
        raise _PeerInvalid(field, "must be a WireGuard key (44 characters of base64)")
    return value


def _ipv4(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise _PeerInvalid(field, "must be an IPv4 address")
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise _PeerInvalid(field, "must be an IPv4 address") from None


def _tunnel(value: Any) -> Optional[Tunnel]:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _PeerInvalid("tunnel", "must be an object or null")
    prefix_text = value.get("prefix")
    try:
        network = ipaddress.IPv4Network(prefix_text, strict=True) if isinstance(prefix_text, str) else None
    except ValueError:
        network = None
    if network is None or network.prefixlen > 31 or network.prefixlen < 24:
        raise _PeerInvalid("tunnel.prefix", "must be an IPv4 network from /24 to /31")
    server_address = _ipv4(value.get("server_address"), "tunnel.server_address")
    box_address = _ipv4(value.get("box_address"), "tunnel.box_address")
    if ipaddress.IPv4Address(server_address) not in network:
        raise _PeerInvalid("tunnel.server_address", f"is outside {network}")
    if ipaddress.IPv4Address(box_address) not in network:
        raise _PeerInvalid("tunnel.box_address", f"is outside {network}")
    if server_address == box_address:
        raise _PeerInvalid("tunnel.box_address", "must differ from server_address")
    return Tunnel(server_address=server_address, box_address=box_address, prefix=str(network))


def _ipv6_prefix(value: Any) -> Optional[str]:
    if value is None:
        return None
    try:
        network = ipaddress.IPv6Network(value, strict=True) if isinstance(value, str) else None
    except ValueError:
        network = None
    if network is None or not 16 <= network.prefixlen <= 64:
        raise _PeerInvalid("ipv6_prefix", "must be an IPv6 network from /16 to /64")
    return str(network)


def _shadowsocks(value: Any) -> Optional[Shadowsocks]:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _PeerInvalid("shadowsocks", "must be an object or null")
    password = value.get("password")
    if (
        not isinstance(password, str)
        or not 1 <= len(password) <= MAX_PASSWORD_LENGTH
        or any(ord(ch) < 32 for ch in password)
    ):
        raise _PeerInvalid("shadowsocks.password", f"must be 1 to {MAX_PASSWORD_LENGTH} printable characters")
    method = value.get("method")
    if method not in SHADOWSOCKS_METHODS:
        raise _PeerInvalid("shadowsocks.method", f"must be one of {', '.join(sorted(SHADOWSOCKS_METHODS))}")
    return Shadowsocks(password=password, method=method)


def _kbps(value: Any, field: str) -> Optional[int]:
    if value is None:
        return None
    if not _is_int(value) or not 1 <= value <= MAX_KBPS:
        raise _PeerInvalid(field, f"must be null or a whole number from 1 to {MAX_KBPS}")
    return int(value)


def _rate_limit(value: Any) -> Optional[RateLimit]:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _PeerInvalid("rate_limit", "must be an object or null")
    limit = RateLimit(
        download_kbps=_kbps(value.get("download_kbps"), "rate_limit.download_kbps"),
        upload_kbps=_kbps(value.get("upload_kbps"), "rate_limit.upload_kbps"),
    )
    return limit if limit.download_kbps or limit.upload_kbps else None


def parse_peer(item: Any) -> Peer:
    """One peer, validated; raises _PeerInvalid naming the field."""
    if not isinstance(item, dict):
        raise _PeerInvalid("", "a peer is an object")
    box_id = item.get("box_id")
    try:
        if not isinstance(box_id, str):
            raise ValueError
        box_id = str(uuid.UUID(box_id))
    except ValueError:
        raise _PeerInvalid("box_id", "must be a UUID") from None
    serial = item.get("serial")
    if not isinstance(serial, str) or not SERIAL_RE.fullmatch(serial):
        raise _PeerInvalid("serial", "must be 1 to 64 characters from A-Z a-z 0-9 . _ -")
    port = item.get("tunnel_port")
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise _PeerInvalid("tunnel_port", "must be a whole number from 1 to 65535")
    preshared = item.get("wg_preshared_key")
    public_ipv4 = item.get("public_ipv4")
    return Peer(
        box_id=box_id,
        serial=serial,
        wg_public_key=_key(item.get("wg_public_key", ""), "wg_public_key", allow_empty=True),
        wg_preshared_key=None if preshared is None else _key(preshared, "wg_preshared_key"),
        tunnel_port=int(port),
        public_ipv4=None if public_ipv4 is None else _ipv4(public_ipv4, "public_ipv4"),
        tunnel=_tunnel(item.get("tunnel")),
        ipv6_prefix=_ipv6_prefix(item.get("ipv6_prefix")),
        shadowsocks=_shadowsocks(item.get("shadowsocks")),
        rate_limit=_rate_limit(item.get("rate_limit")),
    )


class _Claims:
    """What earlier peers of the document hold: a later peer holding the same is refused."""

    def __init__(self) -> None:
        self.box_ids: Set[str] = set()
        self.ports: Set[int] = set()
        self.keys: Set[str] = set()
        self.addresses: Set[str] = set()
        self.prefixes6: List[ipaddress.IPv6Network] = []

    def check(self, peer: Peer, wg_port: Optional[int]) -> None:
        if peer.box_id in self.box_ids:
            raise _PeerInvalid("box_id", "is listed twice")
        if peer.tunnel_port in self.ports:
            raise _PeerInvalid("tunnel_port", "is used by another peer")
        if wg_port is not None and peer.tunnel_port == wg_port:
            raise _PeerInvalid("tunnel_port", f"is the gateway's own WireGuard port {wg_port}")
        if peer.wg_public_key and peer.wg_public_key in self.keys:
            raise _PeerInvalid("wg_public_key", "is used by another peer")
        addresses = self._addresses(peer)
        for field, address in addresses:
            if address in self.addresses:
                raise _PeerInvalid(field, "is used by another peer")
        network6 = ipaddress.IPv6Network(peer.ipv6_prefix) if peer.ipv6_prefix else None
        if network6 is not None and any(network6.overlaps(other) for other in self.prefixes6):
            raise _PeerInvalid("ipv6_prefix", "overlaps another peer's prefix")
        self.box_ids.add(peer.box_id)
        self.ports.add(peer.tunnel_port)
        if peer.wg_public_key:
            self.keys.add(peer.wg_public_key)
        self.addresses.update(address for _, address in addresses)
        if network6 is not None:
            self.prefixes6.append(network6)

    @staticmethod
    def _addresses(peer: Peer) -> List[Tuple[str, str]]:
        found: List[Tuple[str, str]] = []
        if peer.tunnel is not None:
            found.extend(
                ("tunnel.prefix", str(address)) for address in ipaddress.IPv4Network(peer.tunnel.prefix)
            )
        if peer.public_ipv4 is not None:
            found.append(("public_ipv4", peer.public_ipv4))
        return found


def parse_peers(body: Any, *, etag: str = "", wg_port: Optional[int] = None) -> PeersDocument:
    """The validated document. Raises PeersError when the document as a whole is unusable; a peer
    with a wrong value is left out and listed in ``problems``."""
    if not isinstance(body, dict):
        raise PeersError("body", "must be a JSON object")
    items = body.get("peers")
    if not isinstance(items, list):
        raise PeersError("peers", "must be a list")
    count = body.get("count")
    if count is not None and (not _is_int(count) or count != len(items)):
        raise PeersError("count", f"says {count!r} but the list holds {len(items)} peers")
    server = body.get("server", "")
    if not isinstance(server, str):
        raise PeersError("server", "must be a string")
    peers: List[Peer] = []
    problems: List[PeerProblem] = []
    claims = _Claims()
    for index, item in enumerate(items):
        raw_id = item.get("box_id") if isinstance(item, dict) else None
        try:
            peer = parse_peer(item)
            claims.check(peer, wg_port)
        except _PeerInvalid as e:
            problems.append(
                PeerProblem(index, raw_id if isinstance(raw_id, str) else None, e.field or "", e.message)
            )
            continue
        peers.append(peer)
    return PeersDocument(server=server, etag=etag, peers=tuple(peers), problems=tuple(problems))


def keep_previous(document: PeersDocument, previous: Sequence[Peer]) -> Tuple[Peer, ...]:
    """The document's peers plus, for each peer left out for a problem, the same box's previous valid
    values (when it had any and they do not clash with a valid peer): a bad row keeps its box as it was
    instead of removing it."""
    kept = list(document.peers)
    held = {peer.box_id for peer in kept}
    by_id = {peer.box_id: peer for peer in previous}
    claims = _Claims()
    for peer in kept:
        claims.check(peer, None)
    for problem in document.problems:
        old = by_id.get(problem.box_id or "")
        if old is None or old.box_id in held:
            continue
        try:
            claims.check(old, None)
        except _PeerInvalid:
            continue
        kept.append(old)
        held.add(old.box_id)
    return tuple(kept)
