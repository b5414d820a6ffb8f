from __future__ import annotations

from datetime import datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from achievements.replay import UnknownBadge, replay_events

MAX_PROCESSES = 64


class Command(BaseCommand):
    help = (
        "Rebuild progress and unlocks from the event log, without toasts. "
        "Unlocks are never revoked; users who no longer qualify are listed."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--since",
            help="Only users with events on or after this date (YYYY-MM-DD or ISO 8601); "
            "their whole history is replayed.",
        )
        parser.add_argument(
            "--badge",
            action="append",
            dest="badges",
            metavar="KEY",
            help="Only this badge (repeatable). Default: every active badge.",
        )
        parser.add_argument(
            "--processes",
            type=int,
            default=1,
            metavar="N",
            help="Replay in N processes at once (PostgreSQL only). The fold runs in "
            "Python, one core per process: up to the number of cores, less what live "
            "evaluation needs meanwhile. Default: 1.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        since = None
        if options["since"]:
            since = _parse_since(options["since"])
        processes = options["processes"]
        if not 1 <= processes <= MAX_PROCESSES:
            raise CommandError(
                f"--processes must be between 1 and {MAX_PROCESSES}, not {processes}."
            )
        if processes > 1 and connection.vendor != "postgresql":
            raise CommandError(
                f"--processes {processes} needs PostgreSQL; {connection.vendor} takes one "
                "writer at a time, so replay there runs in one process."
            )
        try:
            report = replay_events(
                since=since,
                badge_keys=options["badges"],
                on_progress=self._progress,
                processes=processes,
            )
        except UnknownBadge as exc:
            raise CommandError(f"--badge: {exc}.") from None
        self.stdout.write(
            self.style.SUCCESS(
                f"Replayed {report.events} event(s) for {report.users} user(s); "
                f"{len(report.newly_unlocked)} badge(s) newly unlocked (silently)."
            )
        )
        if report.no_longer_qualifying:
            self.stdout.write(
                f"{len(report.no_longer_qualifying)} unlock(s) no longer qualify under the "
                "current rules and were kept (user id, badge id):"
            )
            for user_id, badge_id in report.no_longer_qualifying[:50]:
                self.stdout.write(f"  {user_id}, {badge_id}")

    def _progress(self, done: int, total: int) -> None:
        if done == total or done % 500 == 0:
            self.stdout.write(f"  {done}/{total} users", ending="\n")


def _parse_since(value: str) -> datetime:
    try:
        parsed = parse_datetime(value)
        if parsed is None:
            day = parse_date(value)
            if day is None:
                raise ValueError("expected YYYY-MM-DD or an ISO 8601 date and time")
            parsed = datetime(day.year, day.month, day.day)
    except ValueError as exc:
        raise CommandError(f"--since {value!r} is not a date: {exc}.") from None
    if timezone.is_naive(parsed):
        parsed = timezone.make_aware(parsed, timezone.get_default_timezone())
    return parsed
