from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from functools import cached_property
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q
from django.db.models.functions import Cast
from django.utils import timezone

from achievements import core, rules
from achievements.core import Standing
from achievements.progress import Spec, unit_name


def _member(enum: Any, value: Any) -> Any:
    try:
        return enum(value)
    except ValueError:
        return None


def validate_event_type(value: str) -> None:
    problem = rules.event_type_problem(value)
    if problem:
        raise ValidationError(f"Event type {problem}.", code="invalid_event_type")


def _choices(members: Sequence[Any]) -> list[tuple[str, str]]:
    return [(member.value, member.label) for member in members]


EVALUATED_AGGREGATIONS = list(rules.Aggregation)
EVALUATED_OPERATORS = list(rules.Operator)
EVALUATED_SCOPES = list(rules.Scope)
EVALUATED_KINDS = list(rules.Kind)


__all__ = ["Standing"]


class BadgeQuerySet(models.QuerySet["Badge"]):
    def active(self) -> BadgeQuerySet:
        return self.filter(is_active=True)

    def for_user(self, user_id: int | None) -> BadgeQuerySet:
        """Active badges whose segment includes the user: the only ones shown or evaluated."""
        badges = self.active()
        if user_id is None:
            return badges.filter(segment_group__isnull=True, segment_attribute="")
        from django.contrib.auth.models import Group

        from accounts.models import Profile

        groups = Group.objects.filter(user__id=user_id)
        attributes = (
            Profile.objects.filter(user_id=user_id).values_list("attributes", flat=True).first()
            or {}
        )
        in_attribute_segment = Q(segment_attribute="")
        for name, value in attributes.items():
            if isinstance(value, str | int | float | bool):
                in_attribute_segment |= Q(segment_attribute=name, segment_value=str(value))
        return badges.filter(
            Q(segment_group__isnull=True) | Q(segment_group__in=groups), in_attribute_segment
        )


class Badge(models.Model):
    key = models.SlugField(
        max_length=64,
        unique=True,
        help_text="Stable identifier used in code, exports and the API, e.g. places_visited_5.",
    )
    name = models.CharField(max_length=100)
    description = models.TextField(blank=True)
    icon = models.CharField(
        max_length=16, blank=True, help_text="An emoji or short symbol shown on the badge."
    )
    is_active = models.BooleanField(
        default=True, help_text="Inactive badges are neither shown nor evaluated."
    )
    sort_order = models.PositiveIntegerField(default=0)
    hidden = models.BooleanField(
        default=False, help_text="Shown as a mystery badge until the user unlocks it."
    )
    segment_group = models.ForeignKey(
        "auth.Group",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
        help_text="Only members of this group see and can earn the badge.",
    )
    segment_attribute = models.CharField(
        max_length=64,
        blank=True,
        help_text="Only users whose profile attribute of this name ...",
    )
    segment_value = models.CharField(
        max_length=100, blank=True, help_text="... has this value see and can earn the badge."
    )
    tiers = models.JSONField(
        default=list,
        blank=True,
        help_text='Levels of this badge, lowest first, e.g. [{"name": "Bronze", "threshold": 5}, '
        '{"name": "Silver", "threshold": 25}, {"name": "Gold", "threshold": 100}]. The badge '
        "unlocks at the first tier, which must be its one requirement's threshold.",
    )
    repeat = models.CharField(
        max_length=5,
        choices=[
            ("", "Once"),
            (rules.Scope.DAY.value, "Every day"),
            (rules.Scope.WEEK.value, "Every week"),
            (rules.Scope.MONTH.value, "Every month"),
        ],
        default="",
        blank=True,
        help_text="Earned again in every period its requirements are met in (each requirement "
        "counts per that period); every earning is kept.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = BadgeQuerySet.as_manager()

    class Meta:
        ordering = ["sort_order", "name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        super().clean()
        if bool(self.segment_attribute) != bool(self.segment_value):
            raise ValidationError(
                {"segment_value": "Give both the profile attribute and its value, or neither."}
            )
        if self.segment_attribute and not rules.FIELD_PATTERN.match(self.segment_attribute):
            raise ValidationError(
                {"segment_attribute": "Use an attribute name of letters, digits and '_'."}
            )
        if self.tiers is None:  # an emptied admin field
            self.tiers = []
        problem = rules.tiers_problem(self.tiers)
        if problem:
            raise ValidationError({"tiers": f"Tiers: {problem}."})
        if self.tiers and self.repeat:
            raise ValidationError({"repeat": "A badge can have tiers or be repeatable, not both."})

    @property
    def is_segmented(self) -> bool:
        """Whether only some users (a group, or a profile attribute) get this badge."""
        return bool(self.segment_group_id or self.segment_attribute)

    def tier_list(self) -> tuple[tuple[str, Decimal], ...]:
        """The tiers as (name, threshold) pairs, lowest first; empty for a plain badge.

        Kept with the tiers they were read from, and read again when those
        change: evaluating and carding a batch asks a badge dozens of times.
        """
        source = self.tiers or []
        cached = self.__dict__.get("_tiers_read")
        if cached is not None and cached[0] == source:
            return cached[1]
        tiers = tuple((tier["name"], Decimal(str(tier["threshold"]))) for tier in source)
        self._tiers_read = ([dict(tier) for tier in source], tiers)
        return tiers

    def tier_name(self, level: int) -> str:
        tiers = self.tier_list()
        return tiers[level - 1][0] if 0 < level <= len(tiers) else ""

    def rule_problems(self, requirements: Sequence[BadgeRequirement]) -> dict[str, str]:
        """What is wrong with this badge's tiers or repeat setting given its requirements.

        Checked where a badge and its requirements are saved together (the
        admin's inline formset, rule-file import), as neither alone can tell.
        """
        problems: dict[str, str] = {}
        if self.tiers and not rules.tiers_problem(self.tiers):
            tiers = self.tier_list()
            if len(requirements) != 1:
                problems["tiers"] = (
                    "A badge with tiers has exactly one requirement, which the tiers grade."
                )
            else:
                [requirement] = requirements
                problem = rules.tiered_requirement_problem(
                    requirement.kind, requirement.aggregation, requirement.operator
                )
                if problem:
                    problems["tiers"] = f"Tiers need {problem}."
                elif requirement.threshold is not None and Decimal(
                    requirement.threshold
                ) != Decimal(tiers[0][1]):
                    first = format_number(tiers[0][1])
                    problems["tiers"] = (
                        f"The badge unlocks at its first tier ({tiers[0][0]}, {first}), so the "
                        f"requirement's threshold must be {first}, "
                        f"not {format_number(requirement.threshold)}."
                    )
        if self.repeat:
            unit = rules.Scope(self.repeat)
            for number, requirement in enumerate(requirements, start=1):
                if requirement.kind != rules.Kind.AGGREGATE or requirement.aggregation in (
                    rules.Aggregation.SINGLE,
                ):
                    problems["repeat"] = (
                        f"Requirement {number}: a repeatable badge is made of counts, sums, "
                        "maxima, minima or distinct counts per period."
                    )
                    break
                if requirement.scope != unit:
                    problems["repeat"] = (
                        f"Requirement {number}: a badge earned "
                        f"{self.get_repeat_display().lower()} counts each requirement per "
                        f'{unit.value}, so set its scope to "{unit.label}".'
                    )
                    break
        return problems

    def rule(
        self,
        requirements: Sequence[BadgeRequirement] | None = None,
        *,
        version_id: int | None = None,
    ) -> core.BadgeRule:
        """The badge's rule as the evaluation core reads it (its own requirements,
        or edited ones for a preview). Kept on the instance for its own requirements."""
        if requirements is None:
            cached = self.__dict__.get("_rule")
            source = (self.tiers, self.repeat, version_id)
            if cached is not None and cached[0] == source:
                return cached[1]
            built = self.rule(list(self.requirements.all()), version_id=version_id)
            self._rule = (([dict(t) for t in self.tiers or []], self.repeat, version_id), built)
            return built
        return core.BadgeRule(
            id=self.pk,
            requirements=tuple(r.spec for r in requirements),
            tiers=self.tier_list(),
            repeat=rules.Scope(self.repeat) if self.repeat else None,
            version_id=version_id,
        )

    def standing(
        self,
        requirements: Sequence[BadgeRequirement],
        states: dict[int, dict[str, Any]],
        now: datetime,
        time_zone: str,
        unlocked: set[int],
    ) -> Standing:
        """Where a user stands on this badge: each requirement, the whole, and the tier."""
        return core.standing(self.rule(requirements), states, now, time_zone, unlocked)


class BadgeRequirementQuerySet(models.QuerySet["BadgeRequirement"]):
    def watching(self, event_type: str) -> BadgeRequirementQuerySet:
        """Requirements of active badges that an event of `event_type` can move."""
        return self.filter(event_type=event_type, badge__is_active=True)


class BadgeRequirement(models.Model):
    """One rule of a badge, as data that staff edit in the admin.

    A badge is unlocked when every one of its requirements holds.
    """

    badge = models.ForeignKey(Badge, on_delete=models.CASCADE, related_name="requirements")
    kind = models.CharField(
        max_length=20, choices=_choices(EVALUATED_KINDS), default=rules.Kind.AGGREGATE
    )
    event_type = models.CharField(
        max_length=rules.EVENT_TYPE_MAX_LENGTH,
        validators=[validate_event_type],
        blank=True,
        help_text="The event type this requirement watches, e.g. visit.created "
        "(sequences list theirs in steps).",
    )
    aggregation = models.CharField(
        max_length=20, choices=_choices(EVALUATED_AGGREGATIONS), default=rules.Aggregation.COUNT
    )
    field = models.CharField(
        max_length=64,
        blank=True,
        help_text="Payload field to aggregate; required for distinct counts (e.g. place_id).",
    )
    operator = models.CharField(
        max_length=4, choices=_choices(EVALUATED_OPERATORS), default=rules.Operator.GTE
    )
    threshold = models.DecimalField(
        max_digits=18,
        decimal_places=4,
        validators=[MinValueValidator(Decimal(0))],
        help_text="The value to reach: a count, a sum, a streak length, a number of steps.",
    )
    scope = models.CharField(
        max_length=20, choices=_choices(EVALUATED_SCOPES), default=rules.Scope.ALL_TIME
    )
    label = models.CharField(
        max_length=100,
        blank=True,
        help_text="What the number counts, shown to users, e.g. 'different places'.",
    )
    filters = models.JSONField(
        default=dict,
        blank=True,
        help_text='Payload conditions, e.g. {"all": [{"field": "duration_seconds", "op": ">=", '
        '"value": 600}, {"field": "source", "op": "==", "value": "mobile"}]}.',
    )
    window_days = models.PositiveIntegerField(
        default=0,
        help_text="Rolling scope: the window in days. Sequences: all steps within this many "
        "days (0: no limit).",
    )
    streak_unit = models.CharField(
        max_length=4, choices=[("day", "Days"), ("week", "Weeks")], default="day"
    )
    steps = models.JSONField(
        default=list,
        blank=True,
        help_text='Sequences: event types in order, e.g. ["profile.completed", '
        '"tutorial.finished"].',
    )
    composite_mode = models.CharField(
        max_length=3,
        choices=[("all", "All of them"), ("any", "Any of them")],
        default="all",
        help_text="Composites: whether every listed badge is needed, or one.",
    )
    composite_badges = models.ManyToManyField(
        Badge,
        blank=True,
        related_name="required_by",
        help_text="Composites: the badges this requirement is made of.",
    )

    objects = BadgeRequirementQuerySet.as_manager()

    class Meta:
        ordering = ["badge", "id"]
        indexes = [models.Index(fields=["event_type"], name="requirement_event_type")]

    def __str__(self) -> str:
        return f"{self.badge}: {self.describe()}"

    def clean(self) -> None:
        super().clean()
        errors: dict[str, str] = {}
        kind = _member(rules.Kind, self.kind)
        aggregation = _member(rules.Aggregation, self.aggregation)
        if kind is rules.Kind.COMPOSITE and self.threshold is not None and self.threshold < 0:
            errors["threshold"] = "Ensure this value is greater than or equal to 0."
        if kind in (rules.Kind.AGGREGATE, rules.Kind.STREAK) and not self.event_type:
            errors["event_type"] = "Name the event type this requirement watches."
        needs_field = kind is rules.Kind.AGGREGATE and aggregation and aggregation.needs_field
        if needs_field and not self.field:
            errors["field"] = f"A {aggregation.label.lower()} requirement needs a payload field."
        if self.field and not rules.FIELD_PATTERN.match(self.field):
            errors["field"] = "Use a payload key of letters, digits and '_', e.g. place_id."
        counted = (
            kind in (rules.Kind.STREAK, rules.Kind.SEQUENCE)
            or (kind is rules.Kind.AGGREGATE)
            and aggregation
            in (
                rules.Aggregation.COUNT,
                rules.Aggregation.DISTINCT,
            )
        )
        if kind is not None and (aggregation is not None or kind is not rules.Kind.AGGREGATE):
            problem = rules.operator_problem(kind, self.aggregation, self.operator)
            if problem:
                errors["operator"] = problem
        if self.threshold is not None and counted and self.threshold < 1:
            errors["threshold"] = "A count, streak or sequence needs a threshold of at least 1."
        rolling = self.scope == rules.Scope.ROLLING and kind is rules.Kind.AGGREGATE
        if rolling and not 1 <= self.window_days <= 366:
            errors["window_days"] = "A rolling scope needs a window of 1 to 366 days."
        if kind is rules.Kind.SEQUENCE:
            steps = self.steps if isinstance(self.steps, list) else None
            if steps is None or len(steps) < 2:
                errors["steps"] = "A sequence needs at least 2 steps, in order."
            else:
                for number, step in enumerate(steps, start=1):
                    problem = rules.event_type_problem(step)
                    if problem:
                        errors["steps"] = f"Step {number}: event type {problem}."
                        break
        try:
            payload_filter = rules.Filter.from_data(self.filters)
        except ValueError as exc:
            errors["filters"] = f"Filter: {exc}."
        else:
            candidates = self.steps if kind is rules.Kind.SEQUENCE else [self.event_type]
            watched = [
                t
                for t in (candidates if isinstance(candidates, list) else [])
                if isinstance(t, str) and not rules.event_type_problem(t)
            ]
            numeric_field = bool(needs_field and aggregation and aggregation.needs_number)
            if watched and (payload_filter.terms or numeric_field):
                problems = rules.type_problems(
                    payload_filter, aggregation, self.field, payload_field_types(watched)
                )
                for name, message in problems.items():
                    errors.setdefault(name, message)
        if errors:
            raise ValidationError(errors)

    @cached_property
    def spec(self) -> Spec:
        """The requirement as plain data for the core (built once per instance)."""
        kind = rules.Kind(self.kind)
        parts = (
            tuple(badge.pk for badge in self.composite_badges.all())
            if kind is rules.Kind.COMPOSITE and self.pk is not None
            else ()
        )
        return Spec(
            id=self.pk,
            threshold=Decimal(self.threshold),
            kind=kind,
            event_type=self.event_type,
            aggregation=rules.Aggregation(self.aggregation),
            field=self.field,
            operator=rules.Operator(self.operator),
            scope=rules.Scope(self.scope),
            window_days=self.window_days,
            streak_unit=self.streak_unit,
            steps=tuple(self.steps) if kind is rules.Kind.SEQUENCE else (),
            filter=rules.Filter.from_data(self.filters),
            label=self.label,
            composite_mode=self.composite_mode,
            parts=parts,
        )

    def watched_types(self) -> list[str]:
        if self.kind == rules.Kind.SEQUENCE:
            return list(dict.fromkeys(self.steps))
        if self.kind == rules.Kind.COMPOSITE:
            return []  # moved by other badges' unlocks, not by events
        return [self.event_type]

    def describe(self) -> str:
        """A short human reading of the rule, e.g. '5 distinct place_id of visit.created'."""
        threshold = format_number(self.threshold)
        if self.aggregation == rules.Aggregation.DISTINCT:
            return f"{threshold} distinct {self.field} of {self.event_type}"
        return f"{threshold} × {self.event_type}"

    def unit_label(self) -> str:
        return unit_name(self.spec)


class EventQuerySet(models.QuerySet["Event"]):
    def unprocessed(self) -> EventQuerySet:
        """Events still waiting for evaluation: neither processed nor given up on."""
        return self.filter(processed_at__isnull=True, dead_lettered_at__isnull=True)

    def waiting_for_user(self) -> EventQuerySet:
        """Events for a producer's user id that no site user is linked to yet."""
        return self.unprocessed().filter(user__isnull=True)

    def dead_lettered(self) -> EventQuerySet:
        return self.filter(dead_lettered_at__isnull=False)

    def stranded(self, *, older_than: datetime) -> EventQuerySet:
        """Unprocessed events nobody appears to be working on.

        Received before `older_than`, with no retry scheduled after it and not
        re-enqueued by a sweep since then. Their task message was lost (broker
        down at commit, a worker gone with the message) or never sent.
        """
        return self.unprocessed().filter(
            Q(user__isnull=False),
            Q(received_at__lt=older_than),
            Q(retry_at__isnull=True) | Q(retry_at__lt=older_than),
            Q(swept_at__isnull=True) | Q(swept_at__lt=older_than),
        )


class Event(models.Model):
    """Something a user did, as the producer reported it. Immutable once recorded.

    The row doubles as the outbox: it is written in the producer's own
    transaction, and evaluation is only enqueued once that commits.
    """

    # Unique by a constraint rather than unique=True, which on PostgreSQL also
    # builds a LIKE index nothing uses: every insert paid for it.
    event_id = models.CharField(
        max_length=128, help_text="The producer's id; a repeat is a duplicate."
    )
    event_type = models.CharField(max_length=rules.EVENT_TYPE_MAX_LENGTH)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        related_name="achievement_events",
        null=True,
        blank=True,
        # event_user_occurred starts with the user: a second index would only cost inserts.
        db_index=False,
        help_text="Empty while the producer's user id is not linked to a site user yet.",
    )
    external_user_id = models.CharField(
        max_length=128,
        blank=True,
        help_text="The producer's id for the user, for events that came through the API.",
    )
    occurred_at = models.DateTimeField()
    source = models.CharField(max_length=64, default="app")
    payload = models.JSONField(default=dict, blank=True)
    received_at = models.DateTimeField(default=timezone.now)
    processed_at = models.DateTimeField(null=True, blank=True)
    fingerprint = models.CharField(
        max_length=64,
        blank=True,
        help_text="Hash of user, type and the dedup rule's payload key, when a rule applies.",
    )

    # Delivery bookkeeping. These change as the event moves through the
    # pipeline; the facts above never do.
    attempts = models.PositiveIntegerField(default=0, help_text="Failed evaluations so far.")
    last_error = models.TextField(blank=True)
    retry_at = models.DateTimeField(null=True, blank=True)
    swept_at = models.DateTimeField(
        null=True, blank=True, help_text="When the sweeper last re-enqueued it."
    )
    dead_lettered_at = models.DateTimeField(null=True, blank=True)

    objects = EventQuerySet.as_manager()

    class Meta:
        ordering = ["-received_at", "-id"]
        indexes = [
            models.Index(fields=["user", "occurred_at"], name="event_user_occurred"),
            models.Index(fields=["event_type", "occurred_at"], name="event_type_occurred"),
            # Reports: today's events (closed days are rolled up in ActivityDay)
            # and the latest events' processing lag.
            models.Index(fields=["received_at"], name="event_received"),
            models.Index(
                fields=["received_at"],
                name="event_unprocessed",
                condition=models.Q(processed_at__isnull=True),
            ),
            models.Index(
                fields=["dead_lettered_at"],
                name="event_dead_lettered",
                condition=models.Q(dead_lettered_at__isnull=False),
            ),
            # A producer id's events still waiting (for a link, or for evaluation).
            models.Index(
                fields=["external_user_id"],
                name="event_waiting_external",
                condition=models.Q(processed_at__isnull=True),
            ),
            # Near-duplicates: only events of a type with a de-duplication rule.
            models.Index(
                fields=["fingerprint", "occurred_at"],
                name="event_fingerprint",
                condition=~models.Q(fingerprint=""),
            ),
        ]
        constraints = [
            # The name PostgreSQL gave the unique=True constraint this replaces.
            models.UniqueConstraint(fields=["event_id"], name="achievements_event_event_id_key"),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} {self.event_id}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        # The event's facts never change. Pipeline bookkeeping (processed_at,
        # attempts, ...) is written with queryset updates, never through save().
        if not self._state.adding:
            raise ValueError("Events are immutable once recorded.")
        super().save(*args, **kwargs)

    @property
    def status(self) -> str:
        if self.processed_at:
            return "processed"
        if self.dead_lettered_at:
            return "dead-lettered"
        if self.user_id is None:
            return "waiting for user"
        return "pending"


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

    class Meta:
        constraints = [
            # One row per user and badge, so there is exactly one place an
            # unlock can be written, whatever races.
            models.UniqueConstraint(fields=["user", "badge"], name="unique_user_badge"),
        ]
        indexes = [
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


class BadgeVersion(models.Model):
    """One saved state of a badge's rule, as in a rule file. Immutable.

    Every saved change (admin, rule-file import, the preview's apply) adds a
    version with who made it and what changed; unlocks point at the version
    they were evaluated under.
    """

    badge = models.ForeignKey(Badge, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    rule = models.JSONField(help_text="The badge and its requirements, as in a rule file.")
    changes = models.JSONField(
        default=list, help_text="What changed from the version before, a line per field."
    )
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    source = models.CharField(
        max_length=32, help_text="Where the change was made: admin, import, preview ..."
    )

    class Meta:
        ordering = ["badge", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["badge", "number"], name="unique_badge_version"),
        ]

    def __str__(self) -> str:
        return f"{self.badge} v{self.number}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise ValueError("Badge versions are immutable; record a new one instead.")
        super().save(*args, **kwargs)


class UnlockQuerySet(models.QuerySet["Unlock"]):
    def badge_ids_of(self, user_id: int) -> set[int]:
        """The badges a user holds (what composites are made of)."""
        return set(self.filter(user_id=user_id).values_list("badge_id", flat=True))

    def mark_seen(self, user_id: int, unlock_ids: list[int]) -> int:
        """Record that a page of `user_id` showed these unlocks; others' unlocks are ignored."""
        return self.filter(user_id=user_id, pk__in=unlock_ids, seen_at__isnull=True).update(
            seen_at=timezone.now()
        )

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
    second unlock of the same badge, period and tier impossible.
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

    objects = UnlockQuerySet.as_manager()

    class Meta:
        ordering = ["-unlocked_at", "-id"]
        permissions = [("view_reports", "Can view achievement reports")]
        constraints = [
            models.UniqueConstraint(
                fields=["user", "badge", "period", "tier"], name="unique_unlock"
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


class EventType(models.Model):
    """An event type the HTTP API accepts.

    Types that badge requirements or dedup rules watch are accepted anyway;
    this catalogue is for types a producer sends before any rule uses them,
    so they are stored for later rules and replays instead of refused.
    """

    name = models.CharField(
        max_length=rules.EVENT_TYPE_MAX_LENGTH, unique=True, validators=[validate_event_type]
    )
    description = models.CharField(max_length=200, blank=True)
    fields = models.JSONField(
        default=dict,
        blank=True,
        help_text='The payload\'s fields and their types, e.g. {"place_id": "number", '
        '"source": "string", "verified": "boolean"}. Rules that compare a field with a value '
        "of another type are refused. Fields left out are checked against the stored events.",
    )

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        super().clean()
        if self.fields is None:
            self.fields = {}
        if not isinstance(self.fields, dict):
            raise ValidationError({"fields": 'Give an object, e.g. {"place_id": "number"}.'})
        for name, kind in self.fields.items():
            if not rules.FIELD_PATTERN.match(name):
                raise ValidationError(
                    {"fields": f"{name!r}: use a payload key of letters, digits and '_'."}
                )
            if kind not in rules.PAYLOAD_TYPES:
                raise ValidationError(
                    {
                        "fields": f"{name}: the type must be one of "
                        + ", ".join(rules.PAYLOAD_TYPES)
                        + f", not {kind!r}."
                    }
                )


# How many recent events of a type are read to learn its payload's field types.
TYPE_SAMPLE_SIZE = 200


def payload_field_types(event_types: Sequence[str]) -> dict[str, tuple[str, str]]:
    """What type each payload field of these event types holds, and how that is known.

    Declared on the EventType (staff, in the admin) first; otherwise learned
    from the most recent stored events, when every value seen has one type.
    Fields whose type is unknown or mixed are left out: nothing to check.
    """
    names = ", ".join(event_types)
    types: dict[str, tuple[str, str]] = {}
    for declared in EventType.objects.filter(name__in=event_types).values_list(
        "fields", flat=True
    ):
        for field, kind in (declared or {}).items():
            types.setdefault(field, (kind, f"in {names} events (declared under Event types)"))
    seen: dict[str, set[str]] = {}
    payloads = (
        Event.objects.filter(event_type__in=event_types)
        .order_by("-pk")
        .values_list("payload", flat=True)[:TYPE_SAMPLE_SIZE]
    )
    for payload in payloads:
        if isinstance(payload, dict):
            for field, value in payload.items():
                if value is not None:
                    seen.setdefault(field, set()).add(rules.json_type(value))
    for field, kinds in seen.items():
        if len(kinds) == 1:
            types.setdefault(field, (kinds.pop(), f"in the stored {names} events"))
    return types


def accepted_event_types() -> set[str]:
    """Catalogued types, and every type a rule watches (sequences watch their steps)."""
    watched: set[str] = set()
    for event_type, steps in BadgeRequirement.objects.values_list("event_type", "steps"):
        watched.add(event_type)
        if isinstance(steps, list):
            watched.update(step for step in steps if isinstance(step, str))
    watched.discard("")
    return (
        set(EventType.objects.values_list("name", flat=True))
        | watched
        | set(DedupRule.objects.values_list("event_type", flat=True))
    )


class ExternalIdentity(models.Model):
    """A producer's id for a user, and the site user it belongs to once linked.

    Events can arrive through the API for an id nobody has linked yet. They
    are kept, counted and evaluated when the link is made, so no placeholder
    accounts are created and nothing is dropped.
    """

    external_id = models.CharField(max_length=128, unique=True)
    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="external_identity",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    linked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "external identities"

    def __str__(self) -> str:
        return f"{self.external_id} → {self.user or 'not linked'}"


class DedupRule(models.Model):
    """Treat events of one type as duplicates when they repeat a business key soon after.

    Some producers retry with fresh ids (a webhook that generates one per
    delivery). Events of `event_type` by the same user with the same value of
    `payload_key` within `window_seconds` of an earlier one count once.
    """

    event_type = models.CharField(
        max_length=rules.EVENT_TYPE_MAX_LENGTH, unique=True, validators=[validate_event_type]
    )
    payload_key = models.CharField(
        max_length=64, help_text="The payload field that identifies the business fact."
    )
    window_seconds = models.PositiveIntegerField(
        default=300,
        validators=[MinValueValidator(1)],
        help_text="How long after an event a repeat still counts as a duplicate.",
    )

    class Meta:
        verbose_name = "deduplication rule"

    def __str__(self) -> str:
        return f"{self.event_type} by {self.payload_key} within {self.window_seconds}s"

    def clean(self) -> None:
        super().clean()
        if self.payload_key and not rules.FIELD_PATTERN.match(self.payload_key):
            raise ValidationError(
                {"payload_key": "Use a payload key of letters, digits and '_', e.g. order_id."}
            )


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


def format_number(value: Decimal | int | float) -> str:
    """Show 5 rather than 5.0000, and 2.5 rather than 2.5000."""
    number = Decimal(value)
    if number == number.to_integral_value():
        return str(int(number))
    return f"{number.normalize():f}"


class Reevaluation(models.Model):
    """A background job that re-evaluates badges over the stored events.

    Its state is stored, so the staff page shows it after a reload, and the
    job reads `state` between users, so setting it to "cancelling" stops it.
    """

    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        CANCELLING = "cancelling", "Cancelling"
        CANCELLED = "cancelled", "Cancelled"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    badges = models.ManyToManyField(Badge, related_name="reevaluations")
    since = models.DateTimeField(
        null=True, blank=True, help_text="Only users with events on or after this time."
    )
    until = models.DateTimeField(
        null=True, blank=True, help_text="Only users with events before this time."
    )
    notify = models.BooleanField(
        default=False,
        help_text="Tell users who newly qualify (a toast); otherwise their unlocks are silent.",
    )
    state = models.CharField(max_length=12, choices=State.choices, default=State.QUEUED)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    users_total = models.PositiveIntegerField(default=0)
    users_done = models.PositiveIntegerField(default=0)
    events_total = models.PositiveIntegerField(default=0)
    events_done = models.PositiveIntegerField(default=0)
    report = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "re-evaluation"

    def __str__(self) -> str:
        return f"Re-evaluation #{self.pk}"

    @property
    def finished(self) -> bool:
        return self.state in (self.State.CANCELLED, self.State.DONE, self.State.FAILED)

    @property
    def percent(self) -> int:
        if self.state == self.State.DONE:
            return 100
        if not self.events_total:
            return 0
        return min(99, self.events_done * 100 // self.events_total)

    @property
    def rate(self) -> float | None:
        """Events per second so far."""
        if not self.started_at or not self.events_done:
            return None
        end = self.finished_at or self.heartbeat_at or timezone.now()
        seconds = (end - self.started_at).total_seconds()
        return self.events_done / seconds if seconds > 0 else None

    @property
    def seconds_left(self) -> int | None:
        rate = self.rate
        if self.finished or not rate:
            return None
        return int((self.events_total - self.events_done) / rate)


class ActivityDay(models.Model):
    """A closed day's events, rolled up once for the reports (achievements/rollups.py).

    Events are stamped `received_at` when they arrive, so a day that has ended
    (in the site's time zone) never gains events: its roll-up is final. The
    active users are a bitmap by user id, so the users active over any range
    of days is the union of its days' bitmaps, counted exactly. Unlocks are
    stamped when written, so the day's unlock counts are final too.
    """

    day = models.DateField(unique=True)
    events = models.PositiveIntegerField()
    users = models.BinaryField(help_text="A zlib-compressed bitmap, bit n for user n.")
    user_count = models.PositiveIntegerField()
    by_type = models.JSONField(default=dict, help_text="Events received per event type.")
    unlocks = models.JSONField(
        default=dict, help_text="Unlocks written that day per badge id (every earning)."
    )
    built_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["day"]

    def __str__(self) -> str:
        return f"{self.day}: {self.events} events, {self.user_count} users"
