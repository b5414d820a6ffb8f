"""Incremental progress for every rule kind. Pure: plain values in, plain values out.

Each requirement of each user has a small JSON state. `apply_fact` folds one
event into it without looking at any other event; `measure` reads it. Events
may arrive in any order and more than once (the engine drops exact
duplicates before they get here): the state is built so that windows,
streaks and sequences come out the same whatever the order.

State formats (all JSON-serialisable):
- aggregate: {"b": {period: value}, "k": {period: [keys]}, "p": best rolling window, "met": bool}
  ("k" only for distinct counts inside day/week/month/rolling scopes; an
  all-time distinct count asks the engine whether a key is new instead, as
  that set can grow without bound).
- streak: {"r": [[first, last], ...] sorted, disjoint runs of period numbers, "met": bool}
- sequence: {"t": [[epoch seconds, ...] per step, sorted], "met": bool}

`met` latches: a requirement counts as met once any window satisfied it. For
comparisons that can only become true as events arrive (counts, sums of
non-negative values and maxima with >= or >, minima with <= or <) that is the
same as asking the final set of events; for the others it is "satisfied at
some point", which is what a badge that is never revoked means anyway.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from achievements import periods
from achievements.rules import (
    Aggregation,
    Filter,
    Kind,
    Operator,
    Scope,
    distinct_key,
    numeric,
)


# The words a measure is described in. The core stays free of Django: the app
# installs Django's gettext here when it starts (achievements.apps), so a text
# comes out in the language active where it is built; by itself it is English.
def _same(message: str) -> str:
    return message


_translate: Callable[[str], str] = _same


def install_translator(translate: Callable[[str], str]) -> None:
    global _translate
    _translate = translate


def _(message: str) -> str:
    return _translate(message)


State = dict[str, Any]
MAX_ROLLING_DAYS = 366


@dataclass(frozen=True)
class Spec:
    """A requirement, whatever its kind, as plain data."""

    id: int
    threshold: Decimal
    kind: Kind = Kind.AGGREGATE
    event_type: str = ""
    aggregation: Aggregation = Aggregation.COUNT
    field: str = ""
    operator: Operator = Operator.GTE
    scope: Scope = Scope.ALL_TIME
    window_days: int = 0  # rolling scopes and sequences
    streak_unit: str = "day"  # "day" or "week"
    steps: tuple[str, ...] = ()  # sequences
    filter: Filter = Filter()
    label: str = ""
    composite_mode: str = "all"  # composites: all or any of `parts`
    parts: tuple[int, ...] = ()  # composites: the badges it is made of

    def watches(self, event_type: str) -> bool:
        if self.kind is Kind.SEQUENCE:
            return event_type in self.steps
        return event_type == self.event_type


@dataclass(frozen=True)
class Fact:
    """One event as the rules see it."""

    event_type: str
    payload: Mapping[str, Any]
    occurred_at: datetime


@dataclass(frozen=True)
class Measure:
    value: Decimal
    target: Decimal
    met: bool
    text: str
    current_streak: int = 0
    longest_streak: int = 0


def keeps_keys(spec: Spec) -> bool:
    """Whether the engine keeps this requirement's distinct values in their own table
    (all-time distinct counts: their state holds only the count)."""
    return (
        spec.kind is Kind.AGGREGATE
        and spec.aggregation is Aggregation.DISTINCT
        and spec.scope is Scope.ALL_TIME
    )


def key_for(spec: Spec, fact: Fact) -> str | None:
    """For an all-time distinct count: the key the engine must check for newness."""
    if (
        keeps_keys(spec)
        and spec.watches(fact.event_type)
        and spec.filter.matches(fact.payload)
        and fact.payload.get(spec.field) is not None
    ):
        return distinct_key(fact.payload[spec.field])
    return None


def apply_fact(
    spec: Spec,
    state: State | None,
    fact: Fact,
    time_zone: str,
    *,
    is_new_key: bool = True,
    in_place: bool = False,
) -> State:
    """The state after one more event. Returns a new dict and leaves `state` as it
    was, unless `in_place`: then `state` itself is changed (and returned).

    `is_new_key` is only read for all-time distinct counts (see key_for).
    """
    if state is None:
        state = {}
    elif not in_place:
        state = _copy(state)
    if not spec.watches(fact.event_type) or not spec.filter.matches(fact.payload):
        return state
    if spec.kind is Kind.AGGREGATE:
        _apply_aggregate(spec, state, fact, time_zone, is_new_key)
    elif spec.kind is Kind.STREAK:
        _apply_streak(spec, state, fact, time_zone)
    elif spec.kind is Kind.SEQUENCE:
        _apply_sequence(spec, state, fact)
    else:
        raise ValueError(f"{spec.kind} requirements are evaluated from other badges, not events")
    return state


def _copy(value: Any) -> Any:
    """A deep copy of a JSON-shaped state (dicts, lists, scalars); several times
    faster than copy.deepcopy, which the engine calls once per requirement per event."""
    # Exact types (a state is built by json.loads or by this module), and scalars
    # taken as they are without a call each: most of a state is scalars.
    kind = type(value)
    if kind is dict:
        return {
            key: _copy(item) if type(item) in _CONTAINERS else item for key, item in value.items()
        }
    if kind is list:
        return [_copy(item) if type(item) in _CONTAINERS else item for item in value]
    return value


_CONTAINERS = (dict, list)


def fold_in_memory(
    spec: Spec, state: State | None, fact: Fact, time_zone: str, seen: set[str]
) -> State:
    """apply_fact for whole-history folds (replay, preview), where `seen` holds
    the all-time distinct keys in memory instead of the engine's table.

    The fold owns its states, so `state` is changed in place: copying it for
    every event made a long history quadratic (a day-scoped count keeps a
    bucket per day)."""
    key = key_for(spec, fact)
    is_new = key is not None and key not in seen
    if key is not None:
        seen.add(key)
    return apply_fact(spec, state, fact, time_zone, is_new_key=is_new, in_place=True)


def measure(
    spec: Spec, state: State | None, now: datetime, time_zone: str, *, latched: bool = True
) -> Measure:
    """Where the requirement stands at `now`: the value to show, the target, met or not.

    `latched=False` (repeatable badges, badges held only while their rule holds)
    makes an aggregate or a streak met only when it holds at `now` (the current
    period, window or streak), instead of once it ever did.
    """
    state = state or {}
    if spec.kind is Kind.AGGREGATE:
        result = _measure_aggregate(spec, state, now, time_zone)
    elif spec.kind is Kind.STREAK:
        result = _measure_streak(spec, state, now, time_zone)
    else:
        result = None
    if result is not None:
        return result if latched else replace(result, met=holds_now(spec, state, now, time_zone))
    if spec.kind is Kind.SEQUENCE:
        return _measure_sequence(spec, state)
    raise ValueError(f"{spec.kind} requirements are measured from other badges")


# --- holding now (badges that hold only while their rule holds) --------------


def value_now(spec: Spec, state: State | None, moment: datetime, time_zone: str) -> Decimal | None:
    """The requirement's value as it stands at `moment`, not latched: the current
    day's, week's or month's, the last N days', the streak alive then; None
    when nothing counts (an empty window)."""
    state = state or {}
    if spec.kind is Kind.STREAK:
        return Decimal(_current_streak(spec, state, moment, time_zone))
    if spec.kind is not Kind.AGGREGATE:
        return None
    return _aggregate_at(spec, state, moment, time_zone)


def holds_now(spec: Spec, state: State | None, moment: datetime, time_zone: str) -> bool:
    """Whether the requirement holds at `moment` (a sequence, once done, always does)."""
    if spec.kind is Kind.SEQUENCE:
        return bool((state or {}).get("met"))
    value = value_now(spec, state, moment, time_zone)
    return value is not None and spec.operator.holds(value, spec.threshold)


def changes_after(
    spec: Spec, state: State | None, after: datetime, time_zone: str
) -> list[datetime]:
    """The moments after `after` at which `value_now` can change with no new event:
    a period ending, a day leaving a rolling window, a streak's grace running out.
    `after` is at or after the last event folded into `state`."""
    state = state or {}
    if spec.kind is Kind.STREAK:
        runs = state.get("r", [])
        if not runs:
            return []
        # Alive until a whole period passes without an event: gone at the start of
        # the second period after its last.
        last = runs[-1][1] + 2
        day = (
            date.fromordinal(last * 7 + 1)
            if spec.streak_unit == "week"
            else date.fromordinal(last)
        )
        moments = [periods.start_of_day(day, time_zone)]
    elif (
        spec.kind is not Kind.AGGREGATE
        or spec.aggregation is Aggregation.SINGLE
        or spec.scope is Scope.ALL_TIME
    ):
        return []
    elif spec.scope is Scope.ROLLING:
        # A day leaves the window `size` days on; those gone by `after` no longer count.
        size = timedelta(days=_window_days(spec))
        gone = periods.local_date(after, time_zone) - size
        moments = [
            periods.start_of_day(day + size, time_zone)
            for key in state.get("b", {})
            if (day := date.fromisoformat(key)) > gone
        ]
    else:
        moments = [periods.start_of_next(spec.scope, after, time_zone)]
    return sorted(moment for moment in moments if moment > after)


# --- aggregates ------------------------------------------------------------


def _event_value(spec: Spec, fact: Fact) -> Decimal | str | None:
    """What the event contributes: 1 for a count, the number, or the distinct key."""
    if spec.aggregation is Aggregation.COUNT:
        return Decimal(1)
    raw = fact.payload.get(spec.field)
    if raw is None:
        return None
    if spec.aggregation is Aggregation.DISTINCT:
        if spec.scope is Scope.ALL_TIME:
            return "new"  # the engine's table knows whether it is new (is_new_key)
        return distinct_key(raw)[:16]
    return numeric(raw)


def _combine(spec: Spec, values: Iterable[Decimal]) -> Decimal | None:
    values = list(values)
    if not values:
        return None
    if spec.aggregation in (Aggregation.COUNT, Aggregation.SUM, Aggregation.DISTINCT):
        return sum(values, Decimal(0))
    if spec.aggregation is Aggregation.MIN:
        return min(values)
    if spec.aggregation is Aggregation.SINGLE and spec.operator in (Operator.LTE, Operator.LT):
        return min(values)
    return max(values)


def _apply_aggregate(
    spec: Spec, state: State, fact: Fact, time_zone: str, is_new_key: bool
) -> None:
    contribution = _event_value(spec, fact)
    if contribution is None:
        return
    buckets: dict[str, str] = state.setdefault("b", {})
    if spec.aggregation is Aggregation.SINGLE:
        # Scopes do not apply: one event on its own decides.
        value = Decimal(contribution)
        best = buckets.get("all")
        buckets["all"] = str(value if best is None else _combine(spec, [Decimal(best), value]))
        if spec.operator.holds(value, spec.threshold):
            state["met"] = True
        return

    bucket = periods.period_key(spec.scope, fact.occurred_at, time_zone)
    if spec.aggregation is Aggregation.DISTINCT:
        if spec.scope is Scope.ALL_TIME:
            if not is_new_key:
                return
            buckets[bucket] = str(Decimal(buckets.get(bucket, "0")) + 1)
        else:
            keys: list[str] = state.setdefault("k", {}).setdefault(bucket, [])
            if contribution in keys:
                return
            bisect.insort(keys, str(contribution))
            buckets[bucket] = str(len(keys))
    else:
        current = buckets.get(bucket)
        if spec.aggregation in (Aggregation.COUNT, Aggregation.SUM):
            new = Decimal(current or "0") + Decimal(contribution)
        else:
            values = [Decimal(contribution)]
            if current is not None:
                values.append(Decimal(current))
            combined = _combine(spec, values)
            new = Decimal(contribution) if combined is None else combined
        buckets[bucket] = str(new)

    peak_so_far = Decimal(state["p"]) if "p" in state else None
    # The best window, for tiers: only for values that grow (a minimum's best
    # would depend on the order its events came in).
    keeps_peak = spec.scope is Scope.ROLLING and spec.aggregation is not Aggregation.MIN
    for window_value in _touched_windows(spec, state, bucket):
        if spec.operator.holds(window_value, spec.threshold):
            state["met"] = True
        if keeps_peak and (peak_so_far is None or window_value > peak_so_far):
            peak_so_far = window_value
    if peak_so_far is not None:
        state["p"] = str(peak_so_far)


def _window_days(spec: Spec) -> int:
    return max(1, min(MAX_ROLLING_DAYS, spec.window_days or 1))


def _touched_windows(spec: Spec, state: State, bucket: str) -> Iterable[Decimal]:
    """The values of every window the changed bucket belongs to."""
    if spec.scope is not Scope.ROLLING:
        yield Decimal(state["b"][bucket])
        return
    day = date.fromisoformat(bucket)
    size = _window_days(spec)
    for offset in range(size):
        end = day + timedelta(days=offset)
        value = _rolling_value(spec, state, end, size)
        if value is not None:
            yield value


def _rolling_value(spec: Spec, state: State, end: date, size: int) -> Decimal | None:
    days = [(end - timedelta(days=n)).isoformat() for n in range(size)]
    if spec.aggregation is Aggregation.DISTINCT:
        keys: set[str] = set()
        for day in days:
            keys.update(state.get("k", {}).get(day, []))
        return Decimal(len(keys)) if keys else None
    return _combine(spec, [Decimal(state["b"][d]) for d in days if d in state.get("b", {})])


def _aggregate_at(spec: Spec, state: State, moment: datetime, time_zone: str) -> Decimal | None:
    """An aggregate's value at `moment`: all of it, the period or the last N days then;
    None when nothing counts."""
    buckets = state.get("b", {})
    if spec.aggregation is Aggregation.SINGLE or spec.scope is Scope.ALL_TIME:
        raw = buckets.get("all")
    elif spec.scope is Scope.ROLLING:
        today = periods.local_date(moment, time_zone)
        return _rolling_value(spec, state, today, _window_days(spec))
    else:
        raw = buckets.get(periods.period_key(spec.scope, moment, time_zone))
    return None if raw is None else Decimal(raw)


def _measure_aggregate(spec: Spec, state: State, now: datetime, time_zone: str) -> Measure:
    at = _aggregate_at(spec, state, now, time_zone)
    value = at if at is not None else Decimal(0)
    met = bool(state.get("met"))
    unit = unit_name(spec)
    numbers = {
        "value": format_number(value),
        "target": format_number(spec.threshold),
        "unit": unit,
    }
    if spec.scope is Scope.ALL_TIME or spec.aggregation is Aggregation.SINGLE:
        text = _("%(value)s of %(target)s %(unit)s") % numbers
    else:
        text = {
            Scope.DAY: _("%(value)s of %(target)s %(unit)s today"),
            Scope.WEEK: _("%(value)s of %(target)s %(unit)s this week"),
            Scope.MONTH: _("%(value)s of %(target)s %(unit)s this month"),
            Scope.ROLLING: _("%(value)s of %(target)s %(unit)s in the last %(days)s days"),
        }[spec.scope] % {**numbers, "days": _window_days(spec)}
    text = " ".join(text.split())  # no unit: no double space
    return Measure(value=value, target=spec.threshold, met=met, text=text)


def value_holds(spec: Spec, measured: Measure) -> bool:
    """Whether the measured value meets the requirement as it is now (a met flag
    latched under an earlier threshold does not count)."""
    value = Decimal(measured.longest_streak) if spec.kind is Kind.STREAK else measured.value
    return spec.operator.holds(value, measured.target)


def met_text(spec: Spec, target: Decimal) -> str:
    """A met requirement's line on an earned badge's card: "5 of 5 different places"."""
    if spec.kind is Kind.STREAK:
        unit = _("weeks") if spec.streak_unit == "week" else _("days")
        return _("streak %(value)s of %(target)s %(unit)s") % {
            "value": format_number(target),
            "target": format_number(target),
            "unit": unit,
        }
    numbers = {"value": format_number(target), "target": format_number(target)}
    if spec.kind is Kind.SEQUENCE:
        return _("step %(value)s of %(target)s") % numbers
    if spec.kind is Kind.COMPOSITE:
        said = (
            _("%(value)s of %(target)s badge")
            if target == 1
            else _("%(value)s of %(target)s badges")
        )
        return said % numbers
    text = _("%(value)s of %(target)s %(unit)s") % {**numbers, "unit": unit_name(spec)}
    return " ".join(text.split())


def unit_name(spec: Spec) -> str:
    """What the number counts, for people: the staff's label, or one made from the rule."""
    if spec.label:
        return spec.label
    if spec.aggregation is Aggregation.DISTINCT:
        return _("different %(things)ss") % {
            "things": spec.field.removesuffix("_id").replace("_", " ")
        }
    if spec.aggregation is Aggregation.COUNT:
        # Never the event type: it is an internal name ("image.posted").
        return _("times")
    return spec.field.replace("_", " ")


# --- streaks -----------------------------------------------------------------


def _period_number(spec: Spec, moment: datetime, time_zone: str) -> int:
    if spec.streak_unit == "week":
        return periods.week_number(moment, time_zone)
    return periods.day_number(moment, time_zone)


def _apply_streak(spec: Spec, state: State, fact: Fact, time_zone: str) -> None:
    number = _period_number(spec, fact.occurred_at, time_zone)
    runs: list[list[int]] = state.setdefault("r", [])
    index = bisect.bisect_left(runs, [number, number])
    # Already inside a run (the one starting before it, or starting at it)?
    for neighbour in (index - 1, index):
        if 0 <= neighbour < len(runs) and runs[neighbour][0] <= number <= runs[neighbour][1]:
            return
    runs.insert(index, [number, number])
    # Merge with the run before and after when they now touch.
    if index + 1 < len(runs) and runs[index + 1][0] == number + 1:
        runs[index][1] = runs[index + 1][1]
        del runs[index + 1]
    if index > 0 and runs[index - 1][1] == number - 1:
        runs[index - 1][1] = runs[index][1]
        del runs[index]
    if spec.operator.holds(Decimal(_longest(runs)), spec.threshold):
        state["met"] = True


def _current_streak(spec: Spec, state: State, now: datetime, time_zone: str) -> int:
    today = _period_number(spec, now, time_zone)
    current = 0
    for first, last in state.get("r", []):
        # A streak is still alive until a whole period passes without an event.
        if last in (today, today - 1):
            current = last - first + 1
    return current


def _longest(runs: Sequence[Sequence[int]]) -> int:
    return max((last - first + 1 for first, last in runs), default=0)


def _measure_streak(spec: Spec, state: State, now: datetime, time_zone: str) -> Measure:
    runs = state.get("r", [])
    current = _current_streak(spec, state, now, time_zone)
    longest = _longest(runs)
    unit = _("weeks") if spec.streak_unit == "week" else _("days")
    return Measure(
        value=Decimal(current),
        target=spec.threshold,
        met=bool(state.get("met")),
        text=_("streak %(value)s of %(target)s %(unit)s (longest %(longest)s)")
        % {
            "value": current,
            "target": format_number(spec.threshold),
            "unit": unit,
            "longest": longest,
        },
        current_streak=current,
        longest_streak=longest,
    )


# --- sequences ---------------------------------------------------------------


def _apply_sequence(spec: Spec, state: State, fact: Fact) -> None:
    times: list[list[float]] = state.setdefault("t", [[] for _ in spec.steps])
    moment = fact.occurred_at.timestamp()
    for step, event_type in enumerate(spec.steps):
        if event_type == fact.event_type and moment not in times[step]:
            bisect.insort(times[step], moment)
    if _steps_done(spec, times) == len(spec.steps):
        state["met"] = True


def _steps_done(spec: Spec, times: Sequence[Sequence[float]]) -> int:
    """The most leading steps that happened in order within the window.

    For each occurrence of the first step, take the earliest occurrence of
    each next step strictly after the previous one: taking the earliest can
    only leave more room for the steps after it, so it finds a chain when
    there is one.
    """
    window = timedelta(days=spec.window_days).total_seconds() if spec.window_days else None
    best = 0
    for start in times[0] if times else []:
        done, previous = 1, start
        for step in range(1, len(times)):
            index = bisect.bisect_right(times[step], previous)
            if index == len(times[step]):
                break
            candidate = times[step][index]
            if window is not None and candidate - start > window:
                break
            done, previous = done + 1, candidate
        best = max(best, done)
        if best == len(times):
            break
    return best


def _measure_sequence(spec: Spec, state: State) -> Measure:
    times = state.get("t", [[] for _ in spec.steps])
    done = len(spec.steps) if state.get("met") else _steps_done(spec, times)
    return Measure(
        value=Decimal(done),
        target=Decimal(len(spec.steps)),
        met=bool(state.get("met")),
        text=_("step %(value)s of %(target)s") % {"value": done, "target": len(spec.steps)},
    )


# --- composites and tiers ---------------------------------------------------------


def composite_met(mode: str, parts_met: Sequence[bool]) -> bool:
    """All-of or any-of other requirements or badges."""
    if not parts_met:
        return False
    return all(parts_met) if mode == "all" else any(parts_met)


def find_cycle(graph: Mapping[Any, Iterable[Any]]) -> list[Any] | None:
    """A cycle in "composite X refers to Y" edges, as the list of nodes, or None."""
    visiting: list[Any] = []
    state: dict[Any, str] = {}

    def visit(node: Any) -> list[Any] | None:
        state[node] = "visiting"
        visiting.append(node)
        for target in graph.get(node, ()):
            if state.get(target) == "visiting":
                return visiting[visiting.index(target) :] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        visiting.pop()
        state[node] = "done"
        return None

    for node in list(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def tier_reached(value: Decimal, operator: Operator, tiers: Sequence[tuple[str, Decimal]]) -> int:
    """How many tiers (bronze, silver, gold ... in order) `value` has reached: 0 for none."""
    level = 0
    for _, threshold in tiers:
        if not operator.holds(value, threshold):
            break
        level += 1
    return level


def tier_level(spec: Spec, state: State | None, tiers: Sequence[tuple[str, Decimal]]) -> int:
    """How many of a tiered requirement's tiers its progress has reached (its peak's)."""
    return tier_reached(peak(spec, state), spec.operator, tiers)


def peak(spec: Spec, state: State | None) -> Decimal:
    """The best value any window of this requirement ever reached: what tiers are judged on.

    All-time aggregates: the value itself. Day, week and month scopes: the best
    period. Rolling scopes: the best window, tracked as events arrive ("p").
    Streaks: the longest streak. Only meaningful for >= and > comparisons,
    the only ones tiers allow.
    """
    state = state or {}
    if spec.kind is Kind.STREAK:
        return Decimal(_longest(state.get("r", [])))
    if spec.kind is not Kind.AGGREGATE:
        return Decimal(0)
    values = [Decimal(v) for v in state.get("b", {}).values()]
    if "p" in state:
        values.append(Decimal(state["p"]))
    elif spec.scope is Scope.ROLLING and spec.aggregation is not Aggregation.SINGLE:
        # Kept before "p" existed: work the best window out from the day buckets.
        # For values that only grow, a best window ends on a day with events.
        size = _window_days(spec)
        for day in state.get("b", {}):
            window = _rolling_value(spec, state, date.fromisoformat(day), size)
            if window is not None:
                values.append(window)
    return max(values, default=Decimal(0))


def measure_tiered(
    spec: Spec,
    state: State | None,
    now: datetime,
    time_zone: str,
    tiers: Sequence[tuple[str, Decimal]],
    *,
    level: int | None = None,
) -> tuple[int, Measure]:
    """The tier reached (its peak's, unless `level` says), and the standing towards
    the next one ("12 of 25 ... for Silver")."""
    level = tier_level(spec, state, tiers) if level is None else level
    if level == len(tiers):
        top = measure(replace(spec, threshold=tiers[-1][1]), state, now, time_zone)
        return level, replace(top, met=True)
    name, threshold = tiers[level]
    towards = measure(replace(spec, threshold=threshold), state, now, time_zone)
    return level, replace(
        towards,
        met=False,
        text=_("%(standing)s for %(tier)s") % {"standing": towards.text, "tier": name},
    )


def holds_in_period(spec: Spec, state: State | None, period: str) -> bool:
    """Whether a day/week/month-scoped aggregate is met within one calendar period.

    Repeatable badges are earned once per period, so they ask this instead of
    the latched `met`.
    """
    raw = (state or {}).get("b", {}).get(period)
    return raw is not None and spec.operator.holds(Decimal(raw), spec.threshold)


def format_number(value: Decimal | int | float) -> str:
    """Show 5 rather than 5.0000, and 2.5 rather than 2.5000."""
    number = Decimal(value)
    if number == number.to_integral_value():
        return str(int(number))
    return f"{number.normalize():f}"


@dataclass(frozen=True)
class BadgeStatus:
    """How far a user is towards a badge, summed over its requirements.

    Each requirement contributes at most its threshold, so overshooting one
    requirement never hides that another is still short.
    """

    current: Decimal
    target: Decimal
    met: bool

    @property
    def percent(self) -> int:
        if self.target <= 0:
            return 100 if self.met else 0
        if self.met:
            return 100
        # Never show 100% for a badge that is not unlocked yet.
        return min(99, int(self.current * 100 / self.target))


def badge_status(measures: Sequence[Measure]) -> BadgeStatus:
    """Combine a badge's requirement measures: met when every one is met.

    A met requirement counts in full; one still open counts up to its target,
    so overshooting one never hides that another is short.
    """
    if not measures:
        return BadgeStatus(Decimal(0), Decimal(0), met=False)
    current = sum(
        (m.target if m.met else max(Decimal(0), min(m.value, m.target)) for m in measures),
        Decimal(0),
    )
    target = sum((m.target for m in measures), Decimal(0))
    return BadgeStatus(current=current, target=target, met=all(m.met for m in measures))


def relevant(spec: Spec, fact: Fact) -> bool:
    """Whether the event can change this requirement's state at all."""
    if not spec.watches(fact.event_type) or not spec.filter.matches(fact.payload):
        return False
    if spec.kind is Kind.AGGREGATE and spec.aggregation is not Aggregation.COUNT:
        value = fact.payload.get(spec.field)
        if value is None:
            return False
        if spec.aggregation.needs_number and numeric(value) is None:
            return False
    return True


def measure_composite(mode: str, required: Sequence[int], unlocked: set[int]) -> Measure:
    """A composite's standing: how many of its badges the user holds."""
    have = sum(1 for badge in required if badge in unlocked)
    need = len(required) if mode == "all" else min(1, len(required))
    met = composite_met(mode, [badge in unlocked for badge in required])
    return Measure(
        value=Decimal(min(have, need)),
        target=Decimal(need),
        met=met,
        text=_("%(value)s of %(target)s badges") % {"value": have, "target": len(required)}
        if mode == "all"
        else _("%(value)s of 1 badge (any of %(target)s)")
        % {"value": min(have, 1), "target": len(required)},
    )
