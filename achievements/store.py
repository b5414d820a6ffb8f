"""Bulk reads, locks and writes of what the evaluation core works on.

Everything that evaluates (live batches, replay, re-evaluation) loads its
(user, badge) pairs here as `core.Pair`s and writes the core's outcomes
back here, with a fixed number of statements however many events and
users: on PostgreSQL the reads go in one round trip (psycopg's pipeline
mode, `db.pipeline`) with array parameters, and so do the writes.

Locks. Every (user, badge) row a unit of work touches is created if
missing and locked in (user, badge) order, the one order every evaluator
locks in, so two evaluations never wait on each other in a cycle. The
progress rows, distinct values and unlocks of a pair are read and written
only under its lock.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import connection
from django.utils import timezone

from accounts.models import Profile
from achievements import core
from achievements.db import STREAM_ROWS, Rows, insert_statements, inserted, pipeline, server_cursor
from achievements.models import (
    DistinctValue,
    Ending,
    Entry,
    Event,
    LedgerEntry,
    RequirementProgress,
    Unlock,
    UserBadge,
)
from achievements.models.ledger import announce, listening

Read = Callable[[Any, Sequence[str], str, list[Any]], Rows]
Pairs = dict[tuple[int, int], core.Pair]


def decode_json(value: Any) -> Any:
    """A JSON column as read in the binary format (text) or through Django (decoded)."""
    return json.loads(value) if isinstance(value, str | bytes) else value


@contextmanager
def reads() -> Iterator[Read]:
    """Reads sent together: `read(queryset, fields, sql, params)` sends one and
    returns the function that gives its rows once the block has ended.

    On PostgreSQL `sql` (array parameters: a long IN list costs Django a
    lookup per value) with the others in one round trip; elsewhere the
    queryset's `fields`, at once.
    """
    if connection.vendor != "postgresql":

        def at_once(queryset: Any, fields: Sequence[str], sql: str, params: list[Any]) -> Rows:
            rows = list(queryset.values_list(*fields)) if queryset is not None else []
            return lambda: rows

        yield at_once
        return
    with pipeline() as send:
        yield lambda queryset, fields, sql, params: send(sql, params, binary=True)


@dataclass
class Loaded:
    """Pairs as loaded and locked, with what the writes need to know of them."""

    pairs: Pairs
    row_ids: dict[tuple[int, int], int] = field(default_factory=dict)
    # The standing row as stored (None: created by this lock), to write only what moved.
    stored: dict[tuple[int, int], tuple[Any, ...] | None] = field(default_factory=dict)


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
    "withheld",
    "granted",
    "expires_at",
    "since",
    "lapsed_at",
)


def time_zones(user_ids: Iterable[int], known: Mapping[int, str] | None = None) -> dict[int, str]:
    """Each user's time zone (UTC when they have none), reading only those not `known`."""
    zones = {user_id: zone for user_id, zone in (known or {}).items() if zone}
    unknown = set(user_ids) - set(zones)
    if unknown:
        zones.update(dict.fromkeys(unknown, "UTC"))
        zones.update(
            (user_id, zone or "UTC")
            for user_id, zone in Profile.objects.filter(user_id__in=unknown).values_list(
                "user_id", "time_zone"
            )
        )
    return zones


def load_pairs(
    pair_keys: Iterable[tuple[int, int]],
    rules: core.RuleSet,
    zones: Mapping[int, str],
    *,
    keys: set[tuple[int, int, str]] = frozenset(),  # type: ignore[assignment]
    progress: bool = True,
    unlocks_of: set[int] | None = None,
) -> Loaded:
    """Create and lock these pairs' standing rows, and read what they guard.

    1. Create the missing (user, badge) rows, then lock them all in (user,
       badge) order (a lock in the insert's own statement would miss a row
       another transaction committed while this one waited for it).
    2. Read the pairs' progress rows (`progress=False`: a whole-history
       fold rebuilds them), the all-time distinct values among `keys`, and
       the unlocks of the badges in `unlocks_of` (all badges when None).
    On PostgreSQL the statements go in one round trip.
    """
    wanted = sorted(set(pair_keys))
    if not wanted:
        return Loaded({})
    users = sorted({u for u, _ in wanted})
    badges = sorted({b for _, b in wanted})
    badge_of = rules.requirement_badges(badges)
    requirement_ids = sorted(badge_of)
    with reads() as read:
        locked = lock_standings(wanted, users, badges, read)
        progress_rows = None
        if progress:
            progress_rows = read(
                RequirementProgress.objects.filter(
                    user_id__in=users, requirement_id__in=requirement_ids
                ),
                ("user_id", "requirement_id", "state", "met_by", "started_at"),
                f"SELECT user_id, requirement_id, state, met_by, started_at "
                f"FROM {RequirementProgress._meta.db_table} "
                f"WHERE user_id = ANY(%b::bigint[]) AND requirement_id = ANY(%b::bigint[])",
                [users, requirement_ids],
            )
        key_rows = None
        if keys:
            key_users, key_requirements, key_values = (
                sorted({u for u, _, _ in keys}),
                sorted({r for _, r, _ in keys}),
                sorted({k for _, _, k in keys}),
            )
            key_rows = read(
                DistinctValue.objects.filter(
                    user_id__in=key_users,
                    requirement_id__in=key_requirements,
                    value_key__in=key_values,
                ),
                ("user_id", "requirement_id", "value_key"),
                f"SELECT user_id, requirement_id, value_key FROM {DistinctValue._meta.db_table} "
                f"WHERE user_id = ANY(%b::bigint[]) AND requirement_id = ANY(%b::bigint[]) "
                f"AND value_key = ANY(%b::text[])",
                [key_users, key_requirements, key_values],
            )
        unlock_rows = None
        unlock_badges = badges if unlocks_of is None else sorted(unlocks_of & set(badges))
        if unlock_badges:
            unlock_rows = read(
                Unlock.objects.held().filter(user_id__in=users, badge_id__in=unlock_badges),
                _UNLOCK_FIELDS,
                f"SELECT u.user_id, u.badge_id, u.period, u.tier, u.id, u.event_id, "
                f"u.event_ids, u.took, u.version_id, e.occurred_at, u.unlocked_at, u.granted "
                f"FROM {Unlock._meta.db_table} u "
                f"LEFT JOIN {Event._meta.db_table} e ON e.id = u.event_id "
                f"WHERE u.user_id = ANY(%b::bigint[]) AND u.badge_id = ANY(%b::bigint[]) "
                f"AND u.ended_at IS NULL",
                [users, unlock_badges],
            )
    loaded = locked()
    read_unlocks = set(unlock_badges)
    for (user_id, badge_id), pair in loaded.pairs.items():
        pair.time_zone = zones.get(user_id) or "UTC"
        pair.held_known = badge_id in read_unlocks
    if progress_rows is not None:
        for user_id, requirement_id, state, met_by, started in progress_rows():
            owner = loaded.pairs.get((user_id, badge_of[requirement_id]))
            if owner is not None:
                owner.progress[requirement_id] = core.Progress(
                    decode_json(state) or {}, met_by, started
                )
    if key_rows is not None:
        for user_id, requirement_id, value_key in key_rows():
            owner = loaded.pairs.get((user_id, badge_of[requirement_id]))
            if owner is not None:
                owner.known_keys.setdefault(requirement_id, set()).add(value_key)
    if unlock_rows is not None:
        for row in unlock_rows():
            owner = loaded.pairs.get((row[0], row[1]))
            if owner is not None:
                _hold(owner, rules.badges[row[1]], row)
    return loaded


_UNLOCK_FIELDS = (
    "user_id",
    "badge_id",
    "period",
    "tier",
    "pk",
    "event_id",
    "event_ids",
    "took",
    "version_id",
    "event__occurred_at",
    "unlocked_at",
    "granted",
)


def _hold(pair: core.Pair, rule: core.BadgeRule, row: Sequence[Any]) -> None:
    _, _, period, tier, pk, event_pk, event_ids, took, version_id, occurred, at, granted = row
    witness = core.order_key(occurred, event_pk) if occurred is not None else None
    pair.held[(period, tier)] = core.Held(
        period,
        tier,
        event_pk,
        list(decode_json(event_ids) or []),
        took,
        version_id,
        witness,
        pk,
        granted=granted,
    )
    if rule.repeat is not None and period == "" and tier == 0:
        pair.legacy_moment = occurred or at


def lock_standings(
    wanted: list[tuple[int, int]], users: list[int], badges: list[int], read: Read
) -> Callable[[], Loaded]:
    """Create the missing rows of these pairs and lock them (see load_pairs); sent
    with `read`, so the standings are there once its block ends."""
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
            [[u for u, _ in wanted], [b for _, b in wanted]],
        )
    else:
        UserBadge.objects.bulk_create(
            [UserBadge(user_id=user_id, badge_id=badge_id) for user_id, badge_id in wanted],
            ignore_conflicts=True,
            batch_size=1000,
        )
    locked = read(
        UserBadge.objects.select_for_update()
        .filter(user_id__in=users, badge_id__in=badges)
        .order_by("user_id", "badge_id"),
        _STANDING_FIELDS,
        f"SELECT id, user_id, badge_id, current_value, target_value, completed_at, "
        f"completed_by_event_id, last_evaluated_at, tier, withheld, granted, expires_at, since, "
        f"lapsed_at "
        f"FROM {table} "
        f"WHERE user_id = ANY(%b::bigint[]) AND badge_id = ANY(%b::bigint[]) "
        f"ORDER BY user_id, badge_id FOR UPDATE",
        [users, badges],
    )
    wanted_set = set(wanted)

    def assemble() -> Loaded:
        loaded = Loaded({})
        for row in locked():
            pk, user_id, badge_id, current, target, completed, by, evaluated, *rest = row
            tier, withheld, granted, expires_at, since, lapsed_at = rest
            key = (user_id, badge_id)
            if key not in wanted_set:
                continue
            pair = core.Pair(
                user_id,
                badge_id,
                current_value=current,
                target_value=target,
                completed_at=completed,
                completed_by_event_id=by,
                tier=tier,
                withheld=frozenset(decode_json(withheld) or ()),
                granted=granted,
                expires_at=expires_at,
                since=since,
                lapsed_at=lapsed_at,
            )
            loaded.pairs[key] = pair
            loaded.row_ids[key] = pk
            loaded.stored[key] = pair.row() if evaluated is not None else None
        return loaded

    return assemble


# --- history -------------------------------------------------------------------


def history(
    user_ids: Sequence[int], event_types: Iterable[str], *, name: str = "history"
) -> Generator[core.Occurrence]:
    """The processed events of these users and types, by user and occurrence
    (streamed: a chunk of users' history can be large)."""
    processed = Event.objects.filter(
        user_id__in=list(user_ids),
        event_type__in=sorted(set(event_types)),
        processed_at__isnull=False,
    )
    fields = ("pk", "event_id", "event_type", "user_id", "payload", "occurred_at")
    events = processed.order_by("user_id", "occurred_at", "pk").values_list(*fields)
    if connection.vendor != "postgresql":
        for row in events.iterator(chunk_size=STREAM_ROWS):
            yield core.Occurrence(*row)
        return
    # Streamed in the binary format: the queryset's rows cost Django a time
    # zone conversion and a JSON decode each, in Python.
    sql, params = events.query.sql_with_params()
    with server_cursor(binary=True, name=name) as cursor:
        cursor.execute(sql, params)
        for pk, event_id, event_type, user_id, payload, occurred_at in cursor:
            yield core.Occurrence(
                pk, event_id, event_type, user_id, decode_json(payload), occurred_at
            )


# --- writes --------------------------------------------------------------------


@dataclass
class Writes:
    """What a unit of work writes, gathered, then sent together by `save`."""

    new_keys: list[tuple[int, int, str]] = field(default_factory=list)
    # (user, requirement) pairs whose distinct values are replaced by `new_keys`'.
    replaced_keys: list[tuple[int, int]] = field(default_factory=list)
    keyed: set[int] = field(default_factory=set)  # requirements that keep distinct values
    progress: list[tuple[int, int, core.Progress]] = field(default_factory=list)
    stale_progress: list[tuple[int, int]] = field(default_factory=list)
    standings: list[tuple[int, core.Pair]] = field(default_factory=list)  # (row id, pair)
    # Standings written only if they must, or if a progress row of theirs changed.
    standings_if_moved: list[tuple[int, core.Pair, bool]] = field(default_factory=list)
    dropped_standings: list[int] = field(default_factory=list)
    unlocks: list[Unlock] = field(default_factory=list)
    revised: list[core.Held] = field(default_factory=list)
    # Held unlocks whose rule stopped holding: (unlock id, when).
    lapses: list[tuple[int, datetime]] = field(default_factory=list)
    leftovers: bool = True  # whether a requirement keeping no values may still have some

    def save(self) -> list[tuple[int, int]]:
        """Send the writes; the (user, requirement) progress rows that changed.

        Standings are stamped evaluated now, just before they are written:
        pages re-sync the cards evaluated after they were rendered."""
        evaluated_at = timezone.now()
        if self.replaced_keys:
            replace_distinct(self.replaced_keys, self.new_keys, self.keyed, self.leftovers)
            new_keys: list[tuple[int, int, str]] = []
        else:
            new_keys = self.new_keys
        delete_pairs(RequirementProgress, self.stale_progress)
        # Before the inserts: an earning lost and earned again in one unit of work
        # has its new unlock held only once the old one has ended.
        self._end_lapsed()
        if self.dropped_standings:
            UserBadge.objects.filter(pk__in=self.dropped_standings).delete()
        if self.revised:
            Unlock.objects.bulk_update(
                [
                    Unlock(pk=h.pk, event_ids=h.event_ids, event_id=h.event_pk, took=h.took)
                    for h in self.revised
                    if h.pk is not None
                ],
                ["event_ids", "event", "took"],
            )
        written: list[tuple[int, int]] = []
        if self.standings_if_moved:
            # The progress rows first: which of them changed decides the standings.
            written = _upsert_progress(self.progress) if self.progress else []
            self.progress = []
            changed = self._badges(written)
            self.standings += [
                (row_id, pair)
                for row_id, pair, must in self.standings_if_moved
                if must or (pair.user_id, pair.badge_id) in changed
            ]
            self.standings_if_moved = []
        if connection.vendor == "postgresql":  # one round trip for the four
            held = [u for u in self.unlocks if u.ended_at is None]
            with pipeline() as send:
                if new_keys:
                    send(*_distinct_statement(new_keys))
                progress_rows = (
                    send(*_progress_statement(self.progress)) if self.progress else None
                )
                if self.standings:
                    send(*_standings_statement(self.standings, evaluated_at))
                unlock_keys = [send(*statement) for statement in insert_statements(self.unlocks)]
                if held:
                    send(*_earned_entries_statement(held))
            inserted(self.unlocks, unlock_keys)
            if progress_rows is not None:
                written += [(user_id, requirement) for user_id, requirement in progress_rows()]
            entries = []
            if held and listening():  # the statement wrote them; receivers hear of twins
                announce([LedgerEntry.for_unlock(u, Entry.EARNED, u.unlocked_at) for u in held])
        else:
            insert_distinct(new_keys)
            written += _upsert_progress(self.progress)
            _save_standings(self.standings, evaluated_at)
            Unlock.objects.bulk_create(self.unlocks, batch_size=1000)
            entries = [
                LedgerEntry.for_unlock(u, Entry.EARNED, u.unlocked_at)
                for u in self.unlocks
                if u.ended_at is None
            ]
        # New unlocks made ended (earned and lost within this unit of work): both entries.
        for unlock in self.unlocks:
            if unlock.ended_at is not None:
                entries.append(LedgerEntry.for_unlock(unlock, Entry.EARNED, unlock.unlocked_at))
                entries.append(LedgerEntry.for_unlock(unlock, Entry.LAPSED, unlock.ended_at))
        if entries:
            LedgerEntry.objects.bulk_create(entries, batch_size=1000)
            announce(entries)
        return written

    def _end_lapsed(self) -> None:
        """End the held unlocks whose rule stopped holding, with their ledger entries."""
        if not self.lapses:
            return
        at_of = dict(self.lapses)
        ended = list(Unlock.objects.filter(pk__in=at_of, ended_at__isnull=True))
        for at in sorted(set(at_of.values())):
            Unlock.objects.end([u for u in ended if at_of[u.pk] == at], Ending.LAPSED, at)
        announce(
            LedgerEntry.objects.bulk_create(
                [LedgerEntry.for_unlock(u, Entry.LAPSED, at_of[u.pk]) for u in ended]
            )
        )

    def _badges(self, written: list[tuple[int, int]]) -> set[tuple[int, int]]:
        """The (user, badge) pairs of these written (user, requirement) rows."""
        badge_of = {
            spec_id: pair.badge_id
            for _, pair, _ in self.standings_if_moved
            for spec_id in pair.progress
        }
        return {(user_id, badge_of[r]) for user_id, r in written if r in badge_of}


def insert_distinct(keys: list[tuple[int, int, str]], *, skip_existing: bool = False) -> None:
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


def replace_distinct(
    pairs: list[tuple[int, int]],
    keys: list[tuple[int, int, str]],
    keyed: set[int],
    leftovers: bool = True,
) -> None:
    """Make the distinct values of these (user, requirement) pairs exactly `keys`:
    those of requirements in `keyed` reconciled, any others' (left by an earlier
    form of the rule) deleted."""
    if connection.vendor != "postgresql":
        delete_pairs(DistinctValue, pairs)
        insert_distinct(keys)
        return
    if leftovers:
        delete_pairs(DistinctValue, [pair for pair in pairs if pair[1] not in keyed])
    pairs = [pair for pair in pairs if pair[1] in keyed]
    table = DistinctValue._meta.db_table
    if pairs:
        with server_cursor() as cursor:
            cursor.execute(
                f"DELETE FROM {table} AS dv USING unnest(%b::integer[], %b::bigint[]) AS p(u, r) "
                "WHERE dv.user_id = p.u AND dv.requirement_id = p.r AND NOT EXISTS ("
                "SELECT 1 FROM unnest(%b::integer[], %b::bigint[], %b::text[]) AS k(u, r, v) "
                "WHERE k.u = dv.user_id AND k.r = dv.requirement_id AND k.v = dv.value_key)",
                [
                    [u for u, _ in pairs],
                    [r for _, r in pairs],
                    [u for u, _, _ in keys],
                    [r for _, r, _ in keys],
                    [k for _, _, k in keys],
                ],
            )
    insert_distinct(keys, skip_existing=True)


def delete_pairs(model: Any, pairs: list[tuple[int, int]]) -> None:
    """Delete the rows of these (user, requirement) pairs."""
    if not pairs:
        return
    if connection.vendor == "postgresql":
        with server_cursor() as cursor:
            cursor.execute(
                f"DELETE FROM {model._meta.db_table} WHERE (user_id, requirement_id) IN "
                "(SELECT * FROM unnest(%b::integer[], %b::bigint[]))",
                [[u for u, _ in pairs], [r for _, r in pairs]],
            )
        return
    by_user: dict[int, list[int]] = defaultdict(list)
    for user_id, requirement_id in pairs:
        by_user[user_id].append(requirement_id)
    for user_id, requirement_ids in by_user.items():
        model.objects.filter(user_id=user_id, requirement_id__in=requirement_ids).delete()


def _save_standings(standings: list[tuple[int, core.Pair]], evaluated_at: datetime) -> None:
    """Write the standings back (SQLite; PostgreSQL sends _standings_statement)."""
    if not standings:
        return
    models = [
        UserBadge(
            id=row_id,
            user_id=pair.user_id,
            badge_id=pair.badge_id,
            current_value=pair.current_value,
            target_value=pair.target_value,
            completed_at=pair.completed_at,
            completed_by_event_id=pair.completed_by_event_id,
            last_evaluated_at=evaluated_at,
            tier=pair.tier,
            expires_at=pair.expires_at,
            lapsed_at=pair.lapsed_at,
        )
        for row_id, pair in standings
    ]
    UserBadge.objects.bulk_update(
        models,
        [
            "current_value",
            "target_value",
            "last_evaluated_at",
            "completed_at",
            "completed_by_event",
            "tier",
            "expires_at",
            "lapsed_at",
        ],
        batch_size=500,
    )


def _standings_statement(
    standings: list[tuple[int, core.Pair]], evaluated_at: datetime
) -> tuple[str, list[Any]]:
    """One UPDATE fed by an array per column (Django's bulk_update builds a CASE
    per row and field, which costs more than the evaluation itself)."""
    return (
        f"""
        UPDATE {UserBadge._meta.db_table} AS ub SET
            current_value = v.current_value,
            target_value = v.target_value,
            last_evaluated_at = v.last_evaluated_at,
            completed_at = v.completed_at,
            completed_by_event_id = v.completed_by_event_id,
            tier = v.tier,
            expires_at = v.expires_at,
            lapsed_at = v.lapsed_at
        FROM unnest(
            %b::bigint[], %t::numeric[], %t::numeric[], %b::timestamptz[],
            %b::timestamptz[], %b::bigint[], %b::smallint[], %b::timestamptz[],
            %b::timestamptz[]
        ) AS v(id, current_value, target_value, last_evaluated_at, completed_at,
               completed_by_event_id, tier, expires_at, lapsed_at)
        WHERE ub.id = v.id
        """,
        [
            [row_id for row_id, _ in standings],
            [pair.current_value for _, pair in standings],
            [pair.target_value for _, pair in standings],
            [evaluated_at] * len(standings),
            [pair.completed_at for _, pair in standings],
            [pair.completed_by_event_id for _, pair in standings],
            [pair.tier for _, pair in standings],
            [pair.expires_at for _, pair in standings],
            [pair.lapsed_at for _, pair in standings],
        ],
    )


def _upsert_progress(rows: list[tuple[int, int, core.Progress]]) -> list[tuple[int, int]]:
    """Insert new progress rows and update changed ones, in one statement; the
    (user, requirement) pairs written (on PostgreSQL, not those already so)."""
    if not rows:
        return []
    if connection.vendor == "postgresql":
        with server_cursor() as cursor:
            cursor.execute(*_progress_statement(rows))
            return [(user_id, requirement) for user_id, requirement in cursor.fetchall()]
    now = timezone.now()
    RequirementProgress.objects.bulk_create(
        [
            RequirementProgress(
                user_id=user_id,
                requirement_id=requirement_id,
                value=row.value,
                state=row.state,
                met_by=row.met_by,
                started_at=row.started_at,
                updated_at=now,
            )
            for user_id, requirement_id, row in rows
        ],
        update_conflicts=True,
        unique_fields=["user", "requirement"],
        update_fields=["state", "value", "met_by", "started_at", "updated_at"],
        batch_size=1000,
    )
    return [(user_id, requirement_id) for user_id, requirement_id, _ in rows]


def _progress_statement(rows: list[tuple[int, int, core.Progress]]) -> tuple[str, list[Any]]:
    now = timezone.now()
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
            [user_id for user_id, _, _ in rows],
            [requirement_id for _, requirement_id, _ in rows],
            [row.value for _, _, row in rows],
            [json.dumps(row.state) for _, _, row in rows],
            [row.met_by for _, _, row in rows],
            [row.started_at for _, _, row in rows],
            [now] * len(rows),
        ],
    )


def lapses_of(outcome: core.Outcome) -> list[tuple[int, datetime]]:
    """The stored unlocks an outcome ends because their rule stopped holding."""
    return [(held.pk, at) for held, at in outcome.lapsed if held.pk is not None]


def new_unlock(earning: core.Earning, *, now: datetime, silent: bool = False) -> Unlock:
    """The Unlock row of a new earning (inserted by Writes.save).

    One whose validity ended before it was made (events backfilled from long
    ago) is kept quiet, as a replay's is: it is history already."""
    silent = (
        silent
        or (earning.expires_at is not None and earning.expires_at <= now)
        or earning.ended_at is not None
    )
    return Unlock(
        user_id=earning.user_id,
        badge_id=earning.badge_id,
        period=earning.period,
        tier=earning.tier,
        unlocked_at=now,
        event_id=earning.event_pk,
        event_ids=earning.event_ids,
        version_id=earning.version_id,
        took=earning.took,
        expires_at=earning.expires_at,
        ended_at=earning.ended_at,
        ending=Ending.LAPSED if earning.ended_at is not None else "",
        end_seen_at=now if earning.ended_at is not None else None,
        silent=silent,
        seen_at=now if silent else None,
    )


def _earned_entries_statement(unlocks: list[Unlock]) -> tuple[str, list[Any]]:
    """The ledger's entries for unlocks inserted earlier in the same pipeline, found
    by what makes a held unlock unique, as their keys are not known yet."""
    return (
        f"""
        INSERT INTO {LedgerEntry._meta.db_table}
            (user_id, badge_id, unlock_id, kind, period, tier, at, version_id, event_ids, reason)
        SELECT u.user_id, u.badge_id, u.id, %b, u.period, u.tier, u.unlocked_at, u.version_id,
            u.event_ids, ''
        FROM {Unlock._meta.db_table} u
        JOIN unnest(%b::bigint[], %b::bigint[], %b::text[], %b::smallint[])
            AS n(user_id, badge_id, period, tier)
            ON (u.user_id, u.badge_id, u.period, u.tier)
                = (n.user_id, n.badge_id, n.period, n.tier)
        WHERE u.ended_at IS NULL
        ORDER BY u.id
        """,
        [
            Entry.EARNED.value,
            [u.user_id for u in unlocks],
            [u.badge_id for u in unlocks],
            [u.period for u in unlocks],
            [u.tier for u in unlocks],
        ],
    )
