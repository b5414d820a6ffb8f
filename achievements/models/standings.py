"""Where each user stands: progress per requirement, standing per badge, and unlocks."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.db import models
from django.db.models.functions import Cast
from django.utils import timezone

from achievements.models.badges import Badge, BadgeRequirement
from achievements.models.events import Event


def progress_share() -> models.expressions.CombinedExpression:
    """A user's progress on a badge as a share of its target (a float, on every
    database), for the near-miss report and the index it reads."""
    return Cast("current_value", models.FloatField()) / Cast("target_value", models.FloatField())


class UserBadge(models.Model):
    """A user's standing on one badge: progress, and the unlock once it happens."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="user_badges"
    )
    badge = models.ForeignKey(Badge, on_delete=models.CASCADE, related_name="user_badges")
    current_value = models.DecimalField(max_digits=18, decimal_places=4, default=Decimal(0))
    target_value = models.DecimalField(max_digits=18, decimal_places=4, default=Decimal(0))
    completed_at = models.DateTimeField(null=True, blank=True)
    completed_by_event = models.ForeignKey(
        Event,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        help_text="The event whose evaluation unlocked the badge.",
    )
    last_evaluated_at = models.DateTimeField(null=True, blank=True)
    tier = models.PositiveSmallIntegerField(
        default=0, help_text="Tiered badges: how many tiers the user has reached."
    )
    withheld = models.JSONField(
        default=list,
        # Also when a row is written by raw SQL or COPY (the store, bench/reports.py).
        db_default=models.Value([], output_field=models.JSONField()),
        blank=True,
        help_text="Earnings staff revoked, which the rule does not award again until staff "
        'grant them: the periods of a repeatable badge, or [""] for the whole badge.',
    )
    granted = models.BooleanField(
        default=False,
        db_default=False,
        help_text="The first earning the user holds was granted by staff.",
    )
    expires_at = models.DateTimeField(
        null=True, blank=True, help_text="When the earning held expires (empty: never)."
    )
    since = models.DateTimeField(
        null=True,
        blank=True,
        help_text="After an expiry: only events from this moment count towards earning it again.",
    )
    lapsed_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="Badges held only while their rule holds: when it last stopped holding.",
    )

    class Meta:
        constraints = [
            # One row per user and badge, so there is exactly one place an
            # unlock can be written, whatever races.
            models.UniqueConstraint(fields=["user", "badge"], name="unique_user_badge"),
        ]
        indexes = [
            # The expiry schedule: the standings whose earning is due to expire.
            models.Index(
                fields=["expires_at"],
                name="userbadge_expiry",
                condition=models.Q(expires_at__isnull=False),
            ),
            # Reports: holders per badge and tier, and the nearest misses first.
            models.Index(
                fields=["badge", "tier"],
                include=["completed_at"],
                name="userbadge_holders",
                condition=models.Q(completed_at__isnull=False),
            ),
            models.Index(
                progress_share(),
                name="userbadge_share",
                condition=models.Q(completed_at__isnull=True, target_value__gt=0),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user} · {self.badge}"

    @property
    def is_completed(self) -> bool:
        return self.completed_at is not None

    def restate(self, now: datetime) -> None:
        """Bring the standing in line with the earnings held now (after a grant,
        revocation or expiry), and stamp it so open pages that missed the push
        re-sync its card. Saves what it sets, and `withheld` and `since`."""
        held = list(
            Unlock.objects.held()
            .filter(user_id=self.user_id, badge_id=self.badge_id)
            .order_by("unlocked_at", "pk")
        )
        first = held[0] if held else None
        self.completed_at = first.unlocked_at if first else None
        self.completed_by_event_id = first.event_id if first else None
        self.tier = max((unlock.tier for unlock in held), default=0)
        self.granted = first is not None and first.granted
        if first is None or not self.badge.holds_while_met:
            # (A badge held while its rule holds keeps the moment its evaluation
            # foresaw: the schedule then evaluates it again, which foresees anew.)
            self.expires_at = first.expires_at if first is not None else None
        self.last_evaluated_at = now
        self.save(
            update_fields=[
                "completed_at",
                "completed_by_event",
                "tier",
                "withheld",
                "granted",
                "expires_at",
                "since",
                "current_value",
                "last_evaluated_at",
            ]
        )


class Ending(models.TextChoices):
    REVOKED = "revoked", "Revoked"
    EXPIRED = "expired", "Expired"
    LAPSED = "lapsed", "No longer held"


class UnlockQuerySet(models.QuerySet["Unlock"]):
    def held(self) -> UnlockQuerySet:
        """Earnings the users hold now: not revoked, not expired."""
        return self.filter(ended_at__isnull=True)

    def badge_ids_of(self, user_id: int) -> set[int]:
        """The badges a user holds (what composites are made of)."""
        return set(self.held().filter(user_id=user_id).values_list("badge_id", flat=True))

    def mark_seen(self, user_id: int, unlock_ids: list[int]) -> int:
        """Record that a page of `user_id` showed these unlocks; others' unlocks are ignored."""
        return self.filter(user_id=user_id, pk__in=unlock_ids, seen_at__isnull=True).update(
            seen_at=timezone.now()
        )

    def end(self, unlocks: list[Unlock], ending: str, at: datetime) -> None:
        """End these held unlocks (revoked or expired) at `at`; they stay as history."""
        self.filter(pk__in=[unlock.pk for unlock in unlocks]).update(ended_at=at, ending=ending)
        for unlock in unlocks:
            unlock.ended_at, unlock.ending = at, ending

    def mark_end_seen(self, user_id: int, unlock_ids: list[int]) -> int:
        """Record that a page of `user_id` showed that these earnings ended, and the
        others of the same badge that ended with them (one toast tells of all the
        tiers a revocation took)."""
        ended = set(
            self.filter(user_id=user_id, pk__in=unlock_ids, ended_at__isnull=False).values_list(
                "badge_id", "ended_at"
            )
        )
        if not ended:
            return 0
        together = models.Q()
        for badge_id, ended_at in ended:
            together |= models.Q(badge_id=badge_id, ended_at=ended_at)
        return self.filter(together, user_id=user_id, end_seen_at__isnull=True).update(
            end_seen_at=timezone.now()
        )

    def awaiting_digest(self, user_id: int, since: datetime | None) -> UnlockQuerySet:
        """The user's unlocks the daily email would tell of: held, meant to be
        announced, shown by no page, in no digest yet (from `since` on), of badges
        still in play."""
        unlocks = self.held().filter(
            user_id=user_id,
            seen_at__isnull=True,
            silent=False,
            digested_at__isnull=True,
            badge__is_active=True,
        )
        return unlocks.filter(unlocked_at__gte=since) if since is not None else unlocks

    def mark_digested(self, unlock_ids: list[int], at: datetime) -> int:
        return self.filter(pk__in=unlock_ids, digested_at__isnull=True).update(digested_at=at)

    def mark_delivered(self, unlock_ids: list[int]) -> int:
        """Record that a push carried these unlocks to the channel layer."""
        return self.filter(pk__in=unlock_ids, delivered_at__isnull=True).update(
            delivered_at=timezone.now()
        )


class Unlock(models.Model):
    """One earning of a badge by a user, with whether it reached the user's pages.

    `period` is empty for once-only badges and names the local day, week or
    month for repeatable ones; `tier` is 0 for untiered badges and the tier
    number (1 = the first) for tiered ones. The unique constraint makes a
    second held unlock of the same badge, period and tier impossible; one
    that ended (revoked, expired) stays, as history, beside a later one.
    How it began and ended, and why, is in the ledger (`LedgerEntry`).
    """

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="unlocks"
    )
    badge = models.ForeignKey(Badge, on_delete=models.CASCADE, related_name="unlocks")
    period = models.CharField(max_length=32, blank=True, default="")
    tier = models.PositiveSmallIntegerField(default=0)
    unlocked_at = models.DateTimeField(default=timezone.now)
    event = models.ForeignKey(
        Event,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="unlocks",
        help_text="The event whose evaluation completed the badge.",
    )
    version = models.ForeignKey(
        "BadgeVersion",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="unlocks",
        help_text="The version of the badge's rule it was evaluated under.",
    )
    event_ids = models.JSONField(
        default=list,
        blank=True,
        help_text="The producer's ids of the events that completed it: the one that met "
        "each requirement, and the one evaluated when it unlocked.",
    )
    silent = models.BooleanField(
        default=False, help_text="Unlocked by a replay or re-evaluation: never toasted."
    )
    delivered_at = models.DateTimeField(
        null=True, blank=True, help_text="When a push to the user's pages was first sent."
    )
    seen_at = models.DateTimeField(
        null=True, blank=True, help_text="When a page of the user first showed the toast."
    )
    took = models.DurationField(
        null=True,
        blank=True,
        help_text="First earnings of a badge (each tier): from the user's first qualifying "
        "event to the event that earned it. The time-to-unlock report reads it.",
    )
    # Database defaults too, for rows written by COPY (bench/reports.py).
    granted = models.BooleanField(
        default=False, db_default=False, help_text="Granted by staff, not earned."
    )
    ended_at = models.DateTimeField(
        null=True, blank=True, help_text="When it was revoked or expired; empty while held."
    )
    ending = models.CharField(
        max_length=8, choices=Ending.choices, blank=True, default="", db_default=""
    )
    expires_at = models.DateTimeField(
        null=True, blank=True, help_text="When it expires (badges valid for a number of days)."
    )
    reminded_at = models.DateTimeField(
        null=True, blank=True, help_text="When the user was told it will expire soon."
    )
    end_seen_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="Badges that announce endings: when a page of the user first showed that "
        "it ended.",
    )
    digested_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When the user's daily email told of it (or left it out, as they muted "
        "its notifications).",
    )

    objects = UnlockQuerySet.as_manager()

    class Meta:
        ordering = ["-unlocked_at", "-id"]
        permissions = [("view_reports", "Can view achievement reports")]
        constraints = [
            models.UniqueConstraint(
                fields=["user", "badge", "period", "tier"],
                name="unique_held_unlock",
                condition=models.Q(ended_at__isnull=True),
            ),
        ]
        indexes = [
            models.Index(
                fields=["user", "unlocked_at"],
                name="unlock_unseen",
                condition=models.Q(seen_at__isnull=True, silent=False),
            ),
            # The reports: unlocks over time, per badge, and their latency.
            models.Index(fields=["unlocked_at"], name="unlock_at"),
            models.Index(
                fields=["badge", "unlocked_at"], include=["tier", "took"], name="unlock_badge_at"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user} unlocked {self.badge}{self.suffix()}"

    def suffix(self) -> str:
        """ " (Silver)" or " (2026-W47)": which earning of the badge this is."""
        if self.tier:
            return f" ({self.badge.tier_name(self.tier) or f'tier {self.tier}'})"
        return f" ({self.period})" if self.period else ""

    @property
    def is_held(self) -> bool:
        return self.ended_at is None


class RequirementProgress(models.Model):
    """The running aggregate of one requirement for one user, kept incrementally."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    requirement = models.ForeignKey(
        BadgeRequirement, on_delete=models.CASCADE, related_name="progress"
    )
    value = models.DecimalField(max_digits=18, decimal_places=4, default=Decimal(0))
    state = models.JSONField(
        default=dict, blank=True, help_text="The incremental state (see achievements/progress.py)."
    )
    met_by = models.CharField(
        max_length=128,
        blank=True,
        help_text="The producer's id of the event that first met the requirement.",
    )
    started_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When the earliest event that counted toward it occurred (passed its "
        "type and filters).",
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "requirement"], name="unique_progress"),
        ]


class DistinctValue(models.Model):
    """A payload value already counted by a distinct-count requirement for a user.

    Stored as a fixed-size hash so one check is an index lookup, however many
    values the user has accumulated.
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    requirement = models.ForeignKey(BadgeRequirement, on_delete=models.CASCADE, related_name="+")
    value_key = models.CharField(max_length=64)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["user", "requirement", "value_key"], name="unique_distinct_value"
            ),
        ]
