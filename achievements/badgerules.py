"""A badge's rule as plain data, and how a user's progress measures against it. Pure.

`achievements.core` folds events into progress with these; the card, the
admin and the API measure with `standing`. No ORM, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import cached_property
from typing import Any

from achievements import periods, progress
from achievements.progress import BadgeStatus, Fact, Measure, Spec, State
from achievements.rules import Kind, Scope

# (occurred_at in microseconds since the epoch, the event's primary key): sorts as
# occurrence order, events of one moment in the order they were recorded. Small,
# as every progress state carries one or two.
OrderKey = tuple[int, int]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def order_key(occurred_at: datetime, pk: int) -> OrderKey:
    delta = occurred_at - _EPOCH
    return ((delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds, pk)


def moment_of(key: OrderKey) -> datetime:
    return _EPOCH + timedelta(microseconds=key[0])


@dataclass(frozen=True, slots=True)
class Occurrence:
    """One event, as the core sees it."""

    pk: int
    event_id: str
    event_type: str
    user_id: int
    payload: Mapping[str, Any]
    occurred_at: datetime

    @property
    def key(self) -> OrderKey:
        return order_key(self.occurred_at, self.pk)


@dataclass(frozen=True)
class BadgeRule:
    """A badge's rule as plain data: its requirements, tiers, repeat period, version and
    how long an earning stays valid."""

    id: int
    requirements: tuple[Spec, ...]
    tiers: tuple[tuple[str, Decimal], ...] = ()
    repeat: Scope | None = None
    version_id: int | None = None
    valid_days: int = 0  # an earning expires this many days after its witness (0: never)
    # Held only while the rule holds: lost (a tier falling back) when it stops.
    holds_while: bool = False

    @cached_property
    def watched_types(self) -> frozenset[str]:
        return frozenset(t for spec in self.requirements for t in watched_types(spec))

    @cached_property
    def plain(self) -> bool:
        """No tiers, no repeat, no composite part: earned exactly when every
        requirement's met flag is set, so it need not be measured until then."""
        return (
            not self.tiers
            and self.repeat is None
            and not self.holds_while
            and all(spec.kind is not Kind.COMPOSITE for spec in self.requirements)
        )

    @cached_property
    def graded(self) -> bool:
        return bool(self.tiers) and len(self.requirements) == 1

    @cached_property
    def earnings_in_all(self) -> int | None:
        """How many earnings the badge has at most: 1, its tiers, or no limit (repeatable)."""
        return None if self.repeat else max(1, len(self.tiers))

    @cached_property
    def has_composite(self) -> bool:
        return any(spec.kind is Kind.COMPOSITE for spec in self.requirements)


def watched_types(spec: Spec) -> tuple[str, ...]:
    if spec.kind is Kind.SEQUENCE:
        return tuple(dict.fromkeys(spec.steps))
    if spec.kind is Kind.COMPOSITE:
        return ()  # moved by other badges' unlocks, not by events
    return (spec.event_type,)


@dataclass(frozen=True)
class RuleSet:
    """The badges under evaluation, indexed by the event types they watch.

    `badges` may build each BadgeRule when first asked for it (the rules
    index does); `watchers` (event type → the badges watching it), when
    given, spares building the rules of badges that watch none of a batch's
    types.
    """

    badges: Mapping[int, BadgeRule]
    watchers: Mapping[str, Sequence[int]] | None = None
    _watching: dict[str, list[tuple[int, Spec]]] = field(
        default_factory=dict, repr=False, compare=False
    )

    def watching(self, event_type: str) -> list[tuple[int, Spec]]:
        """The (badge, requirement) pairs an event of this type may move, by badge."""
        found = self._watching.get(event_type)
        if found is None:
            if self.watchers is None:
                ids: Iterable[int] = self.badges
            else:
                ids = self.watchers.get(event_type, ())
            found = [
                (badge_id, spec)
                for badge_id in sorted(set(ids))
                for spec in self.badges[badge_id].requirements
                if event_type in watched_types(spec)
            ]
            self._watching[event_type] = found
        return found

    def requirement_badges(self, badge_ids: Iterable[int]) -> dict[int, int]:
        """Requirement → badge, for these badges."""
        return {spec.id: b for b in badge_ids for spec in self.badges[b].requirements}

    def touched_pairs(self, events: Iterable[Occurrence]) -> set[tuple[int, int]]:
        """The (user, badge) pairs some event can move (type, filters, field present)."""
        pairs = set()
        for event in events:
            fact = Fact(event.event_type, event.payload, event.occurred_at)
            for badge_id, spec in self.watching(event.event_type):
                if (event.user_id, badge_id) not in pairs and progress.relevant(spec, fact):
                    pairs.add((event.user_id, badge_id))
        return pairs

    def distinct_keys(
        self, events: Iterable[Occurrence], pairs: set[tuple[int, int]]
    ) -> set[tuple[int, int, str]]:
        """The all-time distinct values these events mention: (user, requirement, key)."""
        keys = set()
        for event in events:
            fact = Fact(event.event_type, event.payload, event.occurred_at)
            for badge_id, spec in self.watching(event.event_type):
                if (event.user_id, badge_id) in pairs:
                    key = progress.key_for(spec, fact)
                    if key is not None:
                        keys.add((event.user_id, spec.id, key))
        return keys


# --- where a user stands on a badge -------------------------------------------


@dataclass(frozen=True)
class Standing:
    """A user's standing on one badge: each requirement, the whole, and the tier."""

    measures: list[Measure]
    status: BadgeStatus
    level: int  # tiers reached; for other badges 1 when met now, else 0


def measure(
    spec: Spec,
    state: State | None,
    now: datetime,
    time_zone: str,
    unlocked: set[int],
    *,
    latched: bool = True,
) -> Measure:
    """One requirement's standing; composites look at the badges the user holds."""
    if spec.kind is Kind.COMPOSITE:
        return progress.measure_composite(spec.composite_mode, list(spec.parts), unlocked)
    return progress.measure(spec, state or {}, now, time_zone, latched=latched)


def standing(
    rule: BadgeRule,
    states: Mapping[int, State],
    now: datetime,
    time_zone: str,
    unlocked: set[int],
) -> Standing:
    if rule.graded:
        [spec] = rule.requirements
        level, towards = progress.measure_tiered(
            spec,
            states.get(spec.id),
            now,
            time_zone,
            rule.tiers,
            level=supported(rule, states, now, time_zone) if rule.holds_while else None,
        )
        return Standing([towards], progress.badge_status([towards]), level)
    latched = rule.repeat is None and not rule.holds_while
    measures = [
        measure(spec, states.get(spec.id), now, time_zone, unlocked, latched=latched)
        for spec in rule.requirements
    ]
    status = progress.badge_status(measures)
    return Standing(measures, status, 1 if status.met else 0)


def supported(
    rule: BadgeRule, states: Mapping[int, State], moment: datetime, time_zone: str
) -> int:
    """What a badge that holds only while its rule holds is worth at `moment`: the
    tiers its requirement's value then reaches, or 1 when every requirement holds."""
    if rule.graded:
        [spec] = rule.requirements
        value = progress.value_now(spec, states.get(spec.id), moment, time_zone)
        return 0 if value is None else progress.tier_reached(value, spec.operator, rule.tiers)
    return int(
        bool(rule.requirements)
        and all(
            progress.holds_now(spec, states.get(spec.id), moment, time_zone)
            for spec in rule.requirements
        )
    )


def changes_after(
    rule: BadgeRule, states: Mapping[int, State], after: datetime, time_zone: str
) -> list[datetime]:
    """The moments after `after` at which `supported` can change with no new event."""
    return sorted(
        {
            moment
            for spec in rule.requirements
            for moment in progress.changes_after(spec, states.get(spec.id), after, time_zone)
        }
    )


def earnings(
    rule: BadgeRule,
    states: Mapping[int, State],
    moment: datetime,
    time_zone: str,
    unlocked: set[int],
    now: datetime,
) -> list[tuple[str, int]]:
    """The (period, tier) earnings the progress justifies, lowest first.

    A plain badge: ("", 0) once every requirement is met. A tiered badge:
    ("", n) for every tier its requirement's best value reached. A
    repeatable badge: (period, 0) when every requirement is met within the
    period of `moment` (the event's local day, week or month).
    """
    if rule.plain:
        met = all((states.get(spec.id) or {}).get("met") for spec in rule.requirements)
        return [("", 0)] if met and rule.requirements else []
    if rule.holds_while:
        level = supported(rule, states, moment, time_zone)
        if rule.graded:
            return [("", n) for n in range(1, level + 1)]
        return [("", 0)] if level else []
    if rule.graded:
        [spec] = rule.requirements
        level = progress.tier_level(spec, states.get(spec.id), rule.tiers)
        return [("", n) for n in range(1, level + 1)]
    if rule.tiers:
        return []  # refused when saved: tiers grade exactly one requirement
    if rule.repeat is not None:
        period = periods.period_key(rule.repeat, moment, time_zone)
        met = bool(rule.requirements) and all(
            progress.holds_in_period(spec, states.get(spec.id), period)
            for spec in rule.requirements
        )
        return [(period, 0)] if met else []
    status = standing(rule, states, now, time_zone, unlocked).status
    return [("", 0)] if status.met else []
