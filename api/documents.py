"""The event document, as producers send it: over the HTTP API, or on the stream.

One event is a JSON object with `event_id`, `event_type`, `user_id` and
`occurred_at` (required), `source` and `payload`. `event_from` checks one and
makes the ExternalEvent to record, or says what is wrong with each field, so
the API and the stream consumer (ingest/) refuse the same things in the same
words.
"""

from __future__ import annotations

import json
from collections.abc import Set as AbstractSet
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from achievements.events import EVENT_ID_PATTERN, SOURCE_PATTERN, ExternalEvent
from achievements.rules import event_type_problem
from project.inputs import json_depth_problem

EVENT_FIELDS = {"event_id", "event_type", "user_id", "occurred_at", "source", "payload"}
REQUIRED_FIELDS = ("event_id", "event_type", "user_id", "occurred_at")
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)

Problem = dict[str, str]


def parse_json(text: str) -> tuple[Any, str | None]:
    """The JSON document in `text`, or the problem with it (too deep, not JSON,
    NaN or Infinity)."""
    problem = json_depth_problem(text)
    if problem:
        return None, problem
    try:
        return json.loads(text, parse_constant=_refuse_constant), None
    except ValueError as exc:
        return None, f"is not valid JSON: {exc}"


def event_from(
    item: Any, prefix: str, known_types: AbstractSet[str], *, source: str
) -> ExternalEvent | list[Problem]:
    """The event this document describes, or its problems (each naming its field,
    with `prefix` before it). `source` is the default for a document without one."""
    problems = _problems(item, prefix, known_types)
    if problems:
        return problems
    return ExternalEvent(
        user_id=item["user_id"],
        event_type=item["event_type"],
        payload=item.get("payload", {}),
        event_id=item["event_id"],
        occurred_at=_parse_time(item["occurred_at"]),
        source=item.get("source", source),
    )


def _problems(item: Any, prefix: str, known_types: AbstractSet[str]) -> list[dict[str, str]]:
    if not isinstance(item, dict):
        return [
            {
                "field": prefix.rstrip(".") or "body",
                "problem": f"must be an event object, not {json_type(item)}",
            }
        ]
    problems = [
        {"field": prefix + name, "problem": "is not a field of an event"}
        for name in sorted(set(item) - EVENT_FIELDS)
    ]
    problems += [
        {"field": prefix + name, "problem": "is required"}
        for name in REQUIRED_FIELDS
        if name not in item
    ]

    def check(name: str, problem: str | None) -> None:
        if problem:
            problems.append({"field": prefix + name, "problem": problem})

    if "event_id" in item:
        check("event_id", _string_problem(item["event_id"], EVENT_ID_PATTERN, 128))
    if "user_id" in item:
        check("user_id", _string_problem(item["user_id"], EVENT_ID_PATTERN, 128))
    if "source" in item:
        check("source", _string_problem(item["source"], SOURCE_PATTERN, 64))
    if "event_type" in item:
        kind = item["event_type"]
        type_problem = event_type_problem(kind)
        if type_problem is None and kind not in known_types:
            type_problem = (
                f"{kind!r} is not a known event type; staff add it under "
                "Achievements › Event types"
            )
        check("event_type", type_problem)
    if "occurred_at" in item:
        check("occurred_at", _time_problem(item["occurred_at"]))
    if "payload" in item and not isinstance(item["payload"], dict):
        check("payload", f"must be an object, not {json_type(item['payload'])}")
    return problems


def _string_problem(value: Any, pattern: Any, limit: int) -> str | None:
    if not isinstance(value, str):
        return f"must be a string, not {json_type(value)}"
    if not pattern.match(value):
        return (
            f"must be 1-{limit} characters of letters, digits, '.', '_', ':' or '-', "
            "starting with a letter or digit"
        )
    return None


def _parse_time(value: str) -> datetime | None:
    try:
        return parse_datetime(value.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        return None


def _time_problem(value: Any) -> str | None:
    if not isinstance(value, str):
        return f"must be an ISO 8601 date-time string, not {json_type(value)}"
    if len(value) > 40:
        return "is too long for a date-time"
    parsed = _parse_time(value)
    if parsed is None:
        return "is not an ISO 8601 date-time such as 2026-11-21T09:30:00Z"
    if timezone.is_naive(parsed):
        return "must include a time zone, such as Z or +01:00"
    now = timezone.now()
    skew = timedelta(seconds=settings.ACCOLADE_API_MAX_CLOCK_SKEW_SECONDS)
    if parsed > now + skew:
        return f"is in the future (more than {skew.seconds} s after the server's clock)"
    if parsed < EARLIEST:
        return "is before 2000-01-01"
    return None


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def json_type(value: Any) -> str:
    return {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
    }.get(type(value), type(value).__name__)
