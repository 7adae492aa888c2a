"""The purchase page in a real headless Chromium against the live server, on a phone-sized screen.

Needs Debian's chromium (/usr/bin/chromium) and the playwright package; without them it skips
and says why, unless REQUIRE_BROWSER=1 (CI), where that is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx2 as httpx
import pytest

from service.config import load_settings
from tests.conftest import ROOT, pooler_settings
from tests.conftest import set_role as give_role

pytestmark = pytest.mark.slow
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"
# A phone's screen; the page must never be wider (a phone browser would zoom out to show it all).
PHONE = {"width": 390, "height": 844}


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
        context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
        page = context.new_page()
        page.problems = []  # type: ignore[attr-defined]
        page.on("console", lambda message: message.type == "error" and page.problems.append(message.text))  # type: ignore[attr-defined]
        page.on("pageerror", lambda error: page.problems.append(str(error)))  # type: ignore[attr-defined]
        try:
            yield page
        finally:
            browser.close()


def set_role(database_url: str, username: str, role: str) -> None:
    """What an administrator's `python -m service user set-role USERNAME ROLE` does to the live
    service's database (the command itself is tested in test_access.py)."""
    environ = {"DATABASE_URL": database_url, **pooler_settings(database_url)}
    give_role(load_settings(environ=environ, env_file=None), username, role)


STAFF_PASSWORD = "a long enough password"


def staff_headers(api: httpx.Client, database_url: str, username: str) -> dict[str, str]:
    """A staff account made through the API (then promoted, as an administrator would): its
    Authorization header. Its password is STAFF_PASSWORD."""
    account = {"username": username, "email": f"{username}@example.com", "password": STAFF_PASSWORD}
    assert api.post("/auth/register", json=account).status_code == 201
    set_role(database_url, username, "staff")
    signed_in = api.post("/auth/login", json={"username": username, "password": STAFF_PASSWORD})
    return {"Authorization": f"Bearer {signed_in.json()['access_token']}"}


def test_a_person_registers_signs_in_and_records_purchases(
    browser_page: Any, live_service: Callable[..., Any], backend: str, database_url: str
) -> None:
    from playwright.sync_api import expect

    page = browser_page
    with live_service() as base:
        page.goto(f"{base}/")
        assert page.title() == "Record a purchase"

        # Register (which signs in): a new account is a member, and the page says at once that
        # the ledger needs a staff account, instead of offering views that would each fail.
        page.click("summary")
        page.fill("#register-username", "shopkeeper")
        page.fill("#register-email", "shop@example.com")
        page.fill("#register-password", "a long enough password")
        page.click("#register-form button[type=submit]")
        page.wait_for_selector("#staff-needed:not([hidden])")
        assert page.text_content("#who") == "shopkeeper"
        assert page.text_content("#member-name") == "shopkeeper"
        assert page.text_content("#set-role-command") == "python -m service user set-role shopkeeper staff"
        assert page.is_hidden("#capture") and page.is_hidden("#latest")
        assert page.locator("nav a[data-view]:visible").count() == 0
        page.goto(f"{base}/#reports")  # an address that names a view changes nothing for a member
        page.wait_for_selector("#staff-needed:not([hidden])")
        assert page.is_hidden("#reports")
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"purchase-page-member-{backend}.png"), full_page=True)

        # An administrator makes the account staff; a reload (as the page says) shows the views.
        set_role(database_url, "shopkeeper", "staff")
        page.goto(f"{base}/#record")
        page.reload()
        page.wait_for_selector("#capture:not([hidden])")
        assert page.is_hidden("#staff-needed")
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
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        page.screenshot(path=str(ARTIFACTS / f"purchase-page-{backend}.png"), full_page=True)

        # Made a member again while signed in: the next purchase is refused (403), and the page
        # says why instead of showing the refusal as an error of the form.
        set_role(database_url, "shopkeeper", "member")
        page.fill("#item", "chair")
        page.click("#purchase-form button[type=submit]")
        page.wait_for_selector("#staff-needed:not([hidden])")
        assert page.is_hidden("#capture") and page.text_content("#purchase-error") == ""
    # No script errors and no CSP violations; the failed requests are on purpose: the bad price
    # (422) and the purchase of a member (403).
    expected = {
        "Failed to load resource: the server responded with a status of 422 (Unprocessable Entity)",
        "Failed to load resource: the server responded with a status of 403 (Forbidden)",
    }
    assert [problem for problem in page.problems if problem not in expected] == []


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


def _money(cents: int) -> str:
    """As the page shows a sum: 1,250.00."""
    return f"{cents // 100:,}.{cents % 100:02d}"


def _cents(money: str) -> int:
    whole, _, fraction = money.partition(".")
    return int(whole) * 100 + int((fraction + "00")[:2])


def _grouped(money: str) -> str:
    """The API's "1250.00" as the page shows every figure: 1,250.00."""
    return _money(_cents(money))


def _seed_sales(base: str, headers: dict[str, str], today: datetime) -> None:
    """Purchases on several days (one 40 days back, outside the default range), and 23 by tim."""

    def at(days_back: int, hour: int = 12) -> str:
        return (today - timedelta(days=days_back)).strftime(f"%Y-%m-%dT{hour:02d}:00:00Z")

    purchases = [
        {
            "customer": {"email": "ann@example.com", "name": "Ann"},
            "item": "lamp",
            "quantity": 1,
            "unit_price": "30.00",
            "purchased_at": at(0, 0),
        },
        {
            "customer": {"email": "bob@example.com", "name": "Bob"},
            "item": "desk",
            "quantity": 1,
            "unit_price": "1249.99",
            "purchased_at": at(2),
        },
        {
            "customer": {"email": "bob@example.com", "name": "Bob"},
            "item": "chair",
            "quantity": 4,
            "unit_price": "89.50",
            "purchased_at": at(2, 15),
        },
        {
            "customer": {"email": "cy@example.com", "name": "Cy"},
            "item": "desk",
            "quantity": 2,
            "unit_price": "1249.99",
            "purchased_at": at(40),
        },
    ] + [
        {
            "customer": {"email": "tim@example.com", "name": "Tim"},
            "item": ["book", "pen", "ink"][n % 3],
            "quantity": n % 4 + 1,
            "unit_price": f"{n + 1}.25",
            "purchased_at": at(n % 9 + 1, n % 24),
        }
        for n in range(23)
    ]
    answer = httpx.post(f"{base}/purchases/batch", json={"purchases": purchases}, headers=headers, timeout=30)
    assert answer.status_code == 201, answer.text


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
def test_reports_chart_the_report_routes_figures_and_a_customer_is_found_and_paged(
    browser_page: Any, live_service: Callable[..., Any], backend: str, database_url: str
) -> None:
    from playwright.sync_api import expect

    page = browser_page
    today = datetime.now(UTC)
    with live_service() as base, httpx.Client(base_url=base, timeout=30) as api:
        headers = staff_headers(api, database_url, "shopkeeper")
        _seed_sales(base, headers, today)

        def report(group_by: str, first_day: datetime, limit: int) -> list[dict[str, Any]]:
            since = first_day.strftime("%Y-%m-%dT00:00:00Z")
            until = (today + timedelta(days=1)).strftime("%Y-%m-%dT00:00:00Z")
            params = {"group_by": group_by, "since": since, "until": until, "limit": limit}
            rows: list[dict[str, Any]] = api.get("/reports/sales", params=params, headers=headers).json()[
                "rows"
            ]
            return rows

        # Signed in straight onto the Reports view (#reports), by keyboard.
        page.goto(f"{base}/#reports")
        page.fill("#sign-in-username", "shopkeeper")
        page.fill("#sign-in-password", "a long enough password")
        page.press("#sign-in-password", "Enter")
        expect(page.locator("#chart rect.bar")).to_have_count(30)
        assert page.title() == "Reports"
        assert page.get_attribute("nav a[data-view=reports]", "aria-current") == "page"

        # The default range: the last 30 UTC days. Every figure is the report route's.
        days = report("day", today - timedelta(days=29), 1000)
        assert len(days) >= 5
        table = page.eval_on_selector_all(
            "#days-table tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent))"
        )
        assert table == [
            [d["key"], f"{d['purchases']:,}", f"{d['quantity']:,}", _grouped(d["revenue"])] for d in days
        ]
        bars = page.eval_on_selector_all(
            "#chart rect.bar",
            "bars => bars.map(b => [b.dataset.day, b.dataset.revenue, Number(b.getAttribute('height')),"
            " b.querySelector('title').textContent])",
        )
        assert len(bars) == 30 and bars[-1][0] == today.strftime("%Y-%m-%d")
        by_day = {d["key"]: d for d in days}
        tallest = max(height for _, _, height, _ in bars)
        most = max(_cents(d["revenue"]) for d in days)
        for day, revenue, height, title in bars:
            cents = _cents(by_day[day]["revenue"]) if day in by_day else 0
            assert revenue == _money(cents) and title.startswith(f"{day}: {_money(cents)} USD")
            assert abs(height / tallest - cents / most) < 0.01  # drawn to scale
        assert page.text_content("#total-purchases") == f"{sum(d['purchases'] for d in days):,}"
        assert page.text_content("#total-quantity") == f"{sum(d['quantity'] for d in days):,}"
        assert page.text_content("#total-revenue") == f"{_money(sum(_cents(d['revenue']) for d in days))} USD"
        top = page.eval_on_selector_all(
            "#top-items tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent))"
        )
        items = report("item", today - timedelta(days=29), 10)
        assert top == [
            [i["key"], f"{i['purchases']:,}", f"{i['quantity']:,}", _grouped(i["revenue"])] for i in items
        ]
        assert "desk" in page.text_content("#top-items") and "most was" in page.text_content("#chart-summary")
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"reports-phone-{backend}.png"), full_page=True)

        # A wider range takes in the desk sold 40 days back; a backwards one is refused beside "To".
        page.fill("#range-from", (today - timedelta(days=45)).strftime("%Y-%m-%d"))
        page.press("#range-from", "Enter")
        wide = report("day", today - timedelta(days=45), 1000)
        expect(page.locator("#total-revenue")).to_have_text(
            f"{_money(sum(_cents(d['revenue']) for d in wide))} USD"
        )
        expect(page.locator("#chart rect.bar")).to_have_count(46)
        page.fill("#range-to", (today - timedelta(days=50)).strftime("%Y-%m-%d"))
        page.press("#range-to", "Enter")
        expect(page.locator("#range-error-to")).to_have_text("Must be on or after the first day.")
        assert page.get_attribute("#range-to", "aria-invalid") == "true"
        page.set_viewport_size({"width": 1280, "height": 900})
        page.fill("#range-to", today.strftime("%Y-%m-%d"))
        page.press("#range-to", "Enter")
        expect(page.locator("#range-error-to")).to_be_empty()
        page.screenshot(path=str(ARTIFACTS / f"reports-desktop-{backend}.png"), full_page=True)

        # Find a customer, by keyboard alone: the view's link, the email, Enter.
        page.focus("nav a[data-view=customer]")
        page.keyboard.press("Enter")
        expect(page.locator("#customer-title")).to_be_focused()
        page.keyboard.press("Tab")
        page.keyboard.type("nobody@example.com")
        page.keyboard.press("Enter")
        expect(page.locator("#find-error-email")).to_have_text("No customer has this email.")
        page.keyboard.press("Control+A")
        page.keyboard.type("TIM@example.com")
        page.keyboard.press("Enter")
        expect(page.locator("#found-purchases li")).to_have_count(10)
        tim = api.get("/customers", params={"email": "tim@example.com"}, headers=headers).json()["items"][0]
        summary = api.get(f"/customers/{tim['id']}/summary", headers=headers).json()
        assert page.text_content("#found-count") == "23" == str(summary["purchase_count"])
        assert page.text_content("#found-spent") == f"{_grouped(summary['total_spent'])} USD"
        assert page.text_content("#found-quantity") == f"{summary['total_quantity']:,}"
        found_top = page.eval_on_selector_all(
            "#found-top tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent))"
        )
        assert found_top == [
            [t["item"], f"{t['quantity']:,}", _grouped(t["spent"])] for t in summary["top_items"]
        ]
        page.screenshot(path=str(ARTIFACTS / f"customer-desktop-{backend}.png"), full_page=True)

        # Older purchases, a page at a time, until the cursor runs out: every one, newest first.
        for shown in (20, 23):
            page.focus("#found-more")
            page.keyboard.press("Enter")
            expect(page.locator("#found-purchases li")).to_have_count(shown)
        expect(page.locator("#found-more")).to_be_hidden()
        assert page.text_content("#found-shown") == "23 of 23 shown"
        expected, cursor = [], None
        while True:
            params = {"limit": 100, **({"cursor": cursor} if cursor else {})}
            listed = api.get(f"/customers/{tim['id']}/purchases", params=params, headers=headers).json()
            expected += [
                f"{p['quantity']:,} \u00d7 {p['item']} \u2014 {_grouped(p['total'])} USD"
                for p in listed["items"]
            ]
            if not (cursor := listed["next_cursor"]):
                break
        shown_rows = page.eval_on_selector_all(
            "#found-purchases li > span:first-child", "s => s.map(e => e.textContent)"
        )
        assert shown_rows == expected
        page.set_viewport_size(PHONE)
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        page.screenshot(path=str(ARTIFACTS / f"customer-phone-{backend}.png"), full_page=True)
    # No script errors and no CSP violations.
    assert page.problems == []


def _seed_large_sales(base: str, headers: dict[str, str], today: datetime) -> None:
    """A big shop's month: 2,400 purchases over 24 days, eight-figure revenue a day, item names of a
    real catalogue's length."""
    items = [
        "ergonomic standing desk with memory presets",
        "office chair",
        "monitor arm",
        "4k monitor 32in",
        "cable tray",
    ]
    purchases = [
        {
            "customer": {"email": f"buyer{n % 300}@example.com", "name": f"Buyer {n % 300}"},
            "item": items[n % len(items)],
            "quantity": 1 + n % 60,
            "unit_price": f"{1_899 + n % 7_000}.{n % 100:02d}",
            "purchased_at": (today - timedelta(days=n % 24, hours=n % 11)).strftime("%Y-%m-%dT%H:%M:00Z"),
        }
        for n in range(2_400)
    ]
    for start in range(0, len(purchases), 1_000):
        batch = {"purchases": purchases[start : start + 1_000]}
        answer = httpx.post(f"{base}/purchases/batch", json=batch, headers=headers, timeout=60)
        assert answer.status_code == 201, answer.text


# The layout does not depend on the database; the figures' agreement with the routes is checked on
# both databases above.
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_reports_at_real_sizes_fit_a_phone_with_every_figure_whole_and_grouped(
    browser_page: Any, live_service: Callable[..., Any], backend: str, database_url: str
) -> None:
    from playwright.sync_api import expect

    page = browser_page
    today = datetime.now(UTC)
    with live_service() as base, httpx.Client(base_url=base, timeout=30) as api:
        headers = staff_headers(api, database_url, "bigshop")
        _seed_large_sales(base, headers, today)

        page.goto(f"{base}/#reports")
        page.fill("#sign-in-username", "bigshop")
        page.fill("#sign-in-password", STAFF_PASSWORD)
        page.press("#sign-in-password", "Enter")
        expect(page.locator("#chart rect.bar")).to_have_count(30)
        expect(page.locator("#top-items tbody tr")).to_have_count(5)

        # Every axis label is inside the chart, left of where the bars start.
        labels = page.eval_on_selector_all(
            "#chart text.axis:not([text-anchor=start]):not(:last-of-type)",
            "ts => ts.map(t => { const b = t.getBBox(); return [b.x, b.x + b.width, t.textContent]; })",
        )
        first_bar = page.eval_on_selector("#chart rect.bar", "b => Number(b.getAttribute('x'))")
        assert len(labels) == 3 and not any(re.fullmatch(r"\d{4}-\d\d-\d\d", label) for *_, label in labels)
        assert all(start >= 0 and end <= first_bar for start, end, _ in labels), (labels, first_bar)

        # Each total on one line, inside its box: the number never breaks.
        for total in ("#total-purchases", "#total-quantity", "#total-revenue"):
            lines = page.eval_on_selector(f"{total} .figure", "f => f.getClientRects().length")
            fits = page.eval_on_selector(total, "d => d.scrollWidth <= d.clientWidth")
            assert lines == 1 and fits, total
        revenue = page.text_content("#total-revenue .figure") or ""
        assert len(revenue.replace(",", "").split(".")[0]) >= 9  # a nine-figure month

        # The tables fit the phone without scrolling sideways, and group figures as the totals do.
        for table in ("#top-items", "#days-table"):
            page.click("#days summary") if table == "#days-table" else None
            widths = page.eval_on_selector(table, "t => [t.scrollWidth, t.parentElement.clientWidth]")
            assert widths[0] <= widths[1], (table, widths)
        top = page.eval_on_selector_all(
            "#top-items tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent))"
        )
        since = (today - timedelta(days=29)).strftime("%Y-%m-%dT00:00:00Z")
        until = (today + timedelta(days=1)).strftime("%Y-%m-%dT00:00:00Z")
        items = api.get(
            "/reports/sales",
            params={"group_by": "item", "since": since, "until": until, "limit": 10},
            headers=headers,
        ).json()["rows"]
        assert top == [
            [i["key"], f"{i['purchases']:,}", f"{i['quantity']:,}", _grouped(i["revenue"])] for i in items
        ]
        assert all("," in row[2] and "," in row[3] for row in top)
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "reports-phone-large.png"), full_page=True)
    assert page.problems == []
