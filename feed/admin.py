from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from achievements.admin_lists import DateHierarchyAdmin
from feed.models import File


@admin.register(File)
class FileAdmin(DateHierarchyAdmin):
    """The files the exporter wrote: read-only, for seeing that the feed flows."""

    list_display = ("name", "day", "records", "size", "created_at", "written_at")
    list_filter = ("day",)
    date_hierarchy = "day"
    search_fields = ("name",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False
