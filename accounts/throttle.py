"""Slow down password guessing: failed log-ins are counted per account and per address.

Counts live in the cache (Redis in production, so every web process shares
them) for a fixed window. Past the limit, further attempts are refused
without checking the password at all, until the window ends.
"""

from __future__ import annotations

import hashlib
import time

from django.core.cache import cache

WINDOW_SECONDS = 15 * 60
MAX_FAILURES_PER_ACCOUNT = 5  # per username and address
MAX_FAILURES_PER_ADDRESS = 30  # per address, across usernames


def _keys(username: str, address: str) -> tuple[str, str]:
    window = int(time.time() // WINDOW_SECONDS)
    who = hashlib.sha256(f"{username.strip().lower()}|{address}".encode()).hexdigest()[:32]
    where = hashlib.sha256(address.encode()).hexdigest()[:32]
    return f"login-fail:{who}:{window}", f"login-fail-addr:{where}:{window}"


def retry_after(username: str, address: str) -> int | None:
    """Seconds until attempts are allowed again, or None if they are allowed now."""
    account_key, address_key = _keys(username, address)
    counts = cache.get_many([account_key, address_key])
    if (
        counts.get(account_key, 0) >= MAX_FAILURES_PER_ACCOUNT
        or counts.get(address_key, 0) >= MAX_FAILURES_PER_ADDRESS
    ):
        return int(WINDOW_SECONDS - time.time() % WINDOW_SECONDS) + 1
    return None


def record_failure(username: str, address: str) -> None:
    for key in _keys(username, address):
        cache.add(key, 0, timeout=WINDOW_SECONDS * 2)
        try:
            cache.incr(key)
        except ValueError:  # expired between add and incr
            cache.set(key, 1, timeout=WINDOW_SECONDS * 2)


def clear(username: str, address: str) -> None:
    cache.delete(_keys(username, address)[0])
