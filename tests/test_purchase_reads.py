"""Reading purchases back: lists and their pages, customers, the summary and the sales report."""

from __future__ import annotations

from typing import Any

from starlette.testclient import TestClient

from tests.test_purchases import purchase


def record(client: TestClient, *bodies: dict[str, Any]) -> list[int]:
    response = client.post("/purchases/batch", json={"purchases": list(bodies)})
    assert response.status_code == 201, response.text
    ids: list[int] = response.json()["ids"]
    return ids


def every_page(client: TestClient, path: str, **params: Any) -> list[list[dict[str, Any]]]:
    pages, cursor = [], None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        body = client.get(path, params=query).json()
        pages.append(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages


def test_purchases_list_newest_first_and_filter(authed: TestClient) -> None:
    record(
        authed,
        purchase("a@example.com", item="book", purchased_at="2026-11-20T10:00:00Z"),
        purchase("b@example.com", item="pen", purchased_at="2026-11-21T10:00:00Z"),
        purchase("a@example.com", item="pen", purchased_at="2026-11-22T10:00:00Z"),
    )
    items = authed.get("/purchases").json()["items"]
    assert [(p["customer"]["email"], p["item"]) for p in items] == [
        ("a@example.com", "pen"),
        ("b@example.com", "pen"),
        ("a@example.com", "book"),
    ]
    a_id = items[0]["customer"]["id"]

    def shown(**params: Any) -> list[str]:
        return [
            f"{p['customer']['email'][0]}:{p['item']}"
            for p in authed.get("/purchases", params=params).json()["items"]
        ]

    assert shown(item="pen") == ["a:pen", "b:pen"]
    assert shown(customer_id=a_id) == ["a:pen", "a:book"]
    assert shown(customer_id=a_id, item="pen") == ["a:pen"]
    assert shown(since="2026-11-21T10:00:00Z") == ["a:pen", "b:pen"]  # since is inclusive
    assert shown(until="2026-11-21T10:00:00Z") == ["a:book"]  # until is exclusive
    assert shown(since="2026-11-21T00:00:00+00:00", until="2026-11-22T00:00:00Z") == ["b:pen"]


def test_pages_neither_repeat_nor_skip_rows_that_share_a_timestamp(authed: TestClient) -> None:
    same_moment = "2026-11-22T10:00:00Z"
    ids = record(authed, *[purchase(f"c{n}@example.com", purchased_at=same_moment) for n in range(23)])
    pages = every_page(authed, "/purchases", limit=5)
    assert [len(page) for page in pages] == [5, 5, 5, 5, 3]
    seen = [p["id"] for page in pages for p in page]
    assert seen == sorted(ids, reverse=True)


def test_pages_stay_stable_while_new_purchases_arrive(authed: TestClient) -> None:
    record(
        authed,
        *[purchase(f"c{n}@example.com", purchased_at=f"2026-11-{10 + n:02d}T10:00:00Z") for n in range(10)],
    )
    first = authed.get("/purchases", params={"limit": 4}).json()
    # Newer purchases land while the caller reads on; they belong before page one, not in later pages.
    record(authed, purchase("late@example.com", purchased_at="2026-11-30T10:00:00Z"))
    rest = every_page(authed, "/purchases", limit=4, cursor=first["next_cursor"])
    seen = [p["id"] for p in first["items"]] + [p["id"] for page in rest for p in page]
    assert len(seen) == len(set(seen)) == 10


def test_customer_purchases_and_the_unknown_customer(authed: TestClient) -> None:
    record(authed, purchase("a@example.com", item="x"), purchase("b@example.com", item="y"))
    a = authed.get("/customers", params={"email": "A@EXAMPLE.COM"}).json()["items"][0]
    mine = authed.get(f"/customers/{a['id']}/purchases").json()
    assert [p["item"] for p in mine["items"]] == ["x"] and mine["next_cursor"] is None
    assert authed.get("/customers/9999/purchases").status_code == 404
    assert authed.get("/customers/9999").status_code == 404
    assert authed.get(f"/customers/{a['id']}").json() == a


def test_customers_list_newest_first_in_pages(authed: TestClient) -> None:
    for n in range(7):
        authed.post("/purchases", json=purchase(f"c{n}@example.com"))
    pages = every_page(authed, "/customers", limit=3)
    emails = [c["email"] for page in pages for c in page]
    assert emails == [f"c{n}@example.com" for n in reversed(range(7))]
    assert authed.get("/customers", params={"email": "nobody@example.com"}).json() == {
        "items": [],
        "next_cursor": None,
    }


def test_summary_totals_and_top_five_items_by_spend(authed: TestClient) -> None:
    spends = [
        ("a", "10.00", 1),
        ("b", "1.00", 3),
        ("c", "50.00", 1),
        ("d", "2.50", 2),
        ("e", "0.99", 1),
        ("f", "30", 1),
    ]
    record(
        authed,
        *[
            purchase(item=item, unit_price=price, quantity=qty, purchased_at=f"2026-11-{10 + n}T08:00:00Z")
            for n, (item, price, qty) in enumerate(spends)
        ],
        purchase(item="a", unit_price="10.00", quantity=2, purchased_at="2026-11-25T08:00:00Z"),
    )
    customer_id = authed.get("/customers").json()["items"][0]["id"]
    summary = authed.get(f"/customers/{customer_id}/summary").json()
    assert summary == {
        "customer_id": customer_id,
        "purchase_count": 7,
        "total_quantity": 11,
        "total_spent": "118.99",
        "first_purchase_at": "2026-11-10T08:00:00.000000Z",
        "last_purchase_at": "2026-11-25T08:00:00.000000Z",
        "top_items": [
            {"item": "c", "quantity": 1, "spent": "50.00"},
            {"item": "a", "quantity": 3, "spent": "30.00"},
            {"item": "f", "quantity": 1, "spent": "30.00"},
            {"item": "d", "quantity": 2, "spent": "5.00"},
            {"item": "b", "quantity": 3, "spent": "3.00"},
        ],
    }
    assert authed.get("/customers/9999/summary").status_code == 404


def test_sales_report_by_item_customer_and_day(authed: TestClient) -> None:
    record(
        authed,
        purchase(
            "a@example.com", item="book", unit_price="10", quantity=2, purchased_at="2026-11-20T23:59:59Z"
        ),
        purchase(
            "b@example.com", item="pen", unit_price="1.50", quantity=4, purchased_at="2026-11-21T00:00:00Z"
        ),
        purchase(
            "a@example.com",
            item="pen",
            unit_price="1.50",
            quantity=1,
            purchased_at="2026-11-21T12:00:00+02:00",
        ),
        purchase(
            "c@example.com", item="mug", unit_price="7", quantity=1, purchased_at="2026-11-22T09:00:00Z"
        ),
    )
    by_item = authed.get("/reports/sales", params={"group_by": "item"}).json()
    assert by_item == {
        "group_by": "item",
        "rows": [
            {"key": "book", "purchases": 1, "quantity": 2, "revenue": "20.00"},
            {"key": "pen", "purchases": 2, "quantity": 5, "revenue": "7.50"},
            {"key": "mug", "purchases": 1, "quantity": 1, "revenue": "7.00"},
        ],
    }
    by_customer = authed.get("/reports/sales", params={"group_by": "customer"}).json()["rows"]
    assert [(row["key"], row["revenue"]) for row in by_customer] == [
        ("a@example.com", "21.50"),
        ("c@example.com", "7.00"),
        ("b@example.com", "6.00"),
    ]
    by_day = authed.get("/reports/sales", params={"group_by": "day"}).json()["rows"]
    assert [(row["key"], row["purchases"], row["revenue"]) for row in by_day] == [
        ("2026-11-20", 1, "20.00"),
        ("2026-11-21", 2, "7.50"),  # 12:00+02:00 is 10:00 UTC
        ("2026-11-22", 1, "7.00"),
    ]
    window = authed.get(
        "/reports/sales",
        params={"group_by": "day", "since": "2026-11-21T00:00:00Z", "until": "2026-11-22T00:00:00Z"},
    ).json()["rows"]
    assert [row["key"] for row in window] == ["2026-11-21"]
    top_one = authed.get("/reports/sales", params={"group_by": "item", "limit": 1}).json()["rows"]
    assert [row["key"] for row in top_one] == ["book"]


def test_top_customers_break_ties_on_revenue_by_email_however_many_fit(authed: TestClient) -> None:
    # Summed per customer before the emails are read: customers tied with the last one on a page
    # still compete by email, as if the whole list were sorted.
    emails = ["zed@example.com", "amy@example.com", "max@example.com", "bob@example.com"]
    record(authed, *(purchase(email, item="pen", unit_price="5", quantity=1) for email in emails))
    record(authed, purchase("big@example.com", item="pen", unit_price="9", quantity=1))
    ordered = ["big@example.com", "amy@example.com", "bob@example.com", "max@example.com", "zed@example.com"]
    for limit in range(1, 6):
        rows = authed.get("/reports/sales", params={"group_by": "customer", "limit": limit}).json()["rows"]
        assert [row["key"] for row in rows] == ordered[:limit], limit
