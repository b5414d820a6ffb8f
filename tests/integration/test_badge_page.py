"""The badge page as a user meets it, in a real Chromium: rarity, tiers, locked and
mystery cards, a bar per requirement, a celebration on the open page (none when
motion is reduced), show and sort controls; and the signed-out home page."""

from __future__ import annotations

import re

import pytest

from tests.integration.test_browser import _sign_up

pytestmark = pytest.mark.browser

# Other tests' users share the site, so the figure itself varies.
RARITY = re.compile(
    r"^(Rare )?(Earned by (fewer than )?\d+% of members|Nobody has earned it yet)$"
)


def _visit_places(page, base_url: str, count: int) -> None:
    from playwright.sync_api import expect

    page.goto(f"{base_url}/places/")
    expect(page.locator("#live-status")).to_have_attribute("data-state", "open")
    places = page.locator("#id_place option[value]:not([value=''])").evaluate_all(
        "options => options.map(option => option.value)"
    )
    for number, place in enumerate(places[:count], start=1):
        page.get_by_label("Place", exact=True).select_option(place)
        page.get_by_role("button", name="Log visit").click()
        expect(page.locator(".subheading .count")).to_have_text(f"({number})")


def test_the_badge_page_shows_rarity_tiers_locks_mysteries_and_a_bar_per_requirement(
    embedded_site, browser
):
    from playwright.sync_api import expect

    base = embedded_site.base_url
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    try:
        _sign_up(page, base, "page-looks")
        _visit_places(page, base, 3)
        page.goto(f"{base}/badges/")

        places = page.locator("#badge-places_visited_5")
        expect(places).to_have_class("badge-card is-locked")
        expect(places.locator(".locked-tag")).to_have_text("Locked")
        expect(places.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "60")
        expect(places.locator(".badge-rarity")).to_have_text(RARITY)

        # Tiers: each threshold, and how far this user is from the next one.
        ladder = page.locator("#badge-globetrotter").get_by_role(
            "list", name="Tiers, in different places"
        )
        steps = ladder.get_by_role("listitem")
        expect(steps).to_have_count(3)
        expect(steps.nth(0)).to_have_class("tier-step is-next")
        expect(steps.nth(0)).to_contain_text("Bronze")
        expect(steps.nth(0)).to_contain_text("6")
        expect(steps.nth(0)).to_contain_text("next: 3 to go")
        expect(steps.nth(2)).to_contain_text("Gold")

        # A badge of two requirements: a bar for each.
        marathon = page.locator("#badge-photo_marathon")
        bars = marathon.get_by_role("progressbar")
        expect(bars).to_have_count(2)
        expect(marathon.get_by_role("progressbar", name="0 of 20 photos")).to_have_count(1)
        expect(marathon.get_by_role("progressbar", name="0 of 5 photos today")).to_have_count(1)

        # A hidden badge: a mystery, with nothing of its rule or progress showing.
        mystery = page.locator(".badge-card.is-mystery")
        expect(mystery).to_have_count(1)
        expect(mystery.locator(".badge-name")).to_have_text("Mystery badge")
        expect(mystery.get_by_role("progressbar")).to_have_count(0)
        expect(mystery).not_to_contain_text("photo")
    except Exception:
        print(embedded_site.logs())
        raise
    finally:
        context.close()


# Records, on the page, whether any card ever celebrated (the class comes and goes).
WATCH_CELEBRATIONS = """() => {
    window.celebrated = [];
    new MutationObserver(changes => changes.forEach(change => {
        if (change.target.classList && change.target.classList.contains("is-celebrating"))
            window.celebrated.push(change.target.id);
    })).observe(document.body, {subtree: true, attributes: true, attributeFilter: ["class"]});
}"""


@pytest.mark.parametrize("motion", ["no-preference", "reduce"])
def test_a_badge_earned_while_its_page_is_open_celebrates_unless_motion_is_reduced(
    embedded_site, browser, motion
):
    from playwright.sync_api import expect

    base = embedded_site.base_url
    context = browser.new_context(viewport={"width": 1280, "height": 800}, reduced_motion=motion)
    try:
        badges, places = context.new_page(), context.new_page()
        _sign_up(badges, base, f"party-{motion}")
        badges.goto(f"{base}/badges/")
        expect(badges.locator("#live-status")).to_have_attribute("data-state", "open")
        badges.evaluate(WATCH_CELEBRATIONS)
        expect(badges.locator("#earned-count")).to_have_text("0")

        _visit_places(places, base, 5)
        card = badges.locator("#badge-places_visited_5")
        expect(card).to_have_class(re.compile(r"\bis-earned\b"))
        expect(badges.locator("#earned-count")).to_have_text("1")
        if motion == "reduce":
            badges.wait_for_timeout(500)
            assert badges.evaluate("window.celebrated") == []
        else:
            expect(card).to_have_class(re.compile(r"\bis-celebrating\b"))
            assert badges.evaluate("window.celebrated")[0] == "badge-places_visited_5"
            assert card.evaluate("c => getComputedStyle(c).animationName") == "card-celebrate"
            expect(card).not_to_have_class(re.compile(r"\bis-celebrating\b"), timeout=3000)
        # Reloaded: it is simply earned, nothing celebrates again.
        badges.reload()
        badges.evaluate(WATCH_CELEBRATIONS)
        badges.wait_for_timeout(500)
        assert badges.evaluate("window.celebrated") == []
    except Exception:
        print(embedded_site.logs())
        raise
    finally:
        context.close()


def test_show_and_sort_the_badges_with_the_address_kept(embedded_site, browser):
    from playwright.sync_api import expect

    base = embedded_site.base_url
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    page = context.new_page()
    try:
        _sign_up(page, base, "sorter")
        _visit_places(page, base, 5)  # 5 Places Visited earned; Globetrotter 5 of 6
        page.goto(f"{base}/badges/")

        page.get_by_label("Show", exact=True).select_option("earned")
        expect(page).to_have_url(re.compile(r"show=earned"))
        expect(page.locator("#in-progress-heading")).to_have_count(0)
        expect(page.locator("#badge-lists .badge-card")).to_have_count(1)
        expect(page.locator("#badge-lists .badge-card")).to_have_id("badge-places_visited_5")
        expect(page.locator("#badge-filter-status")).to_have_text(
            "1 badge, earned only, suggested order."
        )

        page.get_by_label("Show", exact=True).select_option("in_progress")
        page.get_by_label("Sort by").select_option("closest")
        expect(page).to_have_url(re.compile(r"sort=closest"))
        expect(page.locator("#earned-heading")).to_have_count(0)
        # Globetrotter (5 of 6) is the closest to unlock.
        expect(page.locator("#badge-lists .badge-card").first).to_have_id("badge-globetrotter")

        # The address says what is shown: reloaded, it shows the same.
        page.reload()
        expect(page.get_by_label("Sort by")).to_have_value("closest")
        expect(page.locator("#badge-lists .badge-card").first).to_have_id("badge-globetrotter")

        # A value the page does not know: said plainly, next to its control.
        response = page.goto(f"{base}/badges/?sort=loudest")
        assert response.status == 400
        expect(page.get_by_label("Sort by")).to_have_attribute("aria-invalid", "true")
        expect(page.locator(".badge-filters .error")).to_contain_text("loudest")
    except Exception:
        print(embedded_site.logs())
        raise
    finally:
        context.close()


@pytest.mark.parametrize("width", [1280, 390])
def test_the_signed_out_home_page_explains_the_site_and_shows_badges(
    embedded_site, browser, width
):
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": width, "height": 800})
    page = context.new_page()
    try:
        page.goto(f"{embedded_site.base_url}/")
        expect(page.get_by_role("heading", name="How it works")).to_be_visible()
        sample = page.get_by_role("region", name="Badges to earn").get_by_role("listitem")
        expect(sample.first).to_be_visible()
        assert 3 <= sample.count() <= 6
        expect(sample.filter(has_text="Globetrotter")).to_contain_text("Bronze, Silver, Gold")
        for rarity in sample.locator(".badge-rarity").all():
            expect(rarity).to_have_text(RARITY)
        # Hidden badges stay hidden, even by name.
        expect(page.locator("main")).not_to_contain_text("First Frame")
        expect(page.locator("main")).not_to_contain_text("Mystery")
        # Two ways in, both reachable.
        expect(page.get_by_role("link", name="Create an account")).to_be_visible()
    finally:
        context.close()
