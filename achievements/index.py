"""Which requirements watch which event type: built once, cached, rebuilt when rules change.

An event only ever touches the requirements that watch its type, so the
evaluator asks this index instead of scanning badges. Each process keeps the
index in memory, tagged with a version token kept in the shared cache;
saving or deleting a badge or requirement replaces the token, and every
process rebuilds on its next lookup.
"""

from __future__ import annotations

import threading
import uuid
from collections import defaultdict
from typing import Any

from django.core.cache import cache

VERSION_KEY = "rules-index-version"

_lock = threading.Lock()
_index: dict[str, list[int]] = {}
_version: str | None = None


def requirement_ids_watching(event_type: str) -> list[int]:
    global _index, _version
    current = _current_version()
    if current != _version:
        with _lock:
            if current != _version:
                _index, _version = _build(), current
    return _index.get(event_type, [])


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


def _build() -> dict[str, list[int]]:
    from achievements.models import BadgeRequirement

    index: dict[str, list[int]] = defaultdict(list)
    for requirement in BadgeRequirement.objects.filter(badge__is_active=True).order_by("pk"):
        for event_type in requirement.watched_types():
            index[event_type].append(requirement.pk)
    return dict(index)
