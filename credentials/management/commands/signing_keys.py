from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from credentials.models import SigningKey


class Command(BaseCommand):
    help = (
        "The keys credentials are signed with. `list`; `rotate`: a new key signs from now on, "
        "the old ones stay published so what they signed still verifies; `retire KID`: stop "
        "publishing a key (what it signed stops verifying; holders download again)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=["list", "rotate", "retire"])
        parser.add_argument("kid", nargs="?", help="The key to retire (see `list`).")

    def handle(self, *args: Any, action: str, kid: str | None, **options: Any) -> None:
        if action == "rotate":
            key = SigningKey.generate()
            self.stdout.write(f"New signing key {key.kid}; earlier keys stay published.")
        elif action == "retire":
            if not kid:
                raise CommandError("retire: name the key to retire (see `signing_keys list`).")
            found = SigningKey.objects.published().filter(kid=kid).first()
            if found is None:
                raise CommandError(f"retire: no published key {kid!r} (see `signing_keys list`).")
            if SigningKey.objects.published().count() == 1:
                raise CommandError("retire: this is the only key; rotate first.")
            found.retired_at = timezone.now()
            found.save(update_fields=["retired_at"])
            self.stdout.write(f"Key {kid} retired: credentials it signed no longer verify.")
        for key in SigningKey.objects.all():
            self.stdout.write(f"  {key}")
