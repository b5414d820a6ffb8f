from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from api.models import ApiKey


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """Keys are created here with a name; the key itself is shown once, on creation."""

    list_display = ["name", "prefix", "created_at", "created_by", "last_used_at", "revoked_at"]
    list_filter = [("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["name", "prefix"]
    readonly_fields = ["prefix", "created_at", "created_by", "last_used_at", "revoked_at"]
    actions = ["revoke"]

    def get_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> Any:
        return ["name"] if obj is None else ["name", *self.readonly_fields]

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        api_key, key = ApiKey.issue(obj.name, created_by_id=request.user.pk)
        obj.pk = api_key.pk
        obj.__dict__.update(api_key.__dict__)
        self.message_user(
            request,
            f"Copy the key for {api_key.name} now; it is not shown again: {key}",
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
