"""Presence: pushes go only to users with a page open; without Redis, to everyone."""

from __future__ import annotations

import asyncio
import time

import pytest

from achievements import delivery, metrics, presence, realtime


@pytest.fixture
def presence_keys(real_redis):
    """Presence keys of users 1-3, empty before and after."""
    keys = [presence.key_of(n) for n in (1, 2, 3)]
    real_redis.delete(*keys)
    yield real_redis
    real_redis.delete(*keys)
    presence._held.clear()


def test_a_socket_makes_its_user_present_until_it_closes(presence_keys):
    async def scenario() -> None:
        await presence.join(1, "specific.one")
        await presence.join(1, "specific.two")  # a second tab
        await presence.join(2, "specific.three")
        assert presence.present_users([1, 2, 3]) == {1, 2}
        await presence.leave(1, "specific.one")
        assert presence.present_users([1, 2, 3]) == {1, 2}  # the other tab is open
        await presence.leave(1, "specific.two")
        assert presence.present_users([1, 2, 3]) == {2}
        await presence.leave(2, "specific.three")

    asyncio.run(scenario())


def test_a_crashed_servers_sockets_expire_on_their_own(presence_keys):
    # An entry nobody refreshed: its server died without saying goodbye.
    presence_keys.zadd(presence.key_of(3), {"specific.dead": time.time() - 1})
    assert presence.present_users([3]) == set()


@pytest.fixture
def sent(monkeypatch):
    """Groups pushed to, recorded instead of sent."""
    groups: list[str] = []
    monkeypatch.setattr(realtime, "nobody_listens", lambda layer: False)

    def send_to_groups(messages: dict) -> set[str]:
        groups.extend(messages)
        return set(messages)

    monkeypatch.setattr(realtime, "send_to_groups", send_to_groups)
    return groups


def test_only_present_users_are_pushed_to(presence_keys, sent, db):
    presence_keys.zadd(presence.key_of(2), {"specific.open": time.time() + 60})
    delivery.notify_many({1: ([5], []), 2: ([5], []), 3: ([6], [])})
    assert sent == ["user.2"]


def test_without_redis_everyone_is_pushed_to(monkeypatch, sent, db):
    monkeypatch.setattr(metrics, "redis_client", lambda role="cache": None)
    assert presence.present_users([1, 2]) is None
    delivery.notify_many({1: ([5], []), 2: ([5], [])})
    assert sent == ["user.1", "user.2"]


def test_a_batch_of_pushes_reaches_pubsub_subscribers_in_one_pipeline(real_redis, settings):
    """The worker publishes a batch's messages itself; the layer's subscribers get them
    as if each had gone through its group_send (same channels, same serializer)."""
    import uuid

    from channels.layers import get_channel_layer

    # Redis pub/sub channels are server-wide, not per database: a prefix of our own.
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {
                "hosts": ["redis://127.0.0.1:6379/14"],
                "prefix": f"test-{uuid.uuid4().hex}",
            },
        }
    }

    async def scenario() -> None:
        layer = get_channel_layer()

        async def not_used(*args: object) -> None:
            raise AssertionError("group_send: one round trip per group")

        layer.group_send = not_used
        one, two, other = [await layer.new_channel() for _ in range(3)]
        await layer.group_add("user.1", one)
        await layer.group_add("user.2", two)
        await layer.group_add("user.3", other)
        sent = await asyncio.to_thread(
            realtime.send_to_groups,
            {
                "user.1": {"type": "badges.changed", "html": "<p>one</p>", "cards": [{"id": 1}]},
                "user.2": {"type": "badges.changed", "html": "<p>two</p>", "cards": []},
            },
        )
        assert sent == {"user.1", "user.2"}
        first = await asyncio.wait_for(layer.receive(one), 5)
        assert first == {
            "type": "badges.changed",
            "group": "user.1",  # what the web process's hub routes by
            "html": "<p>one</p>",
            "cards": [{"id": 1}],
        }
        assert (await asyncio.wait_for(layer.receive(two), 5))["html"] == "<p>two</p>"
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(layer.receive(other), 0.3)
        await layer.flush()

    asyncio.run(scenario())


def test_pushes_to_an_unreachable_redis_fail_quietly(settings, monkeypatch, caplog):
    """A push is best effort: nothing is reported sent (so unlocks stay undelivered and
    are caught up on the next connect), and the error is logged, not raised."""
    import redis

    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": ["redis://127.0.0.1:1/0"], "prefix": "unreachable"},
        }
    }
    client = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    monkeypatch.setattr(metrics, "redis_client", lambda role="cache": client)
    sent = realtime.send_to_groups({"user.1": {"type": "badges.changed", "html": "x"}})
    assert sent == set()
    assert "Pushing to 1 group(s) failed" in caplog.text
