"""From stream messages to events: the same checks and words as the API, dead letters
for what cannot be an event, and a batch taken twice records nothing twice."""

from __future__ import annotations

import json

import pytest

from achievements.models import Event, ExternalIdentity
from ingest import pipeline
from ingest.models import ConsumerState, Rejected
from ingest.pipeline import Incoming, producer_of
from tests.factories import make_images_badge

PREFIX = "accolade.events"


def message(sequence: int, document: object, subject: str = "accolade.events.shop") -> Incoming:
    data = document if isinstance(document, bytes) else json.dumps(document).encode()
    return Incoming(
        data=data,
        producer=producer_of(subject, PREFIX),
        stream="ACCOLADE_EVENTS",
        sequence=sequence,
        subject=subject,
    )


def event(n: int, **fields: object) -> dict:
    return {
        "event_id": f"e-{n}",
        "event_type": "image.posted",
        "user_id": "u-1",
        "occurred_at": "2026-12-01T10:00:00Z",
        "payload": {"image_id": n},
        **fields,
    }


@pytest.fixture(autouse=True)
def watched(db):
    make_images_badge(threshold=3)


def test_the_producer_is_the_subjects_second_part():
    assert producer_of("accolade.events.shop", PREFIX) == "shop"
    assert producer_of("accolade.events.shop.p7", PREFIX) == "shop"
    assert producer_of("accolade.events", PREFIX) is None
    assert producer_of("other.events.shop", PREFIX) is None


def test_events_are_recorded_for_the_subjects_producer_and_a_batch_again_is_all_duplicates():
    batch = [message(n, event(n)) for n in range(1, 4)]
    assert [o.status for o in pipeline.take(batch)] == ["accepted"] * 3
    assert Event.objects.count() == 3
    assert ExternalIdentity.objects.get().external_id == "u-1"
    assert set(Event.objects.values_list("producer", "source")) == {("shop", "stream")}
    # Redelivered whole (killed before the acknowledgement): nothing twice.
    assert [o.status for o in pipeline.take(batch)] == ["duplicate"] * 3
    assert Event.objects.count() == 3
    # Another producer's e-1 is another event.
    other = message(9, event(1), subject="accolade.events.crm")
    assert pipeline.take([other])[0].status == "accepted"


@pytest.mark.parametrize(
    ("data", "field", "problem"),
    [
        (b"{not json", "body", "is not valid JSON"),
        (b"\xff\xfe", "body", "is not valid UTF-8"),
        (b"[" * 200 + b"]" * 200, "body", "nested"),
        (b'{"event_id": NaN}', "body", "NaN is not a JSON number"),
        (json.dumps([1, 2]).encode(), "body", "must be an event object, not an array"),
        (json.dumps({"events": []}).encode(), "events", "one event per message"),
        (json.dumps(event(1, event_type="image.postd")).encode(), "event_type", "not a known"),
        (json.dumps(event(1, occurred_at="yesterday")).encode(), "occurred_at", "ISO 8601"),
        (json.dumps(event(1, colour="red")).encode(), "colour", "is not a field of an event"),
        (json.dumps({"event_id": "e-1"}).encode(), "event_type", "is required (and 2 more)"),
        (json.dumps(event(1, user_id="a b")).encode(), "user_id", "must be 1-128 characters"),
        (json.dumps(event(1, payload=[1])).encode(), "payload", "must be an object"),
    ],
)
def test_a_malformed_message_goes_to_the_dead_letters_with_its_reason(data, field, problem):
    good = message(1, event(1))
    bad = message(2, data)
    outcomes = pipeline.take([good, bad])
    assert outcomes[0].status == "accepted"
    assert outcomes[1].status == "rejected" and outcomes[1].field == field
    assert problem in outcomes[1].problem, outcomes[1].problem
    [rejected] = Rejected.objects.all()
    assert (rejected.sequence, rejected.field, rejected.producer) == (2, field, "shop")
    assert rejected.data.startswith(data[:20].decode("utf-8", "replace"))
    # Taken again (redelivered): still one row.
    pipeline.take([bad])
    assert Rejected.objects.count() == 1


def test_a_subject_without_a_producer_and_a_message_too_big_are_refused(settings):
    settings.ACCOLADE_API_MAX_BODY_BYTES = 100
    nameless = message(1, event(1), subject="accolade.events")
    big = message(2, event(2, payload={"x": "y" * 200}))
    outcomes = pipeline.take([nameless, big])
    assert [(o.field, o.status) for o in outcomes] == [
        ("subject", "rejected"),
        ("body", "rejected"),
    ]
    assert "must be at most 100 bytes" in outcomes[1].problem
    assert Event.objects.count() == 0
    assert set(Rejected.objects.values_list("event_id", flat=True)) == {"e-1", "e-2"}


def test_an_id_reused_for_another_user_is_refused_by_the_recording():
    pipeline.take([message(1, event(1))])
    [outcome] = pipeline.take([message(2, event(1, user_id="u-2"))])
    assert outcome.status == "rejected" and outcome.field == "event_id"
    assert Rejected.objects.get().event_id == "e-1"


def test_the_lag_is_a_gauge_on_metrics(client, django_user_model):
    pipeline.report_lag(
        "accolade-ingest",
        stream="ACCOLADE_EVENTS",
        filter_subject="accolade.events.>",
        pending=120,
        unacknowledged=30,
        last_sequence=4000,
        holder="host:1",
    )
    assert ConsumerState.objects.get().lag == 150
    client.force_login(django_user_model.objects.create_superuser("root", "r@example.com", "pw"))
    text = client.get("/metrics").content.decode()
    assert 'accolade_stream_lag_messages{consumer="accolade-ingest"} 150' in text
    assert "# TYPE accolade_stream_lag_messages gauge" in text


def test_a_batch_keeps_stream_order_across_producers():
    batch = [
        message(1, event(1)),
        message(2, event(2), subject="accolade.events.crm"),
        message(3, event(3)),
    ]
    assert [o.status for o in pipeline.take(batch)] == ["accepted"] * 3
    recorded = list(Event.objects.order_by("pk").values_list("producer", "event_id"))
    assert recorded == [("shop", "e-1"), ("crm", "e-2"), ("shop", "e-3")]
