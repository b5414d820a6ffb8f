"""From committed events to the engine: enqueueing, coalesced drains, the in-process
executor, the sweeper, and the retry and dead-letter policy.

One task message per event caps a worker near a thousand events a second,
and an event's evaluation is cheap next to its message. So a committed event
only asks for a *drain*, and asks coalesce: while a drain is asked for or
working, later events send nothing (a short-lived flag in the cache). A
drain claims the waiting events a batch at a time (`engine.evaluate_events`,
oldest first, skipping rows another drain holds) until a claim finds none;
then it clears the flag and looks once more, for events committed while the
flag was still set, which asked nobody. An event committed after that asks
again, so none is left behind; the flag expires after a few seconds in case
its request was lost, and the sweeper is the backstop for a message lost on
the way. Under steady load one drain keeps working and most requests send
nothing (one whenever the flag expires under a long drain, or after a drain
ran dry; what a send costs: docs/performance.md, "Coalesced drains").

A drain whose first batch is full asks for one more drain, so a backlog
spreads over every worker process. A drain's last look, after it clears
the flag, is one indexed read outside a transaction (a claim is three
round trips), and a drain asked for when nothing waits costs one claim
that finds nothing. A drain that fails clears the flag and asks for another a
second later, for the events that committed while it held the flag.

When a batch raises, its transaction rolls back whole, and the drain
evaluates its halves, and their halves, until each failure is one event:
the rest commit within the same drain, and the failing event has its attempt
counted, its error recorded and its next attempt due after an exponential
back-off; drains take it again when that is due, until it is dead-lettered
(`record_evaluation_failure`). An error that says the database is out of
reach fails nobody: the drain gives up and asks again a second later.

When a batch kills its worker process (no exception to catch), the
in-flight registry (`achievements.inflight`) shows it lost as soon as its
process is known gone, and the next drain tries its events again in small
chunks; the events of a chunk that dies too are set apart for the per-event
task, which counts starts, so an event that kills workers is dead-lettered.
A worker that starts asks for such a drain, so a backlog left by a crash
does not wait for the next event; celery beat's sweeper asks for one too,
for events that have waited too long.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from celery import current_app
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.core.cache import cache
from django.db import (
    DatabaseError,
    InterfaceError,
    OperationalError,
    close_old_connections,
    transaction,
)
from django.db.models import F
from django.utils import timezone

from achievements import context, engine, inflight, metrics
from achievements.db import after_commit
from achievements.engine import evaluate_events, events_waiting
from achievements.models import Event
from project.cache import shared_redis

logger = logging.getLogger(__name__)

DRAIN_FLAG = "evaluation:drain-requested"
# While set, events send no drain request: one is asked for or working, and
# it clears the flag when it runs out of events (or fails). Short, so that
# under a long drain a second one is soon asked for, and a request lost on
# the way stops holding back the requests of later events.
FLAG_SECONDS = 2
# A drain yields its worker after this long, leaving the rest to a new drain.
DRAIN_BUDGET_SECONDS = 10.0
# After a failure, the next drain is asked for this much later.
RETRY_SECONDS = 1.0
# How often one process's drains look for batches lost with their worker (one
# Redis read); a drain asked for by a starting worker or the sweeper looks at once.
RECOVERY_INTERVAL_SECONDS = 2.0
_recovered_at = float("-inf")


def batch_size() -> int:
    return int(settings.ACCOLADE_EVALUATION_BATCH_SIZE)


def task(name: str) -> Any:
    """A Celery task of achievements.tasks, by name: the tasks call this module,
    so it does not import them."""
    return current_app.tasks[name]


def _drain_task() -> Any:
    return task("achievements.evaluate_pending")


def request_drain() -> None:
    """Ask for a drain unless one is already asked for (called after an event commits).

    With Redis, setting the flag also sends the metrics this thread has
    gathered (the recorder's count of events received): one round trip.
    """
    try:
        asked = _raise_flag()
    except Exception:
        asked = True  # no cache to coalesce with: ask anyway
    if not asked:
        return
    try:
        _drain_task().delay()
    except Exception:
        # The broker is unreachable: the event is committed and waits; let
        # the next event ask again instead of waiting out the flag.
        logger.exception("Could not ask for an evaluation drain")
        with contextlib.suppress(Exception):
            cache.delete(DRAIN_FLAG)


def _raise_flag() -> bool:
    """Set the drain flag unless it is set; whether this call set it."""
    client = shared_redis()
    if client is None:
        return bool(cache.add(DRAIN_FLAG, 1, timeout=FLAG_SECONDS))
    pipe = client.pipeline(transaction=False)
    pipe.set(cache.make_and_validate_key(DRAIN_FLAG), 1, nx=True, ex=FLAG_SECONDS)
    metrics.ride_along(pipe)
    return bool(pipe.execute()[0])


def drain(*, recover: bool = False) -> int:
    """Evaluate waiting events a batch at a time until none are left; returns how many.

    Events that commit while a drain holds the flag ask nobody, so every way
    out of a drain other than "a look after clearing the flag found
    nothing" clears the flag and asks for another drain: an unreachable
    database, and an error anywhere else in the drain. (A worker process that
    dies mid-drain hands the message back, and the drain runs again.)
    `recover` looks for batches lost with their worker first, whenever this
    process last looked.
    """
    try:
        return _drain(recover)
    except Exception:
        logger.exception("A drain failed; asking for another")
        _hand_over_later()
        raise


def _drain(recover: bool) -> int:
    global _recovered_at
    done = 0
    if recover or time.monotonic() - _recovered_at > RECOVERY_INTERVAL_SECONDS:
        _recovered_at = time.monotonic()
        done += recover_lost_batches()
    size = batch_size()
    deadline = time.monotonic() + DRAIN_BUDGET_SECONDS
    first = True
    cleared = False
    while True:
        if cleared and not events_waiting():
            # The look once more after clearing the flag rarely finds events:
            # a read outside a transaction instead of a claim's. (Right after a
            # batch, under load, the next one is often waiting: claimed at once.)
            return done
        try:
            claimed = _evaluate_registered(None, size)
        except _NoneToBlame:
            # The events wait in the database; the next drain takes them.
            _hand_over_later()
            return done
        done += claimed
        if not claimed:
            if cleared:
                return done
            # From now on a committed event asks for a drain of its own; one
            # committed before this line saw the flag set, so look once more.
            _clear_flag()
            cleared = True
            continue
        cleared = False
        # Events that arrived during the batch are claimed by the next one
        # right away, not after a message round trip to a new drain.
        overdue = time.monotonic() > deadline
        if (first and claimed >= size) or overdue:
            # A backlog: let another worker process take the next batch; and
            # past the budget, leave the rest to that drain.
            _drain_task().delay()
            if overdue:
                return done
        first = False


class _NoneToBlame(Exception):
    """A batch failed in a way no event is to blame for (the database out of
    reach, a failure before any event was claimed): the drain gives up."""


# Errors that say nothing about the events being evaluated.
_TRANSIENT = (OperationalError, InterfaceError)


def _evaluate_registered(
    event_pks: list[int] | None, limit: int, kind: str = inflight.BATCH
) -> int:
    """Evaluate one batch (`event_pks`, or the next `limit` waiting events) with
    its events in the in-flight registry while it runs; how many were claimed
    and evaluated. If the batch raises, its halves are tried in turn until each
    failure is one event, whose failure is recorded; the rest commit."""
    batch_id = uuid.uuid4().hex
    claimed: list[int] = []

    def register(pks: list[int]) -> None:
        claimed.extend(pks)
        inflight.register(batch_id, pks, kind)

    try:
        return len(evaluate_events(event_pks=event_pks, limit=limit, on_claim=register).claimed)
    except _TRANSIENT as exc:
        logger.warning("A batch could not reach the database: %r", exc)
        raise _NoneToBlame from exc
    except SoftTimeLimitExceeded:
        raise  # the drain is out of time, not its events at fault
    except Exception as exc:
        if not claimed:
            logger.exception("A batch failed before it claimed any event")
            raise _NoneToBlame from exc
        if len(claimed) == 1:
            _record_failure(claimed[0], exc)
            return 0
        logger.warning(
            "A batch of %s event(s) failed (%r); evaluating it in halves", len(claimed), exc
        )
    finally:
        if claimed:
            inflight.landed(batch_id)
    half = len(claimed) // 2
    return _evaluate_registered(claimed[:half], half, kind) + _evaluate_registered(
        claimed[half:], len(claimed) - half, kind
    )


def _record_failure(event_pk: int, exc: BaseException) -> None:
    """Count one event's failed evaluation; a drain takes it again when its retry is due."""
    try:
        failure = evaluation_failed(event_pk, exc)
    except DatabaseError as failed:
        raise _NoneToBlame from failed
    if failure.retry_in is None:
        return
    try:
        _drain_task().apply_async(countdown=failure.retry_in)
    except Exception:
        # No broker: the sweeper asks for a drain once the event has waited long.
        logger.exception("Could not schedule the retry of event %s", event_pk)


def _hand_over_later() -> None:
    """Clear the flag and ask for a drain RETRY_SECONDS from now: events that
    committed while a failing drain held the flag asked nobody."""
    _clear_flag()
    try:
        _drain_task().apply_async(countdown=RETRY_SECONDS)
    except Exception:
        # No broker: the sweeper is the backstop.
        logger.exception("Could not ask for another drain")


def _clear_flag() -> None:
    try:
        cache.delete(DRAIN_FLAG)
    except Exception:
        # It expires within FLAG_SECONDS; events committed until then wait for
        # a later drain (or, if none comes, the sweeper).
        logger.warning("Could not clear the drain flag", exc_info=True)


def recover_lost_batches() -> int:
    """Evaluate again the events of batches that died with their worker; how many.

    A lost batch's waiting events are tried again in chunks (about the
    square root of its size each), so a batch lost to a SIGKILL recovers
    at close to batch speed. The events of a lost chunk are set apart for
    the per-event task, which counts how often each kills its worker.
    """
    done = 0
    for entry in inflight.take_lost():
        waiting = list(
            Event.objects.filter(pk__in=entry.event_pks)
            .unprocessed()
            .order_by("pk")
            .values_list("pk", flat=True)
        )
        logger.warning(
            "A %s of %s event(s) died with its worker (%s, pid %s); %s still waiting",
            entry.kind,
            len(entry.event_pks),
            entry.worker or entry.machine or "unknown",
            entry.pid or "unknown",
            len(waiting),
        )
        if entry.kind == inflight.CHUNK or len(waiting) <= 1:
            isolate(waiting)
            continue
        step = max(1, math.isqrt(len(waiting)))
        for start in range(0, len(waiting), step):
            chunk = waiting[start : start + step]
            done += _evaluate_registered(chunk, len(chunk), inflight.CHUNK)
    return done


def isolate(event_pks: list[int]) -> None:
    """Set these events apart from drains and evaluate each on its own."""
    if not event_pks:
        return
    Event.objects.filter(pk__in=event_pks).unprocessed().update(isolated_at=timezone.now())
    for pk in event_pks:
        enqueue_single(pk)


def on_worker_start() -> None:
    """A worker came up: ask for a drain that first looks for batches lost with a
    dead worker, so a backlog left by a crash does not wait for the next event."""
    if not drains_in_use():
        return
    try:
        _drain_task().apply_async(kwargs={"recover": True})
    except Exception:
        logger.exception("Could not ask for a drain at worker start")


def drains_in_use() -> bool:
    return settings.ACCOLADE_TASK_MODE == "celery" and batch_size() > 1


# --- handing events to the evaluator ---------------------------------------------

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def enqueue_evaluation(event_pk: int) -> None:
    """Hand a committed event to the evaluator (see enqueue_evaluations)."""
    enqueue_evaluations([event_pk])


def enqueue_evaluations(event_pks: Sequence[int]) -> None:
    """Hand committed events to the evaluator, according to ACCOLADE_TASK_MODE.

    With Celery, events are evaluated in batches: one drain request for all of
    them (achievements.dispatch), and requests coalesce. With a batch size of
    1, and in the thread and sync modes, each event is evaluated on its own.
    """
    if not event_pks:
        return
    if drains_in_use():
        request_drain()
    else:
        for pk in event_pks:
            enqueue_single(pk)


def enqueue_single(event_pk: int) -> None:
    """Hand one event to the per-event evaluator, which retries and dead-letters it alone.

    Only the primary key travels: the worker loads the row itself, so it sees
    exactly what was committed.
    """
    mode = settings.ACCOLADE_TASK_MODE
    if mode == "celery":
        try:
            task("achievements.evaluate_event").delay(event_pk)
        except Exception:
            # The broker is unreachable. The event is committed and still
            # marked unprocessed, so it is not lost, only late.
            logger.exception("Could not enqueue evaluation of event %s", event_pk)
    elif mode == "thread":
        _thread_executor().submit(_evaluate_in_thread, event_pk)
    elif mode == "sync":
        engine.evaluate_event(event_pk)
    else:
        raise ValueError(f"unknown ACCOLADE_TASK_MODE {mode!r}")


def _thread_executor() -> ThreadPoolExecutor:
    # One thread: evaluations in the embedded mode run one at a time, which
    # keeps SQLite's single writer free for request threads in between.
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="accolade-evaluate")
    ensure_embedded_sweeper()
    return _executor


def _evaluate_in_thread(event_pk: int) -> None:
    """The embedded mode's stand-in for the Celery task, with the same failure policy."""
    try:
        engine.evaluate_event(event_pk)
    except Exception as exc:
        try:
            failure = evaluation_failed(event_pk, exc)
        except Exception:
            logger.exception("Recording the failure of event %s failed", event_pk)
            return
        if failure.retry_in is not None:
            timer = threading.Timer(failure.retry_in, enqueue_single, args=[event_pk])
            timer.daemon = True
            timer.start()
    finally:
        context.reset()
        close_old_connections()


_sweeper_started = False
# Other jobs celery beat runs elsewhere, run by the embedded sweeper after each
# sweep; registered by higher layers (achievements.apps), as this one must not
# import them.
_embedded_jobs: list[Callable[[], object]] = []


def run_with_embedded_sweeper(job: Callable[[], object]) -> None:
    if job not in _embedded_jobs:
        _embedded_jobs.append(job)


def ensure_embedded_sweeper() -> None:
    """Celery beat's job in the embedded mode: re-enqueue stranded events now and then.

    Started when the ASGI application is built (project.asgi) and by the
    first evaluation of a process in the embedded mode, so a restarted
    runserver picks up what the previous one left behind. Other modes have
    celery beat.
    """
    global _sweeper_started
    if settings.ACCOLADE_TASK_MODE != "thread":
        return
    with _executor_lock:
        if _sweeper_started:
            return
        _sweeper_started = True

    def sweep_forever() -> None:
        interval = float(settings.ACCOLADE_SWEEP_INTERVAL_SECONDS)
        while True:
            time.sleep(interval)
            for job in [sweep_stranded_events, *_embedded_jobs]:
                try:
                    job()
                except Exception:
                    logger.exception("The embedded sweeper's %s failed", job.__qualname__)
                finally:
                    close_old_connections()

    threading.Thread(target=sweep_forever, name="accolade-sweeper", daemon=True).start()


# --- failures, dead letters and the sweeper ---------------------------------


def max_attempts() -> int:
    return int(settings.ACCOLADE_MAX_ATTEMPTS)


def retry_delay(attempt: int) -> float:
    """Exponential backoff: base, 2×base, 4×base ... capped at ACCOLADE_RETRY_MAX_SECONDS."""
    base = float(settings.ACCOLADE_RETRY_BASE_SECONDS)
    cap = float(settings.ACCOLADE_RETRY_MAX_SECONDS)
    return min(cap, base * 2 ** max(0, attempt - 1))


@dataclass(frozen=True)
class Failure:
    attempts: int
    dead_lettered: bool
    retry_in: float | None


def record_evaluation_crash(event_pk: int, starts: int) -> bool:
    """Dead-letter an event whose evaluation keeps killing the worker process.

    Exceptions are counted by record_evaluation_failure. A crash (out of
    memory, a segfault, the hard time limit) raises nothing, and with
    reject_on_worker_lost the message comes straight back. The task counts
    starts outside the database, and past the limit this ends the loop.
    """
    if starts <= max_attempts():
        return False
    with transaction.atomic():
        updated = Event.objects.filter(
            pk=event_pk, processed_at__isnull=True, dead_lettered_at__isnull=True
        ).update(
            attempts=F("attempts") + 1,
            dead_lettered_at=timezone.now(),
            retry_at=None,
            last_error=(
                f"The worker process died {starts - 1} time(s) while evaluating this event "
                "(killed, out of memory or over the time limit)."
            ),
        )
    if updated:
        metrics.incr("accolade_events_dead_lettered_total")
        logger.error("Event %s dead-lettered: evaluating it killed the worker", event_pk)
    return True


def evaluation_failed(event_pk: int, exc: BaseException) -> Failure:
    """Record the exception an evaluation raised on its event (its traceback, via
    record_evaluation_failure) and log the retry when one is due. Every path that
    evaluates (drains, the Celery task, the embedded thread) fails through here."""
    failure = record_evaluation_failure(
        event_pk, "".join(traceback.format_exception(exc))[-10_000:]
    )
    if failure.retry_in is not None:
        logger.warning(
            "Evaluating event %s failed (attempt %s), retrying in %.0fs: %r",
            event_pk,
            failure.attempts,
            failure.retry_in,
            exc,
        )
    return failure


def record_evaluation_failure(event_pk: int, error: str) -> Failure:
    """Count a failed evaluation; dead-letter the event once it has failed too often.

    Runs in its own transaction: the evaluation's transaction has rolled back.
    A dead-lettered event is skipped by claims and sweeps until staff re-drive it.
    """
    now = timezone.now()
    with transaction.atomic():
        event = (
            Event.objects.select_for_update()
            .filter(pk=event_pk, processed_at__isnull=True, dead_lettered_at__isnull=True)
            .only("pk", "attempts", "retry_at")
            .first()
        )
        if event is None:
            return Failure(attempts=0, dead_lettered=False, retry_in=None)
        if event.retry_at is not None and event.retry_at > now:
            # A second delivery (a sweep, a redelivery) failed while a retry
            # is already scheduled: that retry will try again, so this one
            # neither counts nor starts a second chain of retries.
            return Failure(attempts=event.attempts, dead_lettered=False, retry_in=None)
        attempts = event.attempts + 1
        if attempts >= max_attempts():
            Event.objects.filter(pk=event_pk).update(
                attempts=attempts, last_error=error, dead_lettered_at=now, retry_at=None
            )
            logger.error("Event %s dead-lettered after %s attempts", event_pk, attempts)
            after_commit(metrics.incr, "accolade_events_dead_lettered_total")
            return Failure(attempts=attempts, dead_lettered=True, retry_in=None)
        delay = retry_delay(attempts)
        Event.objects.filter(pk=event_pk).update(
            attempts=attempts, last_error=error, retry_at=now + timedelta(seconds=delay)
        )
        return Failure(attempts=attempts, dead_lettered=False, retry_in=delay)


def redrive_events(event_pks: list[int]) -> int:
    """Give dead-lettered events another full set of attempts, after a rule fix.

    Every failure record of theirs goes: attempts, the error, the scheduled
    retry, the sweep stamp, being set apart, and the count of worker crashes
    kept in the cache (left, it would dead-letter the event again at its
    first start).
    """
    with transaction.atomic():
        pks = list(
            Event.objects.dead_lettered()
            .filter(pk__in=event_pks, processed_at__isnull=True)
            .values_list("pk", flat=True)
        )
        Event.objects.filter(pk__in=pks).update(
            dead_lettered_at=None,
            attempts=0,
            last_error="",
            retry_at=None,
            swept_at=None,
            isolated_at=None,
        )
        after_commit(_forget_starts, pks)
        after_commit(enqueue_evaluations, pks)
    return len(pks)


def starts_key(event_pk: int) -> str:
    """The cache key counting how often a worker started evaluating this event."""
    return f"evaluation-starts:{event_pk}"


def _forget_starts(event_pks: list[int]) -> None:
    cache.delete_many([starts_key(pk) for pk in event_pks])


def sweep_stranded_events(*, older_than_seconds: float | None = None, limit: int = 1000) -> int:
    """Hand on unprocessed events whose task message appears lost; how many it found.

    The event row is the outbox, so an event whose message never reached the
    broker (it was down at commit) or was lost with a worker is still here.
    With drains, the sweeper asks for one drain (which also looks for
    batches lost with their worker), so a backlog recovers at batch speed;
    events set apart for the per-event task, and all events in the modes
    without drains, are re-enqueued one by one, each stamped so the next
    sweep leaves it alone for another period. A second delivery is harmless:
    claims skip what is processed or held.
    """
    age = (
        float(settings.ACCOLADE_SWEEP_AGE_SECONDS)
        if older_than_seconds is None
        else older_than_seconds
    )
    now = timezone.now()
    cutoff = now - timedelta(seconds=age)
    stranded = Event.objects.stranded(older_than=cutoff)
    found = 0
    if drains_in_use():
        found = len(stranded.filter(isolated_at__isnull=True).values_list("pk")[:limit])
        lost = 0
        with contextlib.suppress(Exception):
            lost = inflight.pending()
        if found or lost:
            try:
                _drain_task().apply_async(kwargs={"recover": True})
            except Exception:
                logger.exception("Could not ask for a drain of stranded events")
        stranded = stranded.filter(isolated_at__isnull=False)
    with transaction.atomic():
        # skip_locked: rows an evaluation has claimed (or another sweeper
        # holds) are being dealt with; waiting on them would stall the sweep.
        pks = list(
            stranded.select_for_update(skip_locked=True)
            .order_by("pk")
            .values_list("pk", flat=True)[:limit]
        )
        Event.objects.filter(pk__in=pks).stranded(older_than=cutoff).update(swept_at=now)
    for pk in pks:
        enqueue_single(pk)
    found += len(pks)
    if found:
        logger.warning("Swept %s stranded event(s) back onto the queue", found)
    return found
