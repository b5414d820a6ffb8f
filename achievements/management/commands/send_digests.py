from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from achievements import digest


class Command(BaseCommand):
    help = (
        "Send the daily digests that are due: one email to each user who asked for it and "
        "earned something no page showed them, once a local day from ACCOLADE_DIGEST_HOUR. "
        "Celery beat runs it hourly; without beat, run it from cron (hourly, or daily: a "
        "digest stays due until one is made). Safe to run alongside beat."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Say who would get a digest, and of how many unlocks; send and record nothing.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        report = digest.send_due_digests(dry_run=options["dry_run"])
        if options["dry_run"]:
            for planned in report.planned:
                self.stdout.write(
                    f"{planned.username} <{planned.address}>: {planned.unlocks} unlock(s), "
                    f"in {planned.language}"
                )
            self.stdout.write(
                f"Would send {len(report.planned)} digest(s); "
                f"{report.nothing_new} user(s) due have nothing new."
            )
            return
        self.stdout.write(
            f"Sent {report.sent} digest(s); {report.nothing_new} user(s) due had nothing new"
            + (f"; {report.skipped} taken by another run" if report.skipped else "")
            + "."
        )
        if report.failed:
            raise CommandError(
                f"{report.failed} digest(s) could not be sent (the log says why); "
                "they are tried again, at the next run or tomorrow."
            )
