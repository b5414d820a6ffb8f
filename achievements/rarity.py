"""How rare each badge is: the share of members who hold it, as cards show it
("Earned by 12% of members").

Counted from the standings (one grouped query over the holders index), with
the members who could earn it as the denominator: everyone active, or only
a segmented badge's group or profile attribute. Every card a page or a push
renders asks, so the figures are kept in the process for a minute; a card
never says "nobody" about a badge its own user holds (see `Shares.of`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

from django.contrib.auth import get_user_model
from django.db import DatabaseError
from django.db.models import Count
from django.utils.formats import number_format
from django.utils.translation import gettext

from accounts.models import Profile
from achievements import index
from achievements.models import Badge, UserBadge

logger = logging.getLogger(__name__)

# How long a process keeps the figures before counting again, in seconds.
KEEP_SECONDS = 60.0
# Below this share a badge is called rare on its card.
RARE_PERCENT = 5.0


@dataclass(frozen=True)
class Rarity:
    holders: int
    members: int
    segmented: bool = False

    @property
    def percent(self) -> float:
        return 100 * self.holders / self.members if self.members else 0.0

    @property
    def rare(self) -> bool:
        return self.holders > 0 and self.percent < RARE_PERCENT

    @property
    def text(self) -> str:
        if not self.members:
            return ""  # no figures (the count failed): say nothing
        if not self.holders:
            return gettext("Nobody has earned it yet")
        if self.segmented:
            if self.percent < 1:
                return gettext("Earned by fewer than %(percent)s%% of those who can earn it") % {
                    "percent": number_format(1)
                }
            return gettext("Earned by %(percent)s%% of those who can earn it") % {
                "percent": number_format(round(self.percent))
            }
        if self.percent < 1:
            return gettext("Earned by fewer than %(percent)s%% of members") % {
                "percent": number_format(1)
            }
        return gettext("Earned by %(percent)s%% of members") % {
            "percent": number_format(round(self.percent))
        }


@dataclass(frozen=True)
class Shares:
    """Members, and holders per badge and level (0: the badge; n: tier n or above)."""

    members: int
    segment_members: dict[int, int] = field(default_factory=dict)
    holders: dict[int, dict[int, int]] = field(default_factory=dict)
    counted: bool = True  # False: no figures to show

    def of(self, badge: Badge, level: int = 0, *, held_level: int = -1) -> Rarity:
        """The rarity of `badge` (at tier `level`, 1-based; 0 for the badge itself) as
        a user holding it up to `held_level` (-1: not at all) sees it: counted with
        them, even if they earned it since the figures were taken."""
        if not self.counted:
            return Rarity(holders=0, members=0)
        holders = self.holders.get(badge.pk, {}).get(max(level, 1) if badge.tiers else 0, 0)
        if held_level >= max(level, 1 if badge.tiers else 0):
            holders = max(holders, 1)
        segmented = badge.is_segmented
        members = self.segment_members.get(badge.pk, 0) if segmented else self.members
        return Rarity(holders=holders, members=max(members, holders), segmented=segmented)


_lock = threading.Lock()
_kept: tuple[float, Shares] | None = None
# After a count failed: no figures (cards then say nothing of rarity) until then.
RETRY_SECONDS = 10.0
NO_FIGURES = Shares(members=0, counted=False)


def shares() -> Shares:
    """The figures, counted at most once a minute per process. A figure is no reason
    for a page to fail: if the count fails, the last figures stay (or none), and it
    is tried again a few seconds later."""
    global _kept
    kept = _kept
    if kept is not None and time.monotonic() < kept[0]:
        return kept[1]
    if not _lock.acquire(blocking=kept is None):
        return kept[1] if kept is not None else NO_FIGURES  # another thread is counting
    try:
        try:
            fresh = (time.monotonic() + KEEP_SECONDS, count())
        except DatabaseError:
            logger.warning("Counting badge rarity failed; trying again shortly", exc_info=True)
            stale = kept[1] if kept is not None else NO_FIGURES
            fresh = (time.monotonic() + RETRY_SECONDS, stale)
        _kept = fresh
        return fresh[1]
    finally:
        _lock.release()


def forget() -> None:
    """Count again at the next ask (tests; after a bulk change)."""
    global _kept
    _kept = None


def count() -> Shares:
    users = get_user_model().objects.filter(is_active=True)
    badges = index.active_badges()  # the rules index: no read of the rule tables
    holders: dict[int, dict[int, int]] = defaultdict(dict)
    by_tier: dict[int, dict[int, int]] = defaultdict(dict)
    for badge_id, tier, n in (
        UserBadge.objects.filter(
            badge__in=badges, completed_at__isnull=False, user__is_active=True
        )
        .values("badge_id", "tier")
        .annotate(n=Count("*"))
        .values_list("badge_id", "tier", "n")
    ):
        by_tier[badge_id][tier] = n
    for badge in badges:
        tiers = by_tier.get(badge.pk, {})
        holders[badge.pk][0] = sum(tiers.values())
        for level in range(1, len(badge.tier_list()) + 1):
            # Holding Silver is holding Bronze too.
            holders[badge.pk][level] = sum(n for tier, n in tiers.items() if tier >= level)
    segment_members = {}
    for badge in badges:
        if not badge.is_segmented:
            continue
        members = users
        if badge.segment_group_id:
            members = members.filter(groups=badge.segment_group_id)
        if badge.segment_attribute:
            # Members whose attribute has the value, counted in the database
            # (the attribute's name is letters, digits and "_", checked when saved).
            members = members.filter(
                pk__in=Profile.objects.filter(
                    **{f"attributes__{badge.segment_attribute}": badge.segment_value}
                ).values("user_id")
            )
        segment_members[badge.pk] = members.count()
    return Shares(members=users.count(), segment_members=segment_members, holders=dict(holders))
