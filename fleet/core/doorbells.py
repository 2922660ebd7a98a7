"""Channel-layer group names and doorbells for the live websockets.

The channel layer is only a doorbell: it may drop a message, so every doorbell points at state that
is already committed in PostgreSQL (a config hash, pending command rows) and the agent receives the
same state again when it says hello. The sync functions are safe to call from
``transaction.on_commit``; they swallow and log channel-layer errors, because a broken doorbell must
never fail (or roll back) the write that rang it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Coroutine
from typing import Any
from uuid import UUID

from channels.layers import get_channel_layer

logger = logging.getLogger(__name__)

# Message types consumed by fleet.live.agent.AgentConsumer (channels maps "a.b" to handler a_b).
AGENT_SESSION_REPLACE = "session.replace"
AGENT_CONFIG_CHANGED = "config.changed"
AGENT_COMMAND_DOORBELL = "command.doorbell"
PEOPLE_EVENT = "people.event"
PEOPLE_REAUTHORIZE = "people.reauthorize"


def agent_group(box_id: UUID | str) -> str:
    """The group joined by the (single) live agent session of a box."""
    return f"agent.{box_id}"


def box_group(box_id: UUID | str) -> str:
    """The group joined by people watching one box."""
    return f"box.{box_id}"


def user_group(user_id: Any) -> str:
    """The group every live socket of one person joins (to be told their access changed)."""
    return f"user.{user_id}"


def doorbell_reauthorize(user_id: Any) -> bool:
    """Tell the person's live sockets to re-check every subscription now (a membership was removed)."""
    return group_send(user_group(user_id), {"type": PEOPLE_REAUTHORIZE})


def organization_group(org_id: UUID | str) -> str:
    """The group joined by people watching a whole organisation."""
    return f"org.{org_id}"


async def agroup_send(group: str, message: dict[str, Any]) -> bool:
    """Send to a group; False (logged) when the channel layer is unavailable."""
    layer = get_channel_layer()
    if layer is None:
        return False
    try:
        await layer.group_send(group, message)
    except Exception:  # the doorbell is best effort: the DB already holds the truth
        logger.warning("channel layer group_send to %s failed", group, exc_info=True)
        return False
    return True


_channel_loop_lock = threading.Lock()
_channel_loop: tuple[int, asyncio.AbstractEventLoop] | None = None


def run_in_channel_loop(coroutine: Coroutine[Any, Any, Any], timeout: float = 10.0) -> Any:
    """Run a channel-layer coroutine from synchronous code (HTTP request threads, Celery tasks) on this
    process's channel-layer thread and wait for its result.

    ``async_to_sync`` outside an ASGI request builds a new event loop per call, and the channel layer a
    new Redis connection pool per loop: one connection per doorbell. One long-lived loop per process
    (re-created after a fork) keeps one pool for all of them.
    """
    global _channel_loop
    pid = os.getpid()
    with _channel_loop_lock:
        if _channel_loop is None or _channel_loop[0] != pid or _channel_loop[1].is_closed():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="channel-layer", daemon=True).start()
            _channel_loop = (pid, loop)
        loop = _channel_loop[1]
    return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout)


def group_send(group: str, message: dict[str, Any]) -> bool:
    """Sync variant of :func:`agroup_send` (for services and ``transaction.on_commit``)."""
    try:
        return bool(run_in_channel_loop(agroup_send(group, message)))
    except Exception:  # a timeout: the doorbell is best effort
        logger.warning("channel layer group_send to %s failed", group, exc_info=True)
        return False


def doorbell_config_changed(box_id: UUID | str, config_hash: str) -> bool:
    """Tell the box's live session (if any) that its desired configuration hash changed."""
    return group_send(agent_group(box_id), {"type": AGENT_CONFIG_CHANGED, "config_hash": config_hash})


def doorbell_command(box_id: UUID | str) -> bool:
    """Tell the box's live session to fetch its pending commands and send them."""
    return group_send(agent_group(box_id), {"type": AGENT_COMMAND_DOORBELL})


def _people_message(message: dict[str, Any]) -> dict[str, Any]:
    return {"type": PEOPLE_EVENT, "payload": message}


async def abroadcast_to_people(
    box_id: UUID | str, organization_id: UUID | str | None, message: dict[str, Any]
) -> None:
    """Send ``{"type": "people.event", "payload": message}`` to the box and organisation groups."""
    wrapped = _people_message(message)
    await agroup_send(box_group(box_id), wrapped)
    if organization_id is not None:
        await agroup_send(organization_group(organization_id), wrapped)


def broadcast_to_people(
    box_id: UUID | str, organization_id: UUID | str | None, message: dict[str, Any]
) -> None:
    """Sync variant of :func:`abroadcast_to_people` (telemetry, presence and events)."""
    wrapped = _people_message(message)
    group_send(box_group(box_id), wrapped)
    if organization_id is not None:
        group_send(organization_group(organization_id), wrapped)
