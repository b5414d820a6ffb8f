"""Checks for values from outside (paths, query strings, form fields, JSON text)
that would otherwise fail deep inside as a 500.

PostgreSQL refuses text holding a NUL character, UTF-8 cannot encode a lone
surrogate (which JSON's \\ud800 escapes can make), date arithmetic overflows
near the ends of Python's calendar, and Python's JSON parser recurses once per
level of nesting. Each check returns the problem in words, without the
field's name, or None; the caller names the field in its own error format.
"""

from __future__ import annotations

import math
from datetime import date, datetime
from itertools import accumulate
from typing import Any

# No event can be older (the API refuses them) and a report may reach
# well into the future; both ends leave room for the day arithmetic around
# a range (a week's start, the day after its end) within Python's calendar.
EARLIEST_DATE = date(2000, 1, 1)
LATEST_DATE = date(2999, 12, 31)
# Rule files, tiers, filters and event payloads nest about ten levels; the
# limit keeps every parser and walker far below Python's recursion limit.
MAX_JSON_DEPTH = 32

_NOT_BRACKETS = bytes(byte for byte in range(256) if byte not in b"[]{}")
_DEPTH_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


def text_problem(value: str, *, max_length: int | None = None) -> str | None:
    """What is wrong with a path or query string parameter, or a form field's text."""
    if "\x00" in value:
        return "must not contain NUL characters"
    if max_length is not None and len(value) > max_length:
        return f"must be at most {max_length} characters"
    return None


def date_problem(value: date) -> str | None:
    """Whether a date (or a date and time) a report or job is asked for is in range."""
    day = value.date() if isinstance(value, datetime) else value
    if not EARLIEST_DATE <= day <= LATEST_DATE:
        return f"must be a date between {EARLIEST_DATE} and {LATEST_DATE}"
    return None


def json_depth_problem(text: str, *, max_depth: int = MAX_JSON_DEPTH) -> str | None:
    """Whether JSON text nests deeper than `max_depth`, found before it is parsed.

    Linear and without a Python step per character, so about the cost of the
    parse: the escaped backslashes and quotes go, then the strings between the
    quotes left, then all but the brackets; the depth is the highest running
    sum over those.
    """
    if text.count("[") + text.count("{") <= max_depth:
        return None
    data = text.encode("utf-8", "surrogatepass").replace(b"\\\\", b"").replace(b'\\"', b"")
    brackets = b"".join(data.split(b'"')[0::2]).translate(None, _NOT_BRACKETS)
    if max(accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0) > max_depth:
        return f"is nested too deeply (more than {max_depth} levels)"
    return None


def json_value_problem(value: Any, *, max_depth: int = MAX_JSON_DEPTH) -> tuple[str, str] | None:
    """The first part of a parsed JSON value the database could not store, as
    (where, problem): `where` is "" for the value itself, else a suffix such as
    ".tiers[0].name". Text with NUL characters or lone surrogates, numbers that
    are not finite, nesting deeper than `max_depth`."""
    return _value_problem(value, "", 1, max_depth)


def _value_problem(value: Any, where: str, depth: int, max_depth: int) -> tuple[str, str] | None:
    if isinstance(value, dict | list | tuple) and depth > max_depth:
        return where, f"is nested too deeply (more than {max_depth} levels)"
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and (problem := _string_problem(key)):
                return where, f"keys {problem}"
            found = _value_problem(item, f"{where}.{key}", depth + 1, max_depth)
            if found:
                return found
    elif isinstance(value, list | tuple):
        for position, item in enumerate(value):
            found = _value_problem(item, f"{where}[{position}]", depth + 1, max_depth)
            if found:
                return found
    elif isinstance(value, str):
        problem = _string_problem(value)
        if problem:
            return where, problem
    elif isinstance(value, float) and not math.isfinite(value):
        return where, "must be a finite number"
    return None


def _string_problem(value: str) -> str | None:
    if "\x00" in value:
        return "must not contain NUL characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must not contain unpaired surrogates (\\ud800-\\udfff)"
    return None
