"""Sending to the channel layer: the only code that talks to it from outside a socket.

Workers call `send_to_groups` after their transaction commits (through
achievements.delivery, which builds each user's frame once); in a web
process the socket hub (achievements.hub) hands what arrives to that
user's sockets. Who receives a message is decided by the sender, from the
user id the engine loaded: a socket never chooses its own group.

Sending from synchronous code needs an event loop. Building one per call
(what async_to_sync does outside a server) costs milliseconds and, with
channels_redis, leaves connections bound to dead loops. Instead each
process keeps one long-lived loop in a daemon thread and submits sends to
it. In the embedded mode the in-memory layer's queues belong to the
server's loop, so sends are submitted to that loop, which a consumer
registers when a socket connects.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from typing import Any

from channels.layers import InMemoryChannelLayer, get_channel_layer
from channels_redis.pubsub import RedisPubSubChannelLayer
from django.conf import settings

from achievements import metrics

logger = logging.getLogger(__name__)

SEND_TIMEOUT_SECONDS = 5.0


def user_group(user_id: int) -> str:
    """The channel-layer group every open page of one user listens on."""
    return f"user.{int(user_id)}"


def send_to_groups(messages: dict[str, dict[str, Any]]) -> set[str]:
    """Send one message to each group, all at once; the groups the layer took it for."""
    layer = get_channel_layer()
    if layer is None or not messages or nobody_listens(layer):
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

    The same PUBLISH commands the layer sends one at a time, on the same
    channels and with its own serializer, in one pipeline from the calling
    thread (what that saves: docs/performance.md, "Pushes in one pipeline").
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
    if layer is None or not messages or nobody_listens(layer):
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


def nobody_listens(layer: Any) -> bool:
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
