"""Duplicates: the same event_id, and near-duplicates caught by a dedup rule."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from achievements.events import (
    ExternalEvent,
    RecordedEvent,
    record_event,
    record_external_events,
)
from achievements.models import DedupRule, Event, ExternalIdentity


@pytest.fixture
def order_rule(db):
    return DedupRule.objects.create(
        event_type="order.paid", payload_key="order_id", window_seconds=300
    )


def test_a_repeat_of_the_business_key_within_the_window_is_a_duplicate(owner, order_rule):
    now = timezone.now()
    first = record_event(
        owner, "order.paid", payload={"order_id": 7}, event_id="hook-a", occurred_at=now
    )
    second = record_event(
        owner,
        "order.paid",
        payload={"order_id": 7},
        event_id="hook-b",
        occurred_at=now + timedelta(seconds=299),
    )
    assert first.created and second.duplicate
    assert second.event == first.event
    assert Event.objects.count() == 1


def test_outside_the_window_or_with_another_key_or_user_it_counts(owner, second_user, order_rule):
    now = timezone.now()
    record_event(owner, "order.paid", payload={"order_id": 7}, occurred_at=now)
    assert record_event(
        owner, "order.paid", payload={"order_id": 7}, occurred_at=now + timedelta(seconds=301)
    ).created
    assert record_event(owner, "order.paid", payload={"order_id": 8}, occurred_at=now).created
    assert record_event(
        second_user, "order.paid", payload={"order_id": 7}, occurred_at=now
    ).created
    assert record_event(owner, "order.refunded", payload={"order_id": 7}, occurred_at=now).created


def test_events_without_the_key_are_not_deduplicated(owner, order_rule):
    assert record_event(owner, "order.paid", payload={}).created
    assert record_event(owner, "order.paid", payload={}).created


def test_dedup_rules_are_editable_in_the_admin_with_validation(client, db):
    from django.contrib.auth import get_user_model

    client.force_login(get_user_model().objects.create_superuser("root", "r@example.com", "pw"))
    response = client.post(
        "/admin/achievements/deduprule/add/",
        {"event_type": "Order Paid", "payload_key": "order id", "window_seconds": "0"},
    )
    page = response.content.decode()
    assert response.status_code == 200
    assert "Event type must be lower-case words" in page
    assert "Use a payload key" in page
    assert "greater than or equal to 1" in page
    assert not DedupRule.objects.exists()
    response = client.post(
        "/admin/achievements/deduprule/add/",
        {"event_type": "order.paid", "payload_key": "order_id", "window_seconds": "60"},
    )
    assert response.status_code == 302
    assert DedupRule.objects.get().window_seconds == 60


def _race(count: int, record) -> list:
    results: list = []
    errors: list = []
    start = threading.Barrier(count)

    def attempt(n: int) -> None:
        try:
            start.wait()
            results.append(record(n))
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    return results


@pytest.mark.django_db(transaction=True)
def test_the_same_event_id_recorded_60_times_at_once_counts_once(postgresql_only, owner):
    # 60 connections at once: PostgreSQL's default limit is 100, shared with the rest of the run.
    results = _race(60, lambda n: record_event(owner, "image.posted", event_id="same-id"))
    assert sum(r.created for r in results) == 1
    assert sum(r.duplicate for r in results) == 59
    assert Event.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_near_duplicates_racing_with_different_ids_count_once(postgresql_only, owner):
    DedupRule.objects.create(event_type="order.paid", payload_key="order_id", window_seconds=300)
    results = _race(
        30, lambda n: record_event(owner, "order.paid", payload={"order_id": 1}, event_id=f"h{n}")
    )
    assert sum(r.created for r in results) == 1
    assert Event.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_batches_racing_over_the_same_new_ids_store_each_once(postgresql_only):
    """Twenty producers post overlapping batches at once: no id is lost or stored twice."""
    shared = [
        ExternalEvent(user_id=f"p-{n % 4}", event_type="image.posted", event_id=f"shared-{n}")
        for n in range(30)
    ]

    def post(n: int) -> list:
        own = ExternalEvent(user_id=f"p-{n}", event_type="image.posted", event_id=f"own-{n}")
        return record_external_events([own, *shared])

    outcomes = [r for results in _race(20, post) for r in results]
    assert all(isinstance(r, RecordedEvent) for r in outcomes)
    assert sum(r.created for r in outcomes) == 30 + 20
    assert sum(r.duplicate for r in outcomes) == 30 * 19
    assert Event.objects.count() == 50
    assert ExternalIdentity.objects.count() == 20  # p-0 .. p-19, each created once
