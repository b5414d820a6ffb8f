"""The check the PostgreSQL connection pool runs before it hands out a connection."""

from __future__ import annotations

import select

from psycopg import Connection
from psycopg.pq import ConnStatus, TransactionStatus
from psycopg_pool import ConnectionPool


def check_connection(conn: Connection) -> None:
    """Raise if `conn` is broken; a healthy idle connection costs no round trip.

    psycopg_pool's own check sends an empty query: one round trip per request
    and per task, a tenth of a single-event API request's PostgreSQL time.
    A connection whose backend died (a restart, `pg_terminate_backend`, an
    idle timeout) has the server's goodbye or the end of the stream waiting
    on its socket, so a connection with nothing to read and in a clean state
    is handed out as it is. Anything else gets psycopg_pool's full check,
    which raises for a dead connection, and the pool replaces it.
    """
    if (
        conn.closed
        or conn.pgconn.status != ConnStatus.OK
        or conn.pgconn.transaction_status != TransactionStatus.IDLE
        or _readable(conn.pgconn.socket)
    ):
        ConnectionPool.check_connection(conn)


def _readable(fd: int) -> bool:
    # poll, not select: a web process holding thousands of sockets has
    # descriptors beyond select's limit of 1024.
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLERR | select.POLLHUP)
    return bool(poller.poll(0))
