"""Recording events: validation, de-duplication and the outbox row.

A recorded event is handed to achievements.dispatch once the producer's
transaction commits; nothing here evaluates or enqueues anything itself.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from achievements import dispatch, index, metrics, rules
from achievements.db import after_commit, server_cursor
from achievements.models import Event, ExternalIdentity

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
    producer: str = "app",
) -> RecordedEvent:
    """Record that `user` did `event_type`, and evaluate it once the caller commits.

    Call it inside the transaction that saves the producer's own row, so the
    event exists exactly when that row does. Pass a stable `event_id` derived
    from that row (e.g. "visit-42") and a retry of the same action is
    recognised as a duplicate instead of counting twice (ids are unique per
    `producer`; the site's own calls are "app"). Raises InvalidEvent, before
    writing anything, when an argument is unusable.
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
        producer=producer,
    )


def record_external_event(
    external_user_id: str,
    event_type: str,
    *,
    payload: dict[str, Any] | None = None,
    event_id: str | None = None,
    occurred_at: datetime | None = None,
    source: str = "api",
    producer: str = "app",
) -> RecordedEvent:
    """Record an event for a producer's user id, linked to a site user or not yet.

    An event for an id no site user is linked to is kept, waiting; linking the
    id (link_external_identity) hands it, and everything else waiting for that
    id, to the evaluator.
    """
    [result] = record_external_events(
        [
            ExternalEvent(
                user_id=external_user_id,
                event_type=event_type,
                payload=payload,
                event_id=event_id,
                occurred_at=occurred_at,
                source=source,
            )
        ],
        producer=producer,
    )
    if isinstance(result, InvalidEvent):
        raise result
    return result


@dataclass(frozen=True)
class ExternalEvent:
    """One event of a batch for record_external_events (see record_external_event)."""

    user_id: str
    event_type: str
    payload: dict[str, Any] | None = None
    event_id: str | None = None
    occurred_at: datetime | None = None
    source: str = "api"


def record_external_events(
    events: Sequence[ExternalEvent], *, producer: str = "app"
) -> list[RecordedEvent | InvalidEvent]:
    """Record a batch of one producer's events: a result per event, in order.

    Event ids are `producer`'s own: an id another producer used is a new
    event, one this producer used is a duplicate (or refused, if it was for
    another user or type).

    Each result is the recorded (or duplicate) event, or the InvalidEvent
    that refused it; a refused event writes nothing and does not stop the
    others. The batch costs a fixed number of statements, whatever its size.

    On PostgreSQL, outside a transaction, the usual batch is one statement
    that commits alone: it inserts the events with a new id whose producer
    id exists, locking the ids not linked yet (`_insert_owned`). What that
    leaves (an id seen before, a producer id seen for the first time, a
    type with a de-duplication rule), and any batch inside the caller's
    transaction, is recorded in one transaction: lock the producer ids
    (creating the new ones), read the event ids already taken, insert the
    rest in one statement. Event types with a de-duplication rule, and a
    batch that races another for the same new id, take the one-at-a-time
    path, which serialises near-duplicates and sorts out the race. The two
    parts commit apart: if the second fails, the first is stored, and a
    retry of the batch reports it as duplicates.
    """
    results: list[RecordedEvent | InvalidEvent | None] = [None] * len(events)
    _check_name("producer", producer)
    now = timezone.now()
    prepared: list[tuple[int, ExternalEvent, str]] = []  # index, event with defaults, id
    for position, item in enumerate(events):
        item = dataclasses.replace(
            item,
            payload={} if item.payload is None else item.payload,
            occurred_at=now if item.occurred_at is None else item.occurred_at,
        )
        event_id = uuid.uuid4().hex if item.event_id is None else item.event_id
        try:
            if not isinstance(item.user_id, str) or not EVENT_ID_PATTERN.match(item.user_id):
                raise InvalidEvent(
                    "user_id", "must be 1-128 characters of letters, digits, '.', '_', ':' or '-'"
                )
            _validate(item.event_type, item.payload, event_id, item.occurred_at, item.source)
        except InvalidEvent as exc:
            results[position] = exc
        else:
            prepared.append((position, item, event_id))
    if prepared and connection.vendor == "postgresql" and not connection.in_atomic_block:
        prepared = _record_owned(prepared, results, now, producer)
    if not prepared:
        return _all_set(results)

    with transaction.atomic():
        # Locked, so a link being made at the same moment either happens
        # first (these events get the user) or waits for them (and then
        # hands them over with the others); an event cannot fall between.
        owners = _lock_identities({item.user_id for _, item, _ in prepared})
        dedup = index.dedup_windows()
        # PostgreSQL inserts first and reads back only the ids it did not
        # insert (ON CONFLICT DO NOTHING); SQLite, one writer at a time,
        # reads the taken ids first.
        pg = connection.vendor == "postgresql"
        taken = {} if pg else _events_by_id(producer, [event_id for _, _, event_id in prepared])
        firsts: set[str] = set()
        bulk: list[tuple[int, ExternalEvent, str]] = []
        single: list[tuple[int, ExternalEvent, str]] = []
        repeats: list[tuple[int, ExternalEvent, str]] = []
        for position, item, event_id in prepared:
            if item.event_type in dedup:
                single.append((position, item, event_id))
            elif event_id in taken or event_id in firsts:
                repeats.append((position, item, event_id))
            else:
                firsts.add(event_id)
                bulk.append((position, item, event_id))

        created = _insert_events(bulk, owners, now, producer)
        if created is None:  # SQLite: an id was taken meanwhile; sort it out one by one
            single = sorted(single + bulk + repeats, key=lambda entry: entry[0])
            bulk, repeats = [], []
            created = {}
        lost = [event_id for _, _, event_id in bulk if event_id not in created]
        if lost:  # PostgreSQL: a concurrent request committed these ids first
            taken.update(_events_by_id(producer, lost))
        waiting: list[int] = []
        for position, item, event_id in bulk:
            if event_id in created:
                event = created[event_id]
                results[position] = RecordedEvent(event, created=True)
                if event.user_id is not None:
                    waiting.append(event.pk)
            else:
                results[position] = _repeat_of(taken[event_id], item)
        if created:
            after_commit(_committed_many, len(created), waiting)
        for position, item, event_id in repeats:
            earlier = created.get(event_id) or taken[event_id]
            results[position] = _repeat_of(earlier, item)
        for position, item, event_id in single:
            try:
                results[position] = _record(
                    subject=Subject(user_id=owners[item.user_id], external_id=item.user_id),
                    event_type=item.event_type,
                    payload=item.payload,
                    event_id=event_id,
                    occurred_at=item.occurred_at,
                    source=item.source,
                    producer=producer,
                )
            except InvalidEvent as exc:
                results[position] = exc
    return _all_set(results)


def _record_owned(
    prepared: list[tuple[int, ExternalEvent, str]],
    results: list[RecordedEvent | InvalidEvent | None],
    now: datetime,
    producer: str,
) -> list[tuple[int, ExternalEvent, str]]:
    """PostgreSQL, in autocommit: record in one statement what needs no more; the rest, in order.

    Events of a type without a de-duplication rule, with an id that is new
    to the batch, whose producer id exists. The others, and any the
    statement did not insert (an id taken before, a producer id it did not
    find), are left for the caller's transaction. So is the whole batch if
    the statement fails its foreign-key check: the linked user was deleted
    as it ran (the deletion sets the producer id's user to NULL, which the
    transaction then reads).
    """
    dedup = index.dedup_windows()
    seen: set[str] = set()
    quick: list[tuple[int, ExternalEvent, str]] = []
    for entry in prepared:
        _, item, event_id = entry
        if item.event_type not in dedup and event_id not in seen:
            seen.add(event_id)
            quick.append(entry)
    if not quick:
        return prepared
    try:
        inserted = _insert_owned(quick, now, producer)
    except IntegrityError:  # in autocommit the statement rolled back alone
        return prepared
    if not inserted:
        return prepared
    waiting: list[int] = []
    for position, item, event_id in quick:
        row = inserted.get(event_id)
        if row is not None:
            event = _loaded_event(row[0], event_id, item, row[1], now, producer)
            results[position] = RecordedEvent(event, created=True)
            if event.user_id is not None:
                waiting.append(event.pk)
    after_commit(_committed_many, len(inserted), waiting)
    return [entry for entry in prepared if results[entry[0]] is None]


def _insert_owned(
    rows: list[tuple[int, ExternalEvent, str]], now: datetime, producer: str
) -> dict[str, tuple[int, int | None]]:
    """Insert the rows' events for producer ids that exist, in one statement:
    (primary key, site user) of each event inserted, by event id.

    A linked id is read without a lock: its user changes only if the user
    is deleted (linking the id to another user is refused), and then the
    statement fails its foreign-key check as it commits (the caller falls
    back to the transaction). An id not linked yet is locked as
    `_lock_identities` locks it, against a link being made meanwhile; if a
    link committed while the statement waited, the row no longer matches
    and its events are left out, for the caller's transaction, which reads
    the new user. So are events whose producer id has no row yet, and ids
    another event has.
    """
    owners = sorted({item.user_id for _, item, _ in rows})
    columns = _event_arrays(rows, now)
    if len(rows) == 1:
        params = [owners[0], owners[0], producer, now, *(column[0] for column in columns)]
    else:
        params = [owners, owners, producer, now, *columns]
    # Bound on the server; each form planned once per connection.
    with server_cursor(prepare=True) as cursor:
        cursor.execute(_owned_insert_sql(len(rows) == 1), params)
        return {event_id: (pk, user_id) for pk, event_id, user_id in cursor.fetchall()}


# The columns a producer's event brings, as the insert statements bind them.
_EVENT_ARRAYS = (
    ("event_id", "varchar"),
    ("event_type", "varchar"),
    ("external_user_id", "varchar"),
    ("occurred_at", "timestamptz"),
    ("source", "varchar"),
    ("payload", "jsonb"),
)


def _event_arrays(rows: list[tuple[int, ExternalEvent, str]], now: datetime) -> list[list[Any]]:
    """The rows' values, an array per column of _EVENT_ARRAYS."""
    return [
        [event_id for _, _, event_id in rows],
        [item.event_type for _, item, _ in rows],
        [item.user_id for _, item, _ in rows],
        [item.occurred_at or now for _, item, _ in rows],
        [item.source for _, item, _ in rows],
        [json.dumps(item.payload) for _, item, _ in rows],
    ]


@cache
def _owned_insert_sql(one: bool) -> str:
    """The one-statement insert; `one`: for a single event, bound as values, not arrays.

    Both forms do the same (the same producer-id reads and locks, the same
    conflict handling). A single event is the common request, and for it
    the arrays cost PostgreSQL a third of the statement (unnest, ordinality,
    the sort) and psycopg 20 us of binding.
    """
    identity, names = ExternalIdentity._meta.db_table, ", ".join(n for n, _ in _EVENT_ARRAYS)
    if one:
        owners = "= %b::varchar"
        rows = (
            "(SELECT " + ", ".join(f"%b::{kind} AS {n}" for n, kind in _EVENT_ARRAYS) + ") AS e "
        )
        order = ""
    else:
        owners = "= ANY(%b::varchar[])"
        rows = (
            "unnest("
            + ", ".join(f"%b::{kind}[]" for _, kind in _EVENT_ARRAYS)
            + f") WITH ORDINALITY AS e({names}, position) "
        )
        order = "ORDER BY e.position "  # keys in the batch's order, as bulk_create gives them
    return (
        f"WITH linked AS (SELECT external_id, user_id FROM {identity} "
        f"WHERE external_id {owners} AND user_id IS NOT NULL), "
        f"waiting AS MATERIALIZED (SELECT external_id, user_id FROM {identity} "
        f"WHERE external_id {owners} AND user_id IS NULL "
        "ORDER BY external_id FOR SHARE), "
        "owner AS (SELECT * FROM linked UNION ALL SELECT * FROM waiting) "
        f"INSERT INTO {Event._meta.db_table} (producer, {names}, user_id, received_at, "
        "attempts, fingerprint, last_error) "
        f"SELECT %s::varchar, {', '.join(f'e.{n}' for n, _ in _EVENT_ARRAYS)}, owner.user_id, "
        f"%s::timestamptz, 0, '', '' FROM {rows}"
        f"JOIN owner ON owner.external_id = e.external_user_id {order}"
        "ON CONFLICT (producer, event_id) DO NOTHING RETURNING id, event_id, user_id"
    )


def _loaded_event(
    pk: int,
    event_id: str,
    item: ExternalEvent,
    user_id: int | None,
    now: datetime,
    producer: str,
) -> Event:
    """The Event a row just inserted holds, built as a loaded row (the fast constructor)."""
    fields = {
        "id": pk,
        "producer": producer,
        "event_id": event_id,
        "event_type": item.event_type,
        "occurred_at": item.occurred_at or now,
        "source": item.source,
        "payload": item.payload,
        "received_at": now,
        "user_id": user_id,
        "external_user_id": item.user_id,
        "attempts": 0,
        "fingerprint": "",
        "last_error": "",
    }
    names = _event_columns()
    return Event.from_db(connection.alias, names, [fields.get(name) for name in names])


@cache
def _event_columns() -> list[str]:
    return [field.attname for field in Event._meta.concrete_fields]


def _all_set(
    results: list[RecordedEvent | InvalidEvent | None],
) -> list[RecordedEvent | InvalidEvent]:
    assert all(result is not None for result in results)
    return results  # type: ignore[return-value]


def _lock_identities(external_ids: set[str]) -> dict[str, int | None]:
    """Each producer id's site user (None until linked), the ids locked against a link.

    The lock is shared (FOR SHARE on PostgreSQL): recorders do not wait for
    each other, only for a link (FOR UPDATE) of one of their ids. Ids are
    locked in one order, and created first when new.
    """
    ordered = sorted(external_ids)

    def locked() -> dict[str, int | None]:
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(
                    f"SELECT external_id, user_id FROM {ExternalIdentity._meta.db_table} "
                    "WHERE external_id = ANY(%s) ORDER BY external_id FOR SHARE",
                    [ordered],
                )
                return dict(cursor.fetchall())
        # SQLite has one writer at a time: the transaction is the lock.
        return dict(
            ExternalIdentity.objects.filter(external_id__in=ordered).values_list(
                "external_id", "user_id"
            )
        )

    owners = locked()
    if len(owners) < len(ordered):
        ExternalIdentity.objects.bulk_create(
            [ExternalIdentity(external_id=x) for x in ordered if x not in owners],
            ignore_conflicts=True,
        )
        owners = locked()
    return owners


def _events_by_id(producer: str, event_ids: list[str]) -> dict[str, Event]:
    found: dict[str, Event] = {}
    for start in range(0, len(event_ids), 1000):
        chunk = event_ids[start : start + 1000]
        for event in Event.objects.filter(producer=producer, event_id__in=chunk).only(
            "pk", "event_id", "event_type", "user_id", "external_user_id"
        ):
            found[event.event_id] = event
    return found


def _insert_events(
    rows: list[tuple[int, ExternalEvent, str]],
    owners: dict[str, int | None],
    now: datetime,
    producer: str,
) -> dict[str, Event] | None:
    """Insert new events in one statement: the inserted events by id.

    On PostgreSQL an id another transaction committed meanwhile is skipped
    (left out of the answer). Elsewhere such a race gives None, and the
    caller records the rows one by one.
    """
    if not rows:
        return {}
    if connection.vendor == "postgresql":
        sql = (
            f"INSERT INTO {Event._meta.db_table} (producer, "
            f"{', '.join(n for n, _ in _EVENT_ARRAYS)}, "
            "user_id, received_at, attempts, fingerprint, last_error) "
            "SELECT %s::varchar, *, %s::timestamptz, 0, '', '' FROM unnest("
            + ", ".join(f"%b::{kind}[]" for _, kind in _EVENT_ARRAYS)
            + ", %b::integer[]) ON CONFLICT (producer, event_id) DO NOTHING RETURNING id, event_id"
        )
        users = [owners[item.user_id] for _, item, _ in rows]
        with server_cursor() as cursor:  # the arrays bound on the server
            cursor.execute(sql, [producer, now, *_event_arrays(rows, now), users])
            pks = {event_id: pk for pk, event_id in cursor.fetchall()}
        return {
            event_id: _loaded_event(
                pks[event_id], event_id, item, owners[item.user_id], now, producer
            )
            for _, item, event_id in rows
            if event_id in pks
        }
    events = [
        Event(
            producer=producer,
            event_id=event_id,
            event_type=item.event_type,
            user_id=owners[item.user_id],
            external_user_id=item.user_id,
            occurred_at=item.occurred_at or now,
            source=item.source,
            payload=item.payload,
            received_at=now,
        )
        for _, item, event_id in rows
    ]
    if not connection.features.can_return_rows_from_bulk_insert:
        return None
    try:
        with transaction.atomic():
            Event.objects.bulk_create(events, batch_size=500)
    except IntegrityError:
        return None
    return {event.event_id: event for event in events}


def _repeat_of(existing: Event, item: ExternalEvent) -> RecordedEvent | InvalidEvent:
    """An event whose id is taken: a retry of the same fact, or a producer's mistake."""
    if existing.external_user_id != item.user_id or existing.event_type != item.event_type:
        return InvalidEvent(
            "event_id",
            f"{existing.event_id!r} was already used for a different user or event type",
        )
    metrics.incr("accolade_events_deduplicated_total")
    return RecordedEvent(existing, created=False)


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
    producer: str,
) -> RecordedEvent:
    payload = {} if payload is None else payload
    event_id = uuid.uuid4().hex if event_id is None else event_id
    occurred_at = timezone.now() if occurred_at is None else occurred_at
    _validate(event_type, payload, event_id, occurred_at, source)
    _check_name("producer", producer)

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
                producer=producer,
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
        existing = Event.objects.filter(producer=producer, event_id=event_id).first()
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
    after_commit(_committed, event.pk if subject.user_id is not None else None)
    return RecordedEvent(event, created=True)


def _committed(event_pk: int | None) -> None:
    """Once the producer's transaction commits: count the event and hand it to the evaluator."""
    _committed_many(1, [] if event_pk is None else [event_pk])


def _committed_many(count: int, event_pks: list[int]) -> None:
    """Once a batch commits: count its events and hand those with a user to the evaluator.

    Gathered: a drain request sends the count in its own round trip to Redis.
    """
    with metrics.gathered():
        metrics.incr("accolade_events_received_total", count)
        dispatch.enqueue_evaluations(event_pks)


def _near_duplicate(
    subject_key: str, event_type: str, payload: dict[str, Any], occurred_at: datetime
) -> tuple[str, Event | None]:
    """The event's business fingerprint, and an earlier event it repeats, if any.

    Only event types with a DedupRule have a fingerprint. Two producers
    recording the same fact at once must not both see "no earlier event", so
    the check and the insert are serialised per fingerprint: on PostgreSQL by
    a transaction-scoped advisory lock, on SQLite by its single writer.
    """
    rule = index.dedup_windows().get(event_type)
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


def _check_name(field: str, value: Any) -> None:
    """A source's or producer's name: short, and safe in logs and URLs."""
    if not isinstance(value, str) or not SOURCE_PATTERN.match(value):
        raise InvalidEvent(
            field, "must be 1-64 characters of letters, digits, '.', '_', ':' or '-'"
        )


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
    _check_name("source", source)
    if not isinstance(occurred_at, datetime):
        raise InvalidEvent("occurred_at", "must be a datetime")
    if timezone.is_naive(occurred_at):
        raise InvalidEvent("occurred_at", "must be time-zone aware")
    if not isinstance(payload, dict):
        raise InvalidEvent("payload", f"must be a JSON object, not {type(payload).__name__}")
    _check_payload_values(payload, depth=1, path="payload")
    try:
        # ensure_ascii=False so that text which cannot be stored as UTF-8
        # (a lone surrogate) fails here rather than in the database.
        encoded = json.dumps(payload, allow_nan=False, ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise InvalidEvent("payload", f"must be JSON-serialisable ({exc})") from None
    if len(encoded) > PAYLOAD_MAX_BYTES:
        raise InvalidEvent("payload", f"must be at most {PAYLOAD_MAX_BYTES} bytes as JSON")


def _check_payload_values(value: Any, *, depth: int, path: str) -> None:
    """Refuse what the database or the engine could not take later: too deep,
    non-string keys, NUL characters, numbers no progress column can hold."""
    if depth > PAYLOAD_MAX_DEPTH:
        raise InvalidEvent("payload", f"must be nested at most {PAYLOAD_MAX_DEPTH} levels deep")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidEvent(path, f"keys must be strings, not {type(key).__name__}")
            _check_payload_values(key, depth=depth, path=path)
            _check_payload_values(item, depth=depth + 1, path=f"{path}.{key}")
    elif isinstance(value, list | tuple):
        for position, item in enumerate(value):
            _check_payload_values(item, depth=depth + 1, path=f"{path}[{position}]")
    elif isinstance(value, str) and "\x00" in value:
        # PostgreSQL's jsonb cannot store NUL characters.
        raise InvalidEvent(path, "must not contain NUL characters")
    elif isinstance(value, int | float) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidEvent(path, "must be a finite number")
        if abs(value) > rules.STORED_NUMBER_MAX:
            # A sum of it would not fit the progress columns (numeric(18, 4)).
            limit = rules.STORED_NUMBER_MAX
            raise InvalidEvent(path, f"must be a number between -{limit} and {limit}")
