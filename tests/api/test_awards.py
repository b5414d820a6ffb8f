from __future__ import annotations

import json

import pytest

from achievements.models import Entry, ExternalIdentity, LedgerEntry, Unlock
from api.models import ApiKey
from tests.factories import make_images_badge

pytestmark = pytest.mark.django_db


@pytest.fixture
def member(owner):
    ExternalIdentity.objects.create(external_id="crm-7", user=owner)
    return owner


def _send(api_client, key, method, path, body):
    return getattr(api_client, method)(
        path,
        json.dumps(body) if not isinstance(body, str | bytes) else body,
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key}",
    )


def test_a_key_grants_and_revokes_with_a_reason_and_the_history_says_so(
    api_client, api_key, member
):
    badge = make_images_badge(threshold=10)
    path = f"/api/v1/users/crm-7/badges/{badge.key}"
    granted = _send(api_client, api_key, "post", path, {"reason": "Beta tester"})
    assert granted.status_code == 201, granted.content
    [entry] = granted.json()["entries"]
    assert (entry["kind"], entry["by"], entry["reason"]) == ("granted", "api", "Beta tester")
    key = ApiKey.objects.get()
    assert LedgerEntry.objects.get(kind=Entry.GRANTED).api_key == key

    badges = api_client.get("/api/v1/users/crm-7/badges", HTTP_AUTHORIZATION=f"Bearer {api_key}")
    [card] = badges.json()["badges"]
    assert card["earned"] and card["granted"] and not card["revoked"]

    revoked = _send(api_client, api_key, "delete", path, {"reason": "Left the beta"})
    assert revoked.status_code == 200, revoked.content
    assert [e["kind"] for e in revoked.json()["entries"]] == ["revoked"]
    history = api_client.get("/api/v1/users/crm-7/history", HTTP_AUTHORIZATION=f"Bearer {api_key}")
    assert [(e["kind"], e["reason"]) for e in history.json()["entries"]] == [
        ("revoked", "Left the beta"),
        ("granted", "Beta tester"),
    ]
    [card] = api_client.get(
        "/api/v1/users/crm-7/badges", HTTP_AUTHORIZATION=f"Bearer {api_key}"
    ).json()["badges"]
    assert not card["earned"] and card["revoked"]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "field"),
    [
        ("post", "/api/v1/users/crm-7/badges/images_posted_10", {}, 422, "reason"),
        ("post", "/api/v1/users/crm-7/badges/images_posted_10", {"reason": " "}, 422, "reason"),
        ("post", "/api/v1/users/crm-7/badges/images_posted_10", {"reason": 5}, 422, "reason"),
        ("post", "/api/v1/users/crm-7/badges/images_posted_10", [], 422, "body"),
        ("post", "/api/v1/users/crm-7/badges/images_posted_10", "{", 400, "body"),
        (
            "post",
            "/api/v1/users/crm-7/badges/images_posted_10",
            {"reason": "r", "why": 1},
            422,
            "why",
        ),
        (
            "post",
            "/api/v1/users/crm-7/badges/images_posted_10",
            {"reason": "r", "tier": "2"},
            422,
            "tier",
        ),
        (
            "post",
            "/api/v1/users/crm-7/badges/images_posted_10",
            {"reason": "r", "tier": 2},
            422,
            "tier",
        ),
        (
            "post",
            "/api/v1/users/crm-7/badges/images_posted_10",
            {"reason": "r", "period": "a\x00"},
            422,
            "period",
        ),
        ("post", "/api/v1/users/nobody/badges/images_posted_10", {"reason": "r"}, 404, "user_id"),
        ("post", "/api/v1/users/crm-7/badges/no_such_badge", {"reason": "r"}, 404, "badge_key"),
        (
            "delete",
            "/api/v1/users/crm-7/badges/images_posted_10",
            {"reason": "r"},
            409,
            "badge_key",
        ),
    ],
)
def test_bad_awards_get_a_4xx_naming_the_field_and_write_nothing(
    api_client, api_key, member, method, path, body, status, field
):
    make_images_badge(threshold=10)
    response = _send(api_client, api_key, method, path, body)
    assert response.status_code == status, response.content
    assert response.json()["errors"][0]["field"] == field
    assert not Unlock.objects.exists() and not LedgerEntry.objects.exists()


def test_granting_twice_is_a_conflict(api_client, api_key, member):
    badge = make_images_badge(threshold=10)
    path = f"/api/v1/users/crm-7/badges/{badge.key}"
    assert _send(api_client, api_key, "post", path, {"reason": "r"}).status_code == 201
    again = _send(api_client, api_key, "post", path, {"reason": "r"})
    assert again.status_code == 409
    assert "already holds" in again.json()["errors"][0]["problem"]
    assert Unlock.objects.count() == 1


def test_an_unlinked_user_id_cannot_be_granted_a_badge(api_client, api_key, db):
    ExternalIdentity.objects.create(external_id="waiting")
    badge = make_images_badge(threshold=10)
    response = _send(
        api_client, api_key, "post", f"/api/v1/users/waiting/badges/{badge.key}", {"reason": "r"}
    )
    assert response.status_code == 409 and response.json()["errors"][0]["field"] == "user_id"


def test_awards_need_the_badges_write_scope(api_client, member):
    badge = make_images_badge(threshold=10)
    _, reader = ApiKey.issue("reader", scopes=["badges:read"])
    response = _send(
        api_client, reader, "post", f"/api/v1/users/crm-7/badges/{badge.key}", {"reason": "r"}
    )
    assert (
        response.status_code == 403 and "badges:write" in response.json()["errors"][0]["problem"]
    )
    # Reading the history is badges:read.
    history = api_client.get("/api/v1/users/crm-7/history", HTTP_AUTHORIZATION=f"Bearer {reader}")
    assert history.status_code == 200 and history.json()["entries"] == []
    assert not Unlock.objects.exists()


def test_other_methods_are_refused(api_client, api_key, member):
    badge = make_images_badge(threshold=10)
    response = api_client.get(
        f"/api/v1/users/crm-7/badges/{badge.key}", HTTP_AUTHORIZATION=f"Bearer {api_key}"
    )
    assert response.status_code == 405


def test_only_staff_who_may_award_can_give_a_key_the_write_scope(client, db):
    from django.contrib.auth.models import Permission, User

    staff = User.objects.create_user("keeper", password="pw-keeper-123", is_staff=True)
    staff.user_permissions.add(
        Permission.objects.get(codename="add_apikey"),
        Permission.objects.get(codename="view_apikey"),
    )
    client.force_login(staff)
    data = {"name": "crm", "producer": "", "scopes": ["badges:read", "badges:write"]}
    refused = client.post("/admin/api/apikey/add/", data)
    assert refused.status_code == 200 and b"Only staff who may grant" in refused.content
    assert not ApiKey.objects.exists()
    staff.user_permissions.add(Permission.objects.get(codename="change_unlock"))
    staff = User.objects.get(pk=staff.pk)  # permissions are cached per instance
    client.force_login(staff)
    assert client.post("/admin/api/apikey/add/", data).status_code == 302
    assert ApiKey.objects.get().scopes == ["badges:read", "badges:write"]


def test_text_the_database_cannot_store_is_a_422(api_client, api_key, member):
    badge = make_images_badge(threshold=10)
    path = f"/api/v1/users/crm-7/badges/{badge.key}"
    response = _send(api_client, api_key, "post", path, '{"reason": "a\\ud800"}')
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "reason"
    assert not Unlock.objects.exists()
