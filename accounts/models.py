from __future__ import annotations

import zoneinfo
from functools import cache

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models


@cache
def time_zone_names() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def validate_time_zone(value: str) -> None:
    if value not in time_zone_names():
        raise ValidationError(f"{value!r} is not a known time zone, such as Europe/Lisbon.")


class Profile(models.Model):
    """What Accolade keeps about a user beyond Django's User: their time zone.

    Day, week and streak rules count in the user's own time zone, and the
    evaluator activates it for the length of each evaluation.
    """

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="profile"
    )
    time_zone = models.CharField(max_length=64, default="UTC", validators=[validate_time_zone])
    attributes = models.JSONField(
        default=dict,
        blank=True,
        help_text='Facts badges can be limited to, e.g. {"plan": "pro", "team": "north"}.',
    )

    def __str__(self) -> str:
        return f"{self.user} ({self.time_zone})"


def time_zone_for(user_id: int) -> str:
    return (
        Profile.objects.filter(user_id=user_id).values_list("time_zone", flat=True).first()
        or "UTC"
    )
