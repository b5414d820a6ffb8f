from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.utils import timezone

from achievements import rules


def validate_event_type(value: str) -> None:
    problem = rules.event_type_problem(value)
    if problem:
        raise ValidationError(f"Event type {problem}.", code="invalid_event_type")


def _choices(enum: type[rules.Aggregation] | type[rules.Operator] | type[rules.Scope]):
    return [(member.value, member.label) for member in enum]


class BadgeQuerySet(models.QuerySet["Badge"]):
    def active(self) -> BadgeQuerySet:
        return self.filter(is_active=True)


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
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = BadgeQuerySet.as_manager()

    class Meta:
        ordering = ["sort_order", "name"]

    def __str__(self) -> str:
        return self.name


class BadgeRequirementQuerySet(models.QuerySet["BadgeRequirement"]):
    def watching(self, event_type: str) -> BadgeRequirementQuerySet:
        """Requirements of active badges that an event of `event_type` can move."""
        return self.filter(event_type=event_type, badge__is_active=True)


class BadgeRequirement(models.Model):
    """One rule of a badge, as data that staff edit in the admin.

    A badge is unlocked when every one of its requirements holds.
    """

    badge = models.ForeignKey(Badge, on_delete=models.CASCADE, related_name="requirements")
    event_type = models.CharField(
        max_length=rules.EVENT_TYPE_MAX_LENGTH,
        validators=[validate_event_type],
        help_text="The event type this requirement watches, e.g. visit.created.",
    )
    aggregation = models.CharField(
        max_length=20, choices=_choices(rules.Aggregation), default=rules.Aggregation.COUNT
    )
    field = models.CharField(
        max_length=64,
        blank=True,
        help_text="Payload field to aggregate; required for distinct counts (e.g. place_id).",
    )
    operator = models.CharField(
        max_length=4, choices=_choices(rules.Operator), default=rules.Operator.GTE
    )
    threshold = models.DecimalField(
        max_digits=18,
        decimal_places=4,
        validators=[MinValueValidator(Decimal(1))],
        help_text="The value the aggregate must reach.",
    )
    scope = models.CharField(
        max_length=20, choices=_choices(rules.Scope), default=rules.Scope.ALL_TIME
    )
    label = models.CharField(
        max_length=100,
        blank=True,
        help_text="What the number counts, shown to users, e.g. 'different places'.",
    )

    objects = BadgeRequirementQuerySet.as_manager()

    class Meta:
        ordering = ["badge", "id"]
        indexes = [models.Index(fields=["event_type"], name="requirement_event_type")]

    def __str__(self) -> str:
        return f"{self.badge}: {self.describe()}"

    def clean(self) -> None:
        super().clean()
        aggregation = rules.Aggregation(self.aggregation) if self.aggregation else None
        if aggregation and aggregation.needs_field and not self.field:
            raise ValidationError(
                {"field": f"A {aggregation.label.lower()} requirement needs a payload field."}
            )
        if self.field and not rules.FIELD_PATTERN.match(self.field):
            raise ValidationError(
                {"field": "Use a payload key of letters, digits and '_', e.g. place_id."}
            )

    def as_rule(self) -> rules.Rule:
        return rules.Rule(
            id=self.pk,
            event_type=self.event_type,
            aggregation=rules.Aggregation(self.aggregation),
            threshold=Decimal(self.threshold),
            field=self.field,
            operator=rules.Operator(self.operator),
            scope=rules.Scope(self.scope),
            label=self.label,
        )

    def describe(self) -> str:
        """A short human reading of the rule, e.g. '5 distinct place_id of visit.created'."""
        threshold = format_number(self.threshold)
        if self.aggregation == rules.Aggregation.DISTINCT:
            return f"{threshold} distinct {self.field} of {self.event_type}"
        return f"{threshold} × {self.event_type}"

    def unit_label(self) -> str:
        if self.label:
            return self.label
        if self.aggregation == rules.Aggregation.DISTINCT:
            return f"different {self.field.removesuffix('_id').replace('_', ' ')}s"
        return self.event_type


class EventQuerySet(models.QuerySet["Event"]):
    def unprocessed(self) -> EventQuerySet:
        return self.filter(processed_at__isnull=True)


class Event(models.Model):
    """Something a user did, as the producer reported it. Immutable once recorded.

    The row doubles as the outbox: it is written in the producer's own
    transaction, and evaluation is only enqueued once that commits.
    """

    event_id = models.CharField(
        max_length=128, unique=True, help_text="The producer's id; a repeat is a duplicate."
    )
    event_type = models.CharField(max_length=rules.EVENT_TYPE_MAX_LENGTH)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="achievement_events"
    )
    occurred_at = models.DateTimeField()
    source = models.CharField(max_length=64, default="app")
    payload = models.JSONField(default=dict, blank=True)
    received_at = models.DateTimeField(default=timezone.now)
    processed_at = models.DateTimeField(null=True, blank=True)

    objects = EventQuerySet.as_manager()

    class Meta:
        ordering = ["-received_at", "-id"]
        indexes = [
            models.Index(fields=["user", "occurred_at"], name="event_user_occurred"),
            models.Index(fields=["event_type", "occurred_at"], name="event_type_occurred"),
            models.Index(
                fields=["received_at"],
                name="event_unprocessed",
                condition=models.Q(processed_at__isnull=True),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} {self.event_id}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise ValueError("Events are immutable once recorded.")
        super().save(*args, **kwargs)


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

    class Meta:
        constraints = [
            # One row per user and badge, so there is exactly one place an
            # unlock can be written, whatever races.
            models.UniqueConstraint(fields=["user", "badge"], name="unique_user_badge"),
        ]

    def __str__(self) -> str:
        return f"{self.user} · {self.badge}"

    @property
    def is_completed(self) -> bool:
        return self.completed_at is not None


class RequirementProgress(models.Model):
    """The running aggregate of one requirement for one user, kept incrementally."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    requirement = models.ForeignKey(
        BadgeRequirement, on_delete=models.CASCADE, related_name="progress"
    )
    value = models.DecimalField(max_digits=18, decimal_places=4, default=Decimal(0))
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
