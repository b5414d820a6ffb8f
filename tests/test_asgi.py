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


async def _client_seen(scope_client: tuple[str, int], headers: list[tuple[bytes, bytes]]) -> Any:
    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.update(client=scope["client"], scheme=scope["scheme"])

    scope = {**http_scope("/"), "client": scope_client, "headers": headers}
    await project.asgi.behind_trusted_proxies(app)(scope, None, None)
    return seen


FORWARDED = [(b"x-forwarded-for", b"10.9.1.1, 203.0.113.5"), (b"x-forwarded-proto", b"https")]


async def test_with_no_trusted_proxy_forwarding_headers_are_ignored(settings):
    settings.TRUSTED_PROXIES = []
    seen = await _client_seen(("127.0.0.1", 5000), FORWARDED)
    assert seen == {"client": ("127.0.0.1", 5000), "scheme": "http"}


async def test_a_trusted_proxy_gives_the_last_address_it_did_not_add_itself(settings):
    settings.TRUSTED_PROXIES = ["127.0.0.1", "203.0.113.0/24"]
    seen = await _client_seen(("127.0.0.1", 5000), FORWARDED)
    # 203.0.113.5 is a trusted proxy too; what the client wrote (10.9.1.1) is
    # believed only because every hop after it is trusted.
    assert seen["client"][0] == "10.9.1.1" and seen["scheme"] == "https"
    settings.TRUSTED_PROXIES = ["127.0.0.1"]
    seen = await _client_seen(("127.0.0.1", 5000), FORWARDED)
    assert seen["client"][0] == "203.0.113.5"


async def test_an_untrusted_peer_cannot_forward_for_anyone(settings):
    settings.TRUSTED_PROXIES = ["10.0.0.0/8"]
    seen = await _client_seen(("192.0.2.9", 5000), FORWARDED)
    assert seen == {"client": ("192.0.2.9", 5000), "scheme": "http"}
