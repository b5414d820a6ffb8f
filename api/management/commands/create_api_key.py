from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from api.models import DEFAULT_SCOPES, SCOPES, ApiKey


class Command(BaseCommand):
    help = (
        "Create an API key for a service. The key is printed once, alone on the last line. "
        "Scopes: " + "; ".join(f"{name} ({what})" for name, what in SCOPES.items()) + "."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="Which service the key is for, e.g. billing-webhooks.")
        parser.add_argument(
            "--producer",
            help="The producer the key speaks for (default: NAME as a slug). Its events' "
            "ids are that producer's own, and it reads only that producer's events; keys "
            "of one service (a rotation) share one. 'app' shares the site's own.",
        )
        parser.add_argument(
            "--scope",
            action="append",
            choices=list(SCOPES),
            dest="scopes",
            help=f"What the key may do; repeat for more (default: {' '.join(DEFAULT_SCOPES)}).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        name = options["name"].strip()
        if not name or len(name) > 100:
            raise CommandError("NAME must be 1-100 characters.")
        if ApiKey.objects.filter(name=name).exists():
            raise CommandError(f"NAME: an API key named {name!r} already exists; pick another.")
        try:
            api_key, key = ApiKey.issue(
                name, producer=options["producer"], scopes=options["scopes"]
            )
        except ValidationError as exc:
            field, problems = next(iter(exc.message_dict.items()))
            label = {"producer": "--producer", "scopes": "--scope", "name": "NAME"}.get(
                field, field
            )
            raise CommandError(f"{label}: {' '.join(problems)}") from None
        self.stderr.write(
            f"API key for {name!r} created, for producer {api_key.producer!r} with scopes "
            f"{', '.join(api_key.scopes)}. It is shown once; store it now."
        )
        self.stdout.write(key)
