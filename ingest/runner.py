"""The `ingest` process: fetch a batch, record it, acknowledge it; in order, and alone.

- **Acknowledged after the commit.** A batch is acknowledged only once the
  pipeline has recorded its events (and written down its refusals). Killed
  in between, the batch is handed out again after the consumer's ack wait
  and its events are duplicates: nothing lost, nothing doubled.
- **In order.** One batch at a time, in stream order; a batch the database
  cannot take is retried here (kept from redelivery meanwhile) rather than
  skipped, so no later message of the same user overtakes it.
- **Alone.** Two processes pulling from one durable consumer would share
  its messages and break that order; on PostgreSQL each process first takes
  an advisory lock named after the consumer, so a second `ingest` is a hot
  standby that takes over within seconds of the first dying. (Scale out by
  partitions instead: one consumer per filter subject, docs/scaling.md.)
- **Lag is reported** every few seconds (ingest.pipeline.report_lag), for
  /metrics and the admin.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
import zlib
from typing import Any

from asgiref.sync import sync_to_async
from django.db import DatabaseError, close_old_connections, connection

from ingest import pipeline
from ingest.sources import Batch, Source

logger = logging.getLogger(__name__)

LAG_EVERY_SECONDS = 5.0
LEADER_POLL_SECONDS = 2.0
RETRY_FIRST, RETRY_MOST = 0.5, 10.0
# A batch that waited this long behind the one before has its redelivery clock
# restarted before it is recorded.
KEEP_AFTER_SECONDS = 2.0


def _take(batch: list[pipeline.Incoming]) -> list[pipeline.Outcome]:
    try:
        return pipeline.take(batch)
    finally:
        close_old_connections()


def _take_alone(batch: list[pipeline.Incoming]) -> list[pipeline.Outcome]:
    """Each message on its own; one that raises (not the database) is a dead letter."""
    outcomes = []
    try:
        for message in batch:
            try:
                [outcome] = pipeline.take([message])
            except DatabaseError:
                raise
            except Exception as exc:
                logger.exception(
                    "Stream message %s #%d breaks recording", message.stream, message.sequence
                )
                outcome = pipeline.reject(
                    message,
                    "message",
                    f"could not be recorded ({type(exc).__name__}); see the ingest log",
                )
            outcomes.append(outcome)
        return outcomes
    finally:
        close_old_connections()


def _report(source: Source, lag: Any, holder: str) -> None:
    try:
        pipeline.report_lag(
            source.name,
            stream=getattr(source, "stream", ""),
            filter_subject=getattr(source, "filter_subject", ""),
            pending=lag.pending,
            unacknowledged=lag.unacknowledged,
            last_sequence=lag.last_sequence,
            holder=holder,
        )
    finally:
        close_old_connections()


class Leadership:
    """The right to consume one durable consumer: a PostgreSQL advisory lock on a
    connection of its own, held while it lives (a dead process's goes with
    it). Elsewhere (SQLite, the embedded mode) there is one process anyway."""

    def __init__(self, name: str) -> None:
        self.key = zlib.crc32(f"accolade-ingest:{name}".encode())
        self.connection: Any = None

    async def acquire(self, stopping: asyncio.Event) -> bool:
        """Wait for the lock; False if asked to stop first."""
        if connection.vendor != "postgresql":
            return True
        import psycopg

        announced = False
        while not stopping.is_set():
            try:
                if self.connection is None or self.connection.closed:
                    self.connection = await psycopg.AsyncConnection.connect(
                        _conninfo(), autocommit=True
                    )
                cursor = await self.connection.execute(
                    "SELECT pg_try_advisory_lock(%s)", (self.key,)
                )
                row = await cursor.fetchone()
                if row and row[0]:
                    return True
                if not announced:
                    logger.info("Another ingest process holds this consumer; standing by")
                    announced = True
            except Exception as exc:
                logger.warning("Could not reach PostgreSQL for the ingest lock: %s", exc)
                await self._drop()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), LEADER_POLL_SECONDS)
        return False

    async def still_held(self) -> bool:
        if connection.vendor != "postgresql":
            return True
        try:
            await self.connection.execute("SELECT 1")
            return True
        except Exception:
            await self._drop()
            return False

    async def _drop(self) -> None:
        if self.connection is not None:
            with contextlib.suppress(Exception):
                await self.connection.close()
            self.connection = None

    async def release(self) -> None:
        await self._drop()


def _conninfo() -> str:
    from psycopg.conninfo import make_conninfo

    settings_dict = connection.settings_dict
    parts = {
        "dbname": settings_dict["NAME"],
        "user": settings_dict.get("USER") or None,
        "password": settings_dict.get("PASSWORD") or None,
        "host": settings_dict.get("HOST") or None,
        "port": str(settings_dict.get("PORT") or "") or None,
        "application_name": "accolade-ingest-lock",
    }
    return make_conninfo(**{k: v for k, v in parts.items() if v is not None})


async def run(source: Source, *, batch_size: int, stopping: asyncio.Event | None = None) -> None:
    """Consume until `stopping` is set (SIGTERM or SIGINT when run by the command)."""
    stopping = stopping or asyncio.Event()
    holder = f"{socket.gethostname()}:{os.getpid()}"
    leadership = Leadership(source.name)
    take = sync_to_async(_take, thread_sensitive=True)
    take_alone = sync_to_async(_take_alone, thread_sensitive=True)
    report = sync_to_async(_report, thread_sensitive=True)
    while not stopping.is_set():
        if not await leadership.acquire(stopping):
            break
        logger.info("Consuming %s as %s", source.name, holder)
        try:
            await source.connect()
        except Exception as exc:
            logger.warning("Could not connect to the stream: %s; trying again", exc)
            await source.close()
            await asyncio.sleep(1.0)
            continue
        try:
            await _consume(
                source, leadership, batch_size, stopping, (take, take_alone), report, holder
            )
        finally:
            await source.close()
    await leadership.release()


async def _consume(
    source: Source,
    leadership: Leadership,
    batch_size: int,
    stopping: asyncio.Event,
    takers: tuple[Any, Any],
    report: Any,
    holder: str,
) -> None:
    reported = 0.0

    async def fetch() -> Batch | None:
        try:
            return await source.fetch(batch_size, timeout=1.0)
        except Exception as exc:
            # The server restarting, or the connection lost: the client
            # reconnects by itself; ask again shortly.
            logger.warning("Could not fetch from the stream: %s", exc)
            await asyncio.sleep(0.5)
            return None

    # The next batch is fetched while this one is recorded: the stream's
    # round trips overlap the database's. It is recorded after this one, so
    # the order holds; if this one is retried for long, it is kept too.
    upcoming = asyncio.create_task(fetch())
    try:
        while not stopping.is_set():
            if time.monotonic() - reported > LAG_EVERY_SECONDS:
                reported = time.monotonic()
                if not await leadership.still_held():
                    logger.warning("Lost the ingest lock with its connection; standing by again")
                    return
                try:
                    await report(source, await source.lag(), holder)
                except Exception as exc:
                    logger.warning("Could not report the consumer's lag: %s", exc)
            batch = await upcoming
            upcoming = asyncio.create_task(fetch())
            if batch is not None and not await _record(
                source, batch, takers, stopping, leadership, upcoming
            ):
                return
    finally:
        # What was fetched and not recorded goes back at once (not after the
        # ack wait), so whoever consumes next starts from it, in order.
        upcoming.cancel()
        with contextlib.suppress(BaseException):
            following = await upcoming
            if following is not None:
                await _give_back(source, following)


async def _give_back(source: Source, batch: Batch) -> None:
    try:
        await source.release(batch)
    except Exception as exc:
        logger.warning("Could not hand %d messages back: %s", len(batch.incoming), exc)


async def _record(
    source: Source,
    batch: Batch,
    takers: tuple[Any, Any],
    stopping: asyncio.Event,
    leadership: Leadership,
    upcoming: asyncio.Task[Batch | None] | None = None,
) -> bool:
    """Record the batch, retrying while the database fails, then acknowledge it;
    False (the batch handed back) if this process is to stop consuming."""
    take, take_alone = takers
    wait = RETRY_FIRST
    while True:
        if stopping.is_set() or not await leadership.still_held():
            await _give_back(source, batch)
            return False
        if time.monotonic() - batch.fetched_at > KEEP_AFTER_SECONDS:
            with contextlib.suppress(Exception):
                await source.keep(batch)  # waited behind the last one: restart its clock
        try:
            outcomes = await take(batch.incoming)
            break
        except DatabaseError:
            logger.exception(
                "Could not record %d stream messages; trying again in %.1f s",
                len(batch.incoming),
                wait,
            )
        except Exception:
            # Not the database: something in a message breaks recording. Take
            # them one at a time; each that still fails is a dead letter.
            logger.exception("Recording a batch failed; taking its messages one at a time")
            try:
                outcomes = await take_alone(batch.incoming)
                break
            except DatabaseError:
                logger.exception("The database failed too; trying again in %.1f s", wait)
        try:
            await source.keep(batch)
            following = upcoming.result() if upcoming and upcoming.done() else None
            if following is not None:
                await source.keep(following)
        except Exception as exc:
            logger.warning("Could not keep the batch from redelivery: %s", exc)
        await asyncio.sleep(wait)
        wait = min(wait * 2, RETRY_MOST)
    for message, outcome in zip(batch.incoming, outcomes, strict=True):
        if outcome.status == "rejected":
            logger.warning(
                "Refused stream message %s #%d: %s %s",
                message.stream,
                message.sequence,
                outcome.field,
                outcome.problem,
            )
    try:
        await source.acknowledge(batch)
    except Exception as exc:
        # Recorded, not acknowledged: handed out again, and all duplicates then.
        logger.warning("Could not acknowledge %d messages: %s", len(batch.incoming), exc)
    return True


def install_signal_handlers(stopping: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
