from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.dateparse import parse_date

from achievements import rollups


class Command(BaseCommand):
    help = (
        "Roll up closed days of events and unlocks for the reports, ahead of the first "
        "report that needs them. Run it after midnight (cron or a scheduler); "
        "--rebuild redoes days whose events were imported or deleted afterwards."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--since",
            help="First day to roll up (YYYY-MM-DD). Default: the day after the latest "
            "roll-up, or the oldest event's day.",
        )
        parser.add_argument(
            "--rebuild", action="store_true", help="Rebuild days already rolled up."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        first = None
        if options["since"]:
            try:
                first = parse_date(options["since"])
            except ValueError:
                first = None
            if first is None:
                raise CommandError(f"--since: {options['since']!r} is not a date; use YYYY-MM-DD.")
        written = rollups.catch_up(first, rebuild=options["rebuild"])
        self.stdout.write(f"Rolled up {written} day(s), through {rollups.last_closed_day()}.")
