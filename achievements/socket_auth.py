"""Who a WebSocket belongs to, from its session cookie, kept small per socket."""

from __future__ import annotations

from importlib import import_module
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlparse

from channels.db import database_sync_to_async
from channels.security.websocket import OriginValidator, WebsocketDenier
from django.conf import settings
from django.contrib import auth
from django.http import parse_cookie
from django.http.request import split_domain_port, validate_host


class SessionUserMiddleware:
    """Puts the session's signed-in user (or AnonymousUser) in `scope["user"]`.

    It gives consumers what channels' AuthMiddlewareStack gives them, read
    by Django's own `auth.get_user` (backend check, session hash, secret key
    fallbacks; the session is not written, see _SessionView), but keeps only
    the user for the socket's lifetime. The stack
    kept, per open socket, a cookie dict, a session store with its data, a
    lazy wrapper for each, a wrapper around `send` and three more copies of
    the scope, none of which a socket needs after its handshake. The
    consumers here read nothing else, so nothing else is passed on: no
    `session`, no `cookies`; only the session key, a string.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        cookies: dict[str, str] = {}
        for name, value in scope.get("headers", ()):
            if name == b"cookie":
                cookies.update(parse_cookie(value.decode("latin-1")))
        session_key = cookies.get(settings.SESSION_COOKIE_NAME)
        user = await user_of(session_key)
        # The key stays, so the socket can check its session again later
        # (achievements.socket_sessions); nothing else of the session does.
        return await self.inner(dict(scope, user=user, session_key=session_key), receive, send)


@database_sync_to_async
def user_of(session_key: str | None) -> Any:
    """The session's signed-in user, checked as a page load would, or AnonymousUser."""
    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    # auth.get_user reads only `request.session`.
    return auth.get_user(SimpleNamespace(session=_SessionView(store)))  # type: ignore[arg-type]


class _SessionView:
    """The session as auth.get_user uses it, minus its writes.

    A socket cannot send a cookie back. Where get_user would cycle the key
    (a session hash that only a fallback secret key verifies) the browser
    would keep the old, deleted key and be signed out; where it would flush
    (a hash nothing verifies) the socket is anonymous anyway. Either way the
    next page load does it, with a response to carry the cookie.
    """

    def __init__(self, store: Any) -> None:
        self._store = store

    def __getitem__(self, key: str) -> Any:
        return self._store[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self._store.get(key, default)

    def __setitem__(self, key: str, value: Any) -> None:
        pass

    def cycle_key(self) -> None:
        pass

    def flush(self) -> None:
        pass


class SameOriginValidator:
    """Lets a socket through only from a page of this site, as Django's CSRF check would.

    The Origin header must name this very site, scheme, host and port: the
    scheme the socket came in on (wss is https; X-Forwarded-Proto counts as
    SECURE_PROXY_SSL_HEADER says), the Host it asked for (which must be in
    ALLOWED_HOSTS), and that host's port; or match CSRF_TRUSTED_ORIGINS
    (`https://*.example.com` for subdomains). Anything else is refused at the
    handshake. (Channels' AllowedHostsOriginValidator, used before, checked
    the origin's host against ALLOWED_HOSTS only, so a page on another port
    or over plain HTTP of an allowed host was let in.)
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self._matcher = OriginValidator(inner, [])

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if self.allowed(scope):
            return await self.inner(scope, receive, send)
        return await WebsocketDenier()(scope, receive, send)

    def allowed(self, scope: dict[str, Any]) -> bool:
        headers: dict[bytes, bytes] = {}
        for name, value in scope.get("headers", ()):
            headers.setdefault(name, value)
        try:
            origin = urlparse(headers[b"origin"].decode("latin-1"))
            host = headers[b"host"].decode("latin-1")
        except (KeyError, UnicodeDecodeError, ValueError):
            return False
        domain, _ = split_domain_port(host)
        if not domain or not validate_host(domain, settings.ALLOWED_HOSTS):
            return False
        patterns = [f"{_page_scheme(scope, headers)}://{host}"] + [
            trusted.replace("://*.", "://.", 1) for trusted in settings.CSRF_TRUSTED_ORIGINS
        ]
        try:
            return any(self._matcher.match_allowed_origin(origin, p) for p in patterns)
        except ValueError:  # a port out of range, say
            return False


def _page_scheme(scope: dict[str, Any], headers: dict[bytes, bytes]) -> str:
    """The scheme of the site's pages for this socket: https if it came in over TLS."""
    if scope.get("scheme") in ("wss", "https"):
        return "https"
    proxy_header = settings.SECURE_PROXY_SSL_HEADER
    if proxy_header:
        name, secure_value = proxy_header
        header = name.removeprefix("HTTP_").lower().replace("_", "-").encode()
        forwarded = headers.get(header, b"").decode("latin-1").split(",")[0].strip()
        if forwarded == secure_value:
            return "https"
    return "http"
