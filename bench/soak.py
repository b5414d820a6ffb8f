"""Soak test: minutes of mixed events on the real topology, through worker crashes
and Redis restarts, then a count of everything that should and did happen.

Not part of `make test`. Run it from the project root:

    .venv/bin/python bench/soak.py --minutes 10 --rate 20 --kill-every 60

It starts its own PostgreSQL database, a private redis-server, one Celery
worker (2 processes), celery beat and Daphne. A producer process records
events at a fixed rate with record_event (the Python integration path),
re-sending some with the same event_id (duplicates) and mixing in event types
no badge watches. Every --kill-every seconds the worker's whole process group
is SIGKILLed and started again at once, and the time until every event that
waited at the restart is processed is measured; at a quarter and at two
thirds of the run Redis is stopped for 10 s and started empty. The worker's
memory is sampled just before each kill.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration.stack import Process, Topology  # noqa: E402

PRODUCER = r"""
import json, random, sys, time, uuid
from django.contrib.auth import get_user_model
from django.db import transaction
from achievements.events import record_event

duration, rate, seed = {duration}, {rate}, {seed}
users = list(get_user_model().objects.filter(username__startswith="soak-").order_by("pk"))
rng = random.Random(seed)
sent = created = duplicates = 0
expected = {{u.username: {{"places": set(), "images": 0, "days": {{}}}} for u in users}}
recent = []
start = time.monotonic()
n = 0
while True:
    due = start + n / rate
    now = time.monotonic()
    if due - start >= duration:
        break
    if due > now:
        time.sleep(due - now)
    n += 1
    user = rng.choice(users)
    roll = rng.random()
    if roll < 0.08 and recent:
        # A producer retry: the same event again, with the same id.
        user, event_type, payload, event_id = rng.choice(recent)
    elif roll < 0.55:
        event_type, payload = "visit.created", {{"place_id": rng.randrange(12)}}
        event_id = uuid.uuid4().hex
    elif roll < 0.85:
        event_type, payload = "image.posted", {{"image_id": n}}
        event_id = uuid.uuid4().hex
    else:
        event_type, payload = "lesson.finished", {{"lesson": n}}
        event_id = uuid.uuid4().hex
    with transaction.atomic():
        result = record_event(user, event_type, payload=payload, event_id=event_id, source="soak")
    sent += 1
    if result.created:
        created += 1
        recent.append((user, event_type, payload, event_id))
        recent = recent[-200:]
        if event_type == "visit.created":
            expected[user.username]["places"].add(payload["place_id"])
        elif event_type == "image.posted":
            expected[user.username]["images"] += 1
            day = time.strftime("%Y-%m-%d", time.gmtime())  # the users' zone is UTC
            days = expected[user.username]["days"]
            days[day] = days.get(day, 0) + 1
    else:
        duplicates += 1
print(json.dumps({{
    "sent": sent, "created": created, "duplicates": duplicates,
    # The demo's badges: 5 places, 10 images, Globetrotter's tiers at 6, 9
    # and 12 places, and Daily Snapshots (3 images) once per day.
    "expected_unlocks": sum(
        (len(e["places"]) >= 5)
        + (e["images"] >= 10)
        + sum(len(e["places"]) >= tier for tier in (6, 9, 12))
        + sum(count >= 3 for count in e["days"].values())
        for e in expected.values()
    ),
}}))
"""


def rss_kib(pid: int) -> int:
    """Resident memory of a process and its children, in KiB."""
    total = 0
    pids = [pid] + [
        int(p)
        for p in subprocess.run(
            ["pgrep", "-P", str(pid)], capture_output=True, text=True
        ).stdout.split()
    ]
    for one in pids:
        try:
            for line in Path(f"/proc/{one}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total


def queue_depth(topology: Topology) -> int:
    import redis

    client = redis.Redis(host="127.0.0.1", port=topology.redis_port, db=0)
    return int(client.llen(topology.environment["ACCOLADE_NAMESPACE"]))


def count(topology: Topology, sql: str, params: tuple = ()) -> int:
    return int(topology.query(sql, params)[0][0])


def wait_processed(topology: Topology, last_pk: int, deadline: float) -> float:
    """Seconds from now until every event up to `last_pk` is processed (or given up on)."""
    started = time.monotonic()
    while time.monotonic() < deadline:
        waiting = count(
            topology,
            "SELECT count(*) FROM achievements_event WHERE id <= %s AND processed_at IS NULL "
            "AND dead_lettered_at IS NULL",
            (last_pk,),
        )
        if waiting == 0:
            break
        time.sleep(0.1)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=20.0, help="events per second")
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--kill-every", type=float, default=60.0, help="seconds between worker SIGKILLs"
    )
    parser.add_argument(
        "--recovery-limit",
        type=float,
        default=10.0,
        help="seconds a restarted worker may take to process what waited",
    )
    args = parser.parse_args()
    if min(args.minutes, args.rate, args.users, args.kill_every, args.recovery_limit) <= 0:
        parser.error(
            "--minutes, --rate, --users, --kill-every and --recovery-limit must be positive"
        )
    duration = args.minutes * 60

    tmp = Path(tempfile.mkdtemp(prefix="accolade-soak-"))
    topology = Topology(
        tmp,
        private_redis=True,
        extra_env={
            "ACCOLADE_SWEEP_AGE_SECONDS": "30",
            "ACCOLADE_SWEEP_INTERVAL_SECONDS": "5",
            "ACCOLADE_LOG_LEVEL": "WARNING",
        },
    )
    print(
        f"soak: {args.minutes:g} min at {args.rate:g} events/s, {args.users} users; logs in {tmp}"
    )
    try:
        topology.start(workers=1, concurrency=2, beat=True)
        topology.python(
            "from django.contrib.auth import get_user_model\n"
            f"for n in range({args.users}):\n"
            "    get_user_model().objects.get_or_create(username=f'soak-{n:03d}')\n"
        )
        producer = Process(
            "producer",
            [
                sys.executable,
                "manage.py",
                "shell",
                "-c",
                PRODUCER.format(duration=duration, rate=args.rate, seed=args.seed),
            ],
            topology.environment,
            tmp,
        )
        topology.processes.append(producer)
        started = time.monotonic()
        time.sleep(min(20, duration / 6))
        memory: list[int] = []  # the worker's RSS just before each kill
        recoveries: list[float] = []
        redis_at = [duration / 4, 2 * duration / 3]
        next_kill = started + args.kill_every
        next_report = time.monotonic()
        while producer.popen.poll() is None:
            elapsed = time.monotonic() - started
            if time.monotonic() >= next_kill and elapsed < duration - 15:
                memory.append(rss_kib(topology.workers[-1].popen.pid))
                topology.kill(topology.workers[-1])
                topology.workers.clear()
                # What waits now (and what arrives meanwhile) must be processed
                # by the restarted worker within --recovery-limit.
                [(cut,)] = topology.query("SELECT coalesce(max(id), 0) FROM achievements_event")
                topology.start_worker(concurrency=2)
                up = time.monotonic()
                took = wait_processed(topology, cut, up + 120)
                recoveries.append(took)
                print(
                    f"[{elapsed:6.0f}s] SIGKILLed the worker; restarted, everything recorded "
                    f"before the kill processed {took:.1f} s after it came up"
                )
                next_kill = time.monotonic() + args.kill_every
            if redis_at and elapsed >= redis_at[0]:
                redis_at.pop(0)
                print(f"[{elapsed:6.0f}s] stop Redis for 10 s, then start it empty")
                topology.stop_redis()
                time.sleep(10)
                topology.start_redis()
            if time.monotonic() >= next_report:
                recorded = count(topology, "SELECT count(*) FROM achievements_event")
                pending = count(
                    topology, "SELECT count(*) FROM achievements_event WHERE processed_at IS NULL"
                )
                print(f"[{elapsed:6.0f}s] recorded {recorded}, pending {pending}")
                next_report += 30
            time.sleep(1)
        summary = json.loads(producer.output().strip().splitlines()[-1])

        drain_started = time.monotonic()
        while time.monotonic() - drain_started < 300:
            if (
                count(
                    topology,
                    "SELECT count(*) FROM achievements_event WHERE processed_at IS "
                    "NULL AND dead_lettered_at IS NULL",
                )
                == 0
            ):
                break
            time.sleep(1)
        drained_in = time.monotonic() - drain_started

        recorded = count(topology, "SELECT count(*) FROM achievements_event")
        processed = count(
            topology, "SELECT count(*) FROM achievements_event WHERE processed_at IS NOT NULL"
        )
        dead = count(
            topology, "SELECT count(*) FROM achievements_event WHERE dead_lettered_at IS NOT NULL"
        )
        swept = count(
            topology, "SELECT count(*) FROM achievements_event WHERE swept_at IS NOT NULL"
        )
        unlocks = count(topology, "SELECT count(*) FROM achievements_unlock")
        doubled = count(
            topology,
            "SELECT count(*) FROM (SELECT 1 FROM achievements_unlock "
            "GROUP BY user_id, badge_id, period, tier HAVING count(*) > 1) d",
        )
        before = topology.query(
            "SELECT user_id, requirement_id, value FROM "
            "achievements_requirementprogress ORDER BY 1, 2"
        )
        topology.python(
            "from django.core.management import call_command; call_command('replay_events')"
        )
        after = topology.query(
            "SELECT user_id, requirement_id, value FROM "
            "achievements_requirementprogress ORDER BY 1, 2"
        )
        memory.append(rss_kib(topology.workers[-1].popen.pid))

        print()
        print(f"duration                      {args.minutes:g} min at {args.rate:g} events/s")
        print(f"events sent                   {summary['sent']}")
        print(f"  recorded (new)              {summary['created']}   (rows: {recorded})")
        print(f"  duplicates (same event_id)  {summary['duplicates']}")
        print(f"events processed              {processed}")
        print(f"events swept back to queue    {swept}")
        print(f"dead letters                  {dead}")
        print(f"unlocks expected / found      {summary['expected_unlocks']} / {unlocks}")
        print(f"unlocks doubled               {doubled}")
        print(f"progress equals serial replay {before == after}")
        print(f"queue depth at end            {queue_depth(topology)}")
        print(f"drained after producer ended  {drained_in:.1f} s")
        print(
            f"worker restarts               {len(recoveries)}; backlog processed "
            + ", ".join(f"{took:.1f}" for took in recoveries)
            + " s after each came up"
        )
        print(
            "worker RSS before each kill   "
            + ", ".join(f"{kib / 1024:.0f}" for kib in memory)
            + " MiB (main process and 2 pool processes; the last at the end)"
        )
        ok = (
            processed == recorded == summary["created"]
            and all(took <= args.recovery_limit for took in recoveries)
            and dead == 0
            and unlocks == summary["expected_unlocks"]
            and doubled == 0
            and before == after
        )
        print("RESULT                        " + ("PASS" if ok else "FAIL"))
        if not ok:
            sys.exit(1)
    finally:
        topology.stop()


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    main()
