"""Celery tasks: a thin interface that takes keys, calls the engine, owns retries."""

from __future__ import annotations

import logging
import traceback

from celery import shared_task
from celery.signals import task_postrun
from django.core.cache import cache

from achievements import actions, context

logger = logging.getLogger(__name__)


@shared_task(
    bind=True,
    name="achievements.evaluate_event",
    acks_late=True,
    ignore_result=True,
    # An evaluation takes milliseconds; one that runs for a minute is stuck.
    # The soft limit raises (and counts as a failure); the hard one kills the
    # pool process, which counts as a crash.
    soft_time_limit=60,
    time_limit=120,
)
def evaluate_event_task(self, event_pk: int) -> None:
    """Evaluate one event; retry with backoff, then dead-letter it.

    Any exception counts, not only database errors: an event that fails
    however often it is tried (a malformed payload meeting a rule) must end up
    somewhere staff can see it, while every other event carries on. The
    failure is recorded in its own transaction, because the evaluation's has
    rolled back. An event that kills the worker instead of raising is caught
    by counting starts.
    """
    if actions.record_evaluation_crash(event_pk, _count_start(event_pk)):
        return
    try:
        actions.evaluate_event(event_pk)
    except Exception as exc:
        failure = actions.record_evaluation_failure(
            event_pk, "".join(traceback.format_exception(exc))[-10_000:]
        )
        if failure.retry_in is None:
            return
        logger.warning(
            "Evaluating event %s failed (attempt %s), retrying in %.0fs: %r",
            event_pk,
            failure.attempts,
            failure.retry_in,
            exc,
        )
        raise self.retry(countdown=failure.retry_in, max_retries=None) from exc


def _count_start(event_pk: int) -> int:
    """How many times a worker has started evaluating this event (0 if unknown).

    Kept in the cache, not the database, so counting costs no transaction on
    the hot path; if the cache is down the count is unknown and evaluation
    goes ahead.
    """
    key = f"evaluation-starts:{event_pk}"
    try:
        cache.add(key, 0, timeout=86_400)
        return int(cache.incr(key))
    except Exception:
        logger.warning("Could not count evaluation starts for event %s", event_pk, exc_info=True)
        return 0


@shared_task(name="achievements.sweep_stranded_events", ignore_result=True)
def sweep_stranded_events_task() -> int:
    return actions.sweep_stranded_events()


@task_postrun.connect
def reset_task_context(**kwargs: object) -> None:
    """Forget task-scoped context after every task, whether it succeeded or failed."""
    context.reset()
