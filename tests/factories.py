"""Keyword-only factories that state every field a test depends on."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import User

from achievements import rules
from achievements.models import Badge, BadgeRequirement
from examples.places.models import Place

PASSWORD = "correct-horse-battery"


def make_user(*, username: str, is_staff: bool = False) -> User:
    user = get_user_model().objects.create_user(
        username=username, password=PASSWORD, is_staff=is_staff
    )
    return user


def make_badge(
    *,
    key: str,
    name: str | None = None,
    requirements: list[dict[str, Any]],
    is_active: bool = True,
    description: str = "",
    icon: str = "",
) -> Badge:
    badge = Badge.objects.create(
        key=key,
        name=name or key.replace("_", " ").title(),
        description=description,
        icon=icon,
        is_active=is_active,
    )
    for requirement in requirements:
        make_requirement(badge=badge, **requirement)
    return badge


def make_requirement(
    *,
    badge: Badge,
    event_type: str,
    threshold: int | Decimal,
    aggregation: rules.Aggregation = rules.Aggregation.COUNT,
    field: str = "",
    label: str = "",
) -> BadgeRequirement:
    return BadgeRequirement.objects.create(
        badge=badge,
        event_type=event_type,
        aggregation=aggregation,
        field=field,
        threshold=Decimal(threshold),
        label=label,
    )


def make_places_badge(*, threshold: int = 5) -> Badge:
    return make_badge(
        key=f"places_visited_{threshold}",
        name=f"{threshold} Places Visited",
        requirements=[
            {
                "event_type": "visit.created",
                "aggregation": rules.Aggregation.DISTINCT,
                "field": "place_id",
                "threshold": threshold,
                "label": "different places",
            }
        ],
    )


def make_images_badge(*, threshold: int = 10) -> Badge:
    return make_badge(
        key=f"images_posted_{threshold}",
        name=f"{threshold} Images Posted",
        requirements=[{"event_type": "image.posted", "threshold": threshold}],
    )


def make_places(*, names: list[str]) -> list[Place]:
    return [Place.objects.create(name=name) for name in names]
