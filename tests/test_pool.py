"""The connection pool's check: no round trip for a healthy connection, a dead one refused."""

from __future__ import annotations

import time
from unittest import mock

import psycopg
import pytest
from django.db import connection
from psycopg_pool import ConnectionPool

from project.pool import check_connection


@pytest.fixture
def conninfo(postgresql_only):
    # What the pool connects with (the test database), not a pooled connection.
    return connection.pool.kwargs | {"autocommit": True}  # type: ignore[attr-defined]


def _connect(conninfo: dict) -> psycopg.Connection:
    return psycopg.connect(**conninfo)


def _full_check() -> mock._patch:
    """A spy on psycopg_pool's check, the one that sends a query."""
    return mock.patch.object(
        ConnectionPool, "check_connection", wraps=ConnectionPool.check_connection
    )


def test_a_healthy_idle_connection_passes_without_a_query(conninfo):
    with _connect(conninfo) as conn, _full_check() as full_check:
        conn.execute("SELECT 1")
        check_connection(conn)
        full_check.assert_not_called()


def test_a_connection_whose_backend_died_is_refused(conninfo):
    with _connect(conninfo) as conn, _connect(conninfo) as killer:
        pid = conn.info.backend_pid
        killer.execute("SELECT pg_terminate_backend(%s)", [pid])
        deadline = time.monotonic() + 10
        while killer.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid]
        ).fetchone() != (0,):
            assert time.monotonic() < deadline, "the backend did not exit"
            time.sleep(0.01)
        with pytest.raises(psycopg.OperationalError):
            check_connection(conn)


def test_a_connection_left_in_a_transaction_gets_the_full_check(conninfo):
    """Which refuses it, as psycopg_pool's own check does."""
    with _connect(conninfo) as conn, _full_check() as full_check:
        conn.autocommit = False
        conn.execute("SELECT 1")  # a transaction is open
        with pytest.raises(psycopg.ProgrammingError):
            check_connection(conn)
        full_check.assert_called_once_with(conn)


@pytest.mark.django_db(transaction=True)
def test_after_every_pooled_backend_dies_the_next_query_works(conninfo):
    """Through Django's pool, holding 8 connections, all killed (as a restart
    does). psycopg_pool's own check loop waits 1, 2, 4... seconds between dead
    connections, and ran out its 10 s timeout here."""
    import threading

    held = threading.Barrier(8)
    pids: list[int] = []

    def hold() -> None:
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                pids.append(cursor.fetchone()[0])
            held.wait(10)  # all 8 out of the pool at once
        finally:
            connection.close()  # back to the pool

    threads = [threading.Thread(target=hold) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    connection.close()
    with _connect(conninfo) as killer:
        killed = {
            pid
            for pid, _ in killer.execute(
                "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        }
        assert set(pids) <= killed and len(set(pids)) == 8
        time.sleep(0.2)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        [(second,)] = cursor.fetchall()
    assert second not in killed


@pytest.mark.django_db(transaction=True)
def test_django_s_pool_checks_connections_with_this_check(conninfo, monkeypatch):
    """The backend checks each connection it takes from the pool with project.pool's check."""
    import project.pool

    looked: list[int] = []
    readable = project.pool._readable

    def spy(fd: int) -> bool:
        looked.append(fd)
        return readable(fd)

    monkeypatch.setattr(project.pool, "_readable", spy)
    connection.close()  # back to the pool
    with _full_check() as full_check, connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    assert len(looked) == 1
    full_check.assert_not_called()


@pytest.mark.django_db(transaction=True)
def test_a_connection_whose_check_fails_otherwise_goes_back_to_the_pool(conninfo, monkeypatch):
    """Not kept out of the pool for good (the pool would shrink by one each time)."""
    from project.postgresql import base as backend

    connection.close()
    pool = connection.pool  # type: ignore[attr-defined]
    available = pool.get_stats()["pool_available"]

    def interrupted(conn: psycopg.Connection) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(backend, "check_connection", interrupted)
    with pytest.raises(KeyboardInterrupt):
        connection.ensure_connection()
    monkeypatch.undo()
    deadline = time.monotonic() + 5
    while pool.get_stats()["pool_available"] < available and time.monotonic() < deadline:
        time.sleep(0.01)  # a returned connection may be reset by the pool's worker
    assert pool.get_stats()["pool_available"] == available
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
