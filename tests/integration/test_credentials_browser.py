"""An earned badge downloaded as an Open Badges credential and checked on the verify
page, in a real Chromium, as a holder and then a stranger would."""

from __future__ import annotations

import re

import pytest

from tests.integration.test_badge_page import _visit_places
from tests.integration.test_browser import _sign_up

pytestmark = pytest.mark.browser


def test_download_a_badge_as_a_credential_and_verify_it_as_a_stranger(
    embedded_site, browser, tmp_path
):
    from playwright.sync_api import expect

    base = embedded_site.base_url
    context = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    page = context.new_page()
    try:
        _sign_up(page, base, "credential-holder")
        _visit_places(page, base, 5)
        page.goto(f"{base}/badges/")
        card = page.locator("#badge-places_visited_5")
        expect(page.locator("#live-status")).to_have_attribute("data-state", "open")
        expect(card).to_have_class(re.compile(r"\bis-earned\b"))
        with page.expect_download() as caught:
            card.get_by_role("link", name="Download as an Open Badge").click()
        download = caught.value
        assert download.suggested_filename == "places_visited_5.jwt"
        saved = tmp_path / download.suggested_filename
        download.save_as(saved)
        assert saved.read_text().count(".") == 2  # a JWT
    finally:
        context.close()

    stranger = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    try:
        page = stranger.new_page()
        page.goto(f"{base}/")
        page.get_by_role("link", name="Verify a badge").click()
        page.get_by_label("Or the credential file").set_input_files(saved)
        page.get_by_role("button", name="Verify").click()
        verdict = page.get_by_role("region", name="Valid")
        expect(verdict).to_contain_text("5 Places Visited")
        expect(verdict).to_contain_text("still holds the badge")

        # One character changed: the page says so, plainly.
        token = saved.read_text()
        header, payload, signature = token.split(".")
        forged = ".".join(
            [
                header,
                payload,
                signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1],
            ]
        )
        page.get_by_label("Credential", exact=True).fill(forged)
        page.get_by_role("button", name="Verify").click()
        expect(page.get_by_role("region", name="Not valid")).to_contain_text(
            "changed after it was signed"
        )
        # Nothing pasted: the field says what it needs.
        page.get_by_label("Credential", exact=True).fill("")
        page.get_by_role("button", name="Verify").click()
        expect(page.get_by_label("Credential", exact=True)).to_have_attribute(
            "aria-invalid", "true"
        )
    finally:
        stranger.close()
