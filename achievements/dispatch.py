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

When a batch fails, its transaction rolls back whole. Its events are then
held back from drains for a while and handed one by one to the per-event
task, which retries each with backoff and dead-letters the one that keeps
failing, while the rest go through. When a batch kills its worker process
(no exception to catch), the batch is found in the in-flight registry (a
Redis hash written before the work starts, cleared after) by a later drain
once it is older than the task's time limit, and handled the same way; the
per-event task counts starts, so an event that kills workers is
dead-lettered.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import traceback
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any

from celery import current_app
from django.conf import settings
from django.core.cache import cache
from django.db import close_old_connections, transaction
from django.db.models import F
from django.utils import timezone

from achievements import context, engine, metrics
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
# Longer than the drain task's hard time limit: an in-flight batch older than
# this died with its worker.
LOST_AFTER_SECONDS = 150
# A failed batch's events are kept from drains this long while the per-event
# task deals with them one by one.
HOLD = timedelta(minutes=10)
# A drain yields its worker after this long, leaving the rest to a new drain.
DRAIN_BUDGET_SECONDS = 10.0
# After a failure, the next drain is asked for this much later.
RETRY_SECONDS = 1.0
# How often one process's drains look for batches lost with their worker
# (those are LOST_AFTER_SECONDS old by then, so a few seconds more is nothing).
RECOVERY_INTERVAL_SECONDS = 10.0
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


def drain() -> int:
    """Evaluate waiting events a batch at a time until none are left; returns how many.

    Events that commit while a drain holds the flag ask nobody, so every way
    out of a drain other than "a look after clearing the flag found
    nothing" clears the flag and asks for another drain: a failed batch, and
    an error anywhere else in the drain. (A worker process that dies
    mid-drain hands the message back, and the drain runs again.)
    """
    try:
        return _drain()
    except Exception:
        logger.exception("A drain failed; asking for another")
        _hand_over_later()
        raise


def _drain() -> int:
    global _recovered_at
    if time.monotonic() - _recovered_at > RECOVERY_INTERVAL_SECONDS:
        _recovered_at = time.monotonic()
        recover_lost_batches()
    size = batch_size()
    done = 0
    deadline = time.monotonic() + DRAIN_BUDGET_SECONDS
    first = True
    cleared = False
    while True:
        batch_id = uuid.uuid4().hex
        claimed: list[int] = []

        def register(
            pks: list[int], batch_id: str = batch_id, claimed: list[int] = claimed
        ) -> None:
            claimed.extend(pks)
            _in_flight(batch_id, pks)

        if cleared and not events_waiting():
            # The look once more after clearing the flag rarely finds events:
            # a read outside a transaction instead of a claim's. (Right after a
            # batch, under load, the next one is often waiting: claimed at once.)
            return done
        try:
            result = evaluate_events(limit=size, on_claim=register)
        except Exception:
            logger.exception(
                "A batch of %s event(s) failed; evaluating them one by one", len(claimed)
            )
            hand_to_single(claimed)
            # Its events are held back now; the rest, and any that committed
            # while this batch ran, go to a new drain, a little later.
            _hand_over_later()
            return done
        finally:
            if claimed:
                _landed(batch_id)
        done += len(result.claimed)
        if not result.claimed:
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
        if (first and len(result.claimed) == size) or overdue:
            # A backlog: let another worker process take the next batch; and
            # past the budget, leave the rest to that drain.
            _drain_task().delay()
            if overdue:
                return done
        first = False


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


def hand_to_single(event_pks: list[int]) -> None:
    """Keep these events from drains for a while and evaluate each on its own."""
    if not event_pks:
        return
    Event.objects.filter(pk__in=event_pks).unprocessed().update(retry_at=timezone.now() + HOLD)
    for pk in event_pks:
        enqueue_single(pk)


def recover_lost_batches() -> int:
    """Hand the events of batches that died with their worker to the per-event task."""
    client = metrics.redis_client()
    if client is None:
        return 0
    key = _registry_key()
    try:
        entries = client.hgetall(key)
    except Exception:
        logger.warning("Could not read the in-flight batches", exc_info=True)
        return 0
    now = time.time()
    lost: list[int] = []
    for batch_id, value in entries.items():
        started, _, pks = value.decode().partition("|")
        if now - float(started) > LOST_AFTER_SECONDS and client.hdel(key, batch_id):
            lost += [int(pk) for pk in pks.split(",") if pk]
    if lost:
        still_waiting = list(
            Event.objects.filter(pk__in=lost)
            .unprocessed()
            .order_by("pk")
            .values_list("pk", flat=True)
        )
        logger.warning(
            "%s event(s) of a batch lost with its worker; %s still waiting, evaluated one by one",
            len(lost),
            len(still_waiting),
        )
        hand_to_single(still_waiting)
    return len(lost)


def _registry_key() -> str:
    return f"{metrics._namespace()}:evaluation-batches"


def _in_flight(batch_id: str, pks: list[int]) -> None:
    client = metrics.redis_client()
    if client is None or not pks:
        return
    try:
        client.hset(_registry_key(), batch_id, f"{time.time():.3f}|{','.join(map(str, pks))}")
    except Exception:
        # Go on: the events are safe in the database either way; only a
        # crash in this batch would now wait for the sweeper.
        logger.warning("Could not register in-flight batch %s", batch_id, exc_info=True)


def _landed(batch_id: str) -> None:
    client = metrics.redis_client()
    if client is None:
        return
    try:
        client.hdel(_registry_key(), batch_id)
    except Exception:
        # Left behind, the entry is recovered later; its events are processed
        # by then, so recovery finds nothing to do.
        logger.warning("Could not clear in-flight batch %s", batch_id, exc_info=True)


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
    mode = settings.ACCOLADE_TASK_MODE
    if mode == "celery" and batch_size() > 1:
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
            failure = record_evaluation_failure(
                event_pk, "".join(traceback.format_exception(exc))[-10_000:]
            )
        except Exception:
            logger.exception("Recording the failure of event %s failed", event_pk)
            return
        logger.warning("Evaluating event %s failed (attempt %s)", event_pk, failure.attempts)
        if failure.retry_in is not None:
            timer = threading.Timer(failure.retry_in, enqueue_single, args=[event_pk])
            timer.daemon = True
            timer.start()
    finally:
        context.reset()
        close_old_connections()


_sweeper_started = False


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
            try:
                sweep_stranded_events()
            except Exception:
                logger.exception("Sweeping stranded events failed")
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
            transaction.on_commit(
                partial(metrics.incr, "accolade_events_dead_lettered_total"), robust=True
            )
            return Failure(attempts=attempts, dead_lettered=True, retry_in=None)
        delay = retry_delay(attempts)
        Event.objects.filter(pk=event_pk).update(
            attempts=attempts, last_error=error, retry_at=now + timedelta(seconds=delay)
        )
        return Failure(attempts=attempts, dead_lettered=False, retry_in=delay)


def redrive_events(event_pks: list[int]) -> int:
    """Give dead-lettered events another full set of attempts, after a rule fix."""
    with transaction.atomic():
        pks = list(
            Event.objects.dead_lettered()
            .filter(pk__in=event_pks, processed_at__isnull=True)
            .values_list("pk", flat=True)
        )
        Event.objects.filter(pk__in=pks).update(
            dead_lettered_at=None, attempts=0, retry_at=None, swept_at=None
        )
        for pk in pks:
            transaction.on_commit(partial(enqueue_single, pk), robust=True)
    return len(pks)


def sweep_stranded_events(*, older_than_seconds: float | None = None, limit: int = 1000) -> int:
    """Re-enqueue unprocessed events whose task message appears lost.

    The event row is the outbox, so an event whose message never reached the
    broker (it was down at commit) or was lost with a worker is still here.
    Each swept event is stamped so the next sweep leaves it alone for another
    period; the claim in evaluate_event makes a second delivery harmless.
    Swept events go to the per-event task, not a batch: an event this old
    may be one that keeps failing.
    """
    age = (
        float(settings.ACCOLADE_SWEEP_AGE_SECONDS)
        if older_than_seconds is None
        else older_than_seconds
    )
    now = timezone.now()
    cutoff = now - timedelta(seconds=age)
    with transaction.atomic():
        # skip_locked: rows an evaluation has claimed (or another sweeper
        # holds) are being dealt with; waiting on them would stall the sweep.
        pks = list(
            Event.objects.stranded(older_than=cutoff)
            .select_for_update(skip_locked=True)
            .order_by("pk")
            .values_list("pk", flat=True)[:limit]
        )
        Event.objects.filter(pk__in=pks).stranded(older_than=cutoff).update(swept_at=now)
    for pk in pks:
        enqueue_single(pk)
    if pks:
        logger.warning("Swept %s stranded event(s) back onto the queue", len(pks))
    return len(pks)
