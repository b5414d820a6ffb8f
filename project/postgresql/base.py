"""Django's PostgreSQL backend, with a pool check that costs no round trip.

Django's pool check (CONN_HEALTH_CHECKS) is psycopg_pool's: an empty query
each time a request or task takes a connection from the pool, one round
trip per request (a tenth of a single-event API request's PostgreSQL time).
This backend checks the connection itself as it leaves the pool
(`project.pool.check_connection`), asking PostgreSQL only when something
looks wrong.

A broken connection goes back to the pool, which discards and replaces it,
and the next one is taken at once. After a restart every pooled connection
is dead: psycopg_pool's own loop waits between them (1 s, then 2, 4...), so
with a full pool the first request after a restart waited out its 10 s
timeout; here they are all passed over in a moment.
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
        passes = pool.max_size  # dead connections passed over before giving up
        while True:
            connection = super().get_new_connection(conn_params)
            try:
                check_connection(connection)
                return connection
            except BaseException as error:
                pool.putconn(connection)  # a broken one is discarded and replaced
                passes -= 1
                if not isinstance(error, psycopg.Error) or passes < 0:
                    raise
