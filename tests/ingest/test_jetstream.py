"""The runner against the machine's NATS server with JetStream: a durable consumer,
acknowledgements after the commit, dead letters, lag, and one consumer at a time."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from collections.abc import Sequence

import pytest
from django.db import OperationalError

from achievements.models import Event
from ingest import runner
from ingest.models import ConsumerState, Rejected
from ingest.sources import JetStreamSource
from tests.factories import make_images_badge
from tests.integration.stack import port_open, require

NATS = "nats://127.0.0.1:4222"
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def stream():
    """A stream and prefix of this test's own on the shared server, deleted after."""
    require(
        port_open("127.0.0.1", 4222),
        "NATS with JetStream on 127.0.0.1:4222",
        "Start it (docs/guide.md lists the services) or run with CI=true make test.",
    )
    name = f"T{uuid.uuid4().hex[:12].upper()}"
    yield name, f"test.{name.lower()}"

    async def delete() -> None:
        import nats

        connection = await nats.connect(NATS)
        with contextlib.suppress(Exception):
            await connection.jetstream().delete_stream(name)
        await connection.close()

    asyncio.run(delete())


def source(stream: tuple[str, str], durable: str = "ingest") -> JetStreamSource:
    name, prefix = stream
    return JetStreamSource(
        servers=[NATS],
        stream=name,
        prefix=prefix,
        durable=durable,
        filter_subject=f"{prefix}.>",
        ack_wait=5.0,
        max_age_days=1,
    )


def publish(prefix: str, documents: Sequence[object], producer: str = "shop") -> None:
    async def go() -> None:
        import nats

        connection = await nats.connect(NATS)
        jetstream = connection.jetstream()
        for document in documents:
            data = document if isinstance(document, bytes) else json.dumps(document).encode()
            await jetstream.publish(f"{prefix}.{producer}", data)
        await connection.close()

    asyncio.run(go())


class Running:
    """The runner in a thread of its own, as `manage.py ingest` runs it."""

    def __init__(self, the_source: JetStreamSource, batch_size: int = 50) -> None:
        self.source = the_source
        self.loop = asyncio.new_event_loop()
        self.stopping = asyncio.Event()
        self.error: BaseException | None = None

        def main() -> None:
            try:
                self.loop.run_until_complete(
                    runner.run(self.source, batch_size=batch_size, stopping=self.stopping)
                )
            except BaseException as exc:  # noqa: BLE001 (reported by stop())
                self.error = exc

        self.thread = threading.Thread(target=main, daemon=True)
        self.thread.start()
        # Producers publish once the stream and the consumer exist (the runner makes them).
        wait_for(lambda: self.error is not None or self.source.subscription is not None)
        if self.error:
            raise self.error

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.stopping.set)
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()
        if self.error:
            raise self.error


def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except OperationalError as exc:  # SQLite's in-memory test database, busy
            if "locked" not in str(exc):
                raise
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def event(n: int, user: str = "u-1") -> dict:
    return {
        "event_id": f"e-{n}",
        "event_type": "image.posted",
        "user_id": user,
        "occurred_at": "2026-12-01T10:00:00Z",
        "payload": {"image_id": n},
    }


def consumer_counts(stream: tuple[str, str], durable: str = "ingest") -> tuple[int, int]:
    async def go() -> tuple[int, int]:
        import nats

        connection = await nats.connect(NATS)
        info = await connection.jetstream().consumer_info(stream[0], durable)
        await connection.close()
        return int(info.num_pending), int(info.num_ack_pending)

    return asyncio.run(go())


def test_events_from_the_stream_are_recorded_once_and_acknowledged_after(stream):
    make_images_badge(threshold=3)
    running = Running(source(stream))
    try:
        documents = [event(n, user=f"u-{n % 3}") for n in range(120)]
        publish(stream[1], documents + documents[:10])  # ten sent twice
        publish(stream[1], [b"{broken", {"event_id": "x-1"}])
        wait_for(lambda: Event.objects.count() == 120 and Rejected.objects.count() == 2)
        wait_for(lambda: consumer_counts(stream) == (0, 0))  # all acknowledged
    finally:
        running.stop()
    assert Event.objects.filter(producer="shop", source="stream").count() == 120
    assert {r.field for r in Rejected.objects.all()} == {"body", "event_type"}
    assert [r.sequence for r in Rejected.objects.order_by("sequence")] == [131, 132]
    state = ConsumerState.objects.get(name="ingest")
    assert state.stream == stream[0] and state.holder


def test_a_consumer_restarted_goes_on_where_it_stopped(stream):
    make_images_badge(threshold=3)
    running = Running(source(stream))
    publish(stream[1], [event(n) for n in range(30)])
    wait_for(lambda: Event.objects.count() == 30)
    running.stop()
    publish(stream[1], [event(n) for n in range(30, 60)])  # while it is down
    running = Running(source(stream))
    try:
        wait_for(lambda: Event.objects.count() == 60)
        wait_for(lambda: consumer_counts(stream) == (0, 0))
    finally:
        running.stop()


def test_the_database_down_for_a_while_keeps_the_batch_and_its_order(stream, monkeypatch):
    make_images_badge(threshold=3)
    from ingest import pipeline

    real_take = pipeline.take
    failures: list[int] = []

    def flaky(batch):
        if len(failures) < 3:
            failures.append(len(batch))
            raise OperationalError("the database is restarting")
        return real_take(batch)

    monkeypatch.setattr(pipeline, "take", flaky)
    running = Running(source(stream))
    try:
        publish(stream[1], [event(n) for n in range(20)])
        wait_for(lambda: Event.objects.count() == 20)
    finally:
        running.stop()
    assert len(failures) == 3
    # Recorded in stream order: the batch was retried, not skipped past.
    recorded = list(Event.objects.order_by("pk").values_list("event_id", flat=True))
    assert recorded == [f"e-{n}" for n in range(20)]


def test_lag_is_reported_while_it_falls_behind(stream, monkeypatch):
    make_images_badge(threshold=3)
    monkeypatch.setattr(runner, "LAG_EVERY_SECONDS", 0.2)
    the_source = source(stream)
    asyncio.run(the_source.set_up())  # what `manage.py ingest --set-up` does
    publish(stream[1], [event(n) for n in range(300)])  # before the consumer runs
    running = Running(the_source, batch_size=10)
    try:
        wait_for(lambda: ConsumerState.objects.filter(name="ingest", pending__gt=0).exists())
        wait_for(lambda: Event.objects.count() == 300)
        wait_for(lambda: ConsumerState.objects.filter(name="ingest", pending=0).exists())
    finally:
        running.stop()


def test_a_message_that_breaks_recording_is_a_dead_letter_and_the_rest_go_on(stream, monkeypatch):
    make_images_badge(threshold=3)
    from ingest import pipeline

    real_take = pipeline.take

    def breaks_on_e7(batch):
        if any(b'"e-7"' in message.data for message in batch):
            raise ValueError("a bug that only this message reaches")
        return real_take(batch)

    monkeypatch.setattr(pipeline, "take", breaks_on_e7)
    running = Running(source(stream))
    try:
        publish(stream[1], [event(n) for n in range(12)])
        wait_for(lambda: Event.objects.count() == 11 and Rejected.objects.count() == 1)
        wait_for(lambda: consumer_counts(stream) == (0, 0))
    finally:
        running.stop()
    rejected = Rejected.objects.get()
    assert rejected.event_id == "e-7" and rejected.field == "message"
    assert "could not be recorded (ValueError)" in rejected.problem


def test_a_producer_name_the_recording_would_refuse_is_a_dead_letter(stream):
    make_images_badge(threshold=3)
    running = Running(source(stream))
    try:
        publish(stream[1], [event(1)], producer="_bad")
        publish(stream[1], [event(2)])
        wait_for(lambda: Event.objects.count() == 1 and Rejected.objects.count() == 1)
    finally:
        running.stop()
    assert Rejected.objects.get().field == "subject"
