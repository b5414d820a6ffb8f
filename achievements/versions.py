"""Immutable versions of each badge's rule, and what changed between them.

A version is the badge as a rule file holds it (achievements.rulefiles), so a
version can be read, diffed and re-imported. Writers of rules (the admin,
rule-file import, the preview's apply) call record_version after saving; it
adds a version only when the rule differs from the latest one.
"""

from __future__ import annotations

import json
from typing import Any

from django.db import transaction

from achievements.models import Badge, BadgeVersion

_MISSING = object()


def snapshot(badge: Badge) -> dict[str, Any]:
    from achievements.rulefiles import export_badges_data

    [rule] = export_badges_data([badge])
    return rule


def record_version(badge: Badge, *, by: Any = None, source: str) -> BadgeVersion:
    """The badge's current rule as a version: a new one if it changed, else the latest.

    The badge row is locked so two saves of one badge never take the same
    version number.
    """
    with transaction.atomic():
        Badge.objects.select_for_update().filter(pk=badge.pk).first()
        latest = badge.versions.order_by("-number").first()
        rule = snapshot(badge)
        if latest is not None and latest.rule == rule:
            return latest
        return BadgeVersion.objects.create(
            badge=badge,
            number=latest.number + 1 if latest else 1,
            rule=rule,
            changes=diff(latest.rule if latest else None, rule),
            created_by=by if getattr(by, "is_authenticated", False) else None,
            source=source,
        )


def current_version(badge_id: int) -> BadgeVersion:
    """The version live evaluation runs under; the first is recorded if none exists yet."""
    latest = BadgeVersion.objects.filter(badge_id=badge_id).order_by("-number").first()
    if latest is not None:
        return latest
    return record_version(Badge.objects.get(pk=badge_id), source="first unlock")


def diff(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """What changed, a line per field: 'requirements[0].threshold: "5" → "10"'."""
    if old is None:
        return ["first version"]
    lines: list[str] = []
    _walk("", old, new, lines)
    return lines


def _walk(path: str, old: Any, new: Any, lines: list[str]) -> None:
    if old == new:
        return
    if isinstance(old, dict) and isinstance(new, dict):
        for key in [*old, *(k for k in new if k not in old)]:
            _walk(
                f"{path}.{key}" if path else key,
                old.get(key, _MISSING),
                new.get(key, _MISSING),
                lines,
            )
        return
    if isinstance(old, list) and isinstance(new, list):
        for index in range(max(len(old), len(new))):
            where = f"{path}[{index}]"
            if index >= len(old):
                lines.append(f"{where}: added {_show(new[index])}")
            elif index >= len(new):
                lines.append(f"{where}: removed {_show(old[index])}")
            else:
                _walk(where, old[index], new[index], lines)
        return
    lines.append(f"{path}: {_show(old)} → {_show(new)}")


def _show(value: Any) -> str:
    if value is _MISSING:
        return "(none)"
    return json.dumps(value, ensure_ascii=False, sort_keys=True)
