"""Staff grants and revocations of badges, each with a reason, recorded in the ledger.

A grant gives a user an earning of a badge the rule did not (or not yet)
award; a revocation takes held earnings back. Both lock the user's standing
on the badge, the row live evaluation locks, so a grant or revocation and
an evaluation of the same badge happen one after the other, never
interleaved. A revoked earning is withheld: the rule does not award it again
(a cheater's badge does not come back with their next event, nor with a
replay of their history) until staff grant it.

The admin and the API call these; they check their input here, so every
way in refuses the same things with the same words.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone

from accounts.models import time_zone_for
from achievements import delivery, engine, periods, rules
from achievements.db import after_commit
from achievements.models import Badge, Ending, Entry, LedgerEntry, Unlock, UserBadge
from project.inputs import json_value_problem

REASON_MAX_LENGTH = 500


class AwardRefused(ValueError):
    """Bad input for a grant or revocation: which field, and what is wrong with it.

    `conflict` says the input is well-formed but does not fit what the user
    holds now (granting what they hold, revoking what they do not).
    """

    def __init__(self, field: str, message: str, *, conflict: bool = False) -> None:
        super().__init__(message)
        self.field = field
        self.message = message
        self.conflict = conflict


@dataclass(frozen=True)
class Actor:
    """Who grants or revokes: a staff user, or an API key (its id)."""

    user_id: int | None = None
    api_key_id: int | None = None


def grant_badge(
    *,
    user_id: int,
    badge: Badge,
    reason: str,
    by: Actor,
    tier: int | None = None,
    period: str | None = None,
) -> list[Unlock]:
    """Give the user an earning of `badge`; the new unlocks (several for a tier
    above the next one: every tier up to it).

    A tiered badge takes the tier to grant (the next one by default); a
    repeatable one the period (the user's current one by default). Granting
    what the user holds is refused.
    """
    reason = _reason(reason)
    _check_badge(badge, user_id)
    with transaction.atomic():
        standing = _lock(user_id, badge)
        held = list(Unlock.objects.held().filter(user_id=user_id, badge=badge))
        now = timezone.now()
        if badge.repeat:
            if tier:
                raise AwardRefused("tier", f"{badge.name} has no tiers.")
            zone = time_zone_for(user_id)
            period = (
                _period(badge, period, now, zone)
                if period
                else periods.period_key(rules.Scope(badge.repeat), now, zone)
            )
            if any(unlock.period == period for unlock in held):
                raise AwardRefused(
                    "badge", f"The user already holds {badge.name} for {period}.", conflict=True
                )
            earnings = [(period, 0)]
        else:
            if period:
                raise AwardRefused("period", f"{badge.name} is earned once, not per period.")
            earnings = _tiers_to_grant(badge, standing, tier)
        unlocks = [
            Unlock(
                user_id=user_id,
                badge=badge,
                period=earned_period,
                tier=earned_tier,
                unlocked_at=now,
                granted=True,
                # Valid for as long as an earning would be, from the grant.
                expires_at=now + timedelta(days=badge.valid_days) if badge.valid_days else None,
            )
            for earned_period, earned_tier in earnings
        ]
        Unlock.objects.bulk_create(unlocks)
        LedgerEntry.objects.record(
            unlocks,
            Entry.GRANTED,
            now,
            actor_id=by.user_id,
            api_key_id=by.api_key_id,
            reason=reason,
        )
        standing.withheld = [p for p in standing.withheld if p != (period or "")]
        standing.restate(now)
        after_commit(
            delivery.notify_many, {user_id: ([badge.pk], [unlock.pk for unlock in unlocks])}
        )
        # A badge made of others may now be complete, as after an earning.
        after_commit(engine.evaluate_composites, user_id, [badge.pk])
    return unlocks


def revoke_badge(
    *,
    user_id: int,
    badge: Badge,
    reason: str,
    by: Actor,
    tier: int | None = None,
    period: str | None = None,
) -> list[Unlock]:
    """Take back the user's earnings of `badge`; the unlocks ended.

    All of them by default; for a tiered badge, `tier` and those above it
    (the user keeps the tiers below); for a repeatable one, `period`'s ("" is
    its earning from before it repeated). Revoking what the user does not
    hold is refused; an inactive badge, or one outside the user's segment,
    can still be taken back.
    """
    reason = _reason(reason)
    if tier is not None and not badge.tiers:
        raise AwardRefused("tier", f"{badge.name} has no tiers.")
    if period and not badge.repeat:
        raise AwardRefused("period", f"{badge.name} is earned once, not per period.")
    if period is not None:
        problem = json_value_problem(period)
        if problem:
            raise AwardRefused("period", f"The period {problem[1]}.")
    with transaction.atomic():
        standing = _lock(user_id, badge)
        held = Unlock.objects.held().filter(user_id=user_id, badge=badge)
        if tier is not None:
            held = held.filter(tier__gte=tier)
        if period is not None and badge.repeat:
            held = held.filter(period=period)
        unlocks = list(held.order_by("tier", "period", "pk"))
        if not unlocks:
            what = (
                f"{badge.name} ({badge.tier_name(tier) or f'tier {tier}'})"
                if tier is not None
                else f"{badge.name} for {period}"
                if period
                else badge.name
            )
            raise AwardRefused("badge", f"The user does not hold {what}.", conflict=True)
        now = timezone.now()
        Unlock.objects.end(unlocks, Ending.REVOKED, now)
        LedgerEntry.objects.record(
            unlocks,
            Entry.REVOKED,
            now,
            actor_id=by.user_id,
            api_key_id=by.api_key_id,
            reason=reason,
        )
        standing.withheld = sorted({*standing.withheld, *(u.period for u in unlocks)})
        standing.restate(now)
        if badge.announce_endings:
            after_commit(
                delivery.notify_notices, {user_id: [(badge.pk, "Badge taken back", unlocks[0].pk)]}
            )
        else:
            after_commit(delivery.notify_many, {user_id: ([badge.pk], [])})
    return unlocks


def _reason(reason: str) -> str:
    reason = (reason or "").strip()
    if not reason:
        raise AwardRefused("reason", "Give a reason: it is kept in the badge's history.")
    if len(reason) > REASON_MAX_LENGTH:
        raise AwardRefused(
            "reason", f"Keep the reason to {REASON_MAX_LENGTH} characters (it has {len(reason)})."
        )
    problem = json_value_problem(reason)
    if problem:
        raise AwardRefused("reason", f"The reason {problem[1]}.")
    return reason


def _period(badge: Badge, period: str, now: datetime, time_zone: str) -> str:
    """A repeatable badge's period as its earnings name it ("2026-12-07", "2026-W49",
    "2026-12"), not in the future."""
    unit = rules.Scope(badge.repeat)
    problem = json_value_problem(period)
    if problem:
        raise AwardRefused("period", f"The period {problem[1]}.")
    example = periods.period_key(unit, now, time_zone)
    if not periods.is_period_key(unit, period):
        raise AwardRefused(
            "period",
            f"{badge.name} is earned {badge.get_repeat_display().lower()}: give the period "
            f"as {example} is written.",
        )
    if period > example:
        raise AwardRefused("period", f"{period} has not begun yet (the current one is {example}).")
    return period


def _check_badge(badge: Badge, user_id: int) -> None:
    if not badge.is_active:
        raise AwardRefused("badge", f"{badge.name} is inactive: nobody sees or earns it.")
    if badge.is_segmented and not Badge.objects.for_user(user_id).filter(pk=badge.pk).exists():
        raise AwardRefused("badge", f"The user is not in {badge.name}'s segment.")


def _lock(user_id: int, badge: Badge) -> UserBadge:
    """The user's standing on the badge, created if missing, locked as evaluation locks it."""
    UserBadge.objects.get_or_create(user_id=user_id, badge=badge)
    return UserBadge.objects.select_for_update().get(user_id=user_id, badge=badge)


def _tiers_to_grant(badge: Badge, standing: UserBadge, tier: int | None) -> list[tuple[str, int]]:
    tiers = badge.tier_list()
    if not tiers:
        if tier:
            raise AwardRefused("tier", f"{badge.name} has no tiers.")
        if standing.completed_at is not None:
            raise AwardRefused("badge", f"The user already holds {badge.name}.", conflict=True)
        return [("", 0)]
    held = standing.tier
    wanted = held + 1 if tier is None else tier
    if not 1 <= wanted <= len(tiers):
        if tier is None:
            raise AwardRefused(
                "badge", f"The user already holds every tier of {badge.name}.", conflict=True
            )
        raise AwardRefused("tier", f"{badge.name} has tiers 1 to {len(tiers)}, not {tier}.")
    if wanted <= held:
        raise AwardRefused(
            "tier",
            f"The user already holds {badge.name} ({badge.tier_name(held)}).",
            conflict=True,
        )
    return [("", n) for n in range(held + 1, wanted + 1)]
