"""What a rule change would do, computed from the stored events without saving anything."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime

from django.contrib.auth import get_user_model
from django.utils import timezone

from accounts.models import Profile
from achievements import progress
from achievements.models import Badge, BadgeRequirement, Event, Unlock

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


def preview_requirements(badge: Badge, requirements: list[BadgeRequirement]) -> Preview:
    """Fold every user's processed events through the edited badge and requirements.

    `badge` may carry edited tiers or repeat setting; neither it nor the
    requirements are saved. Users who would qualify but have no unlock yet
    are "newly qualify"; users holding an unlock who would not qualify any
    more are listed too (they would keep it: nothing is ever revoked).
    """
    requirements = _detached(requirements)
    types = sorted({t for requirement in requirements for t in requirement.watched_types()})
    parts = {
        part.pk for requirement in requirements for part in requirement.composite_badges.all()
    }
    unlocked: dict[int, set[int]] = defaultdict(set)
    for user_id, badge_id in Unlock.objects.filter(badge_id__in=parts).values_list(
        "user_id", "badge_id"
    ):
        unlocked[user_id].add(badge_id)
    zones = dict(Profile.objects.values_list("user_id", "time_zone"))
    now = timezone.now()
    states: dict[int, dict[int, dict]] = defaultdict(dict)
    seen: dict[int, dict[int, set[str]]] = defaultdict(lambda: defaultdict(set))
    earned: dict[int, set[tuple[str, int]]] = defaultdict(set)

    def earn(user_id: int, moment: datetime) -> None:
        zone = zones.get(user_id, "UTC")
        standing = badge.standing(requirements, states[user_id], now, zone, unlocked[user_id])
        earned[user_id].update(
            badge.earnings(requirements, states[user_id], standing, moment, zone)
        )

    events = (
        Event.objects.filter(event_type__in=types, processed_at__isnull=False)
        .order_by("user_id", "occurred_at", "pk")
        .values_list("user_id", "event_type", "payload", "occurred_at")
    )
    for user_id, event_type, payload, occurred_at in events.iterator(chunk_size=5000):
        fact = progress.Fact(event_type, payload, occurred_at)
        zone = zones.get(user_id, "UTC")
        moved = False
        for requirement in requirements:
            spec = requirement.spec
            if not progress.relevant(spec, fact):
                continue
            states[user_id][spec.id] = progress.fold_in_memory(
                spec, states[user_id].get(spec.id), fact, zone, seen[user_id][spec.id]
            )
            moved = True
        if moved:
            earn(user_id, occurred_at)
    # Composites are moved by other badges' unlocks, not events.
    if any(r.kind == "composite" for r in requirements):
        for user_id in unlocked:
            earn(user_id, now)

    holders = set(Unlock.objects.filter(badge=badge).values_list("user_id", flat=True))
    qualifying = {user_id for user_id, earnings in earned.items() if earnings}
    result = Preview(users_with_events=len(states))
    result.would_qualify = len(qualifying)
    result.newly_qualify = sorted(qualifying - holders)
    result.no_longer_qualify = sorted(holders - qualifying)
    result.earnings = sum(len(earnings) for earnings in earned.values())
    levels = Counter(max(tier for _, tier in earnings) for earnings in earned.values() if earnings)
    result.tiers = [
        (name, levels[level]) for level, (name, _) in enumerate(badge.tier_list(), start=1)
    ]
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
