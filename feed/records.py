"""The feed's records, schema 1: one JSON object a line (docs/integrations.md).

Three kinds, told apart by `record`: an `event` evaluated, a `decision` (what
the event did to one requirement of a badge the user can earn), and an
`unlock` (a change to a user's hold on a badge: earned, granted, revoked,
expired, lost). Every record has `schema`, `record`, `dedup_key` (the same
for the same fact however often it is written out), `user_id` and
`processing_time`. Fields are only added within a schema number; a renamed or
removed field, or a changed meaning, is a new number.

Lines are put together from pre-encoded parts: a batch of 2,000 events can
make 10,000 decision records, written in the batch's transaction.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime

from achievements import index
from achievements.core import Decision
from achievements.engine import Claimed
from achievements.models import BadgeVersion, LedgerEntry
from achievements.versions import live_version_id

SCHEMA = 1

_dumps = json.JSONEncoder(ensure_ascii=False).encode
_numbers: dict[int, int] = {}  # rule version id -> its number (versions never change)


def _time(value: datetime | None) -> str:
    return "null" if value is None else f'"{value.isoformat()}"'


def version_numbers(version_ids: Iterable[int | None]) -> dict[int, int]:
    """The numbers of these rule versions (looked up once a process)."""
    missing = {pk for pk in version_ids if pk is not None and pk not in _numbers}
    if missing:
        _numbers.update(BadgeVersion.objects.filter(pk__in=missing).values_list("pk", "number"))
    return _numbers


def _badges(badge_ids: set[int]) -> dict[int, str]:
    """Each badge's fixed part of a decision: its id, key and live rule version."""
    rules = index.rule_set()
    versions = {
        badge_id: (rule.version_id if (rule := rules.badges.get(badge_id)) else None)
        or live_version_id(badge_id)
        for badge_id in badge_ids
    }
    numbers = version_numbers(versions.values())
    parts = {}
    for badge_id in badge_ids:
        badge = index.badge(badge_id)
        number = numbers.get(versions[badge_id]) if versions[badge_id] is not None else None
        key = _dumps(badge.key) if badge is not None else "null"
        parts[badge_id] = f'"badge_id":{badge_id},"badge":{key},"rule_version":{_dumps(number)}'
    return parts


def batch_lines(
    events: Sequence[Claimed], decisions: Sequence[Decision], now: datetime
) -> list[str]:
    """The records of one evaluated batch: its events, then their decisions."""
    processing = _time(now)
    lines: list[str] = []
    shared: dict[int, str] = {}
    for event in events:
        common = (
            f'"user_id":{event.user_id},"event_id":{_dumps(event.event_id)},'
            f'"producer":{_dumps(event.producer)},"event_type":{_dumps(event.event_type)},'
            f'"event_time":{_time(event.occurred_at)},"processing_time":{processing}'
        )
        shared[event.pk] = common
        lines.append(
            f'{{"schema":{SCHEMA},"record":"event","dedup_key":"event:{event.pk}",{common},'
            f'"received_time":{_time(event.received_at)}}}'
        )
    badges = _badges({badge_id for _, badge_id, _, _ in decisions})
    lines += [
        f'{{"schema":{SCHEMA},"record":"decision","dedup_key":"decision:{pk}:{rule_id}",'
        f'{shared[pk]},{badges[badge_id]},"rule_id":{rule_id},"decision":"{decision}"}}'
        for pk, badge_id, rule_id, decision in decisions
    ]
    return lines


def ledger_lines(entries: Sequence[LedgerEntry], now: datetime) -> list[str]:
    """The records of these ledger entries: one `unlock` record each."""
    numbers = version_numbers(entry.version_id for entry in entries)
    processing = _time(now)
    lines = []
    for entry in entries:
        badge = index.badge(entry.badge_id)
        unlock = entry.unlock
        number = numbers.get(entry.version_id) if entry.version_id is not None else None
        lines.append(
            f'{{"schema":{SCHEMA},"record":"unlock",'
            f'"dedup_key":"unlock:{entry.unlock_id}:{entry.kind}","user_id":{entry.user_id},'
            f'"processing_time":{processing},"change":"{entry.kind}",'
            f'"unlock_id":{entry.unlock_id},"badge_id":{entry.badge_id},'
            f'"badge":{_dumps(badge.key) if badge is not None else "null"},'
            f'"tier":{entry.tier},"period":{_dumps(entry.period)},'
            f'"rule_version":{_dumps(number)},"effective_time":{_time(entry.at)},'
            f'"unlocked_at":{_time(unlock.unlocked_at)},"silent":{_dumps(unlock.silent)},'
            f'"cause":"{entry.cause}","event_ids":{_dumps(entry.event_ids)}}}'
        )
    return lines
