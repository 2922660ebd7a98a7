"""Doorbells sent from synchronous code (request threads, Celery tasks) through the process's one
channel-layer loop."""

from __future__ import annotations

import threading

import pytest
from asgiref.sync import async_to_sync
from channels.layers import channel_layers
from django.conf import settings

from fleet.core import doorbells as live
from fleet.core.doorbells import agent_group, doorbell_config_changed, group_send


def test_sync_doorbells_from_any_thread_share_one_loop_and_arrive() -> None:
    # given a listener in a box's agent group (a layer of the test's own, like the other layer tests)
    layer = channel_layers.make_backend("default")
    channel = async_to_sync(layer.new_channel)()
    group = agent_group("00000000-0000-0000-0000-00000000beef")
    async_to_sync(layer.group_add)(group, channel)
    try:
        # when doorbells are rung from this thread and from two others
        assert doorbell_config_changed("00000000-0000-0000-0000-00000000beef", "a" * 64) is True
        loop = live._channel_loop
        results: list[bool] = []
        threads = [
            threading.Thread(target=lambda: results.append(group_send(group, {"type": "command.doorbell"})))
            for _ in range(2)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        # then all three arrive, sent by the same long-lived loop (not a new loop and Redis pool each)
        assert results == [True, True]
        assert live._channel_loop is loop and loop is not None and loop[1].is_running()

        async def receive_three() -> list[dict]:  # one loop: the layer's receive buffer is per loop
            return [await layer.receive(channel) for _ in range(3)]

        received = async_to_sync(receive_three)()
        assert received[0] == {"type": "config.changed", "config_hash": "a" * 64}
        assert [message["type"] for message in received[1:]] == ["command.doorbell"] * 2
    finally:
        async_to_sync(layer.group_discard)(group, channel)


def test_a_doorbell_that_cannot_be_sent_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(*args: object, **kwargs: object) -> bool:
        raise ConnectionError("redis is down")

    monkeypatch.setattr(live, "agroup_send", broken)
    assert group_send("agent.x", {"type": "command.doorbell"}) is False
    assert settings.CHANNEL_LAYERS  # the real layer stays configured
