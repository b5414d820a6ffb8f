"""What the stream consumer keeps: the messages it refused, and each consumer's state."""

from __future__ import annotations

from django.db import models
from django.utils import timezone


class Rejected(models.Model):
    """A stream message that could not be an event: the stream's dead letters.

    Acknowledged on the stream once this row is written, so it is neither
    lost nor tried again; staff read why here (Ingest › Rejected messages),
    and the producer fixes and sends it again.
    """

    received_at = models.DateTimeField(default=timezone.now)
    stream = models.CharField(max_length=64)
    sequence = models.BigIntegerField(help_text="The message's position in its stream.")
    subject = models.CharField(max_length=255)
    producer = models.CharField(max_length=64, blank=True)
    event_id = models.CharField(max_length=128, blank=True)
    field = models.CharField(max_length=128)
    problem = models.CharField(max_length=500)
    data = models.TextField(help_text="The message as it came (its first 10,000 characters).")

    class Meta:
        ordering = ["-received_at", "-id"]
        verbose_name = "rejected message"
        constraints = [
            # Redelivered (a consumer killed before its acknowledgement): one row.
            models.UniqueConstraint(fields=["stream", "sequence"], name="one_rejection_each"),
        ]

    def __str__(self) -> str:
        return f"{self.stream} #{self.sequence}"


class ConsumerState(models.Model):
    """A stream consumer's last report: how far behind it is, and who runs it."""

    name = models.CharField(max_length=128, unique=True, help_text="The durable consumer's name.")
    stream = models.CharField(max_length=64)
    filter_subject = models.CharField(max_length=255)
    pending = models.BigIntegerField(default=0, help_text="Messages in the stream not yet taken.")
    unacknowledged = models.BigIntegerField(
        default=0, help_text="Messages taken and not yet acknowledged."
    )
    last_sequence = models.BigIntegerField(default=0)
    holder = models.CharField(max_length=200, blank=True, help_text="The process consuming.")
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        verbose_name = "stream consumer"

    def __str__(self) -> str:
        return self.name

    @property
    def lag(self) -> int:
        return self.pending + self.unacknowledged
