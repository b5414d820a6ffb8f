"""What a rule change would do, computed from the stored events without saving anything."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from itertools import groupby
from operator import itemgetter

from django.contrib.auth import get_user_model
from django.utils import timezone

from accounts.models import Profile
from achievements import core
from achievements.models import Badge, BadgeRequirement, Event, Unlock, UserBadge

SAMPLE_SIZE = 10


@dataclass
class Preview:
    users_with_events: int = 0
    would_qualify: int = 0
    newly_qualify: list[int] = field(default_factory=list)
    no_longer_qualify: list[int] = field(default_factory=list)
    sample: list[str] = field(default_factory=list)
    # Tiered badges: users per highest tier. Repeatable badges: earnings in all.
    tiers: list[tuple[str, int]] = field(default_factory=list)
    earnings: int = 0
    # Badges held only while their rule holds: holders it would be taken from, and
    # (tiered) holders who would fall back to a lower tier. Staff's grants stay.
    would_lose: list[int] = field(default_factory=list)
    would_fall_back: list[int] = field(default_factory=list)
    lose_sample: list[str] = field(default_factory=list)


def preview_requirements(badge: Badge, requirements: list[BadgeRequirement]) -> Preview:
    """Fold every user's processed events through the edited badge and requirements.

    `badge` may carry edited tiers or repeat setting; neither it nor the
    requirements are saved. The fold is the evaluation core's, over each
    user's whole history, as a replay folds it. Users who would qualify but
    have no unlock yet are "newly qualify"; users holding an unlock who would
    not qualify any more are listed too: they keep it, unless the badge holds
    only while its rule holds, when applying the change takes it from them
    (`would_lose`; a tiered one's holders may fall back a tier instead).
    """
    requirements = _detached(requirements)
    rule = badge.rule(requirements)
    rules = core.RuleSet({badge.pk: rule})
    types = sorted(rule.watched_types)
    parts = {part for spec in rule.requirements for part in spec.parts}
    unlocked: dict[int, set[int]] = defaultdict(set)
    for user_id, badge_id in (
        Unlock.objects.held().filter(badge_id__in=parts).values_list("user_id", "badge_id")
    ):
        unlocked[user_id].add(badge_id)
    zones = dict(Profile.objects.values_list("user_id", "time_zone"))
    # What the stored standings keep beside progress: earnings staff took back
    # (withheld) and when the last one expired (only events since count).
    kept = {
        user_id: (frozenset(withheld or ()), since)
        for user_id, withheld, since in UserBadge.objects.filter(badge_id=badge.pk)
        .exclude(withheld=[], since__isnull=True)
        .values_list("user_id", "withheld", "since")
    }
    now = timezone.now()
    earned: dict[int, list[core.Earning]] = {}
    users_with_events = 0
    events = (
        Event.objects.filter(event_type__in=types, processed_at__isnull=False)
        .order_by("user_id", "occurred_at", "pk")
        .values_list("pk", "event_id", "event_type", "user_id", "payload", "occurred_at")
    )
    # A user at a time: the states of one history in memory, not everyone's.
    for user_id, rows in groupby(events.iterator(chunk_size=5000), key=itemgetter(3)):
        withheld, since = kept.get(user_id, (frozenset(), None))
        pair = core.Pair(
            user_id,
            badge.pk,
            time_zone=zones.get(user_id) or "UTC",
            withheld=withheld,
            since=since,
        )
        [outcome] = core.evaluate(
            {(user_id, badge.pk): pair},
            rules,
            (core.Occurrence(*row) for row in rows),
            now=now,
            unlocked=unlocked,
            fresh=True,
        ).values()
        if outcome.touched:
            users_with_events += 1
            earned[user_id] = outcome.earned
    # Composites are moved by other badges' unlocks, not events.
    if rule.has_composite:
        for user_id in set(unlocked) - set(earned):
            pair = core.Pair(user_id, badge.pk, time_zone=zones.get(user_id) or "UTC")
            [outcome] = core.settle(
                {(user_id, badge.pk): pair},
                rules,
                now=now,
                unlocked=unlocked,
                parts={},
                starts={},
            ).values()
            earned[user_id] = outcome.earned

    held = Unlock.objects.held().filter(badge=badge)
    holders = set(held.values_list("user_id", flat=True))
    qualifying = {user_id for user_id, earnings in earned.items() if earnings}
    result = Preview(users_with_events=users_with_events)
    result.would_qualify = len(qualifying)
    result.newly_qualify = sorted(qualifying - holders)
    result.no_longer_qualify = sorted(holders - qualifying)
    if rule.holds_while:
        # What each holder holds by the rule (not by a grant), against what it would give.
        by_rule: dict[int, int] = defaultdict(int)
        for user_id, tier in held.filter(granted=False).values_list("user_id", "tier"):
            by_rule[user_id] = max(by_rule[user_id], tier or 1)
        would = {
            user_id: max((e.tier or 1 for e in earnings), default=0)
            for user_id, earnings in earned.items()
        }
        result.would_lose = sorted(u for u in by_rule if not would.get(u))
        result.would_fall_back = sorted(
            u for u, tier in by_rule.items() if 0 < would.get(u, 0) < tier
        )
        result.lose_sample = list(
            get_user_model()
            .objects.filter(pk__in=result.would_lose[:SAMPLE_SIZE])
            .order_by("pk")
            .values_list("username", flat=True)
        )
    result.earnings = sum(len(earnings) for earnings in earned.values())
    levels = Counter(max(e.tier for e in earnings) for earnings in earned.values() if earnings)
    result.tiers = [(name, levels[level]) for level, (name, _) in enumerate(rule.tiers, start=1)]
    result.sample = list(
        get_user_model()
        .objects.filter(pk__in=result.newly_qualify[:SAMPLE_SIZE])
        .order_by("pk")
        .values_list("username", flat=True)
    )
    return result


def _detached(requirements: list[BadgeRequirement]) -> list[BadgeRequirement]:
    """Unsaved requirements made measurable: a stand-in id each, and their parts in hand."""
    for number, requirement in enumerate(requirements, start=1):
        keys = getattr(requirement, "_part_keys", None)
        if requirement.pk is None or keys is not None:
            requirement.pk = -number
            requirement.__dict__.pop("spec", None)
            requirement._prefetched_objects_cache = {  # type: ignore[attr-defined]
                "composite_badges": Badge.objects.filter(key__in=keys or [])
            }
    return requirements
