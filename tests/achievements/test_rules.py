"""The pure rule engine: no database, exhaustive where it is cheap."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from achievements import rules
from achievements.rules import Aggregation, Rule

COUNT_VISITS = Rule(
    id=1, event_type="visit.created", aggregation=Aggregation.COUNT, threshold=Decimal(3)
)
DISTINCT_PLACES = Rule(
    id=2,
    event_type="visit.created",
    aggregation=Aggregation.DISTINCT,
    threshold=Decimal(5),
    field="place_id",
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
    assert rules.observe(COUNT_VISITS, "image.posted", {}) is None


def test_a_distinct_rule_ignores_events_without_its_field():
    assert rules.observe(DISTINCT_PLACES, "visit.created", {"other": 1}) is None
    assert rules.observe(DISTINCT_PLACES, "visit.created", {"place_id": None}) is None


def test_distinct_keys_are_equal_for_equal_values_and_keep_types_apart():
    assert rules.distinct_key(7) == rules.distinct_key(7)
    assert rules.distinct_key(7) != rules.distinct_key("7")
    assert rules.distinct_key({"a": 1, "b": 2}) == rules.distinct_key({"b": 2, "a": 1})
    assert len(rules.distinct_key("x" * 10_000)) == 64


def test_count_advances_by_one_per_event_and_distinct_only_for_new_values():
    assert rules.advance(COUNT_VISITS, Decimal(2)) == 3
    assert rules.advance(DISTINCT_PLACES, Decimal(2), is_new_value=True) == 3
    assert rules.advance(DISTINCT_PLACES, Decimal(2), is_new_value=False) == 2


def test_a_badge_is_met_only_when_every_requirement_holds():
    status = rules.badge_status([(COUNT_VISITS, Decimal(3)), (DISTINCT_PLACES, Decimal(4))])
    assert not status.met
    assert status.current == 7 and status.target == 8
    assert status.percent == 87
    status = rules.badge_status([(COUNT_VISITS, Decimal(3)), (DISTINCT_PLACES, Decimal(5))])
    assert status.met and status.percent == 100


def test_overshooting_one_requirement_does_not_hide_another_being_short():
    status = rules.badge_status([(COUNT_VISITS, Decimal(300)), (DISTINCT_PLACES, Decimal(0))])
    assert status.current == 3
    assert status.percent == 37


def test_an_unmet_badge_never_shows_a_full_bar():
    almost = Rule(id=3, event_type="x", aggregation=Aggregation.COUNT, threshold=Decimal(1000))
    assert rules.badge_status([(almost, Decimal(999))]).percent == 99


def test_a_badge_without_requirements_is_never_met():
    assert not rules.badge_status([]).met


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
    count, distinct, seen = Decimal(0), Decimal(0), set()
    for event_type, payload in stream:
        if rules.observe(COUNT_VISITS, event_type, payload):
            count = rules.advance(COUNT_VISITS, count)
        observation = rules.observe(DISTINCT_PLACES, event_type, payload)
        if observation:
            is_new = observation.distinct_key not in seen
            seen.add(observation.distinct_key)
            distinct = rules.advance(DISTINCT_PLACES, distinct, is_new_value=is_new)

    visits = [payload for event_type, payload in stream if event_type == "visit.created"]
    expected_places = {(type(p["place_id"]), p["place_id"]) for p in visits if "place_id" in p}
    assert count == len(visits)
    assert distinct == len(expected_places)
    assert rules.is_met(COUNT_VISITS, count) == (len(visits) >= 3)
    assert rules.is_met(DISTINCT_PLACES, distinct) == (len(expected_places) >= 5)
