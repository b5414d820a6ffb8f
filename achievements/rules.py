"""The vocabulary of badge rules: kinds, aggregations, operators, scopes, filters.

Pure: nothing here touches the ORM or does I/O. achievements.progress folds
events into per-requirement state with these; the engine (achievements.actions)
only loads rows, locks them and writes the answers back, so every rule kind
can be tested exhaustively without a database.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Any

EVENT_TYPE_MAX_LENGTH = 64
# Dotted lower-case names such as "visit.created" or "lesson.finished".
EVENT_TYPE_PATTERN = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")
FIELD_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Aggregation(StrEnum):
    COUNT = "count"
    DISTINCT = "distinct"
    SUM = "sum"
    MAX = "max"
    MIN = "min"
    # One event whose field alone crosses the threshold ("a run over 10 km").
    SINGLE = "single"

    @property
    def label(self) -> str:
        return _AGGREGATION_LABELS[self]

    @property
    def needs_field(self) -> bool:
        return self is not Aggregation.COUNT

    @property
    def needs_number(self) -> bool:
        return self in {Aggregation.SUM, Aggregation.MAX, Aggregation.MIN, Aggregation.SINGLE}


_AGGREGATION_LABELS = {
    Aggregation.COUNT: "Count of events",
    Aggregation.DISTINCT: "Distinct values of a payload field",
    Aggregation.SUM: "Sum of a numeric payload field",
    Aggregation.MAX: "Largest value of a numeric payload field",
    Aggregation.MIN: "Smallest value of a numeric payload field",
    Aggregation.SINGLE: "One event whose field crosses the threshold",
}


class Operator(StrEnum):
    GTE = ">="
    GT = ">"
    LTE = "<="
    LT = "<"
    EQ = "=="
    NE = "!="

    @property
    def label(self) -> str:
        return {
            Operator.GTE: "at least (>=)",
            Operator.GT: "more than (>)",
            Operator.LTE: "at most (<=)",
            Operator.LT: "less than (<)",
            Operator.EQ: "exactly (==)",
            Operator.NE: "anything but (!=)",
        }[self]

    def holds(self, left: Any, right: Any) -> bool:
        """Compare, treating values of incomparable types as not matching."""
        try:
            if self is Operator.EQ:
                return bool(left == right)
            if self is Operator.NE:
                return bool(left != right)
            if isinstance(left, bool) or isinstance(right, bool):
                return False
            if self is Operator.GTE:
                return bool(left >= right)
            if self is Operator.GT:
                return bool(left > right)
            if self is Operator.LTE:
                return bool(left <= right)
            return bool(left < right)
        except TypeError:
            return False


class Scope(StrEnum):
    ALL_TIME = "all_time"
    DAY = "day"
    WEEK = "week"
    MONTH = "month"
    ROLLING = "rolling"

    @property
    def label(self) -> str:
        return {
            Scope.ALL_TIME: "All time",
            Scope.DAY: "Within one calendar day",
            Scope.WEEK: "Within one calendar week (Monday to Sunday)",
            Scope.MONTH: "Within one calendar month",
            Scope.ROLLING: "Within any N consecutive days",
        }[self]


class Kind(StrEnum):
    AGGREGATE = "aggregate"
    STREAK = "streak"
    SEQUENCE = "sequence"
    COMPOSITE = "composite"

    @property
    def label(self) -> str:
        return {
            Kind.AGGREGATE: "Aggregate of one event type",
            Kind.STREAK: "Streak of consecutive days or weeks",
            Kind.SEQUENCE: "Event types in order within a time window",
            Kind.COMPOSITE: "All or any of other badges",
        }[self]


def operators_for(kind: str, aggregation: str) -> tuple[Operator, ...]:
    """The comparisons a requirement of this kind can make, each meaning what it says.

    A requirement is met once the events known meet it, and more events can
    only meet more: so counts, distinct counts, sums, maxima and streaks are
    compared with >= or > ("at least", "more than"), minima with <= or <,
    and one single event's value with any comparison. A sequence is met when
    its steps happened in order and a composite when its badges are held:
    neither compares a number, so both take >= (the default) only.
    """
    if kind == Kind.AGGREGATE and aggregation == Aggregation.SINGLE:
        return tuple(Operator)
    if kind == Kind.AGGREGATE and aggregation == Aggregation.MIN:
        return (Operator.LTE, Operator.LT)
    if kind in (Kind.SEQUENCE, Kind.COMPOSITE):
        return (Operator.GTE,)
    return (Operator.GTE, Operator.GT)


def operator_problem(kind: str, aggregation: str, operator: str) -> str | None:
    """Why `operator` cannot be used by a requirement of this kind, or None."""
    allowed = operators_for(kind, aggregation)
    if operator in allowed:
        return None
    what = f"a {kind}" if kind != Kind.AGGREGATE else f"a {aggregation} requirement"
    names = " or ".join(str(o.value) for o in allowed)
    return f"{what[0].upper()}{what[1:]} is compared with {names}, not {operator}."


MAX_TIERS = 10
TIER_NAME_MAX_LENGTH = 40


def tiers_problem(tiers: Any) -> str | None:
    """What is wrong with a badge's tier list, or None.

    Tiers are [{"name": "Bronze", "threshold": 5}, ...]: at least two, each
    named once, thresholds non-negative numbers rising from one tier to the next.
    """
    if tiers in (None, []):
        return None
    if not isinstance(tiers, list):
        return 'give a list such as [{"name": "Bronze", "threshold": 5}, ...]'
    if not 2 <= len(tiers) <= MAX_TIERS:
        return f"give between 2 and {MAX_TIERS} tiers (a single level is a plain badge)"
    names: set[str] = set()
    previous: Decimal | None = None
    for number, tier in enumerate(tiers, start=1):
        if not isinstance(tier, dict) or set(tier) != {"name", "threshold"}:
            return f'tier {number} must be an object with exactly "name" and "threshold"'
        name = tier["name"]
        if not isinstance(name, str) or not name.strip():
            return f"tier {number} needs a name, e.g. Bronze"
        if len(name) > TIER_NAME_MAX_LENGTH:
            return f"tier {number}'s name is longer than {TIER_NAME_MAX_LENGTH} characters"
        if name in names:
            return f"the name {name!r} is used twice"
        names.add(name)
        threshold = numeric(tier["threshold"])
        if threshold is None or threshold < 0:
            return f"tier {number} ({name})'s threshold must be a number of at least 0"
        if previous is not None and threshold <= previous:
            return f"tier {number} ({name})'s threshold must be higher than the tier before it"
        previous = threshold
    return None


def tiered_requirement_problem(kind: str, aggregation: str, operator: str) -> str | None:
    """Why a requirement cannot be graded in tiers, or None.

    Tiers grade the best value a requirement ever reached, so they need a
    number that grows: a count, sum, maximum, distinct count, single-event
    value or streak, compared with >= or >.
    """
    if kind not in (Kind.AGGREGATE, Kind.STREAK):
        return "an aggregate or streak requirement, not a sequence or composite"
    if kind == Kind.AGGREGATE and aggregation == Aggregation.MIN:
        return "a value that grows; a minimum only shrinks"
    if operator not in (Operator.GTE, Operator.GT):
        return "a requirement compared with >= or >, so each tier is higher than the last"
    return None


@dataclass(frozen=True)
class Condition:
    """One payload comparison, e.g. duration_seconds >= 600 or source == "mobile"."""

    field: str
    operator: Operator
    value: Any

    def matches(self, payload: Mapping[str, Any]) -> bool:
        """Whether the payload's field compares as asked with the value.

        Only a value of the condition's own JSON type is compared: a missing
        field, a null, or a value of another type never matches, whatever
        the operator (`tag != "x"` matches the string tags other than "x",
        not `{"tag": 1}` nor a payload without a tag).
        """
        if self.field not in payload:
            return False
        actual = payload[self.field]
        expected = self.value
        if json_type(actual) != json_type(expected):
            return False
        if _is_number(actual):
            return self.operator.holds(Decimal(str(actual)), Decimal(str(expected)))
        return self.operator.holds(actual, expected)


@dataclass(frozen=True)
class Filter:
    """Conditions combined with all (and) or any (or); groups may nest."""

    mode: str = "all"
    terms: tuple[Condition | Filter, ...] = ()

    def matches(self, payload: Mapping[str, Any]) -> bool:
        if not self.terms:
            return True
        results = (term.matches(payload) for term in self.terms)
        return all(results) if self.mode == "all" else any(results)

    def conditions(self) -> Iterator[Condition]:
        """Every condition, nested groups included."""
        for term in self.terms:
            if isinstance(term, Condition):
                yield term
            else:
                yield from term.conditions()

    @classmethod
    def from_data(cls, data: Any) -> Filter:
        """Build from the stored JSON: {"all"|"any": [condition or group, ...]}.

        A condition is {"field": ..., "op": ..., "value": ...}. Raises
        ValueError with a message naming the part that is wrong.
        """
        if data in (None, {}, []):
            return cls()
        if not isinstance(data, dict) or len(data) != 1 or next(iter(data)) not in ("all", "any"):
            raise ValueError('a filter is {"all": [...]} or {"any": [...]}')
        mode, items = next(iter(data.items()))
        if not isinstance(items, list):
            raise ValueError(f'"{mode}" must hold a list of conditions')
        terms: list[Condition | Filter] = []
        for index, item in enumerate(items):
            if isinstance(item, dict) and set(item) == {"field", "op", "value"}:
                if not isinstance(item["field"], str) or not FIELD_PATTERN.match(item["field"]):
                    raise ValueError(f"condition {index + 1}: field must be a payload key")
                try:
                    operator = Operator(item["op"])
                except ValueError:
                    raise ValueError(
                        f"condition {index + 1}: unknown operator {item['op']!r}"
                    ) from None
                if not isinstance(item["value"], str | int | float | bool) or (
                    isinstance(item["value"], float) and item["value"] != item["value"]
                ):
                    raise ValueError(
                        f"condition {index + 1}: value must be a string, number or boolean"
                    )
                terms.append(Condition(item["field"], operator, item["value"]))
            else:
                terms.append(cls.from_data(item))
        return cls(mode=mode, terms=tuple(terms))


PAYLOAD_TYPES = ("number", "string", "boolean")


def json_type(value: Any) -> str:
    """The JSON type of a payload value: number, string, boolean, object, array or null."""
    if isinstance(value, bool):
        return "boolean"
    if _is_number(value):
        return "number"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    return "array" if isinstance(value, list | tuple) else "object"


def type_problems(
    filter: Filter,
    aggregation: Aggregation | None,
    field: str,
    field_types: Mapping[str, tuple[str, str]],
) -> dict[str, str]:
    """Comparisons and aggregations that can never work given the payload's field types.

    `field_types` maps a payload field to (its type, where that is known from,
    e.g. "in visit.created events"). A filter comparing a number field with a
    string never matches, so it is refused instead of silently counting nothing.
    """
    problems: dict[str, str] = {}
    for condition in filter.conditions():
        known = field_types.get(condition.field)
        if known is None:
            continue
        kind, where = known
        given = json_type(condition.value)
        if kind in PAYLOAD_TYPES and given != kind:
            problems["filters"] = (
                f"Filter: {condition.field} is a {kind} {where}, so compare it with a {kind}, "
                f"not the {given} {json.dumps(condition.value)}."
            )
            break
        ordering = condition.operator not in (Operator.EQ, Operator.NE)
        if kind == "boolean" and ordering:
            problems["filters"] = (
                f"Filter: {condition.field} is a boolean {where}; compare it with == or !=."
            )
            break
    known = field_types.get(field) if field else None
    if aggregation is not None and aggregation.needs_number and known and known[0] != "number":
        problems["field"] = (
            f"{field} is a {known[0]} {known[1]}; {aggregation.label.lower()} needs a number."
        )
    return problems


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | Decimal) and not isinstance(value, bool)


# The largest magnitude a progress value can hold: a numeric(18, 4) column holds
# 14 integer digits; SQLite keeps it as a double, exact for these integers.
STORED_NUMBER_MAX = Decimal(10**14 - 1)


def storable(value: Decimal) -> Decimal:
    """A measured value as its column can hold it: a running sum past the limit
    stays at the limit, which still compares the same with every threshold
    the column can hold."""
    if value > STORED_NUMBER_MAX:
        return STORED_NUMBER_MAX
    if value < -STORED_NUMBER_MAX:
        return -STORED_NUMBER_MAX
    return value


def numeric(value: Any) -> Decimal | None:
    """A payload value as a number, or None if it is not one (booleans are not numbers)."""
    if not _is_number(value):
        return None
    number = Decimal(str(value))
    return number if number.is_finite() else None


def event_type_problem(value: object) -> str | None:
    """Why `value` is not a usable event type name, or None when it is."""
    if not isinstance(value, str):
        return "must be a string"
    if not value:
        return "must not be empty"
    if len(value) > EVENT_TYPE_MAX_LENGTH:
        return f"must be at most {EVENT_TYPE_MAX_LENGTH} characters (got {len(value)})"
    if not EVENT_TYPE_PATTERN.match(value):
        return (
            "must be lower-case words of letters, digits and '_' joined by dots, "
            "such as 'visit.created'"
        )
    return None


def distinct_key(value: Any) -> str:
    """A fixed-size key for a payload value: equal JSON values give equal keys.

    Types are kept apart on purpose: the place 7 and the place "7" are
    different values, as they would be in the producer's own database.
    """
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    # surrogatepass: text the recorder would refuse cannot reach here, but a
    # hash must never be the thing that fails.
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()
