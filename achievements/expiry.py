"""Badges that expire: earnings ended when their time is up, and users told beforehand.

A badge valid for N days gives each earning an expiry, N days after the
event that earned it (after the grant, for a granted one). The schedule
(celery beat; a thread in the embedded mode) ends what is due and reminds
users of what is about to be. Its timing is not the result: an expiry
takes effect at the expiry time however late the schedule runs, and the
events that occurred after it count towards earning the badge again, even
those evaluated before the schedule caught up.

Badges held only while their rule holds use the same schedule: their
standing's `expires_at` is the moment the evaluation foresaw the rule would
stop holding (docs/rules.md), and when it comes the pair is evaluated with
no new event, which ends what stopped holding at that moment.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone

from achievements import core, delivery, index, replay, store
from achievements.db import after_commit
from achievements.models import (
    Badge,
    DistinctValue,
    Ending,
    Entry,
    LedgerEntry,
    RequirementProgress,
    Unlock,
    UserBadge,
)

logger = logging.getLogger(__name__)

# Standings ended per pass; a pass loops until nothing is due.
BATCH = 200


@dataclass
class ExpiryReport:
    expired: int = 0
    earned_again: int = 0
    reminded: int = 0
    lost: int = 0  # earnings of badges held while their rule holds, whose rule stopped


def run_schedule(*, now: datetime | None = None) -> ExpiryReport:
    """What the schedule does each time: end what is due, then send reminders."""
    report = expire_due(now=now)
    report.reminded = remind_due(now=now)
    return report


def expire_due(*, now: datetime | None = None) -> ExpiryReport:
    """End every held earning whose expiry has come.

    1. Take the due standings (an expiry at or before `now`), oldest first.
    2. Each in a transaction of its own, under its row lock (the one live
       evaluation takes): end its held unlocks at the expiry time, with an
       "expired" ledger entry each; the standing no longer holds the badge,
       and counts only events from the expiry on (`since`).
    3. In the same transaction, fold the user's history since the expiry
       into fresh progress (as a replay does): the events evaluated while
       the schedule was late count, and may earn the badge again at once,
       announced as a live unlock.
    4. On commit, push the card, with a toast where the badge announces endings.
    """
    now = now or timezone.now()
    report = ExpiryReport()
    failed: set[int] = set()  # tried this run: one bad row must not stop the rest
    while True:
        due = list(
            UserBadge.objects.filter(expires_at__lte=now)
            .exclude(pk__in=failed)
            .order_by("expires_at", "pk")
            .values_list("pk", flat=True)[:BATCH]
        )
        if not due:
            return report
        for pk in due:
            try:
                _expire(pk, now, report)
            except Exception:
                logger.exception("Expiring the earning of standing %s failed", pk)
                failed.add(pk)


def _expire(pk: int, now: datetime, report: ExpiryReport) -> None:
    with transaction.atomic():
        # Only the standing's row: FOR UPDATE on the badge's would hold up every
        # evaluation committing rows that point at it (see achievements.versions).
        standing = (
            UserBadge.objects.select_for_update(of=("self",))
            .select_related("badge")
            .filter(pk=pk)
            .first()
        )
        if standing is None or standing.expires_at is None or standing.expires_at > now:
            return  # ended, revoked or re-earned since it was found
        at, badge = standing.expires_at, standing.badge
        if badge.holds_while_met:
            _end_what_stopped_holding(standing, now, report)
            return
        if not badge.valid_days:
            # The badge no longer expires: what is held is held for good.
            standing.expires_at = None
            standing.save(update_fields=["expires_at"])
            Unlock.objects.held().filter(user_id=standing.user_id, badge=badge).update(
                expires_at=None
            )
            return
        held = list(Unlock.objects.held().filter(user_id=standing.user_id, badge=badge))
        Unlock.objects.end(held, Ending.EXPIRED, at)
        LedgerEntry.objects.record(held, Entry.EXPIRED, at)
        standing.since, standing.current_value = at, 0
        standing.restate(now)
        # Counting starts again from the expiry: the old progress goes, and the
        # history since then is folded in afresh.
        requirements = list(badge.requirements.values_list("pk", flat=True))
        RequirementProgress.objects.filter(
            user_id=standing.user_id, requirement_id__in=requirements
        ).delete()
        DistinctValue.objects.filter(
            user_id=standing.user_id, requirement_id__in=requirements
        ).delete()
        again = replay.refold(standing.user_id, badge, silent=False)
        report.expired += len(held)
        report.earned_again += len(again.newly_earned)
        if badge.announce_endings and held:
            after_commit(
                delivery.notify_notices,
                {standing.user_id: [(badge.pk, "Badge expired", held[0].pk)]},
            )
        else:
            after_commit(delivery.notify_many, {standing.user_id: ([badge.pk], [])})


def _end_what_stopped_holding(standing: UserBadge, now: datetime, report: ExpiryReport) -> None:
    """A badge held while its rule holds, once the moment its evaluation foresaw has
    come: the pair evaluated with no new event ends what stopped holding then
    (exactly then, however late this runs) and foresees the next such moment."""
    key = (standing.user_id, standing.badge_id)
    rules = index.rule_set()
    if standing.badge_id not in rules.badges:  # inactive: not evaluated
        standing.expires_at = None
        standing.save(update_fields=["expires_at"])
        return
    loaded = store.load_pairs([key], rules, store.time_zones([standing.user_id]))
    outcome = core.evaluate(loaded.pairs, rules, [], now=now)[key]
    pair = outcome.pair
    writes = store.Writes(leftovers=False)
    writes.progress += [
        (pair.user_id, spec.id, pair.progress[spec.id])
        for spec in rules.badges[standing.badge_id].requirements
    ]
    writes.standings.append((loaded.row_ids[key], pair))
    writes.lapses += store.lapses_of(outcome)
    writes.save()
    report.lost += len(outcome.lapsed)
    if outcome.lapsed and standing.badge.announce_endings:
        after_commit(
            delivery.notify_notices,
            {pair.user_id: [(pair.badge_id, delivery.LOST, outcome.lapsed[0][0].pk)]},
        )
    elif outcome.lapsed:
        after_commit(delivery.notify_many, {pair.user_id: ([pair.badge_id], [])})


def remind_due(*, now: datetime | None = None) -> int:
    """Tell each user once, `remind_days` before a held earning expires; how many were told.

    Marked reminded when sent, whether or not a page was open to show it:
    the card says when the badge expires from then on.
    """
    now = now or timezone.now()
    notices: dict[int, list[tuple[int, str, int | None]]] = defaultdict(list)
    for badge in Badge.objects.active().filter(valid_days__gt=0, remind_days__gt=0):
        soon = Unlock.objects.held().filter(
            badge=badge,
            reminded_at__isnull=True,
            expires_at__gt=now,
            expires_at__lte=now + timedelta(days=badge.remind_days),
        )
        with transaction.atomic():
            rows = list(soon.select_for_update(skip_locked=True).values_list("pk", "user_id"))
            Unlock.objects.filter(pk__in=[pk for pk, _ in rows]).update(reminded_at=now)
        for _, user_id in rows:
            notices[user_id].append((badge.pk, "Expires soon", None))
    if notices:
        delivery.notify_notices(dict(notices))
    return sum(len(items) for items in notices.values())
