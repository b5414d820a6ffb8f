"""Daily roll-ups of received events, so the reports never scan the event table.

A day that has ended in the site's time zone is final: events are stamped
`received_at` on arrival, so no event joins it later. Each such day is rolled
up once (`ActivityDay`): its event count, its events per type and a bitmap of
the users active that day. Reports read the roll-ups of the closed days in
their range and count today, which is still filling, from the events
themselves (the `received_at` index keeps that to today's rows).

Users active over a range are the union of the days' bitmaps, so the count is
exact, not an estimate. A bitmap costs one bit per user id (12.5 KB for
100,000 ids) before compression.

Unlocks per day and badge are rolled up the same way: they are stamped when
written. A day counts as closed an hour after it ends (`GRACE`), so an
evaluation stamped just before midnight has committed by then.

The roll-ups are built when a report first asks for a day, or ahead of time
with `manage.py rollup_activity` (from cron or a scheduler, after midnight).
Events written with a `received_at` in a closed day (a bulk import) or deleted
later (a user deleted) leave that day's roll-up stale: rebuild it with
`manage.py rollup_activity --rebuild --since YYYY-MM-DD`.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from django.db.models import Count, Max, Min
from django.db.models.functions import TruncDate
from django.utils import timezone

from achievements.models import ActivityDay, Event, Unlock


def start_of(day: date) -> datetime:
    return timezone.make_aware(datetime.combine(day, time.min))


# A day is rolled up only once it has been over for this long, so that an
# evaluation stamped just before midnight and committed just after is in.
GRACE = timedelta(hours=1)


def last_closed_day(now: datetime | None = None) -> date:
    return timezone.localdate((now or timezone.now()) - GRACE) - timedelta(days=1)


def bitmap(user_ids: Iterable[int]) -> int:
    """The users as an int with bit n set for user n."""
    ids = list(user_ids)
    if not ids:
        return 0
    buffer = bytearray(max(ids) // 8 + 1)
    for user_id in ids:
        buffer[user_id >> 3] |= 1 << (user_id & 7)
    return int.from_bytes(buffer, "little")


def _pack(bits: int) -> bytes:
    return zlib.compress(bits.to_bytes((bits.bit_length() + 7) // 8, "little"))


def _unpack(data: bytes | memoryview) -> int:
    return int.from_bytes(zlib.decompress(bytes(data)), "little")


def build(first: date, last: date, *, rebuild: bool = False) -> int:
    """Roll up the closed days from `first` to `last`; returns how many were written.

    Days already rolled up are kept unless `rebuild`. The missing days are
    read in two grouped queries over their span, however many they are.
    """
    last = min(last, last_closed_day())
    if first > last:
        return 0
    wanted = {first + timedelta(days=n) for n in range((last - first).days + 1)}
    if rebuild:
        ActivityDay.objects.filter(day__in=wanted).delete()
    missing = wanted - set(
        ActivityDay.objects.filter(day__in=wanted).values_list("day", flat=True)
    )
    if not missing:
        return 0
    events = (
        Event.objects.filter(
            received_at__gte=start_of(min(missing)),
            received_at__lt=start_of(max(missing) + timedelta(days=1)),
        )
        .annotate(day=TruncDate("received_at", tzinfo=timezone.get_current_timezone()))
        .order_by()
    )
    by_type: dict[date, dict[str, int]] = defaultdict(dict)
    for day, event_type, n in (
        events.values("day", "event_type")
        .annotate(n=Count("*"))
        .values_list("day", "event_type", "n")
    ):
        by_type[day][event_type] = n
    users: dict[date, list[int]] = defaultdict(list)
    for day, user_id in events.exclude(user__isnull=True).values_list("day", "user_id").distinct():
        users[day].append(user_id)
    unlocks: dict[date, dict[str, int]] = defaultdict(dict)
    for day, badge_id, n in (
        Unlock.objects.filter(
            unlocked_at__gte=start_of(min(missing)),
            unlocked_at__lt=start_of(max(missing) + timedelta(days=1)),
        )
        .annotate(day=TruncDate("unlocked_at", tzinfo=timezone.get_current_timezone()))
        .order_by()
        .values("day", "badge_id")
        .annotate(n=Count("*"))
        .values_list("day", "badge_id", "n")
    ):
        unlocks[day][str(badge_id)] = n
    ActivityDay.objects.bulk_create(
        [
            ActivityDay(
                day=day,
                events=sum(by_type[day].values()),
                by_type=by_type[day],
                users=_pack(bitmap(users[day])),
                user_count=len(users[day]),
                unlocks=unlocks[day],
            )
            for day in sorted(missing)
        ],
        batch_size=500,
        ignore_conflicts=True,  # a concurrent report built the same day: same rows
    )
    return len(missing)


def catch_up(first: date | None = None, *, rebuild: bool = False) -> int:
    """Roll up every closed day from `first` (default: the day after the latest
    roll-up, or the oldest event's day) through yesterday, a month per pass so
    years of events stay in memory. Returns how many days were written."""
    last = last_closed_day()
    if first is None:
        latest = ActivityDay.objects.aggregate(latest=Max("day"))["latest"]
        oldest = Event.objects.aggregate(oldest=Min("received_at"))["oldest"]
        if latest is not None:
            first = latest + timedelta(days=1)
        elif oldest is not None:
            first = timezone.localdate(oldest)
        else:
            return 0
    written = 0
    while first <= last:
        chunk_end = min(last, first + timedelta(days=30))
        written += build(first, chunk_end, rebuild=rebuild)
        first = chunk_end + timedelta(days=1)
    return written


@dataclass(frozen=True)
class Activity:
    events: int
    active_users: int
    by_type: dict[str, int]


def activity(since: date, until: date) -> Activity:
    """Events received and distinct active users from `since` to `until` (inclusive)."""
    closed = last_closed_day()
    closed_until = min(until, closed)
    events, users = 0, 0
    by_type: dict[str, int] = defaultdict(int)
    if since <= closed_until:
        build(since, closed_until)
        for count, packed, types in ActivityDay.objects.filter(
            day__gte=since, day__lte=closed_until
        ).values_list("events", "users", "by_type"):
            events += count
            if count:
                users |= _unpack(packed)
            for event_type, n in types.items():
                by_type[event_type] += n
    if until > closed:
        # Today (and yesterday, within the grace hour) is still filling:
        # count it from the events themselves.
        recent = Event.objects.filter(
            received_at__gte=start_of(max(since, closed + timedelta(days=1))),
            received_at__lt=start_of(until + timedelta(days=1)),
        ).order_by()
        for event_type, n in (
            recent.values("event_type").annotate(n=Count("*")).values_list("event_type", "n")
        ):
            events += n
            by_type[event_type] += n
        users |= bitmap(
            recent.exclude(user__isnull=True).values_list("user_id", flat=True).distinct()
        )
    return Activity(events=events, active_users=users.bit_count(), by_type=dict(by_type))


def unlocks_per_day(since: date, until: date, badge_id: int | None = None) -> dict[date, int]:
    """Unlocks written on each day from `since` to `until` (days without any left out)."""
    closed = last_closed_day()
    counts: dict[date, int] = {}
    if since <= min(until, closed):
        build(since, min(until, closed))
        for day, per_badge in ActivityDay.objects.filter(
            day__gte=since, day__lte=min(until, closed)
        ).values_list("day", "unlocks"):
            n = per_badge.get(str(badge_id), 0) if badge_id else sum(per_badge.values())
            if n:
                counts[day] = n
    if until > closed:
        recent = Unlock.objects.filter(
            unlocked_at__gte=start_of(max(since, closed + timedelta(days=1))),
            unlocked_at__lt=start_of(until + timedelta(days=1)),
        )
        if badge_id:
            recent = recent.filter(badge_id=badge_id)
        for day, n in (
            recent.annotate(day=TruncDate("unlocked_at", tzinfo=timezone.get_current_timezone()))
            .order_by()
            .values("day")
            .annotate(n=Count("*"))
            .values_list("day", "n")
        ):
            counts[day] = counts.get(day, 0) + n
    return counts
