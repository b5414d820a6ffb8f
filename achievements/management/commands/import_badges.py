from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from achievements.rulefiles import RuleFileError, import_badges
from project.inputs import json_depth_problem


class Command(BaseCommand):
    help = (
        "Create or update badges from FILE (see docs/rules.md). The whole file is "
        "validated first; nothing is written if any entry is invalid."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            with open(options["file"], encoding="utf-8") as file:
                text = file.read()
        except OSError as exc:
            raise CommandError(f"FILE: cannot read {options['file']!r}: {exc.strerror}.") from None
        except ValueError as exc:  # not UTF-8
            raise CommandError(f"FILE: not valid JSON: {exc}.") from None
        problem = json_depth_problem(text)
        if problem:
            raise CommandError(f"FILE: {problem}.")
        try:
            document = json.loads(text)
        except ValueError as exc:
            raise CommandError(f"FILE: not valid JSON: {exc}.") from None
        try:
            created, updated = import_badges(document, source="import_badges")
        except RuleFileError as exc:
            raise CommandError(
                f"{len(exc.problems)} problem(s), nothing imported: " + "; ".join(exc.problems)
            ) from None
        self.stdout.write(
            self.style.SUCCESS(f"Imported badges: {created} created, {updated} updated.")
        )
