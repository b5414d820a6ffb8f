"""The evaluation core against a brute-force reference written from docs/rules.md.

For random rules (every kind, scopes in several time zones, tiers, repeats,
filters, negative sums) and random events (across DST changes, on period
boundaries), in a random order of arrival cut into random batches:

- live evaluation (batches folded onto the state, with the refold from the
  history when the core asks for it) ends in the state a replay (one fold of
  the whole history) gives, provenance included;
- and that state's unlocks, witnesses, provenance and times to unlock are
  those a brute-force evaluation of every prefix of the history, in
  occurrence order, gives.
"""

from __future__ import annotations

import copy
import zoneinfo
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from achievements import core, progress
from achievements.progress import Fact, Spec
from achievements.rules import Aggregation, Filter, Kind, Operator, Scope, operators_for
from tests.achievements.test_progress import (
    reference_longest_streak,
    reference_sequence_met,
    reference_windows,
)

ZONES = ["UTC", "America/New_York", "Europe/Berlin", "Australia/Sydney", "Pacific/Chatham"]
# Europe changes to summer time on 2026-03-29, Australia back on 2026-04-05.
START = datetime(2026, 3, 25, tzinfo=UTC)
NOW = datetime(2026, 5, 1, tzinfo=UTC)
BADGE = 1
USER = 7


# --- the reference -----------------------------------------------------------------


def ordered(events: list[core.Occurrence]) -> list[core.Occurrence]:
    return sorted(events, key=lambda e: (e.occurred_at, e.pk))


def facts(events: list[core.Occurrence]) -> list[Fact]:
    return [Fact(e.event_type, e.payload, e.occurred_at) for e in events]


def relevant(spec: Spec, events: list[core.Occurrence]) -> list[core.Occurrence]:
    return [
        e for e in events if progress.relevant(spec, Fact(e.event_type, e.payload, e.occurred_at))
    ]


def values(spec: Spec, events: list[core.Occurrence], zone: str) -> dict[object, Decimal]:
    """Every window's value over these events (docs/rules.md: scopes), by window."""
    if spec.aggregation is Aggregation.SINGLE:
        numbers = [Decimal(str(e.payload[spec.field])) for e in relevant(spec, events)]
        return (
            {"all": (min if spec.operator in (Operator.LTE, Operator.LT) else max)(numbers)}
            if (numbers)
            else {}
        )
    return reference_windows(spec, facts(events), zone)


def met(spec: Spec, events: list[core.Occurrence], zone: str) -> bool:
    if spec.kind is Kind.STREAK:
        longest = reference_longest_streak(facts(relevant(spec, events)), zone, spec.streak_unit)
        return spec.operator.holds(Decimal(longest), spec.threshold)
    if spec.kind is Kind.SEQUENCE:
        return reference_sequence_met(spec.steps, facts(events), spec.window_days)
    if spec.aggregation is Aggregation.SINGLE:
        return any(
            spec.operator.holds(Decimal(str(e.payload[spec.field])), spec.threshold)
            for e in relevant(spec, events)
        )
    return any(spec.operator.holds(v, spec.threshold) for v in values(spec, events, zone).values())


def peak(spec: Spec, events: list[core.Occurrence], zone: str) -> Decimal:
    if spec.kind is Kind.STREAK:
        return Decimal(
            reference_longest_streak(facts(relevant(spec, events)), zone, spec.streak_unit)
        )
    return max(values(spec, events, zone).values(), default=Decimal(0))


def reference(rule: core.BadgeRule, events: list[core.Occurrence], zone: str) -> dict:
    """What the docs say the history earns: every earning with its witness, provenance
    and time to unlock, and each requirement's witness; by brute force over the
    prefixes of the history in occurrence order."""
    history = ordered(events)
    prefixes = [history[: n + 1] for n in range(len(history))]

    def first(condition) -> core.Occurrence | None:
        return next((p[-1] for p in prefixes if condition(p)), None)

    witnesses = {spec.id: first(lambda p, s=spec: met(s, p, zone)) for spec in rule.requirements}
    starts = [e.occurred_at for spec in rule.requirements for e in relevant(spec, history)]
    earned: dict[tuple[str, int], core.Occurrence] = {}
    if rule.tiers:
        [spec] = rule.requirements
        for level, (_, threshold) in enumerate(rule.tiers, start=1):
            witness = first(lambda p, t=threshold: spec.operator.holds(peak(spec, p, zone), t))
            if witness is not None:
                earned[("", level)] = witness
    elif rule.repeat is not None:
        for period in {key for spec in rule.requirements for key in values(spec, history, zone)}:

            def holds(p, period=period) -> bool:
                return all(
                    (value := values(spec, p, zone).get(period)) is not None
                    and spec.operator.holds(value, spec.threshold)
                    for spec in rule.requirements
                )

            witness = first(holds)
            if witness is not None:
                earned[(str(period), 0)] = witness
    else:
        witness = first(lambda p: all(met(spec, p, zone) for spec in rule.requirements))
        if witness is not None:
            earned[("", 0)] = witness
    first_earning = min(earned.values(), key=lambda e: (e.occurred_at, e.pk), default=None)
    provenance = {}
    for (period, tier), witness in earned.items():
        if not period and tier <= 1:
            met_by = sorted(
                (w for w in witnesses.values() if w is not None),
                key=lambda e: (e.occurred_at, e.pk),
            )
            ids = list(dict.fromkeys([*(w.event_id for w in met_by), witness.event_id]))
        else:
            ids = [witness.event_id]
        took = witness.occurred_at - min(starts) if starts else None
        provenance[(period, tier)] = (
            witness.pk,
            ids,
            took if not period or witness is first_earning else None,
        )
    return {
        "met_by": {i: (w.event_id if w else "") for i, w in witnesses.items()},
        "unlocks": provenance,
    }


# --- live, batched, and replayed -------------------------------------------------


def replayed(rule: core.BadgeRule, events: list[core.Occurrence], zone: str) -> core.Pair:
    pair = core.Pair(USER, BADGE, time_zone=zone)
    [outcome] = core.evaluate(
        {(USER, BADGE): pair}, core.RuleSet({BADGE: rule}), events, now=NOW, fresh=True
    ).values()
    assert not outcome.needs_history
    return pair


def live(rule: core.BadgeRule, batches: list[list[core.Occurrence]], zone: str) -> core.Pair:
    """Each batch folded onto the state as the engine does, refolding the history
    (every event so far) when the core says a late event may move a witness."""
    rules = core.RuleSet({BADGE: rule})
    pair = core.Pair(USER, BADGE, time_zone=zone)
    seen: list[core.Occurrence] = []
    for batch in batches:
        stored = copy.deepcopy(pair)  # what the store would read back
        seen += batch
        [outcome] = core.evaluate({(USER, BADGE): pair}, rules, batch, now=NOW).values()
        if outcome.needs_history:
            pair = core.Pair(
                USER,
                BADGE,
                time_zone=zone,
                completed_at=stored.completed_at,
                completed_by_event_id=stored.completed_by_event_id,
                tier=stored.tier,
                held=stored.held,
            )
            [outcome] = core.evaluate(
                {(USER, BADGE): pair}, rules, list(seen), now=NOW, fresh=True
            ).values()
            assert not outcome.needs_history
    return pair


def _without_mark(state: dict) -> dict:
    return {key: value for key, value in state.items() if key != core.LATEST}


def state_of(pair: core.Pair) -> dict:
    return {
        # Without the mark of the latest event that changed the state: which one
        # that was depends on arrival (the core only needs a bound; see core.py).
        "progress": {
            pk: (_without_mark(row.state), row.met_by, row.started_at, row.value)
            for pk, row in sorted(pair.progress.items())
        },
        "unlocks": {
            key: (held.event_pk, held.event_ids, held.took)
            for key, held in sorted(pair.held.items())
        },
        "standing": (pair.current_value, pair.target_value, pair.tier, pair.completed_by_event_id),
    }


# --- strategies ----------------------------------------------------------------------


@st.composite
def requirement(draw, number: int, *, growing: bool = False, scope: Scope | None = None) -> Spec:
    kind = draw(st.sampled_from([Kind.AGGREGATE] * 3 + [Kind.STREAK, Kind.SEQUENCE]))
    if scope is not None or growing:
        kind = (
            Kind.AGGREGATE
            if scope is not None
            else draw(st.sampled_from([Kind.AGGREGATE, Kind.STREAK]))
        )
    if kind is Kind.SEQUENCE:
        steps = tuple(
            draw(st.permutations(["a.done", "b.done", "c.done"]))[: draw(st.integers(2, 3))]
        )
        return Spec(
            number,
            Decimal(len(steps)),
            kind=kind,
            steps=steps,
            window_days=draw(st.integers(0, 4)),
        )
    if kind is Kind.STREAK:
        return Spec(
            number,
            Decimal(draw(st.integers(1, 4))),
            kind=kind,
            event_type="a.done",
            operator=draw(st.sampled_from([Operator.GTE, Operator.GT])),
            streak_unit=draw(st.sampled_from(["day", "week"])),
        )
    choices = [Aggregation.COUNT, Aggregation.DISTINCT, Aggregation.SUM, Aggregation.MAX]
    if not growing:
        choices += [Aggregation.MIN, Aggregation.SINGLE]
    if scope is not None:
        choices = [Aggregation.COUNT, Aggregation.DISTINCT, Aggregation.SUM, Aggregation.MAX]
    aggregation = draw(st.sampled_from(choices))
    operators = operators_for(Kind.AGGREGATE, aggregation)
    if growing:
        operators = tuple(o for o in operators if o in (Operator.GTE, Operator.GT))
    filter_ = draw(
        st.sampled_from(
            [
                Filter(),
                Filter.from_data({"all": [{"field": "source", "op": "==", "value": "app"}]}),
                Filter.from_data({"all": [{"field": "source", "op": "!=", "value": "web"}]}),
            ]
        )
    )
    return Spec(
        number,
        Decimal(draw(st.integers(1, 4))),
        kind=kind,
        event_type=draw(st.sampled_from(["a.done", "a.done", "b.done"])),
        aggregation=aggregation,
        field="" if aggregation is Aggregation.COUNT else "n",
        operator=draw(st.sampled_from(operators)),
        scope=scope
        or (
            Scope.ALL_TIME
            if aggregation is Aggregation.SINGLE
            else draw(st.sampled_from(list(Scope)))
        ),
        window_days=draw(st.integers(1, 4)),
        filter=filter_,
    )


@st.composite
def badge_rules(draw) -> core.BadgeRule:
    shape = draw(st.sampled_from(["plain", "two", "tiers", "tiers", "repeat"]))
    if shape == "tiers":
        spec = draw(requirement(10, growing=True))
        steps = draw(st.lists(st.integers(1, 2), min_size=1, max_size=3))
        thresholds = [spec.threshold]
        for step in steps:
            thresholds.append(thresholds[-1] + step)
        tiers = tuple((f"T{n}", t) for n, t in enumerate(thresholds, start=1))
        return core.BadgeRule(BADGE, (spec,), tiers=tiers, version_id=1)
    if shape == "repeat":
        period = draw(st.sampled_from([Scope.DAY, Scope.WEEK, Scope.MONTH]))
        specs = (draw(requirement(10, scope=period)),)
        return core.BadgeRule(BADGE, specs, repeat=period, version_id=1)
    count = 2 if shape == "two" else 1
    specs = tuple(draw(requirement(10 + n)) for n in range(count))
    return core.BadgeRule(BADGE, specs, version_id=1)


@st.composite
def histories(draw, zone: str, *, negative: bool) -> list[core.Occurrence]:
    """Events over six weeks, some on the stroke of a local midnight or a second
    either side of it (day, week and month boundaries), across DST changes."""
    local = zoneinfo.ZoneInfo(zone)
    boundary = st.builds(
        lambda day, second: (
            datetime.combine((START + timedelta(days=day)).date(), datetime.min.time(), local)
            + timedelta(seconds=second)
        ).astimezone(UTC),
        st.integers(0, 40),
        st.sampled_from([-1, 0, 1]),
    )
    anywhere = st.integers(0, 60 * 24 * 42).map(lambda m: START + timedelta(minutes=m))
    moments = st.one_of(anywhere, boundary)
    payloads = st.fixed_dictionaries(
        {"n": st.integers(-2 if negative else 0, 9)},
        optional={"source": st.sampled_from(["app", "web"])},
    )
    items = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["a.done", "a.done", "a.done", "b.done", "c.done"]),
                payloads,
                moments,
            ),
            min_size=1,
            max_size=24,
        )
    )
    return [
        core.Occurrence(n + 1, f"e{n:03d}", event_type, USER, payload, moment)
        for n, (event_type, payload, moment) in enumerate(items)
    ]


@st.composite
def scenarios(draw, *, negative: bool = False):
    zone = draw(st.sampled_from(ZONES))
    rule = draw(badge_rules())
    events = draw(histories(zone, negative=negative))
    arrival = draw(st.permutations(events))
    sizes = draw(st.lists(st.integers(1, 4), min_size=len(arrival), max_size=len(arrival)))
    batches, start = [], 0
    for size in sizes:
        if start < len(arrival):
            batches.append(arrival[start : start + size])
            start += size
    return zone, rule, events, batches


# --- properties ------------------------------------------------------------------------


@settings(max_examples=1500, deadline=None)
@given(scenarios())
def test_live_batches_end_where_a_replay_does_provenance_included(scenario):
    """Sums here have no negative terms: an unlock made before a late negative term
    arrives is kept (nothing is revoked), where a replay would not make it."""
    zone, rule, events, batches = scenario
    assert state_of(live(rule, batches, zone)) == state_of(replayed(rule, events, zone))


@settings(max_examples=1500, deadline=None)
@given(scenarios(negative=True))
def test_the_core_earns_what_a_brute_force_reading_of_the_docs_earns(scenario):
    zone, rule, events, _ = scenario
    pair = replayed(rule, events, zone)
    expected = reference(rule, events, zone)
    assert {key: (h.event_pk, h.event_ids, h.took) for key, h in pair.held.items()} == expected[
        "unlocks"
    ]
    assert {pk: row.met_by for pk, row in pair.progress.items()} == expected["met_by"]


def test_a_late_event_before_a_witness_asks_for_the_history():
    spec = Spec(10, Decimal(2), event_type="a.done")
    rule = core.BadgeRule(BADGE, (spec,), version_id=1)
    pair = core.Pair(USER, BADGE)
    events = [
        core.Occurrence(n, f"e{n}", "a.done", USER, {}, START + timedelta(days=n))
        for n in (1, 2, 3)
    ]
    rules = core.RuleSet({BADGE: rule})
    core.evaluate({(USER, BADGE): pair}, rules, events[1:], now=NOW)
    assert pair.progress[10].met_by == "e3"
    [outcome] = core.evaluate({(USER, BADGE): pair}, rules, events[:1], now=NOW).values()
    assert outcome.needs_history  # e1 happened first: e2, not e3, met it


def test_a_later_tier_leaves_the_provenance_of_the_tiers_held():
    spec = Spec(10, Decimal(2), event_type="a.done")
    rule = core.BadgeRule(BADGE, (spec,), tiers=(("T1", Decimal(2)), ("T2", Decimal(4))))
    events = [
        core.Occurrence(n, f"e{n}", "a.done", USER, {}, START + timedelta(days=n))
        for n in range(1, 5)
    ]
    pair = live(rule, [events[:3], events[3:]], "UTC")
    assert {key: (h.event_pk, h.event_ids) for key, h in pair.held.items()} == {
        ("", 1): (2, ["e2"]),
        ("", 2): (4, ["e4"]),
    }
