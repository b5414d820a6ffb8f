"""The checks for values from outside: text, dates, JSON nesting and storable JSON."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from project.inputs import (
    MAX_JSON_DEPTH,
    date_problem,
    json_depth_problem,
    json_value_problem,
    text_problem,
)


def test_text_with_a_nul_character_or_too_long_is_refused():
    assert text_problem("a\x00b") == "must not contain NUL characters"
    assert text_problem("x" * 129, max_length=128) == "must be at most 128 characters"
    assert text_problem("x" * 128, max_length=128) is None
    assert text_problem("ünïcødé 😀") is None


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (date(1, 1, 1), True),
        (date(1999, 12, 31), True),
        (date(2000, 1, 1), False),
        (date(2999, 12, 31), False),
        (date(3000, 1, 1), True),
        (date(9999, 12, 31), True),
        (datetime(9999, 12, 31, 23, 59, tzinfo=UTC), True),
        (datetime(2026, 11, 21, 9, 30, tzinfo=UTC), False),
    ],
)
def test_dates_must_lie_between_2000_and_2999(value, problem):
    assert (date_problem(value) == "must be a date between 2000-01-01 and 2999-12-31") is problem


def _depth(value: Any) -> int:
    """The reference: how deep a parsed JSON value nests, counting arrays and objects."""
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


# Strings full of what the scan must not mistake for structure.
tricky_text = st.text(alphabet='[]{}"\\ab\x00\u00e9', max_size=8)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | tricky_text,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(tricky_text, children, max_size=3)
    ),
    max_leaves=60,
)


@given(value=json_values, max_depth=st.integers(min_value=0, max_value=8))
def test_the_depth_scan_agrees_with_the_parsed_value(value, max_depth):
    for text in (json.dumps(value), json.dumps(value, ensure_ascii=False, indent=1)):
        too_deep = json_depth_problem(text, max_depth=max_depth) is not None
        assert too_deep == (_depth(value) > max_depth)


@given(value=json_values, max_depth=st.integers(min_value=0, max_value=8))
def test_the_value_walk_finds_nesting_as_deep_as_the_reference_does(value, max_depth):
    found = json_value_problem(value, max_depth=max_depth)
    if _depth(value) > max_depth:
        assert found is not None  # too deep, or a NUL character met on the way down
    elif found is not None:
        assert found[1].endswith("must not contain NUL characters")


def test_a_hundred_thousand_levels_are_refused_without_parsing():
    assert json_depth_problem("[" * 100_000 + "]" * 100_000) == (
        f"is nested too deeply (more than {MAX_JSON_DEPTH} levels)"
    )
    assert json_depth_problem('{"a": ' * 100_000) is not None  # not even valid JSON
    assert json_depth_problem('["' + "[" * 100_000 + '"]') is None  # only a string


@pytest.mark.parametrize(
    ("value", "found"),
    [
        ({"tiers": [{"name": "a\x00"}]}, (".tiers[0].name", "must not contain NUL characters")),
        ({"a\x00": 1}, ("", "keys must not contain NUL characters")),
        (
            ["\ud800"],
            ("[0]", "must not contain unpaired surrogates (\\ud800-\\udfff)"),
        ),
        ({"value": float("inf")}, (".value", "must be a finite number")),
        ({"value": float("nan")}, (".value", "must be a finite number")),
        ({"name": "ünïcødé 😀", "n": 1e300, "ok": [True, None]}, None),
    ],
)
def test_a_parsed_value_the_database_could_not_store_is_found(value, found):
    assert json_value_problem(value) == found


def test_a_parsed_value_nested_too_deeply_is_found_where_it_goes_too_deep():
    assert json_value_problem([[["deep enough"]]], max_depth=3) is None
    assert json_value_problem([[[[]]]], max_depth=3) == (
        "[0][0][0]",
        "is nested too deeply (more than 3 levels)",
    )
