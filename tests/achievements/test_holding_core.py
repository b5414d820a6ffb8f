"""Badges held only while their rule holds, in the evaluation core, against a brute-force
reference written from docs/rules.md.

The reference walks the history in occurrence order and, besides every event,
every local midnight up to now (days, weeks and months all start at one): at
a midnight, the earnings the rule no longer supports end there; after an
event, those it no longer supports end at its moment and those it newly
supports are earned with it as their witness. What the rule supports at a
moment is computed from all the events before it, from scratch.

- Live evaluation, in occurrence order, cut into random batches evaluated at
  random moments, with the schedule run in between, tells exactly the spans
  the reference does: each earning's tier and witness, and when it ended.
- A replay of the whole history over what live evaluation stored changes
  nothing.
- In any order of arrival, what is held at the end is what the reference holds.
"""

from __future__ import annotations

import copy
from datetime import datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from achievements import core, periods, progress
from achievements.badgerules import supported
from achievements.progress import Fact, Spec
from achievements.rules import Aggregation, Kind, Scope
from tests.achievements.test_core import BADGE, START, USER, ZONES, histories, requirement

# After the last event the histories hold: the schedule's last round.
END = START + timedelta(days=44)

Span = tuple[int, int, object]  # (tier, witness event pk, ended at or None)


# --- the reference -----------------------------------------------------------------


def _states(rule: core.BadgeRule, events: list[core.Occurrence], zone: str) -> dict:
    states: dict[int, dict] = {}
    for spec in rule.requirements:
        state: dict = {}
        seen: set[str] = set()
        for event in events:
            fact = Fact(event.event_type, event.payload, event.occurred_at)
            if progress.relevant(spec, fact):
                state = progress.fold_in_memory(spec, state, fact, zone, seen)
        states[spec.id] = state
    return states


def _keys(rule: core.BadgeRule, level: int) -> set[int]:
    if rule.graded:
        return set(range(1, level + 1))
    return {0} if level else set()


def reference(rule: core.BadgeRule, events: list[core.Occurrence], zone: str) -> list[Span]:
    ordered = sorted(events, key=lambda e: (e.occurred_at, e.pk))
    midnights = []
    day = periods.local_date(START, zone) - timedelta(days=1)
    while (moment := periods.start_of_day(day, zone)) <= END:
        midnights.append(moment)
        day += timedelta(days=1)
    # A midnight comes before the events of its own moment.
    steps: list[tuple[datetime, int, core.Occurrence | None]] = sorted(
        [(m, 0, None) for m in midnights] + [(e.occurred_at, 1, e) for e in ordered],
        key=lambda step: (step[0], step[1], step[2].pk if step[2] else 0),
    )
    spans: list[list] = []
    held: dict[int, list] = {}  # tier -> its open span
    folded: list[core.Occurrence] = []
    for moment, _, event in steps:
        if event is not None:
            folded.append(event)
        if not folded:
            continue
        level = supported(rule, _states(rule, folded, zone), moment, zone)
        keep = _keys(rule, level)
        for tier in sorted(set(held) - keep):
            held.pop(tier)[2] = moment
        if event is not None:
            for tier in sorted(keep - set(held)):
                span = [tier, event.pk, None]
                spans.append(span)
                held[tier] = span
    return [tuple(span) for span in spans]


# --- live, batched, and replayed ---------------------------------------------------


class Store:
    """What the engine would store: the spans told, and the pair read back each time."""

    def __init__(self) -> None:
        self.spans: list[list] = []
        self.by_pk: dict[int, list] = {}

    def write(self, outcome: core.Outcome) -> None:
        for held, at in outcome.lapsed:
            assert held.pk is not None and self.by_pk[held.pk][2] is None, "ended twice"
            self.by_pk[held.pk][2] = at
        for earning in outcome.earned:
            span = [earning.tier, earning.event_pk, earning.ended_at]
            self.spans.append(span)
            if earning.ended_at is None:
                pk = len(self.spans)
                self.by_pk[pk] = span
                held = outcome.pair.held[(earning.period, earning.tier)]
                held.pk, held.earning = pk, None

    def told(self) -> list[Span]:
        return [tuple(span) for span in self.spans]


def evaluate(pair, rule, events, now, *, fresh=False) -> core.Outcome:
    [outcome] = core.evaluate(
        {(USER, BADGE): pair}, core.RuleSet({BADGE: rule}), events, now=now, fresh=fresh
    ).values()
    return outcome


def refold(pair: core.Pair, rule, seen, now) -> tuple[core.Pair, core.Outcome]:
    """The engine's refold after a late event: the standing and held unlocks as
    stored, progress rebuilt from the whole history."""
    again = core.Pair(
        USER,
        BADGE,
        time_zone=pair.time_zone,
        completed_at=pair.completed_at,
        completed_by_event_id=pair.completed_by_event_id,
        tier=pair.tier,
        held=copy.copy(pair.held),
        lapsed_at=pair.lapsed_at,
    )
    outcome = evaluate(again, rule, list(seen), now, fresh=True)
    assert not outcome.needs_history
    return again, outcome


def live(rule, batches, moments, zone, *, sweeps) -> tuple[core.Pair, Store]:
    store = Store()
    pair = core.Pair(USER, BADGE, time_zone=zone)
    seen: list[core.Occurrence] = []
    for batch, now, sweep in zip(batches, moments, sweeps, strict=True):
        first = min(e.occurred_at for e in batch)
        if sweep and pair.expires_at is not None and pair.expires_at <= first:
            # The schedule's round, as the batch's first event happens.
            store.write(evaluate(pair, rule, [], first))
        seen += batch
        before = copy.copy(pair)
        before.held = copy.copy(pair.held)
        outcome = evaluate(pair, rule, batch, now)
        if outcome.needs_history:
            pair, outcome = refold(before, rule, seen, now)
        store.write(outcome)
    store.write(evaluate(pair, rule, [], END))
    return pair, store


# --- strategies ----------------------------------------------------------------------


@st.composite
def holding_rules(draw) -> core.BadgeRule:
    shape = draw(
        st.sampled_from(["one", "two", "tiers", "tiers", "window", "window", "window", "streak"])
    )
    if shape == "tiers":
        spec = draw(requirement(10, growing=True))
        steps = draw(st.lists(st.integers(1, 2), min_size=1, max_size=3))
        thresholds = [spec.threshold]
        for step in steps:
            thresholds.append(thresholds[-1] + step)
        tiers = tuple((f"T{n}", t) for n, t in enumerate(thresholds, start=1))
        return core.BadgeRule(BADGE, (spec,), tiers=tiers, version_id=1, holds_while=True)
    if shape == "window":  # the usual one: "3 of the last N days", "2 this week"
        spec = Spec(
            10,
            Decimal(draw(st.integers(1, 3))),
            event_type="a.done",
            aggregation=draw(st.sampled_from([Aggregation.COUNT, Aggregation.SUM])),
            field="n",
            scope=draw(st.sampled_from([Scope.ROLLING, Scope.DAY, Scope.WEEK, Scope.MONTH])),
            window_days=draw(st.integers(1, 5)),
        )
        return core.BadgeRule(BADGE, (spec,), version_id=1, holds_while=True)
    if shape == "streak":
        spec = Spec(
            10,
            Decimal(draw(st.integers(1, 3))),
            kind=Kind.STREAK,
            event_type="a.done",
            streak_unit=draw(st.sampled_from(["day", "week"])),
        )
        return core.BadgeRule(BADGE, (spec,), version_id=1, holds_while=True)
    count = 2 if shape == "two" else 1
    specs = tuple(draw(requirement(10 + n)) for n in range(count))
    return core.BadgeRule(BADGE, specs, version_id=1, holds_while=True)


@st.composite
def in_order(draw, *, negative: bool = False):
    """Events in occurrence order, cut into batches, each evaluated at a moment
    between its last event and the next batch's first."""
    zone = draw(st.sampled_from(ZONES))
    rule = draw(holding_rules())
    events = sorted(draw(histories(zone, negative=negative)), key=lambda e: (e.occurred_at, e.pk))
    batches, start = [], 0
    while start < len(events):
        size = draw(st.integers(1, 4))
        batches.append(events[start : start + size])
        start += size
    moments = []
    for number, batch in enumerate(batches):
        last = batch[-1].occurred_at
        following = batches[number + 1][0].occurred_at if number + 1 < len(batches) else END
        share = draw(st.floats(0, 1))
        moments.append(last + (following - last) * share)
    sweeps = draw(st.lists(st.booleans(), min_size=len(batches), max_size=len(batches)))
    return zone, rule, events, batches, moments, sweeps


@st.composite
def any_order(draw):
    zone = draw(st.sampled_from(ZONES))
    rule = draw(holding_rules())
    events = draw(histories(zone, negative=True))
    arrival = draw(st.permutations(events))
    batches, start = [], 0
    while start < len(arrival):
        size = draw(st.integers(1, 4))
        batches.append(arrival[start : start + size])
        start += size
    latest = max(e.occurred_at for e in events)
    return zone, rule, events, batches, [latest] * len(batches)


# --- properties ------------------------------------------------------------------------


@settings(max_examples=800, deadline=None)
@given(in_order(negative=True))
def test_live_evaluation_in_order_tells_the_spans_the_reference_gives(scenario):
    zone, rule, events, batches, moments, sweeps = scenario
    _, store = live(rule, batches, moments, zone, sweeps=sweeps)
    assert store.told() == reference(rule, events, zone)


@settings(max_examples=300, deadline=None)
@given(in_order(negative=True))
def test_a_replay_over_what_live_evaluation_stored_changes_nothing(scenario):
    zone, rule, events, batches, moments, sweeps = scenario
    pair, _ = live(rule, batches, moments, zone, sweeps=sweeps)
    _, outcome = refold(pair, rule, events, END)
    assert (outcome.earned, outcome.lapsed, outcome.revised) == ([], [], [])
    assert outcome.pair.expires_at == pair.expires_at


@settings(max_examples=800, deadline=None)
@given(any_order())
def test_in_any_order_of_arrival_what_is_held_at_the_end_is_what_the_reference_holds(scenario):
    zone, rule, events, batches, moments = scenario
    pair, _ = live(rule, batches, moments, zone, sweeps=[False] * len(batches))
    held = sorted((tier, pk) for tier, pk, ended in reference(rule, events, zone) if ended is None)
    assert sorted((h.tier, h.event_pk) for h in pair.held.values()) == held


# --- examples ------------------------------------------------------------------------

T0 = START + timedelta(hours=12)  # noon, UTC


def _visits(*days: float, n: int = 1) -> list[core.Occurrence]:
    return [
        core.Occurrence(pk, f"v{pk}", "a.done", USER, {"n": n}, T0 + timedelta(days=day))
        for pk, day in enumerate(days, start=1)
    ]


def _rolling(threshold: int, *, tiers=()) -> core.BadgeRule:
    spec = Spec(10, Decimal(threshold), event_type="a.done", scope=Scope.ROLLING, window_days=7)
    return core.BadgeRule(BADGE, (spec,), tiers=tiers, version_id=1, holds_while=True)


def _stored(pair: core.Pair) -> core.Pair:
    """The pair as the store reads it back: its held unlocks saved."""
    for number, held in enumerate(pair.held.values(), start=1):
        held.pk, held.earning = held.pk or number, None
    return pair


def test_it_is_lost_when_a_day_leaves_the_window_in_the_users_zone_however_late_it_is_seen():
    rule, zone = _rolling(3), "Europe/Berlin"
    pair = core.Pair(USER, BADGE, time_zone=zone)
    [earned] = evaluate(pair, rule, _visits(0, 1, 2), T0 + timedelta(days=2)).earned
    assert (earned.event_pk, earned.ended_at) == (3, None)
    # Day 0's visit leaves the last 7 days at the local midnight 7 days on.
    lost_at = periods.start_of_day(periods.local_date(T0, zone) + timedelta(days=7), zone)
    assert pair.expires_at == lost_at
    _stored(pair)
    outcome = evaluate(pair, rule, [], T0 + timedelta(days=30))  # the schedule, weeks late
    assert [at for _, at in outcome.lapsed] == [lost_at]
    assert (pair.held, pair.completed_at, pair.expires_at, pair.lapsed_at) == (
        {},
        None,
        None,
        lost_at,
    )


def test_it_is_earned_again_when_the_rule_holds_again_citing_the_event_that_brought_it_back():
    rule = _rolling(2)
    pair = core.Pair(USER, BADGE)
    outcome = evaluate(pair, rule, _visits(0, 1, 20, 21), T0 + timedelta(days=22))
    assert [(e.event_pk, e.event_ids, e.ended_at is not None) for e in outcome.earned] == [
        (2, ["v2"], True),
        (4, ["v4"], False),
    ]
    assert outcome.earned[1].took is None  # the time to unlock is the first earning's


def test_a_tier_falls_back_to_the_tier_the_rule_still_supports():
    rule = _rolling(2, tiers=(("Bronze", Decimal(2)), ("Silver", Decimal(4))))
    pair = core.Pair(USER, BADGE)
    evaluate(pair, rule, _visits(0, 0.1, 3, 3.1), T0 + timedelta(days=4))
    assert set(pair.held) == {("", 1), ("", 2)} and pair.tier == 2
    _stored(pair)
    # Day 0's two visits leave on day 7: two remain, Silver falls back to Bronze.
    outcome = evaluate(pair, rule, [], T0 + timedelta(days=8))
    assert [(held.tier, at.date()) for held, at in outcome.lapsed] == [
        (2, (T0 + timedelta(days=7)).date())
    ]
    assert set(pair.held) == {("", 1)} and pair.tier == 1
    assert pair.expires_at == periods.start_of_day((T0 + timedelta(days=10)).date(), "UTC")


def test_a_negative_term_ends_it_at_its_own_event():
    spec = Spec(10, Decimal(5), event_type="a.done", aggregation=Aggregation.SUM, field="n")
    rule = core.BadgeRule(BADGE, (spec,), version_id=1, holds_while=True)
    pair = core.Pair(USER, BADGE)
    events = _visits(0, 1, n=3) + [
        core.Occurrence(9, "v9", "a.done", USER, {"n": -2}, T0 + timedelta(days=2))
    ]
    outcome = evaluate(pair, rule, events, T0 + timedelta(days=3))
    [earned] = outcome.earned
    assert earned.ended_at == T0 + timedelta(days=2)
    assert pair.expires_at is None  # an all-time sum changes only with events


def test_an_event_older_than_the_last_loss_asks_for_the_history():
    rule = _rolling(2)
    pair = _stored(core.Pair(USER, BADGE))
    evaluate(pair, rule, _visits(0, 1), T0 + timedelta(days=1))
    _stored(pair)
    evaluate(pair, rule, [], T0 + timedelta(days=30))
    assert pair.lapsed_at is not None and not pair.held
    # A visit of day 5 arrives after the loss on day 8 was told: with it the
    # badge held until day 13, so only the history can say what holds now.
    [late] = [core.Occurrence(7, "v7", "a.done", USER, {"n": 1}, T0 + timedelta(days=5))]
    assert late.occurred_at > T0 + timedelta(days=1)  # not older than any event folded
    assert evaluate(pair, rule, [late], T0 + timedelta(days=30)).needs_history


def test_staff_grants_are_never_lost_by_the_rule():
    rule = _rolling(2)
    grant = core.Held("", 0, None, [], None, None, None, pk=5, granted=True)
    pair = core.Pair(USER, BADGE, held={("", 0): grant}, completed_at=T0, granted=True)
    outcome = evaluate(pair, rule, _visits(0), T0 + timedelta(days=30))
    assert (outcome.lapsed, pair.held, pair.expires_at) == ([], {("", 0): grant}, None)


def test_a_replay_under_a_stricter_rule_ends_now_what_no_longer_holds_and_keeps_the_rest():
    events = _visits(0, 1, 2, 3)
    now = T0 + timedelta(days=3, hours=1)
    pair = core.Pair(USER, BADGE)
    evaluate(pair, _rolling(3), events, now)
    held = _stored(pair).held[("", 0)]
    kept, _ = refold(pair, _rolling(4), events, now)
    assert kept.held == {("", 0): held}  # four in a week: still held, the same unlock
    lost, outcome = refold(pair, _rolling(5), events, now)
    assert [(h.pk, at) for h, at in outcome.lapsed] == [(held.pk, now)]
    assert (lost.held, lost.completed_at) == ({}, None)
