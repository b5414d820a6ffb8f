"""Every staff page, as a superuser, with hostile query strings and ids: never a 500.

The pages come from the URL resolver, and each changelist's parameters from
its ModelAdmin's filters and date drill-down, so a page or filter added
later is walked too. Left out: the API (tests/api call it with a key) and
the admin pages of models that are not the project's (Django's users and
groups, django-celery-results' task results), which are their authors'.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Iterator
from datetime import date
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

import pytest
from django.conf import settings
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import transaction
from django.forms import JSONField
from django.test import Client, RequestFactory
from django.urls import URLPattern, URLResolver, get_resolver

from accounts.models import Profile
from achievements import reports
from achievements.events import record_event
from achievements.models import Badge, DedupRule, Event, Reevaluation
from achievements.report_views import EXPORTS
from api.models import ApiKey
from examples.places.models import Place, Visit
from feed.models import File as FeedFile
from ingest.models import ConsumerState, Rejected
from project.forms import StorableJSONField
from webhooks.models import Attempt, Delivery, Endpoint, Message

PROJECT_APPS = {"achievements", "accounts", "api", "places", "webhooks", "ingest", "feed"}
# Values no page should choke on: NUL characters (PostgreSQL refuses them in
# text), lengths no column holds, more digits than int() reads, dates and
# years at the ends of Python's calendar, numbers no column holds, ids that
# are not numbers, other junk.
HOSTILE_VALUES = [
    "\x00",
    "x" * 5_000,
    "9" * 5_000,
    "0001-01-01",
    "9999-12-31",
    "9999",
    "0",
    "-1",
    "-99999999999999999999",
    "99999999999999999999",
    "1e309",
    "abc",
    "__proto__",
    "[]",
    "' OR 1=1 --",
    "²",
    "\u202e\U0001f600ſ",
]
HOSTILE_IDS = ["\x00", "-1", "0", "99999999999999999999", "abc", "__proto__", "x" * 3_000]
# Parameters the admin's pages read on any page, beyond a page's own.
ADMIN_PARAMETERS = [
    "q",
    "o",
    "p",
    "e",
    "all",
    "_popup",
    "_to_field",
    "_changelist_filters",
    "next",
    "term",
    "app_label",
    "model_name",
    "field_name",
]
# Parameters that are only hostile together.
HOSTILE_QUERIES = [
    "start=0001-01-01&end=9999-12-31",
    "start=0001-01-01&end=0001-01-01",
    "start=9999-12-31&end=9999-12-31",
    "start=2000-01-01&end=2000-01-01&unit=week",
    "start=2999-12-30&end=2999-12-31&unit=week",
    "since=0001-01-01&until=9999-12-31",
]


@pytest.fixture
def superuser_client(db) -> Client:
    user = get_user_model().objects.create_superuser("root", "root@example.com", "pw-for-tests")
    client = Client(raise_request_exception=False)
    client.force_login(user)
    return client


@pytest.fixture
def staff_data(db, django_capture_on_commit_callbacks):
    """A row of each model the admin lists, so change pages and filters have one."""
    call_command("seed_demo", quiet_logins=True)
    alice = get_user_model().objects.get(username="alice")
    Profile.objects.get_or_create(user=alice)
    with django_capture_on_commit_callbacks(execute=True):
        for place in Place.objects.all()[:5]:
            visit = Visit.objects.create(user=alice, place=place)
            record_event(
                alice, "visit.created", payload={"place_id": place.pk}, event_id=f"v-{visit.pk}"
            )
    record_event(alice, "image.posted", payload={"image_id": 1}, event_id="waiting")
    DedupRule.objects.create(event_type="image.posted", payload_key="image_id", window_seconds=60)
    ApiKey.issue("walker")
    job = Reevaluation.objects.create(state=Reevaluation.State.DONE)
    job.badges.set(Badge.objects.all())
    endpoint = Endpoint.objects.create(
        url="https://hooks.example.com/in", kinds=["badge.unlocked"]
    )
    message = Message.objects.create(id="msg_walk", kind="badge.unlocked", payload={"x": 1})
    delivery = Delivery.objects.create(message=message, endpoint=endpoint)
    Attempt.objects.create(delivery=delivery, endpoint=endpoint, status_code=500, error="no")
    Rejected.objects.create(
        stream="S", sequence=1, subject="accolade.events.x", field="body", problem="p", data="{"
    )
    ConsumerState.objects.create(name="accolade-ingest", stream="S", filter_subject="a.>")
    FeedFile.objects.create(
        name="v1/date=2026-12-08/part-00000001.ndjson.gz", day="2026-12-08", records=3
    )


# ?since=0001-01-01 on the re-evaluations list filters a DateTimeField with a date.
@pytest.mark.filterwarnings("ignore:DateTimeField .* received a naive datetime")
def test_no_staff_page_answers_a_hostile_query_string_or_id_with_a_500(
    superuser_client, staff_data, caplog
):
    # The walk makes thousands of 4xx; only a 500's log is worth reading.
    caplog.set_level(logging.ERROR, logger="django.request")
    caplog.set_level(logging.CRITICAL, logger="django.security")
    failures, walked = [], set()
    for path, query in _requests():
        response = _get(superuser_client, f"{path}?{query}" if query else path)
        walked.add(path)
        if response.status_code >= 500:
            exc = getattr(response, "exc_info", None)
            reason = f"{exc[0].__name__}: {exc[1]}"[:200] if exc else response.status_code
            failures.append(f"{path}?{query[:150]} -> {reason}")
    assert {"/admin/reports/", "/metrics", "/admin/achievements/badge/reevaluate/"} <= walked
    assert len(walked) > 100, sorted(walked)
    assert not failures, f"{len(failures)} request(s) answered 5xx:\n" + "\n".join(failures)


def test_the_walk_sends_hostile_values_to_each_changelists_own_filters(staff_data):
    names = _own_parameters(admin.site._registry[Event], "/admin/achievements/event/")
    assert {"status", "event_type", "source", "received_at__year"} <= set(names)
    assert {"start", "end", "badge", "unit", "quiet", "sort", "export"} <= set(_REPORT_PARAMETERS)


class _Failed(Exception):
    pass


def _get(client: Client, url: str) -> Any:
    """The response, in a savepoint rolled back if it failed: on PostgreSQL a
    failed statement aborts the test's transaction, and the walk goes on."""
    try:
        with transaction.atomic():
            response = client.get(url)
            if response.status_code >= 500:
                raise _Failed(response)
    except _Failed as failed:
        response = failed.args[0]
    return response


# The reports' filters, as the page writes them into its own links.
_REPORT_PARAMETERS = list(
    parse_qs(
        reports.Filters(date.today(), date.today(), None, "day").query(
            badge="", sort="", export=""
        ),
        keep_blank_values=True,
    )
)


def _requests() -> Iterator[tuple[str, str]]:
    """Each page's path with each hostile id in it; then, on its real path, each
    hostile value in every parameter at once, a NUL in each parameter alone,
    and each hostile value in each of the page's own parameters alone (a page
    may stop at the first bad one, so together they would hide the rest)."""
    for route, pattern in _routes(get_resolver().url_patterns):
        model_admin = _model_admin(pattern)
        if _left_out(route, model_admin):
            continue
        path = _fill(route, _real_id(model_admin))
        if "<" in route:
            for value in HOSTILE_IDS:
                yield _fill(route, quote(value, safe="")), ""
        own = _own_parameters(model_admin, path)
        bases = [""]
        if pattern.name == "reports":
            own = _REPORT_PARAMETERS
            bases += [f"export={name}" for name in EXPORTS]
        elif pattern.name == "achievements_badge_reevaluate":
            own = ["ids"]
        everything = [*ADMIN_PARAMETERS, *own]
        for base in bases:
            yield path, base
            for value in HOSTILE_VALUES:
                yield path, _join(base, urlencode(dict.fromkeys(everything, value)))
            for name in everything:
                yield path, _join(base, urlencode({name: "\x00"}))
            if own:
                for query in HOSTILE_QUERIES:
                    yield path, _join(base, query)
            if not base:
                for name in own:
                    for value in HOSTILE_VALUES:
                        yield path, urlencode({name: value})


def _routes(patterns: list[Any], prefix: str = "") -> Iterator[tuple[str, URLPattern]]:
    for entry in patterns:
        if isinstance(entry, URLResolver):
            yield from _routes(entry.url_patterns, prefix + str(entry.pattern))
        else:
            yield prefix + str(entry.pattern), entry


def _left_out(route: str, model_admin: admin.ModelAdmin | None) -> bool:
    if route.startswith(settings.API_PREFIX.strip("/")) or "media/" in route:
        return True
    return model_admin is not None and model_admin.model._meta.app_label not in PROJECT_APPS


def _fill(route: str, object_id: str) -> str:
    """A path for `route`: its converters and groups filled in, regex anchors dropped."""
    path = re.sub(r"<(?:\w+:)?\w+>", lambda _: object_id, route)
    path = re.sub(r"\(\?P<app_label>[^)]*\)", "achievements", path)
    path = re.sub(r"\(\?P<\w+>[^)]*\)", "no-such-page/", path)
    return "/" + path.replace("^", "").replace("$", "")


def _model_admin(pattern: URLPattern) -> admin.ModelAdmin | None:
    """The ModelAdmin behind an admin page: Django's own views name it, ours are
    its bound methods behind admin_view."""
    found = getattr(pattern.callback, "model_admin", None) or getattr(
        inspect.unwrap(pattern.callback), "__self__", None
    )
    return found if isinstance(found, admin.ModelAdmin) else None


def _real_id(model_admin: admin.ModelAdmin | None) -> str:
    first = model_admin.model._default_manager.order_by("pk").first() if model_admin else None
    return quote(str(first.pk), safe="") if first else "1"


def _own_parameters(model_admin: admin.ModelAdmin | None, path: str) -> list[str]:
    """The query string parameters of a changelist's filters and date drill-down."""
    if model_admin is None:
        return []
    opts = model_admin.model._meta
    if not path.endswith(f"/{opts.app_label}/{opts.model_name}/"):
        return []
    request = RequestFactory().get(path)
    request.user = get_user_model().objects.get(username="admin")  # seed_demo's superuser
    changelist = model_admin.get_changelist_instance(request)
    names = [name for spec in changelist.filter_specs for name in spec.expected_parameters()]
    if model_admin.date_hierarchy:
        names += [f"{model_admin.date_hierarchy}__{part}" for part in ("year", "month", "day")]
    return [name for name in names if name]


def _join(base: str, query: str) -> str:
    return f"{base}&{query}" if base else query


def test_every_json_field_of_a_staff_form_refuses_what_would_fail_later(superuser_client):
    """Checked on the forms rather than walked: a new admin's JSON field without
    the shared form field would take a RecursionError or an unstorable value."""
    request = RequestFactory().get("/")
    request.user = get_user_model().objects.get(username="root")
    checked = []
    for model, model_admin in admin.site._registry.items():
        if model._meta.app_label not in PROJECT_APPS or not _serves_a_form(model_admin, request):
            continue
        forms = [(model, model_admin.get_form(request).base_fields)]
        forms += [
            (inline.model, inline.get_formset(request).form.base_fields)
            for inline in model_admin.get_inline_instances(request)
        ]
        for form_model, fields in forms:
            for name, field in fields.items():
                if isinstance(field, JSONField):
                    checked.append(f"{form_model._meta.label}.{name}")
                    assert isinstance(field, StorableJSONField), checked[-1]
    assert set(checked) == {
        "achievements.Badge.tiers",
        "achievements.BadgeRequirement.filters",
        "achievements.BadgeRequirement.steps",
        "achievements.EventType.fields",
        "accounts.Profile.attributes",
        "accounts.Profile.muted_categories",
        "achievements.BadgeTranslation.tier_names",
        "achievements.BadgeTranslation.labels",
    }


def _serves_a_form(model_admin: admin.ModelAdmin, request: Any) -> bool:
    """Whether the admin shows its model form: the re-evaluations' own page replaces it."""
    replaced = type(model_admin).change_view is not admin.ModelAdmin.change_view
    return model_admin.has_add_permission(request) or not replaced
