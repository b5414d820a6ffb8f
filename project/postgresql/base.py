"""Django's PostgreSQL backend, with a pool check that costs no round trip.

Django's pool check (CONN_HEALTH_CHECKS) is psycopg_pool's: an empty query
each time a request or task takes a connection from the pool, one round
trip per request (a tenth of a single-event API request's PostgreSQL time).
This backend hands the pool `project.pool.check_connection` instead, which
asks PostgreSQL only when something looks wrong. The pool runs it as it ran
its own: a connection that fails is discarded, and the next one is tried
after a short back-off while replacements connect.
"""

from __future__ import annotations

from typing import Any

from django.db.backends.postgresql import base
from psycopg_pool import ConnectionPool

from project.pool import check_connection


class DatabaseWrapper(base.DatabaseWrapper):
    @property
    def pool(self) -> Any:
        pool = super().pool
        # Django gives the pool psycopg_pool's check when CONN_HEALTH_CHECKS
        # is on, and has no setting for another. Were psycopg_pool to rename
        # the attribute, the pool would keep its own check: slower, as safe.
        if pool is not None and getattr(pool, "_check", None) is ConnectionPool.check_connection:
            pool._check = check_connection
        return pool
