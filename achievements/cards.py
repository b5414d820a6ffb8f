"""What a badge card shows, as plain data.

Pages and pushed frames render the same card partial from these dicts, so a
progress bar looks the same whether it came with the page or over the socket.
The dicts hold only JSON-friendly values because they travel through the
channel layer.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db.models import Count, Max
from django.utils import timezone, translation
from django.utils.formats import date_format
from django.utils.timezone import localtime
from django.utils.translation import gettext, gettext_noop

from accounts.models import Profile, time_zone_for
from achievements import index, rarity
from achievements.models import (
    Badge,
    RequirementProgress,
    Unlock,
    UserBadge,
    format_number,
    translation_of,
)
from achievements.progress import Measure, met_text, value_holds

Card = dict[str, Any]


@dataclass(frozen=True)
class KnownState:
    """What a batch evaluation just wrote, so the cards it pushes need not read it back.

    For some (user, badge) pairs: the standing (anything with the UserBadge's
    `completed_at` and `tier`), the state of every progress row of those
    badges' requirements for those users (a missing row is no progress yet),
    the users' time zones, and the unlocks the batch made (id → user, badge,
    tier, period, and when their event was received). Segments, unlocks of
    composites' parts and earnings of repeatable badges are still read.
    """

    standings: dict[tuple[int, int], Any]
    states: dict[int, dict[int, dict[str, Any]]]
    zones: dict[int, str]
    unlocks: dict[int, tuple[int, int, int, str, datetime | None]] = field(default_factory=dict)

    def covers(self, wanted: dict[int, set[int]]) -> bool:
        return all(
            (user_id, badge_id) in self.standings
            for user_id, ids in wanted.items()
            for badge_id in ids
        )


def cards_for_user(
    user_id: int | None,
    *,
    badge_ids: Iterable[int] | None = None,
    event_types: Iterable[str] | None = None,
    changed_since: datetime | None = None,
) -> list[Card]:
    """Cards for the user's active badges (optionally only some), in display order."""
    badges = Badge.objects.for_user(user_id).prefetch_related(
        "requirements", "requirements__composite_badges", "translations"
    )
    if badge_ids is not None:
        badges = badges.filter(pk__in=list(badge_ids))
    if changed_since is not None and user_id is not None:
        badges = badges.filter(
            user_badges__user_id=user_id, user_badges__last_evaluated_at__gt=changed_since
        )
    if event_types is not None:
        badges = badges.filter(requirements__event_type__in=list(event_types)).distinct()
    badges_list = list(badges)
    now = timezone.now()
    if user_id is None:
        # Nobody yet (an unlinked producer id): every badge at zero.
        shares = rarity.shares()
        return [_card(badge, None, {}, now, "UTC", set(), shares=shares) for badge in badges_list]
    user_badges = {
        ub.badge_id: ub for ub in UserBadge.objects.filter(user_id=user_id, badge__in=badges_list)
    }
    states = dict(
        RequirementProgress.objects.filter(
            user_id=user_id, requirement__badge__in=badges_list
        ).values_list("requirement_id", "state")
    )
    time_zone = time_zone_for(user_id)
    unlocked = Unlock.objects.badge_ids_of(user_id)
    # Every badge's earnings held: how many (a repeatable badge's count), and the
    # latest (what "recently earned" sorts by: a tier or a period earned today).
    earnings = {
        badge_id: (n, last)
        for badge_id, n, last in (
            Unlock.objects.held()
            .filter(user_id=user_id, badge_id__in=[badge.pk for badge in badges_list])
            .values("badge_id")
            .annotate(n=Count("pk"), last=Max("unlocked_at"))
            .values_list("badge_id", "n", "last")
        )
    }
    shares = rarity.shares()
    return [
        _card(
            badge,
            user_badges.get(badge.pk),
            states,
            now,
            time_zone,
            unlocked,
            earnings=earnings.get(badge.pk, NO_EARNINGS),
            shares=shares,
        )
        for badge in badges_list
    ]


def cards_for_users(
    wanted: dict[int, set[int]],
    *,
    known: KnownState | None = None,
    languages: dict[int, str] | None = None,
) -> dict[int, list[Card]]:
    """cards_for_user(user, badge_ids=...) for many users at once (user → badge ids), in
    a fixed number of queries: what a worker pushes after a batch.

    With `known` covering every wanted pair (what the batch wrote), standings,
    progress and time zones come from it instead of three queries.
    """
    all_ids = {badge_id for ids in wanted.values() for badge_id in ids}
    if not wanted or not all_ids:
        return {user_id: [] for user_id in wanted}
    badges = [badge for badge in index.active_badges() if badge.pk in all_ids]
    segmented = {b.pk for b in badges if b.is_segmented}
    allowed: dict[int, set[int]] = {}
    for user_id, ids in wanted.items():
        if ids & segmented:
            allowed[user_id] = set(
                Badge.objects.for_user(user_id)
                .filter(pk__in=ids & segmented)
                .values_list("pk", flat=True)
            )
    users = list(wanted)
    states: dict[int, dict[int, dict[str, Any]]] = defaultdict(dict)
    if known is not None and known.covers(wanted):
        user_badges: dict[tuple[int, int], Any] = known.standings
        states.update(known.states)
        zones = known.zones
    else:
        user_badges = {
            (ub.user_id, ub.badge_id): ub
            for ub in UserBadge.objects.filter(user_id__in=users, badge_id__in=all_ids)
        }
        for user_id, requirement_id, state in RequirementProgress.objects.filter(
            user_id__in=users,
            requirement_id__in=[r.pk for b in badges for r in b.requirements.all()],
        ).values_list("user_id", "requirement_id", "state"):
            states[user_id][requirement_id] = state
        zones = dict(Profile.objects.filter(user_id__in=users).values_list("user_id", "time_zone"))
    unlocked: dict[int, set[int]] = defaultdict(set)
    if any(r.kind == "composite" for b in badges for r in b.requirements.all()):
        for user_id, badge_id in (
            Unlock.objects.held()
            .filter(user_id__in=users)
            .order_by()  # the default ordering's columns would join the DISTINCT
            .values_list("user_id", "badge_id")
            .distinct()
        ):
            unlocked[user_id].add(badge_id)
    repeatable = [b.pk for b in badges if b.repeat]
    earnings: dict[tuple[int, int], tuple[int, datetime | None]] = {}
    if repeatable:
        for user_id, badge_id, n, last in (
            Unlock.objects.held()
            .filter(user_id__in=users, badge_id__in=repeatable)
            .values("user_id", "badge_id")
            .annotate(n=Count("pk"), last=Max("unlocked_at"))
            .values_list("user_id", "badge_id", "n", "last")
        ):
            earnings[(user_id, badge_id)] = (n, last)
    shares = rarity.shares()
    now = timezone.now()
    cards: dict[int, list[Card]] = {}
    for user_id, ids in wanted.items():
        language = (languages or {}).get(user_id) or translation.get_language()
        with translation.override(language):
            cards[user_id] = _cards_of(
                user_id,
                ids,
                badges,
                segmented,
                allowed,
                user_badges,
                states,
                zones,
                unlocked,
                earnings,
                shares,
                now,
            )
    return cards


def _cards_of(
    user_id: int,
    ids: set[int],
    badges: list[Badge],
    segmented: set[int],
    allowed: dict[int, set[int]],
    user_badges: dict[tuple[int, int], Any],
    states: dict[int, dict[int, dict[str, Any]]],
    zones: dict[int, str],
    unlocked: dict[int, set[int]],
    earnings: dict[tuple[int, int], tuple[int, datetime | None]],
    shares: rarity.Shares,
    now: datetime,
) -> list[Card]:
    return [
        _card(
            badge,
            user_badges.get((user_id, badge.pk)),
            states[user_id],
            now,
            zones.get(user_id) or "UTC",
            unlocked[user_id],
            earnings=earnings.get((user_id, badge.pk), NO_EARNINGS),
            shares=shares,
        )
        for badge in badges  # display order, as cards_for_user
        if badge.pk in ids and (badge.pk not in segmented or badge.pk in allowed[user_id])
    ]


# A repeatable badge's earnings held: how many, and the latest's moment.
NO_EARNINGS: tuple[int, datetime | None] = (0, None)


def _card(
    badge: Badge,
    user_badge: UserBadge | None,
    states: dict[int, dict[str, Any]],
    now: datetime,
    time_zone: str,
    unlocked: set[int],
    *,
    earnings: tuple[int, datetime | None] = (0, None),
    shares: rarity.Shares,
) -> Card:
    requirements = list(badge.requirements.all())
    # Staff's words for the reader's language, where they wrote them.
    words = translation_of(badge, translation.get_language())
    standing = badge.worded_standing(requirements, states, now, time_zone, unlocked, words)
    measures, status = standing.measures, standing.status
    completed_at = user_badge.completed_at if user_badge else None
    mystery = badge.hidden and completed_at is None
    tiers = badge.tier_list()
    if words is not None and len(words.tier_names or []) == len(tiers):
        tiers = tuple(
            (name or own, t) for name, (own, t) in zip(words.tier_names, tiers, strict=True)
        )
    given = list(words.labels or []) if words is not None else []
    labels = [
        (given[n] if n < len(given) and given[n] else "") or r.unit_label()
        for n, r in enumerate(requirements)
    ]
    name = (words.name if words is not None else "") or badge.name
    description = (words.description if words is not None else "") or badge.description
    holding = badge.holds_while_met
    # The tier held: the row's, which never goes down (but for a badge held while its
    # rule holds), or more if progress is ahead of it.
    held_tier = user_badge.tier if user_badge else 0
    level = (held_tier if holding else max(standing.level, held_tier)) if tiers else 0
    # Still something to show after the first unlock: the next tier, or this period.
    ongoing = bool(badge.repeat) or (bool(tiers) and level < len(tiers))
    # Earned for good (a rule change never takes it back): shown complete, every
    # requirement met, whatever the rule says now (docs/rules.md).
    done = completed_at is not None and not ongoing
    expires_at = getattr(user_badge, "expires_at", None) if completed_at else None
    lost_at = None if completed_at else getattr(user_badge, "lapsed_at", None)
    # Past its expiry (or the moment its rule stops holding) but not yet ended by the
    # schedule: shown as ended already.
    if expires_at is not None and expires_at <= now:
        completed_at, done, mystery = None, False, badge.hidden
        if holding:
            lost_at = expires_at
    # When the last earning expired (counting started again then), while not held.
    expired_at = (
        (expires_at or getattr(user_badge, "since", None))
        if completed_at is None and not holding
        else None
    )
    # Taken back by staff, and not held in any form since: the rule does not award it again.
    revoked = (
        completed_at is None and not badge.repeat and "" in (getattr(user_badge, "withheld", ()))
    )
    times_earned, last_earned = earnings
    held_level = (level if tiers else 0) if completed_at else -1
    # A tier held: how many hold that tier (Gold is rarer than Bronze).
    share = shares.of(badge, level if tiers else 0, held_level=held_level)
    # A tiered badge has one requirement: its tiers are thresholds on that value.
    value = measures[0].value if tiers and measures else None
    unit = labels[0] if tiers and labels else ""
    return {
        "id": badge.pk,
        "key": badge.key,
        "name": gettext("Mystery badge") if mystery else name,
        "description": (
            gettext("Keep going to find out what unlocks it.") if mystery else description
        ),
        "icon": "❓" if mystery else badge.icon,
        "hidden": mystery,
        "category": badge.category,
        "percent": 100 if done else status.percent,
        "tier": tiers[level - 1][0] if 0 < level <= len(tiers) else "",
        "tier_level": level,
        "tier_names": [name for name, _ in tiers],
        "next_tier": tiers[level][0] if tiers and level < len(tiers) else "",
        "repeat": badge.get_repeat_display().lower() if badge.repeat else "",
        "times_earned": times_earned if badge.repeat else (1 if completed_at else 0),
        "last_earned_on": (
            date_format(localtime(last_earned), "DATE_FORMAT")
            if last_earned and badge.repeat
            else ""
        ),
        "last_earned_at": latest.isoformat() if (latest := last_earned or completed_at) else None,
        # Not held now (never, or no longer), so shown locked; a mystery has its own look.
        "locked": completed_at is None and not mystery,
        "rarity": round(share.percent, 1),
        "rarity_text": share.text,
        "rare": share.rare,
        "tiers": [
            {
                "name": name,
                "threshold": format_number(threshold),
                "unit": unit,
                "reached": number <= level,
                "next": number == level + 1,
                "to_go": (
                    format_number(max(threshold - value, Decimal(0)))
                    if value is not None and number == level + 1
                    else ""
                ),
            }
            for number, (name, threshold) in enumerate(tiers, start=1)
        ]
        if not mystery
        else [],
        "ongoing": ongoing,
        "current": format_number(status.target if done else status.current),
        "target": format_number(status.target),
        "completed": completed_at is not None,
        "granted": completed_at is not None and bool(getattr(user_badge, "granted", False)),
        "revoked": revoked,
        # Expiring badges: when the earning held expires; after one expired, when.
        "expires_at": (
            expires_at.isoformat() if completed_at and expires_at and not holding else None
        ),
        "expires_on": (
            date_format(localtime(expires_at), "DATE_FORMAT")
            if completed_at and expires_at and not holding
            else ""
        ),
        # Held while its rule holds: until when, if nothing more happens; or since
        # when it is no longer held.
        "holds_while": holding,
        "keep_until_on": (
            date_format(localtime(expires_at), "DATETIME_FORMAT")
            if holding and completed_at and expires_at
            else ""
        ),
        "lost": lost_at is not None and not revoked,
        "lost_on": date_format(localtime(lost_at), "DATE_FORMAT") if lost_at else "",
        "expired": expired_at is not None and not revoked,
        "expired_on": date_format(localtime(expired_at), "DATE_FORMAT") if expired_at else "",
        "completed_at": completed_at.isoformat() if completed_at else None,
        "completed_on": (
            date_format(localtime(completed_at), "DATE_FORMAT") if completed_at else ""
        ),
        "requirements": [
            {
                "label": label,
                "current": format_number(
                    measure.target if measure.met or done else min(measure.value, measure.target)
                ),
                "target": format_number(measure.target),
                # Held under a rule that now asks more: shown as met, not "1 of 2".
                "text": met_text(replace(r.spec, label=label), measure.target)
                if done and not value_holds(r.spec, measure)
                else measure.text,
                "met": measure.met or done,
                "percent": _percent(measure, done),
            }
            for r, label, measure in zip(requirements, labels, measures, strict=True)
        ]
        if not mystery
        else [],
    }


def _percent(measure: Measure, done: bool) -> int:
    """How far one requirement is, as its own bar shows it (never 100 before it is met)."""
    if measure.met or done:
        return 100
    if measure.target <= 0:
        return 0
    return min(99, int(max(measure.value, Decimal(0)) * 100 / measure.target))


@dataclass(frozen=True)
class Muting:
    """Which notifications a user turned off in their settings."""

    everything: bool = False
    categories: frozenset[str] = frozenset()

    def mutes(self, card: Card) -> bool:
        return self.everything or (
            bool(card.get("category")) and card["category"] in self.categories
        )


NOT_MUTED = Muting()


@dataclass(frozen=True)
class Reader:
    """What a user's settings ask of what is pushed to them: its language (theirs,
    else their browser's as last seen; empty: the site's) and what they muted."""

    language: str = ""
    muting: Muting = NOT_MUTED


DEFAULT_READER = Reader()


def readers(user_ids: Iterable[int]) -> dict[int, Reader]:
    """The users (of these) whose settings change a push, in one query: most have none."""
    return {
        user_id: Reader(
            language=chosen or seen,
            muting=Muting(everything, frozenset(categories or ()))
            if everything or categories
            else NOT_MUTED,
        )
        for user_id, chosen, seen, everything, categories in Profile.objects.filter(
            user_id__in=list(user_ids)
        )
        .exclude(language="", browser_language="", mute_all=False, muted_categories=[])
        .values_list("user_id", "language", "browser_language", "mute_all", "muted_categories")
    }


def reader(user_id: int) -> Reader:
    return readers([user_id]).get(user_id, DEFAULT_READER)


def split_muted(
    toasts: list[dict[str, Any]], muting: Muting
) -> tuple[list[dict[str, Any]], list[int], list[int]]:
    """The toasts the user wants, and the unlock and ending ids of those they muted."""
    if muting is NOT_MUTED:
        return toasts, [], []
    kept = [toast for toast in toasts if not muting.mutes(toast["card"])]
    dropped = [toast for toast in toasts if muting.mutes(toast["card"])]
    return (
        kept,
        [t["unlock_id"] for t in dropped if t.get("unlock_id")],
        [t["ending_id"] for t in dropped if t.get("ending_id")],
    )


def drop_muted(user_id: int, toasts: list[dict[str, Any]], muting: Muting) -> list[dict[str, Any]]:
    """The toasts the user wants. The others are marked as seen, so no page offers
    them later either: a muted notification is dropped, not postponed (the unlock
    and its card are not touched)."""
    kept, unlock_ids, ending_ids = split_muted(toasts, muting)
    if unlock_ids:
        Unlock.objects.mark_seen(user_id, unlock_ids)
    if ending_ids:
        Unlock.objects.mark_end_seen(user_id, ending_ids)
    return kept


def unseen_unlocks(
    user_id: int, *, limit: int, muting: Muting | None = None
) -> list[dict[str, Any]]:
    """The user's unlocks that no page has shown yet, oldest first, as toasts."""
    unlocks = list(
        Unlock.objects.held()
        .filter(user_id=user_id, seen_at__isnull=True, silent=False, badge__is_active=True)
        .order_by("unlocked_at", "pk")
        .values_list("pk", "badge_id", "tier", "period")[:limit]
    )
    if not unlocks:
        return []
    badge_ids = {badge_id for _, badge_id, _, _ in unlocks}
    toasts = toasts_for(user_id, unlocks, cards_for_user(user_id, badge_ids=badge_ids))
    return drop_muted(user_id, toasts, reader(user_id).muting if muting is None else muting)


# Marked for translation; translated where a toast is rendered, in its reader's language.
ENDING_HEADLINES = {
    "expired": gettext_noop("Badge expired"),
    "revoked": gettext_noop("Badge taken back"),
    "lapsed": gettext_noop("No longer held"),
}


def unseen_endings(
    user_id: int, *, limit: int, muting: Muting | None = None
) -> list[dict[str, Any]]:
    """Toasts for the user's earnings that ended (badges that announce endings) and no
    page has shown yet, oldest first: one per badge and moment, as pushed."""
    ended = list(
        Unlock.objects.filter(
            user_id=user_id,
            ended_at__isnull=False,
            end_seen_at__isnull=True,
            badge__announce_endings=True,
            badge__is_active=True,
        )
        .order_by("ended_at", "pk")
        .values_list("pk", "badge_id", "ending", "ended_at")[: limit * 4]
    )
    firsts: dict[tuple[int, Any], tuple[int, str]] = {}
    for pk, badge_id, ending, ended_at in ended:
        firsts.setdefault((badge_id, ended_at), (pk, ending))
    if not firsts:
        return []
    chosen = list(firsts.items())[:limit]
    by_id = {
        card["id"]: card
        for card in cards_for_user(user_id, badge_ids={badge_id for (badge_id, _), _ in chosen})
    }
    toasts = [
        {
            "unlock_id": None,
            "ending_id": pk,
            "card": by_id[badge_id],
            "headline": gettext(ENDING_HEADLINES.get(ending, gettext_noop("Badge ended"))),
        }
        for (badge_id, _), (pk, ending) in chosen
        if badge_id in by_id
    ]
    return drop_muted(user_id, toasts, reader(user_id).muting if muting is None else muting)


def toasts_for(
    user_id: int, unlocks: list[tuple[int, int, int, str]], cards: list[Card]
) -> list[dict[str, Any]]:
    """A toast per (unlock id, badge id, tier, period) of the user, with its card from `cards`."""
    by_id = {card["id"]: card for card in cards}
    repeatable = {
        badge_id for _, badge_id, _, _ in unlocks if by_id.get(badge_id, {}).get("repeat")
    }
    # Which earning each unlock of a repeatable badge is: the 1st, the 2nd ...
    ordinal: dict[int, int] = {}
    if repeatable:
        counts: dict[int, int] = {}
        for badge_id, pk in (
            Unlock.objects.held()
            .filter(badge_id__in=repeatable, user_id=user_id)
            .order_by("pk")
            .values_list("badge_id", "pk")
        ):
            counts[badge_id] = ordinal[pk] = counts.get(badge_id, 0) + 1
    return [
        {
            "unlock_id": pk,
            "card": by_id[badge_id],
            "headline": headline(by_id[badge_id], tier, ordinal.get(pk, 1)),
        }
        for pk, badge_id, tier, period in unlocks
        if badge_id in by_id
    ]


def headline(card: Card, tier: int, earning: int = 1) -> str:
    """The toast's first words: what kind of earning this is."""
    names = card["tier_names"]
    if card.get("granted") and tier <= 1 and earning == 1:
        return gettext("Badge granted")
    if 0 < tier <= len(names):
        if tier == 1:
            return gettext("Badge unlocked (%(tier)s)") % {"tier": names[0]}
        return gettext("%(tier)s tier reached") % {"tier": names[tier - 1]}
    if earning > 1:
        return gettext("Earned again (%(count)d times)") % {"count": earning}
    return gettext("Badge unlocked")
