"""Fixtures shared by the browser tests."""

from __future__ import annotations

import pytest

from tests.integration import stack

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
