"""Which users have a page connected, kept in Redis by the web processes."""

from __future__ import annotations

import asyncio
import logging
import time

from achievements import metrics

logger = logging.getLogger(__name__)

# # Rendering cards for a user with no page open is wasted work, and most users
# are not looking when their events are evaluated. Each server process keeps
# the sockets it holds in Redis, one sorted set per user (member: the socket's
# id, score: when the entry expires), refreshed while the socket lives.
# A crashed server's entries expire on their own. Without Redis (the embedded
# mode) presence is unknown and every change is pushed.

PRESENCE_TTL_SECONDS = 90.0
PRESENCE_REFRESH_SECONDS = 30.0
_held: dict[str, int] = {}  # this process's sockets: socket id → user id
_refresher: asyncio.Task[None] | None = None


def key_of(user_id: int) -> str:
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
            pipeline.zcount(key_of(user_id), now, "+inf")
        counts = pipeline.execute()
    except Exception:
        logger.warning("Could not read presence; pushing to everyone", exc_info=True)
        return None
    return {user_id for user_id, count in zip(user_ids, counts, strict=True) if count}


async def join(user_id: int, socket_id: str) -> None:
    """A socket of this user opened here (called before its catch-up is read)."""
    global _refresher
    _held[socket_id] = user_id
    await asyncio.to_thread(_write_presence, {socket_id: user_id})
    if _refresher is None or _refresher.done():
        _refresher = asyncio.get_running_loop().create_task(_refresh_presence())


async def leave(user_id: int, socket_id: str) -> None:
    _held.pop(socket_id, None)
    client = metrics.redis_client("channels")
    if client is not None:
        try:
            await asyncio.to_thread(client.zrem, key_of(user_id), socket_id)
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
            pipeline.zadd(key_of(user_id), {socket_id: expires})
            pipeline.zremrangebyscore(key_of(user_id), "-inf", time.time())
            pipeline.expire(key_of(user_id), int(PRESENCE_TTL_SECONDS) + 5)
        pipeline.execute()
    except Exception:
        logger.warning("Could not write presence for %d socket(s)", len(sockets), exc_info=True)


async def _refresh_presence() -> None:
    while _held:
        await asyncio.sleep(PRESENCE_REFRESH_SECONDS)
        await asyncio.to_thread(_write_presence, dict(_held))
