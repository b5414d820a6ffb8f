"""The stream in, on the real topology: the Procfile's `ingest` against a private
nats-server with JetStream, killed with SIGKILL mid-batch, with the server
restarted mid-stream, and with a standby taking over. Nothing lost, nothing doubled."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from tests.integration.stack import Topology

pytestmark = pytest.mark.topology

EVENTS = (
    "SELECT count(*), count(DISTINCT event_id) FROM achievements_event WHERE producer = 'shop'"
)


@pytest.fixture
def topology(tmp_path):
    topology = Topology(tmp_path, extra_env={"ACCOLADE_INGEST_ACK_WAIT_SECONDS": "3"})
    try:
        topology.start(workers=1)
        topology.start_nats()
        topology.python(
            "from django.core.management import call_command; call_command('ingest', set_up=True)"
        )
        yield topology
    except Exception:
        print(topology.logs())
        raise
    finally:
        topology.stop()


def document(n: int) -> bytes:
    return json.dumps(
        {
            "event_id": f"s-{n}",
            "event_type": "visit.created",
            "user_id": f"shop-user-{n % 50}",
            "occurred_at": "2026-12-01T10:00:00Z",
            "payload": {"place_id": n % 12},
        }
    ).encode()


def publish(topology: Topology, numbers: range) -> None:
    async def go() -> None:
        import nats

        connection = await nats.connect(f"nats://127.0.0.1:{topology.nats_port}")
        jetstream = connection.jetstream()
        acks = [
            await jetstream.publish_async(f"accolade.events.shop.p{n % 4}", document(n))
            for n in numbers
        ]
        await asyncio.gather(*acks)
        await connection.close()

    asyncio.run(go())


def recorded(topology: Topology) -> tuple[int, int]:
    [(count, distinct)] = topology.query(EVENTS)
    return count, distinct


def wait_for(topology: Topology, what: str, condition, timeout: float = 120) -> float:
    began = time.monotonic()
    while not condition():
        if time.monotonic() - began > timeout:
            raise AssertionError(
                f"{what} within {timeout} s: {recorded(topology)}\n{topology.logs()}"
            )
        time.sleep(0.1)
    return time.monotonic() - began


def test_ingest_killed_mid_batch_loses_nothing_and_doubles_nothing(topology):
    total = 20_000
    publish(topology, range(total))
    ingest = topology.start_procfile("ingest", r"Ingesting")
    wait_for(topology, "some events recorded", lambda: recorded(topology)[0] >= 2_000)
    topology.kill(ingest)  # SIGKILL: batches fetched and not acknowledged
    at_kill = recorded(topology)[0]
    assert at_kill < total, "all recorded before the kill: make the run longer"
    topology.start_procfile("ingest", r"Ingesting")
    took = wait_for(topology, "every event recorded", lambda: recorded(topology) == (total, total))
    print(f"killed at {at_kill:,} recorded; the rest in {took:.1f} s after the restart")


def test_nats_restarted_mid_stream(topology):
    publish(topology, range(5_000))
    topology.start_procfile("ingest", r"Ingesting")
    wait_for(topology, "some events recorded", lambda: recorded(topology)[0] >= 500)
    topology.stop_nats()  # the server goes away mid-stream (SIGTERM; its store on disk)
    time.sleep(2)
    topology.start_nats()  # back on the same port and store
    publish(topology, range(5_000, 10_000))
    took = wait_for(
        topology, "every event recorded", lambda: recorded(topology) == (10_000, 10_000)
    )
    print(f"all 10,000 recorded {took:.1f} s after the server came back")


def test_a_second_ingest_stands_by_and_takes_over_when_the_first_dies(topology):
    first = topology.start_procfile("ingest", r"Ingesting")
    second = topology.start_procfile("ingest", r"Ingesting")
    second.wait_for_output("standing by", timeout=30)
    publish(topology, range(1_000))
    wait_for(topology, "the first batch", lambda: recorded(topology) == (1_000, 1_000))
    assert "Consuming" not in second.output()
    topology.kill(first)
    publish(topology, range(1_000, 2_000))
    took = wait_for(topology, "the standby's", lambda: recorded(topology) == (2_000, 2_000))
    assert "Consuming" in second.output()
    print(f"the standby took over and recorded the rest in {took:.1f} s")
