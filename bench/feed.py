"""The analytics feed: what writing its records costs the evaluation, and how fast
the exporter turns them into files.

Run from the project root (needs PostgreSQL on 127.0.0.1:5432):

    .venv/bin/python bench/feed.py [--events 20000] [--repeats 3]

One process on a scratch database evaluates recorded events with the real
engine, in batches of 500, with the feed off and on (in pairs, alternating
which goes first; medians of --repeats pairs). The workload: 500 users with Zipf-like
activity (a few users send most events), fresh users each run, visits to 40 places and posted
images, and six badges watching them (a distinct count, a count, a sum of a
filtered field, a daily streak, a tiered count, and the images' count): a
visit makes an event record and four or five decision records. The feed-off
figure is the floor of the feed-on one.

Then the exporter writes what the feed-on runs left in the outbox: records/s
and compressed bytes a record, against its floor, gzip alone on the same
lines.
"""

from __future__ import annotations

import argparse
import gzip
import random
import statistics
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import run_script, write_results  # noqa: E402

USERS = 500


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=6)
    args = parser.parse_args()
    if args.events < 500 or args.repeats < 1:
        parser.error("--events must be at least 500 and --repeats at least 1")

    from bench.scratch import scratch_database

    with tempfile.TemporaryDirectory() as directory, scratch_database():
        results = run(args.events, args.repeats, Path(directory))
    report(results, args)
    write_results("feed", {"events": args.events, "repeats": args.repeats, **results})


def make_badges() -> None:
    from achievements import rules
    from achievements.models import BadgeRequirement
    from tests.factories import make_badge

    make_badge(
        key="places",
        requirements=[
            {
                "event_type": "visit.created",
                "aggregation": rules.Aggregation.DISTINCT,
                "field": "place_id",
                "threshold": 30,
            }
        ],
    )
    make_badge(key="visits", requirements=[{"event_type": "visit.created", "threshold": 200}])
    spender = make_badge(
        key="long_stays",
        requirements=[
            {
                "event_type": "visit.created",
                "aggregation": rules.Aggregation.SUM,
                "field": "minutes",
                "threshold": 5000,
            }
        ],
    )
    BadgeRequirement.objects.filter(badge=spender).update(
        filters={"all": [{"field": "indoor", "op": "==", "value": True}]}
    )
    streak = make_badge(
        key="daily", requirements=[{"event_type": "visit.created", "threshold": 7}]
    )
    BadgeRequirement.objects.filter(badge=streak).update(kind=rules.Kind.STREAK, streak_unit="day")
    tiered = make_badge(
        key="regular", requirements=[{"event_type": "visit.created", "threshold": 50}]
    )
    tiered.tiers = [
        {"name": "Bronze", "threshold": 10},
        {"name": "Silver", "threshold": 25},
        {"name": "Gold", "threshold": 50},
    ]
    tiered.save()
    make_badge(key="images", requirements=[{"event_type": "image.posted", "threshold": 20}])


def run(events: int, repeats: int, directory: Path) -> dict[str, float]:
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.test import override_settings
    from django.utils import timezone

    from achievements import index
    from achievements.engine import evaluate_events
    from achievements.models import Event
    from feed import export, outbox
    from feed.models import Batch

    override_settings(
        STORAGES={
            **settings.STORAGES,
            "accolade_feed": {
                "BACKEND": "feed.storage.FeedDirectory",
                "OPTIONS": {"location": directory},
            },
        }
    ).enable()
    make_badges()
    index.invalidate()
    User = get_user_model()
    weights = [1 / (rank + 1) for rank in range(USERS)]

    def evaluate(label: str, seed: int) -> float:
        # Users of the run's own, with their history in order: no event of a run is
        # late for what an earlier run folded (a late event reads the whole history).
        users = User.objects.bulk_create(User(username=f"{label}-{n}") for n in range(USERS))
        rng = random.Random(seed)
        now = timezone.now()
        chosen = rng.choices(users, weights, k=events)
        pending = Event.objects.bulk_create(
            [
                Event(
                    event_id=f"{label}-{n}",
                    event_type="visit.created" if n % 5 else "image.posted",
                    user=user,
                    occurred_at=now - (events - n) * timedelta(seconds=20),
                    payload={
                        "place_id": rng.randrange(40),
                        "minutes": rng.randrange(5, 90),
                        "indoor": rng.random() < 0.5,
                    },
                )
                for n, user in enumerate(chosen)
            ],
            batch_size=5000,
        )
        pks = [event.pk for event in pending]
        started = time.perf_counter()
        for start in range(0, len(pks), 500):
            evaluate_events(pks[start : start + 500])
        return events / (time.perf_counter() - started)

    # The time the feed's receivers take, beside the runs' own clock.
    spent = [0.0]

    def timed(receiver: Callable[..., None]) -> Callable[..., None]:
        def run_timed(*args: Any, **kwargs: Any) -> None:
            started = time.perf_counter()
            try:
                receiver(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - started

        return run_timed

    outbox.write_batch = timed(outbox.write_batch)  # type: ignore[method-assign]
    outbox.write_ledger = timed(outbox.write_ledger)  # type: ignore[method-assign]

    def evaluate_on(label: str, seed: int) -> float:
        outbox.connect()
        try:
            return evaluate(label, seed)
        finally:
            outbox.disconnect()

    evaluate("warmup", 0)
    off: list[float] = []
    on: list[float] = []
    # Off and on alternate, each first in every other pair: a table that grows
    # or a vacuum that starts favours neither.
    for repeat in range(repeats):
        pair = [("off", evaluate, off), ("on", evaluate_on, on)]
        for name, call, into in pair if repeat % 2 == 0 else pair[::-1]:
            into.append(call(f"{name}-{repeat}", 2 * repeat + (name == "on")))
    ratios = [b / a for a, b in zip(off, on, strict=True)]
    share = spent[0] / (events * repeats / statistics.mean(on))
    records = sum(Batch.objects.values_list("records", flat=True))
    text = b"".join(
        zlib.decompress(data)
        for data in Batch.objects.order_by("pk").values_list("data", flat=True)
    )
    started = time.perf_counter()
    gzip.compress(text, compresslevel=6, mtime=0)
    gzip_alone = time.perf_counter() - started
    started = time.perf_counter()
    export.export_due()
    exported = time.perf_counter() - started
    size = sum(path.stat().st_size for path in directory.rglob("*.gz"))
    return {
        "evaluation_off_events_per_s": statistics.median(off),
        "evaluation_on_events_per_s": statistics.median(on),
        "on_off_ratio_median": statistics.median(ratios),
        "feed_share_of_evaluation": share,
        "records": records,
        "records_per_event": records / (events * repeats),
        "export_records_per_s": records / exported,
        "gzip_alone_records_per_s": records / gzip_alone,
        "bytes_per_record": size / records,
        "line_bytes_per_record": len(text) / records,
    }


def report(results: dict[str, float], args: argparse.Namespace) -> None:
    off, on = results["evaluation_off_events_per_s"], results["evaluation_on_events_per_s"]
    print(
        f"analytics feed, one process on PostgreSQL, {args.events} events a run, "
        f"batches of 500, median of {args.repeats}"
    )
    print(f"  evaluation, feed off (floor)  {off:8.0f} events/s")
    print(
        f"  evaluation, feed on           {on:8.0f} events/s   "
        f"{results['on_off_ratio_median']:.0%} of the floor (median of the pairs' ratios)"
    )
    print(
        f"  the feed's receivers          {results['feed_share_of_evaluation']:8.1%} "
        "of the feed-on evaluation time"
    )
    print(f"  records an event              {results['records_per_event']:8.1f}")
    print(
        f"  export                        {results['export_records_per_s']:8.0f} records/s   "
        f"gzip alone {results['gzip_alone_records_per_s']:.0f}/s"
    )
    print(
        f"  size                          {results['bytes_per_record']:8.1f} bytes a record "
        f"gzipped ({results['line_bytes_per_record']:.0f} as JSON)"
    )


if __name__ == "__main__":
    run_script(main)
