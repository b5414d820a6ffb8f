"""Where stream messages come from: what a broker's consumer must do for ingest.

The runner (ingest.runner) asks a Source for a batch, hands it to the
pipeline, and acknowledges it once its events are committed. A Source for
NATS JetStream is here; one for Kafka is a sibling of the same shape
(docs/scaling.md says how): `fetch` is `consumer.poll`, `acknowledge`
commits the offsets, `keep` is nothing (Kafka has no redelivery timer; the
consumer's session keeps its partitions), `release` seeks back to the
batch's first offsets, and `lag` is the end offsets minus the committed ones.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ingest.pipeline import Incoming, producer_of

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Lag:
    pending: int  # in the stream, not yet handed to this consumer
    unacknowledged: int  # handed out, not yet acknowledged
    last_sequence: int  # the last position handed out


class Batch(Protocol):
    """Messages fetched together, acknowledged together."""

    @property
    def incoming(self) -> list[Incoming]: ...

    @property
    def fetched_at(self) -> float: ...  # time.monotonic()


class Source(Protocol):
    name: str  # the durable consumer's (or consumer group's) name

    async def connect(self) -> None: ...

    async def fetch(self, size: int, timeout: float) -> Batch | None:
        """Up to `size` messages in stream order, or None after `timeout` without any."""

    async def acknowledge(self, batch: Batch) -> None:
        """The batch is recorded: never hand it out again."""

    async def keep(self, batch: Batch) -> None:
        """The batch is still being worked on (a retry): do not hand it to another."""

    async def release(self, batch: Batch) -> None:
        """The batch will not be recorded here: hand it out again now, first."""

    async def lag(self) -> Lag: ...

    async def close(self) -> None: ...


# --- NATS JetStream -------------------------------------------------------------


@dataclass
class JetStreamBatch:
    messages: Sequence[Any]  # nats.aio.msg.Msg
    incoming: list[Incoming]
    fetched_at: float


class JetStreamSource:
    """A durable pull consumer of a JetStream stream.

    The stream (created if missing) holds `<prefix>.>`; the consumer takes
    `filter_subject` (all of it, or one producer's or one partition's
    subjects) in stream order, with explicit acknowledgements. A message not
    acknowledged within `ack_wait` seconds (its consumer died) is handed out
    again; the runner keeps a batch it is still retrying with `keep`.
    """

    def __init__(
        self,
        *,
        servers: list[str],
        stream: str,
        prefix: str,
        durable: str,
        filter_subject: str,
        ack_wait: float,
        max_age_days: int,
    ) -> None:
        self.servers = servers
        self.stream = stream
        self.prefix = prefix
        self.name = durable
        self.filter_subject = filter_subject
        self.ack_wait = ack_wait
        self.max_age_days = max_age_days
        self.connection: Any = None
        self.subscription: Any = None
        self.closing = False

    async def connect(self) -> None:
        import nats
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType
        from nats.js.errors import NotFoundError

        async def disconnected() -> None:
            if not self.closing:
                logger.warning("Lost the connection to NATS; reconnecting")

        async def reconnected() -> None:
            logger.warning("Reconnected to NATS")

        async def error(exc: Exception) -> None:
            logger.warning("NATS: %s", exc)

        self.connection = await nats.connect(
            servers=self.servers,
            name=f"accolade-ingest {self.name}",
            max_reconnect_attempts=-1,  # forever: a restarted server is found again
            reconnect_time_wait=0.5,
            disconnected_cb=disconnected,
            reconnected_cb=reconnected,
            error_cb=error,
        )
        jetstream = self.connection.jetstream()
        try:
            await jetstream.stream_info(self.stream)
        except NotFoundError:
            await jetstream.add_stream(
                name=self.stream,
                subjects=[f"{self.prefix}.>"],
                storage=StorageType.FILE,
                max_age=self.max_age_days * 86400.0,
                duplicate_window=120.0,
            )
            logger.info("Created the stream %s for %s.>", self.stream, self.prefix)
        self.subscription = await jetstream.pull_subscribe(
            self.filter_subject,
            durable=self.name,
            stream=self.stream,
            config=ConsumerConfig(
                durable_name=self.name,
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=self.ack_wait,
                max_deliver=-1,
                filter_subject=self.filter_subject,
            ),
        )

    async def set_up(self) -> None:
        """Create the stream and the durable consumer if missing, and let go."""
        await self.connect()
        await self.close()

    async def fetch(self, size: int, timeout: float) -> JetStreamBatch | None:
        import nats.errors

        try:
            messages = await self.subscription.fetch(size, timeout=timeout)
        except nats.errors.TimeoutError:
            return None
        except nats.errors.Error as exc:
            # The server is restarting: the client reconnects by itself.
            logger.warning("Could not fetch from %s: %s", self.stream, exc)
            await asyncio.sleep(0.5)
            return None
        return JetStreamBatch(
            messages,
            [
                Incoming(
                    data=bytes(message.data),
                    producer=producer_of(message.subject, self.prefix),
                    stream=self.stream,
                    sequence=int(message.metadata.sequence.stream),
                    subject=message.subject,
                )
                for message in messages
            ],
            time.monotonic(),
        )

    async def acknowledge(self, batch: Batch) -> None:
        assert isinstance(batch, JetStreamBatch)
        for message in batch.messages:
            await message.ack()
        # On the wire before the next fetch; if they are lost all the same
        # (the server going down), the batch comes again and is all duplicates.
        await self.connection.flush(timeout=5)

    async def keep(self, batch: Batch) -> None:
        assert isinstance(batch, JetStreamBatch)
        for message in batch.messages:
            await message.in_progress()

    async def release(self, batch: Batch) -> None:
        assert isinstance(batch, JetStreamBatch)
        for message in batch.messages:
            await message.nak()
        await self.connection.flush(timeout=5)

    async def lag(self) -> Lag:
        info = await self.subscription.consumer_info()
        return Lag(
            pending=int(info.num_pending or 0),
            unacknowledged=int(info.num_ack_pending or 0),
            last_sequence=int(info.delivered.stream_seq if info.delivered else 0),
        )

    async def close(self) -> None:
        self.closing = True
        if self.connection is not None:
            await self.connection.close()
        self.connection = self.subscription = None
        self.closing = False
