"""Importing and exporting rule files: the whole file validated, then written (docs/rules.md)."""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal, InvalidOperation
from typing import Any

from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.db import transaction

from achievements.models import Badge, BadgeRequirement
from achievements.progress import find_cycle
from achievements.ruleformat import (
    BADGE_FIELDS,
    FORMAT,
    OPTIONAL_BADGE_FIELDS,
    REQUIREMENT_FIELDS,
    VERSION,
    document,
    export_badges_data,
    requirement_data,
)
from achievements.versions import record_versions
from project.inputs import json_value_problem


class RuleFileError(ValueError):
    """Every problem in a rule file, each naming the entry and field."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def export_badges() -> dict[str, Any]:
    badges = Badge.objects.select_related("segment_group").prefetch_related(
        "requirements__composite_badges"
    )
    return document(export_badges_data(badges.order_by("key")))


def import_badges(document: Any, *, by: Any = None, source: str = "import") -> tuple[int, int]:
    """Validate the whole document, then write it; nothing is written if anything is wrong.

    Badges are matched by key and updated in place; a badge's requirements
    are replaced only when they differ, so unchanged rules keep users'
    progress. Each badge whose rule changed gets a new version, made `by`
    that user from `source`. Returns (badges created, badges updated).
    """
    planned = validate(document)
    created = updated = 0
    pending: list[BadgeRequirement] = []
    with transaction.atomic():
        for badge, requirements in planned:
            if badge.pk is None:
                created += 1
            else:
                updated += 1
            badge.save()
            current = [requirement_data(r) for r in badge.requirements.order_by("pk")]
            wanted = [requirement_data(r) for r in requirements]
            if current != wanted:
                badge.requirements.all().delete()
                for requirement in requirements:
                    requirement.badge = badge
                    requirement.save()
                    pending.append(requirement)
        # Composite parts by key, once every badge in the file exists.
        for requirement in pending:
            keys = getattr(requirement, "_part_keys", [])
            requirement.composite_badges.set(Badge.objects.filter(key__in=keys))
        record_versions([badge.pk for badge, _ in planned], by=by, source=source)
    return created, updated


def validate(document: Any) -> list[tuple[Badge, list[BadgeRequirement]]]:
    """Every badge and its requirements, unsaved; RuleFileError lists every problem."""
    problems: list[str] = []
    if not isinstance(document, dict):
        raise RuleFileError(["the file must hold a JSON object"])
    # Before anything walks it or saves it: text PostgreSQL or UTF-8 cannot
    # store, numbers JSON cannot write, nesting a walk would recurse through.
    unstorable = json_value_problem(document)
    if unstorable:
        where, problem = unstorable
        raise RuleFileError([f"{where.lstrip('.') or 'the file'}: {problem}"])
    if document.get("format") != FORMAT:
        problems.append(f"format: must be {FORMAT!r}")
    if document.get("version") != VERSION:
        problems.append(f"version: must be {VERSION}")
    entries = document.get("badges")
    if not isinstance(entries, list):
        raise RuleFileError([*problems, "badges: must be a list"])
    planned = []
    seen_keys: set[str] = set()
    for index, entry in enumerate(entries):
        where = f"badges[{index}]"
        if not isinstance(entry, dict):
            problems.append(f"{where}: must be an object")
            continue
        key = entry.get("key")
        where = f"badges[{index}] ({key!r})"
        if key in seen_keys:
            problems.append(f"{where}.key: appears twice in the file")
        if isinstance(key, str):
            seen_keys.add(key)
        unknown = set(entry) - {
            "key",
            "segment",
            "requirements",
            *BADGE_FIELDS,
            *OPTIONAL_BADGE_FIELDS,
        }
        for name in sorted(unknown):
            problems.append(f"{where}.{name}: is not a badge field")
        # Start from the stored badge, so fields a file leaves out keep their values.
        badge = (isinstance(key, str) and Badge.objects.filter(key=key).first()) or Badge(
            key=key if isinstance(key, str) else ""
        )
        for name in BADGE_FIELDS:
            if name in entry:
                setattr(badge, name, entry[name])
        for name, default in OPTIONAL_BADGE_FIELDS.items():
            # Left out: the default, as the file was written (not the stored value).
            setattr(badge, name, entry.get(name, default))
        segment = entry.get("segment")
        if "segment" in entry and segment is None:
            badge.segment_group, badge.segment_attribute, badge.segment_value = None, "", ""
        elif segment:
            if isinstance(segment, dict) and set(segment) == {"group"}:
                group = Group.objects.filter(name=segment["group"]).first()
                if group is None:
                    problems.append(f"{where}.segment.group: no group named {segment['group']!r}")
                badge.segment_group = group
            elif isinstance(segment, dict) and set(segment) == {"attribute", "value"}:
                badge.segment_attribute = str(segment["attribute"])
                badge.segment_value = str(segment["value"])
            else:
                problems.append(
                    f'{where}.segment: must be {{"group": NAME}} or '
                    '{"attribute": NAME, "value": VALUE} or null'
                )
        problems += _field_errors(where, badge, exclude=["key"] if not key else [])
        requirements = []
        items = entry.get("requirements")
        if not isinstance(items, list) or not items:
            problems.append(f"{where}.requirements: must be a non-empty list")
            items = []
        for number, item in enumerate(items):
            place = f"{where}.requirements[{number}]"
            if not isinstance(item, dict):
                problems.append(f"{place}: must be an object")
                continue
            for name in sorted(set(item) - {*REQUIREMENT_FIELDS, "composite_badges"}):
                problems.append(f"{place}.{name}: is not a requirement field")
            requirement = BadgeRequirement()
            problems += _part_problems(place, item, key, entries)
            parts = item.get("composite_badges", [])
            requirement._part_keys = sorted(parts) if isinstance(parts, list) else []  # type: ignore[attr-defined]
            for name in REQUIREMENT_FIELDS:
                if name in item:
                    value = item[name]
                    if name == "threshold":
                        try:
                            value = Decimal(str(value))
                        except InvalidOperation:
                            problems.append(f"{place}.threshold: must be a number")
                            continue
                    setattr(requirement, name, value)
            problems += _field_errors(place, requirement, exclude=["badge"])
            requirements.append(requirement)
        if requirements and not any(p.startswith(f"{where}.") for p in problems):
            problems += [
                f"{where}.{name}: {message}"
                for name, message in badge.rule_problems(requirements).items()
            ]
        planned.append((badge, requirements))
    problems += _circle_problems(planned)
    if problems:
        raise RuleFileError(problems)
    return planned


def _circle_problems(planned: list[tuple[Badge, list[BadgeRequirement]]]) -> list[str]:
    """Composites that would require each other in a circle, once the file is in:
    its badges' parts as the file gives them, the other badges' as stored."""
    edges: dict[str, set[str]] = defaultdict(set)
    for whole, part in (
        BadgeRequirement.objects.filter(kind="composite")
        .exclude(badge__key__in=[badge.key for badge, _ in planned])
        .values_list("badge__key", "composite_badges__key")
    ):
        if part is not None:
            edges[whole].add(part)
    for badge, requirements in planned:
        for requirement in requirements:
            if requirement.kind == "composite":
                edges[badge.key].update(getattr(requirement, "_part_keys", []))
    cycle = find_cycle(edges)
    if cycle is None:
        return []
    numbers = [n for n, (badge, _) in enumerate(planned) if badge.key in cycle]
    where = f"badges[{numbers[0]}] ({planned[numbers[0]][0].key!r})" if numbers else "badges"
    return [
        f"{where}.requirements: these badges would require each other in a circle: "
        + " → ".join(cycle)
    ]


def _field_errors(where: str, instance: Any, *, exclude: list[str]) -> list[str]:
    try:
        instance.full_clean(exclude=exclude, validate_unique=False)
    except ValidationError as exc:
        return [
            f"{where}.{field}: {message}"
            for field, messages in exc.message_dict.items()
            for message in messages
        ]
    return []


def _part_problems(place: str, item: dict[str, Any], key: Any, entries: list[Any]) -> list[str]:
    parts = item.get("composite_badges", [])
    if not isinstance(parts, list) or not all(isinstance(part, str) for part in parts):
        return [f"{place}.composite_badges: must be a list of badge keys"]
    problems = []
    in_file = {entry.get("key") for entry in entries if isinstance(entry, dict)}
    stored = set(Badge.objects.filter(key__in=parts).values_list("key", flat=True))
    missing = sorted(set(parts) - in_file - stored)
    if missing:
        problems.append(
            f"{place}.composite_badges: no badge with key " + ", ".join(map(repr, missing))
        )
    if item.get("kind") == "composite" and not parts:
        problems.append(f"{place}.composite_badges: name the badges it is made of")
    if key in parts:
        problems.append(f"{place}.composite_badges: a badge cannot require itself")
    return problems


__all__ = [
    "FORMAT",
    "VERSION",
    "RuleFileError",
    "document",
    "export_badges",
    "export_badges_data",
    "import_badges",
    "validate",
]
