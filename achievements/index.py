"""What the rules say: built once, cached, rebuilt when rules change.

An event only ever touches the requirements that watch its type, so the
evaluator asks this index instead of scanning badges; the API asks it which
types it accepts and which are de-duplicated, instead of three queries per
request. The active badges themselves, with their requirements and
composite parts, are here too: a batch evaluation and the cards pushed after
it read them from memory instead of three queries and their ORM work each,
most of the cost of evaluating one event.

Each process keeps the index in memory, tagged with a version token kept in
the shared cache; saving or deleting a badge, requirement, event type or
de-duplication rule (or changing a composite's parts) replaces the token,
and every process rebuilds on its next lookup. The token is replaced again
when the change commits, so a process that rebuilt in between, from the rows
as they were, rebuilds once more.

Checking the token is a round trip to the cache. A unit of work that asks
the index several times (a request records a batch; a batch is evaluated,
then pushed) runs inside `pinned()`, which checks it once: its lookups then
share one index, as they should, rather than straddle a rebuild.

The model instances are shared by every thread of a process: read them,
never change them (`Badge.tier_list` keeps its parsed tiers on the
instance, checked against the tiers at every call: a cache, not a change).
"""

from __future__ import annotations

import secrets
import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from django.core.cache import cache
from django.db import transaction
from django.db.models import OuterRef, Subquery

from achievements import core

if TYPE_CHECKING:
    from achievements.models import Badge, BadgeRequirement

VERSION_KEY = "rules-index-version"


@dataclass(frozen=True)
class DedupWindow:
    """A DedupRule as the recorder needs it."""

    payload_key: str
    window_seconds: int


@dataclass(frozen=True)
class _Index:
    watching: dict[str, list[int]] = field(default_factory=dict)
    accepted: frozenset[str] = frozenset()
    dedup: dict[str, DedupWindow] = field(default_factory=dict)
    # Active badges in display order, requirements and composite parts prefetched.
    badges: tuple[Badge, ...] = ()
    # Their requirements in key order, each with its badge attached.
    requirements: tuple[BadgeRequirement, ...] = ()
    # Badge → the active composites with a requirement that has it as a part.
    composites: dict[int, frozenset[int]] = field(default_factory=dict)
    # Badge → its latest version (the rules above, as unlocks record them).
    versions: dict[int, int] = field(default_factory=dict)
    by_id: dict[int, Badge] = field(default_factory=dict)

    @cached_property
    def rules(self) -> core.RuleSet:
        """The active badges' rules as the evaluation core reads them, built on first
        use: web processes, which only record events, never need them."""
        return core.RuleSet(
            {badge.pk: badge.rule(version_id=self.versions.get(badge.pk)) for badge in self.badges}
        )


class _Rules(Mapping[int, core.BadgeRule]):
    """The active badges' rules by badge id, each built on first use (read-only)."""

    def __init__(self, badges: dict[int, Badge], versions: dict[int, int]) -> None:
        self._badges, self._versions = badges, versions
        self._built: dict[int, core.BadgeRule] = {}

    def __getitem__(self, badge_id: int) -> core.BadgeRule:
        rule = self._built.get(badge_id)
        if rule is None:
            badge = self._badges[badge_id]
            rule = self._built[badge_id] = badge.rule(version_id=self._versions.get(badge_id))
        return rule

    def __iter__(self) -> Iterator[int]:
        return iter(self._badges)

    def __len__(self) -> int:
        return len(self._badges)


_lock = threading.Lock()
_index = _Index()
_version: object = None
# This thread's pinned index: absent outside pinned(), None inside until the
# first lookup (or after a change this thread made).
_pins = threading.local()
_OUTSIDE = object()


@contextmanager
def pinned() -> Iterator[None]:
    """Within the block, this thread's lookups check the version once and share that index.

    A change of the rules made in the block by this thread unpins it, so the
    block's own later lookups see the change. Nested blocks share the outer pin.
    """
    if hasattr(_pins, "index"):
        yield
        return
    _pins.index = None
    try:
        yield
    finally:
        del _pins.index


def _current() -> _Index:
    pin = getattr(_pins, "index", _OUTSIDE)
    if isinstance(pin, _Index):
        return pin
    built = _checked()
    if pin is None:
        _pins.index = built
    return built


def _checked(current: object = None) -> _Index:
    """The index at version token `current` (by default, the one the cache holds now)."""
    global _index, _version
    if current is None:
        current = _current_version()
    if current != _version:
        with _lock:
            if current != _version:
                _index, _version = _build(), current
    return _index


def version_wanted() -> bool:
    """Inside `pinned()`, before its first lookup: the block has yet to read the version.

    A caller about to send a pipeline to the cache's Redis anyway can read it
    in the same round trip: `pipe.get(version_key())`, then `pin_version`.
    """
    return getattr(_pins, "index", _OUTSIDE) is None


def version_key() -> str:
    """The cache's own key for the version token, for a read through Redis itself."""
    return cache.make_and_validate_key(VERSION_KEY)


def pin_version(raw: bytes | None) -> None:
    """Pin this `pinned()` block to the index at the token read from Redis.

    The token is an integer, which Django's Redis cache stores as its
    digits. Anything else (no token yet, one written as text by an older
    release) is read through the cache as usual.
    """
    try:
        token = int(raw) if raw is not None else None
    except ValueError:
        token = None
    _pins.index = _checked(token)


def requirement_ids_watching(event_type: str) -> list[int]:
    return _current().watching.get(event_type, [])


def accepted_event_types() -> frozenset[str]:
    """Catalogued types and every type a rule watches (models.accepted_event_types)."""
    return _current().accepted


def dedup_windows() -> dict[str, DedupWindow]:
    """The de-duplication rule of each event type that has one."""
    return _current().dedup


def active_badges() -> tuple[Badge, ...]:
    """The active badges, in display order, with `requirements` and their
    `composite_badges` prefetched (segments are not applied: that is per user)."""
    return _current().badges


def active_requirements() -> tuple[BadgeRequirement, ...]:
    """Every requirement of an active badge, by key, with its badge attached."""
    return _current().requirements


def composites_of(badge_ids: Iterable[int]) -> set[int]:
    """The active composite badges with a requirement that has one of these badges as a part."""
    composites = _current().composites
    return {whole for badge_id in badge_ids for whole in composites.get(badge_id, ())}


def rule_set() -> core.RuleSet:
    """The active badges' rules (segments are not applied: that is per user)."""
    return _current().rules


def badge(badge_id: int) -> Badge | None:
    """An active badge by id, as the index holds it."""
    return _current().by_id.get(badge_id)


def version_of(badge_id: int) -> int | None:
    """The latest version of this active badge, as the index was built; None if it had none."""
    return _current().versions.get(badge_id)


def invalidate(**kwargs: Any) -> None:
    """Signal receiver: the rules changed, every process must rebuild its index.

    Now, so this transaction's own reads see the change, and again on commit:
    another process may have rebuilt from the rows as they were before it.
    """
    _new_version()
    if getattr(_pins, "index", None) is not None:
        _pins.index = None
    transaction.on_commit(_new_version)


def version_recorded(**kwargs: Any) -> None:
    """Signal receiver: a badge has a new rule version; every process rebuilds
    to learn it, as after a rule change, but this thread keeps its pin.

    The rules themselves did not change, so a batch that records a first
    version (`ensure_versions` before its transaction, or a fallback inside
    it) keeps one view of the rules for its push and composites; its
    lookups of that version fall back to a query.
    """
    _new_version()
    transaction.on_commit(_new_version)


def _new_version() -> None:
    cache.set(VERSION_KEY, _new_token(), timeout=None)


def _new_token() -> int:
    # An integer, so that a raw Redis read can parse it (see pin_version).
    return secrets.randbits(62)


def _current_version() -> object:
    try:
        token = cache.get(VERSION_KEY)
        if token is None:
            cache.add(VERSION_KEY, _new_token(), timeout=None)
            token = cache.get(VERSION_KEY)
        elif not isinstance(token, int):
            # An older release's token (text): replace it, or every raw read
            # would fall back to this one. Every process rebuilds once.
            _new_version()
            token = cache.get(VERSION_KEY)
        if token is None:
            raise LookupError("the cache kept no version token")
        return token
    except Exception:
        # No shared cache: rebuild every time rather than risk stale rules.
        return object()


def _build() -> _Index:
    from achievements.models import Badge, BadgeVersion, DedupRule, accepted_event_types

    latest = BadgeVersion.objects.filter(badge=OuterRef("pk")).order_by("-number").values("pk")
    badges = tuple(
        Badge.objects.active()
        .annotate(latest_version=Subquery(latest[:1]))
        .prefetch_related("requirements", "requirements__composite_badges", "translations")
    )
    requirements = tuple(
        sorted((r for badge in badges for r in badge.requirements.all()), key=lambda r: r.pk)
    )
    watching: dict[str, list[int]] = defaultdict(list)
    for requirement in requirements:
        for event_type in requirement.watched_types():
            watching[event_type].append(requirement.pk)
    composites: dict[int, set[int]] = defaultdict(set)
    for requirement in requirements:
        if requirement.kind == "composite":
            for part in requirement.composite_badges.all():
                composites[part.pk].add(requirement.badge_id)
    dedup = {
        event_type: DedupWindow(payload_key, window)
        for event_type, payload_key, window in DedupRule.objects.values_list(
            "event_type", "payload_key", "window_seconds"
        )
    }
    versions = {
        badge.pk: badge.latest_version for badge in badges if badge.latest_version is not None
    }
    return _Index(
        dict(watching),
        frozenset(accepted_event_types()),
        dedup,
        badges,
        requirements,
        {part: frozenset(wholes) for part, wholes in composites.items()},
        versions,
        {badge.pk: badge for badge in badges},
    )
