"""What the rules say about event types: built once, cached, rebuilt when rules change.

An event only ever touches the requirements that watch its type, so the
evaluator asks this index instead of scanning badges; the API asks it which
types it accepts and which are de-duplicated, instead of three queries per
request. Each process keeps the index in memory, tagged with a version token
kept in the shared cache; saving or deleting a badge, requirement, event type
or de-duplication rule replaces the token, and every process rebuilds on its
next lookup.
"""

from __future__ import annotations

import threading
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from django.core.cache import cache

VERSION_KEY = "rules-index-version"


@dataclass(frozen=True)
class DedupWindow:
    """A DedupRule as the recorder needs it."""

    payload_key: str
    window_seconds: int


@dataclass(frozen=True)
class _Index:
    watching: dict[str, list[int]] = field(default_factory=dict)
    accepted: frozenset[str] = frozenset()
    dedup: dict[str, DedupWindow] = field(default_factory=dict)


_lock = threading.Lock()
_index = _Index()
_version: str | None = None


def _current() -> _Index:
    global _index, _version
    current = _current_version()
    if current != _version:
        with _lock:
            if current != _version:
                _index, _version = _build(), current
    return _index


def requirement_ids_watching(event_type: str) -> list[int]:
    return _current().watching.get(event_type, [])


def accepted_event_types() -> frozenset[str]:
    """Catalogued types and every type a rule watches (models.accepted_event_types)."""
    return _current().accepted


def dedup_windows() -> dict[str, DedupWindow]:
    """The de-duplication rule of each event type that has one."""
    return _current().dedup


def invalidate(**kwargs: Any) -> None:
    """Signal receiver: the rules changed, every process must rebuild its index."""
    cache.set(VERSION_KEY, uuid.uuid4().hex, timeout=None)


def _current_version() -> str:
    try:
        token = cache.get(VERSION_KEY)
        if token is None:
            token = uuid.uuid4().hex
            cache.add(VERSION_KEY, token, timeout=None)
            token = cache.get(VERSION_KEY, token)
        return str(token)
    except Exception:
        # No shared cache: rebuild every time rather than risk stale rules.
        return uuid.uuid4().hex


def _build() -> _Index:
    from achievements.models import BadgeRequirement, DedupRule, accepted_event_types

    watching: dict[str, list[int]] = defaultdict(list)
    for requirement in BadgeRequirement.objects.filter(badge__is_active=True).order_by("pk"):
        for event_type in requirement.watched_types():
            watching[event_type].append(requirement.pk)
    dedup = {
        event_type: DedupWindow(payload_key, window)
        for event_type, payload_key, window in DedupRule.objects.values_list(
            "event_type", "payload_key", "window_seconds"
        )
    }
    return _Index(dict(watching), frozenset(accepted_event_types()), dedup)
