"""The webhooks' admin in a real Chromium, as staff use it: a refused address first,
then a receiver, a test message, the delivery log; axe finds nothing serious."""

from __future__ import annotations

import pytest

from tests.integration import stack
from tests.integration.test_accessibility import violations
from tests.integration.test_browser import _artifact
from tests.integration.test_staff_browser import _admin_page
from tests.webhooks.receiver import Receiver

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def hook_site(tmp_path_factory):
    """The embedded site, allowed to send to a receiver on 127.0.0.1."""
    with stack.embedded_stack(
        tmp_path_factory.mktemp("hooks"), ACCOLADE_WEBHOOK_ALLOW_PRIVATE_ADDRESSES="1"
    ) as site:
        yield site


@pytest.fixture
def receiver():
    receiver = Receiver()
    receiver.start()
    yield receiver
    receiver.stop()


def serious(page) -> list[str]:
    return [v for v in violations(page) if "(critical)" in v or "(serious)" in v]


@pytest.mark.parametrize("screen", [{"width": 1280, "height": 800}, {"width": 390, "height": 844}])
def test_staff_add_an_endpoint_send_a_test_and_read_the_log(hook_site, browser, receiver, screen):
    context, page = _admin_page(browser, hook_site, viewport=screen, bypass_csp=True)
    found: dict[str, list[str]] = {}
    try:
        page.goto(f"{hook_site.base_url}/admin/webhooks/endpoint/add/")
        found["add"] = serious(page)
        url_field = page.get_by_label("URL")
        url_field.fill("ftp://example.com/hook")
        page.get_by_label("Badge unlocked (earned or granted)").check()
        page.get_by_role("button", name="Save", exact=True).click()
        page.get_by_text("This URL must start with http:// or https://").wait_for()
        found["add, refused"] = serious(page)

        page.get_by_label("URL").fill(receiver.url)
        page.get_by_label("Description").fill(f"CRM {screen['width']}")
        page.get_by_role("button", name="Save", exact=True).click()
        page.get_by_text("was added successfully").wait_for()
        found["list"] = serious(page)

        row = page.get_by_role("row").filter(has_text=f"CRM {screen['width']}")
        row.get_by_role("checkbox").check()
        page.locator("select[name=action]").select_option(label="Send a test message")
        page.get_by_role("button", name="Go").click()
        page.get_by_text("the test message was delivered (HTTP 204").wait_for()
        assert receiver.received[-1].document["type"] == "webhook.test"

        page.get_by_role("link", name=f"CRM {screen['width']}").first.click()
        page.get_by_role("heading", name="Delivery log").wait_for()
        page.get_by_role("table", name="The last try").wait_for()
        found["change"] = serious(page)
        page.screenshot(path=_artifact(f"webhook-endpoint-{screen['width']}.png"), full_page=True)

        page.goto(f"{hook_site.base_url}/admin/webhooks/delivery/")
        found["deliveries"] = serious(page)
        page.goto(f"{hook_site.base_url}/admin/ingest/rejected/")
        found["rejected"] = serious(page)
        page.goto(f"{hook_site.base_url}/admin/")
        found["index"] = serious(page)
    finally:
        context.close()
    assert not any(found.values()), found
