"""Evaluating many events in one transaction: the engine's throughput path.

The rules are those of `actions.apply_event`, applied in the same order
(event by event, by primary key) and giving the same result; what changes is
the cost. One event at a time costs a transaction and about fifteen queries.
A batch costs a fixed number of queries, however many events and users it
holds:

1. claim the events (skipping rows another transaction holds);
2. load the requirements that watch their types, with their badges;
3. create and lock every (user, badge) row the batch touches, in (user,
   badge) order, the one order every evaluator locks in, so two batches,
   or a batch and a single evaluation, never wait on each other in a cycle;
4. read the progress rows, the all-time distinct values the events
   mention, and the unlocks that repeatable badges check against;
5. fold every event into the states in memory, measuring and awarding
   after each, so an unlock records the event that earned it;
6. write it all back: upserts for progress and standings, inserts for
   distinct values and unlocks.

On PostgreSQL steps 3 and 4 reach the server in one round trip (psycopg's
pipeline mode, `db.pipeline`), and step 6's writes, the unlocks' insert
included, in another.

If anything fails, the transaction rolls back whole and the caller hands
the events to the one-at-a-time path, which retries and dead-letters them
one by one (`tasks.evaluate_batch_task`).
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import Any, NamedTuple

from django.db import connection, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from accounts.models import Profile
from achievements import index, metrics, periods, progress, realtime, rules
from achievements.cards import KnownState
from achievements.db import Rows, insert_statements, inserted, pipeline, server_cursor
from achievements.models import (
    Badge,
    BadgeRequirement,
    DistinctValue,
    Event,
    RequirementProgress,
    Unlock,
    UserBadge,
)

logger = logging.getLogger(__name__)

PROGRESS_FIELDS = ["state", "value", "met_by", "started_at", "updated_at"]


@dataclass
class BatchResult:
    """What a batch did: the events it evaluated, and per user what changed."""

    claimed: list[int] = field(default_factory=list)
    changed: dict[int, set[int]] = field(default_factory=lambda: defaultdict(set))
    unlocks: dict[int, list[int]] = field(default_factory=lambda: defaultdict(list))
    unlocked_badges: dict[int, list[int]] = field(default_factory=lambda: defaultdict(list))
    # The changed standings and their progress as written, for the cards pushed after commit.
    known: KnownState | None = None


@index.pinned()  # the batch, its push and its composites read one version of the rules
def evaluate_events(
    event_pks: Sequence[int] | None = None,
    *,
    limit: int = 2000,
    on_claim: Callable[[list[int]], None] | None = None,
) -> BatchResult:
    """Evaluate, in one transaction, the events not evaluated yet among `event_pks`,
    or else the next `limit` waiting events (oldest first, none with a retry due later).

    Events already processed, dead-lettered, without a user, or held by
    another transaction are left alone. `on_claim` hears the claimed keys
    before any evaluation work. Pages are told after the commit, one message
    per user; composites follow, per user, in transactions of their own.
    """
    from achievements.actions import evaluate_composites
    from achievements.versions import ensure_versions

    started = time.perf_counter()
    ensure_versions(badge.pk for badge in index.active_badges())
    # The batch's metrics (evaluation time, unlocks, their latency from the
    # push) go to Redis in one round trip, before the composites.
    with metrics.gathered():
        with transaction.atomic():
            now = timezone.now()
            if event_pks is not None:
                events = _claim(sorted(set(event_pks)), now)
            else:
                events = _claim_next(limit, now)
            if on_claim is not None:
                on_claim([event.pk for event in events])
            result = _evaluate(events, now)
            if result.changed:
                changes = {
                    user_id: (sorted(badge_ids), result.unlocks.get(user_id, []))
                    for user_id, badge_ids in result.changed.items()
                }
                transaction.on_commit(
                    partial(realtime.notify_many, changes, known=result.known), robust=True
                )
            if result.unlocks:  # counted after the push, not before it
                count = sum(len(unlocks) for unlocks in result.unlocks.values())
                transaction.on_commit(
                    partial(metrics.incr, "accolade_unlocks_total", count), robust=True
                )
        if result.claimed:
            share = (time.perf_counter() - started) / len(result.claimed)
            metrics.observe("accolade_evaluation_seconds", [share] * len(result.claimed))
    for user_id, unlocked in result.unlocked_badges.items():
        logger.info("User %s unlocked badges %s", user_id, unlocked)
        unlocked += evaluate_composites(user_id, list(unlocked))
    return result


def events_waiting() -> bool:
    """Whether a claim could find events: a look outside any transaction.

    It sees every event a claim could take, and those another batch holds:
    it never says no when a claim would find some. A drain asks it for its
    last look, after clearing its flag, which seldom finds anything: a claim
    costs three round trips (BEGIN, the claim, COMMIT) and the rules index's
    version check.
    """
    return _claimable(timezone.now()).exists()


def _claimable(now: datetime) -> QuerySet[Event]:
    """Events a claim may take at `now`: not evaluated, not given up on, with a
    user, and no retry due later (rows another batch holds included)."""
    return (
        Event.objects.unprocessed()
        .filter(user__isnull=False)
        .filter(Q(retry_at__isnull=True) | Q(retry_at__lte=now))
    )


class _Event(NamedTuple):
    pk: int
    event_id: str
    event_type: str
    user_id: int
    payload: dict[str, Any]
    occurred_at: datetime
    received_at: datetime | None  # for the unlock latency the push reports
    # The user's time zone when the claim read it too (saves a query); None if not.
    time_zone: str | None = None


_EVENT_FIELDS = (
    "pk",
    "event_id",
    "event_type",
    "user_id",
    "payload",
    "occurred_at",
    "received_at",
)


@dataclass(slots=True)
class _Standing:
    """A locked UserBadge row, as plain attributes (building models costs more
    than evaluating); the same names, so the award code reads it as a UserBadge."""

    pk: int
    user_id: int
    badge_id: int
    current_value: Decimal
    target_value: Decimal
    completed_at: datetime | None
    completed_by_event_id: int | None
    last_evaluated_at: datetime | None
    tier: int


_STANDING_FIELDS = (
    "pk",
    "user_id",
    "badge_id",
    "current_value",
    "target_value",
    "completed_at",
    "completed_by_event_id",
    "last_evaluated_at",
    "tier",
)


@dataclass(slots=True)
class _Progress:
    """A RequirementProgress row, as plain attributes."""

    user_id: int
    requirement_id: int
    state: dict[str, Any]
    met_by: str
    started_at: datetime | None
    value: Decimal = Decimal(0)
    updated_at: datetime | None = None


def _claim(event_pks: list[int], now: datetime) -> list[_Event]:
    pending = Event.objects.filter(
        pk__in=event_pks,
        processed_at__isnull=True,
        dead_lettered_at__isnull=True,
        user__isnull=False,
    )
    if connection.features.has_select_for_update_skip_locked:
        # Rows another transaction holds are its to evaluate (or to give back).
        events = [
            _Event(*row)
            for row in pending.select_for_update(skip_locked=True)
            .order_by("pk")
            .values_list(*_EVENT_FIELDS)
        ]
        Event.objects.filter(pk__in=[e.pk for e in events]).update(processed_at=now, retry_at=None)
        return events
    # SQLite writes one transaction at a time: the conditional update is the claim.
    pending.update(processed_at=now, retry_at=None)
    return [
        _Event(*row)
        for row in Event.objects.filter(pk__in=event_pks, processed_at=now)
        .order_by("pk")
        .values_list(*_EVENT_FIELDS)
    ]


def _claim_next(limit: int, now: datetime) -> list[_Event]:
    """The next waiting events, skipping those another batch holds."""
    if connection.vendor == "postgresql":
        # Pick, lock (skipping rows another batch holds) and stamp in one round
        # trip, reading each user's time zone on the way. Rows in the binary
        # format: psycopg reads the timestamps and the payloads in C.
        table = Event._meta.db_table
        with server_cursor(binary=True) as cursor:
            cursor.execute(
                f"""
                UPDATE {table} AS e SET processed_at = %s, retry_at = NULL
                WHERE id IN (
                    SELECT id FROM {table}
                    WHERE processed_at IS NULL AND dead_lettered_at IS NULL
                      AND user_id IS NOT NULL AND (retry_at IS NULL OR retry_at <= %s)
                    ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED
                )
                RETURNING id, event_id, event_type, user_id, payload, occurred_at, received_at,
                    (SELECT time_zone FROM {Profile._meta.db_table} WHERE user_id = e.user_id)
                """,
                [now, now, limit],
            )
            rows = cursor.fetchall()
        return sorted(
            (
                _Event(pk, event_id, kind, user_id, _json(payload), at, received, zone or "UTC")
                for pk, event_id, kind, user_id, payload, at, received, zone in rows
            ),
            key=lambda event: event.pk,
        )
    waiting = _claimable(now).order_by("pk").values_list("pk", flat=True)
    return _claim(list(waiting[:limit]), now)


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str | bytes) else value


def _evaluate(events: list[_Event], now: datetime) -> BatchResult:
    result = BatchResult()
    result.claimed = [event.pk for event in events]
    if not events:
        return result

    # Requirements: every requirement of every active badge with one watching
    # a type in the batch (the others are needed to measure those badges).
    types = {event.event_type for event in events}
    active = index.active_requirements()
    watching_badges = {r.badge_id for r in active if r.event_type in types or r.kind == "sequence"}
    requirements = [r for r in active if r.badge_id in watching_badges]
    by_type: dict[str, list[BadgeRequirement]] = defaultdict(list)
    by_badge: dict[int, list[BadgeRequirement]] = defaultdict(list)
    for requirement in requirements:
        by_badge[requirement.badge_id].append(requirement)
        for event_type in requirement.watched_types():
            if event_type in types:
                by_type[event_type].append(requirement)

    zones = {event.user_id: event.time_zone for event in events if event.time_zone is not None}
    unknown = {event.user_id for event in events} - set(zones)
    if unknown:
        zones.update(dict.fromkeys(unknown, "UTC"))
        zones.update(
            (user_id, zone or "UTC")
            for user_id, zone in Profile.objects.filter(user_id__in=unknown).values_list(
                "user_id", "time_zone"
            )
        )

    # Which requirements each event moves (type, filters, field present).
    facts: list[tuple[_Event, progress.Fact, list[BadgeRequirement]]] = []
    for event in events:
        fact = progress.Fact(event.event_type, event.payload, event.occurred_at)
        touched = [r for r in by_type.get(event.event_type, ()) if progress.relevant(r.spec, fact)]
        facts.append((event, fact, touched))
    segmented = {
        (event.user_id, r.badge_id)
        for event, _, touched in facts
        for r in touched
        if r.badge.is_segmented
    }
    if segmented:
        # Badges limited to a segment are neither shown to nor evaluated for others.
        allowed = set()
        for user_id in {user_id for user_id, _ in segmented}:
            allowed |= {
                (user_id, pk)
                for pk in Badge.objects.for_user(user_id)
                .filter(pk__in={badge_id for u, badge_id in segmented if u == user_id})
                .values_list("pk", flat=True)
            }
        facts = [
            (
                event,
                fact,
                [
                    r
                    for r in touched
                    if (event.user_id, r.badge_id) not in segmented
                    or (event.user_id, r.badge_id) in allowed
                ],
            )
            for event, fact, touched in facts
        ]
    pairs: list[tuple[int, int]] = sorted(
        {(event.user_id, r.badge_id) for event, _, touched in facts for r in touched}  # type: ignore[misc]
    )
    if not pairs:
        return result

    touched_users = {user_id for user_id, _ in pairs}
    touched_badges = {badge_id for _, badge_id in pairs}
    all_requirements = [r for badge_id in touched_badges for r in by_badge[badge_id]]
    # The all-time distinct values the batch mentions.
    mentioned: set[tuple[int, int, str]] = set()
    keys: dict[tuple[int, int], str | None] = {}  # (event, requirement) → its distinct key
    for event, fact, touched in facts:
        for requirement in touched:
            key = keys[(event.pk, requirement.pk)] = progress.key_for(requirement.spec, fact)
            if key is not None and event.user_id is not None:
                mentioned.add((event.user_id, requirement.pk, key))
    # Unlocks the awards check against: composites' parts, repeatable periods.
    repeating = {b for b in touched_badges if by_badge[b][0].badge.repeat}
    needs_unlocks = repeating or any(r.kind == "composite" for r in all_requirements)

    # Lock the standings, then read what they guard: one round trip on PostgreSQL.
    with _reads() as read:
        locked = _lock_user_badges(pairs, read)
        # Value and updated_at are rewritten for the rows that move; not read.
        progress_rows = read(
            RequirementProgress.objects.filter(
                user_id__in=touched_users, requirement_id__in=[r.pk for r in all_requirements]
            ),
            ("user_id", "requirement_id", "state", "met_by", "started_at"),
            f"SELECT user_id, requirement_id, state, met_by, started_at "
            f"FROM {RequirementProgress._meta.db_table} "
            f"WHERE user_id = ANY(%b::bigint[]) AND requirement_id = ANY(%b::bigint[])",
            [sorted(touched_users), [r.pk for r in all_requirements]],
        )
        seen_rows = None
        if mentioned:
            users_, requirements_, keys_ = (
                sorted({u for u, _, _ in mentioned}),
                sorted({r for _, r, _ in mentioned}),
                sorted({k for _, _, k in mentioned}),
            )
            seen_rows = read(
                DistinctValue.objects.filter(
                    user_id__in=users_, requirement_id__in=requirements_, value_key__in=keys_
                ),
                ("user_id", "requirement_id", "value_key"),
                f"SELECT user_id, requirement_id, value_key FROM {DistinctValue._meta.db_table} "
                f"WHERE user_id = ANY(%b::bigint[]) AND requirement_id = ANY(%b::bigint[]) "
                f"AND value_key = ANY(%b::text[])",
                [users_, requirements_, keys_],
            )
        unlock_rows = None
        if needs_unlocks:
            unlock_rows = read(
                Unlock.objects.filter(user_id__in=touched_users),
                ("user_id", "badge_id", "period", "tier", "unlocked_at", "event__occurred_at"),
                f"SELECT u.user_id, u.badge_id, u.period, u.tier, u.unlocked_at, e.occurred_at "
                f"FROM {Unlock._meta.db_table} u "
                f"LEFT JOIN {Event._meta.db_table} e ON e.id = u.event_id "
                f"WHERE u.user_id = ANY(%b::bigint[])",
                [sorted(touched_users)],
            )

    user_badges = locked()
    before = {pair: _row_of(standing) for pair, standing in user_badges.items()}
    fresh = {pair for pair, standing in user_badges.items() if standing.last_evaluated_at is None}
    rows = {
        (user_id, requirement_id): _Progress(
            user_id, requirement_id, _json(state) or {}, met_by, started
        )
        for user_id, requirement_id, state, met_by, started in progress_rows()
    }
    created_rows: set[tuple[int, int]] = set()
    for user_id, badge_id in pairs:
        for requirement in by_badge[badge_id]:
            if (user_id, requirement.pk) not in rows:
                # As in live evaluation, a touched badge gets a row per requirement.
                rows[(user_id, requirement.pk)] = _Progress(user_id, requirement.pk, {}, "", None)
                created_rows.add((user_id, requirement.pk))
    seen: set[tuple[int, int, str]] = set()
    if seen_rows is not None:
        seen = {
            (user_id, requirement_id, key)
            for user_id, requirement_id, key in seen_rows()
            if (user_id, requirement_id, key) in mentioned
        }
    held: dict[int, set[tuple[int, str, int]]] = defaultdict(set)
    legacy: dict[tuple[int, int], datetime] = {}
    if unlock_rows is not None:
        for user_id, badge_id, period, tier, at, occurred in unlock_rows():
            held[user_id].add((badge_id, period, tier))
            if badge_id in repeating and period == "" and tier == 0:
                legacy[(user_id, badge_id)] = occurred or at

    # Fold the events in, in order, measuring after each.
    new_keys: list[tuple[int, int, str]] = []
    new_unlocks: list[Unlock] = []
    moved_rows: set[tuple[int, int]] = set(created_rows)
    versions: dict[int, int] = {}
    measured: set[tuple[int, int]] = set()
    moved_pairs: set[tuple[int, int]] = set()
    for event, fact, touched in facts:
        user_id = event.user_id
        assert user_id is not None
        time_zone = zones[user_id]
        moved_badges: set[int] = set()
        for requirement in touched:
            spec, row = requirement.spec, rows[(user_id, requirement.pk)]
            key = keys[(event.pk, requirement.pk)]
            is_new_key = True
            if key is not None:
                is_new_key = (user_id, requirement.pk, key) not in seen
                if is_new_key:
                    seen.add((user_id, requirement.pk, key))
                    new_keys.append((user_id, requirement.pk, key))
            state = progress.apply_fact(spec, row.state, fact, time_zone, is_new_key=is_new_key)
            started = row.started_at is None or event.occurred_at < row.started_at
            if started:
                row.started_at = event.occurred_at
            if state != row.state:
                if state.get("met") and not (row.state or {}).get("met"):
                    row.met_by = event.event_id
                row.state = state
                moved_badges.add(requirement.badge_id)
            if started or requirement.badge_id in moved_badges:
                moved_rows.add((user_id, requirement.pk))
        moved_pairs.update((user_id, badge_id) for badge_id in moved_badges)
        # The rules take the time zone as an argument; no context to switch per event.
        # Badges unlocked before this event, as apply_event sees them (only
        # composites read it, and only when the batch loaded unlocks).
        unlocked = {badge_id for badge_id, _, _ in held[user_id]} if needs_unlocks else set()
        for badge_id in sorted({r.badge_id for r in touched}):
            if (user_id, badge_id) in measured and badge_id not in moved_badges:
                # Same states, same clock: the same standing and earnings as last time.
                continue
            measured.add((user_id, badge_id))
            created = _measure_and_award(
                event,
                user_badges[(user_id, badge_id)],
                by_badge[badge_id],
                rows,
                held[user_id],
                unlocked,
                legacy,
                versions,
                now,
                time_zone,
            )
            new_unlocks += created
            if created:
                result.unlocked_badges[user_id].append(badge_id)
                moved_pairs.add((user_id, badge_id))

    requirement_by_pk = {r.pk: r for r in all_requirements}
    for user_id, requirement_id in moved_rows:
        row = rows[(user_id, requirement_id)]
        requirement = requirement_by_pk[requirement_id]
        row.value = progress.measure(requirement.spec, row.state, now, zones[user_id]).value
        row.updated_at = now
    # Rows whose standing did not move are left alone (nothing for a page to
    # catch up on); new rows and moved ones are written, and pushed.
    changed = {
        pair
        for pair, standing in user_badges.items()
        if pair in fresh or pair in moved_pairs or _row_of(standing) != before[pair]
    }
    moved_progress = [rows[pair] for pair in sorted(moved_rows)]
    standings = [user_badges[pair] for pair in sorted(changed)]
    _stamp(standings)
    if connection.vendor == "postgresql":  # one round trip for the four
        with pipeline() as send:
            if new_keys:
                send(*_distinct_statement(new_keys))
            if moved_progress:
                send(*_progress_statement(moved_progress))
            if standings:
                send(*_standings_statement(standings))
            unlock_keys = [send(*statement) for statement in insert_statements(new_unlocks)]
        inserted(new_unlocks, unlock_keys)
    else:
        _insert_distinct(new_keys)
        _upsert_progress(moved_progress)
        _save_user_badges(standings)
        Unlock.objects.bulk_create(new_unlocks, batch_size=1000)
    for unlock in new_unlocks:
        result.unlocks[unlock.user_id].append(unlock.pk)
    for user_id, badge_id in changed:
        result.changed[user_id].add(badge_id)
    # Rows of every requirement of a changed badge are in `rows` (read, or made
    # above) and stay locked with their standing until the commit.
    states: dict[int, dict[int, dict[str, Any]]] = {user_id: {} for user_id, _ in changed}
    for (user_id, requirement_id), row in rows.items():
        if user_id in states:
            states[user_id][requirement_id] = row.state
    received: dict[int | None, datetime | None] = {e.pk: e.received_at for e in events}
    result.known = KnownState(
        standings={pair: user_badges[pair] for pair in changed},
        states=states,
        zones={user_id: zones[user_id] for user_id in states},
        unlocks={
            unlock.pk: (
                unlock.user_id,
                unlock.badge_id,
                unlock.tier,
                unlock.period,
                received.get(unlock.event_id),
            )
            for unlock in new_unlocks
        },
    )
    return result


Read = Callable[[Any, Sequence[str], str, list[Any]], Rows]


@contextmanager
def _reads() -> Iterator[Read]:
    """Reads sent together: `read(queryset, fields, sql, params)` sends one and
    returns the function that gives its rows once the block has ended.

    On PostgreSQL `sql` (array parameters: a long IN list costs Django a
    lookup per value) with the others in one round trip; elsewhere the
    queryset's `fields`, at once.
    """
    if connection.vendor != "postgresql":

        def at_once(queryset: Any, fields: Sequence[str], sql: str, params: list[Any]) -> Rows:
            rows = list(queryset.values_list(*fields))
            return lambda: rows

        yield at_once
        return
    with pipeline() as send:
        yield lambda queryset, fields, sql, params: send(sql, params, binary=True)


def _lock_user_badges(
    pairs: list[tuple[int, int]], read: Read
) -> Callable[[], dict[tuple[int, int], _Standing]]:
    """Every (user, badge) row of the batch, created if missing, locked in (user,
    badge) order; sent with `read`, so the standings are there once its block ends.

    The rows are created, then locked by a second statement: a lock in the
    insert's own statement would miss a row another batch committed while
    this one waited for it (a statement sees what committed before it
    began). Sent together, the two still cost one round trip.
    """
    table = UserBadge._meta.db_table
    if connection.vendor == "postgresql":
        read(
            None,
            (),
            f"""
            INSERT INTO {table} (user_id, badge_id, current_value, target_value, tier)
            SELECT u, b, 0, 0, 0 FROM unnest(%b::bigint[], %b::bigint[]) AS p(u, b)
            ON CONFLICT (user_id, badge_id) DO NOTHING
            """,
            [[u for u, _ in pairs], [b for _, b in pairs]],
        )
    else:
        UserBadge.objects.bulk_create(
            [UserBadge(user_id=user_id, badge_id=badge_id) for user_id, badge_id in pairs],
            ignore_conflicts=True,
            batch_size=1000,
        )
    wanted = set(pairs)
    users, badges = sorted({u for u, _ in pairs}), sorted({b for _, b in pairs})
    locked = read(
        UserBadge.objects.select_for_update()
        .filter(user_id__in=users, badge_id__in=badges)
        .order_by("user_id", "badge_id"),
        _STANDING_FIELDS,
        f"SELECT id, user_id, badge_id, current_value, target_value, completed_at, "
        f"completed_by_event_id, last_evaluated_at, tier FROM {table} "
        f"WHERE user_id = ANY(%b::bigint[]) AND badge_id = ANY(%b::bigint[]) "
        f"ORDER BY user_id, badge_id FOR UPDATE",
        [users, badges],
    )
    return lambda: {
        (row[1], row[2]): _Standing(*row) for row in locked() if (row[1], row[2]) in wanted
    }


def _row_of(standing: _Standing) -> tuple[Any, ...]:
    return (
        standing.current_value,
        standing.target_value,
        standing.completed_at,
        standing.completed_by_event_id,
        standing.tier,
    )


def _insert_distinct(keys: list[tuple[int, int, str]], *, skip_existing: bool = False) -> None:
    """Insert these (user, requirement, value key) rows; `skip_existing` leaves
    alone those already there (PostgreSQL; elsewhere callers delete first)."""
    if not keys:
        return
    if connection.vendor != "postgresql":
        DistinctValue.objects.bulk_create(
            [DistinctValue(user_id=u, requirement_id=r, value_key=k) for u, r, k in keys],
            batch_size=1000,
        )
        return
    with server_cursor() as cursor:
        cursor.execute(*_distinct_statement(keys, skip_existing=skip_existing))


def _distinct_statement(
    keys: list[tuple[int, int, str]], *, skip_existing: bool = False
) -> tuple[str, list[Any]]:
    conflict = "ON CONFLICT (user_id, requirement_id, value_key) DO NOTHING"
    return (
        f"""
        INSERT INTO {DistinctValue._meta.db_table} (user_id, requirement_id, value_key)
        SELECT * FROM unnest(%b::bigint[], %b::bigint[], %b::text[])
        {conflict if skip_existing else ""}
        """,
        [[u for u, _, _ in keys], [r for _, r, _ in keys], [k for _, _, k in keys]],
    )


def _save_user_badges(user_badges: list[_Standing]) -> None:
    """Write the standings back: on PostgreSQL one UPDATE fed by an array per column
    (Django's bulk_update builds a CASE per row and field, which costs more
    than the evaluation itself)."""
    from achievements.actions import USER_BADGE_FIELDS

    if not user_badges:
        return
    _stamp(user_badges)
    if connection.vendor == "postgresql":
        with server_cursor() as cursor:
            cursor.execute(*_standings_statement(user_badges))
        return
    models = [
        UserBadge(
            **{("id" if name == "pk" else name): getattr(ub, name) for name in _STANDING_FIELDS}
        )
        for ub in user_badges
    ]
    UserBadge.objects.bulk_update(models, USER_BADGE_FIELDS, batch_size=500)


def _stamp(user_badges: list[_Standing]) -> None:
    """Mark the standings evaluated now, just before they are written (pages re-sync on it)."""
    evaluated_at = timezone.now()
    for user_badge in user_badges:
        user_badge.last_evaluated_at = evaluated_at


def _standings_statement(user_badges: list[_Standing]) -> tuple[str, list[Any]]:
    """_save_user_badges' UPDATE on PostgreSQL."""
    return (
        f"""
        UPDATE {UserBadge._meta.db_table} AS ub SET
            current_value = v.current_value,
            target_value = v.target_value,
            last_evaluated_at = v.last_evaluated_at,
            completed_at = v.completed_at,
            completed_by_event_id = v.completed_by_event_id,
            tier = v.tier
        FROM unnest(
            %b::bigint[], %t::numeric[], %t::numeric[], %b::timestamptz[],
            %b::timestamptz[], %b::bigint[], %b::smallint[]
        ) AS v(id, current_value, target_value, last_evaluated_at, completed_at,
               completed_by_event_id, tier)
        WHERE ub.id = v.id
        """,
        [
            [ub.pk for ub in user_badges],
            [ub.current_value for ub in user_badges],
            [ub.target_value for ub in user_badges],
            [ub.last_evaluated_at for ub in user_badges],
            [ub.completed_at for ub in user_badges],
            [ub.completed_by_event_id for ub in user_badges],
            [ub.tier for ub in user_badges],
        ],
    )


def _upsert_progress(rows: list[_Progress]) -> list[tuple[int, int]]:
    """Insert new progress rows and update changed ones, in one statement; the
    (user, requirement) pairs written (on PostgreSQL, not those already so)."""
    if not rows:
        return []
    if connection.vendor == "postgresql":
        with server_cursor() as cursor:
            cursor.execute(*_progress_statement(rows))
            return cursor.fetchall()
    RequirementProgress.objects.bulk_create(
        [
            RequirementProgress(
                user_id=row.user_id,
                requirement_id=row.requirement_id,
                value=row.value,
                state=row.state,
                met_by=row.met_by,
                started_at=row.started_at,
            )
            for row in rows
        ],
        update_conflicts=True,
        unique_fields=["user", "requirement"],
        update_fields=PROGRESS_FIELDS,
        batch_size=1000,
    )
    return [(row.user_id, row.requirement_id) for row in rows]


def _progress_statement(rows: list[_Progress]) -> tuple[str, list[Any]]:
    """_upsert_progress's statement on PostgreSQL."""
    return (
        f"""
        INSERT INTO {RequirementProgress._meta.db_table} AS p
            (user_id, requirement_id, value, state, met_by, started_at, updated_at)
        SELECT * FROM unnest(
            %b::bigint[], %b::bigint[], %t::numeric[], %b::jsonb[], %b::text[],
            %b::timestamptz[], %b::timestamptz[]
        )
        ON CONFLICT (user_id, requirement_id) DO UPDATE SET
            value = EXCLUDED.value,
            state = EXCLUDED.state,
            met_by = EXCLUDED.met_by,
            started_at = EXCLUDED.started_at,
            updated_at = EXCLUDED.updated_at
        -- A row that would not change is left as it is (a replay finds most so).
        WHERE (p.value, p.state, p.met_by, p.started_at) IS DISTINCT FROM
            (EXCLUDED.value, EXCLUDED.state, EXCLUDED.met_by, EXCLUDED.started_at)
        RETURNING user_id, requirement_id
        """,
        [
            [row.user_id for row in rows],
            [row.requirement_id for row in rows],
            [row.value for row in rows],
            [json.dumps(row.state) for row in rows],
            [row.met_by for row in rows],
            [row.started_at for row in rows],
            [row.updated_at for row in rows],
        ],
    )


def _measure_and_award(
    event: _Event,
    user_badge: _Standing,
    requirements: list[BadgeRequirement],
    rows: dict[tuple[int, int], _Progress],
    held: set[tuple[int, str, int]],
    unlocked: set[int],
    legacy: dict[tuple[int, int], datetime],
    versions: dict[int, int],
    now: datetime,
    time_zone: str,
) -> list[Unlock]:
    """apply_event's measure-and-award step for one badge, with the writes left to the caller."""
    from achievements.versions import live_version_id

    user_id = user_badge.user_id
    badge = requirements[0].badge
    states = {r.pk: rows[(user_id, r.pk)].state for r in requirements}
    standing = badge.standing(requirements, states, now, time_zone, unlocked)
    user_badge.current_value = standing.status.current
    user_badge.target_value = standing.status.target
    user_badge.last_evaluated_at = now
    earned = badge.earnings(requirements, states, standing, event.occurred_at, time_zone)
    if not earned:
        return []
    completing = [rows[(user_id, r.pk)].met_by for r in requirements]
    provenance = list(dict.fromkeys([*(m for m in completing if m), event.event_id]))
    starts = [t for r in requirements if (t := rows[(user_id, r.pk)].started_at) is not None]
    took = max(event.occurred_at - min(starts), timedelta(0)) if starts else None
    created = []
    for period, tier in earned:
        if tier == 1 and user_badge.tier == 0 and user_badge.completed_at is not None:
            user_badge.tier = 1  # unlocked before the badge had tiers: that was its first
            continue
        if not period and (
            tier <= user_badge.tier if tier else user_badge.completed_at is not None
        ):
            continue
        if period and (
            (badge.pk, period, tier) in held
            or (
                user_badge.completed_at is not None
                and (user_id, badge.pk) in legacy
                and periods.period_key(
                    rules.Scope(badge.repeat), legacy[(user_id, badge.pk)], time_zone
                )
                == period
            )
        ):
            continue
        if badge.pk not in versions:
            versions[badge.pk] = live_version_id(badge.pk)
        unlock = Unlock(
            user_id=user_id,
            badge_id=badge.pk,
            period=period,
            tier=tier,
            unlocked_at=now,
            event_id=event.pk,
            event_ids=provenance if not period and tier <= 1 else provenance[-1:],
            version_id=versions[badge.pk],
            took=took if not period or user_badge.completed_at is None else None,
        )
        held.add((badge.pk, period, tier))
        if user_badge.completed_at is None:
            user_badge.completed_at = now
            user_badge.completed_by_event_id = event.pk
        user_badge.tier = max(user_badge.tier, tier)
        created.append(unlock)
    return created
