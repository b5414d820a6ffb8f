"""Log-in lock-outs (django-axes, accounts.lockout): per account, per address, and a
browser the account knows is not locked out by failures elsewhere."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from axes.models import AccessAttempt
from django.core import signing
from django.test import Client

from accounts.lockout import KNOWN_BROWSER_COOKIE
from tests.factories import PASSWORD

LIMIT = 10


@pytest.fixture(autouse=True)
def limit(settings):
    settings.AXES_FAILURE_LIMIT = LIMIT


def client_at(address: str) -> Client:
    return Client(REMOTE_ADDR=address)


def log_in(client: Client, username: str, password: str, **extra: Any):
    return client.post("/accounts/login/", {"username": username, "password": password}, **extra)


def fail(client: Client, username: str, times: int, **extra: Any) -> list[int]:
    return [log_in(client, username, "wrong", **extra).status_code for _ in range(times)]


def test_failures_up_to_the_limit_then_even_the_right_password_gets_429(owner):
    client = client_at("192.0.2.1")
    assert fail(client, "owner", LIMIT - 1) == [200] * (LIMIT - 1)
    last = log_in(client, "owner", "wrong")
    assert last.status_code == 429
    response = log_in(client, "owner", PASSWORD)
    assert response.status_code == 429
    assert 0 < int(response["Retry-After"]) <= 15 * 60
    assert "Too many failed log-in attempts" in response.content.decode()
    assert client.get("/badges/").status_code == 302  # not signed in


def test_one_account_is_locked_whatever_address_the_guesses_come_from(owner):
    for n in range(LIMIT):
        log_in(client_at(f"198.51.100.{n + 1}"), "owner", "wrong")
    assert log_in(client_at("203.0.113.7"), "owner", PASSWORD).status_code == 429


def test_one_address_is_locked_whatever_accounts_it_tries(owner, second_user):
    client = client_at("192.0.2.2")
    for n in range(LIMIT):
        log_in(client, f"nobody-{n}", "wrong")
    assert log_in(client, "second", PASSWORD).status_code == 429
    # The accounts themselves are not locked for anyone else.
    assert log_in(client_at("192.0.2.3"), "second", PASSWORD).status_code == 302


def test_axes_counts_the_connections_address_not_a_forwarding_header(owner):
    """What axes reads; the proxy headers themselves are tested against Daphne
    (tests/integration/test_security_live.py) and project.asgi (tests/test_asgi.py)."""
    client = client_at("192.0.2.4")
    for n in range(LIMIT):
        log_in(client, f"nobody-{n}", "wrong", HTTP_X_FORWARDED_FOR=f"10.9.{n}.1, 127.0.0.1")
    assert set(AccessAttempt.objects.values_list("ip_address", flat=True)) == {"192.0.2.4"}
    assert log_in(client, "owner", PASSWORD).status_code == 429


def test_a_browser_the_account_knows_is_not_locked_out_by_guesses_elsewhere(owner):
    own = client_at("192.0.2.5")
    assert log_in(own, "owner", PASSWORD).status_code == 302
    assert KNOWN_BROWSER_COOKIE in own.cookies
    own.post("/accounts/logout/")
    for n in range(LIMIT * 2):
        log_in(client_at(f"198.51.100.{n + 1}"), "owner", "wrong")
    # A new browser is refused; the owner's own browser still gets in.
    assert log_in(client_at("192.0.2.5"), "owner", PASSWORD).status_code == 429
    assert log_in(own, "owner", PASSWORD).status_code == 302


def test_a_known_browser_still_has_its_own_limit(owner):
    own = client_at("192.0.2.6")
    log_in(own, "owner", PASSWORD)
    own.post("/accounts/logout/")
    assert fail(own, "owner", LIMIT)[-1] == 429
    assert log_in(own, "owner", PASSWORD).status_code == 429


@pytest.mark.parametrize(
    "forged",
    [
        "owner",
        signing.dumps([["owner", "0" * 24]], salt="accounts.lockout.known-browser"),
        signing.dumps([["owner", "x"]], salt="another-salt"),
    ],
    ids=["unsigned", "wrong-tag", "wrong-salt"],
)
def test_a_forged_known_browser_cookie_counts_for_nothing(owner, forged):
    for n in range(LIMIT):
        log_in(client_at(f"198.51.100.{n + 1}"), "owner", "wrong")
    forger = client_at("192.0.2.7")
    forger.cookies[KNOWN_BROWSER_COOKIE] = forged
    assert log_in(forger, "owner", PASSWORD).status_code == 429


def test_a_password_change_makes_known_browser_cookies_count_for_nothing(owner):
    own = client_at("192.0.2.11")
    log_in(own, "owner", PASSWORD)
    own.post("/accounts/logout/")
    owner.set_password("a different passphrase 7")
    owner.save()
    for n in range(LIMIT):
        log_in(client_at(f"198.51.100.{n + 1}"), "owner", "wrong")
    assert log_in(own, "owner", "a different passphrase 7").status_code == 429


def test_logging_in_to_ones_own_account_does_not_wipe_a_guessers_count(owner, second_user):
    """With axes' own reset, a success cleared every failure from the address."""
    guesser = client_at("192.0.2.12")
    for _ in range(3):
        fail(guesser, "owner", LIMIT - 1)
        log_in(guesser, "second", PASSWORD)  # the guesser's own account
        guesser.post("/accounts/logout/")
        guesser.cookies.pop(KNOWN_BROWSER_COOKIE, None)
    assert log_in(client_at("192.0.2.13"), "owner", PASSWORD).status_code == 429


def test_a_lock_out_ends_after_the_cool_off_and_refused_attempts_do_not_extend_it(owner):
    client = client_at("192.0.2.8")
    fail(client, "owner", LIMIT)
    counted = AccessAttempt.objects.get().failures_since_start
    # Attempts while locked out are refused without being counted.
    assert fail(client, "owner", 5) == [429] * 5
    assert AccessAttempt.objects.get().failures_since_start == counted
    AccessAttempt.objects.update(
        attempt_time=AccessAttempt.objects.get().attempt_time - timedelta(minutes=16)
    )
    assert log_in(client, "owner", PASSWORD).status_code == 302


def test_a_successful_log_in_resets_the_count(owner):
    client = client_at("192.0.2.9")
    fail(client, "owner", LIMIT - 1)
    assert log_in(client, "owner", PASSWORD).status_code == 302
    client.post("/accounts/logout/")
    assert fail(client, "owner", LIMIT - 1) == [200] * (LIMIT - 1)
    assert log_in(client, "owner", PASSWORD).status_code == 302


def test_the_admin_log_in_is_counted_and_locked_too(staff_user):
    client = client_at("192.0.2.10")
    for _ in range(LIMIT):
        client.post("/admin/login/", {"username": staff_user.username, "password": "wrong"})
    response = client.post(
        "/admin/login/", {"username": staff_user.username, "password": PASSWORD}
    )
    assert response.status_code == 429
    assert "Too many failed log-in attempts" in response.content.decode()
