"""Bearer-key authentication and per-key rate limiting for the API."""

from __future__ import annotations

import time
from datetime import timedelta

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest
from django.utils import timezone

from achievements import metrics
from api.models import ApiKey, hash_key

LAST_USED_RESOLUTION = timedelta(minutes=1)


def authenticate(request: HttpRequest) -> ApiKey | None:
    """The active key in `Authorization: Bearer KEY`, or None.

    The key itself never reaches a log or an error message.
    """
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip() or len(key) > 200:
        return None
    api_key = ApiKey.objects.active().filter(key_hash=hash_key(key.strip())).first()
    if api_key is None:
        return None
    now = timezone.now()
    # Record use at most once a minute: a write per request would cost more
    # than the information is worth.
    if api_key.last_used_at is None or now - api_key.last_used_at > LAST_USED_RESOLUTION:
        ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
    return api_key


def rate_limit(api_key: ApiKey) -> int | None:
    """Seconds to wait if `api_key` has used up its requests for this window, else None.

    A fixed window per key in Redis, so every web process shares the count:
    one round trip (INCR, and EXPIRE on the window's first request). The
    embedded site counts in its cache. If Redis is down, requests are let
    through.
    """
    limit, period = settings.ACCOLADE_API_RATE_LIMIT
    now = time.time()
    window = int(now // period)
    key = f"api-rate:{api_key.pk}:{window}"
    client = metrics.redis_client()
    try:
        if client is not None:
            pipe = client.pipeline(transaction=False)
            pipe.incr(f"{settings.ACCOLADE_NAMESPACE}:{key}")
            pipe.expire(f"{settings.ACCOLADE_NAMESPACE}:{key}", period * 2, nx=True)
            count = int(pipe.execute()[0])
        else:
            cache.add(key, 0, timeout=period * 2)
            count = int(cache.incr(key))
    except Exception:
        return None
    if count > limit:
        return max(1, int(period - (now % period)) + 1)
    return None
