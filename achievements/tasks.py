"""Celery tasks: a thin interface that takes keys, calls the engine, owns retries."""

from __future__ import annotations

import logging
import socket
import threading
from typing import Any

from celery import shared_task
from celery.signals import task_postrun, task_prerun, worker_ready, worker_shutting_down
from django.core.cache import cache
from django.db import close_old_connections

from achievements import context, dispatch, engine, metrics

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
    if dispatch.record_evaluation_crash(event_pk, _count_start(event_pk)):
        return
    try:
        engine.evaluate_event(event_pk)
    except Exception as exc:
        failure = dispatch.evaluation_failed(event_pk, exc)
        if failure.retry_in is None:
            return
        raise self.retry(countdown=failure.retry_in, max_retries=None) from exc


def _count_start(event_pk: int) -> int:
    """How many times a worker has started evaluating this event (0 if unknown).

    Kept in the cache, not the database, so counting costs no transaction on
    the hot path; if the cache is down the count is unknown and evaluation
    goes ahead.
    """
    key = dispatch.starts_key(event_pk)
    try:
        cache.add(key, 0, timeout=86_400)
        return int(cache.incr(key))
    except Exception:
        logger.warning("Could not count evaluation starts for event %s", event_pk, exc_info=True)
        return 0


@shared_task(
    name="achievements.evaluate_pending",
    acks_late=True,
    ignore_result=True,
    # A drain yields after dispatch.DRAIN_BUDGET_SECONDS; a batch that runs
    # for a minute is stuck. dispatch.LOST_AFTER_SECONDS must exceed the hard limit.
    soft_time_limit=60,
    time_limit=120,
)
def evaluate_pending_task(recover: bool = False) -> int:
    """Evaluate the waiting events in batches (achievements.dispatch); `recover`
    first looks for batches that died with their worker."""
    return dispatch.drain(recover=recover)


@shared_task(
    name="achievements.run_reevaluation",
    ignore_result=True,
    acks_late=True,
    # A long job: no time limit. If its worker dies, the message comes back
    # and the job is taken again once its heartbeat is stale (the replay is
    # idempotent per user).
    soft_time_limit=None,
    time_limit=None,
)
def run_reevaluation_task(job_id: int) -> None:
    from achievements import reevaluation

    reevaluation.run(job_id)


@shared_task(name="achievements.sweep_stranded_events", ignore_result=True)
def sweep_stranded_events_task() -> int:
    return dispatch.sweep_stranded_events()


@shared_task(name="achievements.rollup_activity", ignore_result=True)
def rollup_activity_task() -> int:
    """Roll up the days that closed since the last run (see achievements.rollups)."""
    from achievements import rollups

    return rollups.catch_up()


@shared_task(name="achievements.expire_badges", ignore_result=True)
def expire_badges_task() -> int:
    """End the earnings whose time is up and send the reminders due (achievements.expiry)."""
    from achievements import expiry

    return expiry.run_schedule().expired


@shared_task(name="achievements.send_digests", ignore_result=True)
def send_digests_task() -> int:
    """The daily emails that have come due (achievements.digest); hourly, from beat.
    Runs that overlap are safe: each user's digest is claimed by one."""
    from achievements import digest

    return digest.send_due_digests().sent


@task_postrun.connect
def reset_task_context(**kwargs: object) -> None:
    """Forget task-scoped context after every task, whether it succeeded or failed."""
    context.reset()


@task_prerun.connect
@task_postrun.connect
def release_database_connections(sender: Any = None, **kwargs: object) -> None:
    """Hand the task's connection back to the pool, or drop it if it broke.

    What Django does around a request. Celery's own fix-up would close the
    whole pool instead (settings.CELERY_DB_REUSE_MAX keeps it from doing so
    on every task), so the next task takes a warm connection, not a new one.
    Eager tasks run inside their caller's transaction and are left alone.
    """
    if getattr(getattr(sender, "request", None), "is_eager", False):
        return
    close_old_connections()


_heartbeat_stop = threading.Event()


@worker_ready.connect
def start_heartbeat(sender: Any = None, **kwargs: object) -> None:
    """Tell /healthz and /metrics this worker is alive, every few seconds (main
    process), and ask for a drain of whatever waits."""
    hostname = str(getattr(sender, "hostname", "") or socket.gethostname())

    def beat() -> None:
        while not _heartbeat_stop.is_set():
            metrics.heartbeat(hostname)
            _heartbeat_stop.wait(metrics.WORKER_HEARTBEAT_SECONDS)
        metrics.forget_worker(hostname)

    _heartbeat_stop.clear()
    threading.Thread(target=beat, name="accolade-heartbeat", daemon=True).start()
    # A backlog a crashed worker left (and its batches) would otherwise wait
    # for the next event, or the sweeper.
    dispatch.on_worker_start()


@worker_shutting_down.connect
def stop_heartbeat(**kwargs: object) -> None:
    _heartbeat_stop.set()
