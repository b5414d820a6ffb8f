"""The feed's outbox and the files it was written to.

A `Batch` is written in the transaction of what it tells (a batch of
evaluated events with their decisions, or ledger entries), so it exists
exactly when its facts committed. The exporter gathers waiting batches into
a `File`: first it names the file and claims the batches for it (one
commit), then it writes the file and deletes the batches (another). A crash
between the two leaves the file named and its batches claimed, and the next
run writes the same file again, whole, under the same name: no record is
lost, and none appears in two files.
"""

from __future__ import annotations

from django.db import models
from django.utils import timezone


class File(models.Model):
    name = models.CharField(max_length=200, unique=True, help_text="Its path in the feed storage.")
    day = models.DateField(help_text="The UTC day its records were written on.")
    created_at = models.DateTimeField(default=timezone.now)
    written_at = models.DateTimeField(
        null=True, blank=True, help_text="Empty while it is being written."
    )
    records = models.PositiveIntegerField(default=0)
    size = models.PositiveBigIntegerField(default=0, help_text="Bytes, compressed.")

    class Meta:
        ordering = ["-id"]
        verbose_name = "feed file"

    def __str__(self) -> str:
        return self.name


class Batch(models.Model):
    """Records waiting for the exporter: newline-delimited JSON, one record a line,
    zlib-compressed (a batch of 500 events makes some 800 kB of lines, 25 kB so:
    sending them whole was most of what the feed cost an evaluation)."""

    written_at = models.DateTimeField(default=timezone.now, db_index=True)
    records = models.PositiveIntegerField()
    data = models.BinaryField()
    file = models.ForeignKey(
        File, on_delete=models.CASCADE, null=True, blank=True, related_name="batches"
    )

    class Meta:
        indexes = [
            models.Index(
                fields=["id"], name="feed_batch_waiting", condition=models.Q(file__isnull=True)
            )
        ]
        verbose_name_plural = "batches"

    def __str__(self) -> str:
        return f"Batch {self.pk} ({self.records} records)"
