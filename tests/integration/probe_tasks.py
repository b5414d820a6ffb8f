"""Tasks loaded only into a test worker (celery --include), to look inside it."""

from __future__ import annotations

import json
import os
import signal

from celery import shared_task
from django.utils import timezone

from achievements import context


def _snapshot() -> dict[str, object]:
    return {
        "time_zone": timezone.get_current_timezone_name(),
        "user_id": context.current_user_id.get(),
    }


@shared_task(name="probe.leak_context_and_fail")
def leak_context_and_fail(path: str) -> None:
    timezone.activate("Pacific/Chatham")
    context.current_user_id.set(4242)
    with open(path, "w") as file:
        json.dump(_snapshot(), file)
    raise RuntimeError("a task that fails after setting context")


@shared_task(name="probe.report_context")
def report_context(path: str) -> None:
    with open(path, "w") as file:
        json.dump(_snapshot(), file)


@shared_task(name="probe.report_backend")
def report_backend(path: str) -> None:
    """Append the PostgreSQL backend this task's connection talks to."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (pid,) = cursor.fetchone()
    with open(path, "a") as file:
        file.write(f"{pid}\n")


def _crash_on_marked_events() -> None:
    """With PROBE_CRASH_FILE set and that file present, evaluating an event whose
    payload says "crash" kills the worker process, as the kernel's out-of-memory
    killer would: no exception, no clean-up. Removing the file is the fix."""
    path = os.environ.get("PROBE_CRASH_FILE")
    if not path:
        return
    from achievements import progress

    original = progress.apply_fact

    def apply_fact(spec, state, fact, *args, **kwargs):
        if fact.payload.get("crash") and os.path.exists(path):
            os.kill(os.getpid(), signal.SIGKILL)
        return original(spec, state, fact, *args, **kwargs)

    progress.apply_fact = apply_fact


_crash_on_marked_events()
