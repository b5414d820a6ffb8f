"""Telling users' open pages what changed: cards and toasts, rendered once, sent on commit.

The engine hands `notify_many` to `transaction.on_commit` with what a batch
changed; it asks which users have a page open (achievements.presence),
builds their cards in a fixed number of queries (achievements.cards),
renders each user's frame once (achievements.frames) and sends them all
together (achievements.realtime).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from channels.layers import get_channel_layer
from django.conf import settings
from django.utils import timezone, translation
from django.utils.translation import gettext

from achievements import metrics, presence, realtime
from achievements.cards import (
    ENDING_HEADLINES,
    NOT_MUTED,
    Card,
    KnownState,
    Muting,
    cards_for_users,
    readers,
    split_muted,
    toasts_for,
)
from achievements.frames import render_frame
from achievements.models import Unlock

logger = logging.getLogger(__name__)


def notify_badge_changes(
    *, user_id: int, badge_ids: Iterable[int], unlock_ids: Iterable[int] = ()
) -> None:
    """Push fresh cards for changed badges, and a toast for each unlock.

    An unlock is marked delivered once the layer has accepted the send. The
    layer is at-most-once, so delivery is not the end of it: pages that were
    not connected pick up unseen unlocks when their socket (re)connects.
    """
    notify_many({user_id: (list(badge_ids), list(unlock_ids))})


Notice = tuple[int, str, "int | None"]  # (badge id, headline, ended unlock id)
# The headline of a badge lost because its rule stopped holding.
LOST = ENDING_HEADLINES["lapsed"]


def notify_many(
    changes: dict[int, tuple[list[int], list[int]]],
    *,
    known: KnownState | None = None,
    notices: dict[int, list[Notice]] | None = None,
) -> None:
    """notify_badge_changes for many users (user → (badge ids, unlock ids)).

    Asks once which users have a page open and skips the others; builds every
    card in a fixed number of queries (cards_for_users; none for what `known`,
    the batch's own rows, covers); renders each user's frame once; sends all
    of them concurrently. Best effort: failures are logged, never raised.
    """
    try:
        if realtime.nobody_listens(get_channel_layer()):
            return  # skip rendering cards nobody would get
        present = presence.present_users(list(changes))
        targets = {u: c for u, c in changes.items() if present is None or u in present}
        if not targets:
            return  # no page open: the next one catches up from the database
        unlock_ids = [pk for _, unlocks in targets.values() for pk in unlocks]
        made = known.unlocks if known is not None else {}
        rows = [(pk, *made[pk]) for pk in unlock_ids if pk in made]
        if unread := [pk for pk in unlock_ids if pk not in made]:
            rows += Unlock.objects.filter(pk__in=unread).values_list(
                "pk", "user_id", "badge_id", "tier", "period", "event__received_at"
            )
        rows.sort()
        unlocks: dict[int, list[tuple[int, int, int, str]]] = {u: [] for u in targets}
        for pk, user_id, badge_id, tier, period, _ in rows:
            unlocks[user_id].append((pk, badge_id, tier, period))
        # Each user's frame in their language (cards, toasts and dates), without what
        # they muted: one query for both.
        settings_of = readers(targets)
        languages = {user_id: r.language for user_id, r in settings_of.items()}
        cards = cards_for_users(
            {
                user_id: {*badge_ids, *(b for _, b, _, _ in unlocks[user_id])}
                for user_id, (badge_ids, _) in targets.items()
            },
            known=known,
            languages=languages,
        )
        muted = {user_id: r.muting for user_id, r in settings_of.items()}
        messages = {}
        silenced: dict[int, tuple[list[int], list[int]]] = {}
        for user_id in targets:
            with translation.override(languages.get(user_id) or settings.LANGUAGE_CODE):
                messages[realtime.user_group(user_id)], silenced[user_id] = _message(
                    user_id, cards[user_id], unlocks[user_id], notices, muted
                )
        _mark_muted_seen(silenced)
        sent = realtime.send_to_groups(messages)
        delivered = [
            (pk, received)
            for pk, user_id, *_, received in rows
            if realtime.user_group(user_id) in sent
        ]
        if delivered:
            Unlock.objects.mark_delivered([pk for pk, _ in delivered])
            # Event received → unlock pushed (composites have no event of their own).
            now = timezone.now()
            metrics.observe(
                "accolade_unlock_latency_seconds",
                [(now - received).total_seconds() for _, received in delivered if received],
            )
    except Exception:
        logger.exception("Pushing changes to %d user(s) failed", len(changes))


def _message(
    user_id: int,
    cards: list[Card],
    unlocks: list[tuple[int, int, int, str]],
    notices: dict[int, list[Notice]] | None,
    muted: dict[int, Muting],
) -> tuple[dict[str, Any], tuple[list[int], list[int]]]:
    """One message, so the page gets every change of one event in one frame; a toast
    per unlock, as an event can reach two tiers of a badge at once."""
    toasts = toasts_for(user_id, unlocks, cards)
    by_id = {card["id"]: card for card in cards}
    toasts += [
        {
            "unlock_id": None,
            "ending_id": ending_id,
            "card": by_id[b],
            "headline": gettext(headline),
        }
        for b, headline, ending_id in (notices or {}).get(user_id, [])
        if b in by_id
    ]
    # Notifications the user muted are not sent; the cards still are.
    toasts, unlock_ids, ending_ids = split_muted(toasts, muted.get(user_id, NOT_MUTED))
    return {
        "type": "badges.changed",
        "cards": cards,
        "toasts": toasts,
        # Rendered once here, not once per open tab in the web process.
        "html": render_frame(cards, toasts),
    }, (unlock_ids, ending_ids)


def _mark_muted_seen(silenced: dict[int, tuple[list[int], list[int]]]) -> None:
    """Muted notifications count as seen, so no page offers them later: one update for
    the batch's unlocks (the ids are each user's own); endings, rare, per user, as
    each takes the tiers that ended with it."""
    unlock_ids = [pk for ids, _ in silenced.values() for pk in ids]
    if unlock_ids:
        Unlock.objects.filter(pk__in=unlock_ids, seen_at__isnull=True).update(
            seen_at=timezone.now()
        )
    for user_id, (_, ending_ids) in silenced.items():
        if ending_ids:
            Unlock.objects.mark_end_seen(user_id, ending_ids)


def notify_notices(notices: dict[int, list[Notice]]) -> None:
    """Push each user's fresh cards of these badges with a toast per notice (user →
    [(badge id, headline, ended unlock id)]): a badge expired, was taken back,
    or expires soon.

    A notice of an ending carries the ended unlock's id: a page acknowledges
    it, and one that was not open gets it when it connects
    (cards.unseen_endings), as with unlocks. A reminder has none: missed, it
    is not sent again (the card says when the badge expires). Best effort.
    """
    notify_many(
        {
            user_id: ([badge_id for badge_id, _, _ in items], [])
            for user_id, items in notices.items()
        },
        notices=notices,
    )
