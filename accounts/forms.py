from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.contrib.auth.forms import UserCreationForm
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
    """What a user decides about their notifications and their public page."""

    muted_categories = forms.MultipleChoiceField(
        label=_("Mute notifications of these kinds of badge"),
        required=False,
        widget=forms.CheckboxSelectMultiple,
    )

    class Meta:
        model = Profile
        fields = (
            "language",
            "mute_all",
            "muted_categories",
            "animate",
            "public_profile",
            "public_name",
        )

    def __init__(self, *args: Any, categories: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
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
