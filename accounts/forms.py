from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth.forms import AuthenticationForm, UserCreationForm

from accounts import throttle
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


class ThrottledAuthenticationForm(AuthenticationForm):
    """The log-in form, refusing to check passwords after too many failures."""

    retry_after: int | None = None

    def clean(self) -> dict[str, Any]:
        username = self.data.get("username", "") or ""
        address = self.request.META.get("REMOTE_ADDR", "") if self.request else ""
        wait = throttle.retry_after(username, address)
        if wait is not None:
            self.retry_after = wait
            minutes = max(1, round(wait / 60))
            raise forms.ValidationError(
                f"Too many failed log-in attempts. Try again in about {minutes} minute(s).",
                code="throttled",
            )
        try:
            cleaned = super().clean()
        except forms.ValidationError:
            throttle.record_failure(username, address)
            raise
        throttle.clear(username, address)
        return cleaned
