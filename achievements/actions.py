"""Workflows that span several models, each in one transaction."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F, Max, Min, prefetch_related_objects
from django.utils import timezone

from accounts.models import time_zone_for
from achievements import context, index, metrics, periods, progress, realtime, rules
from achievements.index import requirement_ids_watching
from achievements.models import (
    Badge,
    BadgeRequirement,
    DistinctValue,
    Event,
    RequirementProgress,
    Unlock,
    UserBadge,
)

logger = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """What evaluating one event changed."""

    event_pk: int
    user_id: int | None = None
    changed_badge_ids: list[int] = field(default_factory=list)
    unlocked_badge_ids: list[int] = field(default_factory=list)
    unlock_ids: list[int] = field(default_factory=list)


def evaluate_event(event_pk: int) -> Evaluation | None:
    """Apply one recorded event to its user's badges; None if it was already processed.

    1. Claim the event: the conditional update marks it processed, and only one
       transaction can win it. A loser blocks on the row until the winner
       commits, then finds it already processed and stops. If anything below
       fails, the claim rolls back with everything else and a retry starts
       clean. A redelivered or swept message for a processed event is a no-op.
    2. Apply it to the user's progress (apply_event), in the user's time zone.
    3. After commit, push the new progress and any unlock to the user's pages.
    """
    from achievements.versions import ensure_versions

    started = time.perf_counter()
    # Before the transaction, as batches do (see ensure_versions).
    ensure_versions(badge.pk for badge in index.active_badges())
    with transaction.atomic():
        now = timezone.now()
        claimed = Event.objects.filter(
            pk=event_pk,
            processed_at__isnull=True,
            dead_lettered_at__isnull=True,
            user__isnull=False,
        ).update(processed_at=now, retry_at=None)
        if not claimed:
            logger.debug("Event %s was already processed or dead-lettered; skipping", event_pk)
            return None
        event = Event.objects.get(pk=event_pk)
        user_id = event.user_id
        assert user_id is not None  # the claim only takes events with a user
        time_zone = time_zone_for(user_id)
        with context.evaluation_context(user_id=user_id, time_zone=time_zone):
            result = apply_event(event, user_id=user_id, now=now, time_zone=time_zone)
        if result.changed_badge_ids:
            transaction.on_commit(
                partial(
                    realtime.notify_badge_changes,
                    user_id=user_id,
                    badge_ids=result.changed_badge_ids,
                    unlock_ids=result.unlock_ids,
                ),
                robust=True,
            )
    metrics.observe("accolade_evaluation_seconds", [time.perf_counter() - started])
    if result.unlocked_badge_ids:
        logger.info(
            "User %s unlocked badges %s with event %s",
            result.user_id,
            result.unlocked_badge_ids,
            event_pk,
        )
        result.unlocked_badge_ids += evaluate_composites(user_id, result.unlocked_badge_ids)
    return result


def apply_event(
    event: Event, *, user_id: int, now: datetime, time_zone: str = "UTC"
) -> Evaluation:
    """Advance the user's progress by one event, inside the caller's transaction.

    1. Find the requirements that watch this event type (achievements.index)
       and keep those the event can change (type, filters, field present).
    2. Lock the user's row for each affected badge (creating it if needed), in
       badge order so two workers never wait on each other in a cycle. Every
       read-modify-write of that user's progress on those badges happens under
       these locks, so concurrent events for one user serialise here while
       other users proceed in parallel.
    3. Fold the event into each requirement's state (achievements.progress),
       asking DistinctValue whether an all-time distinct value is new.
    4. Measure every requirement of each affected badge and unlock the badge
       if all are met. The Unlock row's unique constraint backs the in-lock
       check, so a second unlock of one badge cannot be written whatever races.
    """
    result = Evaluation(event_pk=event.pk, user_id=user_id)
    watching_ids = requirement_ids_watching(event.event_type)
    if not watching_ids:
        return result
    fact = progress.Fact(event.event_type, event.payload, event.occurred_at)
    watching = set(watching_ids)
    # Every requirement of every active badge that has one watching this type,
    # in one query: the others are needed to measure those badges.
    candidates = list(
        BadgeRequirement.objects.filter(
            badge__is_active=True,
            badge_id__in=BadgeRequirement.objects.filter(pk__in=watching).values("badge_id"),
        ).select_related("badge")
    )
    touched = [r for r in candidates if r.pk in watching and progress.relevant(r.spec, fact)]
    if any(r.badge.is_segmented for r in touched):
        # Badges limited to a segment are neither shown to nor evaluated for others.
        allowed = set(
            Badge.objects.for_user(user_id)
            .filter(pk__in={r.badge_id for r in touched})
            .values_list("pk", flat=True)
        )
        touched = [r for r in touched if r.badge_id in allowed]
    if not touched:
        return result

    badge_ids = sorted({requirement.badge_id for requirement in touched})
    all_requirements = [r for r in candidates if r.badge_id in set(badge_ids)]
    composites = [r for r in all_requirements if r.kind == "composite"]
    if composites:
        prefetch_related_objects(composites, "composite_badges")
    user_badges = lock_user_badges(user_id, badge_ids)
    rows = _progress_rows(user_id, all_requirements)

    changed_rows = []
    moved_badges = set()
    for requirement in touched:
        spec, row = requirement.spec, rows[requirement.pk]
        is_new_key = True
        key = progress.key_for(spec, fact)
        if key is not None:
            _, is_new_key = DistinctValue.objects.get_or_create(
                user_id=user_id, requirement=requirement, value_key=key
            )
        state = progress.apply_fact(spec, row.state, fact, time_zone, is_new_key=is_new_key)
        started = row.started_at is None or event.occurred_at < row.started_at
        if started:
            row.started_at = event.occurred_at  # the first qualifying event, for reports
        moved = state != row.state
        if moved:
            if state.get("met") and not (row.state or {}).get("met"):
                row.met_by = event.event_id  # provenance: the event that met it
            row.state = state
            row.value = progress.measure(spec, state, now, time_zone).value
            moved_badges.add(requirement.badge_id)
        if moved or started:
            row.updated_at = now
            changed_rows.append(row)
    if changed_rows:
        RequirementProgress.objects.bulk_update(
            changed_rows, ["state", "value", "met_by", "started_at", "updated_at"]
        )

    requirements_by_badge: dict[int, list[BadgeRequirement]] = defaultdict(list)
    for requirement in all_requirements:
        requirements_by_badge[requirement.badge_id].append(requirement)

    # Stamped as late as possible: pages re-sync cards evaluated after they
    # were rendered, and this is the nearest point to the commit.
    evaluated_at = timezone.now()
    unlocked = _unlocked_badges(user_id, all_requirements)
    states = {pk: row.state for pk, row in rows.items()}
    for badge_id in badge_ids:
        user_badge = user_badges[badge_id]
        requirements = requirements_by_badge[badge_id]
        badge = requirements[0].badge
        standing = badge.standing(requirements, states, now, time_zone, unlocked)
        changed = (
            user_badge.current_value != standing.status.current
            or user_badge.target_value != standing.status.target
        )
        user_badge.current_value = standing.status.current
        user_badge.target_value = standing.status.target
        user_badge.last_evaluated_at = evaluated_at
        earned = badge.earnings(requirements, states, standing, event.occurred_at, time_zone)
        completing = [rows[r.pk].met_by for r in requirements if rows[r.pk].met_by]
        starts = [t for r in requirements if (t := rows[r.pk].started_at) is not None]
        for unlock in award(
            user_badge,
            badge,
            earned,
            event_id=event.pk,
            event_ids=[*completing, event.event_id],
            now=now,
            took=event.occurred_at - min(starts) if starts else None,
        ):
            result.unlock_ids.append(unlock.pk)
            if badge_id not in result.unlocked_badge_ids:
                result.unlocked_badge_ids.append(badge_id)
            changed = True
        if changed or badge_id in moved_badges:
            result.changed_badge_ids.append(badge_id)
    UserBadge.objects.bulk_update(user_badges.values(), USER_BADGE_FIELDS)
    return result


USER_BADGE_FIELDS = [
    "current_value",
    "target_value",
    "last_evaluated_at",
    "completed_at",
    "completed_by_event",
    "tier",
]


def award(
    user_badge: UserBadge,
    badge: Badge,
    earned: list[tuple[str, int]],
    *,
    event_id: int | None,
    event_ids: list[str],
    now: datetime,
    silent: bool = False,
    took: timedelta | None = None,
) -> list[Unlock]:
    """Write the unlocks `earned` (from Badge.earnings) that the user does not hold yet.

    Runs under the user's badge row lock. The row tells which once-only
    earnings are held (completed_at, tier), so those cost no query; a
    repeatable badge's period is checked against its Unlock row, whose
    unique constraint backs every check. Each unlock records the rule version
    it was evaluated under and `event_ids`, the producer's ids of the events
    that completed it, and a badge's first earning (each tier of it) records
    `took`, the time from the first qualifying event to the earning one.
    Returns the unlocks created, lowest tier first.
    `user_badge` is updated; the caller saves it.
    """
    from achievements.versions import live_version_id

    provenance = list(dict.fromkeys(event_ids))  # in order, once each
    created_unlocks = []
    for period, tier in earned:
        if tier == 1 and user_badge.tier == 0 and user_badge.completed_at is not None:
            # Unlocked before the badge had tiers: that unlock is its first tier.
            user_badge.tier = 1
            continue
        if not period and (
            tier <= user_badge.tier if tier else user_badge.completed_at is not None
        ):
            continue
        if period and (
            Unlock.objects.filter(
                user_id=user_badge.user_id, badge_id=badge.pk, period=period, tier=tier
            ).exists()
            or _earned_before_it_repeated(user_badge, badge, period)
        ):
            continue  # this period is earned already: one query in the usual case
        # A later tier or another period was completed by the event at hand;
        # the events that first met each requirement belong to the first earning.
        ids = provenance if not period and tier <= 1 else provenance[-1:]
        defaults: dict[str, Any] = {
            "unlocked_at": now,
            "event_id": event_id,
            "event_ids": ids,
            # Only looked up when the unlock is new (get_or_create calls it).
            "version_id": partial(live_version_id, badge.pk),
            "silent": silent,
            "seen_at": now if silent else None,
            "took": max(took, timedelta(0))
            if took is not None and (not period or user_badge.completed_at is None)
            else None,
        }
        unlock, created = Unlock.objects.get_or_create(
            user_id=user_badge.user_id,
            badge_id=badge.pk,
            period=period,
            tier=tier,
            defaults=defaults,
        )
        if user_badge.completed_at is None:
            user_badge.completed_at = unlock.unlocked_at
            user_badge.completed_by_event_id = unlock.event_id
        user_badge.tier = max(user_badge.tier, tier)
        if created:
            created_unlocks.append(unlock)
    if created_unlocks:
        transaction.on_commit(
            partial(metrics.incr, "accolade_unlocks_total", len(created_unlocks)), robust=True
        )
    return created_unlocks


def _earned_before_it_repeated(user_badge: UserBadge, badge: Badge, period: str) -> bool:
    """Whether a once-only unlock from before the badge was repeatable covers `period`.

    Making a badge repeatable keeps its old unlock (period ""); the earning
    for the period that unlock fell in is that unlock, not a second one.
    """
    if user_badge.completed_at is None:
        return False
    legacy = (
        Unlock.objects.filter(user_id=user_badge.user_id, badge_id=badge.pk, period="", tier=0)
        .select_related("event")
        .first()
    )
    if legacy is None:
        return False
    moment = legacy.event.occurred_at if legacy.event else legacy.unlocked_at
    scope = rules.Scope(badge.repeat)
    return periods.period_key(scope, moment, time_zone_for(user_badge.user_id)) == period


def _unlocked_badges(user_id: int, requirements: list[BadgeRequirement]) -> set[int]:
    # Only composites look at other badges' unlocks; skip the query otherwise.
    if not any(r.kind == "composite" for r in requirements):
        return set()
    return Unlock.objects.badge_ids_of(user_id)


def evaluate_composites(
    user_id: int, unlocked_badge_ids: list[int], *, silent: bool = False
) -> list[int]:
    """Unlock badges made of other badges, after those unlocks committed.

    Runs in transactions of its own, after the evaluation that unlocked the
    parts, so it never takes badge locks out of order; a composite made of
    composites is followed level by level. Returns the badges it unlocked.
    """
    unlocked_here: list[int] = []
    changed = list(unlocked_badge_ids)
    for _ in range(10):  # cycles are refused when rules are saved; this is a backstop
        if not changed:
            break
        # From the rules index: most unlocked badges are part of no composite,
        # and then this costs no query.
        candidates = index.composites_of(changed)
        if not candidates:
            break
        allowed = sorted(
            Badge.objects.for_user(user_id).filter(pk__in=candidates).values_list("pk", flat=True)
        )
        if not allowed:
            break
        changed = []
        with transaction.atomic():
            now = timezone.now()
            time_zone = time_zone_for(user_id)
            user_badges = lock_user_badges(user_id, allowed)
            requirements = list(
                BadgeRequirement.objects.filter(badge_id__in=allowed)
                .select_related("badge")
                .prefetch_related("composite_badges")
            )
            rows = _progress_rows(user_id, requirements)
            states = {pk: row.state for pk, row in rows.items()}
            unlocked = Unlock.objects.badge_ids_of(user_id)
            new_unlocks = []
            for badge_id in allowed:
                badge_requirements = [r for r in requirements if r.badge_id == badge_id]
                badge = badge_requirements[0].badge
                standing = badge.standing(badge_requirements, states, now, time_zone, unlocked)
                user_badge = user_badges[badge_id]
                user_badge.current_value = standing.status.current
                user_badge.target_value = standing.status.target
                user_badge.last_evaluated_at = now
                earned = badge.earnings(badge_requirements, states, standing, now, time_zone)
                parts = {
                    part.pk
                    for r in badge_requirements
                    if r.kind == "composite"
                    for part in r.composite_badges.all()
                }
                created = award(
                    user_badge,
                    badge,
                    earned,
                    event_id=None,
                    took=_composite_took(user_id, parts) if earned else None,
                    event_ids=[
                        event_id
                        for ids in Unlock.objects.filter(
                            user_id=user_id, badge_id__in=parts
                        ).values_list("event_ids", flat=True)
                        for event_id in ids
                    ]
                    if earned
                    else [],
                    now=now,
                    silent=silent,
                )
                if created:
                    changed.append(badge_id)
                    new_unlocks += [unlock.pk for unlock in created]
            UserBadge.objects.bulk_update(user_badges.values(), USER_BADGE_FIELDS)
            if not silent:
                transaction.on_commit(
                    partial(
                        realtime.notify_badge_changes,
                        user_id=user_id,
                        badge_ids=allowed,
                        unlock_ids=new_unlocks,
                    ),
                    robust=True,
                )
        unlocked_here += changed
    return unlocked_here


def _composite_took(user_id: int, parts: set[int]) -> timedelta | None:
    """From the first event that counted toward any part to the event that completed
    the last part to unlock."""
    start = RequirementProgress.objects.filter(
        user_id=user_id, requirement__badge_id__in=parts
    ).aggregate(start=Min("started_at"))["start"]
    end = Unlock.objects.filter(user_id=user_id, badge_id__in=parts).aggregate(
        end=Max("event__occurred_at")
    )["end"]
    return end - start if start and end else None


def lock_user_badges(user_id: int, badge_ids: list[int]) -> dict[int, UserBadge]:
    """The user's rows for these badges, created if missing, locked in badge order."""
    UserBadge.objects.bulk_create(
        [UserBadge(user_id=user_id, badge_id=badge_id) for badge_id in badge_ids],
        ignore_conflicts=True,
    )
    locked = (
        UserBadge.objects.select_for_update()
        .filter(user_id=user_id, badge_id__in=badge_ids)
        .order_by("badge_id")
    )
    return {user_badge.badge_id: user_badge for user_badge in locked}


def _progress_rows(
    user_id: int, requirements: list[BadgeRequirement]
) -> dict[int, RequirementProgress]:
    RequirementProgress.objects.bulk_create(
        [
            RequirementProgress(user_id=user_id, requirement=r, value=Decimal(0))
            for r in requirements
        ],
        ignore_conflicts=True,
    )
    rows = RequirementProgress.objects.filter(
        user_id=user_id, requirement_id__in=[r.pk for r in requirements]
    )
    return {row.requirement_id: row for row in rows}


# --- failures, dead letters and the sweeper ---------------------------------


def max_attempts() -> int:
    return int(getattr(settings, "ACCOLADE_MAX_ATTEMPTS", 5))


def retry_delay(attempt: int) -> float:
    """Exponential backoff: base, 2×base, 4×base ... capped at ACCOLADE_RETRY_MAX_SECONDS."""
    base = float(getattr(settings, "ACCOLADE_RETRY_BASE_SECONDS", 2.0))
    cap = float(getattr(settings, "ACCOLADE_RETRY_MAX_SECONDS", 300.0))
    return min(cap, base * 2 ** max(0, attempt - 1))


@dataclass(frozen=True)
class Failure:
    attempts: int
    dead_lettered: bool
    retry_in: float | None


def record_evaluation_crash(event_pk: int, starts: int) -> bool:
    """Dead-letter an event whose evaluation keeps killing the worker process.

    Exceptions are counted by record_evaluation_failure. A crash (out of
    memory, a segfault, the hard time limit) raises nothing, and with
    reject_on_worker_lost the message comes straight back. The task counts
    starts outside the database, and past the limit this ends the loop.
    """
    if starts <= max_attempts():
        return False
    with transaction.atomic():
        updated = Event.objects.filter(
            pk=event_pk, processed_at__isnull=True, dead_lettered_at__isnull=True
        ).update(
            attempts=F("attempts") + 1,
            dead_lettered_at=timezone.now(),
            retry_at=None,
            last_error=(
                f"The worker process died {starts - 1} time(s) while evaluating this event "
                "(killed, out of memory or over the time limit)."
            ),
        )
    if updated:
        metrics.incr("accolade_events_dead_lettered_total")
        logger.error("Event %s dead-lettered: evaluating it killed the worker", event_pk)
    return True


def record_evaluation_failure(event_pk: int, error: str) -> Failure:
    """Count a failed evaluation; dead-letter the event once it has failed too often.

    Runs in its own transaction: the evaluation's transaction has rolled back.
    A dead-lettered event is skipped by claims and sweeps until staff re-drive it.
    """
    now = timezone.now()
    with transaction.atomic():
        event = (
            Event.objects.select_for_update()
            .filter(pk=event_pk, processed_at__isnull=True, dead_lettered_at__isnull=True)
            .only("pk", "attempts", "retry_at")
            .first()
        )
        if event is None:
            return Failure(attempts=0, dead_lettered=False, retry_in=None)
        if event.retry_at is not None and event.retry_at > now:
            # A second delivery (a sweep, a redelivery) failed while a retry
            # is already scheduled: that retry will try again, so this one
            # neither counts nor starts a second chain of retries.
            return Failure(attempts=event.attempts, dead_lettered=False, retry_in=None)
        attempts = event.attempts + 1
        if attempts >= max_attempts():
            Event.objects.filter(pk=event_pk).update(
                attempts=attempts, last_error=error, dead_lettered_at=now, retry_at=None
            )
            logger.error("Event %s dead-lettered after %s attempts", event_pk, attempts)
            transaction.on_commit(
                partial(metrics.incr, "accolade_events_dead_lettered_total"), robust=True
            )
            return Failure(attempts=attempts, dead_lettered=True, retry_in=None)
        delay = retry_delay(attempts)
        Event.objects.filter(pk=event_pk).update(
            attempts=attempts, last_error=error, retry_at=now + timedelta(seconds=delay)
        )
        return Failure(attempts=attempts, dead_lettered=False, retry_in=delay)


def redrive_events(event_pks: list[int]) -> int:
    """Give dead-lettered events another full set of attempts, after a rule fix."""
    from achievements.events import enqueue_single

    with transaction.atomic():
        pks = list(
            Event.objects.dead_lettered()
            .filter(pk__in=event_pks, processed_at__isnull=True)
            .values_list("pk", flat=True)
        )
        Event.objects.filter(pk__in=pks).update(
            dead_lettered_at=None, attempts=0, retry_at=None, swept_at=None
        )
        for pk in pks:
            transaction.on_commit(partial(enqueue_single, pk), robust=True)
    return len(pks)


def sweep_stranded_events(*, older_than_seconds: float | None = None, limit: int = 1000) -> int:
    """Re-enqueue unprocessed events whose task message appears lost.

    The event row is the outbox, so an event whose message never reached the
    broker (it was down at commit) or was lost with a worker is still here.
    Each swept event is stamped so the next sweep leaves it alone for another
    period; the claim in evaluate_event makes a second delivery harmless.
    Swept events go to the per-event task, not a batch: an event this old
    may be one that keeps failing.
    """
    from achievements.events import enqueue_single

    age = (
        float(getattr(settings, "ACCOLADE_SWEEP_AGE_SECONDS", 300))
        if older_than_seconds is None
        else older_than_seconds
    )
    now = timezone.now()
    cutoff = now - timedelta(seconds=age)
    with transaction.atomic():
        # skip_locked: rows an evaluation has claimed (or another sweeper
        # holds) are being dealt with; waiting on them would stall the sweep.
        pks = list(
            Event.objects.stranded(older_than=cutoff)
            .select_for_update(skip_locked=True)
            .order_by("pk")
            .values_list("pk", flat=True)[:limit]
        )
        Event.objects.filter(pk__in=pks).stranded(older_than=cutoff).update(swept_at=now)
    for pk in pks:
        enqueue_single(pk)
    if pks:
        logger.warning("Swept %s stranded event(s) back onto the queue", len(pks))
    return len(pks)


class LinkConflict(ValueError):
    pass


def link_external_identity(external_id: str, user_id: int) -> int:
    """Link a producer's user id to a site user and evaluate what waited for it.

    Returns how many waiting events were handed to the evaluator. Linking an
    id to the user it is already linked to is a no-op; to another user, or a
    user who already has a different id, is refused.
    """
    from achievements.events import enqueue_evaluations
    from achievements.models import ExternalIdentity

    with transaction.atomic():
        ExternalIdentity.objects.get_or_create(external_id=external_id)
        identity = ExternalIdentity.objects.select_for_update().get(external_id=external_id)
        if identity.user_id not in (None, user_id):
            raise LinkConflict(f"{external_id!r} is already linked to another user")
        other = ExternalIdentity.objects.filter(user_id=user_id).exclude(pk=identity.pk).first()
        if other is not None:
            raise LinkConflict(f"that user is already linked to {other.external_id!r}")
        if identity.user_id is None:
            identity.user_id = user_id
            identity.linked_at = timezone.now()
            identity.save(update_fields=["user", "linked_at"])
        waiting = list(
            Event.objects.waiting_for_user()
            .filter(external_user_id=external_id)
            .order_by("occurred_at", "pk")
            .values_list("pk", flat=True)
        )
        Event.objects.filter(pk__in=waiting).update(user_id=user_id)
        if waiting:
            transaction.on_commit(partial(enqueue_evaluations, waiting), robust=True)
    return len(waiting)


def mark_unlocks_seen(user_id: int, unlock_ids: list[int]) -> int:
    """Record that a page of `user_id` showed these unlocks; others' unlocks are ignored."""
    return Unlock.objects.filter(user_id=user_id, pk__in=unlock_ids, seen_at__isnull=True).update(
        seen_at=timezone.now()
    )


def mark_unlocks_delivered(unlock_ids: list[int]) -> None:
    Unlock.objects.filter(pk__in=unlock_ids, delivered_at__isnull=True).update(
        delivered_at=timezone.now()
    )
