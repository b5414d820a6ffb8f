"""Background jobs' stored state: re-evaluations, and the reports' daily roll-ups."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from achievements.models.badges import Badge


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
