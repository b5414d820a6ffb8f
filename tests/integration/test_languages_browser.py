"""The site in French, in a real Chromium: chosen by the browser's language, then by
the user's setting; the toast pushed in French; no accessibility violation."""

from __future__ import annotations

import pytest

from tests.integration.test_accessibility import violations

pytestmark = pytest.mark.browser


def test_a_french_browser_gets_french_pages_and_french_toasts(embedded_site, browser):
    from playwright.sync_api import expect

    base = embedded_site.base_url
    context = browser.new_context(
        viewport={"width": 390, "height": 844}, is_mobile=True, locale="fr-FR", bypass_csp=True
    )
    page = context.new_page()
    try:
        page.goto(f"{base}/")
        expect(page.locator("html")).to_have_attribute("lang", "fr")
        expect(page.get_by_role("heading", name="Comment ça marche")).to_be_visible()
        problems = {"home": violations(page)}

        page.get_by_role("link", name="Créer un compte").click()
        page.get_by_label("Nom d’utilisateur").fill("francophone")
        page.get_by_label("Mot de passe", exact=True).fill("a-long-passphrase-9")
        page.get_by_label("Confirmation du mot de passe").fill("a-long-passphrase-9")
        page.get_by_role("button", name="S'inscrire").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Mes badges")
        expect(page.locator("#live-status")).to_have_text("En direct")
        expect(page.locator("#badge-globetrotter")).to_contain_text("Globe-trotteur")
        problems["badges"] = violations(page)

        page.goto(f"{base}/places/")
        expect(page.locator("#live-status")).to_have_attribute("data-state", "open")
        page.evaluate("document.getElementById('toasts').dataset.toastSeconds = '60'")
        places = page.locator("#id_place option[value]:not([value=''])").evaluate_all(
            "options => options.map(option => option.value)"
        )
        for number, place in enumerate(places[:5], start=1):
            page.get_by_label("Lieu", exact=True).select_option(place)
            page.get_by_role("button", name="Enregistrer la visite").click()
            expect(page.locator(".subheading .count")).to_have_text(f"({number})")
        toast = page.locator("#toasts [data-toast]")
        expect(toast).to_have_count(1)
        expect(toast).to_contain_text("Badge débloqué : 5 lieux visités")
        expect(toast.get_by_role("link", name="Voir le badge")).to_be_visible()
        page.wait_for_timeout(400)
        problems["visits with a toast"] = violations(page)

        # The user's own choice wins over the browser's: English, at once.
        page.goto(f"{base}/accounts/settings/")
        page.get_by_label("Langue", exact=True).select_option("en")
        page.get_by_role("button", name="Enregistrer").click()
        expect(page.locator("html")).to_have_attribute("lang", "en")
        expect(page.get_by_role("heading", level=1)).to_have_text("Settings")
        assert problems == {name: [] for name in problems}
    except Exception:
        print(embedded_site.logs())
        raise
    finally:
        context.close()
