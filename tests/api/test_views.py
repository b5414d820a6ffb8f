from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest
from django.utils import timezone

from achievements.actions import link_external_identity
from achievements.models import (
    DedupRule,
    Event,
    ExternalIdentity,
    RequirementProgress,
    UserBadge,
)
from api.models import ApiKey
from tests.factories import make_places_badge


def event(**overrides):
    return {
        "event_id": "ev-1",
        "event_type": "visit.created",
        "user_id": "u-42",
        "occurred_at": (timezone.now() - timedelta(minutes=1)).isoformat(),
        "source": "mobile",
        "payload": {"place_id": 7},
        **overrides,
    }


def test_one_event_is_accepted_and_durable(api):
    response = api.post(event())
    assert response.status_code == 202
    assert response.json() == {"results": [{"event_id": "ev-1", "status": "accepted"}]}
    stored = Event.objects.get(event_id="ev-1")
    assert (stored.external_user_id, stored.source, stored.payload) == (
        "u-42",
        "mobile",
        {"place_id": 7},
    )


def test_a_batch_reports_each_event(api):
    response = api.post(
        {
            "events": [
                event(event_id="a"),
                event(event_id="a"),
                event(event_id="b", event_type="Bad Type"),
            ]
        }
    )
    assert response.status_code == 202
    assert response.json()["results"] == [
        {"event_id": "a", "status": "accepted"},
        {"event_id": "a", "status": "duplicate"},
        {
            "event_id": "b",
            "status": "rejected",
            "errors": [
                {
                    "field": "events[2].event_type",
                    "problem": "must be lower-case words of letters, digits and '_' joined "
                    "by dots, such as 'visit.created'",
                }
            ],
        },
    ]
    assert Event.objects.count() == 1


@pytest.mark.parametrize(
    ("body", "field", "problem"),
    [
        ({k: v for k, v in event().items() if k != "user_id"}, "user_id", "is required"),
        (event(event_id=5), "event_id", "must be a string, not a number"),
        (event(event_type="lesson.finished"), "event_type", "not a known event type"),
        (event(occurred_at="yesterday"), "occurred_at", "is not an ISO 8601 date-time"),
        (event(occurred_at="2026-01-01T10:00:00"), "occurred_at", "must include a time zone"),
        (
            event(occurred_at=(timezone.now() + timedelta(days=1)).isoformat()),
            "occurred_at",
            "is in the future",
        ),
        (event(occurred_at="1999-12-31T23:00:00Z"), "occurred_at", "is before 2000-01-01"),
        (event(payload=[1, 2]), "payload", "must be an object, not an array"),
        (event(payload="x"), "payload", "must be an object, not a string"),
        (event(payload={"a": "x" * 20_000}), "payload", "at most 16384 bytes"),
        (event(user_id="has space"), "user_id", "must be 1-128 characters"),
        (event(source=""), "source", "must be 1-64 characters"),
        (event(colour="red"), "colour", "is not a field of an event"),
        ([1, 2], "body", "must be an event object, not an array"),
    ],
)
def test_a_bad_event_gets_422_naming_the_field_and_nothing_is_stored(api, body, field, problem):
    response = api.post(body)
    assert response.status_code == 422
    [result] = response.json()["results"]
    assert result["status"] == "rejected"
    assert any(e["field"] == field and problem in e["problem"] for e in result["errors"]), result
    assert not Event.objects.exists()
    assert not ExternalIdentity.objects.exists()


@pytest.mark.parametrize(
    ("body", "content_type", "status", "field", "problem"),
    [
        (b"{not json", "application/json", 400, "body", "is not valid JSON"),
        (b'{"a": NaN}', "application/json", 400, "body", "NaN is not a JSON number"),
        (b"\xff\xfe{}", "application/json", 400, "body", "is not valid UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "application/json", 400, "body", "nested too deeply"),
        (
            b"event_id=1",
            "application/x-www-form-urlencoded",
            415,
            "Content-Type",
            "must be application/json",
        ),
        (
            json.dumps({"events": "x"}).encode(),
            "application/json",
            422,
            "events",
            "must be an array, not a string",
        ),
        (
            json.dumps({"events": []}).encode(),
            "application/json",
            422,
            "events",
            "at least one event",
        ),
        (
            json.dumps({"events": [event()], "x": 1}).encode(),
            "application/json",
            422,
            "x",
            "is not allowed next to 'events'",
        ),
    ],
)
def test_a_bad_body_gets_a_4xx_naming_the_problem(api, body, content_type, status, field, problem):
    response = api.post(body, content_type=content_type)
    assert response.status_code == status
    [error] = response.json()["errors"]
    assert error["field"] == field and problem in error["problem"]
    assert not Event.objects.exists()


def test_oversized_bodies_get_413_and_too_many_events_422(api, settings):
    settings.ACCOLADE_API_MAX_BATCH = 3
    response = api.post({"events": [event(event_id=f"e{n}") for n in range(4)]})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "events"
    settings.ACCOLADE_API_MAX_BODY_BYTES = 2000
    response = api.post({"events": [event(payload={"pad": "x" * 3000})]})
    assert response.status_code == 413
    assert response.json()["errors"][0]["field"] == "body"
    assert not Event.objects.exists()


@pytest.mark.parametrize(
    "header", [None, "", "Bearer", "Bearer wrong", "Basic dXNlcjpwYXNz", "Bearer acc_" + "x" * 300]
)
def test_requests_without_a_valid_key_get_401(api_client, db, header):
    extra = {"HTTP_AUTHORIZATION": header} if header is not None else {}
    for response in (
        api_client.post("/api/v1/events", event(), content_type="application/json", **extra),
        api_client.get("/api/v1/events/ev-1", **extra),
        api_client.get("/api/v1/users/u-42/badges", **extra),
    ):
        assert response.status_code == 401
        assert response["WWW-Authenticate"].startswith("Bearer")
        assert response.json()["errors"][0]["field"] == "Authorization"
    assert not Event.objects.exists()


def test_a_revoked_key_gets_401(api_client, api_key):
    ApiKey.objects.get().revoke()
    response = api_client.get("/api/v1/events/x", HTTP_AUTHORIZATION=f"Bearer {api_key}")
    assert response.status_code == 401


def test_keys_are_stored_hashed_and_never_logged(api_client, api_key, caplog):
    stored = ApiKey.objects.get()
    assert api_key not in (stored.key_hash, stored.prefix) and stored.prefix == api_key[:12]
    caplog.set_level("DEBUG")
    api_client.get("/api/v1/events/missing", HTTP_AUTHORIZATION=f"Bearer {api_key}")
    api_client.get("/api/v1/events/missing", HTTP_AUTHORIZATION=f"Bearer {api_key}x")
    assert api_key not in caplog.text
    assert ApiKey.objects.get().last_used_at is not None


def test_the_rate_limit_answers_429_with_retry_after(api, settings):
    settings.ACCOLADE_API_RATE_LIMIT = (3, 60)
    codes = [api.get("/api/v1/events/none").status_code for _ in range(4)]
    assert codes == [404, 404, 404, 429]
    response = api.get("/api/v1/events/none")
    assert 1 <= int(response["Retry-After"]) <= 61
    assert response.json()["errors"][0]["field"] == "Authorization"


def test_the_rate_limit_counts_in_redis_when_there_is_one(api, settings, redis_cache):
    """Production counts in Redis, shared by every web process, with the window's expiry."""
    settings.ACCOLADE_API_RATE_LIMIT = (2, 60)
    codes = [api.get("/api/v1/events/none").status_code for _ in range(3)]
    assert codes == [404, 404, 429]
    [key] = redis_cache.keys(f"{settings.ACCOLADE_NAMESPACE}:api-rate:*")
    assert int(redis_cache.get(key)) == 3
    assert 60 < redis_cache.ttl(key) <= 120


def test_a_single_event_costs_two_round_trips_to_redis(
    api, owner, settings, redis_cache, monkeypatch, django_capture_on_commit_callbacks
):
    """Before the work, the rate limit and the rules' version; after the commit,
    the drain request and the count of events received. A rule changed between
    requests is seen by the next one."""
    import redis

    from achievements import dispatch, tasks
    from achievements.dispatch import DRAIN_FLAG
    from achievements.models import EventType

    settings.ACCOLADE_TASK_MODE = "celery"
    monkeypatch.setattr(dispatch, "FLAG_SECONDS", 60)  # still up for the next request
    drains: list[object] = []
    monkeypatch.setattr(tasks.evaluate_pending_task, "delay", lambda: drains.append(1))
    sent = {"pipelines": 0, "commands": 0}
    pipeline_execute, execute_command = redis.client.Pipeline.execute, redis.Redis.execute_command

    def count_pipeline(pipe, *args, **kwargs):
        sent["pipelines"] += 1
        return pipeline_execute(pipe, *args, **kwargs)

    def count_command(client, *args, **kwargs):
        sent["commands"] += 1
        return execute_command(client, *args, **kwargs)

    monkeypatch.setattr(redis.client.Pipeline, "execute", count_pipeline)
    monkeypatch.setattr(redis.Redis, "execute_command", count_command)
    namespace = settings.ACCOLADE_NAMESPACE
    link_external_identity("u-42", owner.pk)

    def post(**fields):
        with django_capture_on_commit_callbacks(execute=True):  # as if the request committed
            return api.post(event(**fields))

    assert post(event_id="warm").status_code == 202  # the index is built
    sent.update(pipelines=0, commands=0)
    assert post(event_id="one").status_code == 202
    assert sent == {"pipelines": 2, "commands": 0}
    assert drains == [1]  # the first request raised the flag; this one found it up
    assert redis_cache.hget(f"{namespace}:metrics", "accolade_events_received_total") == b"2"
    assert 0 < redis_cache.ttl(f"{namespace}:1:{DRAIN_FLAG}") <= 60

    EventType.objects.create(name="club.joined")  # a rule change: a new version
    sent.update(pipelines=0, commands=0)
    response = post(event_id="two", event_type="club.joined")
    assert response.json()["results"] == [{"event_id": "two", "status": "accepted"}]
    assert sent == {"pipelines": 2, "commands": 0}


def test_event_status_shows_pending_processed_and_the_unlocks_caused(
    api, owner, django_capture_on_commit_callbacks
):
    make_places_badge(threshold=1)
    link_external_identity("u-42", owner.pk)
    with django_capture_on_commit_callbacks(execute=True):
        api.post(event())
    body = api.get("/api/v1/events/ev-1").json()
    assert body["status"] == "processed" and body["user_id"] == "u-42"
    assert [u["badge"] for u in body["unlocks"]] == ["places_visited_1"]
    assert api.get("/api/v1/events/nope").status_code == 404


def test_event_status_shows_a_failing_event_retrying_with_its_next_attempt(api, owner, settings):
    from achievements import dispatch

    settings.ACCOLADE_RETRY_BASE_SECONDS = 30
    link_external_identity("u-42", owner.pk)
    api.post(event())  # recorded; no worker has evaluated it yet
    body = api.get("/api/v1/events/ev-1").json()
    assert (body["status"], body["attempts"], body["next_attempt_at"]) == ("pending", 0, None)
    pk = Event.objects.get(event_id="ev-1").pk
    dispatch.record_evaluation_failure(pk, "Traceback ...\nZeroDivisionError: division by zero")
    body = api.get("/api/v1/events/ev-1").json()
    assert body["status"] == "retrying" and body["attempts"] == 1
    retry_at = Event.objects.get(pk=pk).retry_at
    assert datetime.fromisoformat(body["next_attempt_at"]) == retry_at
    assert body["dead_letter_reason"] is None


def test_a_number_no_progress_can_hold_is_refused_at_the_door(api):
    response = api.post(event(payload={"place_id": 1, "score": 10**15}))
    assert response.status_code == 422
    [result] = response.json()["results"]
    assert result["status"] == "rejected"
    [problem] = result["errors"]
    assert problem["field"] == "payload.score"
    assert "between -99999999999999 and 99999999999999" in problem["problem"]
    assert not Event.objects.exists()


def test_events_for_an_unlinked_user_wait_and_count_for_them_once_linked(
    api, owner, django_capture_on_commit_callbacks
):
    make_places_badge(threshold=2)
    with django_capture_on_commit_callbacks(execute=True):
        api.post(
            {
                "events": [
                    event(event_id="a", payload={"place_id": 1}),
                    event(event_id="b", payload={"place_id": 2}),
                ]
            }
        )
    assert api.get("/api/v1/events/a").json()["status"] == "waiting_for_user"
    waiting = api.get("/api/v1/users/u-42/badges").json()
    assert waiting["linked"] is False and waiting["pending_events"] == 2
    assert waiting["badges"][0]["percent"] == 0
    from django.contrib.auth import get_user_model

    assert get_user_model().objects.count() == 1  # no placeholder account was made

    with django_capture_on_commit_callbacks(execute=True):
        assert link_external_identity("u-42", owner.pk) == 2
    linked = api.get("/api/v1/users/u-42/badges").json()
    assert linked["linked"] is True and linked["pending_events"] == 0
    assert linked["badges"][0]["earned"] is True
    assert RequirementProgress.objects.get(user=owner).value == 2
    assert UserBadge.objects.get(user=owner).completed_at is not None


def test_a_mixed_batch_gets_a_result_per_event_in_order(
    api, owner, django_capture_on_commit_callbacks
):
    """New, stored, repeated and near-duplicate events, linked and unlinked users, at once."""
    make_places_badge(threshold=3)
    link_external_identity("u-42", owner.pk)
    DedupRule.objects.create(event_type="image.posted", payload_key="image", window_seconds=60)
    with django_capture_on_commit_callbacks(execute=True):
        api.post(event(event_id="old", payload={"place_id": 1}))
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post(
            {
                "events": [
                    event(event_id="old", payload={"place_id": 1}),  # a retry of a stored event
                    event(event_id="old", event_type="image.posted"),  # its id, another fact
                    event(event_id="n1", payload={"place_id": 2}),
                    event(event_id="n1", user_id="u-7"),  # same id in the batch, another user
                    event(event_id="n1", payload={"place_id": 2}),  # a retry within the batch
                    event(event_id="w1", user_id="u-7"),  # an id nobody is linked to yet
                    event(event_id="i1", event_type="image.posted", payload={"image": 5}),
                    event(event_id="i2", event_type="image.posted", payload={"image": 5}),
                    event(event_id="n2", payload={"place_id": 3}),
                ]
            }
        )
    assert response.status_code == 202
    taken = "was already used for a different user or event type"
    assert [
        (r["status"], r.get("errors", [{}])[0].get("field")) for r in response.json()["results"]
    ] == [
        ("duplicate", None),
        ("rejected", "events[1].event_id"),
        ("accepted", None),
        ("rejected", "events[3].event_id"),
        ("duplicate", None),
        ("accepted", None),
        ("accepted", None),
        ("duplicate", None),  # the dedup rule: the same image within the window
        ("accepted", None),
    ]
    assert taken in response.json()["results"][1]["errors"][0]["problem"]
    assert sorted(Event.objects.values_list("event_id", flat=True)) == [
        "i1",
        "n1",
        "n2",
        "old",
        "w1",
    ]
    assert ExternalIdentity.objects.get(external_id="u-7").user_id is None
    assert Event.objects.get(event_id="w1").user_id is None
    # The linked user's three places count, each once, and earn the badge.
    assert RequirementProgress.objects.get(user=owner).value == 3
    assert UserBadge.objects.get(user=owner).completed_at is not None


def test_a_batch_costs_the_same_statements_as_one_event(api_key, db):
    """Recording is one lock, one read and one insert for the whole batch."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from achievements.events import ExternalEvent, RecordedEvent, record_external_events

    def batch(prefix: str, size: int) -> int:
        items = [
            ExternalEvent(
                user_id=f"u-{n % 10}",
                event_type="visit.created",
                payload={"place_id": n},
                event_id=f"{prefix}-{n}",
            )
            for n in range(size)
        ]
        record_external_events(items[:10])  # the index and the identities exist
        with CaptureQueriesContext(connection) as queries:
            results = record_external_events(items[10:])
        assert all(isinstance(r, RecordedEvent) and r.created for r in results)
        return len(queries)

    assert batch("small", 11) == batch("large", 60)


def test_unknown_users_get_404(api):
    response = api.get("/api/v1/users/nobody/badges")
    assert response.status_code == 404
    assert response.json()["errors"][0]["field"] == "user_id"


def test_the_openapi_schema_is_served(api_client, db):
    schema = api_client.get("/api/v1/openapi.json").json()
    assert schema["openapi"].startswith("3.1")
    assert set(schema["paths"]) == {
        "/api/v1/events",
        "/api/v1/events/{event_id}",
        "/api/v1/users/{user_id}/badges",
        "/api/v1/users/{user_id}/badges/{badge_key}",
        "/api/v1/users/{user_id}/history",
    }


def test_create_api_key_prints_the_key_alone_on_its_last_line(db, capsys):
    from django.core.management import call_command

    call_command("create_api_key", "billing")
    out = capsys.readouterr().out
    key = out.strip().splitlines()[-1]
    assert key.startswith("acc_") and " " not in key
    from api.auth import hash_key

    assert ApiKey.objects.get(name="billing").key_hash == hash_key(key)


def test_create_api_key_refuses_a_duplicate_name(db):
    from django.core.management import CommandError, call_command

    call_command("create_api_key", "billing")
    with pytest.raises(CommandError, match="already exists"):
        call_command("create_api_key", "billing")
    assert ApiKey.objects.count() == 1


def test_staff_create_a_key_in_the_admin_and_see_it_once(admin_client):
    response = admin_client.post(
        "/admin/api/apikey/add/", {"name": "mobile", "scopes": ["events:write"]}, follow=True
    )
    page = response.content.decode()
    assert "Copy the key for mobile (producer mobile) now" in page
    key_hash = ApiKey.objects.get(name="mobile").key_hash
    assert key_hash not in page
    detail = admin_client.get(f"/admin/api/apikey/{ApiKey.objects.get().pk}/change/")
    assert "Copy the key" not in detail.content.decode()


def test_staff_link_an_id_in_the_admin_and_its_events_are_evaluated(
    admin_client, api, owner, django_capture_on_commit_callbacks
):
    make_places_badge(threshold=5)
    api.post(event())
    identity = ExternalIdentity.objects.get()
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            f"/admin/achievements/externalidentity/{identity.pk}/change/",
            {"user": owner.pk},
            follow=True,
        )
    assert "Linked u-42 to owner; 1 waiting event(s) queued." in response.content.decode()
    assert Event.objects.get().processed_at is not None


@pytest.fixture
def admin_client(client, db):
    from django.contrib.auth import get_user_model

    client.force_login(get_user_model().objects.create_superuser("root", "r@example.com", "pw"))
    return client
