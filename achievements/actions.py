"""Workflows that span several models, each in one transaction."""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from functools import partial

from django.db import transaction
from django.utils import timezone

from achievements import realtime, rules
from achievements.models import (
    BadgeRequirement,
    DistinctValue,
    Event,
    RequirementProgress,
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


def evaluate_event(event_pk: int) -> Evaluation | None:
    """Apply one recorded event to its user's badges; None if it was already processed.

    1. Claim the event: the conditional update marks it processed, and only one
       transaction can win it. A loser blocks on the row until the winner
       commits, then finds it already processed and stops. If anything below
       fails, the claim rolls back with everything else and a retry starts
       clean.
    2. Find the requirements that watch this event type; most events touch
       none or few, and nothing else is loaded.
    3. Lock the user's row for each affected badge (creating it if needed), in
       badge order so two workers never wait on each other in a cycle. Every
       read-modify-write of that user's progress on those badges happens under
       these locks, so concurrent events for one user serialise here while
       other users proceed in parallel.
    4. Advance each watching requirement incrementally from its stored value.
    5. Recompute each badge's status and unlock it if every requirement holds.
       The conditional update on completed_at makes the unlock happen once.
    6. After commit, push the new progress and any unlock to the user's pages.
    """
    with transaction.atomic():
        now = timezone.now()
        claimed = Event.objects.filter(pk=event_pk, processed_at__isnull=True).update(
            processed_at=now
        )
        if not claimed:
            logger.debug("Event %s was already processed; skipping", event_pk)
            return None
        event = Event.objects.get(pk=event_pk)
        result = Evaluation(event_pk=event_pk, user_id=event.user_id)

        watching = list(BadgeRequirement.objects.watching(event.event_type))
        observations = [
            (requirement, observation)
            for requirement in watching
            if (
                observation := rules.observe(
                    requirement.as_rule(), event.event_type, event.payload
                )
            )
        ]
        if not observations:
            return result

        badge_ids = sorted({requirement.badge_id for requirement, _ in observations})
        user_badges = _lock_user_badges(event.user_id, badge_ids)
        all_requirements = list(BadgeRequirement.objects.filter(badge_id__in=badge_ids))
        progress = _progress_rows(event.user_id, all_requirements)

        changed_progress = []
        for requirement, observation in observations:
            row = progress[requirement.pk]
            is_new_value = True
            if observation.distinct_key is not None:
                _, is_new_value = DistinctValue.objects.get_or_create(
                    user_id=event.user_id,
                    requirement=requirement,
                    value_key=observation.distinct_key,
                )
            new_value = rules.advance(requirement.as_rule(), row.value, is_new_value=is_new_value)
            if new_value != row.value:
                row.value = new_value
                row.updated_at = now
                changed_progress.append(row)
        if changed_progress:
            RequirementProgress.objects.bulk_update(changed_progress, ["value", "updated_at"])

        requirements_by_badge: dict[int, list[BadgeRequirement]] = defaultdict(list)
        for requirement in all_requirements:
            requirements_by_badge[requirement.badge_id].append(requirement)

        for badge_id in badge_ids:
            user_badge = user_badges[badge_id]
            status = rules.badge_status(
                [(r.as_rule(), progress[r.pk].value) for r in requirements_by_badge[badge_id]]
            )
            changed = (
                user_badge.current_value != status.current
                or user_badge.target_value != status.target
            )
            user_badge.current_value = status.current
            user_badge.target_value = status.target
            user_badge.last_evaluated_at = now
            if status.met and user_badge.completed_at is None:
                user_badge.completed_at = now
                user_badge.completed_by_event = event
                result.unlocked_badge_ids.append(badge_id)
                changed = True
            if changed:
                result.changed_badge_ids.append(badge_id)
        UserBadge.objects.bulk_update(
            user_badges.values(),
            [
                "current_value",
                "target_value",
                "last_evaluated_at",
                "completed_at",
                "completed_by_event",
            ],
        )

        if result.changed_badge_ids:
            transaction.on_commit(
                partial(
                    realtime.notify_badge_changes,
                    user_id=event.user_id,
                    badge_ids=result.changed_badge_ids,
                    unlocked_badge_ids=result.unlocked_badge_ids,
                )
            )
    if result.unlocked_badge_ids:
        logger.info(
            "User %s unlocked badges %s with event %s",
            result.user_id,
            result.unlocked_badge_ids,
            event_pk,
        )
    return result


def _lock_user_badges(user_id: int, badge_ids: list[int]) -> dict[int, UserBadge]:
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
