"""Producers kept apart: each key speaks for one producer, ids are unique per producer,
a key reads only its producer's events, and scopes say what a key may do at all."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from achievements.events import record_event
from achievements.models import Event, EventType
from api.models import SCOPES, ApiKey
from tests.factories import make_user


def event(**overrides):
    return {
        "event_id": "shared-1",
        "event_type": "visit.created",
        "user_id": "u-1",
        "occurred_at": (timezone.now() - timedelta(minutes=1)).isoformat(),
        "payload": {"place_id": 1},
        **overrides,
    }


@pytest.fixture
def keys(db):
    EventType.objects.get_or_create(name="visit.created")
    return {name: ApiKey.issue(name, scopes=list(SCOPES))[1] for name in ("billing", "mobile")}


def _post(api_client, key, body):
    return api_client.post(
        "/api/v1/events", body, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {key}"
    )


def _get(api_client, key, path):
    return api_client.get(path, HTTP_AUTHORIZATION=f"Bearer {key}")


def test_one_producer_cannot_make_anothers_event_a_duplicate(api_client, keys):
    first = _post(api_client, keys["billing"], event())
    second = _post(api_client, keys["mobile"], event(user_id="u-2"))
    assert first.json()["results"][0]["status"] == "accepted"
    assert second.json()["results"][0]["status"] == "accepted"
    assert sorted(Event.objects.values_list("producer", "external_user_id")) == [
        ("billing", "u-1"),
        ("mobile", "u-2"),
    ]
    # Within one producer an id is still one event.
    again = _post(api_client, keys["mobile"], event(user_id="u-2"))
    assert again.json()["results"][0]["status"] == "duplicate"
    assert Event.objects.count() == 2


def test_a_key_reads_only_its_own_producers_events(api_client, keys):
    _post(api_client, keys["billing"], event(event_id="bill-7"))
    Event.objects.filter(event_id="bill-7").update(last_error="Traceback...\nBoom: secret")
    assert _get(api_client, keys["billing"], "/api/v1/events/bill-7").status_code == 200
    response = _get(api_client, keys["mobile"], "/api/v1/events/bill-7")
    assert response.status_code == 404
    assert response.json()["errors"][0]["field"] == "event_id"


def test_the_sites_own_events_are_the_app_producers(api_client, db, keys):
    record_event(make_user(username="site"), "visit.created", event_id="site-1")
    assert _get(api_client, keys["billing"], "/api/v1/events/site-1").status_code == 404
    _, app_key = ApiKey.issue("legacy", producer="app", scopes=["events:read"])
    assert _get(api_client, app_key, "/api/v1/events/site-1").status_code == 200


@pytest.mark.parametrize(
    ("scope", "method", "path"),
    [
        ("events:write", "post", "/api/v1/events"),
        ("events:read", "get", "/api/v1/events/x"),
        ("badges:read", "get", "/api/v1/users/u-1/badges"),
        ("metrics:read", "get", "/metrics"),
    ],
)
def test_each_endpoint_needs_its_scope(api_client, db, scope, method, path):
    EventType.objects.get_or_create(name="visit.created")
    others = [s for s in SCOPES if s != scope]
    _, without = ApiKey.issue("without", scopes=others)
    _, with_it = ApiKey.issue("with-it", scopes=[scope])

    def call(key):
        if method == "post":
            return _post(api_client, key, event())
        return _get(api_client, key, path)

    refused = call(without)
    assert refused.status_code == 403
    assert scope in refused.content.decode()
    assert not Event.objects.exists()
    assert call(with_it).status_code in (200, 202, 404)


def test_create_api_key_takes_a_producer_and_scopes(db, capsys):
    call_command(
        "create_api_key", "Billing Service", "--scope", "events:write", "--scope", "badges:read"
    )
    key = ApiKey.objects.get(name="Billing Service")
    assert key.producer == "billing-service"
    assert key.scopes == ["events:write", "badges:read"]
    call_command("create_api_key", "billing-2", "--producer", "billing-service")
    assert ApiKey.objects.get(name="billing-2").scopes == ["events:write", "events:read"]
    assert "producer 'billing-service'" in capsys.readouterr().err


def test_a_key_shares_the_sites_own_producer_only_when_told(db):
    assert ApiKey.issue("App")[0].producer == "app-key"
    assert ApiKey.issue("site", producer="app")[0].producer == "app"


def test_create_api_key_names_a_bad_producer_and_creates_nothing(db):
    with pytest.raises(CommandError, match="--producer: Use 1-64 letters"):
        call_command("create_api_key", "x", "--producer", "has space")
    assert not ApiKey.objects.exists()


def test_staff_choose_producer_and_scopes_in_the_admin(admin_client):
    response = admin_client.post(
        "/admin/api/apikey/add/",
        {"name": "crm", "producer": "crm-sync", "scopes": ["events:write", "metrics:read"]},
        follow=True,
    )
    assert "Copy the key for crm (producer crm-sync) now" in response.content.decode()
    key = ApiKey.objects.get(name="crm")
    assert (key.producer, key.scopes) == ("crm-sync", ["events:write", "metrics:read"])
    bad = admin_client.post(
        "/admin/api/apikey/add/", {"name": "bad", "producer": "no spaces", "scopes": []}
    )
    assert bad.status_code == 200
    page = bad.content.decode()
    assert "Use 1-64 letters" in page and "This field is required" in page
    assert not ApiKey.objects.filter(name="bad").exists()


@pytest.mark.django_db(transaction=True)
def test_keys_and_events_from_before_producers_keep_working_as_the_app_producer():
    """The migration's documented default: old keys speak for "app" with every scope,
    and old events are the "app" producer's, so nothing an old key did changes."""
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    before = [("api", "0001_initial"), ("achievements", "0016_view_metrics_permission")]
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    old = executor.loader.project_state(before).apps
    old.get_model("api", "ApiKey").objects.create(name="old", prefix="acc_x", key_hash="h" * 64)
    old.get_model("achievements", "Event").objects.create(
        event_id="e-1", event_type="visit.created", occurred_at=timezone.now()
    )
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())
    key = ApiKey.objects.get(name="old")
    # Every scope there was then; a scope added since (badges:write) is given on purpose.
    assert key.producer == "app" and sorted(key.scopes) == sorted(set(SCOPES) - {"badges:write"})
    assert Event.objects.get(event_id="e-1").producer == "app"
