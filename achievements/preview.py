"""What a rule change would do, computed from the stored events without saving anything."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

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


def preview_requirements(badge: Badge, requirements: list[BadgeRequirement]) -> Preview:
    """Fold every user's processed events through the edited requirements.

    Users who would qualify but have no unlock yet are "newly qualify";
    users holding the unlock who would not qualify any more are listed too
    (they would keep the badge: nothing is ever revoked).
    """
    specs = [requirement.spec for requirement in requirements]
    types = sorted({t for requirement in requirements for t in requirement.watched_types()})
    zones = dict(Profile.objects.values_list("user_id", "time_zone"))
    now = timezone.now()
    states: dict[int, list[dict]] = defaultdict(lambda: [{} for _ in specs])
    seen: dict[int, list[set[str]]] = defaultdict(lambda: [set() for _ in specs])
    events = (
        Event.objects.filter(event_type__in=types, processed_at__isnull=False)
        .order_by("user_id", "occurred_at", "pk")
        .values_list("user_id", "event_type", "payload", "occurred_at")
    )
    for user_id, event_type, payload, occurred_at in events.iterator(chunk_size=5000):
        fact = progress.Fact(event_type, payload, occurred_at)
        zone = zones.get(user_id, "UTC")
        for index, spec in enumerate(specs):
            if not progress.relevant(spec, fact):
                continue
            states[user_id][index] = progress.fold_in_memory(
                spec, states[user_id][index], fact, zone, seen[user_id][index]
            )

    holders = set(Unlock.objects.filter(badge=badge).values_list("user_id", flat=True))
    result = Preview(users_with_events=len(states))
    qualifying = set()
    for user_id, user_states in states.items():
        zone = zones.get(user_id, "UTC")
        status = progress.badge_status(
            [
                progress.measure(spec, state, now, zone)
                for spec, state in zip(specs, user_states, strict=True)
            ]
        )
        if status.met:
            qualifying.add(user_id)
    result.would_qualify = len(qualifying)
    result.newly_qualify = sorted(qualifying - holders)
    result.no_longer_qualify = sorted(holders - qualifying)
    result.sample = list(
        get_user_model()
        .objects.filter(pk__in=result.newly_qualify[:SAMPLE_SIZE])
        .order_by("pk")
        .values_list("username", flat=True)
    )
    return result
