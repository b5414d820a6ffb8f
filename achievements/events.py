"""Recording events (the outbox) and handing them to the evaluator."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
import traceback
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, close_old_connections, connection, transaction
from django.utils import timezone

from achievements import metrics, rules
from achievements.models import DedupRule, Event, ExternalIdentity

logger = logging.getLogger(__name__)

EVENT_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$")
SOURCE_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,63}$")
PAYLOAD_MAX_BYTES = 16_384
PAYLOAD_MAX_DEPTH = 10


class InvalidEvent(ValueError):
    """An event that cannot be recorded; `field` names the offending argument."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


@dataclass(frozen=True)
class RecordedEvent:
    event: Event
    created: bool

    @property
    def duplicate(self) -> bool:
        return not self.created


def record_event(
    user: AbstractBaseUser,
    event_type: str,
    *,
    payload: dict[str, Any] | None = None,
    event_id: str | None = None,
    occurred_at: datetime | None = None,
    source: str = "app",
) -> RecordedEvent:
    """Record that `user` did `event_type`, and evaluate it once the caller commits.

    Call it inside the transaction that saves the producer's own row, so the
    event exists exactly when that row does. Pass a stable `event_id` derived
    from that row (e.g. "visit-42") and a retry of the same action is
    recognised as a duplicate instead of counting twice. Raises InvalidEvent,
    before writing anything, when an argument is unusable.
    """
    if user is None or getattr(user, "pk", None) is None:
        raise InvalidEvent("user", "must be a saved user")
    return _record(
        subject=Subject(user_id=user.pk, external_id=""),
        event_type=event_type,
        payload=payload,
        event_id=event_id,
        occurred_at=occurred_at,
        source=source,
    )


def record_external_event(
    external_user_id: str,
    event_type: str,
    *,
    payload: dict[str, Any] | None = None,
    event_id: str | None = None,
    occurred_at: datetime | None = None,
    source: str = "api",
) -> RecordedEvent:
    """Record an event for a producer's user id, linked to a site user or not yet.

    An event for an id no site user is linked to is kept, waiting; linking the
    id (link_external_identity) hands it, and everything else waiting for that
    id, to the evaluator.
    """
    if not isinstance(external_user_id, str) or not EVENT_ID_PATTERN.match(external_user_id):
        raise InvalidEvent(
            "user_id", "must be 1-128 characters of letters, digits, '.', '_', ':' or '-'"
        )
    with transaction.atomic():
        # Locked, so a link being made at the same moment either happens
        # first (this event gets the user) or waits for this event (and then
        # hands it over with the others); an event cannot fall between them.
        # Rolled back with the event if the event is refused.
        ExternalIdentity.objects.get_or_create(external_id=external_user_id)
        identity = ExternalIdentity.objects.select_for_update().get(external_id=external_user_id)
        return _record(
            subject=Subject(user_id=identity.user_id, external_id=external_user_id),
            event_type=event_type,
            payload=payload,
            event_id=event_id,
            occurred_at=occurred_at,
            source=source,
        )


@dataclass(frozen=True)
class Subject:
    """Who an event is about: a site user, a producer's id for one, or both."""

    user_id: int | None
    external_id: str

    @property
    def fingerprint_key(self) -> str:
        # The producer's id when there is one, so a near-duplicate is caught
        # whether or not the id was linked between the two events.
        return f"ext:{self.external_id}" if self.external_id else str(self.user_id)


def _record(
    *,
    subject: Subject,
    event_type: str,
    payload: dict[str, Any] | None,
    event_id: str | None,
    occurred_at: datetime | None,
    source: str,
) -> RecordedEvent:
    payload = {} if payload is None else payload
    event_id = uuid.uuid4().hex if event_id is None else event_id
    occurred_at = timezone.now() if occurred_at is None else occurred_at
    _validate(event_type, payload, event_id, occurred_at, source)

    try:
        # A savepoint, so a duplicate id does not break the caller's transaction.
        with transaction.atomic():
            fingerprint, earlier = _near_duplicate(
                subject.fingerprint_key, event_type, payload, occurred_at
            )
            if earlier is not None:
                metrics.incr("accolade_events_deduplicated_total")
                return RecordedEvent(earlier, created=False)
            event = Event.objects.create(
                event_id=event_id,
                event_type=event_type,
                user_id=subject.user_id,
                external_user_id=subject.external_id,
                occurred_at=occurred_at,
                source=source,
                payload=payload,
                fingerprint=fingerprint,
            )
    except IntegrityError:
        existing = Event.objects.filter(event_id=event_id).first()
        if existing is None:
            raise
        same_subject = (
            existing.external_user_id == subject.external_id
            if subject.external_id
            else existing.user_id == subject.user_id
        )
        if not same_subject or existing.event_type != event_type:
            # Same id, different fact: a producer bug, not a retry. Saying so
            # beats silently dropping the second event as a "duplicate".
            raise InvalidEvent(
                "event_id",
                f"{event_id!r} was already used for a different user or event type",
            ) from None
        metrics.incr("accolade_events_deduplicated_total")
        return RecordedEvent(existing, created=False)

    # robust: a failing hand-off must not turn the producer's committed
    # request into an error; the event row stays unprocessed in the outbox.
    # Events for a producer id nobody is linked to yet wait for the link.
    transaction.on_commit(
        partial(_committed, event.pk if subject.user_id is not None else None), robust=True
    )
    return RecordedEvent(event, created=True)


def _committed(event_pk: int | None) -> None:
    """Once the producer's transaction commits: count the event and hand it to the evaluator."""
    metrics.incr("accolade_events_received_total")
    if event_pk is not None:
        enqueue_evaluation(event_pk)


def _near_duplicate(
    subject_key: str, event_type: str, payload: dict[str, Any], occurred_at: datetime
) -> tuple[str, Event | None]:
    """The event's business fingerprint, and an earlier event it repeats, if any.

    Only event types with a DedupRule have a fingerprint. Two producers
    recording the same fact at once must not both see "no earlier event", so
    the check and the insert are serialised per fingerprint: on PostgreSQL by
    a transaction-scoped advisory lock, on SQLite by its single writer.
    """
    rule = DedupRule.objects.filter(event_type=event_type).first()
    if rule is None or payload.get(rule.payload_key) is None:
        return "", None
    key = rules.distinct_key(payload[rule.payload_key])
    fingerprint = hashlib.sha256(f"{subject_key}|{event_type}|{key}".encode()).hexdigest()
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", [fingerprint])
    window = timedelta(seconds=rule.window_seconds)
    earlier = (
        Event.objects.filter(
            fingerprint=fingerprint,
            occurred_at__gte=occurred_at - window,
            occurred_at__lte=occurred_at + window,
        )
        .order_by("occurred_at", "pk")
        .first()
    )
    return fingerprint, earlier


def _validate(
    event_type: str,
    payload: Any,
    event_id: Any,
    occurred_at: Any,
    source: Any,
) -> None:
    problem = rules.event_type_problem(event_type)
    if problem:
        raise InvalidEvent("event_type", problem)
    if not isinstance(event_id, str) or not EVENT_ID_PATTERN.match(event_id):
        raise InvalidEvent(
            "event_id", "must be 1-128 characters of letters, digits, '.', '_', ':' or '-'"
        )
    if not isinstance(source, str) or not SOURCE_PATTERN.match(source):
        raise InvalidEvent(
            "source", "must be 1-64 characters of letters, digits, '.', '_', ':' or '-'"
        )
    if not isinstance(occurred_at, datetime):
        raise InvalidEvent("occurred_at", "must be a datetime")
    if timezone.is_naive(occurred_at):
        raise InvalidEvent("occurred_at", "must be time-zone aware")
    if not isinstance(payload, dict):
        raise InvalidEvent("payload", f"must be a JSON object, not {type(payload).__name__}")
    _check_payload_values(payload, depth=1)
    try:
        # ensure_ascii=False so that text which cannot be stored as UTF-8
        # (a lone surrogate) fails here rather than in the database.
        encoded = json.dumps(payload, allow_nan=False, ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise InvalidEvent("payload", f"must be JSON-serialisable ({exc})") from None
    if len(encoded) > PAYLOAD_MAX_BYTES:
        raise InvalidEvent("payload", f"must be at most {PAYLOAD_MAX_BYTES} bytes as JSON")


def _check_payload_values(value: Any, *, depth: int) -> None:
    if depth > PAYLOAD_MAX_DEPTH:
        raise InvalidEvent("payload", f"must be nested at most {PAYLOAD_MAX_DEPTH} levels deep")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidEvent("payload", f"keys must be strings, not {type(key).__name__}")
            _check_payload_values(key, depth=depth)
            _check_payload_values(item, depth=depth + 1)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_payload_values(item, depth=depth + 1)
    elif isinstance(value, str) and "\x00" in value:
        # PostgreSQL's jsonb cannot store NUL characters.
        raise InvalidEvent("payload", "must not contain NUL characters")


_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def enqueue_evaluation(event_pk: int) -> None:
    """Hand a committed event to the evaluator, according to ACCOLADE_TASK_MODE.

    With Celery, events are evaluated in batches: the event asks for a drain
    (achievements.dispatch), and asks coalesce. With a batch size of 1, and
    in the thread and sync modes, each event is evaluated on its own.
    """
    mode = getattr(settings, "ACCOLADE_TASK_MODE", "celery")
    if mode == "celery" and getattr(settings, "ACCOLADE_EVALUATION_BATCH_SIZE", 2000) > 1:
        from achievements.dispatch import request_drain

        request_drain()
    else:
        enqueue_single(event_pk)


def enqueue_single(event_pk: int) -> None:
    """Hand one event to the per-event evaluator, which retries and dead-letters it alone.

    Only the primary key travels: the worker loads the row itself, so it sees
    exactly what was committed.
    """
    mode = getattr(settings, "ACCOLADE_TASK_MODE", "celery")
    if mode == "celery":
        from achievements.tasks import evaluate_event_task

        try:
            evaluate_event_task.delay(event_pk)
        except Exception:
            # The broker is unreachable. The event is committed and still
            # marked unprocessed, so it is not lost, only late.
            logger.exception("Could not enqueue evaluation of event %s", event_pk)
    elif mode == "thread":
        _thread_executor().submit(_evaluate_in_thread, event_pk)
    elif mode == "sync":
        from achievements.actions import evaluate_event

        evaluate_event(event_pk)
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
    from achievements import actions, context

    try:
        actions.evaluate_event(event_pk)
    except Exception as exc:
        try:
            failure = actions.record_evaluation_failure(
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

    Started by the first evaluation or the first socket of a server process in
    the embedded mode, so a restarted runserver picks up what the previous
    one left behind. Other modes have celery beat.
    """
    global _sweeper_started
    if getattr(settings, "ACCOLADE_TASK_MODE", "celery") != "thread":
        return
    with _executor_lock:
        if _sweeper_started:
            return
        _sweeper_started = True

    def sweep_forever() -> None:
        from achievements.actions import sweep_stranded_events

        interval = float(getattr(settings, "ACCOLADE_SWEEP_INTERVAL_SECONDS", 60))
        while True:
            time.sleep(interval)
            try:
                sweep_stranded_events()
            except Exception:
                logger.exception("Sweeping stranded events failed")
            finally:
                close_old_connections()

    threading.Thread(target=sweep_forever, name="accolade-sweeper", daemon=True).start()
