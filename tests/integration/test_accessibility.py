"""axe-core finds no violation on any user page, signed in and out, with and without a
toast, on a desktop and on a phone screen (Chromium; axe vendored in ./vendor)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.test_browser import _sign_up

pytestmark = pytest.mark.browser

AXE = (Path(__file__).parent / "vendor" / "axe.min.js").read_text()
SCREENS = [
    pytest.param({"width": 1280, "height": 800}, id="desktop"),
    pytest.param({"width": 390, "height": 844}, id="phone"),
]


def violations(page) -> list[str]:
    """Each violation axe finds on the page as it is now, with the elements involved."""
    page.add_script_tag(content=AXE)
    found = page.evaluate(
        """async () => (await axe.run(document)).violations.map(v =>
            `${v.id} (${v.impact}): ${v.nodes.map(n => n.target.join(" ")).join(", ")}`)"""
    )
    return list(found)


@pytest.mark.parametrize("screen", SCREENS)
def test_no_user_page_has_an_accessibility_violation(embedded_site, browser, screen):
    from playwright.sync_api import expect

    base = embedded_site.base_url
    # The site's content security policy allows no injected script: axe needs one.
    context = browser.new_context(
        viewport=screen, is_mobile=screen["width"] < 500, bypass_csp=True
    )
    page = context.new_page()
    found: dict[str, list[str]] = {}
    try:
        for path in ("/", "/accounts/login/", "/accounts/signup/", "/verify/"):
            page.goto(f"{base}{path}")
            found[f"signed out {path}"] = violations(page)

        _sign_up(page, base, f"axe-{screen['width']}")
        for path in (
            "/",
            "/badges/",
            "/badges/?show=in_progress&sort=closest",
            "/badges/?sort=unknown",  # refused, with the error by its control
            "/places/",
            "/places/photos/",
            "/accounts/settings/",
        ):
            page.goto(f"{base}{path}")
            expect(page.locator("#live-status")).to_have_attribute("data-state", "open")
            found[f"signed in {path}"] = violations(page)

        # With a toast on the page: five different places unlock a badge.
        page.goto(f"{base}/places/")
        expect(page.locator("#live-status")).to_have_attribute("data-state", "open")
        page.evaluate("document.getElementById('toasts').dataset.toastSeconds = '60'")
        places = page.locator("#id_place option[value]:not([value=''])").evaluate_all(
            "options => options.map(option => option.value)"
        )
        for number, place in enumerate(places[:5], start=1):
            page.get_by_label("Place", exact=True).select_option(place)
            page.get_by_role("button", name="Log visit").click()
            expect(page.locator(".subheading .count")).to_have_text(f"({number})")
        expect(page.locator("#toasts [data-toast]")).to_have_count(1)
        page.wait_for_timeout(400)  # its entrance animation done: colours as they settle
        found["signed in /places/ with a toast"] = violations(page)
        page.goto(f"{base}/badges/")  # now with an earned badge
        expect(page.locator("#live-status")).to_have_attribute("data-state", "open")
        found["signed in /badges/ with a badge earned"] = violations(page)
        page.goto(f"{base}/places/")
        expect(page.locator("#live-status")).to_have_attribute("data-state", "open")

        # A form sent with an error, as a keyboard user would meet it.
        page.get_by_label("Place", exact=True).select_option("")
        page.get_by_role("button", name="Log visit").click()
        expect(page.get_by_label("Place", exact=True)).to_have_attribute("aria-invalid", "true")
        found["signed in /places/ with an error"] = violations(page)

        # The public page, opted into from the settings.
        page.goto(f"{base}/accounts/settings/")
        page.get_by_label("Public badge page").check()
        page.get_by_role("button", name="Save settings").click()
        expect(page.get_by_role("status")).to_have_text("Settings saved.")
        found["signed in /accounts/settings/ saved"] = violations(page)
        page.goto(page.locator(".share a").first.get_attribute("href"))
        found["the public page"] = violations(page)

        # The daily email, asked for with an address, and its unsubscribe link's pages.
        page.goto(f"{base}/accounts/settings/")
        page.get_by_label("Email me a daily summary of badges I earned while away").check()
        page.get_by_role("button", name="Save settings").click()
        expect(page.get_by_label("Email address")).to_have_attribute("aria-invalid", "true")
        found["signed in /accounts/settings/ without an address"] = violations(page)
        page.get_by_label("Email address").fill(f"axe-{screen['width']}@example.com")
        page.get_by_role("button", name="Save settings").click()
        expect(page.get_by_role("status")).to_have_text("Settings saved.")
        token = embedded_site.python(
            "from django.contrib.auth import get_user_model\n"
            "from accounts.unsubscribe import unsubscribe_token\n"
            f"user = get_user_model().objects.get(username='axe-{screen['width']}')\n"
            "print(unsubscribe_token(user.pk))"
        ).split()[-1]
        page.goto(f"{base}/accounts/unsubscribe/{token}/")
        found["the unsubscribe page"] = violations(page)
        page.get_by_role("button", name="Stop the daily email").click()
        expect(page.get_by_role("heading", level=1)).to_have_text(
            "You will get no more daily emails"
        )
        found["the unsubscribe page, done"] = violations(page)
        page.goto(f"{base}/accounts/unsubscribe/{token[:-3]}xyz/")
        found["the unsubscribe page, a broken link"] = violations(page)

        # The verify page with a verdict (this one says the text is not a credential).
        page.goto(f"{base}/verify/")
        page.get_by_label("Credential", exact=True).fill("not.a.credential")
        page.get_by_role("button", name="Verify").click()
        expect(page.get_by_role("region", name="Not valid")).to_be_visible()
        found["/verify/ with a verdict"] = violations(page)
    finally:
        context.close()
    assert {where: problems for where, problems in found.items() if problems} == {}
