"""This process's sockets: one channel-layer subscription per user, shared by its tabs."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from channels.layers import get_channel_layer
from channels_redis.pubsub import RedisPubSubChannelLayer

logger = logging.getLogger(__name__)

# # One channel per web process, in the groups of the users with a socket here,
# and one task handing each message to that user's sockets: a socket waits
# only on its own connection (why: docs/performance.md, "One channel per
# process").


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
