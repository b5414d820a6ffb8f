"""Immutable versions of each badge's rule."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models
from django.utils import timezone

from achievements.models.badges import Badge


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
