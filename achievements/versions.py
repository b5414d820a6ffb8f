"""Immutable versions of each badge's rule, and what changed between them.

A version is the badge as a rule file holds it (achievements.rulefiles), so a
version can be read, diffed and re-imported. Writers of rules (the admin,
rule-file import, the preview's apply) call record_version after saving; it
adds a version only when the rule differs from the latest one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
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
        # FOR NO KEY UPDATE serialises version writers without blocking the
        # evaluations that commit rows pointing at the badge (a deferred foreign
        # key takes KEY SHARE at commit). FOR UPDATE blocked them: two workers
        # each recording one badge's first version and committing rows of the
        # other deadlocked.
        Badge.objects.select_for_update(no_key=True).filter(pk=badge.pk).first()
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


# Badges known to have a version in this process: versions are never deleted
# (only with their badge), so each badge is looked up once.
_versioned: set[int] = set()


def ensure_versions(badge_ids: Iterable[int]) -> None:
    """Record a first version for each of these badges that has none, each in a
    transaction of its own.

    Evaluations call this before their transaction. Recording a version locks
    the badge until the transaction that does it commits; inside a long
    evaluation transaction, two of them recording first versions of two badges
    in opposite orders deadlocked (a replay in two processes did, at once).
    """
    wanted = set(badge_ids) - _versioned
    if not wanted:
        return
    have = set(
        BadgeVersion.objects.filter(badge_id__in=wanted)
        .order_by()
        .values_list("badge_id", flat=True)
        .distinct()
    )
    for badge in Badge.objects.filter(pk__in=wanted - have).order_by("pk"):
        record_version(badge, source="first unlock")
    _versioned.update(wanted)


def current_version(badge_id: int) -> BadgeVersion:
    """The version live evaluation runs under; the first is recorded if none exists yet."""
    latest = BadgeVersion.objects.filter(badge_id=badge_id).order_by("-number").first()
    if latest is not None:
        return latest
    return record_version(Badge.objects.get(pk=badge_id), source="first unlock")


def live_version_id(badge_id: int) -> int:
    """The version an unlock made now records: the one the rules index was built
    with (the rules being evaluated), else the latest, recorded if none exists."""
    from achievements import index

    known = index.version_of(badge_id)
    return known if known is not None else current_version(badge_id).pk


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
