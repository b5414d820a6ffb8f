"""Calendar periods in a user's own time zone. Pure: no ORM, no clock.

Day, week and month rules, streaks and repeatable badges all ask the same
question: which local day, week or month did this moment fall in, for this
user? Days are counted by the local calendar date, so a day across a DST
change is one day, whatever its length in hours.
"""

from __future__ import annotations

import functools
import zoneinfo
from datetime import date, datetime, time, timedelta

from achievements.rules import Scope


def local_date(moment: datetime, time_zone: str) -> date:
    """The calendar date of an aware `moment` in `time_zone` (UTC if unknown)."""
    return moment.astimezone(_zone(time_zone)).date()


def day_number(moment: datetime, time_zone: str) -> int:
    """Consecutive integers for consecutive local days."""
    return local_date(moment, time_zone).toordinal()


def week_number(moment: datetime, time_zone: str) -> int:
    """Consecutive integers for consecutive local ISO weeks (Monday to Sunday)."""
    day = local_date(moment, time_zone)
    return (day - timedelta(days=day.weekday())).toordinal() // 7


def period_key(scope: Scope, moment: datetime, time_zone: str) -> str:
    """A stable name for the calendar period of `moment`: "all", "2026-11-21",
    "2026-W47" or "2026-11"; rolling windows bucket by day."""
    if scope is Scope.ALL_TIME:
        return "all"
    day = local_date(moment, time_zone)
    if scope in (Scope.DAY, Scope.ROLLING):
        return day.isoformat()
    if scope is Scope.WEEK:
        year, week, _ = day.isocalendar()
        return f"{year}-W{week:02d}"
    return f"{day.year}-{day.month:02d}"


def is_period_key(scope: Scope, text: str) -> bool:
    """Whether `text` names a day, week or month as period_key writes it."""
    try:
        if scope in (Scope.DAY, Scope.ROLLING):
            return len(text) == 10 and date.fromisoformat(text).isoformat() == text
        if scope is Scope.WEEK:
            year, week = text.split("-W")
            return (
                len(text) == 8
                and year.isdigit()
                and week.isdigit()
                and bool(date.fromisocalendar(int(year), int(week), 1))
            )
        if scope is Scope.MONTH:
            year, month = text.split("-")
            return len(text) == 7 and year.isdigit() and month.isdigit() and 1 <= int(month) <= 12
    except ValueError:
        return False
    return text == "all" and scope is Scope.ALL_TIME


@functools.lru_cache(maxsize=4096)  # a few days, in a few zones, asked again and again
def start_of_day(day: date, time_zone: str) -> datetime:
    """The first moment of a local calendar day (aware; after a DST gap at midnight,
    the first moment that exists)."""
    zone = _zone(time_zone)
    return datetime.combine(day, time(0), tzinfo=zone).astimezone(zone)


def start_of_next(scope: Scope, moment: datetime, time_zone: str) -> datetime:
    """The first moment of the local day, week or month after the one `moment` is in."""
    day = local_date(moment, time_zone)
    if scope is Scope.WEEK:
        following = day + timedelta(days=7 - day.weekday())
    elif scope is Scope.MONTH:
        following = date(day.year + day.month // 12, day.month % 12 + 1, 1)
    else:
        following = day + timedelta(days=1)
    return start_of_day(following, time_zone)


def _zone(name: str) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(name or "UTC")
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return zoneinfo.ZoneInfo("UTC")
