"""The pure rule engine: no database, exhaustive where it is cheap."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from achievements import progress, rules
from achievements.progress import Fact, Measure, Spec
from achievements.rules import Aggregation

COUNT_VISITS = Spec(id=1, threshold=Decimal(3), event_type="visit.created")
DISTINCT_PLACES = Spec(
    id=2,
    threshold=Decimal(5),
    event_type="visit.created",
    aggregation=Aggregation.DISTINCT,
    field="place_id",
)
NOW = datetime(2026, 3, 1, tzinfo=UTC)


def fact(event_type: str, payload: dict) -> Fact:
    return Fact(event_type, payload, NOW)


def value(spec: Spec, state: dict) -> Decimal:
    return progress.measure(spec, state, NOW, "UTC").value


def measured(spec: Spec, amount: int) -> Measure:
    return Measure(
        value=Decimal(amount),
        target=spec.threshold,
        met=spec.operator.holds(Decimal(amount), spec.threshold),
        text="",
    )


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("", "must not be empty"),
        ("visit created", "lower-case words"),
        ("Visit.Created", "lower-case words"),
        ("visit..created", "lower-case words"),
        (".visit", "lower-case words"),
        ("a" * 65, "at most 64 characters"),
        (42, "must be a string"),
    ],
)
def test_it_explains_why_an_event_type_name_is_unusable(value, problem):
    assert problem in (rules.event_type_problem(value) or "")


@pytest.mark.parametrize("value", ["visit.created", "image.posted", "lesson_2.done", "a"])
def test_it_accepts_dotted_lower_case_event_types(value):
    assert rules.event_type_problem(value) is None


def test_an_event_of_another_type_is_not_observed():
    assert not progress.relevant(COUNT_VISITS, fact("image.posted", {}))


def test_a_distinct_rule_ignores_events_without_its_field():
    assert not progress.relevant(DISTINCT_PLACES, fact("visit.created", {"other": 1}))
    assert not progress.relevant(DISTINCT_PLACES, fact("visit.created", {"place_id": None}))


def test_distinct_keys_are_equal_for_equal_values_and_keep_types_apart():
    assert rules.distinct_key(7) == rules.distinct_key(7)
    assert rules.distinct_key(7) != rules.distinct_key("7")
    assert rules.distinct_key({"a": 1, "b": 2}) == rules.distinct_key({"b": 2, "a": 1})
    assert len(rules.distinct_key("x" * 10_000)) == 64


def test_count_advances_by_one_per_event_and_distinct_only_for_new_values():
    visit = fact("visit.created", {"place_id": 1})
    two = {"b": {"all": "2"}}
    assert value(COUNT_VISITS, progress.apply_fact(COUNT_VISITS, two, visit, "UTC")) == 3
    new = progress.apply_fact(DISTINCT_PLACES, two, visit, "UTC", is_new_key=True)
    seen = progress.apply_fact(DISTINCT_PLACES, two, visit, "UTC", is_new_key=False)
    assert (value(DISTINCT_PLACES, new), value(DISTINCT_PLACES, seen)) == (3, 2)


def test_a_badge_is_met_only_when_every_requirement_holds():
    status = progress.badge_status([measured(COUNT_VISITS, 3), measured(DISTINCT_PLACES, 4)])
    assert not status.met
    assert status.current == 7 and status.target == 8
    assert status.percent == 87
    status = progress.badge_status([measured(COUNT_VISITS, 3), measured(DISTINCT_PLACES, 5)])
    assert status.met and status.percent == 100


def test_overshooting_one_requirement_does_not_hide_another_being_short():
    status = progress.badge_status([measured(COUNT_VISITS, 300), measured(DISTINCT_PLACES, 0)])
    assert status.current == 3
    assert status.percent == 37


def test_an_unmet_badge_never_shows_a_full_bar():
    almost = Spec(id=3, threshold=Decimal(1000), event_type="x")
    assert progress.badge_status([measured(almost, 999)]).percent == 99


def test_a_badge_without_requirements_is_never_met():
    assert not progress.badge_status([]).met


events = st.lists(
    st.tuples(
        st.sampled_from(["visit.created", "image.posted"]),
        st.one_of(
            st.fixed_dictionaries({"place_id": st.integers(0, 6)}),
            st.fixed_dictionaries({"place_id": st.sampled_from(["0", "1"])}),
            st.just({}),
        ),
    ),
    max_size=60,
)


@given(events)
def test_incremental_progress_matches_a_brute_force_count_over_the_history(stream):
    """Feeding events one at a time gives what counting the whole history gives."""
    count_state: dict = {}
    distinct_state: dict = {}
    seen: set[str] = set()
    for event_type, payload in stream:
        event = fact(event_type, payload)
        count_state = progress.apply_fact(COUNT_VISITS, count_state, event, "UTC")
        key = progress.key_for(DISTINCT_PLACES, event)
        distinct_state = progress.apply_fact(
            DISTINCT_PLACES, distinct_state, event, "UTC", is_new_key=key not in seen
        )
        if key is not None:
            seen.add(key)

    visits = [payload for event_type, payload in stream if event_type == "visit.created"]
    expected_places = {(type(p["place_id"]), p["place_id"]) for p in visits if "place_id" in p}
    count = progress.measure(COUNT_VISITS, count_state, NOW, "UTC")
    distinct = progress.measure(DISTINCT_PLACES, distinct_state, NOW, "UTC")
    assert count.value == len(visits)
    assert distinct.value == len(expected_places)
    assert count.met == (len(visits) >= 3)
    assert distinct.met == (len(expected_places) >= 5)


def test_a_badges_tiers_are_read_again_when_they_change():
    from achievements.models import Badge

    badge = Badge(key="steps", name="Steps", tiers=[{"name": "One", "threshold": 1}])
    assert badge.tier_list() == (("One", Decimal(1)),)
    assert badge.tier_list() is badge.tier_list()  # kept while the tiers stay
    badge.tiers[0]["threshold"] = 2  # changed in place
    assert badge.tier_list() == (("One", Decimal(2)),)
    badge.tiers = [*badge.tiers, {"name": "Two", "threshold": "4.5"}]
    assert badge.tier_list() == (("One", Decimal(2)), ("Two", Decimal("4.5")))
    badge.tiers = None
    assert badge.tier_list() == ()
