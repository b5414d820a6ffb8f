from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin
from django.http import HttpRequest
from django.utils.html import format_html

from achievements.models import Badge, BadgeRequirement, Event, UserBadge, format_number


class BadgeRequirementForm(forms.ModelForm):
    class Meta:
        model = BadgeRequirement
        fields = "__all__"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Show a stored 5.0000 as 5, the way staff typed it.
        if self.instance.pk and self.instance.threshold is not None:
            self.initial["threshold"] = format_number(self.instance.threshold)


class BadgeRequirementInline(admin.TabularInline):
    model = BadgeRequirement
    form = BadgeRequirementForm
    extra = 0
    min_num = 1
    fields = ["event_type", "aggregation", "field", "operator", "threshold", "scope", "label"]


@admin.register(Badge)
class BadgeAdmin(admin.ModelAdmin):
    list_display = ["name", "key", "icon", "is_active", "requirement_summary", "sort_order"]
    list_filter = ["is_active"]
    list_editable = ["sort_order"]
    search_fields = ["name", "key", "description"]
    prepopulated_fields = {"key": ["name"]}
    inlines = [BadgeRequirementInline]

    def get_queryset(self, request: HttpRequest):
        return super().get_queryset(request).prefetch_related("requirements")

    @admin.display(description="Requirements")
    def requirement_summary(self, badge: Badge) -> str:
        return "; ".join(r.describe() for r in badge.requirements.all())


@admin.register(UserBadge)
class UserBadgeAdmin(admin.ModelAdmin):
    list_display = ["user", "badge", "progress", "completed_at", "last_evaluated_at"]
    list_filter = ["badge", ("completed_at", admin.EmptyFieldListFilter)]
    list_select_related = ["user", "badge"]
    search_fields = ["user__username", "badge__name", "badge__key"]
    raw_id_fields = ["user", "completed_by_event"]
    readonly_fields = ["last_evaluated_at"]
    date_hierarchy = "completed_at"

    @admin.display(description="Progress")
    def progress(self, user_badge: UserBadge) -> str:
        return (
            f"{format_number(user_badge.current_value)} / {format_number(user_badge.target_value)}"
        )


@admin.register(Event)
class EventAdmin(admin.ModelAdmin):
    """The event log, browsable but never editable: events are facts."""

    list_display = [
        "event_id",
        "event_type",
        "user",
        "source",
        "occurred_at",
        "received_at",
        "processed_at",
    ]
    list_filter = ["event_type", "source", ("processed_at", admin.EmptyFieldListFilter)]
    list_select_related = ["user"]
    search_fields = ["event_id", "event_type", "user__username"]
    date_hierarchy = "received_at"
    fields = [
        "event_id",
        "event_type",
        "user",
        "source",
        "occurred_at",
        "received_at",
        "processed_at",
        "pretty_payload",
    ]
    readonly_fields = [
        "event_id",
        "event_type",
        "user",
        "source",
        "occurred_at",
        "received_at",
        "processed_at",
        "pretty_payload",
    ]

    @admin.display(description="Payload")
    def pretty_payload(self, event: Event) -> str:
        return format_html("<pre>{}</pre>", json.dumps(event.payload, indent=2, sort_keys=True))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Event | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Event | None = None) -> bool:
        return False
