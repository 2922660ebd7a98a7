"""Enrollment: the box's WireGuard key pair, ``POST /api/v1/agent/enroll``, ``credentials.json``.

Used by ``otb-agent enroll`` (one box) and by ``otb-agent simulate`` (each simulated box).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, Optional, Tuple

from otb_protocol import serial_problem

from . import __version__, httpapi, x25519
from .util import (
    CREDENTIALS_FILE,
    PRIVATE_KEY_FILE,
    PUBLIC_KEY_FILE,
    Logger,
    ensure_dir,
    read_text,
    write_file_atomic,
    write_json,
)


class EnrollError(Exception):
    """The box could not be enrolled; the message says why (for people)."""


def local_mac() -> Optional[str]:
    """The MAC address of the box's first wired interface, if it has one."""
    for dev in ("eth0", "eth1", "br-lan", "wan"):
        text = read_text(f"/sys/class/net/{dev}/address")
        if text and text.strip() and text.strip() != "00:00:00:00:00:00":
            return text.strip()
    return None


def local_model() -> Optional[str]:
    """The board model OpenWrt reports, if any."""
    text = read_text("/tmp/sysinfo/model")  # noqa: S108 - OpenWrt board info
    return text.strip()[:64] if text and text.strip() else None


def load_or_create_keys(state_dir: str, new_key: bool = False) -> Tuple[str, str]:
    """The box's WireGuard key pair (base64), made on first use and kept in the state dir."""
    priv_path = os.path.join(state_dir, PRIVATE_KEY_FILE)
    pub_path = os.path.join(state_dir, PUBLIC_KEY_FILE)
    existing = None if new_key else read_text(priv_path)
    if existing and existing.strip():
        priv = existing.strip()
        pub = x25519.b64(x25519.public_key(x25519.from_b64(priv)))
    else:
        priv, pub = x25519.generate_keypair_b64()
        write_file_atomic(priv_path, priv + "\n", 0o600)
    write_file_atomic(pub_path, pub + "\n", 0o600)
    return priv, pub


def enroll_box(
    server: str,
    serial: str,
    state_dir: str,
    *,
    secret: Optional[str] = None,
    enrollment_token: Optional[str] = None,
    model: Optional[str] = None,
    mac: Optional[str] = None,
    new_key: bool = False,
    max_attempts: int = 6,
    log: Optional[Logger] = None,
) -> Dict[str, Any]:
    """Enroll (blocking): keys + POST /enroll (retrying 429) + credentials.json (0600)."""
    problem = serial_problem(serial.strip())
    if problem:
        raise EnrollError(f"serial {problem}")
    if secret is None and enrollment_token is None:
        raise EnrollError("need a factory secret or an enrollment token")
    ensure_dir(state_dir, 0o700)
    _, pub = load_or_create_keys(state_dir, new_key=new_key)
    body: Dict[str, Any] = {"serial": serial, "wg_public_key": pub, "agent_version": __version__}
    if secret is not None:
        body["factory_secret"] = secret
    else:
        body["enrollment_token"] = enrollment_token
    if model:
        body["model"] = model
    if mac:
        body["mac"] = mac
    attempt = 0
    while True:
        attempt += 1
        try:
            resp = httpapi.enroll(server, body)
            break
        except httpapi.HttpError as e:
            if e.status == 429 and attempt < max_attempts:
                wait = min(120.0, e.retry_after if e.retry_after is not None else 2.0**attempt)
                if log:
                    log.warning("enroll_rate_limited", serial=serial, retry_after_s=wait)
                time.sleep(wait)
                continue
            detail = f"{e.code}: {e.message}"
            if e.fields:
                detail += " " + json.dumps(e.fields)
            raise EnrollError(f"enrollment rejected (HTTP {e.status}) {detail}") from None
        except (ConnectionError, OSError) as e:
            if attempt < max_attempts:
                time.sleep(min(30.0, 2.0**attempt))
                continue
            raise EnrollError(f"cannot reach {server}: {e}") from None
    token = resp.get("agent_token") if isinstance(resp, dict) else None
    if not token:
        raise EnrollError("server response has no agent_token")
    creds = {
        "server": server.rstrip("/"),
        "serial": resp.get("serial") or serial,
        "box_id": resp.get("box_id"),
        "agent_token": token,
        "enrolled_at": time.time(),
    }
    write_json(os.path.join(state_dir, CREDENTIALS_FILE), creds, mode=0o600)
    return creds
