"""The stream in: JetStream events/s recorded by `ingest`, and recorded and evaluated.

Run from the project root (needs PostgreSQL and Redis on 127.0.0.1, and
nats-server installed):

    .venv/bin/python bench/stream.py [--events 20000] [--repeats 3]

The stack is the production shape on this one machine: PostgreSQL, Redis,
a private nats-server with JetStream (file storage), the Procfile's
`ingest` (batches of 500) and one Celery worker (2 processes) evaluating.
The workload: 1,000 users linked to the producer's ids, Zipf-like activity
(a few users send most events), visits to 12 places (the demo's distinct and
count badges), 5 % of the messages sent twice (at-least-once producers).

Each run publishes --events messages while `ingest` is stopped (a backlog,
as after an outage or a deploy), starts it, and times from the first event's
commit (received_at; the process's start-up is left out) to the last one's,
and to the last evaluation (processed_at).
Then the same runs again with no worker running: recording alone, as
bench/ingestion.py measures the HTTP API. The floor is this machine's
JetStream alone: a pull consumer in this process fetching the same backlog
in batches of 500 and acknowledging it, recording nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import run_script, write_results  # noqa: E402

USERS = 1000
SETUP = """
from django.contrib.auth import get_user_model
from achievements.models import ExternalIdentity
User = get_user_model()
users = User.objects.bulk_create(User(username=f"s{{n}}") for n in range({users}))
ExternalIdentity.objects.bulk_create(
    ExternalIdentity(external_id=f"shop-{{n}}", user=user) for n, user in enumerate(users)
)
"""
TIMES = (
    "SELECT count(*), min(received_at), max(received_at), max(processed_at), "
    "count(processed_at) FROM achievements_event WHERE producer = 'shop' AND event_id LIKE %s"
)


def messages(run: int, count: int) -> list[bytes]:
    rng = random.Random(run)
    weights = [1 / (rank + 1) for rank in range(USERS)]
    users = rng.choices(range(USERS), weights=weights, k=count)
    out = []
    for n, user in enumerate(users):
        document = {
            "event_id": f"r{run}-{n}",
            "event_type": "visit.created",
            "user_id": f"shop-{user}",
            "occurred_at": "2026-12-01T10:00:00Z",
            "payload": {"place_id": rng.randrange(12)},
        }
        out.append(json.dumps(document).encode())
    duplicates = rng.sample(out, count // 20)
    return out + duplicates


async def publish(url: str, data: list[bytes]) -> None:
    import nats

    connection = await nats.connect(url)
    jetstream = connection.jetstream()
    for start in range(0, len(data), 1000):
        acks = [
            await jetstream.publish_async(f"accolade.events.shop.p{n % 4}", payload)
            for n, payload in enumerate(data[start : start + 1000])
        ]
        await asyncio.gather(*acks)
    await connection.close()


async def floor(url: str, count: int) -> float:
    """Messages/s a bare pull consumer fetches and acknowledges here."""
    import nats
    from nats.js.api import ConsumerConfig, StreamConfig

    connection = await nats.connect(url)
    jetstream = connection.jetstream()
    await jetstream.add_stream(StreamConfig(name="FLOOR", subjects=["floor.>"]))
    data = [b'{"event_id": "x"}' * 10] * count
    acks = [await jetstream.publish_async("floor.shop", payload) for payload in data]
    await asyncio.gather(*acks)
    subscription = await jetstream.pull_subscribe(
        "floor.>", durable="floor", stream="FLOOR", config=ConsumerConfig(ack_wait=30)
    )
    taken = 0
    began = time.perf_counter()
    while taken < count:
        batch = await subscription.fetch(500, timeout=5)
        for message in batch:
            await message.ack()
        await connection.flush()
        taken += len(batch)
    seconds = time.perf_counter() - began
    await jetstream.delete_stream("FLOOR")
    await connection.close()
    return count / seconds


def ingest_run(topology, run: int, events: int, *, evaluated: bool) -> tuple[float, float]:
    """Start `ingest` on the backlog of run `run`, wait for its events to be
    recorded (and evaluated), stop it; the seconds from the first commit to
    the last one, and to the last evaluation (the process's start-up is not
    the stream's cost)."""
    ingest = topology.start_procfile("ingest", r"Ingesting")
    deadline = time.monotonic() + 600
    while True:
        [(count, first, last, done, evaluated_count)] = topology.query(TIMES, (f"r{run}-%",))
        if count == events and (evaluated_count == events or not evaluated):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"{count} recorded, {evaluated_count} evaluated")
        time.sleep(0.2)
    topology.kill(ingest)
    topology.processes.remove(ingest)
    return (last - first).total_seconds(), ((done or last) - first).total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.events < 1000 or args.repeats < 1:
        parser.error("--events must be at least 1000 and --repeats at least 1")

    from tests.integration.stack import Topology

    recorded: list[float] = []
    evaluated: list[float] = []
    floors: list[float] = []
    alone: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        topology = Topology(Path(tmp), extra_env={"ACCOLADE_LOG_LEVEL": "WARNING"})
        try:
            topology.start(workers=1, concurrency=2)
            topology.start_nats()
            url = f"nats://127.0.0.1:{topology.nats_port}"
            topology.python(SETUP.format(users=USERS))
            topology.python(
                "from django.core.management import call_command; "
                "call_command('ingest', set_up=True)"
            )
            for run in range(args.repeats + 1):  # the first warms up
                data = messages(run, args.events)
                asyncio.run(publish(url, data))
                to_record, to_evaluate = ingest_run(topology, run, args.events, evaluated=True)
                if run == 0:
                    print(f"  warm-up: {args.events / to_record:,.0f} events/s recorded")
                    continue
                recorded.append(args.events / to_record)
                evaluated.append(args.events / to_evaluate)
                floors.append(asyncio.run(floor(url, args.events)))
                print(
                    f"  run {run}: {recorded[-1]:8,.0f} events/s recorded, "
                    f"{evaluated[-1]:8,.0f} recorded and evaluated; "
                    f"floor {floors[-1]:8,.0f} messages/s",
                    flush=True,
                )
            # The same runs with no worker evaluating: recording alone, as the
            # API's ingestion figure is measured.
            for worker in list(topology.workers):
                topology.kill(worker)
                topology.processes.remove(worker)
            topology.workers.clear()
            for run in range(args.repeats + 1, 2 * args.repeats + 1):
                asyncio.run(publish(url, messages(run, args.events)))
                to_record, _ = ingest_run(topology, run, args.events, evaluated=False)
                alone.append(args.events / to_record)
                print(f"  run {run}, no worker: {alone[-1]:8,.0f} events/s recorded", flush=True)
        except Exception:
            print(topology.logs())
            raise
        finally:
            topology.stop()

    result = {
        "recorded": statistics.median(recorded),
        "recorded_and_evaluated": statistics.median(evaluated),
        "floor_fetch_and_ack": statistics.median(floors),
        "recorded_without_a_worker": statistics.median(alone),
    }
    print(
        f"JetStream in, {args.events:,} events per run (+5 % duplicates), median of {args.repeats}"
    )
    print(f"  recorded by ingest          {result['recorded']:8,.0f} events/s")
    print(f"  recorded and evaluated      {result['recorded_and_evaluated']:8,.0f} events/s")
    print(f"  recorded, no worker running {result['recorded_without_a_worker']:8,.0f} events/s")
    print(f"  floor: fetch and ack alone  {result['floor_fetch_and_ack']:8,.0f} messages/s")
    share = result["recorded_without_a_worker"] / result["floor_fetch_and_ack"]
    print(f"  recorded with no worker, as a share of the floor: {share:.0%}")
    write_results(
        "stream",
        {
            "events_per_run": args.events,
            "duplicates_per_run": args.events // 20,
            "repeats": args.repeats,
            "events_per_second": {k: round(v, 1) for k, v in result.items()},
        },
    )


if __name__ == "__main__":
    run_script(main)
