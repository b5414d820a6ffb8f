"""The stream's dead letters and its consumers, for staff (read-only)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.utils.html import format_html

from ingest.models import ConsumerState, Rejected


class ReadOnly(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Rejected)
class RejectedAdmin(ReadOnly):
    list_display = ["received_at", "producer", "event_id", "field", "problem", "sequence"]
    list_filter = ["producer", "field"]
    search_fields = ["event_id", "producer", "subject", "problem"]
    fields = (
        "received_at",
        "stream",
        "sequence",
        "subject",
        "producer",
        "event_id",
        "field",
        "problem",
        "message",
    )
    readonly_fields = fields

    @admin.display(description="the message as it came")
    def message(self, rejected: Rejected) -> str:
        return format_html("<pre tabindex='0' aria-label='The message'>{}</pre>", rejected.data)


@admin.register(ConsumerState)
class ConsumerStateAdmin(ReadOnly):
    list_display = ["name", "filter_subject", "pending", "unacknowledged", "holder", "updated_at"]
    readonly_fields = [
        "name",
        "stream",
        "filter_subject",
        "pending",
        "unacknowledged",
        "last_sequence",
        "holder",
        "updated_at",
    ]
