"""Statements sent together (achievements.db.pipeline), on PostgreSQL."""

from __future__ import annotations

from unittest import mock

import pytest
from django.db import DataError, connection, transaction

from achievements import db

pytestmark = pytest.mark.usefixtures("postgresql_only")


@pytest.fixture(params=[True, False], ids=["pipeline-mode", "one-by-one"])
def mode(request):
    with mock.patch.object(db, "_PIPELINES", request.param):
        yield request.param


def test_statements_run_in_order_and_each_gives_its_rows(mode):
    with transaction.atomic():
        with db.pipeline() as send:
            assert bool(connection.connection.pgconn.pipeline_status) == mode
            created = send("CREATE TEMP TABLE t (x int) ON COMMIT DROP", [])
            inserted = send("INSERT INTO t SELECT * FROM unnest(%b::int[]) RETURNING x", [[1, 2]])
            read = send("SELECT x FROM t ORDER BY x", [], binary=True)
        assert created() == []
        assert sorted(inserted()) == [(1,), (2,)]
        assert read() == [(1,), (2,)]  # the read ran after the insert, and saw it


def test_a_failing_statement_fails_the_block_and_stops_those_after_it(mode):
    with connection.cursor() as cursor:  # a sequence moves even in a transaction rolled back
        cursor.execute("CREATE TEMP SEQUENCE s")
    with (
        pytest.raises(DataError, match="division by zero"),
        transaction.atomic(),
        db.pipeline() as send,
    ):
        send("SELECT nextval('s')", [])
        send("SELECT 1 / 0", [])
        send("SELECT nextval('s')", [])
    with connection.cursor() as cursor:
        cursor.execute("SELECT last_value FROM s")
        assert cursor.fetchone() == (1,)


def test_rows_are_there_only_once_the_block_has_ended(mode):
    with transaction.atomic(), db.pipeline() as send:
        answer = send("SELECT 1", [])
        with pytest.raises(RuntimeError, match="after its block"):
            answer()
    assert answer() == [(1,)]


@pytest.mark.django_db(transaction=True)
def test_statements_are_sent_together_only_inside_a_transaction():
    with pytest.raises(AssertionError, match="needs a transaction"), db.pipeline():
        pass
