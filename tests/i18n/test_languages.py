"""The site in the user's language: chosen from Accept-Language and the user's
setting, French complete, staff's translations of badges, pushes and the catch-up
in the recipient's language, dates and numbers formatted per locale."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.conf import settings
from django.utils import translation

from accounts.models import Profile
from achievements.cards import cards_for_user
from achievements.engine import evaluate_event
from achievements.events import record_event
from achievements.models import Badge, BadgeTranslation
from tests.factories import make_places_badge

CATALOG = Path(settings.BASE_DIR) / "locale" / "fr" / "LC_MESSAGES" / "django.po"


def _entries() -> list[tuple[str, str, list[str]]]:
    """(context, msgid, msgstrs) of every entry of the French catalogue but its header."""

    def joined(block: str) -> str:
        return "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', block))

    found = []
    for entry in CATALOG.read_text().split("\n\n"):
        msgid = re.search(r'^msgid ((?:".*"\n?)+)', entry, re.M)
        if not msgid or not joined(msgid.group(1)):
            continue
        context = re.search(r'^msgctxt ((?:".*"\n?)+)', entry, re.M)
        strs = [joined(m) for m in re.findall(r'^msgstr(?:\[\d\])? ((?:".*"\n?)+)', entry, re.M)]
        found.append((joined(context.group(1)) if context else "", joined(msgid.group(1)), strs))
    return found


def test_french_is_complete_and_compiled():
    entries = _entries()
    assert len(entries) > 150
    assert [msgid for _, msgid, strs in entries if not all(strs)] == []
    assert "#, fuzzy" not in CATALOG.read_text()
    # The compiled catalogue says what the source says (it was compiled after the edit).
    with translation.override("fr"):
        for context, msgid, strs in entries:
            if "\\" in msgid or len(strs) > 1:
                continue  # escapes and plurals: checked through the pages below
            got = translation.pgettext(context, msgid) if context else translation.gettext(msgid)
            assert got == strs[0], msgid


def visit(user, place: int = 1) -> None:
    evaluate_event(record_event(user, "visit.created", payload={"place_id": place}).event.pk)


def test_the_browser_language_chooses_the_page_language(client, db):
    french = client.get("/", headers={"Accept-Language": "fr-FR,fr;q=0.9,en;q=0.5"})
    body = french.content.decode()
    assert '<html lang="fr">' in body and "Comment ça marche" in body
    english = client.get("/", headers={"Accept-Language": "en-GB"}).content.decode()
    assert '<html lang="en">' in english and "How it works" in english
    # A language the site does not have: English.
    assert (
        '<html lang="en">' in client.get("/", headers={"Accept-Language": "de"}).content.decode()
    )


def test_the_users_setting_wins_over_the_browser(client, owner):
    client.force_login(owner)
    response = client.post(
        "/accounts/settings/",
        {"language": "fr", "animate": "on"},
        headers={"Accept-Language": "en", "HX-Request": "true"},
    )
    # The whole page changes language, so htmx is told to load it again.
    assert response.status_code == 204 and response["HX-Refresh"] == "true"
    page = client.get("/badges/", headers={"Accept-Language": "en"}).content.decode()
    assert '<html lang="fr">' in page and "Mes badges" in page
    client.post("/accounts/settings/", {"language": "", "animate": "on"})
    page = client.get("/badges/", headers={"Accept-Language": "en"}).content.decode()
    assert '<html lang="en">' in page


def test_an_unknown_language_is_refused_by_name(client, owner):
    client.force_login(owner)
    response = client.post(
        "/accounts/settings/", {"language": "xx"}, headers={"HX-Request": "true"}
    )
    assert response.status_code == 422
    assert 'id="id_language_error"' in response.content.decode()
    assert Profile.objects.get(user=owner).language == ""


def _translated_badge() -> Badge:
    badge = make_places_badge(threshold=5)
    BadgeTranslation.objects.create(
        badge=badge,
        language="fr",
        name="5 lieux visités",
        description="Visitez cinq lieux.",
        labels=["lieux différents"],
    )
    return badge


def test_staffs_words_and_the_locale_shape_a_french_card(owner):
    _translated_badge()
    for place in range(1, 4):
        visit(owner, place)
    with translation.override("fr"):
        [card] = cards_for_user(owner.pk)
    assert (card["name"], card["description"]) == ("5 lieux visités", "Visitez cinq lieux.")
    assert card["requirements"][0]["text"] == "3 sur 5 lieux différents"
    assert card["rarity_text"] == "Personne ne l'a encore gagné"
    with translation.override("en"):
        [card] = cards_for_user(owner.pk)
    assert (card["name"], card["requirements"][0]["text"]) == (
        "5 Places Visited",
        "3 of 5 different places",
    )


def test_a_push_and_the_catch_up_come_in_the_recipients_language(
    owner, second_user, pushes, django_capture_on_commit_callbacks, monkeypatch
):
    from achievements import presence
    from achievements.consumers import _catch_up_frame

    monkeypatch.setattr(presence, "present_users", lambda users: set(users))
    _translated_badge()
    Profile.objects.update_or_create(user=owner, defaults={"language": "fr"})
    with django_capture_on_commit_callbacks(execute=True):
        for place in range(1, 6):
            visit(owner, place)
    [toast] = [toast for message in pushes for toast in message["toasts"]]
    assert toast["headline"] == "Badge débloqué" and toast["card"]["name"] == "5 lieux visités"
    assert "Badge débloqué" in pushes[-1]["html"] and "Voir le badge" in pushes[-1]["html"]
    # Dates in the French format, as the page shows them.
    assert re.search(r"\d{1,2} \w+ 20\d\d", toast["card"]["completed_on"])
    assert not re.search(r"[A-Z][a-z]{2}\. \d", toast["card"]["completed_on"])

    # A page that connects later catches up in French too; the other user, in English.
    frame = _catch_up_frame(owner.pk, None)
    assert "Badge débloqué" in frame and "5 lieux visités" in frame
    with django_capture_on_commit_callbacks(execute=True):
        for place in range(1, 6):
            visit(second_user, place)
    assert "Badge unlocked" in _catch_up_frame(second_user.pk, None)


def test_a_users_browser_language_is_remembered_for_pushes(client, owner):
    Profile.objects.create(user=owner)
    client.force_login(owner)
    client.get("/badges/", headers={"Accept-Language": "fr"})
    assert Profile.objects.get(user=owner).browser_language == "fr"
    from achievements.cards import readers

    assert {user_id: r.language for user_id, r in readers([owner.pk]).items()} == {owner.pk: "fr"}


def test_tier_names_translated_by_staff_need_one_per_tier(db):
    from django.core.exceptions import ValidationError

    badge = make_places_badge(threshold=2)
    badge.tiers = [{"name": "Bronze", "threshold": 2}, {"name": "Silver", "threshold": 4}]
    badge.save()
    words = BadgeTranslation(badge=badge, language="fr", tier_names=["Bronze"])
    with pytest.raises(ValidationError, match="one name per tier: the badge has 2"):
        words.full_clean()
    words.tier_names = ["Bronze", 3]
    with pytest.raises(ValidationError, match="list of names"):
        words.full_clean()


def test_staff_write_a_badges_french_words_in_its_admin_page(admin_client):
    from tests.achievements.test_admin import _inline_post

    data = _inline_post()
    data.update(
        {
            "translations-TOTAL_FORMS": "1",
            "translations-0-language": "fr",
            "translations-0-name": "Fan de photos",
            "translations-0-description": "",
            "translations-0-tier_names": "[]",
            "translations-0-labels": '["photos"]',
        }
    )
    response = admin_client.post("/admin/achievements/badge/add/", data)
    assert response.status_code == 302
    words = BadgeTranslation.objects.get(badge__key="photo_fan")
    assert (words.language, words.name, words.labels) == ("fr", "Fan de photos", ["photos"])

    # Tier names for a badge without tiers: refused by name, nothing saved.
    data["key"], data["name"] = "photo_fan_2", "Photo fan 2"
    data["translations-0-tier_names"] = '["Bronze"]'
    refused = admin_client.post("/admin/achievements/badge/add/", data)
    assert refused.status_code == 200
    assert "This badge has no tiers: leave the tier names empty." in refused.content.decode()
    assert not Badge.objects.filter(key="photo_fan_2").exists()
