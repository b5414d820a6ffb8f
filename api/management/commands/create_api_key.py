from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from api.models import ApiKey


class Command(BaseCommand):
    help = "Create an API key for a service. The key is printed once, alone on the last line."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="Which service the key is for, e.g. billing-webhooks.")

    def handle(self, *args: Any, **options: Any) -> None:
        name = options["name"].strip()
        if not name or len(name) > 100:
            raise CommandError("NAME must be 1-100 characters.")
        if ApiKey.objects.filter(name=name).exists():
            raise CommandError(f"NAME: an API key named {name!r} already exists; pick another.")
        _, key = ApiKey.issue(name)
        self.stderr.write(f"API key for {name!r} created. It is shown once; store it now.")
        self.stdout.write(key)
