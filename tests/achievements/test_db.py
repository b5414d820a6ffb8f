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


def test_instances_inserted_together_read_back_as_bulk_create_writes_them(
    mode, owner, monkeypatch
):
    """Every column, defaults and adapters included (JSON, an interval, NULLs, a
    boolean), across statements of INSERT_ROWS rows, keys given in order."""
    from datetime import timedelta

    from django.utils import timezone

    from achievements.models import Unlock
    from tests.factories import make_badge

    monkeypatch.setattr(db, "INSERT_ROWS", 2)
    badges = [make_badge(key=f"b{n}", requirements=[]) for n in range(5)]
    now = timezone.now()

    def unlocks(tier: int) -> list[Unlock]:
        return [
            Unlock(
                user=owner,
                badge=badge,
                tier=tier,
                unlocked_at=now,
                event_ids=["e-1", f"e-{n}"],
                took=timedelta(minutes=n) if n % 2 else None,
                silent=n == 3,
            )
            for n, badge in enumerate(badges)
        ]

    mine, theirs = unlocks(1), unlocks(2)
    with transaction.atomic():
        statements = db.insert_statements(mine)
        assert len(statements) == 3  # 2 + 2 + 1 rows
        with db.pipeline() as send:
            answers = [send(*statement) for statement in statements]
        db.inserted(mine, answers)
    Unlock.objects.bulk_create(theirs)
    assert [u.pk for u in mine] == sorted(u.pk for u in mine)
    assert all(not u._state.adding for u in mine)
    columns = [f.attname for f in Unlock._meta.concrete_fields if f.attname not in ("id", "tier")]
    stored = {
        (row.pop("tier"), row.pop("id")): row
        for row in Unlock.objects.values("id", "tier", *columns)
    }
    for unlock in mine:
        assert stored[(1, unlock.pk)] == stored[(2, theirs[mine.index(unlock)].pk)]
    assert stored[(1, mine[1].pk)]["took"] == timedelta(minutes=1)
    assert stored[(1, mine[1].pk)]["event_ids"] == ["e-1", "e-1"]


def test_models_with_a_database_only_default_are_left_to_bulk_create(owner, monkeypatch):
    from django.db.models import NOT_PROVIDED, Value

    from achievements.models import Unlock
    from tests.factories import make_badge

    badge = make_badge(key="b", requirements=[])
    # Unlock's own database defaults come with Python ones, which the instance holds.
    assert db.insert_statements([Unlock(user=owner, badge=badge)])
    field = Unlock._meta.get_field("period")
    monkeypatch.setattr(field, "db_default", Value(""))
    monkeypatch.setattr(field, "default", NOT_PROVIDED)
    unlock = Unlock(user=owner, badge=badge)
    with pytest.raises(NotImplementedError, match="db_default"):
        db.insert_statements([unlock])
