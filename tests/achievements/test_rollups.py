"""Daily roll-ups for the reports: exact, final once a day closes, rebuilt on demand."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from achievements import rollups
from achievements.models import ActivityDay, Event, Unlock
from tests.factories import make_badge, make_user


def _event(n: int, user, event_type: str, received: datetime) -> Event:
    return Event.objects.create(
        event_id=f"e{n}",
        event_type=event_type,
        user=user,
        occurred_at=received,
        received_at=received,
        processed_at=received,
    )


@pytest.fixture
def scattered(db):
    """60 events and some unlocks over the last 20 days (today included), for 8 users."""
    rng = random.Random(3)
    users = [make_user(username=f"u{n}") for n in range(8)]
    badges = [make_badge(key=f"b{n}", requirements=[]) for n in range(3)]
    now = timezone.now()
    events = []
    for n in range(60):
        received = now - timedelta(days=rng.randrange(20), minutes=rng.randrange(60 * 24))
        received = min(received, now)
        events.append(_event(n, rng.choice(users), rng.choice(["a", "b"]), received))
    unlocks = [
        Unlock(
            user=user,
            badge=badge,
            unlocked_at=now - timedelta(days=rng.randrange(20), minutes=rng.randrange(600)),
        )
        for user in users
        for badge in badges
        if rng.random() < 0.6
    ]
    Unlock.objects.bulk_create(unlocks)
    return events, unlocks, badges


def test_activity_over_any_range_matches_counting_the_events(scattered):
    events, _, _ = scattered
    today = timezone.localdate()
    rng = random.Random(5)
    for _ in range(25):
        since = today - timedelta(days=rng.randrange(22))
        until = min(today, since + timedelta(days=rng.randrange(22)))
        inside = [e for e in events if since <= timezone.localdate(e.received_at) <= until]
        activity = rollups.activity(since, until)
        assert activity.events == len(inside), (since, until)
        assert activity.active_users == len({e.user_id for e in inside}), (since, until)
        assert activity.by_type == {
            t: n for t in ("a", "b") if (n := sum(e.event_type == t for e in inside))
        }
    # Closed days were rolled up once; today never is.
    assert ActivityDay.objects.filter(day__gt=rollups.last_closed_day()).count() == 0
    assert (
        ActivityDay.objects.count()
        == (rollups.last_closed_day() - (today - timedelta(21))).days + 1
    )


def test_unlocks_per_day_match_counting_the_unlocks(scattered):
    _, unlocks, badges = scattered
    today = timezone.localdate()
    since = today - timedelta(days=25)
    for badge in (None, badges[1]):
        expected: dict = {}
        for unlock in unlocks:
            if badge is None or unlock.badge_id == badge.pk:
                day = timezone.localdate(unlock.unlocked_at)
                expected[day] = expected.get(day, 0) + 1
        assert rollups.unlocks_per_day(since, today, badge.pk if badge else None) == expected


def test_a_closed_day_is_final_until_rebuilt(db):
    user = make_user(username="late")
    day = timezone.localdate() - timedelta(days=3)
    at = rollups.start_of(day) + timedelta(hours=12)
    _event(1, user, "a", at)
    assert rollups.activity(day, day).events == 1
    # An import writes an event into the closed day after it was rolled up.
    _event(2, make_user(username="imported"), "a", at)
    assert rollups.activity(day, day).active_users == 1
    call_command("rollup_activity", "--rebuild", "--since", str(day))
    assert rollups.activity(day, day).active_users == 2


def test_a_day_closes_an_hour_after_it_ends():
    midnight = rollups.start_of(timezone.localdate())
    day_before = timezone.localdate() - timedelta(days=1)
    assert rollups.last_closed_day(midnight + timedelta(minutes=30)) == day_before - timedelta(1)
    assert rollups.last_closed_day(midnight + timedelta(minutes=61)) == day_before


def test_the_command_rolls_up_from_the_oldest_event(db, capsys):
    user = make_user(username="old")
    _event(1, user, "a", timezone.now() - timedelta(days=10))
    call_command("rollup_activity")
    assert "Rolled up" in capsys.readouterr().out
    assert ActivityDay.objects.filter(events=1).count() == 1
    assert ActivityDay.objects.count() >= 8
    with pytest.raises(Exception, match="--since: 'soon' is not a date"):
        call_command("rollup_activity", "--since", "soon")


def test_the_hourly_task_catches_up_from_the_latest_roll_up(db):
    from achievements.tasks import rollup_activity_task

    assert rollup_activity_task() == 0  # no events, nothing to roll up
    _event(1, make_user(username="old"), "a", timezone.now() - timedelta(days=5))
    written = rollup_activity_task()
    assert written == (rollups.last_closed_day() - timezone.localdate()).days + 6
    assert rollup_activity_task() == 0  # up to date: nothing is read again


def test_bitmaps_count_large_and_sparse_user_ids():
    ids = [1, 7, 8, 9_999_999, 123_456]
    assert rollups.bitmap(ids).bit_count() == 5
    packed = rollups._pack(rollups.bitmap(ids))
    assert rollups._unpack(packed) | rollups.bitmap([7, 2]) == rollups.bitmap([*ids, 2])
    assert rollups.bitmap([]) == 0
