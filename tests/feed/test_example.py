"""The examples: a day of the feed in DuckDB gives the reports' figure (examples/
feed_duckdb.py, and the README's query)."""

from __future__ import annotations

from pathlib import Path

import duckdb
from django.conf import settings
from django.utils import timezone

from achievements import reports
from achievements.awards import Actor, grant_badge
from achievements.engine import evaluate_events
from achievements.events import record_event
from examples.feed_duckdb import COLUMNS, unlocks_per_badge
from feed import export
from tests.factories import make_images_badge, make_places_badge, make_user
from tests.feed.conftest import read_feed


def test_a_day_in_duckdb_counts_the_unlocks_the_report_shows(owner, staff_user, feed_dir):
    places = make_places_badge(threshold=2)
    images = make_images_badge(threshold=3)
    users = [owner, *(make_user(username=f"user-{n}") for n in range(6))]
    recorded = []
    for n, user in enumerate(users):
        for place in range(n % 4):
            recorded.append(record_event(user, "visit.created", payload={"place_id": place}))
        for _ in range(n):
            recorded.append(record_event(user, "image.posted"))
    evaluate_events([r.event.pk for r in recorded])
    grant_badge(user_id=users[1].pk, badge=images, reason="Meetup", by=Actor(staff_user.pk))
    export.export_due()
    export.export_due()  # nothing more: no file twice

    today = timezone.now().date()
    got = unlocks_per_badge(feed_dir, today)
    expected = {}
    for badge in (places, images):
        filters = reports.Filters(start=today, end=today, badge=badge, unit="day")
        [row] = reports.unlocks_over_time(filters)
        expected[badge.key] = row["unlocks"]
    assert got == expected
    assert got[images.key] == 5 and got[places.key] == 3  # users 3-6 and the grant; 2, 3, 6

    # The README's query, on this directory and day, says the same.
    readme = (Path(settings.BASE_DIR) / "README.md").read_text()
    section = readme[readme.index("## An analytics feed") :]
    query = section[section.index('duckdb.sql("""') + 14 : section.index('""")')]
    query = query.replace("var/feed", str(feed_dir)).replace("2026-12-08", today.isoformat())
    relation = duckdb.sql(query)
    assert relation is not None and dict(relation.fetchall()) == expected


def test_every_field_of_every_record_is_in_the_documented_schema(owner, feed_dir):
    make_places_badge(threshold=1)
    record_event(owner, "visit.created", payload={"place_id": 1})
    evaluate_events(None)
    export.export_due()
    records = read_feed(feed_dir)
    assert {r["record"] for r in records} == {"event", "decision", "unlock"}
    for record in records:
        assert set(record) <= set(COLUMNS), record
