"""Races on the real database: PostgreSQL row locks are the point, so no SQLite stand-in."""

from __future__ import annotations

import random
import threading
import time

import pytest
from django.db import connection
from django.utils import timezone

from achievements.engine import evaluate_event
from achievements.models import Event, RequirementProgress, UserBadge
from tests.factories import make_badge, make_images_badge, make_places_badge

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("postgresql_only")]


def test_workers_racing_over_one_users_events_count_each_once_and_unlock_once(owner):
    """Four threads, each with its own connection, all try to evaluate every event
    (as redelivered messages would), in different orders, at the same moment."""
    images = make_images_badge(threshold=15)
    places = make_places_badge(threshold=10)
    now = timezone.now()
    events = Event.objects.bulk_create(
        [
            Event(event_id=f"img-{n}", event_type="image.posted", user=owner, occurred_at=now)
            for n in range(20)
        ]
        + [
            Event(
                event_id=f"visit-{n}",
                event_type="visit.created",
                user=owner,
                occurred_at=now,
                payload={"place_id": n % 12},
            )
            for n in range(30)
        ]
    )
    keys = [event.pk for event in events]
    start = threading.Barrier(4)
    claimed: list[int] = []
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        order = keys[:]
        random.Random(seed).shuffle(order)
        try:
            start.wait()
            for key in order:
                if evaluate_event(key) is not None:
                    claimed.append(key)
        except BaseException as exc:  # surfaced below, with the thread's traceback lost otherwise
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert errors == []
    assert sorted(claimed) == sorted(keys), "every event is evaluated exactly once"
    assert not Event.objects.unprocessed().exists()
    values = dict(
        RequirementProgress.objects.filter(user=owner).values_list("requirement__badge", "value")
    )
    assert values == {images.pk: 20, places.pk: 12}
    unlocked = UserBadge.objects.filter(user=owner, completed_at__isnull=False)
    assert sorted(unlocked.values_list("badge", flat=True)) == sorted([images.pk, places.pk])
    for user_badge in unlocked:
        assert user_badge.completed_by_event is not None
    # The images badge was completed by the 15th image evaluated, whichever that was.
    images_row = unlocked.get(badge=images)
    assert images_row.completed_by_event is not None
    assert images_row.completed_by_event.event_type == "image.posted"


def test_an_evaluation_commits_while_another_records_the_badges_first_version(owner):
    """Rows pointing at a badge check their foreign key at commit (KEY SHARE on the
    badge); the first unlock of a badge with no version records one under a lock
    on the badge. With FOR UPDATE there, two workers each recording a version of
    one badge and committing rows of the other deadlocked (seen in a replay in
    two processes); the version lock now lets such commits through."""
    from django.db import transaction

    from achievements.versions import current_version

    badge = make_places_badge(threshold=3)
    holding, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def recorder() -> None:
        try:
            with transaction.atomic():
                current_version(badge.pk)  # locks the badge until this commits
                holding.set()
                release.wait(10)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=recorder)
    thread.start()
    try:
        assert holding.wait(10)
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '2s'")
        try:
            with transaction.atomic():  # commits, or times out waiting for the recorder
                UserBadge.objects.create(user=owner, badge=badge)
        finally:
            with connection.cursor() as cursor:
                cursor.execute("SET lock_timeout = 0")
    finally:
        release.set()
        thread.join()
    assert errors == []
    assert UserBadge.objects.filter(user=owner, badge=badge).exists()


def test_two_batches_creating_one_users_standing_both_count(owner):
    """The second batch waits for the first one's new row and then locks it as
    committed: a lock read from the statement's own snapshot would miss it."""
    from unittest import mock

    from achievements import engine, store

    badge = make_badge(
        key="visits", requirements=[{"event_type": "visit.created", "threshold": 5}]
    )
    now = timezone.now()
    first, second = Event.objects.bulk_create(
        [
            Event(event_id=f"visit-{n}", event_type="visit.created", user=owner, occurred_at=now)
            for n in range(2)
        ]
    )
    locked, waiting = threading.Event(), threading.Event()
    errors: list[BaseException] = []
    real_lock = store.lock_standings

    def lock(wanted, users, badges, read):
        standings = real_lock(wanted, users, badges, read)

        def locked_rows():
            rows = standings()  # the statements have run: the rows are locked
            if threading.current_thread().name == "first":
                locked.set()  # holds the new, uncommitted row
                assert waiting.wait(10), "the second batch never waited for the row"
            return rows

        return locked_rows

    def run(event: Event) -> None:
        try:
            engine.evaluate_events([event.pk])
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    with mock.patch.object(store, "lock_standings", lock):
        threads = [threading.Thread(target=run, args=(first,), name="first")]
        threads[0].start()
        assert locked.wait(10)
        threads.append(threading.Thread(target=run, args=(second,), name="second"))
        threads[1].start()
        for _ in range(200):  # until the second batch waits on the first's row
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
                if cursor.fetchone()[0]:
                    waiting.set()
                    break
            time.sleep(0.05)
        for thread in threads:
            thread.join(30)
    assert errors == []
    assert UserBadge.objects.get(user=owner, badge=badge).current_value == 2
    assert not Event.objects.unprocessed().exists()


@pytest.fixture
def slow_engine_commit(monkeypatch):
    """An evaluation that holds its locks a moment after writing, before it commits,
    so a grant or revocation sent meanwhile meets it mid-transaction."""
    from achievements import store

    save = store.Writes.save

    def slow_save(self):
        written = save(self)
        if threading.current_thread().name == "engine":
            time.sleep(0.4)
        return written

    monkeypatch.setattr(store.Writes, "save", slow_save)


def _second_image(user):
    """An image that completes the badge, after one whose evaluation made the standing row
    (so nothing but the standing's lock orders the two)."""
    for n in (1, 2):
        event = Event.objects.create(
            event_id=f"img-{n}", event_type="image.posted", user=user, occurred_at=timezone.now()
        )
        if n == 1:
            evaluate_event(event.pk)
    return event


def _engine_then(evaluation, award):
    """Evaluate, and a moment later (inside the evaluation's transaction) grant or
    revoke: the serial order is evaluation first. The award's errors."""
    errors: list[BaseException] = []

    def run(job, pause) -> None:
        try:
            time.sleep(pause)
            job()
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [
        threading.Thread(target=run, args=(evaluation, 0), name="engine"),
        threading.Thread(target=run, args=(award, 0.15), name="staff"),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return errors


def test_a_grant_meeting_an_unlock_of_the_same_badge_waits_and_is_refused(
    owner, staff_user, slow_engine_commit
):
    """The grant waits for the evaluation's lock, then finds the badge held: one held
    unlock, its one ledger entry, and a clear refusal, never a database error."""
    from achievements.awards import Actor, AwardRefused, grant_badge
    from achievements.models import LedgerEntry, Unlock

    badge = make_images_badge(threshold=2)
    event = _second_image(owner)
    errors = _engine_then(
        lambda: evaluate_event(event.pk),
        lambda: grant_badge(user_id=owner.pk, badge=badge, reason="race", by=Actor(staff_user.pk)),
    )
    assert len(errors) == 1 and isinstance(errors[0], AwardRefused), errors
    [held] = Unlock.objects.held().filter(user=owner, badge=badge)
    assert not held.granted
    assert list(LedgerEntry.objects.values_list("unlock", "kind")) == [(held.pk, "earned")]
    assert UserBadge.objects.get(user=owner, badge=badge).completed_at == held.unlocked_at


def test_a_revocation_meeting_the_unlock_it_revokes_waits_and_revokes_it(
    owner, staff_user, slow_engine_commit
):
    """Serially (the unlock first) the badge ends revoked and withheld; so it does
    when the revocation arrives while the unlock is being written."""
    from achievements.awards import Actor, revoke_badge
    from achievements.models import Unlock

    badge = make_images_badge(threshold=2)
    event = _second_image(owner)
    errors = _engine_then(
        lambda: evaluate_event(event.pk),
        lambda: revoke_badge(
            user_id=owner.pk, badge=badge, reason="race", by=Actor(staff_user.pk)
        ),
    )
    assert errors == []
    [ended] = Unlock.objects.filter(user=owner, badge=badge)
    assert ended.ending == "revoked"
    standing = UserBadge.objects.get(user=owner, badge=badge)
    assert (standing.completed_at, standing.tier, standing.withheld) == (None, 0, [""])


def _in_processes(evaluation, award):
    """As _engine_then, in two worker processes (forked, each with its own database
    connection): the evaluation first, the award a moment later, meeting it inside
    its transaction. The award's error, by class name, if it raised."""
    import multiprocessing

    from django.db import connections

    # The children must not share the parent's sockets, nor its pool's.
    for wrapper in connections.all(initialized_only=True):
        wrapper.close()
        if wrapper.alias in getattr(wrapper, "_connection_pools", {}):
            wrapper.close_pool()  # type: ignore[attr-defined]  # PostgreSQL's pool
    context = multiprocessing.get_context("fork")
    errors = context.Queue()

    def run(job, pause, name) -> None:
        threading.current_thread().name = name
        try:
            time.sleep(pause)
            job()
        except BaseException as exc:
            errors.put(f"{type(exc).__name__}: {exc}")
        finally:
            connection.close()

    processes = [
        context.Process(target=run, args=(evaluation, 0, "engine")),
        context.Process(target=run, args=(award, 0.15, "staff")),
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
    assert [process.exitcode for process in processes] == [0, 0]
    found = []
    while not errors.empty():
        found.append(errors.get())
    return found


def test_in_two_worker_processes_a_revocation_and_an_unlock_end_as_serial_processing_does(
    owner, staff_user, slow_engine_commit
):
    from achievements.awards import Actor, revoke_badge
    from achievements.models import LedgerEntry, Unlock

    badge = make_images_badge(threshold=2)
    event = _second_image(owner)
    errors = _in_processes(
        lambda: evaluate_event(event.pk),
        lambda: revoke_badge(
            user_id=owner.pk, badge=badge, reason="race", by=Actor(staff_user.pk)
        ),
    )
    assert errors == []
    [ended] = Unlock.objects.filter(user=owner, badge=badge)
    assert ended.ending == "revoked"
    assert list(LedgerEntry.objects.order_by("id").values_list("kind", flat=True)) == [
        "earned",
        "revoked",
    ]
    standing = UserBadge.objects.get(user=owner, badge=badge)
    assert (standing.completed_at, standing.withheld) == (None, [""])


def test_in_two_worker_processes_a_grant_meeting_an_unlock_is_refused(
    owner, staff_user, slow_engine_commit
):
    from achievements.awards import Actor, grant_badge
    from achievements.models import LedgerEntry, Unlock

    badge = make_images_badge(threshold=2)
    event = _second_image(owner)
    errors = _in_processes(
        lambda: evaluate_event(event.pk),
        lambda: grant_badge(user_id=owner.pk, badge=badge, reason="race", by=Actor(staff_user.pk)),
    )
    assert [e.split(":")[0] for e in errors] == ["AwardRefused"], errors
    [held] = Unlock.objects.held().filter(user=owner, badge=badge)
    assert not held.granted
    assert list(LedgerEntry.objects.values_list("kind", flat=True)) == ["earned"]


@pytest.mark.parametrize("first", ["evaluation", "schedule"])
def test_in_two_worker_processes_a_loss_by_the_rule_and_an_unlock_end_as_serial_processing_does(
    owner, slow_engine_commit, monkeypatch, first
):
    """A badge held while its rule holds (2 photos in the last 7 days), due to be lost:
    the schedule ending it and a new photo earning it again, in two processes at
    once, in either order, tell what serial processing tells: earned, lost at the
    moment the rule stopped holding, earned again by the new photo."""
    from datetime import UTC, timedelta

    from achievements import periods
    from achievements.engine import evaluate_events
    from achievements.expiry import run_schedule
    from achievements.models import BadgeRequirement, LedgerEntry
    from tests.achievements.test_holding import Clock

    badge = make_images_badge(threshold=2)
    badge.holds_while_met = True
    badge.save()
    BadgeRequirement.objects.filter(badge=badge).update(scope="rolling", window_days=7)
    clock = Clock()
    monkeypatch.setattr(timezone, "now", clock)
    start = clock.at = timezone.now().astimezone(UTC) - timedelta(days=20)
    for n in (1, 2):
        event = Event.objects.create(
            event_id=f"img-{n}", event_type="image.posted", user=owner, occurred_at=start
        )
        evaluate_event(event.pk)
    lost_at = periods.start_of_day(start.date() + timedelta(days=7), "UTC")
    assert UserBadge.objects.get(user=owner, badge=badge).expires_at == lost_at
    later = clock.at = start + timedelta(days=10)
    photo = Event.objects.create(
        event_id="img-3", event_type="image.posted", user=owner, occurred_at=later
    )
    again = Event.objects.create(
        event_id="img-4", event_type="image.posted", user=owner, occurred_at=later
    )
    jobs = {
        "evaluation": lambda: evaluate_events([photo.pk, again.pk]),
        "schedule": run_schedule,
    }
    second = "schedule" if first == "evaluation" else "evaluation"
    errors = _in_processes(jobs[first], jobs[second])
    assert errors == []
    told = [
        (entry.kind, entry.unlock.event_ids[-1], entry.at if entry.kind == "lapsed" else None)
        for entry in LedgerEntry.objects.order_by("id")
    ]
    assert told == [
        ("earned", "img-2", None),
        ("lapsed", "img-2", lost_at),
        ("earned", "img-4", None),
    ]
