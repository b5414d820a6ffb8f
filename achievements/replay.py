"""Rebuilding progress and unlocks from the event log."""

from __future__ import annotations

import multiprocessing
from collections import defaultdict
from collections.abc import Callable, Generator, Iterable
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from functools import partial
from itertools import groupby
from operator import itemgetter
from typing import Any, cast

from django.db import connection, connections, transaction
from django.utils import timezone

from accounts.models import Profile
from achievements import progress, realtime, rules
from achievements.actions import award, evaluate_composites
from achievements.batch import (
    _insert_distinct,
    _lock_user_badges,
    _Progress,
    _reads,
    _row_of,
    _save_user_badges,
    _Standing,
    _upsert_progress,
)
from achievements.db import STREAM_ROWS, server_cursor
from achievements.models import (
    Badge,
    BadgeRequirement,
    DistinctValue,
    Event,
    RequirementProgress,
    Unlock,
    UserBadge,
)
from achievements.versions import ensure_versions

# Users per transaction. Larger chunks amortise the reads and writes (the
# replay benchmark: 345 events/s one user at a time); the chunk's badge rows
# stay locked while it folds, so live evaluation of its users waits that long.
CHUNK_USERS = 250


class UnknownBadge(ValueError):
    pass


@dataclass
class ReplayReport:
    users: int = 0
    events: int = 0
    newly_unlocked: list[tuple[int, int]] = field(default_factory=list)
    # Each new earning: (user, badge, tier, period); a badge may earn several.
    newly_earned: list[tuple[int, int, int, str]] = field(default_factory=list)
    no_longer_qualifying: list[tuple[int, int]] = field(default_factory=list)

    def add(self, other: ReplayReport) -> None:
        """Count another part of the replay (a chunk's) in this report."""
        self.users += other.users
        self.events += other.events
        self.newly_unlocked += other.newly_unlocked
        self.newly_earned += other.newly_earned
        self.no_longer_qualifying += other.no_longer_qualifying


@dataclass
class ReplayPlan:
    """What a replay covers: the requirements, the event types they watch, the users."""

    requirements: list[BadgeRequirement]
    event_types: list[str]
    user_ids: list[int]

    def events(self) -> int:
        """How many stored events the replay will fold (for progress reports)."""
        if not self.user_ids:
            return 0
        return Event.objects.filter(
            user_id__in=self.user_ids,
            event_type__in=self.event_types,
            processed_at__isnull=False,
        ).count()


def plan_replay(
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    badge_keys: list[str] | None = None,
) -> ReplayPlan:
    """The badges (all active ones, or those named), their event types, and the users
    with a processed event of those types (occurring within [since, until] if given)."""
    badges = Badge.objects.active()
    if badge_keys is not None:
        # Inactive badges are not evaluated live, so they are not replayed either.
        badges = badges.filter(key__in=badge_keys)
        missing = sorted(set(badge_keys) - set(badges.values_list("key", flat=True)))
        if missing:
            raise UnknownBadge(f"no active badge with key {', '.join(map(repr, missing))}")
    requirements = list(
        BadgeRequirement.objects.filter(badge__in=badges)
        .select_related("badge")
        .prefetch_related("composite_badges")
        .order_by("pk")
    )
    event_types = sorted({t for requirement in requirements for t in requirement.watched_types()})
    if not requirements:
        return ReplayPlan(requirements, event_types, [])
    users = Event.objects.filter(
        event_type__in=event_types, processed_at__isnull=False, user__isnull=False
    )
    if since is not None:
        users = users.filter(occurred_at__gte=since)
    if until is not None:
        users = users.filter(occurred_at__lt=until)
    user_ids = sorted(set(users.values_list("user_id", flat=True)))
    return ReplayPlan(requirements, event_types, user_ids)


def replay_events(
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    badge_keys: list[str] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    silent: bool = True,
    plan: ReplayPlan | None = None,
    report: ReplayReport | None = None,
    chunk_users: int = CHUNK_USERS,
    processes: int = 1,
) -> ReplayReport:
    """Recompute progress from processed events, for every user or those active in a range.

    1. Pick the badges (all active ones, or those named) and the event types
       their requirements watch (plan_replay).
    2. Pick the users: everyone with a processed event of those types, or
       only those with one on or after `since` (and before `until`). Each
       chosen user's progress is rebuilt from their whole history, since an
       all-time count cannot be rebuilt from part of it.
    3. A chunk of `chunk_users` users at a time, in one transaction holding
       the same row locks as live evaluation (taken in the same order), read
       with a fixed number of queries; per user, fold their events in
       `occurred_at` order through the pure rules; then replace the chunk's
       stored progress and distinct values with a fixed number of statements.
    4. A badge the rebuilt progress completes, and that is not yet unlocked,
       is unlocked: silently by default (no toast, marked seen); with
       `silent=False` the user's pages are told, as for a live unlock. A badge
       already unlocked stays unlocked even if the rebuilt progress falls
       short; it is reported, never revoked.

    `on_progress(users done, users in all)` runs after each chunk commits;
    raising from it stops the replay there (users done so far stay done). Only
    processed events are replayed: a pending one will be counted by its own
    evaluation, and counting it here as well would count it twice. Live
    evaluation can run alongside: the row locks serialise the two per user.

    `processes` above 1 shares the chunks out to that many forked processes
    (PostgreSQL only, outside any transaction): the fold is Python, so one
    process keeps one core busy. Chunks then finish in any order.
    """
    plan = plan or plan_replay(since=since, until=until, badge_keys=badge_keys)
    report = report if report is not None else ReplayReport()
    if not plan.requirements:
        return report
    if processes < 1:
        raise ValueError("processes must be at least 1")
    if processes > 1 and connection.vendor != "postgresql":
        raise ValueError("replaying in several processes needs PostgreSQL")
    if processes > 1 and connection.in_atomic_block:
        raise ValueError("replaying in several processes cannot run inside a transaction")
    composites = BadgeRequirement.objects.filter(kind="composite", badge__is_active=True).exists()
    ensure_versions(requirement.badge_id for requirement in plan.requirements)
    size = max(1, chunk_users)
    chunks = [plan.user_ids[start : start + size] for start in range(0, len(plan.user_ids), size)]
    # Distinct values of requirements that keep none, left by an earlier form
    # of a rule: looked for once, so chunks delete them only when there are any.
    leftovers = DistinctValue.objects.filter(
        requirement_id__in=[r.id for r in plan.requirements if not progress.keeps_keys(r.spec)]
    ).exists()
    work = _Work(plan, chunks, composites, silent, leftovers)
    done = 0
    parts = work.in_processes(processes) if processes > 1 and len(chunks) > 1 else work.here()
    try:
        for part in parts:
            report.add(part)
            done += part.users
            if on_progress:
                on_progress(done, len(plan.user_ids))
    finally:
        parts.close()  # now, not when a caller lets go of the traceback: ends the processes
    return report


@dataclass
class _Work:
    """A replay's chunks of users, run here or shared out to processes."""

    plan: ReplayPlan
    chunks: list[list[int]]
    composites: bool
    silent: bool
    leftovers: bool

    def here(self) -> Generator[ReplayReport]:
        for index in range(len(self.chunks)):
            yield self.run(index)

    def in_processes(self, processes: int) -> Generator[ReplayReport]:
        """The chunks' results, in the order they finish, from `processes` forked
        processes. Each chunk is a transaction of its own, as here; a process
        that fails fails the replay, and stopping early (on_progress raising)
        ends the processes, rolling back the chunks they were in."""
        global _shared
        # A forked process must not share the parent's database sockets: close
        # them (and the pool's), and each process opens its own.
        for wrapper in connections.all(initialized_only=True):
            wrapper.close()
            if wrapper.alias in getattr(wrapper, "_connection_pools", {}):
                wrapper.close_pool()  # type: ignore[attr-defined]  # PostgreSQL's pool
        _shared = self
        pool = multiprocessing.get_context("fork").Pool(processes)
        try:
            yield from pool.imap_unordered(_run_shared, range(len(self.chunks)))
        finally:
            _shared = None
            pool.terminate()
            pool.join()

    def run(self, index: int) -> ReplayReport:
        chunk, plan, part = self.chunks[index], self.plan, ReplayReport()
        _replay_chunk(
            chunk,
            plan.requirements,
            plan.event_types,
            part,
            silent=self.silent,
            leftovers=self.leftovers,
        )
        if self.composites:
            held_by_user: dict[int, set[int]] = defaultdict(set)
            for user_id, badge_id in Unlock.objects.filter(user_id__in=chunk).values_list(
                "user_id", "badge_id"
            ):
                held_by_user[user_id].add(badge_id)
            for user_id in chunk:
                held = sorted(held_by_user[user_id])
                for badge_id in evaluate_composites(user_id, held, silent=self.silent):
                    part.newly_unlocked.append((user_id, badge_id))
                    part.newly_earned.append((user_id, badge_id, 0, ""))
        part.users = len(chunk)
        return part


_shared: _Work | None = None  # what forked processes run (they inherit it)


def _run_shared(index: int) -> ReplayReport:
    assert _shared is not None
    try:
        return _shared.run(index)
    finally:
        connection.close()  # between tasks: the next chunk may come much later


def _replay_chunk(
    user_ids: list[int],
    requirements: list[BadgeRequirement],
    event_types: list[str],
    report: ReplayReport,
    *,
    silent: bool = True,
    leftovers: bool = True,
) -> None:
    """Rebuild the progress of a chunk of users: chunk-wide reads, a fold per user,
    chunk-wide writes. `leftovers=False` says no requirement that keeps no
    distinct values has any, which spares a delete."""
    now = timezone.now()
    zones = dict(Profile.objects.filter(user_id__in=user_ids).values_list("user_id", "time_zone"))
    plan_badges = {r.badge_id for r in requirements}
    segmented = {r.badge_id for r in requirements if r.badge.is_segmented}
    processed = Event.objects.filter(
        user_id__in=user_ids, event_type__in=event_types, processed_at__isnull=False
    )
    user_types: dict[int, set[str]] = defaultdict(set)
    # order_by(): with Event's default ordering in the query, DISTINCT would be
    # over (user, type, received_at, id), a row per event.
    for user_id, event_type in (
        processed.order_by().values_list("user_id", "event_type").distinct()
    ):
        user_types[user_id].add(event_type)

    # Per user, as in live evaluation: only badges in the user's segment, and of
    # those only badges they have events for, get rows.
    # Users with the same allowed badges and event types share one list.
    watches = [(r, frozenset(r.watched_types())) for r in requirements]
    chosen: dict[int, _UserRules] = {}
    same: dict[tuple[frozenset[int], frozenset[str]], _UserRules] = {}
    for user_id in user_ids:
        allowed = plan_badges - segmented
        if segmented:
            allowed |= set(
                Badge.objects.for_user(user_id)
                .filter(pk__in=segmented)
                .values_list("pk", flat=True)
            )
        key = (frozenset(allowed), frozenset(user_types[user_id]))
        if key not in same:
            types = key[1]
            watched = {r.badge_id for r, its in watches if r.badge_id in allowed and its & types}
            same[key] = _UserRules.arrange([r for r in requirements if r.badge_id in watched])
        chosen[user_id] = same[key]

    held: dict[int, set[tuple[int, str, int]]] = defaultdict(set)
    for user_id, badge_id, period, tier in Unlock.objects.filter(user_id__in=user_ids).values_list(
        "user_id", "badge_id", "period", "tier"
    ):
        held[user_id].add((badge_id, period, tier))

    with transaction.atomic():
        pairs = sorted({(u, b) for u, rules_ in chosen.items() for b in rules_.badge_ids})
        user_badges: dict[tuple[int, int], _Standing] = {}
        if pairs:
            with _reads() as read:
                locked = _lock_user_badges(pairs, read)
            user_badges = locked()
        by_user: dict[int, dict[tuple[int, int], _Standing]] = defaultdict(dict)
        for pair, standing in user_badges.items():
            by_user[pair[0]][pair] = standing
        writes = _ChunkWrites(
            leftovers=leftovers,
            badge_of={r.id: r.badge_id for r in requirements},
            keyed={r.id for r in requirements if progress.keeps_keys(r.spec)},
        )
        # Closed inside the transaction: a named cursor dies with it.
        with closing(_chunk_events(processed)) as events:
            for user_id, rows in groupby(events, key=itemgetter(0)):
                _replay_user(
                    user_id,
                    chosen[user_id],
                    rows,
                    zones.get(user_id) or "UTC",
                    by_user[user_id],
                    held[user_id],
                    now,
                    report,
                    writes,
                    silent=silent,
                )
        writes.save()


def _chunk_events(processed: Any) -> Generator[tuple[Any, ...]]:
    """The chunk's events in replay order: (user, pk, producer id, type, payload, time)."""
    fields = ("user_id", "pk", "event_id", "event_type", "payload", "occurred_at")
    events = processed.order_by("user_id", "occurred_at", "pk").values_list(*fields)
    if connection.vendor != "postgresql":
        yield from events.iterator(chunk_size=STREAM_ROWS)
        return
    # Streamed in the binary format: the queryset's rows cost Django a time
    # zone conversion and a JSON decode each, in Python, which was a sixth of
    # the replay's time.
    sql, params = events.query.sql_with_params()
    with server_cursor(binary=True, name="replay_events") as cursor:
        cursor.execute(sql, params)
        yield from cursor


@dataclass
class _ChunkWrites:
    """What a chunk's users' folds write, saved together once they are all done.

    Rows the fold rebuilt exactly as stored are not written again: a replay
    over unchanged rules mostly finds its rows as they are, and rewriting
    them cost more than the fold (new row versions, index entries, WAL).
    """

    # (user, requirement) pairs the chunk's folds rebuilt, and the chunk's
    # requirements that keep distinct values (all-time distinct counts).
    replayed: list[tuple[int, int]] = field(default_factory=list)
    keyed: set[int] = field(default_factory=set)
    leftovers: bool = True  # whether other requirements may have distinct values to drop
    stale: list[tuple[int, int]] = field(default_factory=list)  # progress rows to drop
    distinct: list[tuple[int, int, str]] = field(default_factory=list)
    progress: list[_Progress] = field(default_factory=list)
    badge_of: dict[int, int] = field(default_factory=dict)  # requirement → badge
    untouched: list[int] = field(default_factory=list)  # UserBadge ids
    # Standings to write if they moved: the row, as stored (None: just created),
    # and whether the replay unlocked something on it.
    standings: list[tuple[_Standing, tuple[Any, ...] | None, bool]] = field(default_factory=list)

    def save(self) -> None:
        _replace_distinct(self.replayed, self.distinct, self.keyed, self.leftovers)
        _delete_pairs(RequirementProgress, self.stale)
        moved = {
            (user_id, self.badge_of[requirement_id])
            for user_id, requirement_id in _upsert_progress(self.progress)
        }
        UserBadge.objects.filter(pk__in=self.untouched).delete()
        # As live evaluation does: a standing whose row, progress or unlocks
        # moved is written (and stamped, so a page's catch-up sends its card).
        _save_user_badges(
            [
                standing
                for standing, stored, unlocked in self.standings
                if unlocked
                or _row_of(standing) != stored
                or (standing.user_id, standing.badge_id) in moved
            ]
        )


def _replace_distinct(
    pairs: list[tuple[int, int]],
    keys: list[tuple[int, int, str]],
    keyed: set[int],
    leftovers: bool = True,
) -> None:
    """Make the distinct values of these (user, requirement) pairs exactly `keys`:
    those of requirements in `keyed` reconciled, any others' (left by an earlier
    form of the rule) deleted."""
    if connection.vendor != "postgresql":
        _delete_pairs(DistinctValue, pairs)
        _insert_distinct(keys)
        return
    if leftovers:
        _delete_pairs(DistinctValue, [pair for pair in pairs if pair[1] not in keyed])
    pairs = [pair for pair in pairs if pair[1] in keyed]
    table = DistinctValue._meta.db_table
    with server_cursor() as cursor:
        if pairs:
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
    _insert_distinct(keys, skip_existing=True)


def _delete_pairs(model: Any, pairs: list[tuple[int, int]]) -> None:
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


@dataclass
class _UserRules:
    """A user's requirements arranged for the fold; users with the same
    requirements (most of them) share one."""

    by_type: dict[str, list[BadgeRequirement]]
    by_badge: dict[int, list[BadgeRequirement]]
    badges: dict[int, Badge]
    badge_ids: list[int]
    # Badges with no tiers, no repeat and no composite part: their earning is
    # exactly "every requirement's latched met flag is set", so the fold can
    # skip measuring them until then (most events, for most badges).
    plain: set[int]
    # Tiered badges (one requirement, as rule checks demand): it and the tiers.
    graded: dict[int, tuple[BadgeRequirement, tuple[tuple[str, Decimal], ...]]]
    # How many earnings a badge that is not repeatable has: 1, or its tiers.
    earnings_in_all: dict[int, int]
    requirements: list[BadgeRequirement]

    @classmethod
    def arrange(cls, requirements: list[BadgeRequirement]) -> _UserRules:
        by_type: dict[str, list[BadgeRequirement]] = defaultdict(list)
        by_badge: dict[int, list[BadgeRequirement]] = defaultdict(list)
        for requirement in requirements:
            for event_type in requirement.watched_types():
                by_type[event_type].append(requirement)
            by_badge[requirement.badge_id].append(requirement)
        badges = {r.badge_id: r.badge for r in requirements}
        tiers = {badge_id: badge.tier_list() for badge_id, badge in badges.items()}
        return cls(
            by_type=by_type,
            by_badge=by_badge,
            badges=badges,
            badge_ids=sorted(by_badge),
            plain={
                badge_id
                for badge_id, badge in badges.items()
                if not tiers[badge_id]
                and not badge.repeat
                and all(r.kind != rules.Kind.COMPOSITE for r in by_badge[badge_id])
            },
            graded={
                badge_id: (by_badge[badge_id][0], tiers[badge_id])
                for badge_id in badges
                if tiers[badge_id] and len(by_badge[badge_id]) == 1
            },
            earnings_in_all={
                badge_id: max(1, len(tiers[badge_id]))
                for badge_id, badge in badges.items()
                if not badge.repeat
            },
            requirements=requirements,
        )


def _replay_user(
    user_id: int,
    rules_: _UserRules,
    rows: Iterable[tuple[Any, ...]],
    time_zone: str,
    locked: dict[tuple[int, int], _Standing],
    held_unlocks: set[tuple[int, str, int]],
    now: datetime,
    report: ReplayReport,
    writes: _ChunkWrites,
    *,
    silent: bool = True,
) -> None:
    requirements = rules_.requirements
    by_type, by_badge, badges, badge_ids = (
        rules_.by_type,
        rules_.by_badge,
        rules_.badges,
        rules_.badge_ids,
    )
    user_badges = {badge_id: locked[(user_id, badge_id)] for badge_id in badge_ids}
    states: dict[int, dict] = {requirement.id: {} for requirement in requirements}
    seen: dict[int, set[str]] = defaultdict(set)
    # The first event that justified each earning, by (badge, period, tier).
    earned_by: dict[tuple[int, str, int], int] = {}
    touched_badges: set[int] = set()
    finished: set[int] = set()

    unlocked = {badge_id for badge_id, _, _ in held_unlocks}

    def earnings(badge_id: int, moment: datetime) -> list[tuple[str, int]]:
        badge, badge_requirements = badges[badge_id], by_badge[badge_id]
        standing = badge.standing(badge_requirements, states, now, time_zone, unlocked)
        return badge.earnings(badge_requirements, states, standing, moment, time_zone)

    producer_ids: dict[int, str] = {}
    met_by: dict[int, str] = {}
    started: dict[int, datetime] = {}  # requirement → first qualifying event's time
    earned_when: dict[tuple[int, str, int], datetime] = {}
    for _, event_pk, producer_id, event_type, payload, occurred_at in rows:
        report.events += 1
        fact = progress.Fact(event_type, payload, occurred_at)
        touched = set()
        for requirement in by_type[event_type]:
            spec = requirement.spec
            if not progress.relevant(spec, fact):
                continue
            pk = requirement.id  # .pk is a property lookup, in the hottest loop
            state = states[pk] = progress.fold_in_memory(
                spec, states[pk], fact, time_zone, seen[pk]
            )
            if pk not in met_by and state.get("met"):
                met_by[pk] = producer_id
            if pk not in started:
                started[pk] = occurred_at  # events come in time order
            touched.add(requirement.badge_id)
        touched_badges |= touched
        for badge_id in touched - finished:
            if badge_id in rules_.plain:
                if not all(states[r.id].get("met") for r in by_badge[badge_id]):
                    continue  # a plain badge is earned only once all its requirements are met
                earned = [("", 0)]
            elif badge_id in rules_.graded:
                # A tiered badge earns every tier its requirement's peak reaches
                # (Badge.standing's level), without measuring the rest.
                requirement, tiers = rules_.graded[badge_id]
                level = progress.tier_level(requirement.spec, states[requirement.id], tiers)
                earned = [("", n) for n in range(1, level + 1)]
            else:
                earned = earnings(badge_id, occurred_at)
            for period, tier in earned:
                if (badge_id, period, tier) not in earned_by:
                    earned_by[(badge_id, period, tier)] = event_pk
                    earned_when[(badge_id, period, tier)] = occurred_at
                    producer_ids[event_pk] = producer_id
            if len(earned) == rules_.earnings_in_all.get(badge_id):
                finished.add(badge_id)  # every earning it has is in; skip the rest

    writes.replayed += [(user_id, requirement.id) for requirement in requirements]
    writes.stale += [
        (user_id, requirement.id)
        for requirement in requirements
        if requirement.badge_id not in touched_badges
    ]
    writes.distinct += [
        (user_id, requirement_id, key)
        for requirement_id, keys in seen.items()
        for key in sorted(keys)
    ]
    # Live evaluation writes rows only for badges an event actually moved
    # (an event without a distinct rule's field moves nothing); so does this,
    # and a badge with neither events nor a completion loses its row.
    untouched = {
        badge_id
        for badge_id in badge_ids
        if badge_id not in touched_badges and user_badges[badge_id].completed_at is None
    }
    kept = [badge_id for badge_id in badge_ids if badge_id not in untouched]
    standings = {
        badge_id: badges[badge_id].standing(by_badge[badge_id], states, now, time_zone, unlocked)
        for badge_id in kept
    }
    # As stored, before the awards below; None for a row the lock just
    # created, which is always written.
    stored = {
        badge_id: _row_of(user_badges[badge_id])
        if user_badges[badge_id].last_evaluated_at is not None
        else None
        for badge_id in kept
    }
    for badge_id in badge_ids:
        if badge_id not in touched_badges:
            continue
        standing = standings[badge_id]
        # A measure's value does not depend on its threshold, so the standing's
        # measures (one per requirement, in order; a tiered badge's against its
        # next tier) give each requirement's value.
        for requirement, measured in zip(by_badge[badge_id], standing.measures, strict=True):
            writes.progress.append(
                _Progress(
                    user_id=user_id,
                    requirement_id=requirement.id,
                    state=states[requirement.id],
                    met_by=met_by.get(requirement.id, ""),
                    started_at=started.get(requirement.id),
                    value=measured.value,
                    updated_at=now,
                )
            )
    writes.untouched += [user_badges[badge_id].pk for badge_id in untouched]

    announced: list[int] = []
    unlocked_now: set[int] = set()
    held = {unlock for unlock in held_unlocks if unlock[0] in user_badges}
    for badge_id in kept:
        badge, user_badge = badges[badge_id], user_badges[badge_id]
        standing = standings[badge_id]
        user_badge.last_evaluated_at = now
        user_badge.current_value = standing.status.current
        user_badge.target_value = standing.status.target
        due = sorted((key for key in earned_by if key[0] == badge_id), key=lambda key: key[1:])
        starts = [started[r.id] for r in by_badge[badge_id] if r.id in started]
        for _, period, tier in due:
            created = award(
                cast(UserBadge, user_badge),  # the row's fields, as award reads them
                badge,
                [(period, tier)],
                event_id=earned_by[(badge_id, period, tier)],
                event_ids=[
                    *(met_by[r.id] for r in by_badge[badge_id] if r.id in met_by),
                    producer_ids[earned_by[(badge_id, period, tier)]],
                ],
                now=now,
                silent=silent,
                took=earned_when[(badge_id, period, tier)] - min(starts) if starts else None,
            )
            if created:
                unlocked_now.add(badge_id)
                report.newly_unlocked.append((user_id, badge_id))
                announced += [unlock.pk for unlock in created]
                report.newly_earned += [
                    (user_id, badge_id, unlock.tier, unlock.period) for unlock in created
                ]
        # Earnings the rebuilt progress no longer justifies are reported, never revoked.
        # An unlock from before the badge had tiers or repeated stands
        # while the badge is earned in any way.
        if any(
            (badge_id, period, tier) not in earned_by and ((period, tier) != ("", 0) or not due)
            for held_badge, period, tier in held
            if held_badge == badge_id
        ):
            report.no_longer_qualifying.append((user_id, badge_id))
    writes.standings += [
        (user_badges[badge_id], stored[badge_id], badge_id in unlocked_now) for badge_id in kept
    ]
    if announced and not silent:
        transaction.on_commit(
            partial(
                realtime.notify_badge_changes,
                user_id=user_id,
                badge_ids=badge_ids,
                unlock_ids=announced,
            ),
            robust=True,
        )
