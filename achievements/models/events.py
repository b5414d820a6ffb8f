"""Events as producers report them (the outbox), who they belong to, and their types."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from achievements import rules


def validate_event_type(value: str) -> None:
    problem = rules.event_type_problem(value)
    if problem:
        raise ValidationError(f"Event type {problem}.", code="invalid_event_type")


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

    # A default in the database too: rows written by raw SQL or COPY (bulk
    # loads, the benchmarks) are the site's own unless they say otherwise.
    producer = models.CharField(
        max_length=64,
        default="app",
        db_default="app",
        help_text="Who sent it: 'app' for the site's own calls, else the producer its API "
        "key speaks for. Event ids are the producer's own: unique per producer.",
    )
    # Unique with the producer by a constraint rather than unique=True, which on
    # PostgreSQL also builds a LIKE index nothing uses: every insert paid for it.
    event_id = models.CharField(
        max_length=128, help_text="The producer's id; a repeat from it is a duplicate."
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
    isolated_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When it was set apart to be evaluated on its own (its batch died with "
        "its worker); drains leave it alone.",
    )

    objects = EventQuerySet.as_manager()

    class Meta:
        ordering = ["-received_at", "-id"]
        permissions = [("view_metrics", "Can read the pipeline's metrics (/metrics)")]
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
            models.UniqueConstraint(fields=["producer", "event_id"], name="event_id_per_producer"),
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
    def retrying(self) -> bool:
        """Whether it failed and waits for its next attempt (at retry_at)."""
        return (
            self.processed_at is None
            and self.dead_lettered_at is None
            and self.attempts > 0
            and self.retry_at is not None
        )

    @property
    def status(self) -> str:
        if self.processed_at:
            return "processed"
        if self.dead_lettered_at:
            return "dead-lettered"
        if self.user_id is None:
            return "waiting for user"
        if self.retrying:
            return "retrying"
        return "pending"


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

    def link_to(self, user_id: int) -> None:
        """Give this producer id its site user (the caller holds the row locked)."""
        self.user_id = user_id
        self.linked_at = timezone.now()
        self.save(update_fields=["user", "linked_at"])


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
