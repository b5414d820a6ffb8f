"""Webhooks: signed deliveries/s from the outbox to a real receiver, against the floor.

Run from the project root (needs PostgreSQL and Redis on 127.0.0.1):

    .venv/bin/python bench/webhooks.py [--messages 4000] [--repeats 3]

The stack is the production shape: PostgreSQL, Redis, and the Procfile's
`webhooks` worker (4 prefork processes, ACCOLADE_WEBHOOK_MAX_IN_FLIGHT 8).
The receiver is a separate process (uvicorn, one ASGI app answering 204,
after a delay for the "slow" rows). Each run writes --messages messages with
one delivery each, spread over the endpoints, as the outbox does, then asks
for the sends and times them to the last delivery's commit (delivered_at,
read from the database). Each try is signed, POSTed, and recorded (an
attempt row and the delivery's status), which is what the figure costs.

The floor is the same receiver driven from this process by urllib3 alone
(8 threads, kept-alive connections, no signing, no database): the most a
Python sender gets from it here.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import run_script, write_results  # noqa: E402

RECEIVER = """
import asyncio, sys
DELAY = float(sys.argv[2])

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    if DELAY:
        await asyncio.sleep(DELAY)
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})

import uvicorn
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
            access_log=False, backlog=1024)
"""

LOAD = """
from django.utils import timezone
from webhooks.models import Delivery, Endpoint, Message
Endpoint.objects.all().delete()
Message.objects.all().delete()
endpoints = [Endpoint.objects.create(url={url!r} + f"/e{{n}}", kinds=["badge.unlocked"])
             for n in range({endpoints})]
now = timezone.now()
messages = Message.objects.bulk_create(
    Message(id=f"msg_bench_{{n}}", kind="badge.unlocked", created_at=now,
            payload={{"user": {{"id": n, "username": f"user{{n}}", "external_id": None}},
                      "badge": {{"key": "places_visited_5", "name": "5 Places Visited"}},
                      "tier": None, "cause": "rule", "event_ids": [f"visit-{{n}}"]}})
    for n in range({messages})
)
Delivery.objects.bulk_create(
    Delivery(message=m, endpoint=endpoints[n % len(endpoints)], next_attempt_at=now)
    for n, m in enumerate(messages)
)
"""
SEND = "from webhooks.sending import send_due; print(send_due())"
DELIVERED = "SELECT count(*), max(delivered_at) FROM webhooks_delivery WHERE status = 'delivered'"
STARTED = "SELECT now()"


def start_receiver(port: int, delay: float, log: Path) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-c", RECEIVER, str(port), str(delay)],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    from tests.integration.stack import port_open

    deadline = time.monotonic() + 20
    while not port_open("127.0.0.1", port):
        if time.monotonic() > deadline or process.poll() is not None:
            raise RuntimeError(f"the receiver did not start: {log.read_text()}")
        time.sleep(0.05)
    return process


def floor(url: str, requests: int) -> float:
    """Requests/s from urllib3 alone, 8 threads on kept-alive connections."""
    import urllib3

    pool = urllib3.HTTPConnectionPool("127.0.0.1", int(url.rsplit(":", 1)[1]), maxsize=8)
    body = b'{"type":"badge.unlocked","data":{}}'

    def one(_: int) -> int:
        return pool.request("POST", "/floor", body=body, retries=False).status

    with ThreadPoolExecutor(8) as threads:
        list(threads.map(one, range(200)))  # warm
        started = time.perf_counter()
        statuses = list(threads.map(one, range(requests)))
        seconds = time.perf_counter() - started
    assert set(statuses) == {204}, set(statuses)
    pool.close()
    return requests / seconds


def deliver(topology, url: str, messages: int, endpoints: int) -> float:
    topology.python(LOAD.format(url=url, endpoints=endpoints, messages=messages))
    [(began,)] = topology.query(STARTED)
    topology.python(SEND)
    deadline = time.monotonic() + 600
    while True:
        [(count, last)] = topology.query(DELIVERED)
        if count == messages:
            return messages / (last - began).total_seconds()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{count} of {messages} delivered\n{topology.logs()}")
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.messages < 100 or args.repeats < 1:
        parser.error("--messages must be at least 100 and --repeats at least 1")

    from tests.integration.stack import Topology, free_port

    cases = [("fast receiver", 0.0, 1), ("fast receiver", 0.0, 4), ("50 ms receiver", 0.05, 1)]
    runs: dict[str, list[float]] = {}
    floors: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        topology = Topology(
            Path(tmp),
            extra_env={
                "ACCOLADE_WEBHOOK_ALLOW_PRIVATE_ADDRESSES": "1",
                "ACCOLADE_LOG_LEVEL": "WARNING",
            },
        )
        receivers: dict[float, tuple[str, subprocess.Popen]] = {}
        try:
            topology.start(workers=0)
            topology.start_procfile("webhooks", r"ready\.")
            for delay in sorted({case[1] for case in cases}):
                port = free_port()
                process = start_receiver(port, delay, Path(tmp) / f"receiver-{delay}.log")
                receivers[delay] = (f"http://127.0.0.1:{port}", process)
            deliver(topology, receivers[0.0][0], 500, 1)  # warm-up
            for _ in range(args.repeats):
                for name, delay, endpoints in cases:
                    label = f"{name}, {endpoints} endpoint{'s' if endpoints > 1 else ''}"
                    rate = deliver(topology, receivers[delay][0], args.messages, endpoints)
                    runs.setdefault(label, []).append(rate)
                    print(f"  {label:32} {rate:8.0f} deliveries/s", flush=True)
                for delay, (url, _) in receivers.items():
                    label = f"floor: urllib3 alone, {delay * 1000:.0f} ms receiver"
                    floors.setdefault(label, []).append(floor(url, args.messages))
                    print(f"  {label:32} {floors[label][-1]:8.0f} requests/s", flush=True)
        except Exception:
            print(topology.logs())
            raise
        finally:
            for _, process in receivers.values():
                process.terminate()
                process.wait(timeout=10)
            topology.stop()

    medians = {k: statistics.median(v) for k, v in runs.items()}
    floor_medians = {k: statistics.median(v) for k, v in floors.items()}
    fast_floor = floor_medians["floor: urllib3 alone, 0 ms receiver"]
    print(f"webhook deliveries, {args.messages:,} messages per run, median of {args.repeats}")
    for label, value in medians.items():
        print(f"  {label:32} {value:8.0f} deliveries/s")
    for label, value in floor_medians.items():
        print(f"  {label:32} {value:8.0f} requests/s")
    ratio = medians["fast receiver, 1 endpoint"] / fast_floor
    print(f"  1 endpoint, fast receiver, as a share of the floor: {ratio:.0%}")
    write_results(
        "webhooks",
        {
            "messages_per_run": args.messages,
            "repeats": args.repeats,
            "deliveries_per_second": {k: round(v, 1) for k, v in medians.items()},
            "floor_requests_per_second": {k: round(v, 1) for k, v in floor_medians.items()},
            "share_of_floor_1_endpoint": round(ratio, 3),
        },
    )


if __name__ == "__main__":
    run_script(main)
