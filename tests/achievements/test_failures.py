"""Poison events, retries, dead letters, re-drive and the sweeper."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from achievements import dispatch, engine, progress
from achievements.events import record_event
from achievements.models import Event, RequirementProgress
from achievements.tasks import evaluate_event_task
from tests.factories import make_images_badge


@pytest.fixture
def poison(monkeypatch):
    """Make every evaluation of an image.posted event fail, as a broken rule would."""

    original = progress.apply_fact

    def explode(spec, state, fact, time_zone, **kwargs):
        if fact.event_type == "image.posted":
            raise ZeroDivisionError("the rule divides by zero")
        return original(spec, state, fact, time_zone, **kwargs)

    monkeypatch.setattr(progress, "apply_fact", explode)
    return monkeypatch


def test_a_failure_is_counted_with_its_error_and_a_retry_is_scheduled(owner, settings):
    settings.ACCOLADE_MAX_ATTEMPTS = 3
    event = record_event(owner, "image.posted").event
    failure = dispatch.record_evaluation_failure(event.pk, "Traceback: boom")
    event.refresh_from_db()
    assert (failure.attempts, failure.dead_lettered) == (1, False)
    assert event.attempts == 1 and event.last_error == "Traceback: boom"
    assert event.retry_at is not None and event.status == "retrying"


def test_retry_delays_grow_exponentially_up_to_a_cap(settings):
    settings.ACCOLADE_RETRY_BASE_SECONDS = 2
    settings.ACCOLADE_RETRY_MAX_SECONDS = 20
    assert [dispatch.retry_delay(n) for n in range(1, 7)] == [2, 4, 8, 16, 20, 20]


def test_the_task_retries_then_dead_letters_a_poison_event(owner, settings, poison):
    settings.ACCOLADE_MAX_ATTEMPTS = 3
    settings.ACCOLADE_RETRY_BASE_SECONDS = 0
    make_images_badge(threshold=1)
    event = record_event(owner, "image.posted").event
    # Run the task as Celery's worker would, retries included (eager mode).
    evaluate_event_task.apply(args=[event.pk])
    event.refresh_from_db()
    assert event.status == "dead-lettered"
    assert event.attempts == 3
    assert "ZeroDivisionError: the rule divides by zero" in event.last_error
    assert event.processed_at is None


def test_a_poison_event_does_not_block_other_events(owner, settings, poison):
    settings.ACCOLADE_MAX_ATTEMPTS = 2
    settings.ACCOLADE_RETRY_BASE_SECONDS = 0
    from tests.factories import make_places_badge

    make_places_badge(threshold=5)
    bad = record_event(owner, "image.posted").event
    good = record_event(owner, "visit.created", payload={"place_id": 1}).event
    evaluate_event_task.apply(args=[bad.pk])
    evaluate_event_task.apply(args=[good.pk])
    good.refresh_from_db()
    assert good.status == "processed"
    assert RequirementProgress.objects.get(user=owner).value == 1


def test_a_dead_lettered_event_is_not_claimed_or_swept(owner, settings):
    settings.ACCOLADE_MAX_ATTEMPTS = 1
    event = record_event(owner, "image.posted").event
    dispatch.record_evaluation_failure(event.pk, "boom")
    assert engine.evaluate_event(event.pk) is None
    Event.objects.filter(pk=event.pk).update(received_at=timezone.now() - timedelta(hours=1))
    assert dispatch.sweep_stranded_events(older_than_seconds=60) == 0


def test_redriving_after_a_fix_processes_the_event_once(
    owner, settings, poison, django_capture_on_commit_callbacks
):
    settings.ACCOLADE_MAX_ATTEMPTS = 1
    make_images_badge(threshold=1)
    event = record_event(owner, "image.posted").event
    evaluate_event_task.apply(args=[event.pk])
    event.refresh_from_db()
    assert event.status == "dead-lettered"

    poison.undo()  # the rule is fixed
    with django_capture_on_commit_callbacks(execute=True):
        assert dispatch.redrive_events([event.pk]) == 1
    event.refresh_from_db()
    assert event.status == "processed" and event.attempts == 0
    assert RequirementProgress.objects.get(user=owner).value == 1
    assert dispatch.redrive_events([event.pk]) == 0


def test_the_sweeper_re_enqueues_only_events_nobody_is_working_on(owner, monkeypatch):
    old = timezone.now() - timedelta(minutes=10)
    stranded = record_event(owner, "image.posted", event_id="stranded").event
    fresh = record_event(owner, "image.posted", event_id="fresh").event
    retrying = record_event(owner, "image.posted", event_id="retrying").event
    done = record_event(owner, "image.posted", event_id="done").event
    Event.objects.filter(pk__in=[stranded.pk, retrying.pk, done.pk]).update(received_at=old)
    Event.objects.filter(pk=retrying.pk).update(retry_at=timezone.now() + timedelta(minutes=1))
    engine.evaluate_event(done.pk)

    enqueued: list[int] = []
    monkeypatch.setattr(dispatch, "enqueue_single", enqueued.append)
    assert dispatch.sweep_stranded_events(older_than_seconds=300) == 1
    assert enqueued == [stranded.pk]
    # The message is lost again: the stamp keeps the next sweep from repeating
    # it within the period, and processed or fresh events are never swept.
    assert dispatch.sweep_stranded_events(older_than_seconds=300) == 0
    Event.objects.filter(pk=stranded.pk).update(swept_at=old)
    assert dispatch.sweep_stranded_events(older_than_seconds=300) == 1
    assert enqueued == [stranded.pk, stranded.pk]
    fresh.refresh_from_db()
    retrying.refresh_from_db()
    assert fresh.swept_at is None and retrying.swept_at is None


def test_swept_duplicates_of_a_processed_event_count_once(owner):
    make_images_badge(threshold=10)
    event = record_event(owner, "image.posted").event
    for _ in range(3):
        engine.evaluate_event(event.pk)
    assert RequirementProgress.objects.get(user=owner).value == 1


def test_staff_can_redrive_from_the_admin(client, owner, settings, poison):
    from django.contrib.auth import get_user_model

    settings.ACCOLADE_MAX_ATTEMPTS = 1
    make_images_badge(threshold=1)
    event = record_event(owner, "image.posted").event
    evaluate_event_task.apply(args=[event.pk])
    admin = get_user_model().objects.create_superuser("root", "r@example.com", "pw")
    client.force_login(admin)
    page = client.get("/admin/achievements/event/?status=dead").content.decode()
    assert event.event_id in page
    detail = client.get(f"/admin/achievements/event/{event.pk}/change/").content.decode()
    assert "ZeroDivisionError" in detail
    poison.undo()
    response = client.post(
        "/admin/achievements/event/",
        {"action": "redrive", "_selected_action": [event.pk]},
        follow=True,
    )
    assert "Re-queued 1 dead-lettered event(s)." in response.content.decode()
    event.refresh_from_db()
    assert event.dead_lettered_at is None


def test_an_event_that_keeps_killing_the_worker_is_dead_lettered(owner, settings):
    """A crash raises nothing; counting starts catches the loop that redelivery creates."""
    from django.core.cache import cache

    settings.ACCOLADE_MAX_ATTEMPTS = 3
    make_images_badge(threshold=1)
    event = record_event(owner, "image.posted").event
    # Three starts ended with the process dying (nothing was recorded in the database).
    cache.set(dispatch.starts_key(event.pk), 3)
    evaluate_event_task.apply(args=[event.pk])
    event.refresh_from_db()
    assert event.status == "dead-lettered"
    assert "worker process died 3 time(s)" in event.last_error
    assert not RequirementProgress.objects.exists()


def test_a_second_delivery_failing_while_a_retry_is_pending_starts_no_second_chain(
    owner, settings
):
    settings.ACCOLADE_MAX_ATTEMPTS = 5
    settings.ACCOLADE_RETRY_BASE_SECONDS = 60
    event = record_event(owner, "image.posted").event
    first = dispatch.record_evaluation_failure(event.pk, "boom")
    second = dispatch.record_evaluation_failure(event.pk, "boom again")
    event.refresh_from_db()
    assert first.retry_in == 60 and second.retry_in is None
    assert event.attempts == 1 and event.last_error == "boom"


def test_redriving_an_event_that_killed_workers_processes_it(
    owner, settings, django_capture_on_commit_callbacks
):
    """The crash count lives in the cache: a re-drive forgets it, or the event's
    first start after the re-drive would dead-letter it again."""
    from django.core.cache import cache

    settings.ACCOLADE_MAX_ATTEMPTS = 3
    make_images_badge(threshold=1)
    event = record_event(owner, "image.posted").event
    cache.set(dispatch.starts_key(event.pk), 3)  # three starts, each ended by the process dying
    evaluate_event_task.apply(args=[event.pk])
    event.refresh_from_db()
    assert event.status == "dead-lettered"

    with django_capture_on_commit_callbacks(execute=True):
        assert dispatch.redrive_events([event.pk]) == 1
    assert cache.get(dispatch.starts_key(event.pk)) is None
    evaluate_event_task.apply(args=[event.pk])  # the message the re-drive sent, in a worker
    event.refresh_from_db()
    assert event.status == "processed", event.last_error
    assert (event.attempts, event.last_error, event.isolated_at) == (0, "", None)
    assert RequirementProgress.objects.get(user=owner).value == 1


def test_a_failing_hand_off_after_commit_is_logged_by_name(
    transactional_db, settings, monkeypatch, caplog
):
    """In the synchronous mode an evaluation that raises runs inside the on-commit
    hook; the log names the hook and the error, not an AttributeError of its own."""
    from tests.factories import make_user

    settings.ACCOLADE_TASK_MODE = "sync"
    owner = make_user(username="committer")

    def broken(event_pk):
        raise ZeroDivisionError("the rule divides by zero")

    monkeypatch.setattr(engine, "evaluate_event", broken)
    with caplog.at_level("ERROR"):
        event = record_event(owner, "image.posted").event  # outside atomic(): commits at once
    assert Event.objects.filter(pk=event.pk).exists()
    [record] = [r for r in caplog.records if "on_commit" in r.getMessage()]
    assert "_committed" in record.getMessage()
    assert "the rule divides by zero" in record.getMessage()
    assert record.exc_info[0] is ZeroDivisionError


def test_staff_see_retrying_events_with_their_next_attempt(client, owner, settings):
    from django.contrib.auth import get_user_model

    settings.ACCOLADE_RETRY_BASE_SECONDS = 60
    retrying = record_event(owner, "image.posted", event_id="retrying-1").event
    record_event(owner, "image.posted", event_id="pending-1")
    dispatch.record_evaluation_failure(retrying.pk, "Traceback ...\nValueError: bad payload")
    admin = get_user_model().objects.create_superuser("root", "r@example.com", "pw")
    client.force_login(admin)
    page = client.get("/admin/achievements/event/?status=retrying").content.decode()
    assert "retrying-1" in page and "pending-1" not in page
    detail = client.get(f"/admin/achievements/event/{retrying.pk}/change/").content.decode()
    assert "retrying" in detail and "ValueError: bad payload" in detail
    assert "Isolated at" in detail
