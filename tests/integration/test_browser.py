"""A real Chromium: sign in, log visits, watch the bar move and the toast appear, no reload."""

from __future__ import annotations

import pytest

from tests.integration import stack

pytestmark = pytest.mark.browser

STACKS = [
    pytest.param("embedded_site", id="embedded"),
    pytest.param("topology_site", id="topology", marks=pytest.mark.topology),
]

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser():
    stack.require(
        stack.chromium_available(),
        f"Chromium at {stack.CHROMIUM}",
        "Install it with `apt-get install -y chromium` (CI does this itself).",
    )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=stack.CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.mark.parametrize("site_name", STACKS)
def test_visits_move_the_bar_and_unlock_a_toast_without_a_reload(request, browser, site_name):
    from playwright.sync_api import expect

    site = request.getfixturevalue(site_name)
    context = browser.new_context(viewport={"width": 1100, "height": 760})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        page.goto(f"{site.base_url}/accounts/login/")
        page.get_by_label("Username").fill("bob")
        page.get_by_label("Password").fill(stack.DEMO_PASSWORD)
        page.get_by_role("button", name="Log in").click()
        expect(page.get_by_role("heading", name="My badges")).to_be_visible()

        page.get_by_role("link", name="Visits").click()
        expect(page.locator("#live-status")).to_have_attribute("data-state", "open")
        # Anything set here is lost if the page reloads.
        page.evaluate("window.stillTheSamePage = true")

        bar = page.get_by_role("progressbar", name="Progress towards 5 Places Visited")
        expect(bar).to_have_attribute("aria-valuenow", "0")
        options = page.locator("#id_place option[value]:not([value=''])")
        for number in range(1, 6):
            value = options.nth(number - 1).get_attribute("value")
            page.get_by_label("Place", exact=True).select_option(value)
            page.get_by_role("button", name="Log visit").click()
            expect(bar).to_have_attribute("aria-valuenow", str(min(number * 20, 100)))
            if number == 3:
                page.screenshot(path=str(_artifact(f"progress-{site.name}.png")))

        toast = page.locator("#toasts [data-toast]")
        expect(toast).to_have_count(1)
        expect(toast).to_contain_text("Badge unlocked: 5 Places Visited")
        page.wait_for_timeout(400)  # let the entrance animation finish for the screenshot
        page.screenshot(path=str(_artifact(f"toast-{site.name}.png")))
        assert page.evaluate("window.stillTheSamePage") is True

        page.get_by_role("button", name="Dismiss notification: 5 Places Visited").click()
        expect(toast).to_have_count(0)
        assert errors == []
    except Exception:
        page.screenshot(path=str(_artifact(f"failure-{site.name}.png")))
        print(site.logs())
        raise
    finally:
        context.close()


def test_the_pages_fit_a_phone_screen(embedded_site, browser):
    context = browser.new_context(viewport={"width": 375, "height": 740}, is_mobile=True)
    page = context.new_page()
    try:
        page.goto(f"{embedded_site.base_url}/accounts/login/")
        page.get_by_label("Username").fill("alice")
        page.get_by_label("Password").fill(stack.DEMO_PASSWORD)
        page.get_by_role("button", name="Log in").click()
        for path in ("/badges/", "/places/", "/places/photos/"):
            page.goto(f"{embedded_site.base_url}{path}")
            overflow = page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert overflow <= 0, f"{path} scrolls sideways by {overflow}px at phone width"
        page.goto(f"{embedded_site.base_url}/places/")
        page.screenshot(path=str(_artifact("phone-visits.png")), full_page=True)
    finally:
        context.close()


def _artifact(name: str):
    stack.ARTIFACTS.mkdir(exist_ok=True)
    return stack.ARTIFACTS / name
