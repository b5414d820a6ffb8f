"""Toasts that go by themselves but wait for the reader, and focus that survives a form
swap, in a real Chromium."""

from __future__ import annotations

import pytest

from tests.integration.test_browser import _artifact, _sign_up

pytestmark = pytest.mark.browser


def _log_visits(page, count: int) -> None:
    from playwright.sync_api import expect

    places = page.locator("#id_place option[value]:not([value=''])").evaluate_all(
        "options => options.map(option => option.value)"
    )
    for number, place in enumerate(places[:count], start=1):
        page.get_by_label("Place", exact=True).select_option(place)
        page.get_by_role("button", name="Log visit").click()
        expect(page.locator(".subheading .count")).to_have_text(f"({number})")


def test_a_toast_goes_by_itself_but_not_while_hovered_or_focused(embedded_site, browser):
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1100, "height": 760})
    page = context.new_page()
    try:
        _sign_up(page, embedded_site.base_url, "toast-timer")
        page.goto(f"{embedded_site.base_url}/places/")
        expect(page.locator("#live-status")).to_have_attribute("data-state", "open")
        # Shorter than the page's 8 s, so the test need not wait that long.
        page.evaluate("document.getElementById('toasts').dataset.toastSeconds = '1.5'")
        _log_visits(page, 5)
        toast = page.locator("#toasts [data-toast]")
        expect(toast).to_have_count(1)
        link = toast.get_by_role("link", name="See the badge")
        assert link.get_attribute("href", timeout=1000).endswith("/badges/#badge-places_visited_5")

        toast.hover()
        page.wait_for_timeout(2500)
        expect(toast).to_have_count(1)  # the pointer is on it: it waits
        page.mouse.move(5, 5)
        expect(toast).to_have_count(0, timeout=4000)

        # The next one, read with the keyboard: focus on its link holds it.
        page.evaluate("document.getElementById('toasts').dataset.toastSeconds = '1.5'")
        _log_visits_more(page)
        expect(toast).to_have_count(1)
        toast.get_by_role("link").focus()
        page.wait_for_timeout(2500)
        expect(toast).to_have_count(1)
        page.keyboard.press("Escape")  # Esc still closes it at once
        expect(toast).to_have_count(0, timeout=1000)
    except Exception:
        print(embedded_site.logs())
        raise
    finally:
        context.close()


def _log_visits_more(page) -> None:
    """Six more different places: Globetrotter's Bronze (six in all), another toast."""
    from playwright.sync_api import expect

    places = page.locator("#id_place option[value]:not([value=''])").evaluate_all(
        "options => options.map(option => option.value)"
    )
    page.get_by_label("Place", exact=True).select_option(places[5])
    page.get_by_role("button", name="Log visit").click()
    expect(page.locator(".subheading .count")).to_have_text("(6)")


def test_focus_stays_on_the_form_after_it_is_sent_and_goes_to_what_was_wrong(
    embedded_site, browser
):
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    page = context.new_page()
    try:
        _sign_up(page, embedded_site.base_url, "keyboard-only")
        page.goto(f"{embedded_site.base_url}/places/")
        expect(page.locator("#live-status")).to_have_attribute("data-state", "open")
        place = page.get_by_label("Place", exact=True)
        first = place.locator("option[value]:not([value=''])").first.get_attribute("value")
        place.select_option(first)
        button = page.get_by_role("button", name="Log visit")
        button.focus()
        page.keyboard.press("Enter")
        expect(page.locator(".subheading .count")).to_have_text("(1)")
        expect(page.get_by_role("button", name="Log visit")).to_be_focused()

        # Sent without a place: the form comes back with the error, focus on the field.
        page.get_by_label("Place", exact=True).select_option("")
        page.get_by_role("button", name="Log visit").focus()
        page.keyboard.press("Enter")
        field = page.get_by_label("Place", exact=True)
        expect(field).to_have_attribute("aria-invalid", "true")
        expect(field).to_be_focused()
    except Exception:
        print(embedded_site.logs())
        raise
    finally:
        context.close()


def test_on_a_phone_the_form_progress_and_toasts_fit_the_first_screen(embedded_site, browser):
    """After many visits the progress card still starts within the first screen (the
    recent list shows the latest few), and two toasts leave the form uncovered."""
    from playwright.sync_api import expect

    screen = {"width": 390, "height": 844}
    context = browser.new_context(viewport=screen, is_mobile=True)
    page = context.new_page()
    try:
        _sign_up(page, embedded_site.base_url, "phone-layout")
        page.goto(f"{embedded_site.base_url}/places/")
        expect(page.locator("#live-status")).to_have_attribute("data-state", "open")
        page.evaluate("document.getElementById('toasts').dataset.toastSeconds = '60'")
        _log_visits(page, 6)  # 5 Places Visited, then Globetrotter's Bronze: two toasts
        expect(page.locator("#toasts [data-toast]")).to_have_count(2)
        page.wait_for_timeout(400)
        page.screenshot(path=str(_artifact("phone-visits.png")))
        heading = page.get_by_role("heading", name="Your progress").bounding_box()
        assert heading is not None and heading["y"] + heading["height"] <= screen["height"]
        button = page.get_by_role("button", name="Log visit").bounding_box()
        toasts = page.locator("#toasts").bounding_box()
        assert button is not None and toasts is not None
        assert button["y"] + button["height"] <= toasts["y"], "the toasts cover the form"
    except Exception:
        print(embedded_site.logs())
        raise
    finally:
        context.close()
