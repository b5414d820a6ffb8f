"""project.asgi: Django's own ASGI handler by default, the one-hop one when chosen."""

from __future__ import annotations

from typing import Any

from asgiref.testing import ApplicationCommunicator
from django.core.handlers.asgi import ASGIHandler

import project.asgi
from project.handlers import HttpHandlers


def _scope(method: str, path: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), (b"content-type", b"application/json")],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }


async def _status(application: Any, method: str, path: str, body: bytes = b"") -> int:
    communicator = ApplicationCommunicator(application, _scope(method, path))
    await communicator.send_input({"type": "http.request", "body": body})
    start = await communicator.receive_output(timeout=10)
    while True:  # the body, to its end
        message = await communicator.receive_output(timeout=10)
        if not message.get("more_body"):
            break
    await communicator.wait(timeout=10)
    return int(start["status"])


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
