"""A throwaway PostgreSQL database with the project migrated into it, for benchmarks."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


@contextmanager
def scratch_database() -> Iterator[str]:
    """Create, configure Django for (embedded mode, no Redis), migrate, yield, drop."""
    import psycopg

    database = f"accolade_bench_{os.getpid()}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{database}"')
    os.environ.update(
        DJANGO_SETTINGS_MODULE="project.settings",
        DATABASE_URL=f"postgres://postgres@127.0.0.1:5432/{database}",
        SECRET_KEY="bench-only-secret-key",
        SECURE_SSL_REDIRECT="0",
        SECURE_COOKIES="0",
        ACCOLADE_LOG_LEVEL="WARNING",
    )
    os.environ.pop("REDIS_URL", None)
    try:
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        yield database
    finally:
        from django.db import connections

        connections.close_all()
        with psycopg.connect(ADMIN_URL, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def make_visit_badges() -> Any:
    """The two badges every benchmark evaluates visits against, never unlocked
    (thresholds out of reach), so each event does the full work: a distinct
    count and a plain count. Returns the distinct-places badge."""
    from tests.factories import make_badge

    places = make_badge(
        key="places",
        requirements=[
            {
                "event_type": "visit.created",
                "threshold": 10**9,
                "aggregation": "distinct",
                "field": "place_id",
            }
        ],
    )
    make_badge(key="visits", requirements=[{"event_type": "visit.created", "threshold": 10**9}])
    return places
