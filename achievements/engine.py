"""Evaluating recorded events: claim them, load their pairs, run the core, write it back.

One path for every size: a single event is a batch of one. A batch costs a
fixed number of queries however many events and users it holds:

1. claim the events (skipping rows another transaction holds);
2. find the (user, badge) pairs they can move (`core.RuleSet.touched_pairs`),
   within each user's segments;
3. lock and read those pairs (`store.load_pairs`: one round trip on
   PostgreSQL);
4. fold the events in (`core.evaluate`); a pair a late event could give
   other witnesses is folded again from its whole history;
5. write it all back (`store.Writes`: one round trip on PostgreSQL), and
   after the commit push the changes to the users' pages.

Composites follow, per user, in transactions of their own. If anything
fails, the transaction rolls back whole and the caller finds the failing
events by evaluating halves of the batch (`achievements.dispatch`).
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from typing import Any, NamedTuple

from django.db import connection, transaction
from django.db.models import Min, Q, QuerySet
from django.dispatch import Signal
from django.utils import timezone

from accounts.models import Profile
from achievements import core, delivery, index, metrics, progress, store
from achievements.cards import KnownState
from achievements.db import after_commit, server_cursor
from achievements.models import Badge, Event, RequirementProgress, Unlock
from achievements.versions import ensure_versions, live_version_id

logger = logging.getLogger(__name__)

# Sent inside a batch's transaction, after its writes, when anything receives
# it: `events`, the claimed events (`Claimed`); `decisions`, what each did to
# each requirement it was folded into (`core.Decision`; a pair refolded from
# its history after a late event reports the refold's); `now`, the batch's
# processing time. Receivers that write do so in the same transaction, so
# what they write commits or rolls back with the batch: the analytics feed's
# outbox (feed.outbox).
evaluated = Signal()


@dataclass
class BatchResult:
    """What a batch did: the events it evaluated, and per user what changed."""

    claimed: list[int] = field(default_factory=list)
    changed: dict[int, set[int]] = field(default_factory=lambda: defaultdict(set))
    unlocks: dict[int, list[int]] = field(default_factory=lambda: defaultdict(list))
    unlocked_badges: dict[int, list[int]] = field(default_factory=lambda: defaultdict(list))
    # Badges whose held unlocks got new provenance (a late event's refold).
    revised_badges: dict[int, set[int]] = field(default_factory=lambda: defaultdict(set))
    # Toasts for earnings lost because their rule stopped holding (badges that say so).
    notices: dict[int, list[delivery.Notice]] = field(default_factory=lambda: defaultdict(list))
    # The changed standings and their progress as written, for the cards pushed after commit.
    known: KnownState | None = None


@dataclass
class Evaluation:
    """What evaluating one event changed (evaluate_event)."""

    event_pk: int
    user_id: int | None = None
    changed_badge_ids: list[int] = field(default_factory=list)
    unlocked_badge_ids: list[int] = field(default_factory=list)
    unlock_ids: list[int] = field(default_factory=list)


def evaluate_event(event_pk: int) -> Evaluation | None:
    """Evaluate one recorded event (a batch of one); None if it was already processed."""
    result = evaluate_events([event_pk])
    if not result.claimed:
        logger.debug("Event %s was already processed or dead-lettered; skipping", event_pk)
        return None
    [user_id] = result.changed or [None]
    evaluation = Evaluation(event_pk=event_pk, user_id=user_id)
    if user_id is not None:
        evaluation.changed_badge_ids = sorted(result.changed[user_id])
        evaluation.unlocked_badge_ids = list(result.unlocked_badges.get(user_id, []))
        evaluation.unlock_ids = list(result.unlocks.get(user_id, []))
    return evaluation


@index.pinned()  # the batch, its push and its composites read one version of the rules
def evaluate_events(
    event_pks: Sequence[int] | None = None,
    *,
    limit: int = 2000,
    on_claim: Callable[[list[int]], None] | None = None,
) -> BatchResult:
    """Evaluate, in one transaction, the events not evaluated yet among `event_pks`,
    or else the next `limit` waiting events (oldest first, none with a retry due
    later, none set apart for the one-at-a-time path).

    Events already processed, dead-lettered, without a user, or held by
    another transaction are left alone. `on_claim` hears the claimed keys
    before any evaluation work. Pages are told after the commit, one message
    per user; composites follow, per user, in transactions of their own.
    """
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
            told = bool(events) and evaluated.has_listeners(Event)
            decisions: list[core.Decision] | None = [] if told else None
            result = _evaluate(events, now, decisions)
            if told:
                decisions = _in_their_segments(events, decisions or [])
                evaluated.send(sender=Event, events=events, decisions=decisions, now=now)
            if result.changed:
                changes = {
                    user_id: (sorted(badge_ids), result.unlocks.get(user_id, []))
                    for user_id, badge_ids in result.changed.items()
                }
                # Toasts of losses, where a badge announces them (rare: kept out of the call).
                lost = {"notices": dict(result.notices)} if result.notices else {}
                after_commit(delivery.notify_many, changes, known=result.known, **lost)
            if result.unlocks:  # counted after the push, not before it
                count = sum(len(unlocks) for unlocks in result.unlocks.values())
                after_commit(metrics.incr, "accolade_unlocks_total", count)
        if result.claimed:
            share = (time.perf_counter() - started) / len(result.claimed)
            metrics.observe("accolade_evaluation_seconds", [share] * len(result.claimed))
    for user_id, unlocked in result.unlocked_badges.items():
        logger.info("User %s unlocked badges %s", user_id, unlocked)
    # Composites follow their parts: new unlocks, and provenance a refold revised.
    for user_id in sorted({*result.unlocked_badges, *result.revised_badges}):
        moved = [*result.unlocked_badges.get(user_id, []), *result.revised_badges.get(user_id, ())]
        result.unlocked_badges[user_id] += evaluate_composites(user_id, moved)
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
    user, not set apart for the one-at-a-time path, and no retry due later
    (rows another batch holds included)."""
    return (
        Event.objects.unprocessed()
        .filter(user__isnull=False, isolated_at__isnull=True)
        .filter(Q(retry_at__isnull=True) | Q(retry_at__lte=now))
    )


class Claimed(NamedTuple):
    pk: int
    event_id: str
    event_type: str
    user_id: int
    payload: dict[str, Any]
    occurred_at: datetime
    received_at: datetime | None  # for the unlock latency the push reports
    producer: str
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
    "producer",
)


def _claim(event_pks: list[int], now: datetime) -> list[Claimed]:
    pending = Event.objects.filter(
        pk__in=event_pks,
        processed_at__isnull=True,
        dead_lettered_at__isnull=True,
        user__isnull=False,
    )
    if connection.features.has_select_for_update_skip_locked:
        # Rows another transaction holds are its to evaluate (or to give back).
        events = [
            Claimed(*row)
            for row in pending.select_for_update(skip_locked=True)
            .order_by("pk")
            .values_list(*_EVENT_FIELDS)
        ]
        Event.objects.filter(pk__in=[e.pk for e in events]).update(processed_at=now, retry_at=None)
        return events
    # SQLite writes one transaction at a time: the conditional update is the claim.
    pending.update(processed_at=now, retry_at=None)
    return [
        Claimed(*row)
        for row in Event.objects.filter(pk__in=event_pks, processed_at=now)
        .order_by("pk")
        .values_list(*_EVENT_FIELDS)
    ]


def _claim_next(limit: int, now: datetime) -> list[Claimed]:
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
                      AND user_id IS NOT NULL AND isolated_at IS NULL
                      AND (retry_at IS NULL OR retry_at <= %s)
                    ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED
                )
                RETURNING id, event_id, event_type, user_id, payload, occurred_at, received_at,
                    producer,
                    (SELECT time_zone FROM {Profile._meta.db_table} WHERE user_id = e.user_id)
                """,
                [now, now, limit],
            )
            rows = cursor.fetchall()
        return sorted(
            (
                Claimed(
                    pk,
                    event_id,
                    kind,
                    user_id,
                    _json(payload),
                    at,
                    received,
                    producer,
                    zone or "UTC",
                )
                for pk, event_id, kind, user_id, payload, at, received, producer, zone in rows
            ),
            key=lambda event: event.pk,
        )
    waiting = _claimable(now).order_by("pk").values_list("pk", flat=True)
    return _claim(list(waiting[:limit]), now)


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str | bytes) else value


def _evaluate(
    events: list[Claimed], now: datetime, decisions: list[core.Decision] | None = None
) -> BatchResult:
    result = BatchResult()
    result.claimed = [event.pk for event in events]
    if not events:
        return result
    rules = index.rule_set()
    occurrences = [
        core.Occurrence(e.pk, e.event_id, e.event_type, e.user_id, e.payload, e.occurred_at)
        for e in events
    ]
    pairs = in_segments(rules.touched_pairs(occurrences))
    if not pairs:
        if decisions is not None:  # the events the filters left out, for the feed
            core.evaluate({}, rules, occurrences, now=now, decisions=decisions)
        return result
    zones = store.time_zones(
        {user_id for user_id, _ in pairs},
        {e.user_id: e.time_zone for e in events if e.time_zone is not None},
    )
    touched_badges = {badge_id for _, badge_id in pairs}
    loaded = store.load_pairs(
        pairs,
        rules,
        zones,
        keys=rules.distinct_keys(occurrences, pairs),
        # A repeatable badge's periods are held in its unlocks, as are the spans of
        # one held while its rule holds; a tiered badge's tiers in the standing
        # (their witnesses matter only to a late event, and that one asks for
        # the history).
        unlocks_of={
            b for b in touched_badges if rules.badges[b].repeat or rules.badges[b].holds_while
        },
    )
    unlocked = _held_badges(rules, touched_badges, {user_id for user_id, _ in pairs})
    stored_rows = {key: set(pair.progress) for key, pair in loaded.pairs.items()}
    outcomes = core.evaluate(
        loaded.pairs, rules, occurrences, now=now, unlocked=unlocked, decisions=decisions
    )
    writes = store.Writes(leftovers=False)
    late = sorted(key for key, outcome in outcomes.items() if outcome.needs_history)

    if late:
        refolded: list[core.Decision] | None = None if decisions is None else []
        outcomes.update(_refold(late, rules, zones, now, unlocked, writes, refolded))
        if decisions is not None and refolded is not None:
            # The refold's word on this batch's events replaces the first fold's.
            user_of = {event.pk: event.user_id for event in events}
            again = set(late)
            decisions[:] = [
                *(d for d in decisions if (user_of[d[0]], d[1]) not in again),
                *(d for d in refolded if d[0] in user_of and (user_of[d[0]], d[1]) in again),
            ]
        for key in late:
            stored_rows[key] = set()
            loaded.stored[key] = None  # written whole
    received: dict[int | None, datetime | None] = {e.pk: e.received_at for e in events}
    known_unlocks: dict[int, tuple[int, int, int, str, datetime | None]] = {}
    # An earning under a rule recorded after this batch's index was built: its
    # badge's live version, looked up once a badge.
    version_of = cache(live_version_id)
    changed: set[tuple[int, int]] = set()
    for key, outcome in sorted(outcomes.items()):
        pair = outcome.pair
        user_id, badge_id = key
        rule = rules.badges[badge_id]
        writes.new_keys += [
            (user_id, requirement, value) for requirement, value in outcome.new_keys
        ]
        for spec in rule.requirements:
            if spec.id in outcome.moved or spec.id not in stored_rows[key]:
                writes.progress.append((user_id, spec.id, pair.progress[spec.id]))
        writes.revised += outcome.revised
        if outcome.revised:
            result.revised_badges[user_id].add(badge_id)
        for earning in outcome.earned:
            if earning.version_id is None:
                earning.version_id = version_of(badge_id)
            writes.unlocks.append(store.new_unlock(earning, now=now))
        if outcome.lapsed:
            writes.lapses += store.lapses_of(outcome)
            if (badge := index.badge(badge_id)) is not None and badge.announce_endings:
                result.notices[user_id].append((badge_id, delivery.LOST, outcome.lapsed[0][0].pk))
        if (
            loaded.stored.get(key) is None
            or outcome.visible
            or outcome.earned
            or pair.row() != loaded.stored[key]
        ):
            writes.standings.append((loaded.row_ids[key], pair))
            changed.add(key)
    writes.save()
    if late:  # a refold's witnesses may be events of earlier batches
        older = {u.event_id for u in writes.unlocks if u.event_id is not None} - set(received)
        received.update(Event.objects.filter(pk__in=older).values_list("pk", "received_at"))
    for unlock in writes.unlocks:
        result.unlocks[unlock.user_id].append(unlock.pk)
        if unlock.badge_id not in result.unlocked_badges[unlock.user_id]:
            result.unlocked_badges[unlock.user_id].append(unlock.badge_id)
        known_unlocks[unlock.pk] = (
            unlock.user_id,
            unlock.badge_id,
            unlock.tier,
            unlock.period,
            received.get(unlock.event_id),
        )
    for user_id, badge_id in changed:
        result.changed[user_id].add(badge_id)
    # Every requirement of a changed badge has its row in the pair (read, or
    # made by the core) and stays locked with its standing until the commit.
    states: dict[int, dict[int, dict[str, Any]]] = defaultdict(dict)
    for key in changed:
        states[key[0]].update(outcomes[key].pair.states())
    result.known = KnownState(
        standings={key: outcomes[key].pair for key in changed},
        states=dict(states),
        zones={user_id: zones[user_id] for user_id in states},
        unlocks=known_unlocks,
    )
    return result


def _refold(
    late: list[tuple[int, int]],
    rules: core.RuleSet,
    zones: dict[int, str],
    now: datetime,
    unlocked: dict[int, set[int]],
    writes: store.Writes,
    decisions: list[core.Decision] | None = None,
) -> dict[tuple[int, int], core.Outcome]:
    """Fold pairs again from their whole history (this batch's events included,
    claimed in this transaction): exact witnesses after a late event."""
    loaded = store.load_pairs(late, rules, zones, progress=False)
    types = {t for _, badge_id in late for t in rules.badges[badge_id].watched_types}
    history = store.history(sorted({user_id for user_id, _ in late}), types, name="refold")
    outcomes = core.evaluate(
        loaded.pairs, rules, history, now=now, unlocked=unlocked, fresh=True, decisions=decisions
    )
    for user_id, badge_id in outcomes:
        for spec in rules.badges[badge_id].requirements:
            if progress.keeps_keys(spec):
                writes.replaced_keys.append((user_id, spec.id))
                writes.keyed.add(spec.id)
    logger.info("Refolded %d pair(s) from their history after late events", len(late))
    return outcomes


def _in_their_segments(
    events: list[Claimed], decisions: list[core.Decision]
) -> list[core.Decision]:
    """The decisions, but those of a badge limited to a segment for its members
    only: the core tells of requirements an event's filters leave out whatever
    the pair, and a badge outside the user's segment is not theirs to earn."""
    segmented = {
        badge_id
        for _, badge_id, _, _ in decisions
        if (badge := index.badge(badge_id)) is not None and badge.is_segmented
    }
    if not segmented:
        return decisions
    user_of = {event.pk: event.user_id for event in events}
    members = in_segments({(user_of[pk], b) for pk, b, _, _ in decisions if b in segmented})
    return [d for d in decisions if d[1] not in segmented or (user_of[d[0]], d[1]) in members]


def in_segments(pairs: set[tuple[int, int]]) -> set[tuple[int, int]]:
    """The pairs whose badge's segment includes the user (badges limited to a
    segment are neither shown to nor evaluated for others)."""
    segmented = {
        (user_id, badge_id)
        for user_id, badge_id in pairs
        if (badge := index.badge(badge_id)) is not None and badge.is_segmented
    }
    if not segmented:
        return pairs
    allowed: set[tuple[int, int]] = set()
    for user_id in {user_id for user_id, _ in segmented}:
        allowed |= {
            (user_id, pk)
            for pk in Badge.objects.for_user(user_id)
            .filter(pk__in={badge_id for u, badge_id in segmented if u == user_id})
            .values_list("pk", flat=True)
        }
    return {pair for pair in pairs if pair not in segmented or pair in allowed}


def _held_badges(
    rules: core.RuleSet, badge_ids: set[int], user_ids: set[int]
) -> dict[int, set[int]]:
    """The badges each user holds, when a composite requirement needs them."""
    if not any(rules.badges[badge_id].has_composite for badge_id in badge_ids):
        return {}
    held: dict[int, set[int]] = defaultdict(set)
    for user_id, badge_id in (
        Unlock.objects.held()
        .filter(user_id__in=user_ids)
        .order_by()
        .values_list("user_id", "badge_id")
        .distinct()
    ):
        held[user_id].add(badge_id)
    return held


def evaluate_composites(
    user_id: int, unlocked_badge_ids: list[int], *, silent: bool = False
) -> list[int]:
    """Unlock badges made of other badges, after those unlocks committed.

    Runs in transactions of its own, after the evaluation that unlocked the
    parts, so it never takes badge locks out of order; a composite made of
    composites is followed level by level. Returns the badges it unlocked.
    """
    unlocked_here: list[int] = []
    changed = list(unlocked_badge_ids)
    for _ in range(10):  # cycles are refused when rules are saved; this is a backstop
        if not changed:
            break
        # From the rules index: most unlocked badges are part of no composite,
        # and then this costs no query.
        candidates = index.composites_of(changed)
        if not candidates:
            break
        pairs = sorted(in_segments({(user_id, badge_id) for badge_id in candidates}))
        if not pairs:
            break
        changed = []
        with transaction.atomic():
            now = timezone.now()
            rules = index.rule_set()
            loaded = store.load_pairs(pairs, rules, store.time_zones([user_id]))
            held, parts, starts = _parts(user_id, rules, [b for _, b in pairs])
            outcomes = core.settle(
                loaded.pairs, rules, now=now, unlocked={user_id: held}, parts=parts, starts=starts
            )
            writes = store.Writes(leftovers=False)
            version_of = cache(live_version_id)  # as in _evaluate
            for key, outcome in outcomes.items():
                for spec in rules.badges[key[1]].requirements:
                    writes.progress.append((user_id, spec.id, outcome.pair.progress[spec.id]))
                stored = loaded.stored[key]
                if stored is None or outcome.earned or outcome.pair.row() != stored:
                    writes.standings.append((loaded.row_ids[key], outcome.pair))
                writes.revised += outcome.revised
                for earning in outcome.earned:
                    if earning.version_id is None:
                        earning.version_id = version_of(key[1])
                    writes.unlocks.append(store.new_unlock(earning, now=now, silent=silent))
                if outcome.earned:
                    changed.append(key[1])
            writes.save()
            new_unlocks = [unlock.pk for unlock in writes.unlocks]
            if writes.unlocks:
                after_commit(metrics.incr, "accolade_unlocks_total", len(new_unlocks))
            if not silent:
                after_commit(delivery.notify_many, {user_id: ([b for _, b in pairs], new_unlocks)})
        unlocked_here += changed
    return unlocked_here


def _parts(
    user_id: int, rules: core.RuleSet, composites: list[int]
) -> tuple[set[int], dict[tuple[int, int], core.Held], dict[tuple[int, int], datetime]]:
    """For a user's composites: the badges held, the first earning of each part,
    and when the first event that counted toward each part occurred."""
    names = {
        part for b in composites for spec in rules.badges[b].requirements for part in spec.parts
    }
    held: set[int] = set()
    parts: dict[tuple[int, int], core.Held] = {}
    for badge_id, period, tier, pk, event_pk, event_ids, occurred in (
        Unlock.objects.held()
        .filter(user_id=user_id)
        .order_by("unlocked_at", "pk")
        .values_list(
            "badge_id",
            "period",
            "tier",
            "pk",
            "event_id",
            "event_ids",
            "event__occurred_at",
        )
    ):
        held.add(badge_id)
        if badge_id in names and (user_id, badge_id) not in parts:
            witness = core.order_key(occurred, event_pk) if occurred is not None else None
            parts[(user_id, badge_id)] = core.Held(
                period, tier, event_pk, list(event_ids or []), None, None, witness, pk
            )
    starts = {
        (user_id, badge_id): start
        for badge_id, start in RequirementProgress.objects.filter(
            user_id=user_id, requirement__badge_id__in=names, started_at__isnull=False
        )
        .values("requirement__badge_id")
        .annotate(start=Min("started_at"))
        .values_list("requirement__badge_id", "start")
    }
    return held, parts, starts
