"""API keys: a key found active is trusted briefly, and revoking it is seen at once here."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from api import auth
from api.models import ApiKey

URL = "/api/v1/events/none"  # 404 with a valid key, 401 without


@pytest.fixture
def clock(monkeypatch):
    """The monotonic clock as the auth module sees it, moved by hand."""

    class Clock:
        now = 1_000.0

    monkeypatch.setattr(auth, "monotonic", lambda: Clock.now)
    auth._known.clear()
    yield Clock
    auth._known.clear()


def _status(api_client, key: str) -> int:
    return api_client.get(URL, HTTP_AUTHORIZATION=f"Bearer {key}").status_code


def _key_queries(queries) -> list[str]:
    return [q["sql"] for q in queries.captured_queries if "api_apikey" in q["sql"]]


def test_a_key_found_active_is_not_looked_up_again_within_the_recheck_time(
    api_client, api_key, clock, settings
):
    settings.ACCOLADE_API_KEY_RECHECK_SECONDS = 5
    assert _status(api_client, api_key) == 404

    clock.now += 4.9
    with CaptureQueriesContext(connection) as queries:
        assert _status(api_client, api_key) == 404
    assert _key_queries(queries) == []

    clock.now += 0.2
    with CaptureQueriesContext(connection) as queries:
        assert _status(api_client, api_key) == 404
    assert len(_key_queries(queries)) == 1


def test_revoking_a_key_refuses_it_at_once_in_this_process(api_client, api_key, clock):
    assert _status(api_client, api_key) == 404

    ApiKey.objects.get().revoke()

    assert _status(api_client, api_key) == 401


def test_deleting_a_key_refuses_it_at_once_in_this_process(api_client, api_key, clock):
    assert _status(api_client, api_key) == 404

    ApiKey.objects.get().delete()

    assert _status(api_client, api_key) == 401


def test_a_key_revoked_by_another_process_is_refused_after_the_recheck_time(
    api_client, api_key, clock, settings
):
    settings.ACCOLADE_API_KEY_RECHECK_SECONDS = 5
    assert _status(api_client, api_key) == 404
    # Another process's revoke: the row changes, no signal reaches this one.
    ApiKey.objects.update(revoked_at=timezone.now())

    assert _status(api_client, api_key) == 404
    clock.now += 5.1
    assert _status(api_client, api_key) == 401
    clock.now += 60
    assert _status(api_client, api_key) == 401


def test_an_unknown_key_is_looked_up_every_time(api_client, db, clock):
    with CaptureQueriesContext(connection) as queries:
        for _ in range(3):
            assert _status(api_client, "acc_unknown") == 401
    assert len(_key_queries(queries)) == 3


def test_use_is_recorded_at_most_once_a_minute(api_client, api_key, clock, settings):
    settings.ACCOLADE_API_KEY_RECHECK_SECONDS = 0  # every request reads the row
    assert _status(api_client, api_key) == 404
    first = ApiKey.objects.get().last_used_at
    assert first is not None

    ApiKey.objects.update(last_used_at=first - timedelta(seconds=30))
    assert _status(api_client, api_key) == 404
    assert ApiKey.objects.get().last_used_at == first - timedelta(seconds=30)

    ApiKey.objects.update(last_used_at=first - timedelta(minutes=2))
    assert _status(api_client, api_key) == 404
    recorded = ApiKey.objects.get().last_used_at
    assert recorded is not None and recorded > first - timedelta(seconds=1)


def test_a_lookup_that_raced_a_revoke_does_not_trust_the_key_again(api_client, api_key, clock):
    racing = {"done": False}

    def revoke_while_the_lookup_runs(execute, sql, params, many, context):
        result = execute(sql, params, many, context)  # reads the key as active
        if "api_apikey" in sql and sql.lstrip().startswith("SELECT") and not racing["done"]:
            racing["done"] = True
            ApiKey.objects.get().revoke()  # another request, between read and store
        return result

    with connection.execute_wrapper(revoke_while_the_lookup_runs):
        assert _status(api_client, api_key) == 404  # what it read before the revoke

    assert racing["done"]
    assert _status(api_client, api_key) == 401  # not the stale read, though no time passed


def test_requests_with_a_bad_key_are_limited_per_address_and_good_keys_are_not(
    api_client, api_key, settings
):
    settings.ACCOLADE_API_REFUSED_KEY_LIMIT = (3, 60)
    bad = {"HTTP_AUTHORIZATION": "Bearer acc_guess", "REMOTE_ADDR": "192.0.2.1"}
    codes = [api_client.get("/api/v1/events/x", **bad).status_code for _ in range(4)]
    assert codes == [401, 401, 401, 429]
    response = api_client.get("/api/v1/events/x", **bad)
    assert 1 <= int(response["Retry-After"]) <= 61
    assert response.json()["errors"][0]["field"] == "Authorization"
    assert api_client.get("/metrics", **bad).status_code == 429
    # Another address is not held up, nor a valid key from the same one.
    elsewhere = {**bad, "REMOTE_ADDR": "192.0.2.2"}
    assert api_client.get("/api/v1/events/x", **elsewhere).status_code == 401
    good = {"HTTP_AUTHORIZATION": f"Bearer {api_key}", "REMOTE_ADDR": "192.0.2.1"}
    assert api_client.get("/api/v1/events/x", **good).status_code == 404


def test_refusals_count_in_redis_when_there_is_one(api_client, db, settings, redis_cache):
    settings.ACCOLADE_API_REFUSED_KEY_LIMIT = (2, 60)
    bad = {"HTTP_AUTHORIZATION": "Bearer acc_guess", "REMOTE_ADDR": "192.0.2.3"}
    codes = [api_client.get("/api/v1/events/x", **bad).status_code for _ in range(3)]
    assert codes == [401, 401, 429]
    [key] = redis_cache.keys(f"{settings.ACCOLADE_NAMESPACE}:api-refused:*")
    assert int(redis_cache.get(key)) == 3 and 60 < redis_cache.ttl(key) <= 120


def test_requests_without_any_key_are_refused_but_not_counted(api_client, db, settings):
    settings.ACCOLADE_API_REFUSED_KEY_LIMIT = (2, 60)
    codes = [
        api_client.get("/api/v1/events/x", REMOTE_ADDR="192.0.2.4").status_code for _ in range(4)
    ]
    assert codes == [401] * 4
