from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth.forms import UserCreationForm

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
