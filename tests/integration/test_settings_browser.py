"""A user's settings in a real Chromium: muted notifications reach the push path (the
card still moves, no toast comes), animation off, and the opt-in public page."""

from __future__ import annotations

import re

import pytest

from tests.integration.test_badge_page import WATCH_CELEBRATIONS, _visit_places
from tests.integration.test_browser import _sign_up
from tests.integration.test_keyboard import until

pytestmark = pytest.mark.browser


def test_muted_and_still_settings_are_honoured_live_and_the_public_page_opens(
    embedded_site, browser
):
    from playwright.sync_api import expect

    base = embedded_site.base_url
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    page = context.new_page()
    try:
        _sign_up(page, base, "quiet-one")
        page.goto(f"{base}/accounts/settings/")
        page.get_by_label("Mute all badge notifications").check()
        page.get_by_label("Animate progress").uncheck()
        page.get_by_label("Public badge page").check()
        page.get_by_label("Name on your public page").fill("Quiet One")
        page.get_by_role("button", name="Save settings").click()
        expect(page.get_by_role("status")).to_have_text("Settings saved.")
        # Focus stays in the form the swap replaced, not on <body>.
        until(page, "document.activeElement.closest('#settings-panel') !== null")
        address = page.locator(".share a").first.get_attribute("href")
        assert re.search(r"/p/[\w-]{40,}/$", address)

        badges = context.new_page()
        badges.goto(f"{base}/badges/")
        expect(badges.locator("body")).to_have_attribute("data-motion", "reduced")
        expect(badges.locator("#live-status")).to_have_attribute("data-state", "open")
        badges.evaluate(WATCH_CELEBRATIONS)
        _visit_places(page, base, 5)
        # The unlock lands and the card shows it, live; no toast, no celebration.
        expect(badges.locator("#badge-places_visited_5")).to_have_class(
            re.compile(r"\bis-earned\b")
        )
        badges.wait_for_timeout(700)
        expect(badges.locator("#toasts [data-toast]")).to_have_count(0)
        expect(page.locator("#toasts [data-toast]")).to_have_count(0)
        assert badges.evaluate("window.celebrated") == []

        # The public page, as a stranger opens it: the name chosen, the badge, no username.
        stranger = browser.new_context(viewport={"width": 1280, "height": 800})
        try:
            public = stranger.new_page()
            public.goto(address)
            expect(public.get_by_role("heading", level=1)).to_have_text("Quiet One's badges")
            expect(public.get_by_role("heading", name="5 Places Visited")).to_be_visible()
            expect(public.locator("body")).not_to_contain_text("quiet-one")
            image = public.locator('meta[property="og:image"]').get_attribute("content")
            assert public.request.get(image).headers["content-type"] == "image/png"
        finally:
            stranger.close()
    except Exception:
        print(embedded_site.logs())
        raise
    finally:
        context.close()
