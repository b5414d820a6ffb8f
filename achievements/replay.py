"""Rebuilding progress and unlocks from the event log: the core over whole histories."""

from __future__ import annotations

import multiprocessing
from collections import defaultdict
from collections.abc import Callable, Generator, Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property

from django.db import connection, connections, transaction
from django.utils import timezone

from achievements import core, delivery, index, progress, store
from achievements.db import after_commit
from achievements.engine import evaluate_composites, in_segments
from achievements.models import Badge, BadgeRequirement, DistinctValue, Event, Unlock
from achievements.versions import ensure_versions, live_version_id

# Users per transaction: larger chunks amortise the reads and writes
# (docs/performance.md, "Replay"); the chunk's badge rows stay locked while it
# folds, so live evaluation of its users waits that long.
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
    # Badges held only while their rule holds that the history no longer justifies:
    # taken back, (user, badge, tier).
    lost: list[tuple[int, int, int]] = field(default_factory=list)

    def add(self, other: ReplayReport) -> None:
        """Count another part of the replay (a chunk's) in this report."""
        self.users += other.users
        self.events += other.events
        self.newly_unlocked += other.newly_unlocked
        self.newly_earned += other.newly_earned
        self.no_longer_qualifying += other.no_longer_qualifying
        self.lost += other.lost


@dataclass
class ReplayPlan:
    """What a replay covers: the requirements, the event types they watch, the users."""

    requirements: list[BadgeRequirement]
    event_types: list[str]
    user_ids: list[int]

    @cached_property
    def rules(self) -> core.RuleSet:
        """The plan's badges as the core reads them, with the version each unlock records."""
        by_badge: dict[int, list[BadgeRequirement]] = defaultdict(list)
        for requirement in self.requirements:
            by_badge[requirement.badge_id].append(requirement)
        return core.RuleSet(
            {
                badge_id: requirements[0].badge.rule(
                    requirements, version_id=live_version_id(badge_id)
                )
                for badge_id, requirements in by_badge.items()
            }
        )

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


def refold(user_id: int, badge: Badge, *, silent: bool) -> ReplayReport:
    """Rebuild one user's progress on one badge from their history, as a replay does,
    inside the caller's transaction (an expiry holds the standing's lock)."""
    requirements = list(
        BadgeRequirement.objects.filter(badge=badge)
        .select_related("badge")
        .prefetch_related("composite_badges")
        .order_by("pk")
    )
    plan = ReplayPlan(
        requirements,
        sorted({t for requirement in requirements for t in requirement.watched_types()}),
        [user_id],
    )
    report = ReplayReport()
    if plan.event_types:  # a composite watches none: no history to fold
        _replay_chunk([user_id], plan, report, silent=silent)
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
        for number in range(len(self.chunks)):
            yield self.run(number)

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

    def run(self, number: int) -> ReplayReport:
        chunk, plan, part = self.chunks[number], self.plan, ReplayReport()
        _replay_chunk(chunk, plan, part, silent=self.silent, leftovers=self.leftovers)
        if self.composites:
            held_by_user: dict[int, set[int]] = defaultdict(set)
            for user_id, badge_id in (
                Unlock.objects.held().filter(user_id__in=chunk).values_list("user_id", "badge_id")
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


def _run_shared(number: int) -> ReplayReport:
    assert _shared is not None
    try:
        return _shared.run(number)
    finally:
        connection.close()  # between tasks: the next chunk may come much later


def _replay_chunk(
    user_ids: list[int],
    plan: ReplayPlan,
    report: ReplayReport,
    *,
    silent: bool = True,
    leftovers: bool = True,
) -> None:
    """Rebuild the progress of a chunk of users: chunk-wide reads, the core's fold,
    chunk-wide writes. `leftovers=False` says no requirement that keeps no
    distinct values has any, which spares a delete.

    As in live evaluation, only badges in each user's segment, and of those
    only badges the user has events for, get rows; a badge with neither
    events nor a completion loses its row. Rows the fold rebuilt exactly as
    stored are not written again: a replay over unchanged rules mostly finds
    its rows as they are, and rewriting them cost more than the fold.
    """
    now = timezone.now()
    rules = plan.rules
    zones = store.time_zones(user_ids)
    processed = Event.objects.filter(
        user_id__in=user_ids, event_type__in=plan.event_types, processed_at__isnull=False
    )
    user_types: dict[int, set[str]] = defaultdict(set)
    # order_by(): with Event's default ordering in the query, DISTINCT would be
    # over (user, type, received_at, id), a row per event.
    for user_id, event_type in (
        processed.order_by().values_list("user_id", "event_type").distinct()
    ):
        user_types[user_id].add(event_type)
    pairs = in_segments(
        {
            (user_id, badge_id)
            for user_id in user_ids
            for badge_id, rule in rules.badges.items()
            if rule.watched_types & user_types[user_id]
        }
    )
    unlocked: dict[int, set[int]] = defaultdict(set)
    if any(rule.has_composite for rule in rules.badges.values()):
        for user_id, badge_id in (
            Unlock.objects.held().filter(user_id__in=user_ids).values_list("user_id", "badge_id")
        ):
            unlocked[user_id].add(badge_id)
    with transaction.atomic():
        loaded = store.load_pairs(pairs, rules, zones, progress=False)
        # Closed inside the transaction: a named cursor dies with it.
        with closing(store.history(user_ids, plan.event_types, name="replay_events")) as events:
            outcomes = core.evaluate(
                loaded.pairs,
                rules,
                _counted(events, report),
                now=now,
                unlocked=unlocked,
                fresh=True,
            )
        _write_replay(outcomes, loaded, rules, report, now=now, silent=silent, leftovers=leftovers)


def _counted(events: Iterable[core.Occurrence], report: ReplayReport) -> Iterator[core.Occurrence]:
    for event in events:
        report.events += 1
        yield event


def _write_replay(
    outcomes: dict[tuple[int, int], core.Outcome],
    loaded: store.Loaded,
    rules: core.RuleSet,
    report: ReplayReport,
    *,
    now: datetime,
    silent: bool,
    leftovers: bool,
) -> None:
    writes = store.Writes(
        leftovers=leftovers,
        keyed={
            spec.id
            for rule in rules.badges.values()
            for spec in rule.requirements
            if progress.keeps_keys(spec)
        },
    )
    announced: dict[int, list[int]] = defaultdict(list)
    badges_of: dict[int, list[int]] = defaultdict(list)
    notices: dict[int, list[delivery.Notice]] = defaultdict(list)
    for key, outcome in sorted(outcomes.items()):
        user_id, badge_id = key
        pair, rule = outcome.pair, rules.badges[badge_id]
        badges_of[user_id].append(badge_id)
        requirement_ids = [spec.id for spec in rule.requirements]
        writes.replaced_keys += [(user_id, r) for r in requirement_ids]
        writes.new_keys += [(user_id, r, k) for r, k in sorted(outcome.new_keys)]
        if outcome.lapsed:
            writes.lapses += store.lapses_of(outcome)
            report.lost += [(user_id, badge_id, held.tier) for held, _ in outcome.lapsed]
            badge = index.badge(badge_id)
            if not silent and badge is not None and badge.announce_endings:
                notices[user_id].append((badge_id, delivery.LOST, outcome.lapsed[0][0].pk))
        if not outcome.touched:
            writes.stale_progress += [(user_id, r) for r in requirement_ids]
            # A standing with nothing in it goes; one that remembers a staff
            # revocation, an expiry or a loss stays, so the rule does not award
            # that badge again (or not from the events before the expiry), and
            # an event older than the loss is still known to be late.
            if (
                pair.completed_at is None
                and not pair.withheld
                and pair.since is None
                and pair.lapsed_at is None
            ):
                writes.dropped_standings.append(loaded.row_ids[key])
                continue
        else:
            writes.progress += [(user_id, r, pair.progress[r]) for r in requirement_ids]
        writes.revised += outcome.revised
        for earning in outcome.earned:
            writes.unlocks.append(store.new_unlock(earning, now=now, silent=silent))
            report.newly_earned.append((user_id, badge_id, earning.tier, earning.period))
        if outcome.earned:
            report.newly_unlocked.append((user_id, badge_id))
        if outcome.no_longer:
            report.no_longer_qualifying.append((user_id, badge_id))
        # As live evaluation does: a standing whose row, progress or unlocks
        # moved is written (and stamped, so a page's catch-up sends its card).
        must = (
            loaded.stored[key] is None or bool(outcome.earned) or pair.row() != loaded.stored[key]
        )
        writes.standings_if_moved.append((loaded.row_ids[key], pair, must))
    writes.save()
    for unlock in writes.unlocks:
        announced[unlock.user_id].append(unlock.pk)
    if (announced or notices) and not silent:
        after_commit(
            delivery.notify_many,
            {
                user_id: (badges_of[user_id], announced.get(user_id, []))
                for user_id in {*announced, *notices}
            },
            notices=dict(notices) or None,
        )
