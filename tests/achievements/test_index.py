"""The rules index pinned to a unit of work: one look at the version, one view of the rules."""

from __future__ import annotations

import json
import threading
from unittest import mock

import pytest
from django.utils import timezone

from achievements import cards, index
from achievements.engine import evaluate_events
from achievements.models import Event, EventType
from api.models import ApiKey
from tests.factories import make_badge


@pytest.fixture
def version_checks():
    """Every look at the shared version token, counted."""
    with mock.patch.object(index, "_current_version", wraps=index._current_version) as spy:
        yield spy


def other_process_adds_type(key: str) -> None:
    """What a change in another process leaves here: the row, and a new token."""
    EventType.objects.bulk_create([EventType(name=key)])  # no signals
    index._new_version()


@pytest.mark.django_db
def test_lookups_outside_a_pin_each_check_the_version(version_checks):
    index.accepted_event_types()
    index.active_badges()
    assert version_checks.call_count == 2


@pytest.mark.django_db
def test_a_pinned_block_checks_once_and_keeps_its_view_of_the_rules(version_checks):
    index.accepted_event_types()  # built before the block
    version_checks.reset_mock()
    with index.pinned():
        assert "lesson.done" not in index.accepted_event_types()
        other_process_adds_type("lesson.done")
        index.active_badges()
        with index.pinned():  # a nested block shares the pin
            assert "lesson.done" not in index.accepted_event_types()
        assert "lesson.done" not in index.dedup_windows()
        assert version_checks.call_count == 1
    assert "lesson.done" in index.accepted_event_types()  # the next lookup rebuilds
    assert version_checks.call_count == 2


@pytest.mark.django_db
def test_a_change_made_inside_the_block_is_seen_by_its_later_lookups():
    with index.pinned():
        assert "quiz.passed" not in index.accepted_event_types()
        make_badge(key="quizzer", requirements=[{"event_type": "quiz.passed", "threshold": 1}])
        assert "quiz.passed" in index.accepted_event_types()
        assert [b.key for b in index.active_badges()] == ["quizzer"]


@pytest.mark.django_db
def test_a_pin_belongs_to_its_thread(version_checks):
    seen = []
    rebuilt = index._Index(accepted=frozenset({"exam.taken"}))

    def lookup() -> None:  # no database in this thread: the rebuild is stubbed
        with mock.patch.object(index, "_build", return_value=rebuilt):
            seen.append("exam.taken" in index.accepted_event_types())

    with index.pinned():
        index.accepted_event_types()
        index._new_version()  # another process changed the rules
        thread = threading.Thread(target=lookup)
        thread.start()
        thread.join()
        assert "exam.taken" not in index.accepted_event_types()
    assert seen == [True]  # the other thread was not pinned: it looked and rebuilt
    index._new_version()  # leave no stub index behind


@pytest.mark.django_db
def test_a_new_rule_version_keeps_a_pinned_block_on_its_rules_and_reaches_the_rest():
    """A version recorded in a batch (a first version) is no rule change: the
    batch keeps its view; the next lookup outside it learns the version."""
    from achievements.models import BadgeVersion
    from achievements.versions import record_version

    badge = make_badge(
        key="visits", requirements=[{"event_type": "visit.created", "threshold": 5}]
    )
    assert index.version_of(badge.pk) is None
    token = index._current_version()
    with index.pinned():
        before = index.active_badges()
        record_version(badge, source="test")
        assert index.active_badges() is before
        assert index.version_of(badge.pk) is None  # the caller falls back to a query
    assert index._current_version() != token  # other processes rebuild
    assert index.version_of(badge.pk) == BadgeVersion.objects.get(badge=badge).pk


@pytest.mark.django_db(transaction=True)  # the push runs on commit
def test_a_batch_and_its_push_check_the_version_once(owner, version_checks):
    make_badge(key="visits", requirements=[{"event_type": "visit.created", "threshold": 5}])
    now = timezone.now()
    events = [  # waiting, as committed by a request (record_event would evaluate them here)
        e.pk
        for e in Event.objects.bulk_create(
            [
                Event(event_id=f"v-{n}", event_type="visit.created", user=owner, occurred_at=now)
                for n in range(3)
            ]
        )
    ]
    version_checks.reset_mock()
    with (
        mock.patch("achievements.realtime.nobody_listens", return_value=False),
        mock.patch("achievements.realtime.send_to_groups", return_value=set()),
        mock.patch(
            "achievements.delivery.cards_for_users", wraps=cards.cards_for_users
        ) as pushed_cards,
    ):
        result = evaluate_events(events)
    assert sorted(result.claimed) == sorted(events)
    pushed_cards.assert_called_once()  # the push built its cards from the index
    assert version_checks.call_count == 1


@pytest.mark.django_db
def test_an_api_request_checks_the_version_once(client, version_checks):
    make_badge(key="visits", requirements=[{"event_type": "visit.created", "threshold": 5}])
    _, key = ApiKey.issue("test")
    version_checks.reset_mock()
    response = client.post(
        "/api/v1/events",
        json.dumps(
            {
                "events": [
                    {
                        "event_id": f"e-{n}",
                        "event_type": "visit.created",
                        "user_id": "u-1",
                        "occurred_at": timezone.now().isoformat(),
                    }
                    for n in range(3)
                ]
            }
        ),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key}",
    )
    assert response.status_code == 202, response.content
    assert version_checks.call_count == 1


@pytest.mark.django_db
def test_a_version_read_through_redis_pins_the_block_without_another_look(
    redis_cache, version_checks
):
    """The token is an integer, stored as its digits; a caller's own Redis
    round trip can carry its read (`version_wanted`, `pin_version`)."""
    from django.core.cache import cache

    other_process_adds_type("first.type")
    raw = redis_cache.get(index.version_key())
    assert int(raw) == cache.get(index.VERSION_KEY)
    version_checks.reset_mock()
    assert not index.version_wanted()  # outside a pin nobody wants it
    with index.pinned():
        assert index.version_wanted()
        index.pin_version(raw)
        assert not index.version_wanted()
        assert "first.type" in index.accepted_event_types()
        other_process_adds_type("second.type")
        assert "second.type" not in index.accepted_event_types()  # pinned
    assert version_checks.call_count == 0
    with index.pinned():
        index.pin_version(redis_cache.get(index.version_key()))
        assert "second.type" in index.accepted_event_types()  # the new token, rebuilt
    with index.pinned():
        index.pin_version(None)  # no token in Redis: the cache is asked
    assert version_checks.call_count == 1
    cache.set(index.VERSION_KEY, "an older release's token")
    with index.pinned():
        index.pin_version(redis_cache.get(index.version_key()))  # not digits: asked, replaced
    assert version_checks.call_count == 2
    assert isinstance(cache.get(index.VERSION_KEY), int)
