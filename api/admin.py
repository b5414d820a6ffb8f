from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from api.models import DEFAULT_SCOPES, PRODUCER_PATTERN, SCOPES, ApiKey

AWARD_SCOPE = "badges:write"


class ApiKeyForm(forms.ModelForm):
    producer = forms.RegexField(
        regex=PRODUCER_PATTERN,
        required=False,
        max_length=64,
        help_text="The producer this key speaks for: its events' ids are this producer's own, "
        "and it reads only this producer's events. Keys of one service (a rotation) share "
        "one; 'app' shares the site's own. Empty: the key's name as a slug.",
        error_messages={
            "invalid": "Use 1-64 letters, digits, '.', '_', ':' or '-', starting with a letter "
            "or digit."
        },
    )
    scopes = forms.MultipleChoiceField(
        choices=[(name, f"{what} ({name})") for name, what in SCOPES.items()],
        initial=DEFAULT_SCOPES,
        widget=forms.CheckboxSelectMultiple,
        help_text="What the key may do.",
    )

    class Meta:
        model = ApiKey
        fields = ["name", "producer", "scopes"]

    # Set by the admin: whether the staff member may grant and revoke badges
    # themselves; a key they hand out may do no more than they may.
    may_award = False

    def clean_scopes(self) -> list[str]:
        scopes = self.cleaned_data["scopes"]
        before = set(self.instance.scopes or []) if self.instance.pk else set()
        if AWARD_SCOPE in scopes and AWARD_SCOPE not in before and not self.may_award:
            raise forms.ValidationError(
                f"Only staff who may grant and revoke badges can give a key {AWARD_SCOPE}."
            )
        return scopes


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """Keys are created here with a name, a producer and scopes; the key itself is
    shown once, on creation. Its producer never changes (a new producer is a new key);
    its scopes may."""

    form = ApiKeyForm
    list_display = [
        "name",
        "producer",
        "scope_list",
        "prefix",
        "created_at",
        "last_used_at",
        "revoked_at",
    ]
    list_filter = [("revoked_at", admin.EmptyFieldListFilter), "producer"]
    search_fields = ["name", "prefix", "producer"]
    readonly_fields = ["prefix", "created_at", "created_by", "last_used_at", "revoked_at"]
    actions = ["revoke"]

    @admin.display(description="Scopes")
    def scope_list(self, obj: ApiKey) -> str:
        return ", ".join(obj.scopes)

    def get_form(  # type: ignore[override]  # the stubs' overloads
        self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any
    ) -> Any:
        form = super().get_form(request, obj, change=change, **kwargs)
        form.may_award = request.user.has_perm("achievements.change_unlock")  # type: ignore[attr-defined]
        return form

    def get_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> Any:
        if obj is None:
            return ["name", "producer", "scopes"]
        return ["name", "producer", "scopes", *self.readonly_fields]

    def get_readonly_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> Any:
        return self.readonly_fields if obj is None else ["producer", *self.readonly_fields]

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        api_key, key = ApiKey.issue(
            obj.name,
            producer=form.cleaned_data.get("producer") or None,
            scopes=form.cleaned_data["scopes"],
            created_by_id=request.user.pk,
        )
        obj.pk = api_key.pk
        obj.__dict__.update(api_key.__dict__)
        self.message_user(
            request,
            f"Copy the key for {api_key.name} (producer {api_key.producer}) now; "
            f"it is not shown again: {key}",
            messages.WARNING,
        )

    @admin.action(description="Revoke selected keys")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        for api_key in queryset:
            api_key.revoke()
        self.message_user(request, f"Revoked {queryset.count()} key(s).", messages.SUCCESS)

    def has_delete_permission(self, request: HttpRequest, obj: ApiKey | None = None) -> bool:
        # Revoke instead, so the key's history (who made it, when it was used) stays.
        return False
