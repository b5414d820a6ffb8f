from __future__ import annotations

from decimal import Decimal

import pytest

from achievements import realtime
from achievements.engine import evaluate_event
from achievements.events import record_event
from achievements.models import Event, RequirementProgress, UserBadge
from tests.factories import make_badge, make_images_badge, make_places_badge


def _visit(user, place_id, n):
    event = record_event(user, "visit.created", payload={"place_id": place_id}, event_id=f"v-{n}")
    return evaluate_event(event.event.pk)


@pytest.fixture
def pushes(monkeypatch):
    """What the engine hands to the channel layer, captured at the layer's edge."""
    sent: list[tuple[str, list[dict]]] = []
    # As if a page were connected to this process, so the push is built.
    monkeypatch.setattr(realtime, "_server_loop_running", lambda: True)

    def send_to_groups(messages: dict[str, dict]) -> set[str]:
        sent.extend((group, [message]) for group, message in messages.items())
        return set(messages)

    monkeypatch.setattr(realtime, "send_to_groups", send_to_groups)
    return sent


def test_distinct_places_unlock_the_badge_on_the_fifth_different_place(owner):
    badge = make_places_badge(threshold=5)
    for n, place in enumerate([1, 2, 2, 3, 4]):
        _visit(owner, place, n)
    user_badge = UserBadge.objects.get(user=owner, badge=badge)
    assert user_badge.current_value == 4 and user_badge.completed_at is None

    result = _visit(owner, 5, 99)
    assert result is not None
    user_badge.refresh_from_db()
    assert result.unlocked_badge_ids == [badge.pk]
    assert user_badge.current_value == 5 and user_badge.target_value == 5
    assert user_badge.completed_at is not None
    assert user_badge.completed_by_event == Event.objects.get(event_id="v-99")


def test_count_requirement_unlocks_at_the_threshold(owner):
    badge = make_images_badge(threshold=3)
    results = [
        evaluate_event(record_event(owner, "image.posted", event_id=f"p-{n}").event.pk)
        for n in range(4)
    ]
    assert [r.unlocked_badge_ids if r else None for r in results] == [[], [], [badge.pk], []]
    assert UserBadge.objects.get(user=owner).current_value == 3


def test_evaluating_the_same_event_twice_changes_nothing_the_second_time(owner):
    make_images_badge(threshold=10)
    event = record_event(owner, "image.posted", event_id="p-1").event
    assert evaluate_event(event.pk) is not None
    assert evaluate_event(event.pk) is None
    assert RequirementProgress.objects.get(user=owner).value == 1


def test_a_badge_unlocks_once_however_many_events_follow(
    owner, pushes, django_capture_on_commit_callbacks
):
    badge = make_images_badge(threshold=1)
    with django_capture_on_commit_callbacks(execute=True):
        for n in range(3):
            evaluate_event(record_event(owner, "image.posted", event_id=f"p-{n}").event.pk)
    assert UserBadge.objects.filter(user=owner, badge=badge).count() == 1
    toasts = [toast for _, batch in pushes for m in batch for toast in m["toasts"]]
    assert len(toasts) == 1


def test_events_touch_only_requirements_that_watch_their_type(owner):
    places = make_places_badge(threshold=5)
    make_images_badge(threshold=10)
    _visit(owner, 1, 1)
    assert list(UserBadge.objects.filter(user=owner).values_list("badge", flat=True)) == [
        places.pk
    ]


def test_an_event_no_badge_watches_is_marked_processed_and_changes_nothing(owner):
    make_places_badge()
    event = record_event(owner, "lesson.finished").event
    result = evaluate_event(event.pk)
    event.refresh_from_db()
    assert result is not None
    assert result.changed_badge_ids == [] and event.processed_at is not None
    assert not UserBadge.objects.exists()


def test_inactive_badges_are_not_evaluated(owner):
    make_badge(
        key="retired",
        is_active=False,
        requirements=[{"event_type": "image.posted", "threshold": 1}],
    )
    evaluate_event(record_event(owner, "image.posted").event.pk)
    assert not UserBadge.objects.exists()


def test_progress_is_kept_per_user(owner, second_user):
    make_places_badge(threshold=2)
    _visit(owner, 1, 1)
    _visit(second_user, 1, 2)
    _visit(second_user, 2, 3)
    assert UserBadge.objects.get(user=owner).completed_at is None
    assert UserBadge.objects.get(user=second_user).completed_at is not None


def test_a_badge_with_two_requirements_needs_both(owner):
    badge = make_badge(
        key="all_rounder",
        requirements=[
            {"event_type": "image.posted", "threshold": 1},
            {"event_type": "visit.created", "threshold": 1},
        ],
    )
    evaluate_event(record_event(owner, "image.posted").event.pk)
    user_badge = UserBadge.objects.get(user=owner, badge=badge)
    assert (user_badge.current_value, user_badge.target_value) == (Decimal(1), Decimal(2))
    assert user_badge.completed_at is None
    evaluate_event(record_event(owner, "visit.created").event.pk)
    user_badge.refresh_from_db()
    assert user_badge.completed_at is not None


def test_it_pushes_progress_to_the_users_group_only_after_commit(
    owner, pushes, django_capture_on_commit_callbacks
):
    make_places_badge(threshold=5)
    event = record_event(owner, "visit.created", payload={"place_id": 1}).event
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        evaluate_event(event.pk)
        assert pushes == []
    for callback in callbacks:
        callback()
    [(group, [message])] = pushes
    assert group == realtime.user_group(owner.pk)
    assert (message["type"], message["toasts"]) == ("badges.changed", [])
    [card] = message["cards"]
    assert card["percent"] == 20
    assert card["requirements"] == [
        {
            "label": "different places",
            "current": "1",
            "target": "5",
            "text": "1 of 5 different places",
            "met": False,
            "percent": 20,
        }
    ]


def test_a_repeat_visit_to_a_known_place_pushes_nothing(
    owner, pushes, django_capture_on_commit_callbacks
):
    make_places_badge(threshold=5)
    with django_capture_on_commit_callbacks(execute=True):
        _visit(owner, 1, 1)
        _visit(owner, 1, 2)
    assert len(pushes) == 1


def test_a_failure_mid_evaluation_rolls_back_the_claim_so_a_retry_starts_clean(owner, monkeypatch):
    make_images_badge(threshold=10)
    event = record_event(owner, "image.posted").event
    from achievements import store

    original = store.Writes.save

    def fail(self):
        original(self)  # every write is sent, then the transaction fails
        raise RuntimeError("database went away")

    monkeypatch.setattr(store.Writes, "save", fail)
    with pytest.raises(RuntimeError):
        evaluate_event(event.pk)
    event.refresh_from_db()
    assert event.processed_at is None
    assert not RequirementProgress.objects.filter(value__gt=0).exists()

    monkeypatch.setattr(store.Writes, "save", original)
    evaluate_event(event.pk)
    assert RequirementProgress.objects.get(user=owner).value == 1
