"""The site with a keyboard alone, and as a screen reader reads it, in a real Chromium:
skip link, forms, toasts (reached, closed, focus given back), the badge controls,
and the accessible names and roles of what changes live."""

from __future__ import annotations

import re

import pytest

from tests.integration.test_browser import _sign_up

pytestmark = pytest.mark.browser


def _focused(page) -> str:
    """The focused element, as a short description: tag, id or accessible text."""
    return page.evaluate(
        """() => { const e = document.activeElement;
            return `${e.tagName.toLowerCase()}#${e.id}|${(e.getAttribute('aria-label') ||
            e.textContent || '').trim().slice(0, 40)}`; }"""
    )


def until(page, condition: str, seconds: float = 5.0) -> None:
    """Wait until a JavaScript expression holds on the page (polled: the site's content
    security policy forbids the string evaluation wait_for_function uses)."""
    for _ in range(int(seconds * 50)):
        if page.evaluate(f"() => Boolean({condition})"):
            return
        page.wait_for_timeout(20)
    raise AssertionError(f"never true: {condition}")


def _wait_for_focus(page) -> None:
    """Focus is put back once htmx has settled the swap, a moment after the swap."""
    until(page, "document.activeElement && document.activeElement !== document.body")


def _tab_to(page, pattern: str, most: int = 40) -> None:
    """Press Tab until the focused element matches `pattern` (at most `most` times)."""
    for _ in range(most):
        page.keyboard.press("Tab")
        if re.search(pattern, _focused(page)):
            return
    raise AssertionError(f"Tab never reached {pattern!r}; last: {_focused(page)}")


def test_a_keyboard_alone_logs_visits_reads_the_toast_and_gets_focus_back(embedded_site, browser):
    from playwright.sync_api import expect

    base = embedded_site.base_url
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    try:
        _sign_up(page, base, "keys-only")
        page.goto(f"{base}/places/")
        expect(page.locator("#live-status")).to_have_attribute("data-state", "open")
        page.evaluate("document.getElementById('toasts').dataset.toastSeconds = '60'")

        # The first Tab reaches the skip link; following it puts focus on the content.
        page.keyboard.press("Tab")
        assert _focused(page).startswith("a#|Skip to content")
        page.keyboard.press("Enter")
        assert _focused(page).startswith("main#main")

        # Five visits, choosing each place with the arrow keys and sending with Enter.
        _tab_to(page, r"^select#id_place")
        for number in range(1, 6):
            page.keyboard.press("ArrowDown")
            if number == 1:
                assert page.get_by_label("Place", exact=True).input_value() != ""
            _tab_to(page, r"^button#\|Log visit", most=3)
            page.keyboard.press("Enter")
            expect(page.locator(".subheading .count")).to_have_text(f"({number})")
            # The form was swapped: focus is back on its button, not on <body>.
            _wait_for_focus(page)
            assert _focused(page).startswith("button#|Log visit")
            page.keyboard.press("Shift+Tab")
            assert _focused(page).startswith("select#id_place")

        toast = page.locator("#toasts [data-toast]")
        expect(toast).to_have_count(1)
        # Read out politely, from a named region.
        region = page.get_by_role("region", name="Notifications")
        expect(region).to_have_attribute("aria-live", "polite")
        expect(region).to_contain_text("Badge unlocked: 5 Places Visited")

        # Reached by Tab after the page's own controls, closed with Esc; focus returns.
        _tab_to(page, r"\|See the badge")
        page.keyboard.press("Escape")
        expect(toast).to_have_count(0)
        assert not _focused(page).startswith("body")
        assert "toasts" not in page.evaluate("document.activeElement.closest('#toasts')?.id || ''")
    except Exception:
        print(embedded_site.logs())
        raise
    finally:
        context.close()


def test_the_badge_page_reads_well_to_a_screen_reader_and_works_from_the_keyboard(
    embedded_site, browser
):
    from playwright.sync_api import expect

    base = embedded_site.base_url
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    page = context.new_page()
    try:
        _sign_up(page, base, "reader")
        page.goto(f"{base}/badges/")
        expect(page.locator("#live-status")).to_have_attribute("data-state", "open")

        # Each card: an article named by its badge, a named progress bar with its value
        # in words, the lock and rarity said in text (not only shown).
        expect(page.get_by_role("article", name="5 Places Visited")).to_match_aria_snapshot(
            """
            - article "5 Places Visited":
              - heading "5 Places Visited" [level=3]
              - paragraph: Visit five different places.
              - progressbar "Progress towards 5 Places Visited"
              - paragraph: Locked 0 of 5 different places
              - paragraph: /Earned by|Nobody has earned/
            """
        )
        # The tiers, as a named list of steps with what each asks.
        expect(page.get_by_role("list", name="Tiers, in different places")).to_match_aria_snapshot(
            """
            - list "Tiers, in different places":
              - listitem: /Bronze 6 different places, next. 6 to go/
              - listitem: /Silver 9 different places/
              - listitem: /Gold 12 different places/
            """
        )
        # A mystery says it is one, and nothing of its rule.
        expect(page.get_by_role("article", name="Mystery badge")).to_contain_text("hidden badge")

        # The controls, from the keyboard: the list changes, and a status says how.
        page.get_by_label("Show", exact=True).focus()
        page.keyboard.press("ArrowDown")  # All badges → Earned
        expect(page).to_have_url(re.compile(r"show=earned"))
        expect(page.get_by_role("status").filter(has_text="badges")).to_have_text(
            "0 badges, earned only, suggested order."
        )
        # Focus stayed on the control the user was using.
        assert _focused(page).startswith("select#id_show")

        # Settings: every control reached by Tab and labelled; saved with Enter.
        page.goto(f"{base}/accounts/settings/")
        _tab_to(page, r"^input#id_mute_all")
        page.keyboard.press("Space")
        _tab_to(page, r"^button#\|Save settings")
        page.keyboard.press("Enter")
        expect(page.get_by_role("status")).to_have_text("Settings saved.")
        expect(page.get_by_label("Mute all badge notifications")).to_be_checked()
        _wait_for_focus(page)
        assert _focused(page).startswith("button#|Save settings")
    except Exception:
        print(embedded_site.logs())
        raise
    finally:
        context.close()
