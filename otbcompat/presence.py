"""Presence of stock OverTheBox boxes, from their polls of ``actions/todo``, without a database write
per poll.

A poll only sets one field of a Redis hash (``<prefix>:otbcompat:seen``: device id -> ``"<unix
time>|<box id>|<version>"``; the ASGI fast path gathers its polls in memory and sets them in one
command per second). ``presence_flush`` (Celery beat, every ``OTB_COMPAT_PRESENCE_FLUSH_S``) takes the
whole hash at once (RENAME: polls arriving meanwhile go to a new hash) and writes it in one
transaction: ``OtbDevice.last_seen_at``, and for linked boxes the ``BoxStatus`` agents use
(``last_seen_at``, the version from ``X-Overthebox-Version``, ``online`` with a ``box_online`` event
for a box that was offline). The presence sweep (fleet.telemetry) marks them offline like agent boxes
once their polls stop: a box polling every ~11 s is written once per flush, not once per poll.
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import UTC, datetime
from typing import Any, cast

from django.conf import settings
from django.core.cache import cache
from django.db import connection, transaction

from fleet.core.doorbells import broadcast_to_people
from fleet.core.events import events_record_batch
from fleet.telemetry.models import BoxStatus
from otbcompat.models import OtbDevice
from otbcompat.telemetry.firmware import version_clean

logger = logging.getLogger(__name__)

VERSION_MAX = 16
# The header is a cut of the full version the properties give (otbcompat.telemetry.firmware): the
# status keeps the full one while the header is its prefix.


def seen_key() -> str:
    prefix = cast(dict[str, Any], settings.CACHES["default"]).get("KEY_PREFIX") or "otb"
    return f"{prefix}:otbcompat:seen"


def redis_client() -> Any:
    """The default cache's Redis client (one per process, ``fleet.core.cache``)."""
    return cache._cache.get_client(write=True)  # type: ignore[attr-defined]


def clean_version(value: str | None) -> str:
    """``X-Overthebox-Version`` as the telemetry part reads it (``v`` and a trailing dot dropped; "" for
    what is not a version), at most ``VERSION_MAX`` characters (the box sends 5: ``git describe | cut
    -c 2-6``)."""
    return version_clean(value)[:VERSION_MAX]


def seen_value(*, box_id: Any, version: str, at: float) -> str:
    return f"{at:.3f}|{box_id or ''}|{version}"


def poll_seen(*, device: OtbDevice, version: str | None, at: float | None = None) -> None:
    """Note one poll (one HSET); best effort: Redis down never fails the poll."""
    value = seen_value(box_id=device.box_id, version=clean_version(version), at=at or time.time())
    try:
        redis_client().hset(seen_key(), str(device.id), value)
    except Exception:
        logger.warning("otbcompat presence not recorded for %s", device.id, exc_info=True)


def _take_seen() -> dict[str, str]:
    client = redis_client()
    key = seen_key()
    taken = f"{key}:flush:{uuid.uuid4().hex}"
    try:
        client.rename(key, taken)
    except Exception as exc:  # nothing seen since the last flush ("no such key")
        if "no such key" in str(exc).lower():
            return {}
        raise
    pipe = client.pipeline()
    pipe.hgetall(taken)
    pipe.delete(taken)
    raw, _ = pipe.execute()
    return {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in raw.items()
    }


SEEN_DEVICES_SQL = f"""
UPDATE {OtbDevice._meta.db_table} AS d SET last_seen_at = GREATEST(d.last_seen_at, v.seen)
FROM unnest(%s::uuid[], %s::timestamptz[]) AS v(id, seen)
WHERE d.id = v.id
"""  # noqa: S608 (identifiers from the models)
STATUS_CREATE_SQL = f"""
INSERT INTO {BoxStatus._meta.db_table} (box_id)
SELECT v.box_id FROM unnest(%s::uuid[]) AS v(box_id)
JOIN fleet_box b ON b.id = v.box_id
ON CONFLICT (box_id) DO NOTHING
"""  # noqa: S608
STATUS_LOCK_SQL = f"""
SELECT s.box_id, s.online, b.organization_id
FROM {BoxStatus._meta.db_table} s JOIN fleet_box b ON b.id = s.box_id
WHERE s.box_id = ANY(%s::uuid[]) AND b.protocol = 'otb'
ORDER BY s.box_id FOR UPDATE OF s
"""  # noqa: S608
STATUS_SEEN_SQL = f"""
UPDATE {BoxStatus._meta.db_table} AS s SET
    last_seen_at = GREATEST(s.last_seen_at, v.seen),
    -- the header is at most 5 characters: the start of a longer version the properties gave is no change
    firmware_version = CASE WHEN v.version <> '' AND NOT starts_with(s.firmware_version, v.version)
        THEN v.version ELSE s.firmware_version END,
    connected_at = CASE WHEN s.online THEN s.connected_at ELSE v.seen END,
    online = true, offline_since = NULL, updated_at = now()
FROM unnest(%s::uuid[], %s::timestamptz[], %s::text[]) AS v(box_id, seen, version)
WHERE s.box_id = v.box_id
"""  # noqa: S608


def _presence_broadcast(revived: list[tuple[Any, Any]]) -> None:
    for box_id, organization_id in revived:
        message = {"kind": "presence", "box_id": str(box_id), "online": True}
        broadcast_to_people(box_id, organization_id, message)


def presence_flush() -> int:
    """Write the polls noted since the last flush; returns how many devices were seen."""
    seen = _take_seen()
    if not seen:
        return 0
    devices: dict[uuid.UUID, datetime] = {}
    boxes: dict[uuid.UUID, tuple[datetime, str]] = {}
    for device_id, value in seen.items():
        try:
            at_text, box_text, version = value.split("|", 2)
            at = datetime.fromtimestamp(float(at_text), tz=UTC)
            devices[uuid.UUID(device_id)] = at
            if box_text:
                boxes[uuid.UUID(box_text)] = (at, version)
        except ValueError:
            logger.warning("otbcompat presence: dropping malformed entry %r", value[:100])
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(SEEN_DEVICES_SQL, [list(devices), list(devices.values())])
        if boxes:
            box_ids = sorted(boxes)
            cursor.execute(STATUS_CREATE_SQL, [box_ids])
            cursor.execute(STATUS_LOCK_SQL, [box_ids])
            locked = cursor.fetchall()
            otb_ids = [row[0] for row in locked]
            cursor.execute(
                STATUS_SEEN_SQL,
                [otb_ids, [boxes[i][0] for i in otb_ids], [clean_version(boxes[i][1]) for i in otb_ids]],
            )
            revived = [(box_id, organization_id) for box_id, online, organization_id in locked if not online]
            if revived:
                events_record_batch(
                    [
                        {
                            "box_id": box_id,
                            "organization_id": organization_id,
                            "kind": "box_online",
                            "ts": boxes[box_id][0],
                            "data": {"protocol": "otb"},
                        }
                        for box_id, organization_id in revived
                    ]
                )
                transaction.on_commit(lambda: _presence_broadcast(revived))
    return len(devices)
