"""The reports page (staff with the "view reports" permission) and its CSV exports."""

from __future__ import annotations

import csv
from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.views.decorators.http import require_GET

from achievements import reports, rollups
from achievements.models import Badge

EXPORTS = {
    "unlocks": ("period", "unlocks", "cumulative", "revoked", "lost", "expired"),
    "rarity": ("badge", "key", "tier", "holders", "active_users", "percent"),
    "near_misses": ("user", "badge", "percent", "current", "target"),
    "funnel": ("badge", "step", "users", "of_previous"),
    "time_to_unlock": ("badge", "unlocks", "median", "p90"),
    "pipeline": ("measure", "value"),
    "rule_health": ("badge", "problem"),
}
SORTS = ("percent", "-percent", "badge", "-badge", "holders", "-holders")


@require_GET
def reports_view(request: HttpRequest) -> HttpResponse:
    if not request.user.has_perm("achievements.view_reports"):
        raise PermissionDenied
    filters, errors = reports.parse_filters(request.GET)
    sort = request.GET.get("sort", "-percent")
    if sort not in SORTS:
        errors["sort"] = f"Sort by one of {', '.join(SORTS)}."
        sort = "-percent"
    export = request.GET.get("export", "")
    if export and export not in EXPORTS:
        errors["export"] = f"Export one of {', '.join(EXPORTS)}."
        export = ""
    activity = rollups.activity(filters.start, filters.end)
    tables: dict[str, list[dict[str, Any]]] = {
        "unlocks": reports.unlocks_over_time(filters),
        "rarity": reports.rarity(filters, sort=sort, active=activity.active_users),
        "near_misses": reports.near_misses(filters),
        "funnel": reports.tier_funnel(filters),
        "time_to_unlock": reports.time_to_unlock(filters),
        "pipeline": reports.pipeline_health(filters, activity=activity),
        "rule_health": reports.rule_health(filters),
    }
    if export and not errors:
        return _csv(export, tables[export], filters)
    context = {
        **admin.site.each_context(request),
        "title": "Achievement reports",
        "filters": filters,
        "errors": errors,
        "sort": sort,
        "badges": Badge.objects.order_by("name"),
        "chart": reports.chart(tables["unlocks"], unit=filters.unit),
        "active_users": activity.active_users,
        **tables,
    }
    response = TemplateResponse(request, "admin/achievements/reports.html", context)
    if errors:
        response.status_code = 400
    return response


def _csv(name: str, rows: list[dict[str, Any]], filters: reports.Filters) -> HttpResponse:
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    filename = f"accolade-{name}-{filters.start}-{filters.end}.csv"
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    writer = csv.writer(response)
    columns = EXPORTS[name]
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row[column]) for column in columns])
    return response


def _cell(value: Any) -> str:
    """The text of a CSV cell, with a leading quote if a spreadsheet would run it.

    OWASP's CSV injection guidance: a cell starting with =, +, -, @, TAB or
    CR can start a formula (LF too, in some), and so can one of the first
    four after leading whitespace, which a spreadsheet may trim on import.
    A number stays a number.
    """
    text = str(value)
    if _is_number(text):
        return text
    if text.startswith(("\t", "\r", "\n")) or text.lstrip().startswith(("=", "+", "-", "@")):
        return "'" + text
    return text


def _is_number(text: str) -> bool:
    if text != text.strip():  # float() would skip the whitespace a spreadsheet may not
        return False
    try:
        float(text)
    except ValueError:
        return False
    return True
