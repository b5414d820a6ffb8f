"""What a badge card shows, as plain data.

Pages and pushed frames render the same card partial from these dicts, so a
progress bar looks the same whether it came with the page or over the socket.
The dicts hold only JSON-friendly values because they travel through the
channel layer.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django.utils import timezone
from django.utils.formats import date_format
from django.utils.timezone import localtime

from accounts.models import time_zone_for
from achievements import progress
from achievements.models import Badge, RequirementProgress, Unlock, UserBadge, format_number

Card = dict[str, Any]


def cards_for_user(
    user_id: int | None,
    *,
    badge_ids: Iterable[int] | None = None,
    event_types: Iterable[str] | None = None,
    changed_since: datetime | None = None,
) -> list[Card]:
    """Cards for the user's active badges (optionally only some), in display order."""
    badges = Badge.objects.for_user(user_id).prefetch_related(
        "requirements", "requirements__composite_badges"
    )
    if badge_ids is not None:
        badges = badges.filter(pk__in=list(badge_ids))
    if changed_since is not None and user_id is not None:
        badges = badges.filter(
            user_badges__user_id=user_id, user_badges__last_evaluated_at__gt=changed_since
        )
    if event_types is not None:
        badges = badges.filter(requirements__event_type__in=list(event_types)).distinct()
    badges_list = list(badges)
    now = timezone.now()
    if user_id is None:
        # Nobody yet (an unlinked producer id): every badge at zero.
        return [_card(badge, None, {}, now, "UTC", set()) for badge in badges_list]
    user_badges = {
        ub.badge_id: ub for ub in UserBadge.objects.filter(user_id=user_id, badge__in=badges_list)
    }
    states = dict(
        RequirementProgress.objects.filter(
            user_id=user_id, requirement__badge__in=badges_list
        ).values_list("requirement_id", "state")
    )
    time_zone = time_zone_for(user_id)
    unlocked = Unlock.objects.badge_ids_of(user_id)
    return [
        _card(badge, user_badges.get(badge.pk), states, now, time_zone, unlocked)
        for badge in badges_list
    ]


def _card(
    badge: Badge,
    user_badge: UserBadge | None,
    states: dict[int, dict[str, Any]],
    now: datetime,
    time_zone: str,
    unlocked: set[int],
) -> Card:
    requirements = list(badge.requirements.all())
    measures = [r.measure(states.get(r.pk), now, time_zone, unlocked) for r in requirements]
    status = progress.badge_status(measures)
    completed_at = user_badge.completed_at if user_badge else None
    mystery = badge.hidden and completed_at is None
    return {
        "id": badge.pk,
        "key": badge.key,
        "name": "Mystery badge" if mystery else badge.name,
        "description": "Keep going to find out what unlocks it." if mystery else badge.description,
        "icon": "❓" if mystery else badge.icon,
        "hidden": mystery,
        "percent": 100 if completed_at else status.percent,
        "current": format_number(status.current),
        "target": format_number(status.target),
        "completed": completed_at is not None,
        "completed_at": completed_at.isoformat() if completed_at else None,
        "completed_on": (
            date_format(localtime(completed_at), "DATE_FORMAT") if completed_at else ""
        ),
        "requirements": [
            {
                "label": r.unit_label(),
                "current": format_number(
                    measure.target if measure.met else min(measure.value, measure.target)
                ),
                "target": format_number(measure.target),
                "text": measure.text,
                "met": measure.met,
            }
            for r, measure in zip(requirements, measures, strict=True)
        ]
        if not mystery
        else [],
    }


def unseen_unlocks(user_id: int, *, limit: int) -> list[dict[str, Any]]:
    """The user's unlocks that no page has shown yet, oldest first, with their cards."""
    unlocks = list(
        Unlock.objects.filter(
            user_id=user_id, seen_at__isnull=True, silent=False, badge__is_active=True
        )
        .order_by("unlocked_at", "pk")
        .values_list("pk", "badge_id")[:limit]
    )
    if not unlocks:
        return []
    badge_ids = [badge_id for _, badge_id in unlocks]
    cards = {card["id"]: card for card in cards_for_user(user_id, badge_ids=badge_ids)}
    return [
        {"unlock_id": pk, "card": cards[badge_id]} for pk, badge_id in unlocks if badge_id in cards
    ]
