"""Cursors for the engine's array-fed statements on PostgreSQL, one by one or sent together."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any, cast

import psycopg
from django.db import connection, transaction
from django.db.models import NOT_PROVIDED, Model

STREAM_ROWS = 2000
_PIPELINES = psycopg.Pipeline.is_supported()


class _PreparingCursor(psycopg.Cursor):
    """A cursor whose statements PostgreSQL plans once per connection."""

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        kwargs.setdefault("prepare", True)
        return super().execute(query, params, **kwargs)


@contextmanager
def server_cursor(*, binary: bool = False, name: str = "", prepare: bool = False) -> Iterator[Any]:
    """A cursor that binds parameters on the server, inside Django's transaction.

    Django opens its connections with a client-binding cursor class, which
    renders every parameter into the SQL text; a plain psycopg cursor sends
    them apart. Statements on this cursor mark their arrays `%b`: psycopg
    then sends them in PostgreSQL's binary format, where the text format
    costs Python a formatting call per element (20,000 timestamps: 68 ms as
    text, 7 ms binary). Numbers of mixed precision stay `%t` (text).

    `binary=True` asks for the rows in the binary format too: psycopg reads
    timestamps and JSON in C, where the text format sends each timestamp
    through Django's time zone loader, in Python.

    A `name` makes it a cursor on the server that sends rows as they are
    read, `STREAM_ROWS` at a time, for results too large to hold at once.

    `prepare=True` prepares its statements (when DATABASE_PREPARED_STATEMENTS
    allows): for a statement of fixed text run all the time, whose planning
    is most of its cost. Not for statements whose text varies with their
    rows: each variant would be prepared, and evicted again.

    It is wrapped as Django wraps its own, so execute wrappers run and the
    statements are logged when queries are (DEBUG, CaptureQueriesContext).
    """
    connection.ensure_connection()
    with _wrapped(binary=binary, name=name, prepare=prepare) as cursor:
        yield cursor


def _wrapped(*, binary: bool, name: str = "", prepare: bool = False) -> Any:
    """A psycopg cursor on Django's connection, wrapped as Django wraps its own."""
    raw: Any  # Django wraps any DB-API cursor
    if name:
        raw = psycopg.ServerCursor(connection.connection, name)
        raw.itersize = STREAM_ROWS
    elif prepare:
        raw = _PreparingCursor(connection.connection)
    else:
        raw = psycopg.Cursor(connection.connection)
    if binary:
        raw.format = psycopg.pq.Format.BINARY
    wrap = connection.make_debug_cursor if connection.queries_logged else connection.make_cursor
    return wrap(raw)


Rows = Callable[[], list[tuple[Any, ...]]]

INSERT_ROWS = 1000


def insert_statements(objects: Sequence[Model]) -> list[tuple[str, list[Any]]]:
    """bulk_create's INSERTs of new instances of one model, as statements for `pipeline()`.

    Every concrete column but the primary key, each value prepared as Django
    prepares it for a save (defaults, adapters), `INSERT_ROWS` rows per
    statement; each returns the new primary keys, in the order of the rows.
    A model with a field that has a database-side default (`db_default`) and
    no Python one is refused: its values would need bulk_create's handling of
    `DatabaseDefault`.
    """
    if not objects:
        return []
    meta = objects[0]._meta
    fields = [f for f in meta.concrete_fields if not f.primary_key and not f.generated]
    if any(f.db_default is not NOT_PROVIDED and not f.has_default() for f in fields):
        # Its instances would hold DatabaseDefault, which needs bulk_create's handling.
        raise NotImplementedError(f"{meta.label} has a db_default-only field: use bulk_create")
    quote = connection.ops.quote_name
    # A concrete field always has a column (the stubs allow None).
    columns = ", ".join(quote(cast(str, f.column)) for f in fields)
    key = quote(cast(str, meta.pk.column))
    row = f"({', '.join(['%s'] * len(fields))})"
    statements = []
    for start in range(0, len(objects), INSERT_ROWS):
        chunk = objects[start : start + INSERT_ROWS]
        params = [
            f.get_db_prep_save(f.pre_save(instance, True), connection)
            for instance in chunk
            for f in fields
        ]
        sql = (
            f"INSERT INTO {quote(meta.db_table)} ({columns}) "
            f"VALUES {', '.join([row] * len(chunk))} RETURNING {key}"
        )
        statements.append((sql, params))
    return statements


def inserted(objects: Sequence[Model], answers: Sequence[Rows]) -> None:
    """Give the instances `insert_statements` inserted their keys, as bulk_create would."""
    keys = [key for answer in answers for (key,) in answer()]
    for instance, key in zip(objects, keys, strict=True):
        instance.pk = key
        instance._state.adding = False
        instance._state.db = connection.alias


@contextmanager
def pipeline() -> Iterator[Callable[..., Rows]]:
    """Statements sent to PostgreSQL together: one round trip for all of them.

    Yields `send(sql, params, binary=False)`, which queues a statement (on a
    cursor like `server_cursor`'s) and returns the function that gives its
    rows (none for a statement without) once the block has ended. In
    psycopg's pipeline mode the client does not wait for each answer; the
    server still runs the statements one after another, in the order sent,
    each with a snapshot of its own, as if they had come one by one. A
    statement that fails fails the block, and those after it do not run.
    With a libpq older than 14 (no pipeline mode) each is sent and answered
    in turn, with the same results. Only inside a transaction: in autocommit
    the two modes would commit differently.
    """
    assert connection.in_atomic_block, "pipeline() needs a transaction (atomic)"
    connection.ensure_connection()
    sent: list[tuple[Any, list[tuple[Any, ...]]]] = []
    answered = False

    def send(sql: str, params: list[Any], binary: bool = False) -> Rows:
        cursor = _wrapped(binary=binary)
        rows: list[tuple[Any, ...]] = []
        sent.append((cursor, rows))
        cursor.execute(sql, params)

        def answer() -> list[tuple[Any, ...]]:
            if not answered:
                raise RuntimeError("a pipelined statement's rows are read after its block")
            return rows

        return answer

    try:
        # Errors of the statements arrive with the block's end, outside Django's
        # cursor: wrapped here as Django wraps them there (django.db.DataError...).
        together = connection.connection.pipeline() if _PIPELINES else nullcontext()
        with connection.wrap_database_errors, together:
            yield send
        for cursor, rows in sent:  # every answer has arrived with the block's end
            if cursor.description is not None:
                rows.extend(cursor.fetchall())
        answered = True
    finally:
        for cursor, _ in sent:
            cursor.close()


def after_commit(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> None:
    """Call `func(*args, **kwargs)` once the current transaction commits; if it
    raises, log it and carry on (`on_commit(robust=True)`).

    Not a functools.partial: Django logs a failing robust callback by its
    `__qualname__`, which a partial lacks, so the failure would surface as an
    AttributeError in the logging instead of the error itself.
    """

    def call() -> None:
        func(*args, **kwargs)

    call.__qualname__ = getattr(func, "__qualname__", repr(func))
    transaction.on_commit(call, robust=True)
