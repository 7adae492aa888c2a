"""The purchase page in a real headless Chromium against the live server, on a phone-sized screen.

Needs Debian's chromium (/usr/bin/chromium) and the playwright package; without them it skips
and says why, unless REQUIRE_BROWSER=1 (CI), where that is a failure.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"


def _browser_missing() -> str | None:
    if not shutil.which(CHROMIUM):
        return f"the browser test needs Debian's chromium at {CHROMIUM} (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the browser test needs the playwright package (pip install playwright)"
    return None


@pytest.fixture
def browser_page() -> Iterator[Any]:
    reason = _browser_missing()
    if reason:
        if os.environ.get("REQUIRE_BROWSER") == "1":
            pytest.fail(f"REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
        page = context.new_page()
        page.problems = []  # type: ignore[attr-defined]
        page.on("console", lambda message: message.type == "error" and page.problems.append(message.text))  # type: ignore[attr-defined]
        page.on("pageerror", lambda error: page.problems.append(str(error)))  # type: ignore[attr-defined]
        try:
            yield page
        finally:
            browser.close()


def test_a_person_registers_signs_in_and_records_purchases(
    browser_page: Any, live_service: Callable[..., Any], backend: str
) -> None:
    from playwright.sync_api import expect

    page = browser_page
    with live_service() as base:
        page.goto(f"{base}/")
        assert page.title() == "Record a purchase"

        # Register (which signs in), then sign out and sign in again.
        page.click("summary")
        page.fill("#register-username", "shopkeeper")
        page.fill("#register-email", "shop@example.com")
        page.fill("#register-password", "a long enough password")
        page.click("#register-form button[type=submit]")
        page.wait_for_selector("#capture:not([hidden])")
        assert page.text_content("#who") == "shopkeeper"
        page.click("#sign-out")
        page.wait_for_selector("#account:not([hidden])")
        page.fill("#sign-in-username", "shopkeeper")
        page.fill("#sign-in-password", "a long enough password")
        page.press("#sign-in-password", "Enter")
        page.wait_for_selector("#capture:not([hidden])")

        # A good purchase: shown as saved, for a new customer, and listed.
        page.fill("#customer-email", "Tim@Example.com")
        page.fill("#customer-name", "Tim")
        page.fill("#item", "book")
        page.fill("#quantity", "2")
        page.fill("#unit-price", "12.50")
        page.click("#purchase-form button[type=submit]")
        page.wait_for_selector("#result:not([hidden])")
        assert "new customer" in page.text_content("#result")
        assert "25.00 USD" in page.text_content("#result")
        page.wait_for_selector("#latest-list li")
        assert "2 \u00d7 book" in page.text_content("#latest-list")

        # A bad price: the message stands beside the price field, and nothing is listed.
        page.fill("#item", "pen")
        page.fill("#unit-price", "12.345")
        page.click("#purchase-form button[type=submit]")
        expect(page.locator("#error-unit_price")).not_to_be_empty()
        assert "two decimal places" in page.text_content("#error-unit_price")
        assert page.get_attribute("#unit-price", "aria-invalid") == "true"
        beside = page.evaluate(
            "document.getElementById('unit-price').closest('.field')"
            " === document.getElementById('error-unit_price').closest('.field')"
        )
        assert beside
        assert page.locator("#latest-list li").count() == 1

        # The same customer again, by keyboard alone: the page says "updated".
        page.focus("#customer-email")
        page.keyboard.press("Control+A")
        page.keyboard.type("tim@example.com")
        page.keyboard.press("Tab")
        page.keyboard.press("Control+A")
        page.keyboard.type("Timothy")
        page.keyboard.press("Tab")
        page.keyboard.type("lamp")
        page.keyboard.press("Tab")
        page.keyboard.press("Control+A")
        page.keyboard.type("1")
        page.keyboard.press("Tab")
        page.keyboard.press("Control+A")
        page.keyboard.type("30")
        page.keyboard.press("Enter")
        expect(page.locator("#result")).to_contain_text("customer updated")
        assert page.get_attribute("#unit-price", "aria-invalid") is None
        expect(page.locator("#latest-list li")).to_have_count(2)
        assert "Timothy" in page.text_content("#result")

        # It fits a phone: nothing wider than the screen.
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"purchase-page-{backend}.png"), full_page=True)
    # No script errors and no CSP violations; the one failed request is the bad price, on purpose.
    expected = "Failed to load resource: the server responded with a status of 422 (Unprocessable Entity)"
    assert [problem for problem in page.problems if problem != expected] == []


def test_the_docs_page_renders_the_api_in_the_browser(
    browser_page: Any, live_service: Callable[..., Any], backend: str
) -> None:
    page = browser_page
    with live_service() as base:
        page.goto(f"{base}/docs")
        page.wait_for_selector(".opblock-summary-path", timeout=15000)
        paths = page.locator(".opblock-summary-path").all_text_contents()
        assert any("/purchases" in path for path in paths)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"docs-{backend}.png"))
    assert page.problems == []
