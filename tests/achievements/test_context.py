"""Task-scoped context never outlives its task."""

from __future__ import annotations

from django.utils import timezone

from accounts.models import Profile
from achievements import context, progress
from achievements.events import record_event
from achievements.tasks import evaluate_event_task
from tests.factories import make_images_badge


def test_evaluation_runs_in_the_users_time_zone(owner, monkeypatch):
    Profile.objects.create(user=owner, time_zone="America/Santiago")
    make_images_badge(threshold=5)
    seen = []
    original = progress.apply_fact

    def spy(spec, state, fact, time_zone, **kwargs):
        seen.append(time_zone)  # passed to the rules, not set as the process's zone
        return original(spec, state, fact, time_zone, **kwargs)

    monkeypatch.setattr(progress, "apply_fact", spy)
    evaluate_event_task.apply(args=[record_event(owner, "image.posted").event.pk])
    assert seen == ["America/Santiago"]
    assert timezone.get_current_timezone_name() == "UTC"
    assert context.current_user_id.get() is None


def test_a_failing_task_leaks_nothing_into_the_next(owner, settings, monkeypatch):
    """Context set outside any evaluation block, by a task that then fails, is
    cleared by the task_postrun handler before the next task runs."""
    from achievements import engine

    settings.ACCOLADE_MAX_ATTEMPTS = 1

    def leak_and_fail(event_pk):
        timezone.activate("Pacific/Chatham")
        context.current_user_id.set(999)
        raise ValueError("bad rule")

    monkeypatch.setattr(engine, "evaluate_event", leak_and_fail)
    evaluate_event_task.apply(args=[record_event(owner, "image.posted").event.pk])
    assert timezone.get_current_timezone_name() == "UTC"
    assert context.current_user_id.get() is None
