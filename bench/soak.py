"""Soak test: minutes of mixed events on the real topology, through a worker crash
and a Redis restart, then a count of everything that should and did happen.

Not part of `make test`. Run it from the project root:

    .venv/bin/python bench/soak.py --minutes 10 --rate 20

It starts its own PostgreSQL database, a private redis-server, one Celery
worker (2 processes), celery beat and Daphne. A producer process records
events at a fixed rate with record_event (the Python integration path),
re-sending some with the same event_id (duplicates) and mixing in event types
no badge watches. At one third of the run the worker is SIGKILLed and
restarted; at two thirds Redis is stopped for a while and started empty.
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
expected = {{u.username: {{"places": set(), "images": 0}} for u in users}}
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
    else:
        duplicates += 1
print(json.dumps({{
    "sent": sent, "created": created, "duplicates": duplicates,
    "expected_unlocks": sum(
        (len(e["places"]) >= 5) + (e["images"] >= 10) for e in expected.values()
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


def count(topology: Topology, sql: str) -> int:
    return int(topology.query(sql)[0][0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=20.0, help="events per second")
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    if args.minutes <= 0 or args.rate <= 0 or args.users <= 0:
        parser.error("--minutes, --rate and --users must be positive")
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
        memory_start = rss_kib(topology.workers[0].popen.pid)
        crashed = restarted_redis = False
        next_report = time.monotonic()
        while producer.popen.poll() is None:
            elapsed = time.monotonic() - started
            if not crashed and elapsed >= duration / 3:
                print(f"[{elapsed:6.0f}s] SIGKILL worker (whole process group), restart in 5 s")
                topology.kill(topology.workers[0])
                time.sleep(5)
                topology.start_worker(concurrency=2)
                crashed = True
            if not restarted_redis and elapsed >= 2 * duration / 3:
                print(f"[{elapsed:6.0f}s] stop Redis for 10 s, then start it empty")
                topology.stop_redis()
                time.sleep(10)
                topology.start_redis()
                restarted_redis = True
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
            "GROUP BY user_id, badge_id HAVING count(*) > 1) d",
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
        memory_end = rss_kib(topology.workers[-1].popen.pid)

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
            f"worker RSS at start / end     {memory_start / 1024:.1f} MiB / "
            f"{memory_end / 1024:.1f} MiB (end: the restarted worker, 2 pool processes)"
        )
        ok = (
            processed == recorded == summary["created"]
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
