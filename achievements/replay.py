"""Rebuilding progress and unlocks from the event log."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial

from django.db import transaction
from django.utils import timezone

from accounts.models import time_zone_for
from achievements import progress, realtime
from achievements.actions import (
    USER_BADGE_FIELDS,
    award,
    evaluate_composites,
    lock_user_badges,
)
from achievements.models import (
    Badge,
    BadgeRequirement,
    DistinctValue,
    Event,
    RequirementProgress,
    Unlock,
    UserBadge,
)


class UnknownBadge(ValueError):
    pass


@dataclass
class ReplayReport:
    users: int = 0
    events: int = 0
    newly_unlocked: list[tuple[int, int]] = field(default_factory=list)
    # Each new earning: (user, badge, tier, period); a badge may earn several.
    newly_earned: list[tuple[int, int, int, str]] = field(default_factory=list)
    no_longer_qualifying: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class ReplayPlan:
    """What a replay covers: the requirements, the event types they watch, the users."""

    requirements: list[BadgeRequirement]
    event_types: list[str]
    user_ids: list[int]

    def events(self) -> int:
        """How many stored events the replay will fold (for progress reports)."""
        if not self.user_ids:
            return 0
        return Event.objects.filter(
            user_id__in=self.user_ids,
            event_type__in=self.event_types,
            processed_at__isnull=False,
        ).count()


def plan_replay(
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    badge_keys: list[str] | None = None,
) -> ReplayPlan:
    """The badges (all active ones, or those named), their event types, and the users
    with a processed event of those types (occurring within [since, until] if given)."""
    badges = Badge.objects.active()
    if badge_keys is not None:
        # Inactive badges are not evaluated live, so they are not replayed either.
        badges = badges.filter(key__in=badge_keys)
        missing = sorted(set(badge_keys) - set(badges.values_list("key", flat=True)))
        if missing:
            raise UnknownBadge(f"no active badge with key {', '.join(map(repr, missing))}")
    requirements = list(
        BadgeRequirement.objects.filter(badge__in=badges)
        .select_related("badge")
        .prefetch_related("composite_badges")
        .order_by("pk")
    )
    event_types = sorted({t for requirement in requirements for t in requirement.watched_types()})
    if not requirements:
        return ReplayPlan(requirements, event_types, [])
    users = Event.objects.filter(
        event_type__in=event_types, processed_at__isnull=False, user__isnull=False
    )
    if since is not None:
        users = users.filter(occurred_at__gte=since)
    if until is not None:
        users = users.filter(occurred_at__lt=until)
    user_ids = sorted(set(users.values_list("user_id", flat=True)))
    return ReplayPlan(requirements, event_types, user_ids)


def replay_events(
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    badge_keys: list[str] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    silent: bool = True,
    plan: ReplayPlan | None = None,
    report: ReplayReport | None = None,
) -> ReplayReport:
    """Recompute progress from processed events, for every user or those active in a range.

    1. Pick the badges (all active ones, or those named) and the event types
       their requirements watch (plan_replay).
    2. Pick the users: everyone with a processed event of those types, or
       only those with one on or after `since` (and before `until`). Each
       chosen user's progress is rebuilt from their whole history, since an
       all-time count cannot be rebuilt from part of it.
    3. Per user, in one transaction holding the same row locks as live
       evaluation: fold their events in `occurred_at` order through the pure
       rules, then replace the stored progress and distinct values.
    4. A badge the rebuilt progress completes, and that is not yet unlocked,
       is unlocked: silently by default (no toast, marked seen); with
       `silent=False` the user's pages are told, as for a live unlock. A badge
       already unlocked stays unlocked even if the rebuilt progress falls
       short; it is reported, never revoked.

    `on_progress(users done, users in all)` runs after each user; raising
    from it stops the replay there (users done so far stay done). Only
    processed events are replayed: a pending one will be counted by its own
    evaluation, and counting it here as well would count it twice. Live
    evaluation can run alongside: the row locks serialise the two per user.
    """
    plan = plan or plan_replay(since=since, until=until, badge_keys=badge_keys)
    report = report if report is not None else ReplayReport()
    if not plan.requirements:
        return report
    for done, user_id in enumerate(plan.user_ids, start=1):
        _replay_user(user_id, plan.requirements, plan.event_types, report, silent=silent)
        held = sorted(Unlock.objects.badge_ids_of(user_id))
        for badge_id in evaluate_composites(user_id, held, silent=silent):
            report.newly_unlocked.append((user_id, badge_id))
            report.newly_earned.append((user_id, badge_id, 0, ""))
        report.users += 1
        if on_progress:
            on_progress(done, len(plan.user_ids))
    return report


def _replay_user(
    user_id: int,
    requirements: list[BadgeRequirement],
    event_types: list[str],
    report: ReplayReport,
    *,
    silent: bool = True,
) -> None:
    time_zone = time_zone_for(user_id)
    now = timezone.now()
    allowed = set(
        Badge.objects.for_user(user_id)
        .filter(pk__in={r.badge_id for r in requirements})
        .values_list("pk", flat=True)
    )
    requirements = [r for r in requirements if r.badge_id in allowed]
    with transaction.atomic():
        # Only badges this user has events for get rows, as in live
        # evaluation; they are locked the same way, in the same order.
        user_types = set(
            Event.objects.filter(
                user_id=user_id, event_type__in=event_types, processed_at__isnull=False
            )
            .values_list("event_type", flat=True)
            .distinct()
        )
        watched_badges = {r.badge_id for r in requirements if set(r.watched_types()) & user_types}
        requirements = [r for r in requirements if r.badge_id in watched_badges]
        by_type: dict[str, list[BadgeRequirement]] = defaultdict(list)
        by_badge: dict[int, list[BadgeRequirement]] = defaultdict(list)
        for requirement in requirements:
            for event_type in requirement.watched_types():
                by_type[event_type].append(requirement)
            by_badge[requirement.badge_id].append(requirement)
        badge_ids = sorted(by_badge)
        user_badges = lock_user_badges(user_id, badge_ids)
        states: dict[int, dict] = {requirement.pk: {} for requirement in requirements}
        seen: dict[int, set[str]] = defaultdict(set)
        # The first event that justified each earning, by (badge, period, tier).
        earned_by: dict[tuple[int, str, int], int] = {}
        touched_badges: set[int] = set()
        finished: set[int] = set()
        badges = {r.badge_id: r.badge for r in requirements}

        unlocked = Unlock.objects.badge_ids_of(user_id)

        def earnings(badge_id: int, moment: datetime) -> list[tuple[str, int]]:
            badge, badge_requirements = badges[badge_id], by_badge[badge_id]
            standing = badge.standing(badge_requirements, states, now, time_zone, unlocked)
            return badge.earnings(badge_requirements, states, standing, moment, time_zone)

        events = (
            Event.objects.filter(
                user_id=user_id, event_type__in=event_types, processed_at__isnull=False
            )
            .order_by("occurred_at", "pk")
            .values_list("pk", "event_id", "event_type", "payload", "occurred_at")
        )
        producer_ids: dict[int, str] = {}
        met_by: dict[int, str] = {}
        started: dict[int, datetime] = {}  # requirement → first qualifying event's time
        earned_when: dict[tuple[int, str, int], datetime] = {}
        for event_pk, producer_id, event_type, payload, occurred_at in events.iterator(
            chunk_size=2000
        ):
            report.events += 1
            fact = progress.Fact(event_type, payload, occurred_at)
            touched = set()
            for requirement in by_type[event_type]:
                spec = requirement.spec
                if not progress.relevant(spec, fact):
                    continue
                states[requirement.pk] = progress.fold_in_memory(
                    spec, states[requirement.pk], fact, time_zone, seen[requirement.pk]
                )
                if states[requirement.pk].get("met") and requirement.pk not in met_by:
                    met_by[requirement.pk] = producer_id
                started.setdefault(requirement.pk, occurred_at)  # events come in time order
                touched.add(requirement.badge_id)
            touched_badges |= touched
            for badge_id in touched - finished:
                earned = earnings(badge_id, occurred_at)
                for period, tier in earned:
                    if (badge_id, period, tier) not in earned_by:
                        earned_by[(badge_id, period, tier)] = event_pk
                        earned_when[(badge_id, period, tier)] = occurred_at
                        producer_ids[event_pk] = producer_id
                badge = badges[badge_id]
                if not badge.repeat and len(earned) == max(1, len(badge.tier_list())):
                    finished.add(badge_id)  # every earning it has is in; skip the rest

        requirement_ids = [requirement.pk for requirement in requirements]
        DistinctValue.objects.filter(user_id=user_id, requirement_id__in=requirement_ids).delete()
        DistinctValue.objects.bulk_create(
            [
                DistinctValue(user_id=user_id, requirement_id=requirement_id, value_key=key)
                for requirement_id, keys in seen.items()
                for key in sorted(keys)
            ],
            batch_size=2000,
        )
        RequirementProgress.objects.filter(
            user_id=user_id, requirement_id__in=requirement_ids
        ).delete()
        # Live evaluation writes rows only for badges an event actually moved
        # (an event without a distinct rule's field moves nothing); so does this.
        RequirementProgress.objects.bulk_create(
            [
                RequirementProgress(
                    user_id=user_id,
                    requirement_id=requirement.pk,
                    state=states[requirement.pk],
                    met_by=met_by.get(requirement.pk, ""),
                    started_at=started.get(requirement.pk),
                    value=progress.measure(
                        requirement.spec, states[requirement.pk], now, time_zone
                    ).value,
                )
                for requirement in requirements
                if requirement.badge_id in touched_badges
            ]
        )
        untouched = [
            badge_id
            for badge_id in badge_ids
            if badge_id not in touched_badges and user_badges[badge_id].completed_at is None
        ]
        UserBadge.objects.filter(user_id=user_id, badge_id__in=untouched).delete()

        announced: list[int] = []
        held = set(
            Unlock.objects.filter(user_id=user_id, badge_id__in=badge_ids).values_list(
                "badge_id", "period", "tier"
            )
        )
        for badge_id in badge_ids:
            if badge_id in untouched:
                continue
            badge, user_badge = badges[badge_id], user_badges[badge_id]
            standing = badge.standing(by_badge[badge_id], states, now, time_zone, unlocked)
            user_badge.last_evaluated_at = now
            user_badge.current_value = standing.status.current
            user_badge.target_value = standing.status.target
            due = sorted((key for key in earned_by if key[0] == badge_id), key=lambda key: key[1:])
            starts = [started[r.pk] for r in by_badge[badge_id] if r.pk in started]
            for _, period, tier in due:
                created = award(
                    user_badge,
                    badge,
                    [(period, tier)],
                    event_id=earned_by[(badge_id, period, tier)],
                    event_ids=[
                        *(met_by[r.pk] for r in by_badge[badge_id] if r.pk in met_by),
                        producer_ids[earned_by[(badge_id, period, tier)]],
                    ],
                    now=now,
                    silent=silent,
                    took=earned_when[(badge_id, period, tier)] - min(starts) if starts else None,
                )
                if created:
                    report.newly_unlocked.append((user_id, badge_id))
                    announced += [unlock.pk for unlock in created]
                    report.newly_earned += [
                        (user_id, badge_id, unlock.tier, unlock.period) for unlock in created
                    ]
            # Earnings the rebuilt progress no longer justifies are reported, never revoked.
            # An unlock from before the badge had tiers or repeated stands
            # while the badge is earned in any way.
            if any(
                (badge_id, period, tier) not in earned_by
                and ((period, tier) != ("", 0) or not due)
                for held_badge, period, tier in held
                if held_badge == badge_id
            ):
                report.no_longer_qualifying.append((user_id, badge_id))
        UserBadge.objects.bulk_update(
            [user_badges[badge_id] for badge_id in badge_ids if badge_id not in untouched],
            USER_BADGE_FIELDS,
        )
        if announced and not silent:
            transaction.on_commit(
                partial(
                    realtime.notify_badge_changes,
                    user_id=user_id,
                    badge_ids=badge_ids,
                    unlock_ids=announced,
                ),
                robust=True,
            )
