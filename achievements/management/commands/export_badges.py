from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from achievements.rulefiles import export_badges


class Command(BaseCommand):
    help = "Write every badge and requirement to FILE as JSON (see docs/rules.md); - for stdout."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file")

    def handle(self, *args: Any, **options: Any) -> None:
        text = json.dumps(export_badges(), indent=2, ensure_ascii=False, sort_keys=False) + "\n"
        if options["file"] == "-":
            self.stdout.write(text, ending="")
            return
        try:
            with open(options["file"], "w", encoding="utf-8") as file:
                file.write(text)
        except OSError as exc:
            raise CommandError(
                f"FILE: cannot write {options['file']!r}: {exc.strerror}."
            ) from None
        count = text.count('"key":')
        self.stdout.write(self.style.SUCCESS(f"Exported {count} badge(s) to {options['file']}."))
