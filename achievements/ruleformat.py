"""A badge and its requirements as a rule file holds them (docs/rules.md).

The one serialised form of a rule: rule files are written with it, and each
rule version (achievements.versions) stores it, so a version can be read,
diffed and imported again.
"""

from __future__ import annotations

from typing import Any

from achievements.models import Badge, BadgeRequirement, format_number

FORMAT = "accolade-badges"
VERSION = 1
BADGE_FIELDS = (
    "name",
    "description",
    "icon",
    "is_active",
    "sort_order",
    "hidden",
    "tiers",
    "repeat",
)
# Written only when they differ from these defaults, so the rule of a badge that
# does not use them reads (and versions) as it did before they existed.
OPTIONAL_BADGE_FIELDS = {
    "category": "",
    "valid_days": 0,
    "remind_days": 0,
    "announce_endings": False,
    "holds_while_met": False,
}
REQUIREMENT_FIELDS = (
    "kind",
    "event_type",
    "aggregation",
    "field",
    "operator",
    "threshold",
    "scope",
    "window_days",
    "streak_unit",
    "steps",
    "filters",
    "composite_mode",
    "label",
)


def export_badges_data(badges: Any) -> list[dict[str, Any]]:
    return [_badge_data(badge) for badge in badges]


def document(badges: list[dict[str, Any]]) -> dict[str, Any]:
    return {"format": FORMAT, "version": VERSION, "badges": badges}


def _badge_data(badge: Badge) -> dict[str, Any]:
    data: dict[str, Any] = {"key": badge.key}
    data.update({name: getattr(badge, name) for name in BADGE_FIELDS})
    data.update(
        {
            name: getattr(badge, name)
            for name, default in OPTIONAL_BADGE_FIELDS.items()
            if getattr(badge, name) != default
        }
    )
    segment: dict[str, str] | None = None
    if badge.segment_group:
        segment = {"group": badge.segment_group.name}
    elif badge.segment_attribute:
        segment = {"attribute": badge.segment_attribute, "value": badge.segment_value}
    data["segment"] = segment
    # all(), not order_by(): a prefetch of the requirements (and their parts)
    # serves it. A prefetch is as old as its query: pass badges read after the
    # last change of their requirements (an admin form's instance is not).
    requirements = sorted(badge.requirements.all(), key=lambda r: r.pk)
    data["requirements"] = [requirement_data(r) for r in requirements]
    return data


def requirement_data(requirement: BadgeRequirement) -> dict[str, Any]:
    data = {name: getattr(requirement, name) for name in REQUIREMENT_FIELDS}
    data["threshold"] = format_number(requirement.threshold)
    parts = getattr(requirement, "_part_keys", None)
    if parts is None:
        parts = sorted(b.key for b in requirement.composite_badges.all()) if requirement.pk else []
    data["composite_badges"] = parts
    return data
