from __future__ import annotations

from datetime import UTC, datetime
from unittest.mock import ANY

import pytest
from django.db import transaction

from achievements.events import InvalidEvent, record_event
from achievements.models import Event, UserBadge
from tests.factories import make_images_badge


def test_it_records_an_event_with_every_field(owner):
    occurred = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    recorded = record_event(
        owner,
        "image.posted",
        payload={"image_id": 9},
        event_id="photo-9",
        occurred_at=occurred,
        source="web",
    )
    event = Event.objects.get(event_id="photo-9")
    assert recorded.created and not recorded.duplicate
    assert (event.event_type, event.user, event.occurred_at, event.source, event.payload) == (
        "image.posted",
        owner,
        occurred,
        "web",
        {"image_id": 9},
    )
    assert event.received_at is not None and event.processed_at is None


def test_it_counts_a_duplicate_event_id_once(owner):
    first = record_event(owner, "image.posted", event_id="photo-1")
    second = record_event(owner, "image.posted", event_id="photo-1", payload={"changed": True})
    assert first.created and second.duplicate
    assert second.event.pk == first.event.pk
    assert Event.objects.count() == 1


def test_a_duplicate_does_not_break_the_callers_transaction(owner):
    with transaction.atomic():
        record_event(owner, "image.posted", event_id="photo-1")
        record_event(owner, "image.posted", event_id="photo-1")
        record_event(owner, "image.posted", event_id="photo-2")
    assert Event.objects.count() == 2


def test_evaluation_is_enqueued_only_after_the_producer_commits(
    owner, django_capture_on_commit_callbacks
):
    make_images_badge(threshold=1)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        record_event(owner, "image.posted", event_id="photo-1")
        assert not UserBadge.objects.exists()
    assert len(callbacks) == 1
    callbacks[0]()
    assert UserBadge.objects.get(user=owner).completed_at is not None


def test_a_duplicate_enqueues_nothing(owner, django_capture_on_commit_callbacks):
    record_event(owner, "image.posted", event_id="photo-1")
    with django_capture_on_commit_callbacks() as callbacks:
        record_event(owner, "image.posted", event_id="photo-1")
    assert callbacks == []


def test_a_rolled_back_producer_leaves_no_event_and_no_evaluation(
    owner, django_capture_on_commit_callbacks
):
    with (
        django_capture_on_commit_callbacks() as callbacks,
        pytest.raises(RuntimeError),
        transaction.atomic(),
    ):
        record_event(owner, "image.posted", event_id="photo-1")
        raise RuntimeError("the producer's own save failed")
    assert not Event.objects.exists()
    assert callbacks == []


def test_a_committed_event_asks_for_a_drain_or_with_batches_of_one_sends_its_key(
    owner, settings, monkeypatch, django_capture_on_commit_callbacks
):
    from achievements import tasks

    drains, singles = [], []
    monkeypatch.setattr(tasks.evaluate_pending_task, "delay", lambda *args: drains.append(args))
    monkeypatch.setattr(tasks.evaluate_event_task, "delay", lambda *args: singles.append(args))
    settings.ACCOLADE_TASK_MODE = "celery"
    with django_capture_on_commit_callbacks(execute=True):
        record_event(owner, "image.posted", event_id="photo-1")
    assert (drains, singles) == ([()], [])  # the drain loads waiting events itself

    settings.ACCOLADE_EVALUATION_BATCH_SIZE = 1
    with django_capture_on_commit_callbacks(execute=True):
        recorded = record_event(owner, "image.posted", event_id="photo-2")
    assert singles == [(recorded.event.pk,)]  # the key, never the instance


@pytest.mark.parametrize(
    ("kwargs", "field", "problem"),
    [
        ({"event_type": ""}, "event_type", "must not be empty"),
        ({"event_type": "has spaces"}, "event_type", "lower-case words"),
        ({"event_type": "x" * 65}, "event_type", "at most 64"),
        ({"payload": [1, 2]}, "payload", "must be a JSON object, not list"),
        ({"payload": "text"}, "payload", "must be a JSON object, not str"),
        ({"payload": {"when": datetime.now(UTC)}}, "payload", "JSON-serialisable"),
        ({"payload": {"big": "x" * 20_000}}, "payload", "at most 16384 bytes"),
        ({"event_id": ""}, "event_id", "1-128 characters"),
        ({"event_id": "has space"}, "event_id", "1-128 characters"),
        ({"event_id": "x" * 129}, "event_id", "1-128 characters"),
        ({"occurred_at": datetime(2026, 1, 1)}, "occurred_at", "time-zone aware"),
        ({"occurred_at": "2026-01-01"}, "occurred_at", "must be a datetime"),
        ({"source": ""}, "source", "1-64 characters"),
        ({"payload": {"place": "\ud800"}}, "payload", "JSON-serialisable"),
        ({"payload": {"place": "a\x00b"}}, "payload.place", "NUL characters"),
        ({"payload": {"a\x00": 1}}, "payload", "NUL characters"),
        ({"payload": {1: "x"}}, "payload", "keys must be strings"),
        ({"payload": {"n": float("nan")}}, "payload.n", "must be a finite number"),
        ({"payload": {"n": float("-inf")}}, "payload.n", "must be a finite number"),
        # Beyond what a progress column (numeric(18, 4)) holds: a sum of it would fail later.
        ({"payload": {"score": 10**14}}, "payload.score", "between -99999999999999 and"),
        ({"payload": {"score": -1e15}}, "payload.score", "between -99999999999999 and"),
        ({"payload": {"a": [1, {"b": 10**400}]}}, "payload.a[1].b", "between"),
    ],
)
def test_bad_input_is_refused_with_the_field_named_and_nothing_written(
    owner, kwargs, field, problem
):
    arguments = {"event_type": "image.posted", **kwargs}
    with pytest.raises(InvalidEvent) as raised:
        record_event(owner, arguments.pop("event_type"), **arguments)
    assert raised.value.field == field
    assert problem in raised.value.problem
    assert not Event.objects.exists()


def test_deep_nesting_is_refused(owner):
    payload: dict = {}
    inner = payload
    for _ in range(11):
        inner["x"] = {}
        inner = inner["x"]
    with pytest.raises(InvalidEvent, match="nested at most 10 levels"):
        record_event(owner, "image.posted", payload=payload)


def test_reusing_an_event_id_for_a_different_fact_is_an_error_not_a_duplicate(owner, second_user):
    record_event(owner, "image.posted", event_id="shared-1")
    with pytest.raises(InvalidEvent) as raised:
        record_event(second_user, "image.posted", event_id="shared-1")
    assert raised.value.field == "event_id"
    with pytest.raises(InvalidEvent):
        record_event(owner, "visit.created", event_id="shared-1")
    assert Event.objects.count() == 1


def test_a_broker_outage_does_not_fail_the_producer_and_leaves_the_event_pending(
    owner, settings, monkeypatch, django_capture_on_commit_callbacks
):
    from kombu.exceptions import OperationalError

    from achievements import tasks

    def broker_down(*args):
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(tasks.evaluate_event_task, "delay", broker_down)
    monkeypatch.setattr(tasks.evaluate_pending_task, "delay", broker_down)
    settings.ACCOLADE_TASK_MODE = "celery"
    with django_capture_on_commit_callbacks(execute=True):
        recorded = record_event(owner, "image.posted")
    assert Event.objects.unprocessed().get() == recorded.event
    # The failed ask left no flag behind: the next event asks again at once.
    with django_capture_on_commit_callbacks(execute=True):
        record_event(owner, "image.posted")
    assert Event.objects.unprocessed().count() == 2


def test_an_unsaved_user_is_refused(db):
    from django.contrib.auth import get_user_model

    with pytest.raises(InvalidEvent) as raised:
        record_event(get_user_model()(username="ghost"), "image.posted")
    assert raised.value.field == "user"


def test_events_are_immutable(owner):
    event = record_event(owner, "image.posted").event
    event.payload = {"tampered": True}
    with pytest.raises(ValueError, match="immutable"):
        event.save()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("user_ids", "rounds"),
    [(("linked", "waiting"), 3), (("linked",), 1), (("waiting",), 1)],
    ids=["batch", "one linked", "one waiting"],
)
def test_a_batch_for_known_producer_ids_is_one_statement(
    postgresql_only, owner, monkeypatch, user_ids, rounds
):
    """No transaction around it either: the statement commits alone, and its
    events with a user are handed to the evaluator at once. A single event
    has a statement of its own (values, not arrays) that does the same."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from achievements import dispatch, events, index
    from achievements.events import ExternalEvent, RecordedEvent, record_external_events
    from achievements.models import ExternalIdentity

    handed: list[int] = []
    monkeypatch.setattr(dispatch, "enqueue_evaluations", handed.extend)
    forms: list[bool] = []
    statement = events._owned_insert_sql

    def spy(one: bool) -> str:
        forms.append(one)
        return statement(one)

    monkeypatch.setattr(events, "_owned_insert_sql", spy)
    ExternalIdentity.objects.create(external_id="linked", user=owner)
    ExternalIdentity.objects.create(external_id="waiting")
    batch = [
        ExternalEvent(user_id=user_id, event_type="image.posted", event_id=f"{user_id}-{n}")
        for n in range(rounds)
        for user_id in user_ids
    ]
    index.dedup_windows()  # the rules index is built
    with CaptureQueriesContext(connection) as queries:
        results = [r for r in record_external_events(batch) if isinstance(r, RecordedEvent)]
        assert handed == [r.event.pk for r in results if r.event.user_id]  # committed already
    assert len(queries) == 1, [q["sql"] for q in queries]
    assert forms == [len(batch) == 1]  # arrays for a batch, values for one event
    users = {"linked": owner.pk, "waiting": None}
    assert [(r.created, r.event.user_id) for r in results] == [
        (True, users[e.user_id]) for e in batch
    ]
    stored = Event.objects.order_by("pk").values_list(
        "pk", "event_id", "user_id", "external_user_id"
    )
    assert list(stored) == [
        (r.event.pk, e.event_id, r.event.user_id, e.user_id)
        for e, r in zip(batch, results, strict=True)
    ]


@pytest.mark.django_db(transaction=True)
def test_an_event_recorded_while_its_id_is_being_linked_gets_the_user(
    postgresql_only, owner, monkeypatch, batch_mates
):
    """The link holds the producer id's row while the one-statement recorder waits
    for it; the row, linked now, no longer matches, and the transaction that
    follows reads the linked user: no event is left waiting for a link that
    already happened."""
    import threading

    from django.db import connection

    from achievements.actions import link_external_identity
    from achievements.events import ExternalEvent, RecordedEvent, record_external_events
    from achievements.models import ExternalIdentity

    ExternalIdentity.objects.create(external_id="racing")
    holding, release, outcome = threading.Event(), threading.Event(), {}

    def link() -> None:
        try:
            with transaction.atomic():
                outcome["handed_over"] = link_external_identity("racing", owner.pk)
                holding.set()
                release.wait(30)
        finally:
            connection.close()

    linker = threading.Thread(target=link)
    linker.start()
    assert holding.wait(30)
    with connection.cursor() as cursor:
        recorder = cursor.connection.info.backend_pid

    def release_once_the_recorder_waits() -> None:
        try:
            _wait_for_a_lock_wait(recorder)
        finally:
            release.set()

    from achievements import events

    statements: list[dict] = []
    insert_owned = events._insert_owned

    def spy(rows, now, producer):
        statements.append(insert_owned(rows, now, producer))
        return statements[-1]

    monkeypatch.setattr(events, "_insert_owned", spy)
    watcher = threading.Thread(target=release_once_the_recorder_waits)
    watcher.start()
    result, *mates = record_external_events(
        [ExternalEvent(user_id="racing", event_type="image.posted", event_id="during-link")]
        + batch_mates
    )
    watcher.join(30)
    linker.join(30)
    # The one statement waited, then left the event alone (and took its batch-mates).
    assert statements == [{mate.event_id: ANY for mate in batch_mates}]
    assert all(isinstance(mate, RecordedEvent) and mate.created for mate in mates)
    assert outcome["handed_over"] == 0
    assert isinstance(result, RecordedEvent)
    assert result.created and result.event.user_id == owner.pk
    assert Event.objects.get(event_id="during-link").user_id == owner.pk


def test_the_events_table_keeps_only_the_indexes_its_queries_use(postgresql_only):
    """Every recorded event updates each index (and an evaluation, which sets
    processed_at, most of them again). A new one should be a decision."""
    from django.db import connection

    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, Event._meta.db_table)
    indexes = [
        name
        for name, spec in constraints.items()
        if spec["index"] or spec["unique"] or spec["primary_key"]
    ]
    assert sorted(indexes) == [
        "achievements_event_pkey",
        "event_dead_lettered",  # partial: dead-lettered events only
        "event_fingerprint",  # partial: de-duplicated types only
        "event_id_per_producer",  # unique: the producer's id, per producer
        "event_received",
        "event_type_occurred",
        "event_unprocessed",  # partial: waiting events only
        "event_user_occurred",
        "event_waiting_external",  # partial: waiting events only
    ]


@pytest.mark.django_db(transaction=True)
def test_an_event_for_a_linked_id_takes_no_lock_on_it(postgresql_only, owner, batch_mates):
    """Its user cannot change, so recording does not wait for (or write a lock
    to) the id's row: here another transaction holds the row, and recording
    still goes through at once."""
    import psycopg
    from django.db import connection

    from achievements.events import ExternalEvent, RecordedEvent, record_external_events
    from achievements.models import ExternalIdentity

    ExternalIdentity.objects.create(external_id="linked", user=owner)
    conninfo = connection.pool.kwargs | {"autocommit": False}  # type: ignore[attr-defined]
    with psycopg.connect(**conninfo) as holder:
        holder.execute(
            "SELECT 1 FROM achievements_externalidentity WHERE external_id = 'linked' FOR UPDATE"
        )
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '2s'")
        try:
            result, *_ = record_external_events(
                [ExternalEvent(user_id="linked", event_type="image.posted", event_id="free")]
                + batch_mates
            )
        finally:
            with connection.cursor() as cursor:
                cursor.execute("RESET lock_timeout")
        holder.rollback()
    assert isinstance(result, RecordedEvent)
    assert result.created and result.event.user_id == owner.pk


@pytest.mark.django_db(transaction=True)
def test_the_one_statement_insert_is_prepared_and_other_statements_are_not(
    postgresql_only, owner, batch_mates
):
    """PostgreSQL plans the insert once per connection; the engine's other
    statements, however often they run, are not prepared."""
    from django.db import connection

    from achievements.db import server_cursor
    from achievements.events import ExternalEvent, record_external_events
    from achievements.models import ExternalIdentity

    ExternalIdentity.objects.create(external_id="linked", user=owner)

    def prepared(start: str) -> int:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE %s",
                [start + "%"],
            )
            return cursor.fetchone()[0]

    with connection.cursor() as cursor:
        # A pooled connection keeps what earlier tests prepared; psycopg sees
        # the DEALLOCATE and forgets its own record of them too.
        cursor.execute("DEALLOCATE ALL")
    record_external_events(
        [ExternalEvent(user_id="linked", event_type="image.posted", event_id="p-1")] + batch_mates
    )
    assert prepared("WITH linked") == 1
    assert prepared("WITH linked%unnest(") == (1 if batch_mates else 0)  # arrays for a batch
    for _ in range(8):
        with server_cursor() as cursor:
            cursor.execute("SELECT 'not prepared', %s::int[]", [[1, 2]])
    assert prepared("SELECT 'not prepared'") == 0


@pytest.mark.django_db(transaction=True)
def test_an_event_recorded_as_its_linked_user_is_deleted_waits_for_a_link(
    postgresql_only, batch_mates
):
    """The one statement reads the linked user without a lock; the user's
    deletion commits while its foreign-key check waits, the check fails, and
    the batch goes through the transaction, which reads the id as unlinked."""
    import threading

    import psycopg
    from django.db import connection

    from achievements.events import ExternalEvent, RecordedEvent, record_external_events
    from achievements.models import ExternalIdentity
    from tests.factories import make_user

    doomed = make_user(username="doomed")
    ExternalIdentity.objects.create(external_id="leaving", user=doomed)
    conninfo = connection.pool.kwargs | {"autocommit": False}  # type: ignore[attr-defined]
    with connection.cursor() as cursor:
        recorder = cursor.connection.info.backend_pid
    deleter = psycopg.connect(**conninfo)
    # What deleting the user does: the id's user set to NULL, the user's row gone.
    deleter.execute(
        "UPDATE achievements_externalidentity SET user_id = NULL WHERE user_id = %s", [doomed.pk]
    )
    deleter.execute("DELETE FROM auth_user WHERE id = %s", [doomed.pk])

    def commit_once_the_recorder_waits() -> None:
        _wait_for_a_lock_wait(recorder)
        deleter.commit()
        deleter.close()

    committer = threading.Thread(target=commit_once_the_recorder_waits)
    committer.start()
    try:
        result, *mates = record_external_events(
            [ExternalEvent(user_id="leaving", event_type="image.posted", event_id="orphan")]
            + batch_mates
        )
    finally:
        committer.join(30)
    assert all(isinstance(mate, RecordedEvent) and mate.created for mate in mates)
    assert isinstance(result, RecordedEvent)
    assert result.created and result.event.user_id is None
    assert Event.objects.get(event_id="orphan").user_id is None


@pytest.fixture(params=["one event", "a batch"])
def batch_mates(request, db):
    """Events to record beside the one under test: none (the single-event
    statement) or one for another user's linked id (the batch's array statement)."""
    from achievements.events import ExternalEvent
    from achievements.models import ExternalIdentity
    from tests.factories import make_user

    if request.param == "one event":
        return []
    ExternalIdentity.objects.create(external_id="bystander", user=make_user(username="mate"))
    return [ExternalEvent(user_id="bystander", event_type="image.posted", event_id="mate")]


def _wait_for_a_lock_wait(backend_pid: int, timeout: float = 10) -> None:
    """Until that PostgreSQL backend waits for a lock (or `timeout` passes; the
    test's own assertions then say what went wrong)."""
    import time

    import psycopg
    from django.db import connection

    deadline = time.monotonic() + timeout
    conninfo = connection.pool.kwargs | {"autocommit": True}  # type: ignore[attr-defined]
    with psycopg.connect(**conninfo) as watcher:
        while time.monotonic() < deadline:
            waiting = watcher.execute(
                "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", [backend_pid]
            ).fetchone()
            if waiting == ("Lock",):
                return
            time.sleep(0.01)
