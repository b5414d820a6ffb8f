"""Who django-axes counts failed log-ins against, and what a locked-out client sees.

Failures are counted per account from any address and per address across
accounts, so neither many addresses against one account nor one address
against many accounts gets far. Counting per account lets anyone lock an
account by failing on purpose; so a browser the account has logged in from
before carries a signed cookie saying so (OWASP's "device cookies"), and
from such a browser only the failures for that account from the browser's
own address count. A guesser elsewhere can keep an account locked for new
browsers, but not for the one its owner uses. The cookie is bound to the
account's password: changing it makes every such cookie count for nothing.

A successful log-in clears that account's failures from that address only
(not axes' own reset, which would clear every failure from the address:
logging in to one's own account would wipe a guesser's count).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime
from typing import Any

from axes.helpers import get_cool_off
from axes.models import AccessAttempt
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core import signing
from django.db.models import Max, Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.utils.crypto import constant_time_compare, salted_hmac

KNOWN_BROWSER_COOKIE = "accolade_known"
_SALT = "accounts.lockout.known-browser"
# Accounts one browser is remembered for (a shared family computer, say).
KNOWN_ACCOUNTS_MAX = 5


def lockout_parameters(request: Any, credentials: dict[str, Any] | None) -> list[Any]:
    """django-axes' AXES_LOCKOUT_PARAMETERS, per attempt.

    Called with the request (when counting or checking) or with a stored
    attempt, which counts like an unknown browser.
    """
    username = (credentials or {}).get("username")
    if isinstance(request, HttpRequest) and username and _knows(request, username):
        return [["username", "ip_address"]]
    return ["username", "ip_address"]


def _knows(request: HttpRequest, username: str) -> bool:
    """Whether this browser's cookie vouches for `username`, as its password is now."""
    cached: dict[str, bool] = request.__dict__.setdefault("_accolade_known", {})
    if username not in cached:
        tag = dict(_cookie_entries(request)).get(username)
        user = None
        if tag is not None:
            model = get_user_model()
            user = model._default_manager.filter(**{model.USERNAME_FIELD: username}).first()
        cached[username] = (
            tag is not None and user is not None and constant_time_compare(tag, _tag(user))
        )
    return cached[username]


def _tag(user: Any) -> str:
    """Ties a cookie entry to the account's password (its session auth hash)."""
    return salted_hmac(_SALT, user.get_session_auth_hash()).hexdigest()[:24]


def _cookie_entries(request: HttpRequest) -> list[tuple[str, str]]:
    """(username, tag) pairs this browser's genuine cookie holds, newest first."""
    value = request.COOKIES.get(KNOWN_BROWSER_COOKIE)
    if not value:
        return []
    try:
        entries = signing.loads(
            value, salt=_SALT, max_age=settings.LOGIN_KNOWN_BROWSER_DAYS * 86400
        )
    except (signing.BadSignature, ValueError):
        return []
    if not isinstance(entries, list):
        return []
    pairs = [
        (entry[0], entry[1])
        for entry in entries
        if isinstance(entry, list) and len(entry) == 2 and all(isinstance(x, str) for x in entry)
    ]
    return pairs[:KNOWN_ACCOUNTS_MAX]


class KnownBrowserMiddleware:
    """Sets the known-browser cookie on the response of a successful log-in."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        user = getattr(request, "_accolade_known_account", None)
        if user is not None:
            username = user.get_username()
            entries = [[username, _tag(user)]] + [
                [name, tag] for name, tag in _cookie_entries(request) if name != username
            ]
            response.set_cookie(
                KNOWN_BROWSER_COOKIE,
                signing.dumps(entries[:KNOWN_ACCOUNTS_MAX], salt=_SALT, compress=True),
                max_age=settings.LOGIN_KNOWN_BROWSER_DAYS * 86400,
                secure=settings.SESSION_COOKIE_SECURE,
                httponly=True,
                samesite="Lax",
            )
        return response


def on_logged_in(sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    """Signal receiver (user_logged_in): clear this account's failures from this
    address, and have the response remember the browser for this account."""
    if request is None:
        return
    address = getattr(request, "axes_ip_address", None) or request.META.get("REMOTE_ADDR")
    AccessAttempt.objects.filter(username=user.get_username(), ip_address=address).delete()
    request._accolade_known_account = user  # type: ignore[attr-defined]


def locked_out(
    request: HttpRequest, original_response: HttpResponse | None, credentials: dict[str, Any]
) -> HttpResponse:
    """django-axes' AXES_LOCKOUT_CALLABLE: the page a refused log-in gets, 429 with Retry-After."""
    wait = retry_after(request, credentials)
    minutes = max(1, math.ceil(wait / 60))
    response = render(
        request, "accounts/locked_out.html", {"minutes": minutes, "wait": wait}, status=429
    )
    response["Retry-After"] = str(wait)
    return response


def retry_after(request: HttpRequest, credentials: dict[str, Any] | None) -> int:
    """Seconds until the failures that lock this attempt out have aged past the cool-off."""
    cool_off = get_cool_off(request)
    assert cool_off is not None  # AXES_COOLOFF_TIME is set
    username = (credentials or {}).get("username")
    address = getattr(request, "axes_ip_address", None)
    match = Q()
    for parameter in lockout_parameters(request, credentials):
        names = [parameter] if isinstance(parameter, str) else parameter
        values = {"username": username, "ip_address": address}
        match |= Q(**{name: values[name] for name in names})
    latest: datetime | None = AccessAttempt.objects.filter(match).aggregate(
        latest=Max("attempt_time")
    )["latest"]
    if latest is None:
        return int(cool_off.total_seconds())
    return max(1, math.ceil((latest + cool_off - timezone.now()).total_seconds()))
