"""Report pages at scale: 1,000,000 stored events and 100,000 users.

Run from the project root (needs PostgreSQL on 127.0.0.1:5432):

    .venv/bin/python bench/reports.py [--events 1000000] [--users 100000] [--repeats 5]

It creates a scratch database and loads it with COPY: the users, a year of
events spread over them (8 event types, 20 badges, three tiered), their
standings on three badges each, and the unlocks those standings imply. Then
it times each report on its own and the whole page (`GET /admin/reports/`
through Django's test client as a staff user), for the default 30 days, the
longest range (366 days) and one badge, and prints the median of --repeats
runs after one warm-up. The target is under 500 ms per page.

The first view after a day closes builds that day's activity roll-up; the
cold figure (every day of the year built at once, as after loading) is
printed apart.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import run_script, write_results  # noqa: E402

TYPES = [f"type.{n}" for n in range(8)]
TARGET_MS = 500.0
FILTER = {"all": [{"field": "place_id", "op": "<", "value": 900}]}


def dataset_arguments(
    description: str,
    repeats: int,
    more: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.Namespace:
    """--events, --users and --repeats, checked: the data set load() builds;
    `more` adds a script's own arguments."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=repeats)
    if more:
        more(parser)
    args = parser.parse_args()
    if args.users < 10 or args.events < args.users or args.repeats < 1:
        parser.error("need --users >= 10, --events >= --users and --repeats >= 1")
    return args


@contextmanager
def loaded_dataset(events: int, users: int) -> Iterator[None]:
    """A scratch database holding load(events, users), dropped afterwards."""
    from bench.scratch import scratch_database

    with scratch_database():
        started = time.perf_counter()
        load(events, users)
        print(
            f"loaded {events:,} events, {users:,} users in {time.perf_counter() - started:.0f} s"
        )
        yield


def main() -> None:
    args = dataset_arguments(__doc__.splitlines()[0], repeats=5)
    with loaded_dataset(args.events, args.users):
        results = measure(args.repeats)
    report(results, args)


def load(events: int, users: int) -> None:
    from django.db import connection

    from achievements.models import Badge, BadgeRequirement

    rng = random.Random(7)
    now = datetime.now(UTC).replace(microsecond=0)
    year = 365 * 86400
    badges = []
    for n in range(20):
        event_type = TYPES[n % len(TYPES)]
        tiered = n < 3
        badge = Badge.objects.create(
            key=f"badge_{n}",
            name=f"Badge {n}",
            tiers=[
                {"name": "Bronze", "threshold": 3},
                {"name": "Silver", "threshold": 6},
                {"name": "Gold", "threshold": 10},
            ]
            if tiered
            else [],
        )
        BadgeRequirement.objects.create(
            badge=badge,
            event_type=event_type,
            aggregation="distinct" if tiered else "count",
            field="place_id" if tiered else "",
            threshold=3 if tiered else 5,
            filters=FILTER if n in (5, 6) else {},
        )
        badges.append(badge)

    joined = now - timedelta(days=400)
    with connection.cursor() as cursor:
        with cursor.copy(
            "COPY auth_user (id, password, is_superuser, username, first_name, last_name,"
            " email, is_staff, is_active, date_joined) FROM STDIN"
        ) as copy:
            for pk in range(1, users + 1):
                copy.write_row((pk, "!", False, f"user{pk}", "", "", "", False, True, joined))
        cursor.execute(f"SELECT setval('auth_user_id_seq', {users})")

        # Users are not equally busy: a few do much, most do little.
        weights = [1 / (1 + n) ** 0.6 for n in range(users)]
        owners = rng.choices(range(1, users + 1), weights=weights, k=events)
        last_event: dict[int, tuple[int, datetime]] = {}
        with cursor.copy(
            "COPY achievements_event (id, event_id, event_type, user_id, external_user_id,"
            " occurred_at, source, payload, received_at, processed_at, fingerprint, attempts,"
            " last_error) FROM STDIN"
        ) as copy:
            for pk in range(1, events + 1):
                received = now - timedelta(seconds=year * (1 - pk / events))
                user = owners[pk - 1]
                last_event[user] = (pk, received)
                copy.write_row(
                    (
                        pk,
                        f"e-{pk}",
                        TYPES[pk % len(TYPES)],
                        user,
                        "",
                        received - timedelta(seconds=rng.random() * 5),
                        "bench",
                        json.dumps({"place_id": rng.randrange(1000)}),
                        received,
                        received + timedelta(milliseconds=20 + rng.random() * 60),
                        "",
                        0,
                        "",
                    )
                )
        cursor.execute(f"SELECT setval('achievements_event_id_seq', {events})")

        unlock_pk = 0
        with (
            cursor.copy(
                "COPY achievements_userbadge (user_id, badge_id, current_value, target_value,"
                " completed_at, completed_by_event_id, last_evaluated_at, tier) FROM STDIN"
            ) as standings,
        ):
            unlock_rows = []
            for user, (event_pk, at) in last_event.items():
                for badge in rng.sample(badges, 3):
                    target = 3 if badge.tiers else 5
                    value = rng.randrange(0, 13)
                    tier = 0
                    done = value >= target
                    if badge.tiers and done:
                        tier = sum(value >= t for t in (3, 6, 10))
                    completed = at if done else None
                    standings.write_row(
                        (
                            user,
                            badge.pk,
                            value if not done or badge.tiers else target,
                            target,
                            completed,
                            event_pk if done else None,
                            at,
                            tier,
                        )
                    )
                    for level in range(1, tier + 1) if tier else ([0] if done else []):
                        unlock_pk += 1
                        unlock_rows.append(
                            (
                                unlock_pk,
                                user,
                                badge.pk,
                                "",
                                level,
                                at,
                                event_pk,
                                "[]",
                                False,
                                at,
                                timedelta(hours=rng.random() * 24 * 30 * level or 1),
                            )
                        )
        with cursor.copy(
            "COPY achievements_unlock (id, user_id, badge_id, period, tier, unlocked_at,"
            " event_id, event_ids, silent, delivered_at, took) FROM STDIN"
        ) as copy:
            for row in unlock_rows:
                copy.write_row(row)
        cursor.execute(f"SELECT setval('achievements_unlock_id_seq', {max(unlock_pk, 1)})")
        # A live database is vacuumed and analysed by autovacuum; a fresh load is not yet.
        cursor.execute("VACUUM ANALYZE")


def _median_ms(function: Any, repeats: int) -> float:
    function()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def measure(repeats: int) -> dict[str, Any]:
    from django.contrib.auth import get_user_model
    from django.test import Client
    from django.utils import timezone

    from achievements import reports

    User = get_user_model()
    staff = User.objects.create_superuser("bench-staff", password="x")
    client = Client(HTTP_HOST="localhost")
    client.force_login(staff)
    today = timezone.localdate()
    ranges = {
        "30 days": f"start={today - timedelta(days=29)}&end={today}",
        "366 days": f"start={today - timedelta(days=365)}&end={today}",
        "one badge, 366 days": f"start={today - timedelta(days=365)}&end={today}&badge=badge_0",
    }

    started = time.perf_counter()
    response = client.get("/admin/reports/?" + ranges["366 days"])
    cold = (time.perf_counter() - started) * 1000
    assert response.status_code == 200, response.status_code

    pages = {}
    for label, query in ranges.items():

        def page(query: str = query) -> None:
            response = client.get("/admin/reports/?" + query)
            assert response.status_code == 200, response.status_code

        pages[label] = _median_ms(page, repeats)

    filters, errors = reports.parse_filters(
        {"start": str(today - timedelta(days=365)), "end": str(today)}
    )
    assert not errors
    parts = {
        "unlocks over time": lambda: reports.unlocks_over_time(filters),
        "active users": lambda: reports.active_users(filters),
        "rarity": lambda: reports.rarity(filters),
        "near misses": lambda: reports.near_misses(filters),
        "tier funnel": lambda: reports.tier_funnel(filters),
        "time to unlock": lambda: reports.time_to_unlock(filters),
        "pipeline health": lambda: reports.pipeline_health(filters),
        "rule health": lambda: reports.rule_health(filters),
    }
    return {
        "cold_first_view_ms": cold,
        "pages_ms": pages,
        "parts_366_days_ms": {name: _median_ms(fn, repeats) for name, fn in parts.items()},
    }


def report(results: dict[str, Any], args: argparse.Namespace) -> None:
    print(
        f"report pages, {args.events:,} events, {args.users:,} users, "
        f"median of {args.repeats} (ms)"
    )
    print(f"  first view, roll-ups built   {results['cold_first_view_ms']:8.0f}")
    for label, ms in results["pages_ms"].items():
        print(f"  page, {label:23} {ms:8.1f}")
    for label, ms in results["parts_366_days_ms"].items():
        print(f"    {label:27} {ms:8.1f}")
    worst = max(results["pages_ms"].values())
    print("RESULT " + ("under" if worst < TARGET_MS else "OVER") + f" {TARGET_MS:.0f} ms")
    write_results(
        "reports",
        {
            "events": args.events,
            "users": args.users,
            "repeats": args.repeats,
            **{
                key: (
                    {k: round(v, 1) for k, v in value.items()}
                    if isinstance(value, dict)
                    else round(value, 1)
                )
                for key, value in results.items()
            },
        },
    )


if __name__ == "__main__":
    run_script(main)
