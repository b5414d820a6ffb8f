"""Evaluation cost: does an event's cost depend on unrelated badges or on history?

Run from the project root (needs PostgreSQL on 127.0.0.1:5432):

    .venv/bin/python bench/evaluation.py [--events 2000] [--repeats 3]

It creates a scratch database, then measures events per second of one
process evaluating recorded events with the real engine (claim, row locks,
incremental state, unlock, push attempt), in four set-ups:

- 10 badges vs 1,000 badges watching other event types (plus the 2 badges
  that do watch the evaluated events);
- a user history of 100 vs 100,000 earlier events.

Each figure is the median of --repeats runs; the ratios must stay within
15 % of 1 for the design to hold (an event touches only the requirements
that watch its type, and never re-reads history).

What a change of the rules costs once, per process, is timed apart from
the runs: rebuilding the rules index (it holds every active badge), and
the first time, recording a first version of each badge made outside the
admin. Inside a 2,000-event run, 1,000 badges' rebuild alone had halved
the figure.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import run_script, write_results  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--batch",
        type=int,
        default=500,
        help="events per batch (achievements.engine); 1 evaluates one at a time",
    )
    args = parser.parse_args()
    if args.events < 10 or args.repeats < 1:
        parser.error("--events must be at least 10 and --repeats at least 1")

    from bench.scratch import scratch_database

    with scratch_database():
        results = run(args.events, args.repeats, args.batch)
    report(results, args)


def run(events: int, repeats: int, batch: int = 1) -> dict[str, float]:
    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from achievements.engine import evaluate_event, evaluate_events
    from achievements.models import Badge, BadgeRequirement, Event
    from bench.scratch import make_visit_badges

    User = get_user_model()
    make_visit_badges()

    def set_unrelated_badges(count: int) -> None:
        existing = Badge.objects.filter(key__startswith="unrelated_").count()
        for n in range(existing, count):
            badge = Badge.objects.create(key=f"unrelated_{n}", name=f"Unrelated {n}")
            BadgeRequirement.objects.create(
                badge=badge, event_type=f"other.type{n % 50}", threshold=5
            )

    def history(user, count: int) -> None:
        now = timezone.now()
        have = Event.objects.filter(user=user, event_type="visit.created").count()
        Event.objects.bulk_create(
            [
                Event(
                    event_id=f"h-{user.pk}-{n}",
                    event_type="visit.created",
                    user=user,
                    occurred_at=now - timedelta(minutes=n),
                    payload={"place_id": n % 500},
                    processed_at=now,
                )
                for n in range(have, count)
            ],
            batch_size=5000,
        )

    def evaluate(users: list, label: str) -> float:
        now = timezone.now()
        pending = Event.objects.bulk_create(
            [
                Event(
                    event_id=f"{label}-{time.monotonic_ns()}-{n}",
                    event_type="visit.created",
                    user=users[n % len(users)],
                    occurred_at=now,
                    payload={"place_id": n % 50},
                )
                for n in range(events)
            ],
            batch_size=5000,
        )
        started = time.perf_counter()
        if batch == 1:
            for event in pending:
                evaluate_event(event.pk)
        else:
            pks = [event.pk for event in pending]
            for start in range(0, len(pks), batch):
                evaluate_events(pks[start : start + batch])
        return events / (time.perf_counter() - started)

    users = [User.objects.create_user(f"bench-{n}") for n in range(50)]
    lone = User.objects.create_user("bench-history")
    results: dict[str, list[float]] = {
        k: [] for k in ("badges_10", "badges_1000", "history_100", "history_100000")
    }
    once: dict[str, list[float]] = {"rebuild_10_ms": [], "rebuild_1000_ms": []}
    evaluate(users, "warmup")
    set_unrelated_badges(10)
    _after_rules_change()  # their first versions, so rebuild_10 is a rebuild only
    for repeat in range(repeats):
        set_unrelated_badges(10)
        Badge.objects.filter(key__startswith="unrelated_").exclude(
            key__in=[f"unrelated_{n}" for n in range(10)]
        ).update(is_active=False)
        _touch_rules()
        once["rebuild_10_ms"].append(_after_rules_change())
        results["badges_10"].append(evaluate(users, "b10"))
        set_unrelated_badges(1000)
        Badge.objects.filter(key__startswith="unrelated_").update(is_active=True)
        _touch_rules()
        if repeat == 0:  # 990 of the badges have no version yet
            once["first_versions_1000_ms"] = [_after_rules_change()]
            _touch_rules()
        once["rebuild_1000_ms"].append(_after_rules_change())
        results["badges_1000"].append(evaluate(users, "b1000"))
    history(lone, 100)
    for _ in range(repeats):
        results["history_100"].append(evaluate([lone], "h100"))
    history(lone, 100_000)
    for _ in range(repeats):
        results["history_100000"].append(evaluate([lone], "h100k"))
    return {name: statistics.median(values) for name, values in {**results, **once}.items()}


def _after_rules_change() -> float:
    """What the first evaluation after a rules change does first, in ms: rebuild
    the index, record missing first versions (which make every process rebuild
    once more)."""
    from achievements import index
    from achievements.versions import ensure_versions

    started = time.perf_counter()
    ensure_versions(badge.pk for badge in index.active_badges())
    index.active_badges()
    return (time.perf_counter() - started) * 1000


def _touch_rules() -> None:
    """Bulk updates skip signals; tell the index the rules changed."""
    from achievements import index

    index.invalidate()


def report(results: dict[str, float], args: argparse.Namespace) -> None:
    badge_ratio = results["badges_1000"] / results["badges_10"]
    history_ratio = results["history_100000"] / results["history_100"]
    print(
        f"evaluation throughput, one process, {args.events} events per run, "
        f"median of {args.repeats}"
    )
    print(f"  10 unrelated badges       {results['badges_10']:8.0f} events/s")
    print(
        f"  1,000 unrelated badges    {results['badges_1000']:8.0f} events/s   "
        f"ratio {badge_ratio:.2f}"
    )
    print(f"  history of 100 events     {results['history_100']:8.0f} events/s")
    print(
        f"  history of 100,000 events {results['history_100000']:8.0f} events/s   "
        f"ratio {history_ratio:.2f}"
    )
    ok = abs(badge_ratio - 1) <= 0.15 and abs(history_ratio - 1) <= 0.15
    print("RESULT " + ("within 15 %" if ok else "OUTSIDE 15 %"))
    print("once per process after a rules change (median, ms):")
    print(f"  rules index, 10 badges      {results['rebuild_10_ms']:8.1f}")
    print(f"  rules index, 1,000 badges   {results['rebuild_1000_ms']:8.1f}")
    print(f"  the same, with 990 first versions {results['first_versions_1000_ms']:8.1f}")
    write_results(
        "evaluation",
        {
            "events_per_run": args.events,
            "repeats": args.repeats,
            "events_per_second": {
                k: round(v, 1) for k, v in results.items() if not k.endswith("_ms")
            },
            "after_rules_change_ms": {
                k.removesuffix("_ms"): round(v, 1) for k, v in results.items() if k.endswith("_ms")
            },
            "ratios": {
                "badges_1000_vs_10": round(badge_ratio, 3),
                "history_100000_vs_100": round(history_ratio, 3),
            },
        },
    )


if __name__ == "__main__":
    run_script(main)
