"""The badge ledger: every earning, grant, revocation and expiry, one immutable row each."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import models
from django.dispatch import Signal
from django.utils import timezone

from achievements.models.badges import Badge
from achievements.models.standings import Unlock


class Entry(models.TextChoices):
    EARNED = "earned", "Earned"
    GRANTED = "granted", "Granted by staff"
    REVOKED = "revoked", "Revoked by staff"
    EXPIRED = "expired", "Expired"
    LAPSED = "lapsed", "Lost: its rule no longer holds"


# Sent inside the transaction that adds ledger entries, with `entries`: the
# LedgerEntry objects added (on PostgreSQL's batched path, unsaved twins of the
# rows the statement inserted), each with its `unlock` attached. Receivers
# that write do so in the same transaction, so what they write commits or
# rolls back with the entries: the webhooks' outbox (webhooks.outbox).
ledger_written = Signal()


def listening() -> bool:
    """Whether anything receives `ledger_written` (else entries need not be built for it)."""
    return ledger_written.has_listeners(LedgerEntry)


def announce(entries: list[LedgerEntry]) -> None:
    """Tell `ledger_written`'s receivers of these entries (nothing when there are none)."""
    if entries and listening():
        ledger_written.send(sender=LedgerEntry, entries=entries)


class LedgerQuerySet(models.QuerySet["LedgerEntry"]):
    def of_user(self, user_id: int) -> LedgerQuerySet:
        return self.filter(user_id=user_id).select_related("badge", "actor")

    def record(
        self,
        unlocks: Iterable[Unlock],
        kind: str,
        at: datetime,
        *,
        actor_id: int | None = None,
        api_key_id: int | None = None,
        reason: str = "",
    ) -> list[LedgerEntry]:
        """Add an entry of `kind` for each of these (saved) unlocks, and announce them."""
        entries = LedgerEntry._default_manager.bulk_create(
            [
                LedgerEntry.for_unlock(
                    unlock, kind, at, actor_id=actor_id, api_key_id=api_key_id, reason=reason
                )
                for unlock in unlocks
            ]
        )
        announce(entries)
        return entries


class LedgerEntry(models.Model):
    """One thing that happened to a user's hold on a badge, with its cause.

    An earning's cause is its rule version and the events that completed it;
    a grant's or revocation's, the staff member (or API key) and their reason.
    Rows are only ever added: the holding state (`Unlock`, `UserBadge`) is
    what these rows add up to, written in the same transaction.
    """

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="badge_ledger"
    )
    badge = models.ForeignKey(Badge, on_delete=models.CASCADE, related_name="ledger")
    unlock = models.ForeignKey(
        Unlock,
        on_delete=models.CASCADE,
        related_name="ledger",
        help_text="The earning this entry started or ended.",
    )
    kind = models.CharField(max_length=8, choices=Entry.choices)
    period = models.CharField(max_length=32, blank=True, default="")
    tier = models.PositiveSmallIntegerField(default=0)
    at = models.DateTimeField(default=timezone.now, help_text="When it took effect.")
    version = models.ForeignKey(
        "BadgeVersion",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        help_text="Earnings: the rule version that earned it.",
    )
    event_ids = models.JSONField(
        default=list, blank=True, help_text="Earnings: the producer's ids of the events it cites."
    )
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        help_text="Grants and revocations: the staff member who made it.",
    )
    api_key = models.ForeignKey(
        "api.ApiKey",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        help_text="Grants and revocations made through the API: the key.",
    )
    reason = models.TextField(blank=True)

    objects = LedgerQuerySet.as_manager()

    class Meta:
        ordering = ["-at", "-id"]
        verbose_name = "ledger entry"
        verbose_name_plural = "ledger"
        indexes = [
            models.Index(fields=["user", "badge", "at"], name="ledger_user_badge"),
            # The reports: revocations and expiries over time, beside unlocks.
            models.Index(fields=["kind", "at"], name="ledger_kind_at"),
        ]

    def __str__(self) -> str:
        return f"{self.user} · {self.badge}{self.unlock.suffix()}: {self.get_kind_display()}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise ValueError("Ledger entries are immutable; add a new one instead.")
        super().save(*args, **kwargs)

    @classmethod
    def for_unlock(
        cls,
        unlock: Unlock,
        kind: str,
        at: datetime,
        *,
        actor_id: int | None = None,
        api_key_id: int | None = None,
        reason: str = "",
    ) -> LedgerEntry:
        """An (unsaved) entry for a saved unlock; an earning cites its version and events."""
        earned = kind == Entry.EARNED
        return cls(
            user_id=unlock.user_id,
            badge_id=unlock.badge_id,
            unlock=unlock,
            kind=kind,
            period=unlock.period,
            tier=unlock.tier,
            at=at,
            version_id=unlock.version_id if earned else None,
            event_ids=unlock.event_ids if earned else [],
            actor_id=actor_id,
            api_key_id=api_key_id,
            reason=reason,
        )

    @property
    def cause(self) -> str:
        """What made it: "rule", "schedule", "api" (a key) or "staff"."""
        if self.kind in (Entry.EARNED, Entry.LAPSED):
            return "rule"
        if self.kind == Entry.EXPIRED:
            return "schedule"
        return "api" if self.api_key_id is not None else "staff"

    @property
    def by(self) -> str:
        """Who or what caused it, in a few words."""
        cause = self.cause
        if cause == "rule":
            return "its rule"
        if cause == "schedule":
            return "the expiry schedule"
        if self.actor_id is not None:
            return str(self.actor)
        return f"API key {self.api_key}" if cause == "api" else "staff"
