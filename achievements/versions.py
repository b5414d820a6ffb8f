"""Immutable versions of each badge's rule, and what changed between them.

A version is the badge as a rule file holds it (achievements.ruleformat), so a
version can be read, diffed and re-imported. Writers of rules (the admin,
rule-file import, the preview's apply) call record_version after saving; it
adds a version only when the rule differs from the latest one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from django.db import transaction
from django.db.models import OuterRef, Subquery

from achievements import index
from achievements.models import Badge, BadgeVersion
from achievements.ruleformat import export_badges_data

_MISSING = object()


def record_version(badge: Badge, *, by: Any = None, source: str) -> BadgeVersion:
    """The badge's current rule as a version: a new one if it changed, else the latest.

    The badge row is locked so two saves of one badge never take the same
    version number.
    """
    versions = record_versions([badge.pk], by=by, source=source)
    if badge.pk not in versions:
        raise Badge.DoesNotExist(f"Badge {badge.pk} does not exist; it has no rule to record.")
    return versions[badge.pk]


def record_versions(
    badge_ids: Iterable[int], *, by: Any = None, source: str, skip_locked: bool = False
) -> dict[int, BadgeVersion]:
    """record_version for many badges, in one transaction and a fixed number of
    queries: badge id → its version, new or latest.

    The rules are read as stored (not from any instance in memory) once
    their rows are locked, in id order. With `skip_locked`, a badge another
    transaction holds is left out of the result.
    """
    with transaction.atomic():
        # FOR NO KEY UPDATE serialises version writers without blocking the
        # evaluations that commit rows pointing at the badge (a deferred foreign
        # key takes KEY SHARE at commit). FOR UPDATE blocked them: two workers
        # each recording one badge's first version and committing rows of the
        # other deadlocked.
        locked = list(
            Badge.objects.select_for_update(no_key=True, skip_locked=skip_locked)
            .filter(pk__in=set(badge_ids))
            .order_by("pk")
            .values_list("pk", flat=True)
        )
        if not locked:
            return {}
        newest = BadgeVersion.objects.filter(badge=OuterRef("badge")).order_by("-number")
        latest = {
            version.badge_id: version
            for version in BadgeVersion.objects.filter(
                badge_id__in=locked, number=Subquery(newest.values("number")[:1])
            )
        }
        badges = (
            Badge.objects.filter(pk__in=locked)
            .select_related("segment_group")
            .prefetch_related("requirements__composite_badges")
            .order_by("pk")
        )
        made = []
        versions: dict[int, BadgeVersion] = {}
        for badge, rule in zip(badges, export_badges_data(badges), strict=True):
            before = latest.get(badge.pk)
            if before is not None and before.rule == rule:
                versions[badge.pk] = before
                continue
            versions[badge.pk] = version = BadgeVersion(
                badge=badge,
                number=before.number + 1 if before else 1,
                rule=rule,
                changes=diff(before.rule if before else None, rule),
                created_by=by if getattr(by, "is_authenticated", False) else None,
                source=source,
            )
            made.append(version)
        if made:
            BadgeVersion.objects.bulk_create(made)
            # The index learns each badge's latest version from here; bulk_create
            # sends no post_save (the receiver in apps.py serves versions saved
            # one by one elsewhere, a shell or a migration), so tell it once.
            index.version_recorded()
            assert all(version.pk for version in made), "bulk_create returned no ids"
    return versions


# Badges known to have a version in this process: versions are never deleted
# (only with their badge), so each badge is looked up once.
_versioned: set[int] = set()


def ensure_versions(badge_ids: Iterable[int]) -> None:
    """Record a first version for each of these badges that has none, before the
    caller's transaction.

    Evaluations call this before their transaction. Recording a version locks
    the badge until the transaction that does it commits; inside a long
    evaluation transaction, two of them recording first versions of two badges
    in opposite orders deadlocked (a replay in two processes did, at once).
    The missing ones are recorded together (a thousand badges made outside
    the admin took a batch 4.1 s one by one, 0.26 s together), skipping any
    badge another transaction holds: waiting for one while holding the
    others could deadlock with an import, which locks its badges in file
    order. Those are then waited for one at a time, still before the
    caller's transaction. Recorded inside it instead (an unlock's fallback),
    the wait would hold the batch's progress rows, which a writer replacing
    the badge's requirements deletes: a deadlock.
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
    if missing := wanted - have:
        have.update(record_versions(missing, source="first unlock", skip_locked=True))
        for held in sorted(missing - have):
            have.update(record_versions([held], source="first unlock"))
    _versioned.update(have)


def current_version(badge_id: int) -> BadgeVersion:
    """The version live evaluation runs under; the first is recorded if none exists yet."""
    latest = BadgeVersion.objects.filter(badge_id=badge_id).order_by("-number").first()
    if latest is not None:
        return latest
    return record_version(Badge.objects.get(pk=badge_id), source="first unlock")


def live_version_id(badge_id: int) -> int:
    """The version an unlock made now records: the one the rules index was built
    with (the rules being evaluated), else the latest, recorded if none exists."""
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
