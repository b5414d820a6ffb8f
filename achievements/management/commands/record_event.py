from __future__ import annotations

import json
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from django.utils.dateparse import parse_datetime

from achievements.events import InvalidEvent, record_event
from project.inputs import json_depth_problem


class Command(BaseCommand):
    help = "Record an event for a user exactly as the application does, then evaluate it."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--user", required=True, help="Username of the user who acted.")
        parser.add_argument("--type", required=True, dest="event_type", help="e.g. visit.created")
        parser.add_argument("--payload", default="{}", help='A JSON object, e.g. {"place_id": 3}')
        parser.add_argument("--event-id", help="A stable id; repeating it records nothing new.")
        parser.add_argument("--occurred-at", help="ISO 8601 with a time zone; default now.")
        parser.add_argument("--source", default="cli", help="Where the event came from.")

    def handle(self, *args: Any, **options: Any) -> None:
        problem = json_depth_problem(options["payload"])
        if problem:
            raise CommandError(f"--payload {problem}.")
        try:
            payload = json.loads(options["payload"])
        except json.JSONDecodeError as exc:
            raise CommandError(f"--payload is not valid JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise CommandError(f"--payload must be a JSON object, not {type(payload).__name__}.")

        occurred_at = None
        if options["occurred_at"]:
            try:
                occurred_at = parse_datetime(options["occurred_at"])
            except ValueError as exc:
                raise CommandError(f"--occurred-at is not a valid date and time: {exc}.") from None
            if occurred_at is None:
                raise CommandError("--occurred-at is not an ISO 8601 date and time.")

        username = options["user"]
        try:
            user = get_user_model().objects.get_by_natural_key(username)
        except get_user_model().DoesNotExist:
            raise CommandError(f"--user: no user named {username!r}.") from None

        try:
            with transaction.atomic():
                recorded = record_event(
                    user,
                    options["event_type"],
                    payload=payload,
                    event_id=options["event_id"],
                    occurred_at=occurred_at,
                    source=options["source"],
                )
        except InvalidEvent as exc:
            flag = {"event_type": "type"}.get(exc.field, exc.field).replace("_", "-")
            raise CommandError(f"--{flag}: {exc.problem}.") from None

        event = recorded.event
        if recorded.duplicate:
            self.stdout.write(
                f"Duplicate: event {event.event_id} was already recorded; nothing changed."
            )
        else:
            self.stdout.write(
                self.style.SUCCESS(f"Recorded {event.event_type} {event.event_id} for {username}.")
            )
