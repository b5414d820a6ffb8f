"""The evaluation core: what a set of events does to a set of (user, badge) pairs. Pure.

Every path that evaluates rules calls `evaluate`: live evaluation (one
event is a batch of one), replay, re-evaluation and the preview of a rule
change. They differ only in what they load and what they write; the
meaning of the rules is here, in `achievements.badgerules` (a badge's rule
and its measures) and in `achievements.progress` (one requirement's state),
nowhere else. No ORM, no I/O, no clock: the caller
passes `now`.

Order. Events are folded in occurrence order, `(occurred_at, pk)` (events
of one moment in the order they were recorded), whatever order they arrived
in and however they were cut into batches.
Each requirement's state is order-independent by construction (buckets,
runs, step times), and every comparison the rules accept is monotone (more
events can only meet more), so a requirement is met exactly when the events
known meet it. What does depend on the order is *which* event met it: the
witness. A requirement's witness (`met_by`) is the first event, in
occurrence order, at which the events up to and including it meet the
requirement; an earning's witness (the unlock's `event`) is the first event
at which the badge's earning holds; an unlock's provenance lists the
witnesses of its requirements, in occurrence order, its own last.

Folding new events onto a stored state gives those witnesses exactly when
the new events come after everything that changed it before (the state's
`lt` mark; an event that changes nothing leaves the mark alone, so which
event the mark names depends on arrival, though what it bounds does not). When one comes
earlier (a late event) and could move a witness (it precedes one, or it
meets something while a later event is already folded, or a sum has
negative terms), the pair is reported in `needs_history`: the caller folds
the pair's whole history again with `fresh=True`, which is exact.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from achievements import periods, progress
from achievements.badgerules import (
    BadgeRule,
    Occurrence,
    OrderKey,
    RuleSet,
    Standing,
    changes_after,
    earnings,
    measure,
    moment_of,
    order_key,
    standing,
    watched_types,
)
from achievements.progress import Fact, Spec, State
from achievements.rules import Aggregation, Kind, storable

# The rule's data and its measures are achievements.badgerules'; they are part
# of the core's interface, so callers import them from here.
__all__ = [
    "BadgeRule",
    "Earning",
    "Held",
    "Occurrence",
    "OrderKey",
    "Outcome",
    "Pair",
    "Progress",
    "RuleSet",
    "Standing",
    "earnings",
    "evaluate",
    "measure",
    "moment_of",
    "order_key",
    "settle",
    "standing",
    "watched_types",
]


# Keys the core keeps in a requirement's state beside progress's own.
LATEST = "lt"  # the latest event that changed the state, as an order key
WITNESS = "w"  # the event that met it, as an order key
NEGATIVE = "neg"  # a sum has had a negative term: its met flag is not monotone

# What an event did to a requirement (`evaluate`'s `decisions`): it moved its
# progress; it changed nothing (a value, day or step already counted, or below
# the best); the requirement's filters or scope leave it out; it came before
# the badge's last earning expired (it counted towards that one).
COUNTED = "counted"
NO_CHANGE = "no_change"
FILTERED_OUT = "filtered_out"
BEFORE_RENEWAL = "before_renewal"

# (event pk, badge id, requirement id, decision)
Decision = tuple[int, int, int, str]


# --- the loaded state of a pair, and what evaluating changes -------------------


@dataclass(slots=True)
class Progress:
    """One requirement's stored progress for one user."""

    state: State = field(default_factory=dict)
    met_by: str = ""
    started_at: datetime | None = None
    value: Decimal = Decimal(0)


@dataclass(slots=True)
class Held:
    """An earning the user holds (an Unlock row)."""

    period: str
    tier: int
    event_pk: int | None = None
    event_ids: list[str] = field(default_factory=list)
    took: timedelta | None = None
    version_id: int | None = None
    witness: OrderKey | None = None  # its event's order key, when it has one
    pk: int | None = None
    granted: bool = False  # by staff: no rule needs to justify it
    earning: Earning | None = None  # made by this evaluation (not stored yet)


@dataclass(slots=True)
class Pair:
    """What is stored for one (user, badge) pair, as the evaluation reads and changes it."""

    user_id: int
    badge_id: int
    time_zone: str = "UTC"
    progress: dict[int, Progress] = field(default_factory=dict)
    current_value: Decimal = Decimal(0)
    target_value: Decimal = Decimal(0)
    completed_at: datetime | None = None
    completed_by_event_id: int | None = None
    tier: int = 0
    held: dict[tuple[str, int], Held] = field(default_factory=dict)
    # When a once-only unlock from before the badge was repeatable happened.
    legacy_moment: datetime | None = None
    # All-time distinct values already stored, of those the events mention.
    known_keys: dict[int, set[str]] = field(default_factory=dict)
    # Whether `held` holds every unlock of the pair (the store may leave a
    # tiered badge's out: its tiers are in `tier`, their witnesses only matter
    # to a late event, which then asks for the history).
    held_known: bool = True
    # Periods ("" for a once-only badge: all of it) whose earning staff revoked:
    # the rule does not award them again (a grant lifts it).
    withheld: frozenset[str] = frozenset()
    # Whether the first earning held was granted by staff (the card says so).
    granted: bool = False
    # When the earning held expires (badges valid for some days).
    expires_at: datetime | None = None
    # After an expiry: events that occurred before this do not count.
    since: datetime | None = None
    # A badge held only while its rule holds: when it last stopped holding (an
    # event older than that needs the history).
    lapsed_at: datetime | None = None

    def states(self) -> dict[int, State]:
        return {pk: row.state for pk, row in self.progress.items()}

    def row(self) -> tuple[Any, ...]:
        return (
            self.current_value,
            self.target_value,
            self.completed_at,
            self.completed_by_event_id,
            self.tier,
            self.expires_at,
            self.lapsed_at,
        )


@dataclass(slots=True)
class Earning:
    """A new unlock: which earning, its witness event and its provenance."""

    user_id: int
    badge_id: int
    period: str
    tier: int
    event_pk: int | None
    event_ids: list[str]
    took: timedelta | None
    version_id: int | None
    witness: OrderKey | None
    expires_at: datetime | None = None
    # Lost again within the same evaluation (its rule stopped holding): recorded ended.
    ended_at: datetime | None = None


@dataclass
class Outcome:
    """What evaluating changed for one pair; `pair` itself holds the new state."""

    pair: Pair
    touched: bool = False  # some event moved a requirement
    moved: set[int] = field(default_factory=set)  # requirements whose row changed
    visible: bool = False  # the card changed: push it
    earned: list[Earning] = field(default_factory=list)
    revised: list[Held] = field(default_factory=list)  # held unlocks with new provenance
    no_longer: list[tuple[str, int]] = field(default_factory=list)  # held, no longer justified
    # Held unlocks whose rule stopped holding (badges held only while it holds), and when.
    lapsed: list[tuple[Held, datetime]] = field(default_factory=list)
    new_keys: list[tuple[int, str]] = field(default_factory=list)  # (requirement, distinct key)
    needs_history: bool = False
    # Earnings the events justify (new or held), for a whole-history fold's reconciliation.
    justified: set[tuple[str, int]] = field(default_factory=set)


def evaluate(
    pairs: Mapping[tuple[int, int], Pair],
    rules: RuleSet,
    events: Iterable[Occurrence],
    *,
    now: datetime,
    unlocked: Mapping[int, set[int]] | None = None,
    fresh: bool = False,
    decisions: list[Decision] | None = None,
) -> dict[tuple[int, int], Outcome]:
    """Fold `events` (any order) into `pairs` under `rules`; an Outcome per pair.

    1. Sort the events by user and occurrence order, and fold each into the
       requirements of the user's pairs that it can move, asking
       `known_keys` whether an all-time distinct value is new.
    2. After each event, work out the earnings of each badge it moved
       (skipped for a badge with every earning it can have), and keep the
       new ones with that event as their witness.
    3. At the end, measure each pair once (the standing at `now`).

    `fresh=True` says the pairs' progress is empty and `events` are their
    whole history (replay, preview, the refold of `needs_history`): held
    unlocks are then checked against what the history justifies, and their
    provenance revised where it differs under the same rule version.
    Otherwise the events extend the stored state; a pair whose witnesses a
    late event could move is reported with `needs_history` and left as it was.
    `unlocked` is the badges each user holds, for composites. A `decisions`
    list hears what each event did to each requirement of the pairs it was
    folded into, and that the filters left an event out of a pair not loaded.
    A pair that stops to ask for its history gets no more decisions; those
    made before it stopped stay, for the caller's refold to replace.
    """
    unlocked = unlocked or {}
    outcomes = {key: Outcome(pair) for key, pair in pairs.items()}
    ordered = sorted(events, key=lambda e: (e.user_id, e.occurred_at, e.pk))
    stopped: set[tuple[int, int]] = set()  # pairs that need their history
    # Pairs with every earning their badge can have: no need to work earnings out.
    finished = (
        set()
        if fresh
        else {key for key, o in outcomes.items() if _all_earned(rules.badges.get(key[1]), o.pair)}
    )
    # Badges held only while their rule holds: each event is folded at its moment,
    # after what time alone ended before it; a whole-history fold starts empty
    # and settles with what is stored at the end (_settle_holding).
    holding = {
        key: _Stored(dict(o.pair.held), o.pair.completed_at, o.pair.completed_by_event_id)
        for key, o in outcomes.items()
        if rules.badges[key[1]].holds_while
    }
    if fresh:
        for key in holding:
            _start_holding(outcomes[key].pair)
    for event in ordered:
        candidates = rules.watching(event.event_type)
        if not candidates:
            continue
        fact = Fact(event.event_type, event.payload, event.occurred_at)
        event_key = event.key
        moved: list[int] = []
        for badge_id, spec in candidates:
            pair_key = (event.user_id, badge_id)
            outcome = outcomes.get(pair_key)
            if pair_key in stopped or (outcome is None and decisions is None):
                continue
            # Told even for a pair not loaded (no event of the batch could move it).
            if not progress.relevant(spec, fact):
                if decisions is not None:
                    decisions.append((event.pk, badge_id, spec.id, FILTERED_OUT))
                continue
            if outcome is None:
                continue
            if outcome.pair.since is not None and event.occurred_at < outcome.pair.since:
                # Before the last earning expired: it counted towards that one.
                if decisions is not None:
                    decisions.append((event.pk, badge_id, spec.id, BEFORE_RENEWAL))
                continue
            if pair_key in holding and (not moved or moved[-1] != badge_id):
                # Once per event and badge, before the event counts.
                if not fresh and _late_for_holding(outcome.pair, rules.badges[badge_id], event):
                    stopped.add(pair_key)
                    outcome.needs_history = True
                    continue
                _lapse_until(outcome, rules.badges[badge_id], event.occurred_at)
            decision = _fold(outcome, spec, fact, event, event_key, fresh)
            if decision is None:
                stopped.add(pair_key)  # a late event that could move a witness
                outcome.needs_history = True
                continue
            if decisions is not None:
                decisions.append((event.pk, badge_id, spec.id, decision))
            if not moved or moved[-1] != badge_id:
                moved.append(badge_id)
        for badge_id in moved:
            pair_key = (event.user_id, badge_id)
            if pair_key in stopped:
                continue
            outcome = outcomes[pair_key]
            if pair_key in finished:
                continue
            rule = rules.badges[badge_id]
            if pair_key in holding:
                _hold(outcome, rule, event, event_key, unlocked, now)
                continue
            if not _earn(outcome, rule, event, event_key, unlocked, now, fresh):
                stopped.add(pair_key)
                outcome.needs_history = True
            elif rule.earnings_in_all is not None and (
                len(outcome.justified) >= rule.earnings_in_all
                if fresh
                else _all_earned(rule, outcome.pair)
            ):
                finished.add(pair_key)
    for pair_key, outcome in outcomes.items():
        if outcome.needs_history:
            continue
        if pair_key in holding:
            rule = rules.badges[pair_key[1]]
            _lapse_until(outcome, rule, now)
            if fresh:
                _settle_holding(outcome, rule, holding[pair_key], now)
            _foresee(outcome, rule)
        elif fresh:
            _reconcile(outcome)
        _measure(outcome, rules.badges[pair_key[1]], unlocked.get(pair_key[0], set()), now)
    return outcomes


def settle(
    pairs: Mapping[tuple[int, int], Pair],
    rules: RuleSet,
    *,
    now: datetime,
    unlocked: Mapping[int, set[int]],
    parts: Mapping[tuple[int, int], Held],
    starts: Mapping[tuple[int, int], datetime],
) -> dict[tuple[int, int], Outcome]:
    """Evaluate pairs that no event moves: composites, once their parts are unlocked.

    `parts` holds each user's first earning of the badges they hold, and
    `starts` when the first event that counted toward each (user, badge)
    occurred. A composite's witness is the latest of its parts' witnesses,
    its provenance theirs, and its time to unlock runs from the first event
    that counted toward any part to that witness.
    """
    outcomes = {}
    for pair_key, pair in pairs.items():
        user_id, badge_id = pair_key
        rule = rules.badges[badge_id]
        outcome = outcomes[pair_key] = Outcome(pair)
        held = unlocked.get(user_id, set())
        earned = earnings(rule, pair.states(), now, pair.time_zone, held, now)
        held_before = set(pair.held)
        new = [key for key in earned if not _held(pair, rule, *key)]
        if earned:
            names = [part for spec in rule.requirements for part in spec.parts]
            members = sorted(
                (parts[(user_id, part)] for part in names if (user_id, part) in parts),
                key=lambda member: member.witness or (0, 0),
            )
            last = members[-1] if members else None
            began = [starts[(user_id, part)] for part in names if (user_id, part) in starts]
            witness = last.witness if last is not None else None
            took = (
                max(moment_of(witness) - min(began), timedelta(0))
                if witness is not None and began
                else None
            )
            provenance = list(dict.fromkeys(i for member in members for i in member.event_ids))
            for period, tier in earned:
                if (period, tier) not in new and (period, tier) not in held_before:
                    continue  # held in another form (an unlock from before tiers)
                # A held one is revised when its parts' provenance moved (a late event).
                _record_earning(
                    outcome,
                    rule,
                    period,
                    tier,
                    last.event_pk if last is not None else None,
                    provenance,
                    took,
                    witness,
                    completed=now,
                    new=(period, tier) in new,
                )
        _measure(outcome, rule, held, now)
    return outcomes


# --- the steps ------------------------------------------------------------------


def _fold(
    outcome: Outcome,
    spec: Spec,
    fact: Fact,
    event: Occurrence,
    event_key: OrderKey,
    fresh: bool,
) -> str | None:
    """Fold one event into one requirement: COUNTED or NO_CHANGE; None if it is a
    late event that could move a witness, and then nothing is changed."""
    pair = outcome.pair
    row = pair.progress.get(spec.id)
    if row is None:
        row = pair.progress[spec.id] = Progress()
    old = row.state
    latest = old.get(LATEST)
    late = not fresh and latest is not None and tuple(latest) > event_key
    if late and (
        # With negative terms a window's best value depends on the order: fold it in order.
        old.get(NEGATIVE)
        or _negative(spec, fact)
        or (old.get(WITNESS) is not None and tuple(old[WITNESS]) > event_key)
        # A tier or period earned later in occurrence order: its witness may move
        # (a tier's held unlocks are not read for live batches: ask the history).
        or (pair.tier >= 2 and not pair.held_known)
        or any(h.witness is not None and h.witness > event_key for h in pair.held.values())
    ):
        return None
    is_new_key = True
    key = progress.key_for(spec, fact)
    if key is not None:
        known = pair.known_keys.setdefault(spec.id, set())
        is_new_key = key not in known
        if is_new_key:
            known.add(key)
            outcome.new_keys.append((spec.id, key))
    state = progress.apply_fact(spec, old, fact, pair.time_zone, is_new_key=is_new_key)
    newly_met = bool(state.get("met")) and not old.get("met")
    if newly_met and late:
        return None  # met by an event older than one already folded: which one met it?
    if state == old:
        # It changes nothing, and would not in occurrence order either (its value,
        # day or step time is one an earlier event brought): not even the mark
        # of the latest event, so the row is not written again for it.
        outcome.touched = True
        if row.started_at is None or event.occurred_at < row.started_at:
            row.started_at = event.occurred_at
            outcome.moved.add(spec.id)
        return NO_CHANGE
    outcome.visible = True
    if not late:
        state[LATEST] = list(event_key)
    if newly_met:
        state[WITNESS] = list(event_key)
        row.met_by = event.event_id
    if _negative(spec, fact):
        state[NEGATIVE] = True
    if row.started_at is None or event.occurred_at < row.started_at:
        row.started_at = event.occurred_at
    row.state = state
    outcome.moved.add(spec.id)
    outcome.touched = True
    return COUNTED


def _negative(spec: Spec, fact: Fact) -> bool:
    if spec.kind is not Kind.AGGREGATE or spec.aggregation is not Aggregation.SUM:
        return False
    value = progress.numeric(fact.payload.get(spec.field))
    return value is not None and value < 0


def _earn(
    outcome: Outcome,
    rule: BadgeRule,
    event: Occurrence,
    event_key: OrderKey,
    unlocked: Mapping[int, set[int]],
    now: datetime,
    fresh: bool,
) -> bool:
    """Record the earnings the pair's progress justifies after `event`, with `event`
    as their witness; False if a late event earned something new (its witness
    could be an event folded before: needs history).

    In a whole-history fold, earnings the pair holds are checked too: their
    provenance is what the history gives (see _record_earning)."""
    pair = outcome.pair
    if rule.plain:  # the common badge: its met flags decide, no measuring
        rows = pair.progress
        if not all(
            (row := rows.get(spec.id)) and row.state.get("met") for spec in rule.requirements
        ):
            return True
        earned = [("", 0)]
    else:
        earned = _earnings_at(pair, rule, event, unlocked, now)
    reached = [key for key in earned if key not in outcome.justified]
    if pair.withheld:
        # Taken back by staff: never recorded, nor taken as the badge's first earning.
        reached = [k for k in reached if k[0] not in pair.withheld or k in pair.held]
    if not reached:
        return True
    new = {key for key in reached if not _held(pair, rule, *key)}
    if not new and not fresh:
        outcome.justified.update(reached)
        return True
    if (
        new
        and not fresh
        and any(
            (row := pair.progress.get(spec.id)) is not None
            and row.state.get(LATEST) is not None
            and tuple(row.state[LATEST]) > event_key
            for spec in rule.requirements
        )
    ):
        return False
    provenance, took = _provenance(pair, rule, event)
    # The badge's first earning (each tier of it) records its time to unlock.
    first = not outcome.justified if fresh else pair.completed_at is None
    for period, tier in reached:
        outcome.justified.add((period, tier))
        if not fresh and (period, tier) not in new:
            continue  # held: its provenance is revised only by a whole-history fold
        _record_earning(
            outcome,
            rule,
            period,
            tier,
            event.pk,
            provenance if not period and tier <= 1 else [event.event_id],
            took if not period or first else None,
            event_key,
            completed=now,
            new=(period, tier) in new,
            first=first and fresh,
        )
        first = False
    return True


# --- badges held only while their rule holds -----------------------------------
#
# Such a badge is held over spans of time: from the event at which its rule
# holds (or a tier is reached) to the moment it stops, which is either an
# event (a sum's negative term) or a moment when time alone changes a value
# (a period ends, a day leaves a rolling window, a streak's grace runs out:
# badgerules.changes_after). Both are exact, whenever the evaluation runs:
# events are folded in occurrence order, each after the moments that came
# before it; the moment after the last one at which the earning would stop
# is the pair's `expires_at`, so the schedule ends it on time if no event
# comes first. A whole-history fold works the spans out from nothing and
# changes only the present: what the history says is held now is held, with
# what is stored kept where it agrees, and what it no longer justifies ends
# now; the spans already told are left as history.


def _rule_held(pair: Pair) -> bool:
    return any(not held.granted for held in pair.held.values())


def _latest(pair: Pair, rule: BadgeRule) -> datetime | None:
    """The moment of the latest event folded into the pair's progress."""
    marks = [
        tuple(row.state[LATEST])
        for spec in rule.requirements
        if (row := pair.progress.get(spec.id)) is not None and row.state.get(LATEST)
    ]
    return moment_of(max(marks)) if marks else None  # type: ignore[arg-type]


def _start_holding(pair: Pair) -> None:
    """A whole-history fold works the spans out afresh: only staff's grants are held."""
    pair.held = {key: held for key, held in pair.held.items() if held.granted}
    pair.tier = max((tier for _, tier in pair.held), default=0)
    if not pair.held:
        pair.completed_at = pair.completed_by_event_id = None
    pair.lapsed_at = None


def _late_for_holding(pair: Pair, rule: BadgeRule, event: Occurrence) -> bool:
    """Whether an event comes before what the pair has already seen: one folded,
    or the moment it last stopped holding. Then only the history is exact."""
    if pair.lapsed_at is not None and event.occurred_at < pair.lapsed_at:
        return True
    latest = _latest(pair, rule)
    return latest is not None and event.occurred_at < latest


def _supported_keys(rule: BadgeRule, pair: Pair, moment: datetime) -> list[tuple[str, int]]:
    return earnings(rule, pair.states(), moment, pair.time_zone, set(), moment)


def _fall_to(outcome: Outcome, keep: Iterable[tuple[str, int]], at: datetime) -> None:
    """End the earnings the rule no longer supports at `at` (staff's grants stay)."""
    pair = outcome.pair
    kept = set(keep)
    for key, held in list(pair.held.items()):
        if held.granted or key in kept:
            continue
        del pair.held[key]
        if held.earning is not None:
            held.earning.ended_at = at  # made by this evaluation: recorded ended
        else:
            outcome.lapsed.append((held, at))
        pair.lapsed_at = at if pair.lapsed_at is None else max(pair.lapsed_at, at)
        outcome.visible = True
    pair.tier = max((tier for _, tier in pair.held), default=0)
    if not pair.held:
        pair.completed_at = pair.completed_by_event_id = None


def _lapse_until(outcome: Outcome, rule: BadgeRule, until: datetime) -> None:
    """End what time alone ended after the pair's latest event, up to `until`."""
    pair = outcome.pair
    if not _rule_held(pair):
        return
    after = _latest(pair, rule)
    if after is None:
        return
    for moment in changes_after(rule, pair.states(), after, pair.time_zone):
        if moment > until:
            return
        _fall_to(outcome, _supported_keys(rule, pair, moment), moment)
        if not _rule_held(pair):
            return


def _foresee(outcome: Outcome, rule: BadgeRule) -> None:
    """The pair's `expires_at`: the moment its earnings would next fall, no event coming."""
    pair = outcome.pair
    pair.expires_at = None
    after = _latest(pair, rule)
    if after is None or not _rule_held(pair):
        return
    held = {key for key, h in pair.held.items() if not h.granted}
    for moment in changes_after(rule, pair.states(), after, pair.time_zone):
        if not held <= set(_supported_keys(rule, pair, moment)):
            pair.expires_at = moment
            return


def _hold(
    outcome: Outcome,
    rule: BadgeRule,
    event: Occurrence,
    event_key: OrderKey,
    unlocked: Mapping[int, set[int]],
    now: datetime,
) -> None:
    """After `event`, what the rule supports at its moment: earnings it no longer
    supports end there, new ones are earned with `event` as their witness."""
    pair = outcome.pair
    earned = _earnings_at(pair, rule, event, unlocked, now)
    _fall_to(outcome, earned, event.occurred_at)
    new = [key for key in earned if key not in pair.held and key[0] not in pair.withheld]
    if not new:
        return
    # The first span cites the requirements' witnesses and records the time to
    # unlock; one after a loss cites the event that brought it back.
    again = pair.lapsed_at is not None
    provenance, took = ([event.event_id], None) if again else _provenance(pair, rule, event)
    for period, tier in new:
        _record_earning(
            outcome,
            rule,
            period,
            tier,
            event.pk,
            provenance if tier <= 1 else [event.event_id],
            took,
            event_key,
            completed=now,
        )


@dataclass(slots=True)
class _Stored:
    """What a pair held before a whole-history fold (badges held while their rule holds)."""

    held: dict[tuple[str, int], Held]
    completed_at: datetime | None
    completed_by_event_id: int | None


def _settle_holding(outcome: Outcome, rule: BadgeRule, before: _Stored, now: datetime) -> None:
    """After a whole-history fold: make the present what the history says.

    Earnings held and still justified stay (their provenance revised under the
    same rule version, as for other badges); held ones it no longer justifies
    end now; justified ones not held are new. Spans that began and ended
    within the history are not recorded again: they are history already told.
    """
    pair, stored = outcome.pair, before.held
    computed = {key: held for key, held in pair.held.items() if not held.granted}
    final = {key: held for key, held in stored.items() if held.granted}
    kept = False
    for key, held in stored.items():
        if held.granted:
            continue
        found = computed.get(key)
        if found is None:
            outcome.lapsed.append((held, now))
            pair.lapsed_at = now
            outcome.visible = True
            continue
        final[key], kept = held, True
        if held.version_id == rule.version_id and (held.event_ids, held.event_pk, held.took) != (
            found.event_ids,
            found.event_pk,
            found.took,
        ):
            held.event_ids, held.event_pk, held.took = (
                found.event_ids,
                found.event_pk,
                found.took,
            )
            held.witness = found.witness
            outcome.revised.append(held)
    new = []
    for key, found in computed.items():
        if key not in final and found.earning is not None:
            final[key] = found
            new.append(found.earning)
    outcome.earned = [e for e in outcome.earned if any(e is n for n in new)]
    pair.held = final
    pair.tier = max((tier for _, tier in final), default=0)
    if not final:
        pair.completed_at = pair.completed_by_event_id = None
    elif kept or any(held.granted for held in final.values()):
        # Held since before: the standing keeps when that began.
        pair.completed_at = before.completed_at or pair.completed_at or now
        pair.completed_by_event_id = before.completed_by_event_id
    else:
        pair.completed_at = now
        pair.completed_by_event_id = new[0].event_pk if new else None
    if outcome.earned or outcome.lapsed:
        outcome.visible = True


def _provenance(
    pair: Pair, rule: BadgeRule, event: Occurrence
) -> tuple[list[str], timedelta | None]:
    """An earning's events (the requirements' witnesses in occurrence order, the
    event at hand last: it completed the earning) and its time to unlock."""
    witnesses = sorted(
        (tuple(row.state[WITNESS]), row.met_by)
        for spec in rule.requirements
        if (row := pair.progress.get(spec.id)) is not None
        and row.met_by
        and row.state.get(WITNESS)
    )
    provenance = list(dict.fromkeys([*(met_by for _, met_by in witnesses), event.event_id]))
    starts = [
        row.started_at
        for spec in rule.requirements
        if (row := pair.progress.get(spec.id)) is not None and row.started_at is not None
    ]
    took = max(event.occurred_at - min(starts), timedelta(0)) if starts else None
    return provenance, took


def _earnings_at(
    pair: Pair,
    rule: BadgeRule,
    event: Occurrence,
    unlocked: Mapping[int, set[int]],
    now: datetime,
) -> list[tuple[str, int]]:
    """The earnings the pair's progress justifies at `event`'s moment."""
    return earnings(
        rule,
        pair.states(),
        event.occurred_at,
        pair.time_zone,
        unlocked.get(pair.user_id, set()),
        now,
    )


def _held(pair: Pair, rule: BadgeRule, period: str, tier: int) -> bool:
    """Whether the pair already holds this earning (or one that stands for it, or
    one staff took away, which counts as held so the rule does not award it)."""
    if period in pair.withheld and (period, tier) not in pair.held:
        return True
    if tier == 1 and pair.tier == 0 and pair.completed_at is not None:
        # Unlocked before the badge had tiers: that unlock is its first tier.
        pair.tier = 1
        return True
    if not period:
        return tier <= pair.tier if tier else pair.completed_at is not None
    if (period, tier) in pair.held:
        return True
    # Making a badge repeatable keeps its old unlock; it is the earning of its period.
    return (
        pair.completed_at is not None
        and pair.legacy_moment is not None
        and rule.repeat is not None
        and periods.period_key(rule.repeat, pair.legacy_moment, pair.time_zone) == period
    )


def _record_earning(
    outcome: Outcome,
    rule: BadgeRule,
    period: str,
    tier: int,
    event_pk: int | None,
    event_ids: list[str],
    took: timedelta | None,
    witness: OrderKey | None,
    *,
    completed: datetime,
    new: bool = True,
    first: bool = False,
) -> None:
    """Keep a new earning; or, for one the pair holds (a whole-history fold), revise
    its provenance when the history gives another under the same rule version
    (an unlock keeps the provenance of the version it was earned under)."""
    pair = outcome.pair
    if not new:
        if first:
            # The pair's first earning in occurrence order completed it.
            pair.completed_by_event_id = event_pk
        held = pair.held.get((period, tier))
        if (
            held is not None
            and held.version_id == rule.version_id
            and (held.event_ids, held.event_pk, held.took) != (event_ids, event_pk, took)
        ):
            if pair.completed_by_event_id == held.event_pk:
                pair.completed_by_event_id = event_pk  # it points at this earning
            held.event_ids, held.event_pk, held.took = event_ids, event_pk, took
            held.witness = witness
            outcome.revised.append(held)
        return
    made = Held(period, tier, event_pk, event_ids, took, rule.version_id, witness)
    pair.held[(period, tier)] = made
    # Valid for some days from the event that earned it (from now without one).
    expires_at = (
        (moment_of(witness) if witness is not None else completed)
        + timedelta(days=rule.valid_days)
        if rule.valid_days
        else None
    )
    made.earning = Earning(
        pair.user_id,
        pair.badge_id,
        period,
        tier,
        event_pk,
        event_ids,
        took,
        rule.version_id,
        witness,
        expires_at,
    )
    outcome.earned.append(made.earning)
    if pair.completed_at is None:
        pair.completed_at = completed
        pair.completed_by_event_id = event_pk
        pair.expires_at = expires_at
    elif first:
        pair.completed_by_event_id = event_pk  # an earlier earning than those held
    pair.tier = max(pair.tier, tier)
    outcome.visible = True


def _all_earned(rule: BadgeRule | None, pair: Pair) -> bool:
    """Whether the pair holds every earning the badge has (a repeatable badge never does;
    one held while its rule holds may lose what it holds)."""
    if rule is None or rule.earnings_in_all is None or rule.holds_while:
        return False
    if rule.tiers:
        return pair.tier >= len(rule.tiers)
    return pair.completed_at is not None


def _reconcile(outcome: Outcome) -> None:
    """After a whole-history fold: the held earnings the history does not justify.

    An unlock from before the badge had tiers, or repeated, stands while the
    badge is earned in any way. Nothing is revoked here; callers report it.
    """
    for key, held in outcome.pair.held.items():
        if held.granted or key in outcome.justified or (key == ("", 0) and outcome.justified):
            continue
        outcome.no_longer.append(key)


def _measure(outcome: Outcome, rule: BadgeRule, unlocked: set[int], now: datetime) -> None:
    pair = outcome.pair
    for spec in rule.requirements:
        pair.progress.setdefault(spec.id, Progress())
    result = standing(rule, pair.states(), now, pair.time_zone, unlocked)
    current = storable(result.status.current)
    target = storable(result.status.target)
    if (pair.current_value, pair.target_value) != (current, target):
        outcome.visible = True
    pair.current_value = current
    pair.target_value = target
    # A measure's value does not depend on its threshold: the standing's
    # measures (a tiered badge's against its next tier) give each row's value.
    for spec, measured in zip(rule.requirements, result.measures, strict=True):
        pair.progress[spec.id].value = storable(measured.value)
