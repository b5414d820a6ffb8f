"""Task-scoped context: the time zone and user an evaluation runs for.

Worker processes run task after task; anything one task sets must not be seen
by the next. `evaluation_context` sets both for the length of a block and
restores the previous values however the block ends, and the Celery
`task_postrun` handler in achievements.tasks resets them once more after
every task as a backstop.
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from django.utils import timezone

current_user_id: ContextVar[int | None] = ContextVar("accolade_current_user_id", default=None)


@contextmanager
def evaluation_context(*, user_id: int, time_zone: str | None) -> Iterator[None]:
    token = current_user_id.set(user_id)
    try:
        # override() restores whatever was active before, even on error.
        with timezone.override(_zone(time_zone)):
            yield
    finally:
        current_user_id.reset(token)


def reset() -> None:
    """Forget any task-scoped context (called after every task)."""
    current_user_id.set(None)
    timezone.deactivate()


def _zone(name: str | None) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(name or "UTC")
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return zoneinfo.ZoneInfo("UTC")
