from __future__ import annotations

from datetime import time
from typing import Any

from django import forms
from django.conf import settings
from django.contrib.auth.forms import UserCreationForm
from django.utils.formats import time_format
from django.utils.translation import gettext_lazy as _

from accounts.models import Profile, time_zone_names


class SignUpForm(UserCreationForm):
    # Filled in by the browser (Intl API); a missing or unknown value means UTC
    # rather than an error the user could not fix.
    time_zone = forms.CharField(required=False, widget=forms.HiddenInput)

    class Meta(UserCreationForm.Meta):
        fields = ("username",)

    def clean_time_zone(self) -> str:
        value = self.cleaned_data.get("time_zone") or ""
        return value if value in time_zone_names() else "UTC"

    def save(self, commit: bool = True) -> Any:
        user = super().save(commit=commit)
        if commit:
            Profile.objects.create(user=user, time_zone=self.cleaned_data["time_zone"])
        return user


class SettingsForm(forms.ModelForm):
    """What a user decides about their notifications, their daily email and their
    public page.

    The email address is asked for only while the user has none (the daily
    email needs one); the view stores it on the user.
    """

    muted_categories = forms.MultipleChoiceField(
        label=_("Mute notifications of these kinds of badge"),
        required=False,
        widget=forms.CheckboxSelectMultiple,
    )
    email = forms.EmailField(
        label=_("Email address"),
        required=False,
        help_text=_("Where the daily summary goes."),
        widget=forms.EmailInput(attrs={"autocomplete": "email"}),
    )

    class Meta:
        model = Profile
        fields = (
            "language",
            "mute_all",
            "muted_categories",
            "animate",
            "email_digest",
            "public_profile",
            "public_name",
        )

    def __init__(
        self, *args: Any, categories: list[str], email_address: str, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.email_address = email_address
        if email_address:
            del self.fields["email"]
        hour = time_format(time(int(settings.ACCOLADE_DIGEST_HOUR)), "TIME_FORMAT")
        self.fields["email_digest"].help_text = _(
            "Once a day, after %(hour)s your time (%(time_zone)s), and only when you earned "
            "something no page showed you. Badges whose notifications you muted are left out."
        ) % {"hour": hour, "time_zone": self.instance.time_zone}
        self.fields["language"].choices = [  # type: ignore[attr-defined]
            ("", _("As my browser asks")),
            *settings.LANGUAGES,
        ]
        field = self.fields["muted_categories"]
        # A category muted before its badges went away stays listed, so it can be unticked.
        known = sorted({*categories, *(self.instance.muted_categories or [])})
        field.choices = [(name, name) for name in known]  # type: ignore[attr-defined]
        if not known:
            del self.fields["muted_categories"]

    def clean_public_name(self) -> str:
        return " ".join((self.cleaned_data.get("public_name") or "").split())

    def clean(self) -> dict[str, Any] | None:
        cleaned = super().clean() or {}
        wanted = cleaned.get("email_digest") and not self.email_address
        # (An address that is not one has its own error already.)
        if wanted and not cleaned.get("email") and "email" not in self.errors:
            self.add_error("email", _("Give an email address for the daily summary to go to."))
        return cleaned
