"""Django's PostgreSQL backend, with a connection check that costs no round trip.

Django's pool check (CONN_HEALTH_CHECKS) sends an empty query every time a
request or task takes a connection from the pool: one round trip per
request, a tenth of a single-event API request's PostgreSQL time. This
backend checks the connection itself instead (`project.pool`), and asks
PostgreSQL only when something looks wrong.
"""

from __future__ import annotations

from typing import Any

import psycopg
from django.db.backends.postgresql import base

from project.pool import check_connection


class DatabaseWrapper(base.DatabaseWrapper):
    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        pool = self.pool
        if pool is None:
            return super().get_new_connection(conn_params)
        # After a restart every pooled connection is dead: each one found is
        # handed back (the pool discards a broken connection and opens a new
        # one) until a working one comes out.
        for _ in range(pool.max_size):
            connection = super().get_new_connection(conn_params)
            try:
                check_connection(connection)
            except psycopg.Error:
                pool.putconn(connection)
                continue
            return connection
        connection = super().get_new_connection(conn_params)
        check_connection(connection)
        return connection
