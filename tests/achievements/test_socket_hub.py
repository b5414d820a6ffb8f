"""The web process's hub: one layer membership per user, shared by that user's sockets."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from channels.layers import InMemoryChannelLayer, channel_layers, get_channel_layer

from achievements import consumers, hub, presence, realtime
from achievements.hub import SocketHub
from tests.achievements.test_consumers import _connect, _signed_in_cookie


class Socket:
    def __init__(self, *, fails: bool = False) -> None:
        self.received: list[dict[str, Any]] = []
        self.fails = fails

    async def deliver(self, message: dict[str, Any]) -> None:
        if self.fails:
            raise ConnectionError("this socket went away")
        self.received.append(message)


async def _settle() -> None:
    """Let the hub's pump run (it yields to the loop after each message)."""
    for _ in range(100):
        await asyncio.sleep(0)


def _members(layer: InMemoryChannelLayer, group: str) -> set[str]:
    return set(layer.groups.get(group, {}))


async def _push(layer: InMemoryChannelLayer, group: str, html: str) -> None:
    """A frame for `group`, addressed as realtime's senders address it."""
    await layer.group_send(group, {"type": "badges.changed", "group": group, "html": html})


@pytest.fixture
async def layer_and_hub():
    layer = InMemoryChannelLayer()
    hub = SocketHub(layer, asyncio.get_running_loop())
    yield layer, hub
    hub.close()


async def test_a_users_tabs_share_one_membership_until_the_last_one_leaves(layer_and_hub):
    layer, hub = layer_and_hub
    first, second = Socket(), Socket()
    await hub.join("user.1", first)
    await hub.join("user.1", second)
    assert _members(layer, "user.1") == {hub.channel}

    await hub.leave("user.1", first)
    assert _members(layer, "user.1") == {hub.channel}
    await _push(layer, "user.1", "x")
    await _settle()
    assert first.received == []
    assert [m["html"] for m in second.received] == ["x"]

    await hub.leave("user.1", second)
    assert _members(layer, "user.1") == set()
    assert hub.groups == {}


async def test_a_message_reaches_only_the_sockets_of_the_group_it_names(layer_and_hub):
    layer, hub = layer_and_hub
    mine, theirs = Socket(), Socket()
    await hub.join("user.1", mine)
    await hub.join("user.2", theirs)
    await _push(layer, "user.1", "a")
    # A message naming no group, or a group not held here, reaches nobody.
    await layer.group_send("user.2", {"type": "badges.changed", "html": "b"})
    await layer.group_send("user.2", {"type": "badges.changed", "group": "user.9", "html": "c"})
    await _settle()
    assert [m["html"] for m in mine.received] == ["a"]
    assert theirs.received == []


async def test_a_failing_socket_costs_the_others_nothing(layer_and_hub, caplog):
    layer, hub = layer_and_hub
    sockets = [Socket(), Socket(fails=True), Socket()]
    for socket in sockets:
        await hub.join("user.1", socket)
    for html in ("a", "b"):
        await _push(layer, "user.1", html)
    await _settle()
    assert [m["html"] for m in sockets[0].received] == ["a", "b"]
    assert [m["html"] for m in sockets[2].received] == ["a", "b"]
    assert "Delivering a push to a socket of user.1 failed" in caplog.text


@pytest.mark.parametrize("seed", range(5))
async def test_joins_and_leaves_in_any_interleaving_leave_the_layer_matching_the_sockets(seed):
    """The layer is told of a group's first join and last leave only, in order, however
    the coroutines interleave; a layer that answers after random delays makes
    many interleavings happen."""
    delays = random.Random(seed)

    class SlowLayer(InMemoryChannelLayer):
        async def group_add(self, group: str, channel: str) -> None:
            await asyncio.sleep(delays.random() / 500)
            await super().group_add(group, channel)

        async def group_discard(self, group: str, channel: str) -> None:
            await asyncio.sleep(delays.random() / 500)
            await super().group_discard(group, channel)

    layer = SlowLayer()
    hub = SocketHub(layer, asyncio.get_running_loop())
    kept = [("user.1", Socket()), ("user.2", Socket())]
    passing = [(group, Socket()) for group in ("user.1", "user.2", "user.3") for _ in range(5)]

    async def come_and_go(group: str, socket: Socket) -> None:
        await hub.join(group, socket)
        await asyncio.sleep(delays.random() / 500)
        await hub.leave(group, socket)

    async def stay(group: str, socket: Socket) -> None:
        await asyncio.sleep(delays.random() / 500)
        await hub.join(group, socket)

    moves = [come_and_go(g, s) for g, s in passing] + [stay(g, s) for g, s in kept]
    delays.shuffle(moves)
    await asyncio.gather(*moves)
    assert hub.groups == {g: {s} for g, s in kept}
    assert _members(layer, "user.1") == _members(layer, "user.2") == {hub.channel}
    assert _members(layer, "user.3") == set()
    hub.close()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("close_thread_connections")
async def test_two_tabs_of_a_signed_in_user_hold_one_membership_of_the_users_group():
    """Through the real consumer: tabs join the process's hub, not the layer each."""
    user, cookie = await _signed_in_cookie("owner")
    first, _, _ = await _connect(cookie)
    second, _, _ = await _connect(cookie)
    group = realtime.user_group(user.pk)
    layer = get_channel_layer()
    assert _members(layer, group) == {hub.socket_hub().channel}
    await first.disconnect()
    assert _members(layer, group) == {hub.socket_hub().channel}
    await second.disconnect()
    assert _members(layer, group) == set()


async def test_a_push_to_more_users_than_the_layers_default_capacity_reaches_them_all(
    monkeypatch,
):
    """The embedded layer holds every push of the process in the hub's one channel;
    its capacity (100 by default, overflow dropped silently) is sized for a batch."""
    # A layer built from the project's settings, and the server loop, for this test only.
    monkeypatch.setattr(channel_layers, "backends", {})
    monkeypatch.setattr(realtime, "_server_loop", None)
    layer = get_channel_layer()
    hub = SocketHub(layer, asyncio.get_running_loop())
    sockets = {f"user.{n}": Socket() for n in range(500)}
    for group, socket in sockets.items():
        await hub.join(group, socket)
    # The real sender, from a worker thread: every group's send at once.
    realtime.register_server_loop(asyncio.get_running_loop())
    sent = await asyncio.to_thread(
        realtime.send_to_groups,
        {group: {"type": "badges.changed", "html": group} for group in sockets},
    )
    assert sent == set(sockets)
    # The hub yields to the loop after each message: give it time for 500.
    for _ in range(300):
        if all(s.received for s in sockets.values()):
            break
        await asyncio.sleep(0.01)
    assert all([m["html"] for m in s.received] == [g] for g, s in sockets.items())
    hub.close()


async def test_a_hub_whose_pump_died_starts_it_again_on_the_next_join(caplog):
    class Gone(BaseException):
        """Not an Exception: ends the pump instead of being retried."""

    class BrokenOnce(InMemoryChannelLayer):
        broken = True

        async def receive(self, channel: str) -> dict[str, Any]:
            if self.broken:
                self.broken = False
                raise Gone()
            return await super().receive(channel)

    layer = BrokenOnce()
    hub = SocketHub(layer, asyncio.get_running_loop())
    first, second = Socket(), Socket()
    await hub.join("user.1", first)
    await _settle()
    assert "The socket hub's _pump stopped" in caplog.text
    await hub.join("user.2", second)
    await _push(layer, "user.2", "x")
    await _settle()
    assert [m["html"] for m in second.received] == ["x"]
    hub.close()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("close_thread_connections")
async def test_a_socket_whose_connect_fails_after_joining_leaves_the_hub_and_presence(
    monkeypatch,
):
    """Channels calls no disconnect() for a connect that raised; the socket must not
    stay in the hub (its user subscribed, and present, for good)."""

    def failing(*args: object) -> None:
        raise RuntimeError("the database went away during the catch-up")

    user, cookie = await _signed_in_cookie("owner")
    monkeypatch.setattr(consumers, "_catch_up_frame", failing)
    communicator, connected, _ = await _connect(cookie)  # accepted, then the catch-up
    with pytest.raises(RuntimeError, match="went away"):
        await communicator.receive_output(timeout=3)
    assert hub.socket_hub().groups == {}
    assert _members(get_channel_layer(), realtime.user_group(user.pk)) == set()
    assert user.pk not in presence._held.values()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("close_thread_connections")
async def test_a_push_that_arrives_during_the_catch_up_follows_it(monkeypatch):
    """The catch-up is read from rows as they were; a push that arrives while it is
    built is newer, so it must not be overtaken by the catch-up frame."""
    user, cookie = await _signed_in_cookie("owner")
    group = realtime.user_group(user.pk)

    async def catch_up(self) -> None:
        # A worker pushes while the catch-up is read (and before this socket
        # has sent anything).
        await asyncio.to_thread(
            realtime.send_to_groups, {group: {"type": "badges.changed", "html": "<p>newer</p>"}}
        )
        await asyncio.sleep(0.05)  # the hub has it by now
        await self.send(text_data="<p>catch-up</p>")

    monkeypatch.setattr(consumers.LiveConsumer, "catch_up", catch_up)
    communicator, connected, _ = await _connect(cookie)
    assert connected
    assert await communicator.receive_from(timeout=3) == "<p>catch-up</p>"
    assert await communicator.receive_from(timeout=3) == "<p>newer</p>"
    await communicator.disconnect()
