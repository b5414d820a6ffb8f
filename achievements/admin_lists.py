"""Changelists shared by the project's admins."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import ChangeList
from django.http import HttpRequest


class DrillDownChangeList(ChangeList):
    """Django's changelist, taking a date drill-down past Python's calendar
    (?received_at__year=9999, or a number too big for a C long) as the bad
    filter value it is instead of failing with a 500 (Django ticket #37357)."""

    def get_filters(self, request: HttpRequest) -> Any:
        try:
            return super().get_filters(request)
        except (OverflowError, ValueError) as exc:
            raise IncorrectLookupParameters(exc) from exc


class DateHierarchyAdmin(admin.ModelAdmin):
    """A ModelAdmin with a date_hierarchy, whose drill-down refuses dates past the calendar."""

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return DrillDownChangeList
