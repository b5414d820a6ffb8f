from __future__ import annotations

from achievements.engine import evaluate_event
from achievements.events import record_event
from tests.factories import make_images_badge, make_places_badge


def test_the_badges_page_needs_a_signed_in_user(client, db):
    response = client.get("/badges/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_the_home_page_welcomes_visitors_and_sends_members_to_their_badges(client, owner):
    assert b"Create an account" in client.get("/").content
    client.force_login(owner)
    assert client.get("/")["Location"] == "/badges/"


def test_the_badges_page_shows_earned_and_in_progress_badges_with_progress(client, owner):
    make_places_badge(threshold=5)
    make_images_badge(threshold=1)
    for place in (1, 2):
        evaluate_event(record_event(owner, "visit.created", payload={"place_id": place}).event.pk)
    evaluate_event(record_event(owner, "image.posted").event.pk)
    client.force_login(owner)

    page = client.get("/badges/").content.decode()

    in_progress, earned = page.split('id="earned-heading"')
    assert 'id="badge-places_visited_5"' in in_progress
    assert "2 of 5 different places" in in_progress
    assert 'aria-valuenow="40"' in in_progress and "pct-40" in in_progress
    assert 'id="badge-images_posted_1"' in earned and "Earned" in earned
    assert '<span id="earned-count">1</span> of 2 earned' in page


def test_the_badges_page_shows_other_users_nothing_of_mine(client, owner, second_user):
    make_places_badge(threshold=5)
    evaluate_event(record_event(owner, "visit.created", payload={"place_id": 1}).event.pk)
    client.force_login(second_user)
    page = client.get("/badges/").content.decode()
    assert "0 of 5 different places" in page


def test_every_page_of_a_signed_in_user_has_the_live_toast_region(client, owner):
    client.force_login(owner)
    for url in ("/badges/", "/places/", "/places/photos/"):
        page = client.get(url).content.decode()
        assert 'ws-connect="/ws/live/?since=' in page, url
        assert 'id="toasts" class="toasts" aria-live="polite"' in page, url


def test_badges_page_refuses_post(client, owner):
    client.force_login(owner)
    assert client.post("/badges/").status_code == 405


def test_the_badges_page_shows_the_history_of_grants_and_revocations_without_reasons(
    client, owner, staff_user
):
    from achievements.awards import Actor, grant_badge, revoke_badge

    badge = make_images_badge(threshold=10)
    grant_badge(user_id=owner.pk, badge=badge, reason="internal note", by=Actor(staff_user.pk))
    revoke_badge(user_id=owner.pk, badge=badge, reason="internal note 2", by=Actor(staff_user.pk))
    client.force_login(owner)
    page = client.get("/badges/").content.decode()
    assert "taken back by staff" in page and "granted by staff" in page
    assert "Taken back by staff" in page  # the card says so too
    assert "internal note" not in page
