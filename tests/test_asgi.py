"""project.asgi: Django's own ASGI handler by default, the one-hop one when chosen."""

from __future__ import annotations

from typing import Any

from django.core.handlers.asgi import ASGIHandler

import project.asgi
from project.handlers import HttpHandlers
from tests.http_exchange import exchange, http_scope


async def _status(application: Any, method: str, path: str, body: bytes = b"") -> int:
    scope = http_scope(path, method=method, json_body=True)
    return int((await exchange(application, scope, body))[0]["status"])


def test_http_goes_to_djangos_own_handler_by_default(settings):
    assert settings.WEB_HTTP_HANDLER == "django"
    assert type(project.asgi.django_asgi_app) is ASGIHandler


def test_the_one_hop_handler_is_there_when_chosen(settings):
    settings.WEB_HTTP_HANDLER = "one-hop"
    assert isinstance(project.asgi.http_application(), HttpHandlers)
    settings.WEB_HTTP_HANDLER = "django"
    assert type(project.asgi.http_application()) is ASGIHandler


async def test_the_api_works_through_djangos_handler_and_the_sites_middleware():
    """Under Django's handler the API runs through settings.MIDDLEWARE, CSRF
    included: a key-less POST is refused for its key, not for a CSRF token."""
    application = project.asgi.application
    assert await _status(application, "POST", "/api/v1/events", b"{}") == 401
    assert await _status(application, "GET", "/api/v1/events") == 405
