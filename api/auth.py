"""Bearer-key authentication and per-key rate limiting for the API."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from time import monotonic
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone

from achievements import index
from api.models import ApiKey, hash_key
from project.cache import shared_redis

LAST_USED_RESOLUTION = timedelta(minutes=1)
# Keys this process has found active recently, by hash. Bounded: a process
# sees a handful of keys, and a flood of distinct valid keys only empties it.
KNOWN_KEYS_MAX = 1000


@dataclass
class _Known:
    api_key: ApiKey
    checked_at: float  # monotonic() of the query that found it active
    last_used_at: datetime | None


_known: dict[str, _Known] = {}
# Bumped by every `forget`: a lookup that began before a key was revoked or
# deleted must not put what it read back into `_known`.
_forgotten = 0


def authenticate(request: HttpRequest) -> ApiKey | None:
    """The active key in `Authorization: Bearer KEY`, or None.

    A key found active is trusted for ACCOLADE_API_KEY_RECHECK_SECONDS before
    it is looked up again: the query cost a fifth of a single-event request.
    Revoking or deleting a key forgets it at once in the process that did it
    (see `forget`), and other processes refuse it after at most that long.
    An unknown or revoked key is looked up every time, so a new key works at
    once. The returned instance is shared by threads: read it, never change it.

    The key itself never reaches a log or an error message.
    """
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip() or len(key) > 200:
        return None
    digest = hash_key(key.strip())
    known = _known.get(digest)
    if (
        known is None
        or monotonic() - known.checked_at >= settings.ACCOLADE_API_KEY_RECHECK_SECONDS
    ):
        checked_at, forgotten = monotonic(), _forgotten
        api_key = ApiKey.objects.active().filter(key_hash=digest).first()
        if api_key is None:
            _known.pop(digest, None)
            return None
        known = _Known(api_key, checked_at, api_key.last_used_at)
        if forgotten == _forgotten:  # else a key changed meanwhile: trust this read once
            if len(_known) >= KNOWN_KEYS_MAX:
                _known.clear()
            _known[digest] = known
    now = timezone.now()
    # Record use at most once a minute per process: a write per request would
    # cost more than the information is worth.
    if known.last_used_at is None or now - known.last_used_at > LAST_USED_RESOLUTION:
        known.last_used_at = now
        ApiKey.objects.filter(pk=known.api_key.pk).update(last_used_at=now)
    return known.api_key


def forget(sender: type[ApiKey], instance: ApiKey, **kwargs: Any) -> None:
    """Signal receiver: a key was saved (revoked, say) or deleted; look it up afresh.

    Now, and again when the change commits: until then other requests still
    read the row as it was, and may have trusted it again.
    """
    _forget(instance.key_hash)
    transaction.on_commit(partial(_forget, instance.key_hash))


def _forget(key_hash: str) -> None:
    global _forgotten
    _forgotten += 1
    _known.pop(key_hash, None)


def refused(request: HttpRequest) -> int | None:
    """Count a request refused for the key it sent against its address; seconds to wait
    if the address is over ACCOLADE_API_REFUSED_KEY_LIMIT, else None.

    Only refusals count, so a producer with a valid key is never held up by
    someone guessing from the same address. If Redis is down, nothing is
    counted.
    """
    address = hashlib.sha256(request.META.get("REMOTE_ADDR", "").encode()).hexdigest()[:32]
    return _over_limit(f"api-refused:{address}", settings.ACCOLADE_API_REFUSED_KEY_LIMIT)[0]


def rate_limit(api_key: ApiKey) -> int | None:
    """Seconds to wait if `api_key` has used up its requests for this window, else None.

    The round trip that counts also reads the rules index's version for a
    request that has yet to (`index.version_wanted`). If Redis is down,
    requests are let through.
    """
    wanted = shared_redis() is not None and index.version_wanted()
    wait, read = _over_limit(
        f"api-rate:{api_key.pk}",
        settings.ACCOLADE_API_RATE_LIMIT,
        read=index.version_key() if wanted else None,
    )
    if read:
        index.pin_version(read[0])
    return wait


def _over_limit(
    name: str, rate: tuple[int, int], *, read: str | None = None
) -> tuple[int | None, list[Any]]:
    """Count one more in `name`'s fixed window: seconds until the next window if the
    count is over `rate`'s limit, else None (also when the count could not be made);
    and, if `read` names a Redis key, its value in a list (empty if not read).

    In Redis, shared by every web process: INCR, EXPIRE on the window's first
    count, and the GET of `read`, in one round trip. The embedded site counts
    in its cache.
    """
    limit, period = rate
    now = time.time()
    key = f"{name}:{int(now // period)}"
    client = shared_redis()
    values: list[Any] = []
    try:
        if client is not None:
            pipe = client.pipeline(transaction=False)
            pipe.incr(f"{settings.ACCOLADE_NAMESPACE}:{key}")
            pipe.expire(f"{settings.ACCOLADE_NAMESPACE}:{key}", period * 2, nx=True)
            if read is not None:
                pipe.get(read)
            replies = pipe.execute()
            count = int(replies[0])
            values = replies[2:]
        else:
            cache.add(key, 0, timeout=period * 2)
            count = int(cache.incr(key))
    except Exception:
        return None, []
    if count > limit:
        return max(1, int(period - (now % period)) + 1), values
    return None, values
