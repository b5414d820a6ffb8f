"""The only module that talks to the channel layer.

Workers call notify_* after their transaction commits, with each user's frame
rendered once; in a web process the socket hub (SocketHub, below) hands it to
that user's sockets (achievements.consumers). Who receives a message is
decided here, by the sender, from the user id the engine loaded: a socket
never chooses its own group.

Sending from synchronous code needs an event loop. Building one per call (what
async_to_sync does outside a server) costs milliseconds and, with
channels_redis, leaves connections bound to dead loops. Instead each process
keeps one long-lived loop in a daemon thread and submits sends to it. In the
embedded mode the in-memory layer's queues belong to the server's loop, so
sends are submitted to that loop, which the consumer registers when a socket
connects.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Iterable
from typing import Any

from channels.layers import InMemoryChannelLayer, get_channel_layer
from channels_redis.pubsub import RedisPubSubChannelLayer
from django.conf import settings

from achievements import metrics
from achievements.cards import KnownState, toasts_for

logger = logging.getLogger(__name__)

SEND_TIMEOUT_SECONDS = 5.0


def user_group(user_id: int) -> str:
    """The channel-layer group every open page of one user listens on."""
    return f"user.{int(user_id)}"


def notify_badge_changes(
    *, user_id: int, badge_ids: Iterable[int], unlock_ids: Iterable[int] = ()
) -> None:
    """Push fresh cards for changed badges, and a toast for each unlock.

    An unlock is marked delivered once the layer has accepted the send. The
    layer is at-most-once, so delivery is not the end of it: pages that were
    not connected pick up unseen unlocks when their socket (re)connects.
    """
    notify_many({user_id: (list(badge_ids), list(unlock_ids))})


def notify_many(
    changes: dict[int, tuple[list[int], list[int]]], *, known: KnownState | None = None
) -> None:
    """notify_badge_changes for many users (user → (badge ids, unlock ids)).

    Asks once which users have a page open and skips the others; builds every
    card in a fixed number of queries (cards_for_users; none for what `known`,
    the batch's own rows, covers); renders each user's frame once; sends all
    of them concurrently. Best effort: failures are logged, never raised.
    """
    from django.utils import timezone

    from achievements.actions import mark_unlocks_delivered
    from achievements.cards import cards_for_users
    from achievements.consumers import render_frame
    from achievements.models import Unlock

    try:
        if _nobody_listens(get_channel_layer()):
            return  # skip rendering cards nobody would get
        present = present_users(list(changes))
        targets = {u: c for u, c in changes.items() if present is None or u in present}
        if not targets:
            return  # no page open: the next one catches up from the database
        unlock_ids = [pk for _, unlocks in targets.values() for pk in unlocks]
        made = known.unlocks if known is not None else {}
        rows = [(pk, *made[pk]) for pk in unlock_ids if pk in made]
        if unread := [pk for pk in unlock_ids if pk not in made]:
            rows += Unlock.objects.filter(pk__in=unread).values_list(
                "pk", "user_id", "badge_id", "tier", "period", "event__received_at"
            )
        rows.sort()
        unlocks: dict[int, list[tuple[int, int, int, str]]] = {u: [] for u in targets}
        for pk, user_id, badge_id, tier, period, _ in rows:
            unlocks[user_id].append((pk, badge_id, tier, period))
        cards = cards_for_users(
            {
                user_id: {*badge_ids, *(b for _, b, _, _ in unlocks[user_id])}
                for user_id, (badge_ids, _) in targets.items()
            },
            known=known,
        )
        messages = {}
        for user_id in targets:
            # One message, so the page gets every change of one event in one frame;
            # a toast per unlock, as an event can reach two tiers of a badge at once.
            toasts = toasts_for(user_id, unlocks[user_id], cards[user_id])
            messages[user_group(user_id)] = {
                "type": "badges.changed",
                "cards": cards[user_id],
                "toasts": toasts,
                # Rendered once here, not once per open tab in the web process.
                "html": render_frame(cards[user_id], toasts),
            }
        sent = send_to_groups(messages)
        delivered = [
            (pk, received) for pk, user_id, *_, received in rows if user_group(user_id) in sent
        ]
        if delivered:
            mark_unlocks_delivered([pk for pk, _ in delivered])
            # Event received → unlock pushed (composites have no event of their own).
            now = timezone.now()
            metrics.observe(
                "accolade_unlock_latency_seconds",
                [(now - received).total_seconds() for _, received in delivered if received],
            )
    except Exception:
        logger.exception("Pushing changes to %d user(s) failed", len(changes))


# --- this process's sockets: one subscription per user, shared by its tabs ------
#
# A consumer with a channel of its own waits on the layer for every message:
# channels' dispatch loop keeps a task, a coroutine and the futures of an
# asyncio.wait pending per socket, and replaces them after each message. With
# 5,000 sockets those half-million short-lived objects outlived the young
# garbage-collector generation and made every collection walk them: at 500
# events/s Daphne stopped for 50 ms (young) and 140 ms (middle) collections
# every few seconds (bench/latency.py with a gc callback). Instead each web
# process holds one channel and puts it in a user's group while any socket
# of that user is open here; one task receives every message and hands it to
# that user's sockets. A socket then waits only on its own connection.


class SocketHub:
    """The sockets of this process by group, and the one channel that feeds them.

    Messages must name their group (`"group"`); every sender in this module
    adds it. (In a rolling deploy, update workers before web processes: an
    older web process ignores the key, an older worker's messages lack it and
    reach no socket here until their pages reconnect and catch up.) Joining
    and leaving are serialised by one lock, so the layer's group membership
    follows the first join and the last leave of a group in order; only
    those two touch the layer.
    """

    # The core and in-memory layers drop a group membership this long after it
    # was added (group_expiry); the hub adds its groups again well before that.
    # Redis pub/sub subscriptions do not expire.
    REFRESH_SECONDS = 3600.0

    def __init__(self, layer: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.layer = layer
        self.loop = loop
        self.channel: str | None = None
        self.groups: dict[str, set[Any]] = {}
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []

    async def join(self, group: str, socket: Any) -> None:
        """Deliver `group`'s messages to `socket` (which has `async deliver(message)`)."""
        async with self._lock:
            if self.channel is None:
                self.channel = await self.layer.new_channel("hub")
            self._ensure_running()
            members = self.groups.get(group)
            if members is None:
                await self.layer.group_add(group, self.channel)
                members = self.groups[group] = set()
            members.add(socket)

    async def leave(self, group: str, socket: Any) -> None:
        async with self._lock:
            members = self.groups.get(group)
            if members is None or socket not in members:
                return
            members.discard(socket)
            if not members:
                del self.groups[group]
                try:
                    await self.layer.group_discard(group, self.channel)
                except Exception:
                    # A leftover membership only brings messages the pump drops.
                    logger.warning("Could not leave %s", group, exc_info=True)

    def _ensure_running(self) -> None:
        """Start the pump (and the refresher) or, if one has died, start it again."""
        if self._tasks and not any(task.done() for task in self._tasks):
            return
        for task in self._tasks:
            task.cancel()
        self._tasks = [self.loop.create_task(self._pump())]
        if not isinstance(self.layer, RedisPubSubChannelLayer):
            self._tasks.append(self.loop.create_task(self._refresh()))
        for task in self._tasks:
            task.add_done_callback(self._report_end)

    @staticmethod
    def _report_end(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error(
                "The socket hub's %s stopped; the next connect restarts it",
                task.get_coro().__name__,  # type: ignore[union-attr]
                exc_info=task.exception(),
            )

    async def _pump(self) -> None:
        assert self.channel is not None
        while True:
            try:
                message = await self.layer.receive(self.channel)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("Receiving pushes for this process's sockets failed")
                await asyncio.sleep(1)
                continue
            group = message.get("group")
            if not isinstance(group, str):
                logger.warning("A push of type %r names no group; dropped", message.get("type"))
                continue
            for socket in tuple(self.groups.get(group, ())):
                try:
                    await socket.deliver(message)
                except Exception:
                    # One socket's failure must not cost the others their frame.
                    logger.exception("Delivering a push to a socket of %s failed", group)
            # A queued message is received, and a frame sent, without yielding
            # to the loop: let requests and socket reads in between messages.
            await asyncio.sleep(0)

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(self.REFRESH_SECONDS)
            for group in list(self.groups):
                async with self._lock:  # one group at a time: connects wait little
                    if group not in self.groups:
                        continue
                    try:
                        await self.layer.group_add(group, self.channel)
                    except Exception:
                        logger.exception("Renewing this process's membership of %s failed", group)

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()


_hub: SocketHub | None = None


def socket_hub() -> SocketHub:
    """The hub of the running event loop and the configured layer (made on first use;
    a test's new loop, or a layer replaced by a settings change, gets a new one)."""
    global _hub
    loop = asyncio.get_running_loop()
    layer = get_channel_layer()
    if _hub is None or _hub.loop is not loop or _hub.layer is not layer:
        if _hub is not None and _hub.loop is loop:
            _hub.close()
        _hub = SocketHub(layer, loop)
    return _hub


# --- presence: which users have a page connected -----------------------------
#
# Rendering cards for a user with no page open is wasted work, and most users
# are not looking when their events are evaluated. Each server process keeps
# the sockets it holds in Redis, one sorted set per user (member: the socket's
# id, score: when the entry expires), refreshed while the socket lives.
# A crashed server's entries expire on their own. Without Redis (the embedded
# mode) presence is unknown and every change is pushed.

PRESENCE_TTL_SECONDS = 90.0
PRESENCE_REFRESH_SECONDS = 30.0
_held: dict[str, int] = {}  # this process's sockets: socket id → user id
_refresher: asyncio.Task[None] | None = None


def _presence_key(user_id: int) -> str:
    return f"{metrics._namespace()}:presence:{int(user_id)}"


def present_users(user_ids: list[int]) -> set[int] | None:
    """The users among these with a page connected now; None when it cannot be told."""
    client = metrics.redis_client("channels")
    if client is None or not user_ids:
        return None
    now = time.time()
    try:
        pipeline = client.pipeline(transaction=False)
        for user_id in user_ids:
            pipeline.zcount(_presence_key(user_id), now, "+inf")
        counts = pipeline.execute()
    except Exception:
        logger.warning("Could not read presence; pushing to everyone", exc_info=True)
        return None
    return {user_id for user_id, count in zip(user_ids, counts, strict=True) if count}


async def presence_join(user_id: int, socket_id: str) -> None:
    """A socket of this user opened here (called before its catch-up is read)."""
    global _refresher
    _held[socket_id] = user_id
    await asyncio.to_thread(_write_presence, {socket_id: user_id})
    if _refresher is None or _refresher.done():
        _refresher = asyncio.get_running_loop().create_task(_refresh_presence())


async def presence_leave(user_id: int, socket_id: str) -> None:
    _held.pop(socket_id, None)
    client = metrics.redis_client("channels")
    if client is not None:
        try:
            await asyncio.to_thread(client.zrem, _presence_key(user_id), socket_id)
        except Exception:
            logger.warning("Could not clear presence of socket %s", socket_id, exc_info=True)


def _write_presence(sockets: dict[str, int]) -> None:
    client = metrics.redis_client("channels")
    if client is None or not sockets:
        return
    expires = time.time() + PRESENCE_TTL_SECONDS
    try:
        pipeline = client.pipeline(transaction=False)
        for socket_id, user_id in sockets.items():
            pipeline.zadd(_presence_key(user_id), {socket_id: expires})
            pipeline.zremrangebyscore(_presence_key(user_id), "-inf", time.time())
            pipeline.expire(_presence_key(user_id), int(PRESENCE_TTL_SECONDS) + 5)
        pipeline.execute()
    except Exception:
        logger.warning("Could not write presence for %d socket(s)", len(sockets), exc_info=True)


async def _refresh_presence() -> None:
    while _held:
        await asyncio.sleep(PRESENCE_REFRESH_SECONDS)
        await asyncio.to_thread(_write_presence, dict(_held))


def send_to_groups(messages: dict[str, dict[str, Any]]) -> set[str]:
    """Send one message to each group, all at once; the groups the layer took it for."""
    layer = get_channel_layer()
    if layer is None or not messages or _nobody_listens(layer):
        return set()
    messages = {group: _addressed(group, message) for group, message in messages.items()}
    if isinstance(layer, RedisPubSubChannelLayer) and _single_host():
        return _publish_all(layer, messages)

    async def send_all() -> list[bool]:
        async def one(group: str, message: dict[str, Any]) -> bool:
            try:
                await layer.group_send(group, message)
            except Exception:
                logger.exception("Pushing to %s failed", group)
                return False
            return True

        return await asyncio.gather(*(one(g, m) for g, m in messages.items()))

    future = asyncio.run_coroutine_threadsafe(send_all(), _send_loop(layer))
    try:
        results = future.result(timeout=SEND_TIMEOUT_SECONDS)
    except Exception:
        future.cancel()  # so a send that is merely slow is not reported twice
        logger.exception("Pushing to %d group(s) failed", len(messages))
        return set()
    return {group for group, ok in zip(messages, results, strict=True) if ok}


def _addressed(group: str, message: dict[str, Any]) -> dict[str, Any]:
    """The message naming its group: a web process's hub hands it to that group's sockets."""
    return {**message, "group": group}


def _publish_all(layer: RedisPubSubChannelLayer, messages: dict[str, dict[str, Any]]) -> set[str]:
    """The pub/sub layer's group_send for many groups, in one round trip.

    The layer publishes under a lock, one command at a time, from an event
    loop, so a batch's ten users cost ten round trips and two thread hops
    (8 ms at the median under bench/latency.py's load). The same PUBLISH
    commands, on the same channels and with the layer's own serializer, go
    here in one pipeline from the calling thread.
    """
    client = metrics.redis_client("channels")
    if client is None:  # REDIS_URL unset but a Redis layer configured by hand
        logger.error("No Redis client for the channel layer; %d push(es) dropped", len(messages))
        return set()
    try:
        pipeline = client.pipeline(transaction=False)
        for group, message in messages.items():
            pipeline.publish(pubsub_group_channel(group), layer.serialize(message))
        # One failed command fails only its group (its unlocks stay undelivered
        # and are caught up on the next connect), not the whole batch.
        results = pipeline.execute(raise_on_error=False)
    except Exception:
        logger.exception("Pushing to %d group(s) failed", len(messages))
        return set()
    failed = [g for g, r in zip(messages, results, strict=True) if isinstance(r, Exception)]
    if failed:
        logger.error("Pushing to %d of %d group(s) failed", len(failed), len(messages))
    return set(messages) - set(failed)


def _config() -> dict[str, Any]:
    config: dict[str, Any] = settings.CHANNEL_LAYERS["default"].get("CONFIG", {})
    return config


def _single_host() -> bool:
    """One Redis behind the layer: the one `redis_client("channels")` talks to.
    With more, the layer shards channels over them; its own group_send is used."""
    return len(_config().get("hosts") or [None]) == 1


def pubsub_group_channel(group: str) -> str:
    """The Redis channel the pub/sub layer publishes a group's messages on
    (channels_redis's RedisPubSubLoopLayer._get_group_channel_name)."""
    prefix = _config().get("prefix", "asgi")
    return f"{prefix}__group__{group}"


def send_to_group(group: str, messages: list[dict[str, Any]]) -> bool:
    """Send messages to a group, in order; whether the layer took them.

    Best effort: a push is never worth failing a task over, so errors are
    logged, not raised.
    """
    layer = get_channel_layer()
    if layer is None or not messages or _nobody_listens(layer):
        return False

    async def send_all() -> None:
        for message in messages:
            await layer.group_send(group, _addressed(group, message))

    future = asyncio.run_coroutine_threadsafe(send_all(), _send_loop(layer))
    try:
        future.result(timeout=SEND_TIMEOUT_SECONDS)
    except Exception:
        # Cancel, so a send that is merely slow is not delivered after we
        # have reported it as failed.
        future.cancel()
        logger.exception("Pushing %d message(s) to %s failed", len(messages), group)
        return False
    return True


# --- one event loop per process for sends -----------------------------------

_server_loop: asyncio.AbstractEventLoop | None = None
_sender_loop: asyncio.AbstractEventLoop | None = None
_sender_pid: int | None = None
_sender_thread: threading.Thread | None = None
_sender_lock = threading.Lock()


def _nobody_listens(layer: Any) -> bool:
    """Embedded mode with no socket connected to this process: a push would reach
    nobody, and that is nothing wrong (pages catch up from the database)."""
    return isinstance(layer, InMemoryChannelLayer) and not _server_loop_running()


def _server_loop_running() -> bool:
    loop = _server_loop
    return loop is not None and not loop.is_closed() and loop.is_running()


def register_server_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Remember the loop serving sockets, for in-memory layer sends from other threads."""
    global _server_loop
    _server_loop = loop


def _send_loop(layer: Any) -> asyncio.AbstractEventLoop:
    """Where a send must run: the server's loop for the in-memory layer (its queues
    live there), this process's sender loop otherwise."""
    if not isinstance(layer, InMemoryChannelLayer):
        return _process_sender_loop()
    assert _server_loop is not None
    try:
        on_server_loop = asyncio.get_running_loop() is _server_loop
    except RuntimeError:
        on_server_loop = False
    if on_server_loop:
        # Waiting for the result here would block the loop that must run the send.
        raise RuntimeError("send_to_group must not be called from the server loop")
    return _server_loop


def _process_sender_loop() -> asyncio.AbstractEventLoop:
    """This process's long-lived send loop, started on first use (and again after a fork)."""
    global _sender_loop, _sender_pid, _sender_thread
    with _sender_lock:
        if (
            _sender_loop is None
            or _sender_pid != os.getpid()
            or _sender_loop.is_closed()
            or _sender_thread is None
            or not _sender_thread.is_alive()
        ):
            loop = asyncio.new_event_loop()
            thread = threading.Thread(
                target=loop.run_forever, name="accolade-channel-sender", daemon=True
            )
            thread.start()
            _sender_loop, _sender_pid, _sender_thread = loop, os.getpid(), thread
        return _sender_loop
