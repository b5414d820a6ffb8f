"""Does a long re-evaluation job slow live evaluation down, and does its rate cap help?

Run from the project root (needs PostgreSQL on 127.0.0.1:5432):

    .venv/bin/python bench/reevaluation_impact.py [--users 300] [--history 200] [--live 150]

It creates a scratch database with --users users of --history stored events
each, then times live evaluations (evaluate_event on a fresh event of
another user, --live of them, at a steady 25 a second) in three phases:

1. no job running;
2. a re-evaluation job over every user running in another process, uncapped;
3. the same job capped at --cap events a second
   (ACCOLADE_REEVALUATION_MAX_EVENTS_PER_SECOND).

It prints the p50 / p95 of live evaluation time per phase and the job's own
rate, and writes bench/results-reevaluation.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import run_script, write_results  # noqa: E402

LIVE_RATE = 25.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--history", type=int, default=200)
    parser.add_argument("--live", type=int, default=150)
    parser.add_argument("--cap", type=int, default=500)
    args = parser.parse_args()

    from bench.scratch import scratch_database

    with scratch_database():
        results = run(args)
    report(results, args)


def run(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from achievements.models import Event, Reevaluation
    from bench.scratch import make_visit_badges

    places = make_visit_badges()
    User = get_user_model()
    now = timezone.now()
    users = User.objects.bulk_create([User(username=f"u{n}") for n in range(args.users)])
    for user in users:
        Event.objects.bulk_create(
            [
                Event(
                    event_id=f"h-{user.pk}-{n}",
                    event_type="visit.created",
                    user=user,
                    occurred_at=now - timedelta(minutes=n),
                    payload={"place_id": n % 97},
                    processed_at=now,
                )
                for n in range(args.history)
            ]
        )
    live_user = User.objects.create(username="live")

    def job(cap: int) -> tuple[subprocess.Popen[bytes], int]:
        record = Reevaluation.objects.create()
        record.badges.set([places])
        code = (
            "import django; django.setup(); "
            f"from achievements import reevaluation; reevaluation.run({record.pk})"
        )
        env = {**os.environ, "ACCOLADE_REEVALUATION_MAX_EVENTS_PER_SECOND": str(cap)}
        return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env), record.pk

    results: dict[str, dict[str, float]] = {}
    counter = iter(range(10**9))
    phases = [("no job", None), ("job, uncapped", 0), (f"job, cap {args.cap}/s", args.cap)]
    for phase, cap in phases:
        process, job_id = job(cap) if cap is not None else (None, None)
        time.sleep(1.0 if process else 0)  # let the job get going
        times = live_evaluations(live_user, args.live, counter)
        if process is not None and job_id is not None:
            process.terminate()
            process.wait(timeout=30)
            state = Reevaluation.objects.get(pk=job_id)
            job_rate = state.rate or 0.0
        else:
            job_rate = 0.0
        results[phase] = {
            "p50_ms": statistics.median(times) * 1000,
            "p95_ms": statistics.quantiles(times, n=20)[18] * 1000,
            "job_events_per_s": job_rate,
        }
        print(f"  {phase:<22} done", flush=True)
    return results


def live_evaluations(user: Any, count: int, counter: Any) -> list[float]:
    """Time evaluate_event on fresh events at a steady LIVE_RATE a second."""
    from django.utils import timezone

    from achievements.engine import evaluate_event
    from achievements.models import Event

    times = []
    start = time.monotonic()
    for n in range(count):
        number = next(counter)
        event = Event.objects.create(
            event_id=f"live-{number}",
            event_type="visit.created",
            user=user,
            occurred_at=timezone.now(),
            payload={"place_id": number % 500},
        )
        began = time.perf_counter()
        evaluate_event(event.pk)
        times.append(time.perf_counter() - began)
        delay = start + (n + 1) / LIVE_RATE - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    return times


def report(results: dict[str, dict[str, float]], args: argparse.Namespace) -> None:
    print()
    print(
        f"live evaluation while a re-evaluation job runs ({args.users} users x "
        f"{args.history} events; {args.live} live events at {LIVE_RATE:.0f}/s)"
    )
    baseline = results["no job"]["p50_ms"]
    for phase, row in results.items():
        job = f"job {row['job_events_per_s']:.0f} events/s" if row["job_events_per_s"] else ""
        print(
            f"  {phase:<22} p50 {row['p50_ms']:6.1f} ms  p95 {row['p95_ms']:6.1f} ms  "
            f"p50 x{row['p50_ms'] / baseline:4.2f}  {job}"
        )
    out = write_results(
        "reevaluation",
        {
            "arguments": vars(args),
            "results": results,
        },
    )
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    run_script(main)
