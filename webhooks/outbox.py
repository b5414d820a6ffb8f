"""The outbox: messages written in the transaction of what they tell.

`write_messages` receives `ledger_written` inside the transaction that adds
the ledger entries (an earning, a grant, a tier, a revocation, an expiry, a
lapse) and adds a message and a delivery per subscribed endpoint there, so
a message exists exactly when its fact committed: a worker that dies after
the commit leaves the deliveries pending, and the sender finds them. The
sending is asked for once the transaction commits.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.contrib.auth import get_user_model

from achievements.db import after_commit
from achievements.models import Badge, Entry, ExternalIdentity, LedgerEntry
from webhooks import sending
from webhooks.models import Delivery, Endpoint, Kind, Message


def kind_of(entry: LedgerEntry) -> str:
    """The message kind of a ledger entry: a badge's first tier is its unlock."""
    if entry.kind in (Entry.EARNED, Entry.GRANTED):
        return Kind.TIER_REACHED if entry.tier > 1 else Kind.BADGE_UNLOCKED
    return {
        Entry.REVOKED: Kind.BADGE_REVOKED,
        Entry.EXPIRED: Kind.BADGE_EXPIRED,
        Entry.LAPSED: Kind.BADGE_LAPSED,
    }[Entry(entry.kind)]


def message_id(entry: LedgerEntry) -> str:
    # An unlock is earned (or granted) once and ends once, so its key and the
    # entry's kind name one fact, whichever path wrote it.
    return f"msg_{entry.unlock_id}_{entry.kind}"


def receiving_endpoints() -> list[Endpoint]:
    """Endpoints that get new messages: enabled ones, and those the sender turned
    off for failing (their messages wait for them), not those staff turned off."""
    return [
        endpoint
        for endpoint in Endpoint.objects.only(
            "pk", "kinds", "include_silent", "is_active", "disabled_at"
        )
        if endpoint.is_active or endpoint.disabled_at is not None
    ]


def write_messages(sender: Any, entries: list[LedgerEntry], **kwargs: Any) -> None:
    """Add the messages and deliveries of these ledger entries (a `ledger_written` receiver)."""
    endpoints = receiving_endpoints()
    if not endpoints:
        return
    wanted = {kind for endpoint in endpoints for kind in endpoint.kinds}
    entries = [entry for entry in entries if kind_of(entry) in wanted]
    if not entries:
        return
    messages = build_messages(entries)
    deliveries = [
        Delivery(message=message, endpoint=endpoint, next_attempt_at=message.created_at)
        for message in messages
        for endpoint in endpoints
        if message.kind in endpoint.kinds and (endpoint.include_silent or not message.silent)
    ]
    if not deliveries:
        return
    Message.objects.bulk_create(
        {d.message_id: d.message for d in deliveries}.values(), ignore_conflicts=True
    )
    Delivery.objects.bulk_create(deliveries, ignore_conflicts=True)
    after_commit(sending.kick, sorted({d.endpoint_id for d in deliveries}))


def build_messages(entries: Iterable[LedgerEntry]) -> list[Message]:
    """The messages of these entries, with what a receiver needs to act on them
    without calling back: who, which badge and tier, when, and why."""
    entries = list(entries)
    badges = Badge.objects.only("key", "name", "tiers").in_bulk({e.badge_id for e in entries})
    user_ids = {e.user_id for e in entries}
    names = dict(
        get_user_model()._default_manager.filter(pk__in=user_ids).values_list("pk", "username")
    )
    external = dict(
        ExternalIdentity.objects.filter(user_id__in=user_ids).values_list("user_id", "external_id")
    )
    messages = []
    for entry in entries:
        badge = badges[entry.badge_id]
        silent = entry.kind in (Entry.EARNED, Entry.LAPSED) and entry.unlock.silent
        messages.append(
            Message(
                id=message_id(entry),
                kind=kind_of(entry),
                created_at=entry.at,
                silent=silent,
                payload={
                    "user": {
                        "id": entry.user_id,
                        "username": names.get(entry.user_id, ""),
                        "external_id": external.get(entry.user_id),
                    },
                    "badge": {"key": badge.key, "name": badge.name},
                    "tier": entry.tier,
                    "tier_name": badge.tier_name(entry.tier),
                    "period": entry.period,
                    "at": entry.at.isoformat().replace("+00:00", "Z"),
                    "cause": entry.cause,
                    "reason": entry.reason,
                    "rule_version": entry.version_id,
                    "event_ids": list(entry.event_ids or []),
                    "unlock_id": entry.unlock_id,
                    "silent": silent,
                },
            )
        )
    return messages
