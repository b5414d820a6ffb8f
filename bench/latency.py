"""End-to-end latency: from the producer's HTTP response to the frame on a real socket.

Run from the project root (needs PostgreSQL and Redis on 127.0.0.1):

    .venv/bin/python bench/latency.py [--users 1000] [--tabs 5] [--seconds 20] [--warm-up 3]
        [--rates 50,500] [--batches 1,10] [--web-processes 1] [--unlock-every 0] [--stagger]

It starts the production topology (a scratch PostgreSQL database, Redis, one
Celery worker with 2 processes, --web-processes Daphne processes), signs in --users users with
--tabs live sockets each, and posts events through `POST /api/v1/events` at
a steady 50, then 500 events/s, round-robin over the users: single events
at 50/s, and at 500/s batches of 10 (50 requests/s). One Daphne process on
two cores answers about 160 single-event requests/s at most
(bench/ingestion.py), so 500 single requests/s would measure the HTTP
queue, not the pipeline. Each event moves a counter badge, so the worker
pushes a frame with the new card to every socket of that user (a toast
rides in the same frame when an event unlocks something).

For every event and every socket of its user: the time from the
producer's response to the first frame showing that count or more (two
events of one user evaluated in one batch share a frame). p50, p95, p99 and
max over all of them, and the frames that never came: events whose count no
socket of the user ever showed. The clients run in a process of their own.
Each is split in two at the moment a worker claimed the event: response →
claimed (waiting for a drain) and claimed → frame (evaluation and the push).
With --unlock-every n a tiered badge on the same events unlocks a tier at
every user's n-th, 2n-th ... 10n-th event, so those frames carry a toast:
their latency is reported apart, with the toast frames counted against
those expected (users move in step, round-robin, so unlocks come in waves:
for one round in n every event unlocks). --stagger sends user i (i mod n)
events first, unmeasured, so that a steady 1 in n events of every round
unlocks instead.
Each rate first runs --warm-up seconds unmeasured (cold caches and
connections), and the measuring processes do not collect garbage while
they measure (bench.common.hold_still).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing
import re
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import hold_still, open_live_socket, run_script, write_results  # noqa: E402

SETUP = """
import json
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.sessions.backends.db import SessionStore
from django.utils import timezone
from achievements.models import Badge, BadgeRequirement, ExternalIdentity
from api.models import ApiKey
badge = Badge.objects.create(key="bench_ping", name="Bench ping")
BadgeRequirement.objects.create(badge=badge, event_type="bench.ping", threshold=10**9)
if {unlock_every}:  # every user's every n-th event unlocks a tier, with a toast
    tiered = Badge.objects.create(
        key="bench_tiers",
        name="Bench tiers",
        tiers=[
            {{"name": f"T{{k}}", "threshold": k * {unlock_every}}} for k in range(1, {tiers} + 1)
        ],
    )
    BadgeRequirement.objects.create(
        badge=tiered, event_type="bench.ping", threshold={unlock_every}
    )
User = get_user_model()
User.objects.bulk_create([User(username=f"lat-{{n}}", password="!") for n in range({users})])
rows = []
for user in User.objects.filter(username__startswith="lat-").order_by("pk"):
    ExternalIdentity.objects.create(external_id=user.username, user=user, linked_at=timezone.now())
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()
    rows.append([user.username, session.session_key])
print(json.dumps({{"key": ApiKey.issue("latency-bench")[1], "users": rows}}))
"""

COUNT = re.compile(r'id="badge-bench_ping".*?aria-valuetext="[^"]*?: (\d+) of', re.S)
TOAST = "data-toast"
TIERS = 10


def unlocks_tier(count: int, every: int) -> bool:
    """Whether a user's count-th event unlocks a tier of the bench's tiered badge
    (so that event's frame carries a toast); never with `every` 0 (no such badge)."""
    return every > 0 and count % every == 0 and 0 < count <= TIERS * every


def clients(
    bases: list[str], tabs: list[tuple[str, str]], ready: Any, stop: Any, out: Any
) -> None:
    """Open every socket; record when each first shows each count of its user's badge."""

    async def main() -> None:
        seen: dict[tuple[int, int], float] = {}  # (socket, count) → arrival
        toasts = [0]
        sockets: list[tuple[int, str, Any]] = []
        limit = asyncio.Semaphore(200)
        users_of = {user for user, _ in tabs}

        async def open_one(index: int, user: str, session: str) -> None:
            async with limit:
                # Socket n is tab n // users of user n % users: a user's tabs are
                # spread over the web processes, so a push reaches each of them.
                base = bases[(index // len(users_of)) % len(bases)]
                sockets.append((index, user, await open_live_socket(base, session)))

        async def listen(index: int, socket: Any) -> None:
            best = 0
            async for frame in socket:
                now = time.time()
                pushed = False
                for match in COUNT.finditer(frame):
                    pushed = True
                    count = int(match.group(1))
                    for n in range(best + 1, count + 1):
                        seen[(index, n)] = now
                    best = max(best, count)
                if pushed:  # not the catch-up of an earlier rate's toasts at connect
                    toasts[0] += frame.count(TOAST)

        await asyncio.gather(*(open_one(i, u, s) for i, (u, s) in enumerate(tabs)))
        tasks = [asyncio.create_task(listen(i, s)) for i, _, s in sockets]
        hold_still()
        ready.put(len(sockets))
        await asyncio.get_running_loop().run_in_executor(None, stop.get)
        await asyncio.sleep(3)  # the last frames
        users = {index: user for index, user, _ in sockets}
        out.put(([(users[i], n, t) for (i, n), t in seen.items()], toasts[0]))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*(s.close() for _, _, s in sockets), return_exceptions=True)

    asyncio.run(main())


def ping(user: str, count: int) -> dict[str, Any]:
    """The API event that takes `user`'s count of the bench's badge to `count`."""
    return {
        "event_id": f"ping-{user}-{count}",
        "user_id": user,
        "event_type": "bench.ping",
        "occurred_at": datetime.now(UTC).isoformat(),
        "payload": {},
    }


async def produce(
    bases: list[str],
    key: str,
    users: list[str],
    rate: float,
    seconds: float,
    offset: dict[str, int],
    batch: int = 1,
) -> list[tuple[str, int, float]]:
    """Post events at a steady rate, `batch` per request, round-robin over the web
    processes; (user, count after it, response time)."""
    import httpx

    total = int(rate * seconds) // batch
    done: list[tuple[str, int, float]] = []
    failures: list[str] = []
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    # No limit on waiting for a pooled connection: when the server falls behind,
    # the producer waits (and its later responses show it) instead of failing.
    timeout = httpx.Timeout(30, pool=None)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        started = time.monotonic()

        async def post(number: int) -> None:
            sent = []
            for n in range(number * batch, (number + 1) * batch):
                user = users[n % len(users)]
                offset[user] += 1
                sent.append((user, offset[user]))
            events = [ping(user, count) for user, count in sent]
            response = await client.post(
                f"{bases[number % len(bases)]}/api/v1/events",
                headers={"Authorization": f"Bearer {key}"},
                json=events[0] if batch == 1 else {"events": events},
            )
            answered = time.time()
            if response.status_code not in (200, 202, 207):
                failures.append(f"{response.status_code}: {response.text[:200]}")
                return
            done.extend((user, count, answered) for user, count in sent)

        tasks = []
        for number in range(total):
            delay = started + number * batch / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(post(number)))
        await asyncio.gather(*tasks)
    if failures:
        print(f"  {len(failures)} request(s) failed, e.g. {failures[0]}", flush=True)
    return done


def stagger(base: str, key: str, users: list[str], every: int, offset: dict[str, int]) -> int:
    """Send user i (i mod `every`) events first, unmeasured: their n-th events then
    fall in different rounds, so about 1 in `every` events of each round unlocks
    a tier (steady), instead of every event of one round in `every` (waves).
    The number of events sent."""
    import httpx

    events = []
    for index, user in enumerate(users):
        for _ in range(index % every):
            offset[user] += 1
            events.append(ping(user, offset[user]))
    with httpx.Client(timeout=60) as client:
        for start in range(0, len(events), 100):
            response = client.post(
                f"{base}/api/v1/events",
                headers={"Authorization": f"Bearer {key}"},
                json={"events": events[start : start + 100]},
            )
            response.raise_for_status()
    return len(events)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(share * len(ordered))) - 1))]


def run(
    users: int,
    tabs: int,
    seconds: float,
    rates: list[float],
    batches: list[int],
    webs: int = 1,
    warm_up: float = 3,
    unlock_every: int = 0,
    staggered: bool = False,
) -> dict[str, Any]:
    from tests.integration.stack import Topology

    with tempfile.TemporaryDirectory() as tmp:
        topology = Topology(
            Path(tmp),
            extra_env={
                "ACCOLADE_LOG_LEVEL": "WARNING",
                "CHANNEL_LAYER_CAPACITY": str(max(1500, 4 * users * tabs)),
            },
        )
        try:
            topology.start(workers=1, concurrency=2)
            bases = [topology.base_url] + [topology.start_web() for _ in range(webs - 1)]
            setup = json.loads(
                topology.python(SETUP.format(users=users, unlock_every=unlock_every, tiers=TIERS))
                .strip()
                .splitlines()[-1]
            )
            names = [name for name, _ in setup["users"]]
            sockets = [tuple(setup["users"][n % users]) for n in range(users * tabs)]
            context = multiprocessing.get_context("spawn")
            results: dict[str, Any] = {}
            offset = dict.fromkeys(names, 0)
            if staggered:
                sent_first = stagger(bases[0], setup["key"], names, unlock_every, offset)
                topology.wait_until(
                    "SELECT count(*) FROM achievements_event WHERE processed_at IS NULL", 0
                )
                print(f"  staggered: {sent_first} events sent first", flush=True)
            for rate, batch in zip(rates, batches, strict=True):
                ready, stop, out = context.Queue(), context.Queue(), context.Queue()
                client = context.Process(target=clients, args=(bases, sockets, ready, stop, out))
                client.start()
                opened = ready.get(timeout=900)
                time.sleep(2)
                print(f"  {rate:g} events/s: {opened} sockets open, sending", flush=True)
                # The producer stamps each response: no pauses of its own either.
                gc.collect()
                gc.disable()
                try:
                    # Not measured: the first batches of a rate meet cold caches
                    # and connections (a 500/s run's first batch took 73 ms).
                    warm = asyncio.run(
                        produce(bases, setup["key"], names, rate, warm_up, offset, batch)
                    )
                    sent = asyncio.run(
                        produce(bases, setup["key"], names, rate, seconds, offset, batch)
                    )
                finally:
                    gc.enable()
                stop.put(True)
                if len(sent) < int(rate * seconds):
                    print(topology.logs()[-6000:])
                seen, toasts = out.get(timeout=300)
                client.join(timeout=60)
                arrivals: dict[tuple[str, int], list[float]] = {}
                for user, count, at in seen:
                    arrivals.setdefault((user, count), []).append(at)
                latencies, lost, unlocking, toast_latencies = [], 0, 0, []
                for user, count, answered in sent:
                    got = arrivals.get((user, count), [])
                    if not got:
                        lost += 1
                    latencies += [max(0.0, at - answered) * 1000 for at in got]
                    if unlocks_tier(count, unlock_every):
                        # This event's frame is the one carrying its tier's toast.
                        unlocking += 1
                        toast_latencies += [max(0.0, at - answered) * 1000 for at in got]
                claimed = {
                    event_id: float(at)
                    for event_id, at in topology.query(
                        "SELECT event_id, EXTRACT(EPOCH FROM processed_at) "
                        "FROM achievements_event WHERE event_type = 'bench.ping' "
                        "AND processed_at IS NOT NULL "
                        "AND received_at > now() - make_interval(secs => %s)",
                        (seconds + 10,),
                    )
                }
                # Where the time goes: the producer's response → a worker's claim
                # (the drain, the broker hop, the batch in hand), and the claim →
                # each socket's frame (evaluate, commit, cards, publish, Daphne).
                waits, pushes = [], []
                for user, count, answered in sent:
                    at = claimed.get(f"ping-{user}-{count}")
                    if at is None:
                        continue
                    waits.append(max(0.0, at - answered) * 1000)
                    frames = arrivals.get((user, count), [])
                    pushes += [max(0.0, got - at) * 1000 for got in frames]
                results[f"{rate:g}/s"] = {
                    "events_per_request": batch,
                    # Response → claimed by a worker, and claimed → frame.
                    "claim_wait_p50_ms": round(statistics.median(waits), 1) if waits else None,
                    "claim_wait_p99_ms": round(percentile(waits, 0.99), 1) if waits else None,
                    "claim_to_frame_p50_ms": round(statistics.median(pushes), 1)
                    if pushes
                    else None,
                    "claim_to_frame_p99_ms": round(percentile(pushes, 0.99), 1)
                    if pushes
                    else None,
                    "events": len(sent),
                    "sockets": opened,
                    "frames": len(latencies),
                    "events_without_frame": lost,
                    "p50_ms": round(statistics.median(latencies), 1) if latencies else None,
                    "p95_ms": round(percentile(latencies, 0.95), 1) if latencies else None,
                    "p99_ms": round(percentile(latencies, 0.99), 1) if latencies else None,
                    "max_ms": round(max(latencies), 1) if latencies else None,
                }
                if unlock_every:
                    results[f"{rate:g}/s"].update(
                        unlocking_events=unlocking,
                        # Toast frames counted from the first event sent, warm-up included.
                        toasts_expected_whole_run=tabs
                        * sum(
                            1 for _, count, _ in warm + sent if unlocks_tier(count, unlock_every)
                        ),
                        toasts_received_whole_run=toasts,
                        toast_p50_ms=round(statistics.median(toast_latencies), 1)
                        if toast_latencies
                        else None,
                        toast_p99_ms=round(percentile(toast_latencies, 0.99), 1)
                        if toast_latencies
                        else None,
                    )
                print(f"  {rate:g} events/s: {results[f'{rate:g}/s']}", flush=True)
            return results
        except Exception:
            print(topology.logs())
            raise
        finally:
            topology.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--tabs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument(
        "--warm-up", type=float, default=3, help="seconds of each rate sent before measuring"
    )
    parser.add_argument("--rates", default="50,500")
    parser.add_argument(
        "--batches",
        default="1,10",
        help="events per request at each rate (one Daphne serves ~160 single-event "
        "requests/s on two cores, so 500 events/s go as 50 requests of 10)",
    )
    parser.add_argument(
        "--web-processes",
        type=int,
        default=1,
        help="Daphne processes; sockets and requests are spread over them round-robin",
    )
    parser.add_argument(
        "--unlock-every",
        type=int,
        default=0,
        help="add a tiered badge that every user's n-th, 2n-th ... 10n-th event unlocks, "
        "and report the latency of those frames (the toasts) apart",
    )
    parser.add_argument(
        "--stagger",
        action="store_true",
        help="with --unlock-every n: send user i (i mod n) events first, so that a steady "
        "1 in n events unlocks instead of waves (users move in step, round-robin)",
    )
    args = parser.parse_args()
    if args.stagger and not args.unlock_every:
        parser.error("--stagger needs --unlock-every")
    if args.unlock_every < 0:
        parser.error("--unlock-every must be 0 (off) or a whole number >= 1")
    if args.web_processes < 1:
        parser.error("--web-processes must be at least 1")
    rates = [float(rate) for rate in args.rates.split(",")]
    batches = [int(batch) for batch in args.batches.split(",")]
    if len(batches) != len(rates) or min(batches) < 1:
        parser.error("--batches needs one whole number >= 1 per rate")
    results = run(
        args.users,
        args.tabs,
        args.seconds,
        rates,
        batches,
        args.web_processes,
        args.warm_up,
        args.unlock_every,
        args.stagger,
    )
    print(
        f"end-to-end latency, {args.users:,} users x {args.tabs} sockets, {args.seconds:g} s each,"
        f" {args.web_processes} web process(es), after {args.warm_up:g} s of warm-up"
        + (", unlocks staggered" if args.stagger else "")
    )
    for name, row in results.items():
        print(
            f"  {name:>7}  p50 {row['p50_ms']} ms  p95 {row['p95_ms']} ms  p99 {row['p99_ms']} ms"
            f"  max {row['max_ms']} ms  events without a frame {row['events_without_frame']}"
        )
        print(
            f"           response → claimed p50 {row['claim_wait_p50_ms']} ms"
            f" p99 {row['claim_wait_p99_ms']} ms; claimed → frame"
            f" p50 {row['claim_to_frame_p50_ms']} ms p99 {row['claim_to_frame_p99_ms']} ms"
        )
        if args.unlock_every:
            print(
                f"           toasts: {row['unlocking_events']} unlocking events,"
                f" p50 {row['toast_p50_ms']} ms p99 {row['toast_p99_ms']} ms;"
                f" toasts received {row['toasts_received_whole_run']}"
                f" of {row['toasts_expected_whole_run']} (whole run)"
            )
    write_results(
        "latency",
        {
            "users": args.users,
            "tabs": args.tabs,
            "web_processes": args.web_processes,
            "warm_up_seconds": args.warm_up,
            "unlock_every": args.unlock_every,
            "staggered": args.stagger,
            **results,
        },
    )


if __name__ == "__main__":
    run_script(main)
