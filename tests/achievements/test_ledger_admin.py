from __future__ import annotations

import pytest

from achievements.models import Entry, LedgerEntry, Unlock, UserBadge
from tests.factories import make_images_badge

pytestmark = pytest.mark.django_db

ADD = "/admin/achievements/unlock/add/"


def test_staff_grant_a_badge_from_the_admin_with_a_reason(admin_client, admin_user, owner):
    badge = make_images_badge(threshold=10)
    page = admin_client.get(f"{ADD}?user={owner.username}&badge={badge.pk}")
    assert page.status_code == 200 and b"Grant a badge" in page.content
    response = admin_client.post(
        ADD, {"user": owner.username, "badge": badge.pk, "reason": "Helped at the meetup"}
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    unlock = Unlock.objects.get(user=owner, badge=badge)
    assert unlock.granted
    entry = LedgerEntry.objects.get(unlock=unlock)
    assert (entry.kind, entry.actor, entry.reason) == (
        Entry.GRANTED,
        admin_user,
        "Helped at the meetup",
    )
    # The earning's page shows where it came from.
    detail = admin_client.get(f"/admin/achievements/unlock/{unlock.pk}/change/")
    assert (
        b"Granted by staff by admin" in detail.content
        and b"Helped at the meetup" in detail.content
    )


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"reason": ""}, b"This field is required"),
        ({"reason": "ok", "user": "ghost"}, b"There is no user with this username"),
        ({"reason": "ok", "tier": "2"}, b"has no tiers"),
    ],
)
def test_a_bad_grant_shows_the_problem_at_its_field_and_writes_nothing(
    admin_client, owner, data, problem
):
    badge = make_images_badge(threshold=10)
    response = admin_client.post(ADD, {"user": owner.username, "badge": badge.pk, **data})
    assert response.status_code == 200 and problem in response.content
    assert not Unlock.objects.exists() and not LedgerEntry.objects.exists()


def test_granting_a_held_badge_is_refused_in_the_form(admin_client, owner):
    badge = make_images_badge(threshold=10)
    data = {"user": owner.username, "badge": badge.pk, "reason": "r"}
    admin_client.post(ADD, data)
    again = admin_client.post(ADD, data)
    assert again.status_code == 200 and b"already holds" in again.content
    assert Unlock.objects.count() == 1


def test_staff_revoke_selected_earnings_with_a_reason(admin_client, owner, second_user):
    badge = make_images_badge(threshold=10)
    for user in (owner, second_user):
        admin_client.post(ADD, {"user": user.username, "badge": badge.pk, "reason": "r"})
    chosen = Unlock.objects.get(user=owner)
    start = admin_client.post(
        "/admin/achievements/unlock/", {"action": "revoke", "_selected_action": [chosen.pk]}
    )
    assert start.status_code == 302
    page = admin_client.get(start["Location"])
    assert page.status_code == 200 and b"Revoke earnings" in page.content
    missing = admin_client.post("/admin/achievements/unlock/revoke/", {"ids": str(chosen.pk)})
    assert missing.status_code == 200 and b"This field is required" in missing.content
    assert Unlock.objects.held().count() == 2
    done = admin_client.post(
        "/admin/achievements/unlock/revoke/", {"ids": str(chosen.pk), "reason": "Spam"}
    )
    assert done.status_code == 302
    assert list(Unlock.objects.held().values_list("user_id", flat=True)) == [second_user.pk]
    assert UserBadge.objects.get(user=owner, badge=badge).withheld == [""]
    assert LedgerEntry.objects.get(kind=Entry.REVOKED).reason == "Spam"


def test_staff_grant_a_badge_to_many_users_and_see_who_already_had_it(
    admin_client, owner, second_user
):
    badge = make_images_badge(threshold=10)
    admin_client.post(ADD, {"user": owner.username, "badge": badge.pk, "reason": "first"})
    users = [owner.pk, second_user.pk]
    form = admin_client.post(
        "/admin/auth/user/", {"action": "grant_badge", "_selected_action": users}
    )
    assert form.status_code == 200 and b"Grant a badge" in form.content
    done = admin_client.post(
        "/admin/auth/user/",
        {
            "action": "grant_badge",
            "_selected_action": users,
            "_grant": "Grant",
            "badge": badge.pk,
            "reason": "Launch week",
        },
        follow=True,
    )
    text = done.content.decode()
    assert "Granted 10 Images Posted to 1 user(s)" in text
    assert "already holds" in text
    assert Unlock.objects.held().filter(badge=badge).count() == 2


def test_a_users_admin_page_links_to_their_badges(admin_client, owner):
    page = admin_client.get(f"/admin/auth/user/{owner.pk}/change/")
    assert page.status_code == 200 and b"grant a badge" in page.content


def test_staff_without_the_unlock_permission_cannot_grant(client, staff_user, owner):
    client.force_login(staff_user)
    badge = make_images_badge(threshold=10)
    response = client.post(ADD, {"user": owner.username, "badge": badge.pk, "reason": "r"})
    assert response.status_code == 403
    assert not Unlock.objects.exists()


def test_the_ledger_cannot_be_edited_in_the_admin(admin_client, owner):
    badge = make_images_badge(threshold=10)
    admin_client.post(ADD, {"user": owner.username, "badge": badge.pk, "reason": "r"})
    entry = LedgerEntry.objects.get()
    assert admin_client.get("/admin/achievements/ledgerentry/").status_code == 200
    assert admin_client.get("/admin/achievements/ledgerentry/add/").status_code == 403
    view = admin_client.get(f"/admin/achievements/ledgerentry/{entry.pk}/change/")
    assert view.status_code == 200 and b"Save" not in view.content
