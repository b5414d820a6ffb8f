"""Every rule kind, folded one event at a time, against an obviously-correct reference.

The reference looks at the whole list of events at once; the incremental
code sees them one by one, in any order. Hypothesis drives both with random
streams across DST changes in several time zones.
"""

from __future__ import annotations

import itertools
import zoneinfo
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from achievements.progress import (
    Fact,
    Spec,
    apply_fact,
    composite_met,
    find_cycle,
    fold_in_memory,
    holds_in_period,
    measure,
    measure_tiered,
    peak,
    tier_reached,
)
from achievements.rules import Aggregation, Condition, Filter, Kind, Operator, Scope, distinct_key

ZONES = ["UTC", "America/New_York", "Europe/Lisbon", "Pacific/Chatham", "Asia/Kolkata"]
# Around the March 2026 DST changes (New York 8 March, Lisbon 29 March).
BASE = datetime(2026, 3, 1, tzinfo=UTC)


def fold(spec: Spec, facts: list[Fact], time_zone: str) -> dict:
    """Apply facts one at a time, answering all-time distinct newness as the engine would."""
    state: dict = {}
    seen: set[str] = set()
    for fact in facts:
        state = fold_in_memory(spec, state, fact, time_zone, seen)
    return state


def visit(day: float, **payload) -> Fact:
    return Fact("visit.created", payload, BASE + timedelta(days=day))


# --- unit tests --------------------------------------------------------------


def test_sum_max_min_of_a_numeric_field():
    facts = [visit(0, km=3), visit(1, km=7.5), visit(2, km="x"), visit(3)]
    for aggregation, operator, expected in [
        (Aggregation.SUM, Operator.GTE, Decimal("10.5")),
        (Aggregation.MAX, Operator.GTE, Decimal("7.5")),
        (Aggregation.MIN, Operator.LTE, Decimal(3)),
    ]:
        spec = Spec(
            1,
            Decimal(10),
            event_type="visit.created",
            aggregation=aggregation,
            field="km",
            operator=operator,
        )
        result = measure(spec, fold(spec, facts, "UTC"), BASE, "UTC")
        assert result.value == expected, aggregation


def test_payload_filters_combine_with_all_and_any():
    long_mobile = Filter.from_data(
        {
            "all": [
                {"field": "duration_seconds", "op": ">=", "value": 600},
                {
                    "any": [
                        {"field": "source", "op": "==", "value": "mobile"},
                        {"field": "source", "op": "==", "value": "watch"},
                    ]
                },
            ]
        }
    )
    spec = Spec(1, Decimal(2), event_type="visit.created", filter=long_mobile)
    facts = [
        visit(0, duration_seconds=900, source="mobile"),
        visit(0, duration_seconds=100, source="mobile"),
        visit(0, duration_seconds=900, source="web"),
        visit(0, duration_seconds="900", source="watch"),  # a string is not a number
        visit(0, duration_seconds=601, source="watch"),
    ]
    result = measure(spec, fold(spec, facts, "UTC"), BASE, "UTC")
    assert (result.value, result.met) == (Decimal(2), True)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"some": []}, 'a filter is {"all": [...]} or {"any": [...]}'),
        ({"all": "x"}, "must hold a list"),
        ({"all": [{"field": "a b", "op": "==", "value": 1}]}, "field must be a payload key"),
        ({"all": [{"field": "a", "op": "~", "value": 1}]}, "unknown operator '~'"),
        ({"all": [{"field": "a", "op": "==", "value": [1]}]}, "value must be a string"),
    ],
)
def test_a_bad_filter_is_refused_with_the_part_named(data, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("{", r"\{")):
        Filter.from_data(data)


def test_a_single_event_over_the_threshold():
    spec = Spec(
        1, Decimal(10), event_type="visit.created", aggregation=Aggregation.SINGLE, field="km"
    )
    assert not measure(spec, fold(spec, [visit(0, km=6), visit(1, km=6)], "UTC"), BASE, "UTC").met
    state = fold(spec, [visit(0, km=6), visit(1, km=10.2)], "UTC")
    assert measure(spec, state, BASE, "UTC").met


def test_calendar_week_in_the_users_time_zone():
    spec = Spec(1, Decimal(3), event_type="visit.created", scope=Scope.WEEK)
    # Sunday 23:30 in New York is already Monday in UTC: the same facts make a
    # full week for one zone and two partial weeks for the other.
    sunday_night = datetime(2026, 3, 16, 3, 30, tzinfo=UTC)  # Sun 15 March 23:30 in New York
    facts = [
        Fact("visit.created", {}, moment)
        for moment in (
            datetime(2026, 3, 10, 12, tzinfo=UTC),
            datetime(2026, 3, 12, 12, tzinfo=UTC),
            sunday_night,
        )
    ]
    assert measure(
        spec, fold(spec, facts, "America/New_York"), sunday_night, "America/New_York"
    ).met
    assert not measure(spec, fold(spec, facts, "UTC"), sunday_night, "UTC").met


def test_rolling_window_counts_the_last_n_days():
    spec = Spec(1, Decimal(3), event_type="visit.created", scope=Scope.ROLLING, window_days=7)
    facts = [visit(0), visit(6), visit(13)]
    state = fold(spec, facts, "UTC")
    assert not measure(spec, state, BASE + timedelta(days=13), "UTC").met
    state = apply_fact(spec, state, visit(5), "UTC")  # late, and fills a window
    result = measure(spec, state, BASE + timedelta(days=6), "UTC")
    assert result.met and result.text == "3 of 3 times in the last 7 days"


def test_streaks_keep_current_and_longest_and_accept_late_events():
    spec = Spec(1, Decimal(4), kind=Kind.STREAK, event_type="visit.created")
    state = fold(spec, [visit(0), visit(1), visit(3), visit(4), visit(10)], "UTC")
    result = measure(spec, state, BASE + timedelta(days=10, hours=5), "UTC")
    assert (result.current_streak, result.longest_streak, result.met) == (1, 2, False)
    state = apply_fact(spec, state, visit(2), "UTC")  # the missing day arrives late
    result = measure(spec, state, BASE + timedelta(days=11), "UTC")
    assert (result.current_streak, result.longest_streak, result.met) == (1, 5, True)
    assert result.text == "streak 1 of 4 days (longest 5)"


def test_weekly_streaks():
    spec = Spec(1, Decimal(3), kind=Kind.STREAK, event_type="visit.created", streak_unit="week")
    state = fold(spec, [visit(0), visit(7), visit(9), visit(14)], "UTC")
    assert measure(spec, state, BASE + timedelta(days=15), "UTC").met


def test_sequences_in_order_within_the_window():
    spec = Spec(
        1,
        Decimal(3),
        kind=Kind.SEQUENCE,
        steps=("profile.completed", "tutorial.finished", "project.created"),
        window_days=7,
    )

    def step(name: str, day: float) -> Fact:
        return Fact(name, {}, BASE + timedelta(days=day))

    state = fold(
        spec,
        [step("tutorial.finished", 0), step("profile.completed", 1), step("project.created", 2)],
        "UTC",
    )
    assert measure(spec, state, BASE, "UTC").text == "step 1 of 3"  # wrong order
    state = apply_fact(spec, state, step("tutorial.finished", 1.5), "UTC")
    assert measure(spec, state, BASE, "UTC").met
    slow = fold(
        spec,
        [step("profile.completed", 0), step("tutorial.finished", 3), step("project.created", 8)],
        "UTC",
    )
    assert measure(spec, slow, BASE, "UTC").text == "step 2 of 3"


def test_composites_cycles_and_tiers():
    assert composite_met("all", [True, True]) and not composite_met("all", [True, False])
    assert composite_met("any", [False, True]) and not composite_met("any", [])
    assert find_cycle({"a": ["b"], "b": ["c"], "c": []}) is None
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["a"]}) == ["a", "a"]
    tiers = [("bronze", Decimal(5)), ("silver", Decimal(20)), ("gold", Decimal(50))]
    assert tier_reached(Decimal(4), Operator.GTE, tiers) == 0
    assert tier_reached(Decimal(20), Operator.GTE, tiers) == 2
    assert tier_reached(Decimal(99), Operator.GTE, tiers) == 3
    assert tier_reached(Decimal(20), Operator.GT, tiers) == 1


def test_tiered_measure_points_at_the_next_tier():
    spec = Spec(1, Decimal(2), event_type="visit.created", label="visits")
    tiers = [("Bronze", Decimal(2)), ("Silver", Decimal(5)), ("Gold", Decimal(10))]
    state = fold(spec, [visit(day) for day in range(3)], "UTC")
    level, towards = measure_tiered(spec, state, BASE, "UTC", tiers)
    assert level == 1
    assert (towards.text, towards.target, towards.met) == ("3 of 5 visits for Silver", 5, False)
    state = fold(spec, [visit(day) for day in range(12)], "UTC")
    level, top = measure_tiered(spec, state, BASE, "UTC", tiers)
    assert (level, top.met, top.text) == (3, True, "12 of 10 visits")


def test_a_weekly_rule_holds_per_week_for_repeatable_badges():
    spec = Spec(1, Decimal(3), event_type="visit.created", scope=Scope.WEEK)
    # 2026-03-02 is a Monday: three visits that week, one the week after.
    state = fold(spec, [visit(1), visit(2), visit(3), visit(8)], "UTC")
    assert holds_in_period(spec, state, "2026-W10")
    assert not holds_in_period(spec, state, "2026-W11")
    assert not holds_in_period(spec, state, "2026-W09")
    late = BASE + timedelta(days=8)
    assert measure(spec, state, late, "UTC").met  # latched: some week met it
    assert not measure(spec, state, late, "UTC", latched=False).met  # but not this week


# --- the reference evaluator ----------------------------------------------------


def local_day(fact: Fact, time_zone: str) -> date:
    return fact.occurred_at.astimezone(zoneinfo.ZoneInfo(time_zone)).date()


def reference_aggregate_met(spec: Spec, facts: list[Fact], time_zone: str) -> bool:
    """Is there any window whose aggregate, over all its events, meets the threshold?"""
    return any(
        spec.operator.holds(value, spec.threshold)
        for value in reference_windows(spec, facts, time_zone).values()
    )


def reference_windows(spec: Spec, facts: list[Fact], time_zone: str) -> dict[object, Decimal]:
    """Every non-empty window's aggregate over all its events, by window."""
    relevant = [
        f for f in facts if f.event_type == spec.event_type and spec.filter.matches(f.payload)
    ]
    if spec.aggregation is not Aggregation.COUNT:
        relevant = [f for f in relevant if f.payload.get(spec.field) is not None]

    def aggregate(group: list[Fact]) -> Decimal | None:
        if not group:
            return None
        if spec.aggregation is Aggregation.COUNT:
            return Decimal(len(group))
        if spec.aggregation is Aggregation.DISTINCT:
            return Decimal(len({distinct_key(f.payload[spec.field]) for f in group}))
        numbers = [Decimal(str(f.payload[spec.field])) for f in group]
        return {
            Aggregation.SUM: sum(numbers, Decimal(0)),
            Aggregation.MAX: max(numbers),
            Aggregation.MIN: min(numbers),
        }[spec.aggregation]

    windows: dict[object, list[Fact]] = {}
    if spec.scope is Scope.ALL_TIME:
        windows["all"] = relevant
    elif spec.scope is Scope.ROLLING:
        days = sorted({local_day(f, time_zone) for f in relevant})
        if days:
            end = days[0]
            while end <= days[-1] + timedelta(days=spec.window_days):
                start = end - timedelta(days=spec.window_days - 1)
                windows[end] = [f for f in relevant if start <= local_day(f, time_zone) <= end]
                end += timedelta(days=1)
    else:

        def period(fact: Fact) -> str:
            day = local_day(fact, time_zone)
            if spec.scope is Scope.DAY:
                return day.isoformat()
            if spec.scope is Scope.WEEK:
                year, week, _ = day.isocalendar()
                return f"{year}-W{week:02d}"
            return f"{day.year}-{day.month:02d}"

        for fact in relevant:
            windows.setdefault(period(fact), []).append(fact)
    values = {key: aggregate(window) for key, window in windows.items()}
    return {key: value for key, value in values.items() if value is not None}


def reference_longest_streak(facts: list[Fact], time_zone: str, unit: str) -> int:
    numbers = set()
    for fact in facts:
        day = local_day(fact, time_zone)
        numbers.add(
            day.toordinal()
            if unit == "day"
            else (day - timedelta(days=day.weekday())).toordinal() // 7
        )
    longest = 0
    for number in numbers:
        if number - 1 not in numbers:
            length = 1
            while number + length in numbers:
                length += 1
            longest = max(longest, length)
    return longest


def reference_sequence_met(steps: tuple[str, ...], facts: list[Fact], window_days: int) -> bool:
    by_step = [[f.occurred_at for f in facts if f.event_type == name] for name in steps]
    for chain in itertools.product(*by_step):
        in_order = all(a < b for a, b in itertools.pairwise(chain))
        # A window of 0 days means no limit.
        within = window_days == 0 or chain[-1] - chain[0] <= timedelta(days=window_days)
        if in_order and within:
            return True
    return False


# --- properties --------------------------------------------------------------------

moments = st.floats(min_value=0, max_value=60 * 24 * 45).map(
    lambda minutes: BASE + timedelta(minutes=round(minutes))
)
payloads: st.SearchStrategy[dict] = st.one_of(
    st.just({}),
    st.fixed_dictionaries({"n": st.integers(0, 9)}),
    st.fixed_dictionaries({"n": st.integers(0, 9), "source": st.sampled_from(["web", "app"])}),
)
facts_strategy = st.lists(
    st.builds(Fact, st.sampled_from(["visit.created", "image.posted"]), payloads, moments),
    max_size=40,
)
# Comparisons that can only become true as events arrive, so "ever met" and
# "met by the final set" agree (see achievements/progress.py).
monotone = st.sampled_from(
    [
        (Aggregation.COUNT, Operator.GTE),
        (Aggregation.COUNT, Operator.GT),
        (Aggregation.DISTINCT, Operator.GTE),
        (Aggregation.SUM, Operator.GTE),
        (Aggregation.MAX, Operator.GTE),
        (Aggregation.MIN, Operator.LTE),
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    facts=facts_strategy,
    kind=monotone,
    scope=st.sampled_from(list(Scope)),
    window=st.integers(1, 10),
    threshold=st.integers(1, 12),
    zone=st.sampled_from(ZONES),
    order=st.randoms(use_true_random=False),
    filtered=st.booleans(),
)
def test_aggregates_match_the_reference_in_any_order(
    facts, kind, scope, window, threshold, zone, order, filtered
):
    aggregation, operator = kind
    spec = Spec(
        1,
        Decimal(threshold),
        event_type="visit.created",
        aggregation=aggregation,
        field="n",
        operator=operator,
        scope=scope,
        window_days=window,
        filter=Filter.from_data({"all": [{"field": "source", "op": "==", "value": "app"}]})
        if filtered
        else Filter(),
    )
    shuffled = facts[:]
    order.shuffle(shuffled)
    now = BASE + timedelta(days=50)
    in_order = measure(
        spec, fold(spec, sorted(facts, key=lambda f: f.occurred_at), zone), now, zone
    )
    any_order = measure(spec, fold(spec, shuffled, zone), now, zone)
    assert any_order == in_order
    assert any_order.met == reference_aggregate_met(spec, facts, zone)


@settings(max_examples=300, deadline=None)
@given(
    facts=facts_strategy,
    aggregation=st.sampled_from(
        [Aggregation.COUNT, Aggregation.DISTINCT, Aggregation.SUM, Aggregation.MAX]
    ),
    scope=st.sampled_from(list(Scope)),
    window=st.integers(1, 10),
    zone=st.sampled_from(ZONES),
    order=st.randoms(use_true_random=False),
)
def test_tiers_and_periods_match_the_reference_in_any_order(
    facts, aggregation, scope, window, zone, order
):
    """Tiers are judged on the best window ever; repeatable badges on each period alone."""
    spec = Spec(
        1,
        Decimal(2),
        event_type="visit.created",
        aggregation=aggregation,
        field="n",
        scope=scope,
        window_days=window,
    )
    shuffled = facts[:]
    order.shuffle(shuffled)
    state = fold(spec, shuffled, zone)
    windows = reference_windows(spec, facts, zone)
    assert peak(spec, state) == max(windows.values(), default=Decimal(0))
    tiers = [("Bronze", Decimal(2)), ("Silver", Decimal(4)), ("Gold", Decimal(8))]
    best = max(windows.values(), default=Decimal(0))
    assert tier_reached(peak(spec, state), spec.operator, tiers) == sum(
        1 for _, threshold in tiers if best >= threshold
    )
    if scope in (Scope.DAY, Scope.WEEK, Scope.MONTH):
        for period, value in windows.items():
            assert holds_in_period(spec, state, str(period)) == (value >= spec.threshold)


@settings(max_examples=300, deadline=None)
@given(
    facts=facts_strategy,
    length=st.integers(1, 6),
    unit=st.sampled_from(["day", "week"]),
    zone=st.sampled_from(ZONES),
    order=st.randoms(use_true_random=False),
)
def test_streaks_match_the_reference_in_any_order(facts, length, unit, zone, order):
    spec = Spec(1, Decimal(length), kind=Kind.STREAK, event_type="visit.created", streak_unit=unit)
    shuffled = facts[:]
    order.shuffle(shuffled)
    # Twice over: a repeated delivery of the same facts changes nothing.
    result = measure(spec, fold(spec, shuffled + shuffled, zone), BASE, zone)
    visits = [f for f in facts if f.event_type == "visit.created"]
    longest = reference_longest_streak(visits, zone, unit)
    assert result.longest_streak == longest
    assert result.met == (longest >= length)


@settings(max_examples=300, deadline=None)
@given(
    facts=st.lists(
        st.builds(
            Fact, st.sampled_from(["a.done", "b.done", "c.done", "x.other"]), st.just({}), moments
        ),
        max_size=12,
    ),
    window=st.integers(0, 20),
    order=st.randoms(use_true_random=False),
)
def test_sequences_match_the_reference_in_any_order(facts, window, order):
    steps = ("a.done", "b.done", "c.done")
    spec = Spec(1, Decimal(3), kind=Kind.SEQUENCE, steps=steps, window_days=window)
    shuffled = facts[:]
    order.shuffle(shuffled)
    assert measure(spec, fold(spec, shuffled, "UTC"), BASE, "UTC").met == (
        reference_sequence_met(steps, facts, window)
    )


def test_a_condition_on_a_missing_field_does_not_match():
    assert not Condition("km", Operator.GTE, 5).matches({})


dense_moments = st.integers(0, 60 * 24 * 12).map(lambda minutes: BASE + timedelta(minutes=minutes))


@settings(max_examples=400, deadline=None)
@given(
    facts=st.lists(
        st.builds(
            Fact,
            st.just("visit.created"),
            st.fixed_dictionaries({"n": st.integers(0, 5)}),
            dense_moments,
        ),
        max_size=15,
    ),
    window=st.integers(2, 5),
    threshold=st.integers(2, 6),
    aggregation=st.sampled_from([Aggregation.COUNT, Aggregation.DISTINCT, Aggregation.SUM]),
    zone=st.sampled_from(ZONES),
    order=st.randoms(use_true_random=False),
)
def test_rolling_windows_fill_correctly_when_events_arrive_late(
    facts, window, threshold, aggregation, zone, order
):
    """Dense days and short windows, so a late event often completes a window that
    ends on a later day."""
    spec = Spec(
        1,
        Decimal(threshold),
        event_type="visit.created",
        aggregation=aggregation,
        field="n",
        scope=Scope.ROLLING,
        window_days=window,
    )
    shuffled = facts[:]
    order.shuffle(shuffled)
    result = measure(spec, fold(spec, shuffled, zone), BASE, zone)
    assert result.met == reference_aggregate_met(spec, facts, zone)
