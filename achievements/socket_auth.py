"""Who a WebSocket belongs to, from its session cookie, kept small per socket."""

from __future__ import annotations

from importlib import import_module
from types import SimpleNamespace
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib import auth
from django.http import parse_cookie


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
    `session`, no `cookies`.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        cookies: dict[str, str] = {}
        for name, value in scope.get("headers", ()):
            if name == b"cookie":
                cookies.update(parse_cookie(value.decode("latin-1")))
        user = await _user_of(cookies.get(settings.SESSION_COOKIE_NAME))
        return await self.inner(dict(scope, user=user), receive, send)


@database_sync_to_async
def _user_of(session_key: str | None) -> Any:
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
