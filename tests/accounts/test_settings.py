"""A user's settings: muted notifications (honoured by the push path and by the
catch-up, while the unlock still lands), animation, and the opt-in public page."""

from __future__ import annotations

import pytest

from accounts.models import Profile
from achievements.cards import unseen_unlocks
from achievements.engine import evaluate_event
from achievements.events import record_event
from achievements.models import Badge, Unlock
from tests.factories import make_images_badge, make_places_badge


def categorise(badge: Badge, category: str) -> Badge:
    badge.category = category
    badge.save()
    return badge


def settings_of(user) -> Profile:
    return Profile.objects.get_or_create(user=user)[0]


def save_settings(client, **fields):
    data = {"animate": "on", **fields}
    return client.post("/accounts/settings/", {k: v for k, v in data.items() if v is not None})


def test_the_settings_page_lists_the_categories_of_the_users_badges(client, owner):
    categorise(make_places_badge(threshold=1), "Travel")
    categorise(make_images_badge(threshold=1), "Photos")
    client.force_login(owner)
    page = client.get("/accounts/settings/").content.decode()
    assert page.index('value="Photos"') < page.index('value="Travel"')
    assert "Mute all badge notifications" in page


def test_saving_settings_stores_them_and_says_so(client, owner):
    categorise(make_places_badge(threshold=1), "Travel")
    client.force_login(owner)
    response = save_settings(client, muted_categories="Travel", animate=None)
    assert response.status_code == 302
    profile = settings_of(owner)
    assert (profile.mute_all, profile.muted_categories, profile.animate) == (
        False,
        ["Travel"],
        False,
    )
    # Animation off: every page says so to its script and styles.
    assert 'data-motion="reduced"' in client.get("/badges/").content.decode()
    htmx = client.post(
        "/accounts/settings/", {"mute_all": "on", "animate": "on"}, headers={"HX-Request": "true"}
    )
    assert htmx.status_code == 200 and "Settings saved." in htmx.content.decode()
    assert settings_of(owner).mute_all is True


def test_an_unknown_category_is_refused_by_name_and_nothing_changes(client, owner):
    categorise(make_places_badge(threshold=1), "Travel")
    client.force_login(owner)
    response = client.post(
        "/accounts/settings/",
        {"muted_categories": "Secret", "mute_all": "on"},
        headers={"HX-Request": "true"},
    )
    assert response.status_code == 422
    body = response.content.decode()
    assert 'id="id_muted_categories_error"' in body and "Secret" in body
    assert settings_of(owner).mute_all is False


def _visit(user, place: int) -> None:
    evaluate_event(record_event(user, "visit.created", payload={"place_id": place}).event.pk)


@pytest.mark.parametrize(
    ("mute_all", "muted", "toasted"),
    [
        (False, [], {"places_visited_1", "images_posted_1"}),
        (False, ["Travel"], {"images_posted_1"}),
        (True, [], set()),
    ],
)
def test_muted_notifications_are_not_pushed_but_the_unlock_lands(
    owner, pushes, django_capture_on_commit_callbacks, monkeypatch, mute_all, muted, toasted
):
    from achievements import presence

    monkeypatch.setattr(presence, "present_users", lambda users: set(users))
    categorise(make_places_badge(threshold=1), "Travel")
    categorise(make_images_badge(threshold=1), "Photos")
    Profile.objects.update_or_create(
        user=owner, defaults={"mute_all": mute_all, "muted_categories": muted}
    )
    with django_capture_on_commit_callbacks(execute=True):
        _visit(owner, 1)
        evaluate_event(record_event(owner, "image.posted").event.pk)
    sent = pushes
    assert {toast["card"]["key"] for message in sent for toast in message["toasts"]} == toasted
    # The cards still come, earned: the page shows the unlock.
    assert {card["key"] for message in sent for card in message["cards"] if card["completed"]} == {
        "places_visited_1",
        "images_posted_1",
    }
    assert Unlock.objects.filter(user=owner).count() == 2
    # And no page offers a muted one later, even after unmuting.
    Profile.objects.filter(user=owner).update(mute_all=False, muted_categories=[])
    assert {toast["card"]["key"] for toast in unseen_unlocks(owner.pk, limit=10)} <= toasted


def test_a_muted_unlock_is_not_offered_by_the_catch_up_either(owner):
    categorise(make_places_badge(threshold=1), "Travel")
    Profile.objects.update_or_create(user=owner, defaults={"muted_categories": ["Travel"]})
    _visit(owner, 1)  # no page open: nothing pushed
    assert unseen_unlocks(owner.pk, limit=10) == []
    assert Unlock.objects.get(user=owner).seen_at is not None


def test_the_public_page_is_off_until_the_user_opts_in(client, owner):
    make_places_badge(threshold=1)
    _visit(owner, 1)
    client.force_login(owner)
    assert "Your public page" not in client.get("/accounts/settings/").content.decode()
    save_settings(client, public_profile="on", public_name="  Ada   L. ")
    profile = settings_of(owner)
    assert profile.public_name == "Ada L." and len(profile.share_token or "") >= 40
    page = client.get("/accounts/settings/").content.decode()
    assert f"/p/{profile.share_token}/" in page

    client.logout()
    public = client.get(f"/p/{profile.share_token}/")
    body = public.content.decode()
    assert public.status_code == 200
    assert "Ada L.'s badges" in body and "1 Places Visited" in body
    assert owner.username not in body
    assert 'property="og:title"' in body

    # Turned off, the same link answers as one that never existed.
    client.force_login(owner)
    save_settings(client, public_profile=None)
    client.logout()
    assert client.get(f"/p/{profile.share_token}/").status_code == 404
    assert client.get("/p/not-a-token/").status_code == 404


def test_a_new_link_retires_the_old_one(client, owner):
    client.force_login(owner)
    save_settings(client, public_profile="on")
    old = settings_of(owner).share_token
    response = client.post("/accounts/settings/new-link/")
    assert response.status_code == 302
    new = settings_of(owner).share_token
    assert new != old
    assert client.get(f"/p/{old}/").status_code == 404
    assert client.get(f"/p/{new}/").status_code == 200


def test_hidden_badges_stay_hidden_on_the_public_page(client, owner):
    make_places_badge(threshold=1)
    secret = make_images_badge(threshold=1)
    Badge.objects.filter(pk=secret.pk).update(hidden=True, name="Secret Shutter")
    _visit(owner, 1)
    evaluate_event(record_event(owner, "image.posted").event.pk)
    client.force_login(owner)
    save_settings(client, public_profile="on")
    token = settings_of(owner).share_token
    body = client.get(f"/p/{token}/").content.decode()
    assert "1 Places Visited" in body and "Secret Shutter" not in body


def test_the_public_page_is_rate_limited_per_address(client, owner, settings, monkeypatch):
    import time
    from types import SimpleNamespace

    import django_ratelimit.core

    from achievements import views

    # One moment for the limiter (only) for the whole test: a window that ended
    # between two of its requests, on a slow machine, would start the count again.
    moment = time.time()
    monkeypatch.setattr(django_ratelimit.core, "time", SimpleNamespace(time=lambda: moment))
    client.force_login(owner)
    save_settings(client, public_profile="on")
    token = settings_of(owner).share_token
    limit = int(views.PUBLIC_PAGE_RATE.split("/")[0])
    statuses = [client.get(f"/p/{token}/").status_code for _ in range(limit + 1)]
    assert statuses[:limit] == [200] * limit
    assert statuses[limit] == 429
    # Another address is not held up.
    assert client.get(f"/p/{token}/", REMOTE_ADDR="10.0.0.9").status_code == 200


def test_each_badge_has_a_share_link_whose_preview_shows_that_badge(client, owner):
    from PIL import Image

    make_places_badge(threshold=1)
    _visit(owner, 1)
    client.force_login(owner)
    save_settings(client, public_profile="on", public_name="Ada")
    token = settings_of(owner).share_token
    client.logout()
    page = client.get(f"/p/{token}/").content.decode()
    assert f'href="/p/{token}/?badge=places_visited_1"' in page
    shared = client.get(f"/p/{token}/?badge=places_visited_1").content.decode()
    assert '<meta property="og:title" content="Ada earned 1 Places Visited">' in shared
    assert 'content="http://testserver/badges/places_visited_1/preview.png"' in shared
    image = client.get("/badges/places_visited_1/preview.png")
    assert image["Content-Type"] == "image/png"
    picture = Image.open(__import__("io").BytesIO(image.content))
    assert picture.size == (1200, 630)
    # A badge they do not hold: said plainly, with what they do hold.
    refused = client.get(f"/p/{token}/?badge=nope")
    assert refused.status_code == 400 and "nope" in refused.content.decode()


def test_a_hidden_or_segmented_badge_has_no_preview_image(client, db):
    hidden = make_places_badge(threshold=1)
    Badge.objects.filter(pk=hidden.pk).update(hidden=True)
    segmented = make_images_badge(threshold=1)
    Badge.objects.filter(pk=segmented.pk).update(segment_attribute="plan", segment_value="pro")
    assert client.get("/badges/places_visited_1/preview.png").status_code == 404
    assert client.get("/badges/images_posted_1/preview.png").status_code == 404


def test_muting_costs_the_push_one_update_however_many_users_muted(
    db, pushes, django_capture_on_commit_callbacks, monkeypatch
):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from achievements import presence
    from achievements.engine import evaluate_events
    from tests.factories import make_user

    monkeypatch.setattr(presence, "present_users", lambda users: set(users))
    categorise(make_places_badge(threshold=1), "Travel")

    def seen_updates(count: int) -> int:
        users = [make_user(username=f"muter-{count}-{n}") for n in range(count)]
        for user in users:
            Profile.objects.update_or_create(user=user, defaults={"mute_all": True})
        events = [
            record_event(user, "visit.created", payload={"place_id": 1}).event.pk for user in users
        ]
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            evaluate_events(events)
        with CaptureQueriesContext(connection) as queries:
            for callback in callbacks:
                callback()
        assert Unlock.objects.filter(user__in=users, seen_at__isnull=True).count() == 0
        return sum(1 for q in queries if q["sql"].startswith("UPDATE") and '"seen_at"' in q["sql"])

    assert seen_updates(2) == seen_updates(6) == 1


def test_a_segmented_badge_stays_off_the_public_page(client, owner):
    make_places_badge(threshold=1)
    pro = make_images_badge(threshold=1)
    Badge.objects.filter(pk=pro.pk).update(segment_attribute="plan", segment_value="pro")
    Profile.objects.update_or_create(user=owner, defaults={"attributes": {"plan": "pro"}})
    _visit(owner, 1)
    evaluate_event(record_event(owner, "image.posted").event.pk)
    client.force_login(owner)
    assert "1 Images Posted" in client.get("/badges/").content.decode()
    save_settings(client, public_profile="on")
    body = client.get(f"/p/{settings_of(owner).share_token}/").content.decode()
    assert "1 Places Visited" in body and "1 Images Posted" not in body


def test_turning_the_public_page_off_retires_its_link_for_good(client, owner):
    client.force_login(owner)
    save_settings(client, public_profile="on")
    first = settings_of(owner).share_token
    save_settings(client, public_profile=None)
    assert settings_of(owner).share_token is None
    save_settings(client, public_profile="on")
    second = settings_of(owner).share_token
    assert second and second != first
    assert client.get(f"/p/{first}/").status_code == 404


def test_asking_for_the_daily_email_stores_the_address_given_with_it(client, owner):
    client.force_login(owner)
    page = client.get("/accounts/settings/").content.decode()
    assert "Email me a daily summary of badges I earned while away" in page
    assert 'type="email" name="email"' in page
    response = save_settings(client, email_digest="on", email=" ada@example.com ")
    assert response.status_code == 302
    owner.refresh_from_db()
    profile = settings_of(owner)
    assert owner.email == "ada@example.com" and profile.email_digest is True
    assert profile.digest_since is not None and profile.last_digest_at is not None
    # With an address, the page says where the email goes instead of asking.
    page = client.get("/accounts/settings/").content.decode()
    assert "It goes to ada@example.com." in page and 'name="email"' not in page


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("not-an-address", "Enter a valid email address."),
        ("", "Give an email address for the daily summary to go to."),
    ],
)
def test_a_bad_or_missing_address_is_refused_by_name_and_nothing_is_saved(
    client, owner, address, problem
):
    client.force_login(owner)
    response = client.post(
        "/accounts/settings/",
        {"animate": "on", "email_digest": "on", "mute_all": "on", "email": address},
        headers={"HX-Request": "true"},
    )
    assert response.status_code == 422
    body = response.content.decode()
    assert 'id="id_email_error"' in body and problem in body
    owner.refresh_from_db()
    profile = settings_of(owner)
    assert (owner.email, profile.email_digest, profile.mute_all) == ("", False, False)


def test_the_daily_email_is_off_until_asked_for(db, owner):
    assert settings_of(owner).email_digest is False


def test_saving_settings_leaves_a_digest_run_s_bookkeeping_alone(client, owner, monkeypatch):
    from datetime import timedelta

    from django.utils import timezone

    from accounts.forms import SettingsForm

    owner.email = "ada@example.com"
    owner.save()
    settings_of(owner)
    Profile.objects.filter(user=owner).update(email_digest=True)
    sent = timezone.now() - timedelta(minutes=1)
    real = SettingsForm.is_valid

    def a_digest_run_meanwhile(form) -> bool:  # type: ignore[no-untyped-def]
        # The page read the profile; a digest run claims the day before it saves.
        Profile.objects.filter(user=owner).update(last_digest_at=sent)
        return real(form)

    monkeypatch.setattr(SettingsForm, "is_valid", a_digest_run_meanwhile)
    client.force_login(owner)
    assert save_settings(client, email_digest="on", mute_all="on").status_code == 302
    profile = settings_of(owner)
    assert profile.mute_all is True and profile.last_digest_at == sent
