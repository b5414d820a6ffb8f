"""Drains: coalesced requests, batches, a backlog spread over workers, failures handed over."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.utils import timezone

from achievements import dispatch, engine, progress
from achievements.events import record_event
from achievements.models import Event, Unlock
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
    real_redis.delete(dispatch._registry_key())
    yield real_redis
    real_redis.delete(dispatch._registry_key())


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


def test_a_failing_batch_hands_its_events_to_the_per_event_task(
    owner, settings, asked, singled, monkeypatch
):
    make_images_badge(threshold=10)
    pks = _waiting(owner, 4)
    poison = Event.objects.get(pk=pks[2]).event_id
    original = progress.apply_fact

    def apply_fact(spec, state, fact, *args, **kwargs):
        if fact.payload.get("image_id") == 2:
            raise ValueError(f"cannot fold {poison}")
        return original(spec, state, fact, *args, **kwargs)

    monkeypatch.setattr(progress, "apply_fact", apply_fact)
    assert dispatch.drain() == 0
    assert singled == pks  # each alone, where the poison is retried and dead-lettered
    held = Event.objects.filter(pk__in=pks, processed_at=None, retry_at__gt=timezone.now())
    assert held.count() == 4
    assert dispatch.drain() == 0  # drains leave held events to the per-event task


def test_a_batch_lost_with_its_worker_is_handed_over_by_a_later_drain(
    owner, asked, singled, registry
):
    pks = _waiting(owner, 3)
    Event.objects.filter(pk=pks[0]).update(processed_at=timezone.now())  # done before it died
    died = time.time() - dispatch.LOST_AFTER_SECONDS - 1
    registry.hset(dispatch._registry_key(), "gone", f"{died}|{','.join(map(str, pks))}")
    registry.hset(dispatch._registry_key(), "busy", f"{time.time()}|{pks[0]}")
    # The lost batch's waiting events go one by one; the recent batch is left alone.
    assert dispatch.recover_lost_batches() == 3
    assert singled == pks[1:]
    assert set(registry.hkeys(dispatch._registry_key())) == {b"busy"}


def test_a_landed_batch_leaves_nothing_in_flight(owner, asked, registry, monkeypatch):
    make_images_badge(threshold=10)
    seen: list[dict] = []
    original = dispatch.evaluate_events

    def watching(**kwargs):
        def on_claim(pks):
            kwargs["on_claim"](pks)
            if pks:  # the drain's last claim finds nothing
                seen.append(registry.hgetall(dispatch._registry_key()))

        return original(limit=kwargs["limit"], on_claim=on_claim)

    monkeypatch.setattr(dispatch, "evaluate_events", watching)
    pks = _waiting(owner, 2)
    assert dispatch.drain() == 2
    [registered] = seen
    [entry] = registered.values()
    assert entry.decode().endswith("|" + ",".join(map(str, pks)))
    assert registry.hlen(dispatch._registry_key()) == 0


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
