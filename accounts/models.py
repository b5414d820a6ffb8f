from __future__ import annotations

import zoneinfo
from datetime import datetime
from functools import cache

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils.translation import gettext_lazy as _


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

    # The user's own settings (accounts.views.settings_page).
    mute_all = models.BooleanField(
        _("Mute all badge notifications"),
        default=False,
        help_text=_("No pop-up notifications; badges are still earned and shown on your page."),
    )
    muted_categories = models.JSONField(
        default=list,
        blank=True,
        help_text=_("Badge categories whose notifications the user does not want."),
    )
    animate = models.BooleanField(
        _("Animate progress"),
        default=True,
        help_text=_("Progress bars glide and earned badges celebrate. Off: changes show at once."),
    )
    public_profile = models.BooleanField(
        _("Public badge page"),
        default=False,
        help_text=_("A page with the badges you have earned, at a link only you can share."),
    )

    language = models.CharField(
        _("Language"),
        max_length=8,
        blank=True,
        choices=settings.LANGUAGES,
        help_text=_("The site's language for you, notifications included. Empty: your browser's."),
    )
    # The language the user's browser last asked for, while they chose none: what
    # notifications pushed to them are written in.
    browser_language = models.CharField(max_length=8, blank=True, editable=False)
    public_name = models.CharField(
        _("Name on your public page"),
        max_length=60,
        blank=True,
        help_text=_(
            "Shown instead of your username, which stays private. Empty: “An Accolade member”."
        ),
    )
    # The public page's address: random, so it can be neither guessed nor enumerated,
    # and made anew (the old link then stops working) from the settings.
    share_token = models.CharField(max_length=43, null=True, blank=True, unique=True)

    # The daily email of what the user earned while away (achievements.digest),
    # off until they ask for it; it goes to User.email.
    email_digest = models.BooleanField(
        _("Email me a daily summary of badges I earned while away"), default=False
    )
    # Since when it tells of unlocks: asking for it does not mail everything the
    # user never looked at before.
    digest_since = models.DateTimeField(null=True, blank=True, editable=False)
    # When the digest was last made for the user (sent, or nothing was new): one a
    # local day. A run claims a user's digest by moving this from the value it read.
    last_digest_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        indexes = [
            # The digest's hourly run reads the few users who asked for it.
            models.Index(
                fields=["time_zone"], name="profile_digest", condition=models.Q(email_digest=True)
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user} ({self.time_zone})"

    def start_digest(self, now: datetime) -> None:
        """Turned on: the first digest comes at the next digest hour, and tells of
        what is earned from now on."""
        self.digest_since = now
        self.last_digest_at = now


def time_zone_for(user_id: int) -> str:
    return (
        Profile.objects.filter(user_id=user_id).values_list("time_zone", flat=True).first()
        or "UTC"
    )
