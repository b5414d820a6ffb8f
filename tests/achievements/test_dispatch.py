"""Drains: coalesced requests, batches, a backlog spread over workers, failures handed over."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from achievements import dispatch, engine, inflight, metrics, progress
from achievements.events import record_event
from achievements.inflight import BATCH, CHUNK, Entry
from achievements.models import Event, RequirementProgress, Unlock
from achievements.tasks import evaluate_pending_task
from tests.factories import make_images_badge


@pytest.fixture
def asked(monkeypatch):
    """Drain requests sent to the broker, recorded instead of sent: 1 for one
    sent at once, ("later", seconds) for one sent with a countdown."""
    sent: list[object] = []
    monkeypatch.setattr(evaluate_pending_task, "delay", lambda: sent.append(1))
    monkeypatch.setattr(
        evaluate_pending_task,
        "apply_async",
        lambda countdown=None, **kwargs: sent.append(("later", countdown)),
    )
    return sent


@pytest.fixture
def singled(monkeypatch):
    handed: list[int] = []
    monkeypatch.setattr(dispatch, "enqueue_single", handed.append)
    return handed


@pytest.fixture
def registry(real_redis):
    """The in-flight batch registry, empty before and after."""
    real_redis.delete(inflight._key())
    yield real_redis
    real_redis.delete(inflight._key())


def _dead_pid() -> int:
    """The pid of a process of this machine that has ended (and been reaped)."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def _entry(pks, *, kind=BATCH, pid=0, machine=None, worker="", age=0.0) -> str:
    return inflight.encode(
        Entry(time.time() - age, kind, machine or socket.gethostname(), pid, worker, tuple(pks))
    )


@pytest.fixture
def claims(monkeypatch):
    """How many events each of a drain's claims took, in order (the real claims)."""
    taken: list[int] = []
    original = dispatch.evaluate_events

    def claiming(**kwargs):
        result = original(**kwargs)
        taken.append(len(result.claimed))
        return result

    monkeypatch.setattr(dispatch, "evaluate_events", claiming)
    return taken


def _waiting(owner, count: int) -> list[int]:
    # Recorded outside any on_commit execution: nothing evaluates them yet.
    return [
        record_event(owner, "image.posted", payload={"image_id": n}).event.pk for n in range(count)
    ]


def test_events_ask_for_one_drain_while_one_is_pending(owner, settings, asked, db):
    settings.ACCOLADE_TASK_MODE = "celery"
    for pk in _waiting(owner, 5):
        dispatch.enqueue_evaluation(pk)
    assert asked == [1]
    dispatch.drain()  # clears the request once nothing is left
    dispatch.enqueue_evaluation(_waiting(owner, 1)[0])
    assert asked == [1, 1]


def test_an_event_committed_as_a_drain_runs_out_is_not_left_behind(
    owner, settings, asked, monkeypatch
):
    """It commits just before the drain clears the flag, so its request is
    swallowed: the drain's look after clearing the flag takes it."""
    settings.ACCOLADE_TASK_MODE = "celery"
    make_images_badge(threshold=10)
    dispatch.enqueue_evaluation(_waiting(owner, 1)[0])
    assert asked == [1]  # the drain below is this request's
    late: list[int] = []
    clear = dispatch._clear_flag

    def committing_just_before(*args: object) -> None:
        if not late:
            late.extend(_waiting(owner, 1))
            dispatch.enqueue_evaluation(late[0])  # the flag is still set: asks nobody
        clear()

    monkeypatch.setattr(dispatch, "_clear_flag", committing_just_before)
    assert dispatch.drain() == 2
    assert asked == [1]
    assert not Event.objects.filter(pk__in=late, processed_at=None).exists()
    dispatch.enqueue_evaluation(_waiting(owner, 1)[0])
    assert asked == [1, 1]  # the drain left the flag clear


def test_a_failing_drain_clears_the_flag_and_asks_for_another(
    owner, settings, asked, singled, monkeypatch
):
    """Events that committed while it held the flag asked nobody: a new drain takes them."""
    settings.ACCOLADE_TASK_MODE = "celery"
    dispatch.enqueue_evaluation(_waiting(owner, 1)[0])
    assert asked == [1]

    def failing(**kwargs):
        kwargs["on_claim"]([])
        dispatch.enqueue_evaluation(_waiting(owner, 1)[0])  # swallowed by the flag
        raise RuntimeError("the database went away")

    monkeypatch.setattr(dispatch, "evaluate_events", failing)
    assert dispatch.drain() == 0
    assert asked == [1, ("later", dispatch.RETRY_SECONDS)]
    dispatch.enqueue_evaluation(_waiting(owner, 1)[0])
    assert asked[-1] == 1  # the flag is clear again

    # A failure outside any batch (here, looking for lost batches) does the same.
    asked.clear()
    dispatch.enqueue_evaluation(_waiting(owner, 1)[0])
    monkeypatch.setattr(dispatch, "_recovered_at", float("-inf"))

    def broken() -> int:
        raise RuntimeError("Redis went away")

    monkeypatch.setattr(dispatch, "recover_lost_batches", broken)
    with pytest.raises(RuntimeError):
        dispatch.drain()
    assert asked == [("later", dispatch.RETRY_SECONDS)]
    dispatch.enqueue_evaluation(_waiting(owner, 1)[0])
    assert asked[-1] == 1


def test_a_drain_evaluates_every_waiting_event_a_batch_at_a_time(owner, settings, asked):
    make_images_badge(threshold=10)
    settings.ACCOLADE_EVALUATION_BATCH_SIZE = 3
    pks = _waiting(owner, 10)
    assert dispatch.drain() == 10
    assert not Event.objects.filter(pk__in=pks, processed_at=None).exists()
    assert Unlock.objects.filter(user=owner).count() == 1
    # The first full batch asked for another drain, so a second worker can help.
    assert asked == [1]
    assert dispatch.drain() == 0


def test_a_failing_batch_commits_the_rest_and_retries_the_failing_event_until_dead_lettered(
    owner, settings, asked, monkeypatch
):
    make_images_badge(threshold=10)
    settings.ACCOLADE_MAX_ATTEMPTS = 3
    settings.ACCOLADE_RETRY_BASE_SECONDS = 30
    pks = _waiting(owner, 5)
    poison = pks[2]
    original = progress.apply_fact

    def apply_fact(spec, state, fact, *args, **kwargs):
        if fact.payload.get("image_id") == 2:
            raise ValueError("cannot fold image 2")
        return original(spec, state, fact, *args, **kwargs)

    monkeypatch.setattr(progress, "apply_fact", apply_fact)
    # The batch fails, its halves are tried until the failure is one event: the rest commit.
    assert dispatch.drain() == 4
    assert set(Event.objects.filter(processed_at=None).values_list("pk", flat=True)) == {poison}
    assert RequirementProgress.objects.get(user=owner).value == 4
    event = Event.objects.get(pk=poison)
    assert event.attempts == 1 and "cannot fold image 2" in event.last_error
    assert event.status == "retrying" and event.retry_at is not None
    due_in = (event.retry_at - timezone.now()).total_seconds()
    assert 25 < due_in <= 30
    assert ("later", 30.0) in asked  # a drain for when the retry is due
    assert dispatch.drain() == 0  # not due yet: drains leave it alone

    # When it is due a drain takes it again; it fails each time, then is dead-lettered.
    for attempts in (2, 3):
        Event.objects.filter(pk=poison).update(retry_at=timezone.now())
        assert dispatch.drain() == 0
        event.refresh_from_db()
        assert event.attempts == attempts
    assert event.status == "dead-lettered" and event.retry_at is None
    assert "cannot fold image 2" in event.last_error
    assert RequirementProgress.objects.get(user=owner).value == 4


def test_a_database_out_of_reach_fails_no_event(owner, settings, asked, monkeypatch):
    from django.db import OperationalError

    pks = _waiting(owner, 3)

    def unreachable(**kwargs):
        kwargs["on_claim"](pks)
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(dispatch, "evaluate_events", unreachable)
    assert dispatch.drain() == 0
    assert asked == [("later", dispatch.RETRY_SECONDS)]
    assert not Event.objects.filter(pk__in=pks, attempts__gt=0).exists()


def test_a_batch_whose_process_died_is_tried_again_in_chunks(owner, asked, singled, registry):
    make_images_badge(threshold=10)
    pks = _waiting(owner, 5)
    Event.objects.filter(pk=pks[0]).update(processed_at=timezone.now())  # done before it died
    key = inflight._key()
    # Registered a moment ago by a process of this machine that is gone now.
    registry.hset(key, "gone", _entry(pks, pid=_dead_pid()))
    registry.hset(key, "busy", _entry(pks[:1], pid=os.getpid()))  # this one still runs
    assert dispatch.recover_lost_batches() == 4
    assert singled == []
    assert not Event.objects.filter(pk__in=pks, processed_at=None).exists()
    assert RequirementProgress.objects.get(user=owner).value == 4
    assert set(registry.hkeys(key)) == {b"busy"}


def test_the_events_of_a_lost_chunk_are_set_apart_for_the_per_event_task(
    owner, asked, singled, registry
):
    make_images_badge(threshold=10)
    pks = _waiting(owner, 3)
    registry.hset(inflight._key(), "chunk", _entry(pks, kind=CHUNK, pid=_dead_pid()))
    assert dispatch.recover_lost_batches() == 0
    assert singled == pks  # each alone, where a start counter finds the one that kills
    assert Event.objects.filter(pk__in=pks, isolated_at__isnull=False).count() == 3
    assert not engine.events_waiting()
    assert dispatch.drain() == 0  # drains leave them to the per-event task
    engine.evaluate_event(pks[0])  # which takes them
    assert RequirementProgress.objects.get(user=owner).value == 1


def test_a_batch_elsewhere_is_lost_once_its_worker_stops_beating(owner, asked, singled, registry):
    pks = _waiting(owner, 3)
    key = inflight._key()
    stale = metrics.WORKER_STALE_SECONDS + 1
    for name, pk in (("a", pks[0]), ("b", pks[1])):
        entry = _entry([pk], kind=CHUNK, machine="elsewhere", worker=f"w-{name}", age=stale)
        registry.hset(key, name, entry)
    # Written before entries named their owner: only the age tells.
    old = time.time() - inflight.LOST_AFTER_SECONDS - 1
    registry.hset(key, "old", f"{old}|{pks[2]}")
    registry.hset(key, "new", f"{time.time()}|{pks[2]}")
    metrics.heartbeat("w-a")
    try:
        dispatch.recover_lost_batches()
    finally:
        metrics.forget_worker("w-a")
    assert sorted(singled) == pks[1:]
    assert set(registry.hkeys(key)) == {b"a", b"new"}


def test_a_starting_worker_asks_for_a_drain_that_looks_for_lost_batches(
    owner, settings, monkeypatch
):
    sent: list[dict] = []
    monkeypatch.setattr(
        evaluate_pending_task, "apply_async", lambda kwargs=None, **options: sent.append(kwargs)
    )
    settings.ACCOLADE_TASK_MODE = "celery"
    dispatch.on_worker_start()
    assert sent == [{"recover": True}]
    settings.ACCOLADE_EVALUATION_BATCH_SIZE = 1  # one task per event: no drains to ask for
    dispatch.on_worker_start()
    assert sent == [{"recover": True}]


def test_the_sweeper_asks_for_one_drain_for_a_stranded_backlog(
    owner, settings, singled, registry, monkeypatch
):
    sent: list[dict] = []
    monkeypatch.setattr(
        evaluate_pending_task, "apply_async", lambda kwargs=None, **options: sent.append(kwargs)
    )
    settings.ACCOLADE_TASK_MODE = "celery"
    pks = _waiting(owner, 4)
    old = timezone.now() - timedelta(minutes=10)
    Event.objects.filter(pk__in=pks).update(received_at=old)
    Event.objects.filter(pk=pks[3]).update(isolated_at=old)
    assert dispatch.sweep_stranded_events(older_than_seconds=60) == 4
    assert sent == [{"recover": True}]  # the backlog goes at batch speed
    assert singled == [pks[3]]  # the one set apart goes alone again
    assert not Event.objects.filter(pk__in=pks[:3], swept_at__isnull=False).exists()
    Event.objects.filter(pk__in=pks).update(processed_at=timezone.now())
    assert dispatch.sweep_stranded_events(older_than_seconds=60) == 0
    assert sent == [{"recover": True}]


def test_a_landed_batch_leaves_nothing_in_flight(owner, asked, registry, monkeypatch):
    make_images_badge(threshold=10)
    seen: list[dict] = []
    original = dispatch.evaluate_events

    def watching(**kwargs):
        def on_claim(pks):
            kwargs["on_claim"](pks)
            if pks:  # the drain's last claim finds nothing
                seen.append(registry.hgetall(inflight._key()))

        return original(limit=kwargs["limit"], on_claim=on_claim)

    monkeypatch.setattr(dispatch, "evaluate_events", watching)
    pks = _waiting(owner, 2)
    assert dispatch.drain() == 2
    [registered] = seen
    [entry] = registered.values()
    assert entry.decode().endswith("|" + ",".join(map(str, pks)))
    assert registry.hlen(inflight._key()) == 0


def test_a_drain_takes_events_that_arrive_while_it_works(owner, settings, asked, monkeypatch):
    """No new drain message per batch under steady load: the next batch is claimed at once."""
    make_images_badge(threshold=10)
    settings.ACCOLADE_EVALUATION_BATCH_SIZE = 5
    first = _waiting(owner, 2)
    later: list[int] = []
    original = dispatch.evaluate_events

    def arriving(**kwargs):
        result = original(**kwargs)
        if not later:  # two more events commit while the first batch works
            later.extend(_waiting(owner, 2))
        return result

    monkeypatch.setattr(dispatch, "evaluate_events", arriving)
    assert dispatch.drain() == 4
    assert not Event.objects.filter(pk__in=first + later, processed_at=None).exists()
    assert asked == []  # neither batch was full: nothing to spread


def test_a_drains_last_look_is_a_read_not_a_claim(owner, asked, claims, monkeypatch):
    """After a batch a drain claims again at once (under load the next batch is
    often waiting); its last look, after clearing its flag, is a read outside
    any transaction, not a claim's three round trips."""
    make_images_badge(threshold=10)
    looks: list[bool] = []

    def looking() -> bool:
        looks.append(engine.events_waiting())
        return looks[-1]

    monkeypatch.setattr(dispatch, "events_waiting", looking)
    _waiting(owner, 3)
    assert dispatch.drain() == 3
    assert (claims, looks) == ([3, 0], [False])


def test_an_event_committed_as_the_flag_clears_is_found_by_the_last_look(
    owner, asked, claims, monkeypatch
):
    make_images_badge(threshold=10)
    late: list[int] = []

    def looking() -> bool:
        if not late:  # committed after the flag was cleared: it asked nobody
            late.extend(_waiting(owner, 1))
        return engine.events_waiting()

    monkeypatch.setattr(dispatch, "events_waiting", looking)
    _waiting(owner, 2)
    assert dispatch.drain() == 3
    assert claims == [2, 0, 1, 0]
    assert not Event.objects.filter(processed_at=None).exists()


def test_the_look_for_waiting_events_sees_every_event_a_claim_could_take(owner):
    assert not engine.events_waiting()
    [pk] = _waiting(owner, 1)
    assert engine.events_waiting()
    Event.objects.filter(pk=pk).update(retry_at=timezone.now() + timedelta(minutes=1))
    assert not engine.events_waiting()  # held back until its retry is due
    Event.objects.filter(pk=pk).update(retry_at=timezone.now() - timedelta(seconds=1))
    assert engine.events_waiting()
    Event.objects.filter(pk=pk).update(dead_lettered_at=timezone.now())
    assert not engine.events_waiting()
    Event.objects.filter(pk=pk).update(dead_lettered_at=None, processed_at=timezone.now())
    assert not engine.events_waiting()
    Event.objects.create(event_id="nobody", event_type="image.posted", occurred_at=timezone.now())
    assert not engine.events_waiting()  # no user linked yet: not for a drain


def test_drains_look_for_lost_batches_every_few_seconds(owner, asked, monkeypatch):
    looked: list[int] = []

    def recover() -> int:
        looked.append(1)
        return 0

    monkeypatch.setattr(dispatch, "recover_lost_batches", recover)
    dispatch.drain()
    dispatch.drain()
    assert looked == [1]
    monkeypatch.setattr(
        dispatch, "_recovered_at", time.monotonic() - dispatch.RECOVERY_INTERVAL_SECONDS - 1
    )
    dispatch.drain()
    assert looked == [1, 1]


def test_a_running_sum_past_what_a_column_holds_stays_at_the_limit(owner, settings, asked):
    """Each value fits (larger ones are refused when recorded); their sum does not.
    It is kept at the limit, which compares the same with every storable threshold."""
    from achievements.rules import STORED_NUMBER_MAX
    from tests.factories import make_badge

    badge = make_badge(
        key="high_scorer",
        requirements=[
            {
                "event_type": "score.added",
                "threshold": 10**14 - 1,
                "aggregation": "sum",
                "field": "points",
            }
        ],
    )
    for n in range(3):
        record_event(owner, "score.added", payload={"points": 9 * 10**13}, event_id=f"s-{n}")
    assert dispatch.drain() == 3
    assert not Event.objects.filter(processed_at=None).exists()
    assert RequirementProgress.objects.get(user=owner).value == STORED_NUMBER_MAX
    assert Unlock.objects.filter(user=owner, badge=badge).count() == 1
