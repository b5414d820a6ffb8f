from __future__ import annotations

import os

import pytest
from django.db import connection

from tests.factories import make_user


@pytest.fixture(autouse=True)
def clear_cache():
    """The local-memory cache outlives a test's database rollback; start each test clean."""
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()


@pytest.fixture(autouse=True)
def forget_rarity():
    """Each process keeps the badges' rarity for a minute; each test counts afresh."""
    from achievements import rarity

    rarity.forget()


@pytest.fixture(autouse=True)
def forget_versioned_badges():
    """The badges known to have a rule version outlive a test's rollback too (and
    SQLite reuses their ids); start each test without them."""
    from achievements import versions

    versions._versioned.clear()


@pytest.fixture(autouse=True)
def recover_lost_batches_on_the_first_drain(monkeypatch):
    """Drains look for lost batches at most every few seconds per process; each
    test starts as a fresh process would."""
    from achievements import dispatch

    monkeypatch.setattr(dispatch, "_recovered_at", float("-inf"))


@pytest.fixture
def owner(db):
    """The user whose actions a test is about."""
    return make_user(username="owner")


@pytest.fixture
def second_user(db):
    """Another signed-in user, who must never see the owner's progress."""
    return make_user(username="second")


@pytest.fixture
def staff_user(db):
    return make_user(username="staff", is_staff=True)


@pytest.fixture
def pushes(monkeypatch):
    """The frames pushed to users' pages, captured at the channel layer's edge (as if a
    page were connected to this process, so the push is built)."""
    from achievements import realtime

    sent: list[dict] = []
    monkeypatch.setattr(realtime, "_server_loop_running", lambda: True)

    def send_to_groups(messages: dict[str, dict]) -> set[str]:
        sent.extend(messages.values())
        return set(messages)

    monkeypatch.setattr(realtime, "send_to_groups", send_to_groups)
    return sent


@pytest.fixture
def postgresql_only(db):
    """For tests where PostgreSQL's row and advisory locks are the thing under test."""
    if connection.vendor == "postgresql":
        return
    message = (
        "needs PostgreSQL locks; run with "
        "DATABASE_URL=postgres://postgres@127.0.0.1:5432/accolade or CI=true make test"
    )
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def embedded_site(tmp_path_factory):
    """`manage.py runserver` alone, as `make run` serves it (started once per run)."""
    from tests.integration import stack

    with stack.embedded_stack(tmp_path_factory.mktemp("embedded")) as site:
        yield site


@pytest.fixture(scope="session")
def topology_site(tmp_path_factory):
    """PostgreSQL, Redis, a Celery worker and Daphne (started once per run)."""
    from tests.integration import stack

    with stack.topology_stack(tmp_path_factory.mktemp("topology")) as site:
        yield site


@pytest.fixture
def real_redis(monkeypatch):
    """The machine's Redis (DB 14) as every role's client; the test clears what it writes."""
    import redis

    from achievements import metrics

    client = redis.Redis.from_url("redis://127.0.0.1:6379/14", socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError:
        message = "needs Redis on 127.0.0.1:6379 (CI=true make test starts it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    monkeypatch.setattr(metrics, "redis_client", lambda role="cache": client)
    return client


@pytest.fixture
def redis_cache(real_redis, settings):
    """Production's cache: Django's cache in Redis (DB 14, as the metrics), under
    a namespace of the test's own; the test's keys are deleted afterwards."""
    import uuid

    namespace = f"test-{uuid.uuid4().hex[:12]}"
    settings.ACCOLADE_NAMESPACE = namespace
    settings.CACHES = {
        "default": {
            "BACKEND": "project.cache.SharedRedisCache",
            "LOCATION": "redis://127.0.0.1:6379/14",
            "KEY_PREFIX": namespace,
        }
    }
    yield real_redis
    for key in real_redis.scan_iter(f"{namespace}:*"):
        real_redis.delete(key)


@pytest.fixture
async def close_thread_connections():
    """Close the database connection the sync-to-async thread opened (tests that
    drive the real consumer), so the test database can be dropped at the end."""
    yield
    from asgiref.sync import sync_to_async
    from django.db import connections

    await sync_to_async(connections.close_all)()
