"""The only module that talks to the channel layer.

Workers call notify_* after their transaction commits; the consumer in
achievements.consumers turns each message type into rendered HTML for the
page. Who receives a message is decided here, by the sender, from the user id
the engine loaded: a socket never chooses its own group.

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
from collections.abc import Iterable
from typing import Any

from channels.layers import InMemoryChannelLayer, get_channel_layer

from achievements import metrics
from achievements.cards import cards_for_user, toasts_for

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
    from achievements.models import Unlock

    if _nobody_listens(get_channel_layer()):
        return  # skip rendering cards nobody would get
    rows = list(
        Unlock.objects.filter(pk__in=list(unlock_ids))
        .order_by("pk")
        .values_list("pk", "badge_id", "tier", "period", "event__received_at")
    )
    unlocks = [(pk, badge_id, tier, period) for pk, badge_id, tier, period, _ in rows]
    cards = cards_for_user(user_id, badge_ids={*badge_ids, *(b for _, b, _, _ in unlocks)})
    # One message, so the page gets every change of one event in one frame;
    # a toast per unlock, as an event can reach two tiers of a badge at once.
    message = {
        "type": "badges.changed",
        "cards": cards,
        "toasts": toasts_for(user_id, unlocks, cards),
    }
    if send_to_group(user_group(user_id), [message]) and unlocks:
        from django.utils import timezone

        from achievements.actions import mark_unlocks_delivered

        mark_unlocks_delivered([pk for pk, _, _, _ in unlocks])
        # Event received → unlock pushed (composites have no event of their own).
        now = timezone.now()
        metrics.observe(
            "accolade_unlock_latency_seconds",
            [(now - received).total_seconds() for *_, received in rows if received],
        )


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
            await layer.group_send(group, message)

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
