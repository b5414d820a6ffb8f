"""Task-scoped context, cleared after every task.

Worker processes run task after task; anything one task sets (Django's
active time zone, the user a task is for) must not be seen by the next. The
evaluation core takes the user's time zone as an argument and sets nothing;
the Celery `task_postrun` handler in achievements.tasks still resets both
after every task, as a backstop for code that does.
"""

from __future__ import annotations

from contextvars import ContextVar

from django.utils import timezone

current_user_id: ContextVar[int | None] = ContextVar("accolade_current_user_id", default=None)


def reset() -> None:
    """Forget any task-scoped context (called after every task)."""
    current_user_id.set(None)
    timezone.deactivate()
