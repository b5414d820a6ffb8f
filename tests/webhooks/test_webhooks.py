from __future__ import annotations

from datetime import timedelta
from itertools import groupby

import pytest
from django.core import mail
from django.db import transaction
from django.utils import timezone
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from achievements.awards import Actor, grant_badge, revoke_badge
from achievements.engine import evaluate_event
from achievements.events import record_event
from achievements.models import Unlock
from tests.factories import make_badge, make_images_badge
from webhooks import sending
from webhooks.models import Attempt, Delivery, Endpoint, Kind, Message, Status

ALL_KINDS = [kind.value for kind in Kind]


@pytest.fixture
def clock(monkeypatch):
    """Simulated time for the sender: `clock.now` is what timezone.now() answers."""

    class Clock:
        now = timezone.now()

        def advance(self, **delta: float) -> None:
            self.now += timedelta(**delta)

    clock = Clock()
    monkeypatch.setattr(timezone, "now", lambda: clock.now)
    return clock


def _post(user, n, capture):
    with capture(execute=True):
        recorded = record_event(user, "image.posted", event_id=f"img-{n}")
        evaluate_event(recorded.event.pk)


def test_an_unlock_is_sent_signed_to_the_endpoint_with_an_id_to_deduplicate_by(
    owner, endpoint, receiver, django_capture_on_commit_callbacks
):
    badge = make_images_badge(threshold=1)
    _post(owner, 1, django_capture_on_commit_callbacks)

    [got] = receiver.received
    unlock = Unlock.objects.get(user=owner, badge=badge)
    assert got.headers["webhook-id"] == f"msg_{unlock.pk}_earned"
    # Verified as a receiver would, with the standard's own library.
    document = Webhook(endpoint.secret).verify(got.body, got.headers)
    assert document["type"] == "badge.unlocked"
    data = document["data"]
    assert data["user"] == {"id": owner.pk, "username": "owner", "external_id": None}
    assert data["badge"] == {"key": badge.key, "name": badge.name}
    assert data["cause"] == "rule" and data["event_ids"] == ["img-1"]
    assert data["unlock_id"] == unlock.pk and data["silent"] is False
    delivery = Delivery.objects.get()
    assert delivery.status == Status.DELIVERED and delivery.attempts == 1
    [attempt] = Attempt.objects.all()
    assert attempt.succeeded and attempt.status_code == 204 and attempt.latency_ms is not None


def test_a_wrong_secret_or_a_changed_body_does_not_verify(
    owner, endpoint, receiver, django_capture_on_commit_callbacks
):
    make_images_badge(threshold=1)
    _post(owner, 1, django_capture_on_commit_callbacks)
    [got] = receiver.received
    with pytest.raises(WebhookVerificationError):
        Webhook(Endpoint(url="x").secret).verify(got.body, got.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(endpoint.secret).verify(got.body.replace(b"owner", b"other"), got.headers)


def test_the_message_is_written_in_the_transaction_of_the_unlock_and_rolls_back_with_it(
    owner, endpoint, receiver
):
    badge = make_images_badge(threshold=1)
    recorded = record_event(owner, "image.posted", event_id="img-1")

    class Boom(Exception):
        pass

    with pytest.raises(Boom), transaction.atomic():
        evaluate_event(recorded.event.pk)
        assert Message.objects.count() == 1 and Delivery.objects.count() == 1
        raise Boom
    assert not Unlock.objects.filter(badge=badge).exists()
    assert Message.objects.count() == 0 and Delivery.objects.count() == 0
    assert receiver.received == []


def test_a_worker_that_dies_after_the_commit_leaves_the_delivery_for_the_sweep(
    owner, endpoint, receiver, monkeypatch
):
    make_images_badge(threshold=1)
    # No kick after the commit: the process died before it could ask.
    recorded = record_event(owner, "image.posted", event_id="img-1")
    evaluate_event(recorded.event.pk)
    assert receiver.received == [] and Delivery.objects.get().status == Status.PENDING

    assert sending.send_due() == 1
    assert len(receiver.received) == 1
    assert Delivery.objects.get().status == Status.DELIVERED
    assert sending.send_due() == 0  # and never twice
    assert len(receiver.received) == 1


def test_tiers_revocations_and_grants_have_kinds_of_their_own(
    owner, staff_user, endpoint, receiver, django_capture_on_commit_callbacks
):
    badge = make_images_badge(threshold=1)
    badge.tiers = [{"name": "Bronze", "threshold": 1}, {"name": "Silver", "threshold": 2}]
    badge.save()
    _post(owner, 1, django_capture_on_commit_callbacks)
    _post(owner, 2, django_capture_on_commit_callbacks)
    with django_capture_on_commit_callbacks(execute=True):
        revoke_badge(user_id=owner.pk, badge=badge, reason="Cheated", by=Actor(staff_user.pk))
    kinds = [(r.document["type"], r.document["data"]["tier_name"]) for r in receiver.received]
    assert kinds[:2] == [("badge.unlocked", "Bronze"), ("badge.tier_reached", "Silver")]
    assert sorted(kinds[2:]) == [("badge.revoked", "Bronze"), ("badge.revoked", "Silver")]
    revoked = receiver.received[-1].document["data"]
    assert revoked["cause"] == "staff" and revoked["reason"] == "Cheated"

    other = make_badge(
        key="helper", requirements=[{"event_type": "image.posted", "threshold": 99}]
    )
    with django_capture_on_commit_callbacks(execute=True):
        grant_badge(user_id=owner.pk, badge=other, reason="Helped out", by=Actor(staff_user.pk))
    granted = receiver.received[-1].document
    assert granted["type"] == "badge.unlocked" and granted["data"]["cause"] == "staff"


def test_an_endpoint_gets_only_the_kinds_it_asked_for(
    owner, staff_user, receiver, django_capture_on_commit_callbacks
):
    Endpoint.objects.create(url=receiver.url, kinds=[Kind.BADGE_REVOKED])
    badge = make_images_badge(threshold=1)
    _post(owner, 1, django_capture_on_commit_callbacks)
    assert receiver.received == [] and Message.objects.count() == 0
    with django_capture_on_commit_callbacks(execute=True):
        revoke_badge(user_id=owner.pk, badge=badge, reason="Test", by=Actor(staff_user.pk))
    assert [r.document["type"] for r in receiver.received] == ["badge.revoked"]


def test_quiet_changes_go_only_to_endpoints_that_asked_for_them(
    owner, receiver, django_capture_on_commit_callbacks
):
    from achievements.replay import replay_events

    loud = Endpoint.objects.create(url=receiver.url, kinds=ALL_KINDS)
    quiet = Endpoint.objects.create(
        url=receiver.url + "?all", kinds=ALL_KINDS, include_silent=True
    )
    recorded = record_event(owner, "image.posted", event_id="img-1")
    evaluate_event(recorded.event.pk)  # before the badge existed
    make_images_badge(threshold=1)
    with django_capture_on_commit_callbacks(execute=True):
        replay_events(silent=True)
    [delivery] = Delivery.objects.all()
    assert delivery.endpoint == quiet and delivery.message.silent
    assert not loud.deliveries.exists()
    assert receiver.received[0].document["data"]["silent"] is True


def test_a_receiver_down_for_an_hour_gets_every_message_once_when_it_is_back(
    owner, endpoint, receiver, clock, django_capture_on_commit_callbacks
):
    """Backed-off retries while it is down; within a minute of its return, the rest."""
    for n in range(3):
        make_badge(key=f"b{n}", requirements=[{"event_type": "image.posted", "threshold": n + 1}])
    receiver.stop()
    for n in range(3):
        _post(owner, n, django_capture_on_commit_callbacks)
    assert Delivery.objects.filter(status=Status.PENDING).count() == 3

    for _ in range(12 * 60):  # an hour, swept every 5 s
        clock.advance(seconds=5)
        sending.send_due()
    assert receiver.received == []
    attempts = sorted(Delivery.objects.values_list("attempts", flat=True))
    # Backed off: each delivery is tried a handful of times in the hour, not 720,
    # and the endpoint is probed about once a minute on top (not every sweep).
    assert all(2 <= n <= 5 for n in attempts), attempts
    probes = Attempt.objects.filter(probe=True).count()
    assert 50 <= probes <= 62, probes
    assert Endpoint.objects.get().is_active  # an hour is not long enough to give up

    receiver.start()  # back, on the same port
    back = clock.now
    while not receiver.received:
        clock.advance(seconds=5)
        sending.send_due()
    assert clock.now - back <= timedelta(seconds=sending.PROBE_CAP_SECONDS)
    assert sorted(receiver.ids()) == sorted(Message.objects.values_list("id", flat=True))
    assert len(set(receiver.ids())) == 3
    assert set(Delivery.objects.values_list("status", flat=True)) == {Status.DELIVERED}
    clock.advance(hours=30)
    sending.send_due()
    assert len(receiver.received) == 3


def test_retries_back_off_for_more_than_a_day_then_the_delivery_fails(
    owner, endpoint, receiver, clock, django_capture_on_commit_callbacks, settings
):
    settings.ACCOLADE_WEBHOOK_DISABLE_AFTER_HOURS = 1000
    receiver.status = 503
    make_images_badge(threshold=1)
    _post(owner, 1, django_capture_on_commit_callbacks)
    delivery = Delivery.objects.get()
    first = clock.now
    gaps = []
    while delivery.status == Status.PENDING:
        gaps.append(delivery.next_attempt_at - clock.now)
        clock.now = delivery.next_attempt_at
        sending.send_due()
        delivery.refresh_from_db()
    assert delivery.status == Status.FAILED
    assert delivery.attempts == len(sending.RETRY_SCHEDULE) + 1
    assert clock.now - first > timedelta(hours=24)
    # Each wait is the schedule's, give or take its tenth of jitter.
    assert len(gaps) == len(sending.RETRY_SCHEDULE)
    for gap, planned in zip(gaps, sending.RETRY_SCHEDULE, strict=True):
        assert 0.9 * planned <= gap.total_seconds() <= 1.1 * planned
    assert len(receiver.received) == delivery.attempts
    assert len(set(receiver.ids())) == 1  # one id however often it is tried


def test_an_endpoint_failing_for_a_day_is_turned_off_staff_are_told_and_messages_wait(
    owner, endpoint, receiver, clock, django_capture_on_commit_callbacks, settings
):
    settings.ADMINS = [("Ops", "ops@example.com")]
    receiver.status = 500
    make_images_badge(threshold=1)
    _post(owner, 1, django_capture_on_commit_callbacks)
    # Checked at each try after the day is out: the schedule's seventh or eighth.
    for _ in range(40):
        clock.advance(hours=1)
        with django_capture_on_commit_callbacks(execute=True):
            sending.send_due()
    endpoint.refresh_from_db()
    assert not endpoint.is_active and endpoint.disabled_at is not None
    assert "Every try has failed since" in endpoint.disabled_reason
    [notice] = mail.outbox
    assert notice.to == ["ops@example.com"] and endpoint.url in notice.body
    tried = len(receiver.received)
    clock.advance(hours=1)
    sending.send_due()
    assert len(receiver.received) == tried  # off: nothing is sent

    # New messages still wait for it while it is off. (A threshold of one: a
    # badge made now counts the events from now on.)
    make_badge(key="two", requirements=[{"event_type": "image.posted", "threshold": 1}])
    _post(owner, 2, django_capture_on_commit_callbacks)
    assert Delivery.objects.filter(status=Status.PENDING).count() >= 1

    receiver.status = 200
    with django_capture_on_commit_callbacks(execute=True):
        endpoint.enable()
        sending.kick_on_commit([endpoint.pk])
    assert not Delivery.objects.filter(status=Status.PENDING).exists()


def test_410_gone_turns_the_endpoint_off_at_once(
    owner, endpoint, receiver, django_capture_on_commit_callbacks
):
    receiver.status = 410
    make_images_badge(threshold=1)
    _post(owner, 1, django_capture_on_commit_callbacks)
    endpoint.refresh_from_db()
    assert not endpoint.is_active and "410" in endpoint.disabled_reason


def test_a_redirect_is_a_failure_not_followed(
    owner, endpoint, receiver, django_capture_on_commit_callbacks
):
    receiver.status, receiver.extra_headers = 302, {"location": "http://169.254.169.254/"}
    make_images_badge(threshold=1)
    _post(owner, 1, django_capture_on_commit_callbacks)
    [attempt] = Attempt.objects.all()
    assert not attempt.succeeded and "redirect" in attempt.error
    assert len(receiver.received) == 1


def test_the_log_keeps_status_latency_and_an_excerpt_of_the_answer(
    owner, endpoint, receiver, django_capture_on_commit_callbacks
):
    receiver.status, receiver.answer = 422, b'{"error": "unknown user"}' + b"x" * 2000
    make_images_badge(threshold=1)
    _post(owner, 1, django_capture_on_commit_callbacks)
    [attempt] = Attempt.objects.all()
    assert attempt.status_code == 422 and attempt.error == "answered HTTP 422"
    assert attempt.response_excerpt.startswith('{"error": "unknown user"}')
    assert len(attempt.response_excerpt) == sending.EXCERPT_CHARS


def test_one_sender_per_endpoint(endpoint):
    now = timezone.now()
    first = sending.claim_endpoint(endpoint.pk, now)
    assert first is not None
    assert sending.claim_endpoint(endpoint.pk, now) is None
    # A sender that died lets go when its lease runs out.
    later = now + timedelta(seconds=sending.LEASE_SECONDS + 1)
    assert sending.claim_endpoint(endpoint.pk, later) not in (None, first)


def test_during_a_rotation_messages_carry_both_signatures(
    owner, endpoint, receiver, django_capture_on_commit_callbacks
):
    old = endpoint.secret
    endpoint.rotate_secret(timezone.now(), timedelta(hours=24))
    make_images_badge(threshold=1)
    _post(owner, 1, django_capture_on_commit_callbacks)
    [got] = receiver.received
    assert len(got.headers["webhook-signature"].split(" ")) == 2
    Webhook(old).verify(got.body, got.headers)
    Webhook(endpoint.secret).verify(got.body, got.headers)


def test_sending_again_gives_a_failed_delivery_fresh_retries(
    owner, endpoint, receiver, django_capture_on_commit_callbacks
):
    make_images_badge(threshold=1)
    receiver.stop()
    _post(owner, 1, django_capture_on_commit_callbacks)
    Delivery.objects.update(status=Status.FAILED, attempts=8)
    receiver.start()
    with django_capture_on_commit_callbacks(execute=True):
        sending.send_again(list(Delivery.objects.all()))
    delivery = Delivery.objects.get()
    assert delivery.status == Status.DELIVERED and delivery.attempts == 1


def test_a_slow_receiver_gets_several_requests_at_once_but_a_failing_one_gets_one(
    owner, endpoint, receiver, settings, django_capture_on_commit_callbacks
):
    settings.ACCOLADE_WEBHOOK_MAX_IN_FLIGHT = 4
    for n in range(8):
        make_badge(key=f"b{n}", requirements=[{"event_type": "image.posted", "threshold": 1}])
    receiver.stop()
    _post(owner, 1, django_capture_on_commit_callbacks)  # eight messages: a few tried, failed
    tried = Attempt.objects.count()
    assert 1 <= tried <= 4
    receiver.delay = 0.2
    receiver.start()
    Delivery.objects.update(next_attempt_at=timezone.now())
    sending.send_due()
    # Failing: one at a time until it answers, then four at a time.
    # Tries are recorded in batches, each at one time: the failing endpoint's one
    # try alone, then the seven others (in one batch or two).
    groups = [
        len(list(tries))
        for _, tries in groupby(Attempt.objects.order_by("id"), key=lambda a: a.at)
    ]
    assert groups[1] == 1 and sum(groups[2:]) == 7, groups
    assert receiver.most_in_flight == 4
    assert len(set(receiver.ids())) == 8
    assert set(Delivery.objects.values_list("status", flat=True)) == {Status.DELIVERED}


def test_long_answers_do_not_use_up_the_connections(
    owner, endpoint, receiver, settings, django_capture_on_commit_callbacks
):
    # Each answer is longer than the sender reads, so its connection is closed;
    # the pool must get its place back or the third send would wait forever.
    settings.ACCOLADE_WEBHOOK_MAX_IN_FLIGHT = 2
    receiver.status, receiver.answer = 200, b"x" * 100_000
    for n in range(6):
        make_badge(key=f"b{n}", requirements=[{"event_type": "image.posted", "threshold": 1}])
    _post(owner, 1, django_capture_on_commit_callbacks)
    assert set(Delivery.objects.values_list("status", flat=True)) == {Status.DELIVERED}
    assert len(set(receiver.ids())) == 6
