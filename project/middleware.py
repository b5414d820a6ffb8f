from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest

from project.inputs import text_problem

# Scripts only from our own origin: the vendored htmx, its ws extension and
# accolade.js. No inline script or eval anywhere (htmx is configured with
# allowEval off), so staff text that slipped past escaping still could not run.
SITE_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "font-src 'self'",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
# Django's admin sets a few inline style attributes of its own; scripts stay strict.
ADMIN_POLICY = SITE_POLICY.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")


class ContentSecurityPolicyMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if "Content-Security-Policy" not in response:
            admin = request.path.startswith("/admin/")
            response["Content-Security-Policy"] = ADMIN_POLICY if admin else SITE_POLICY
        return response


class RefuseNulCharactersMiddleware:
    """A 400 naming the query string parameter that holds a NUL character.

    PostgreSQL refuses text with one, so such a value fails as a 500 wherever
    it reaches a query: the admin passes any lookup on a model's own fields
    (?name=%00) and every list filter's value straight to the queryset, in
    Django's admin classes as in ours. No page has a use for one. Requests
    under settings.API_PREFIX pass: the API reads no query string, and checks
    the path parameters it reads itself, answering in its own error format.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        problem = _query_string_problem(request)
        if problem:
            return HttpResponseBadRequest(problem + "\n", content_type="text/plain; charset=utf-8")
        return self.get_response(request)


def _query_string_problem(request: HttpRequest) -> str | None:
    query_string = request.META.get("QUERY_STRING", "")
    if "%00" not in query_string and "\x00" not in query_string:
        return None  # as nearly every request goes, without parsing the query string
    if request.path.startswith(settings.API_PREFIX):
        return None
    for name, values in request.GET.lists():
        for value in (name, *values):
            problem = text_problem(value)
            if problem:
                shown = name.replace("\x00", "\\x00")  # a name can hold one too
                return f"{shown}: {problem}"
    return None
