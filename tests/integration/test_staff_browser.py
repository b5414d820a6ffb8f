"""Staff pages in a real Chromium: a re-evaluation job's live progress, and the reports."""

from __future__ import annotations

import re

import pytest

from tests.integration import stack
from tests.integration.test_accessibility import violations
from tests.integration.test_browser import _artifact

pytestmark = pytest.mark.browser

# 40 users with 8 visits each, already evaluated, so a re-evaluation has work.
SEED = """
from django.contrib.auth import get_user_model
from django.utils import timezone
from achievements.models import Event
now = timezone.now()
users = [get_user_model().objects.create_user(f"walker{n}") for n in range(40)]
Event.objects.bulk_create([
    Event(event_id=f"walk-{user.pk}-{n}", event_type="visit.created", user=user,
          occurred_at=now, received_at=now, processed_at=now, payload={"place_id": n})
    for user in users for n in range(8)
])
"""


@pytest.fixture(scope="module")
def paced_site(tmp_path_factory):
    """The embedded site with re-evaluation capped at 40 events/s, so a job takes seconds."""
    with stack.embedded_stack(
        tmp_path_factory.mktemp("paced"), ACCOLADE_REEVALUATION_MAX_EVENTS_PER_SECOND="40"
    ) as site:
        site.python(SEED)
        yield site


def _admin_page(browser, site, **options):
    context = browser.new_context(**options)
    page = context.new_page()
    page.goto(f"{site.base_url}/admin/login/")
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password").fill(stack.DEMO_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("heading", name="Site administration").wait_for()
    return context, page


def test_a_reevaluation_moves_live_and_ends_with_its_report(paced_site, browser):
    from playwright.sync_api import expect

    context, page = _admin_page(browser, paced_site, viewport={"width": 1100, "height": 800})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        page.goto(f"{paced_site.base_url}/admin/achievements/badge/")
        page.locator("tr", has_text="5 Places Visited").locator("input.action-select").check()
        page.locator("select[name=action]").select_option("reevaluate")
        page.get_by_role("button", name="Go").click()
        page.get_by_label("Unlock and notify them (a toast)").check()
        page.get_by_role("button", name="Start re-evaluation").click()

        bar = page.get_by_role("progressbar", name="Re-evaluation progress")
        expect(bar).to_be_visible()
        page.evaluate("window.stillTheSamePage = true")
        seen = set()
        for _ in range(200):  # up to 20 s; the cap makes it about 8 s
            seen.add(int(bar.get_attribute("aria-valuenow")))
            if 100 in seen:
                break
            if len(seen) == 3:
                page.screenshot(path=str(_artifact("reevaluation-running.png")))
            page.wait_for_timeout(100)
        assert 100 in seen, f"the bar stopped at {max(seen)} %"
        assert len([v for v in seen if 0 < v < 100]) >= 3, f"no steps pushed between: {seen}"
        assert page.evaluate("window.stillTheSamePage") is True  # pushed, not reloaded

        panel = page.locator(".reevaluation-panel")
        expect(panel).to_contain_text("Done")
        expect(panel).to_contain_text("320 of 320 events")
        expect(panel).to_contain_text("40 user(s) newly qualify")
        expect(page.get_by_role("button", name="Cancel this re-evaluation")).to_be_hidden()
        page.screenshot(path=str(_artifact("reevaluation-done.png")), full_page=True)

        page.reload()  # the stored state, as after closing the tab
        expect(page.locator(".reevaluation-panel")).to_contain_text("40 user(s) newly qualify")
        assert errors == []
    except Exception:
        page.screenshot(path=str(_artifact("failure-reevaluation.png")))
        print(paced_site.logs())
        raise
    finally:
        context.close()


def test_the_reports_page_reads_at_desktop_and_phone_width(paced_site, browser):
    from playwright.sync_api import expect

    for name, viewport in (("desktop", (1100, 800)), ("phone", (375, 740))):
        context, page = _admin_page(
            browser,
            paced_site,
            viewport={"width": viewport[0], "height": viewport[1]},
            bypass_csp=True,  # axe is an injected script
        )
        try:
            page.goto(f"{paced_site.base_url}/admin/reports/")
            expect(page.get_by_role("heading", name="Rarity")).to_be_visible()
            expect(page.get_by_role("img", name="Unlocks per day")).to_be_visible()
            # The chart keeps its size and scrolls in its frame; the page does not.
            expect(page.get_by_role("region", name="Chart of unlocks per day")).to_be_visible()
            assert page.evaluate("document.documentElement.scrollWidth <= innerWidth + 1")
            found = [v for v in violations(page) if "(critical)" in v or "(serious)" in v]
            assert found == [], found
            page.get_by_label("Flag event types quiet for").fill("30")
            page.get_by_role("button", name="Show").click()
            expect(page).to_have_url(re.compile(r"quiet=30"))
            page.screenshot(path=str(_artifact(f"reports-{name}.png")), full_page=True)
            # The browser refuses 0 itself (min="1"); the server says why too.
            page.goto(f"{paced_site.base_url}/admin/reports/?quiet=0")
            expect(page.locator(".errorlist")).to_contain_text("Quiet days must be")
        finally:
            context.close()
