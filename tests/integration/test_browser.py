"""A real Chromium: sign in, log visits, watch the bar move and the toast appear, no reload."""

from __future__ import annotations

import pytest

from tests.integration import stack

pytestmark = pytest.mark.browser

STACKS = [
    pytest.param("embedded_site", id="embedded"),
    pytest.param("topology_site", id="topology", marks=pytest.mark.topology),
]


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

        earned = page.locator("#earned-count")
        earned_before = int(earned.inner_text())
        badges = context.new_page()  # a second tab, left on the badge page
        badges.goto(f"{site.base_url}/badges/")
        expect(badges.locator("#live-status")).to_have_attribute("data-state", "open")

        page.get_by_role("link", name="Visits").click()
        expect(page.locator("#live-status")).to_have_attribute("data-state", "open")
        # Anything set here is lost if the page reloads.
        page.evaluate("window.stillTheSamePage = true")

        bar = page.get_by_role("progressbar", name="Progress towards 5 Places Visited")
        expect(bar).to_have_attribute("aria-valuenow", "0")
        places = page.locator("#id_place option[value]:not([value=''])").evaluate_all(
            "options => options.map(option => option.value)"
        )
        for number, place in enumerate(places[:5], start=1):
            page.get_by_label("Place", exact=True).select_option(place)
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
        # The other tab's count of earned badges follows its cards, no reload.
        expect(badges.locator("#earned-count")).to_have_text(str(earned_before + 1))
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


def _sign_up(page, base_url: str, username: str) -> None:
    page.goto(f"{base_url}/accounts/signup/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password", exact=True).fill("a-long-passphrase-9")
    page.get_by_label("Password confirmation").fill("a-long-passphrase-9")
    page.get_by_role("button", name="Sign up").click()


def _log_in(page, base_url: str, username: str) -> None:
    page.goto(f"{base_url}/accounts/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill("a-long-passphrase-9")
    page.get_by_role("button", name="Log in").click()


@pytest.mark.parametrize("site_name", STACKS)
def test_every_open_tab_shows_an_unlock_once_and_a_later_page_catches_up(
    request, browser, site_name
):
    from playwright.sync_api import expect

    site = request.getfixturevalue(site_name)
    username = f"tabs-{site.name}"
    context = browser.new_context(viewport={"width": 1000, "height": 700})
    try:
        first, second = context.new_page(), context.new_page()
        _sign_up(first, site.base_url, username)
        for page in (first, second):
            page.goto(f"{site.base_url}/places/")
            expect(page.locator("#live-status")).to_have_attribute("data-state", "open")

        places = first.locator("#id_place option[value]:not([value=''])").evaluate_all(
            "options => options.map(option => option.value)"
        )
        for number, place in enumerate(places[:5], start=1):
            first.get_by_label("Place", exact=True).select_option(place)
            first.get_by_role("button", name="Log visit").click()
            expect(first.locator(".subheading .count")).to_have_text(f"({number})")

        for page in (first, second):
            expect(page.locator("#toasts [data-toast]")).to_have_count(1)
        first.wait_for_timeout(1000)  # a late duplicate would have arrived by now
        for page in (first, second):
            expect(page.locator("#toasts [data-toast]")).to_have_count(1)

        # Shown and acknowledged: a reload shows it no more.
        second.reload()
        expect(second.locator("#live-status")).to_have_attribute("data-state", "open")
        second.wait_for_timeout(500)
        expect(second.locator("#toasts [data-toast]")).to_have_count(0)

        # An unlock while no page is open is waiting for the next page, once.
        first.close()
        second.close()
        site.python(
            "from django.contrib.auth import get_user_model\n"
            "from django.db import transaction\n"
            "from achievements.events import record_event\n"
            f"user = get_user_model().objects.get(username={username!r})\n"
            "for n in range(10):\n"
            "    with transaction.atomic():\n"
            "        record_event(user, 'image.posted', payload={'image_id': n})\n"
        )
        later = context.new_page()
        later.goto(f"{site.base_url}/badges/")
        toast = later.locator("#toasts [data-toast]")
        # Ten photos in one day: 10 Images Posted, Daily Snapshots (3 a day) once, and
        # the hidden First Frame (the first photo).
        expect(toast).to_have_count(3)
        expect(toast.filter(has_text="10 Images Posted")).to_have_count(1)
        expect(toast.filter(has_text="Daily Snapshots")).to_have_count(1)
        expect(toast.filter(has_text="First Frame")).to_have_count(1)
        later.reload()
        expect(later.locator("#live-status")).to_have_attribute("data-state", "open")
        later.wait_for_timeout(500)
        expect(later.locator("#toasts [data-toast]")).to_have_count(0)
    except Exception:
        print(site.logs())
        raise
    finally:
        context.close()


HOSTILE_NAME = "<img src=x onerror=alert(1)>"
HOSTILE_DESCRIPTION = "<script>alert(2)</script>"


def test_hostile_badge_text_from_staff_never_executes(embedded_site, browser):
    """Staff text reaches every user's page, toasts and the admin: it must stay text."""
    from playwright.sync_api import expect

    site = embedded_site
    site.python(
        "from django.contrib.auth import get_user_model\n"
        "from django.db import transaction\n"
        "from achievements.models import Badge, BadgeRequirement\n"
        "from achievements.events import record_event\n"
        "User = get_user_model()\n"
        f"badge = Badge.objects.create(key='xss', name={HOSTILE_NAME!r},\n"
        f"    description={HOSTILE_DESCRIPTION!r}, icon='<b>!</b>')\n"
        "BadgeRequirement.objects.create(badge=badge, event_type='xss.probe', threshold=1)\n"
        "user = User.objects.create_user('xss-user', password='a-long-passphrase-9')\n"
        "User.objects.create_superuser('xss-admin', 'a@example.com', 'a-long-passphrase-9')\n"
        "with transaction.atomic():\n"
        "    record_event(user, 'xss.probe')\n"
    )
    context = browser.new_context()
    page = context.new_page()
    dialogs: list[str] = []
    violations: list[str] = []

    def on_dialog(dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.on(
        "console",
        lambda message: (
            violations.append(message.text) if "Content Security Policy" in message.text else None
        ),
    )
    try:
        _log_in(page, site.base_url, "xss-user")
        expect(page.locator("#live-status")).to_have_attribute("data-state", "open")
        toast = page.locator("#toasts [data-toast]")
        expect(toast).to_have_count(1)  # the pushed (catch-up) toast, rendered by the consumer
        expect(toast).to_contain_text(HOSTILE_NAME)
        expect(page.locator("#badge-xss")).to_contain_text(HOSTILE_DESCRIPTION)
        page.goto(f"{site.base_url}/places/")
        page.wait_for_timeout(300)
        assert page.locator("img[src='x']").count() == 0
        assert violations == [], violations

        context.clear_cookies()
        _log_in(page, site.base_url, "xss-admin")
        for path in (
            "/admin/achievements/badge/",
            "/admin/achievements/unlock/",
            "/admin/achievements/userbadge/",
        ):
            page.goto(f"{site.base_url}{path}")
            expect(page.get_by_text(HOSTILE_NAME).first).to_be_visible()
        page.goto(f"{site.base_url}/admin/achievements/badge/")
        page.get_by_role("link", name=HOSTILE_NAME).click()
        expect(page.locator("#id_name")).to_have_value(HOSTILE_NAME)
        assert page.locator("img[src='x']").count() == 0
        assert dialogs == []
    finally:
        context.close()
        site.python(
            "from achievements.models import Badge\n"
            "Badge.objects.filter(key='xss').update(is_active=False)\n"
        )
