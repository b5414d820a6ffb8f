"""Who django-axes counts failed log-ins against, and what a locked-out client sees.

Failures are counted per account from any address and per address across
accounts, so neither many addresses against one account nor one address
against many accounts gets far. Counting per account lets anyone lock an
account by failing on purpose; so a browser the account has logged in from
before carries a signed cookie saying so (OWASP's "device cookies"), and
from such a browser only that browser's own address's failures for that
account count. A guesser elsewhere can keep an account locked for new
browsers, but not for the one its owner uses.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime
from typing import Any

from axes.helpers import get_cool_off
from axes.models import AccessAttempt
from django.conf import settings
from django.core import signing
from django.db.models import Max, Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

KNOWN_BROWSER_COOKIE = "accolade_known"
_SALT = "accounts.lockout.known-browser"
# Accounts one browser is remembered for (a shared family computer, say).
KNOWN_ACCOUNTS_MAX = 5


def lockout_parameters(request: Any, credentials: dict[str, Any] | None) -> list[Any]:
    """django-axes' AXES_LOCKOUT_PARAMETERS, per attempt.

    Called with the request (when counting or checking) or with a stored
    attempt (when resetting), which counts like an unknown browser.
    """
    username = (credentials or {}).get("username")
    if isinstance(request, HttpRequest) and username and username in known_accounts(request):
        return [["username", "ip_address"]]
    return ["username", "ip_address"]


def known_accounts(request: HttpRequest) -> list[str]:
    """The usernames this browser has logged in as (newest first), if its cookie is genuine."""
    value = request.COOKIES.get(KNOWN_BROWSER_COOKIE)
    if not value:
        return []
    try:
        names = signing.loads(value, salt=_SALT, max_age=settings.LOGIN_KNOWN_BROWSER_DAYS * 86400)
    except (signing.BadSignature, ValueError):
        return []
    if not isinstance(names, list):
        return []
    return [name for name in names if isinstance(name, str)][:KNOWN_ACCOUNTS_MAX]


class KnownBrowserMiddleware:
    """Sets the known-browser cookie on the response of a successful log-in."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        username = getattr(request, "_accolade_known_account", None)
        if username:
            names = [username] + [n for n in known_accounts(request) if n != username]
            response.set_cookie(
                KNOWN_BROWSER_COOKIE,
                signing.dumps(names[:KNOWN_ACCOUNTS_MAX], salt=_SALT, compress=True),
                max_age=settings.LOGIN_KNOWN_BROWSER_DAYS * 86400,
                secure=settings.SESSION_COOKIE_SECURE,
                httponly=True,
                samesite="Lax",
            )
        return response


def on_logged_in(sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    """Signal receiver (user_logged_in): the response remembers the browser for this account."""
    if request is not None:
        request._accolade_known_account = user.get_username()  # type: ignore[attr-defined]


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
