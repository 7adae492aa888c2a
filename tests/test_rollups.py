"""Sales rollups (daily_sales, customer_items): always equal to the purchases they sum, and every
report and summary read from them equal to what the purchases say, to the cent."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from tests.conftest import live_client, make_api_key, run_sql, table_connection
from tests.test_purchases import purchase

Totals = tuple[int, int, int]  # purchases, quantity, cents


def raw_purchases(database_url: str) -> list[tuple[datetime, str, int, int, int]]:
    """(purchased_at, item, quantity, total_cents, customer_id) of every purchase, from the table."""
    with table_connection(database_url) as conn:
        rows = conn.execute(
            "SELECT purchased_at, item, quantity, total_cents, customer_id FROM purchases"
        ).fetchall()
    return [
        (moment if isinstance(moment, datetime) else datetime.fromisoformat(moment), item, q, cents, who)
        for moment, item, q, cents, who in rows
    ]


def _add(into: dict[Any, list[int]], key: Any, quantity: int, cents: int, purchases: int = 1) -> None:
    totals = into.setdefault(key, [0, 0, 0])
    totals[0] += purchases
    totals[1] += quantity
    totals[2] += cents


def rollup_errors(database_url: str) -> list[str]:
    """Where daily_sales or customer_items differ from the purchases (empty when exact)."""
    by_day_item: dict[Any, list[int]] = {}
    by_customer_item: dict[Any, list[int]] = {}
    for moment, item, quantity, cents, customer in raw_purchases(database_url):
        _add(by_day_item, (moment.astimezone(UTC).date().isoformat(), item), quantity, cents)
        _add(by_customer_item, (customer, item), quantity, cents)
    kept_day_item: dict[Any, list[int]] = {}
    kept_customer_item: dict[Any, list[int]] = {}
    with table_connection(database_url) as conn:
        for day, item, purchases, quantity, cents in conn.execute(
            "SELECT day, item, purchases, quantity, revenue_cents FROM daily_sales"
        ).fetchall():
            _add(kept_day_item, (str(day), item), int(quantity), int(cents), int(purchases))
        for customer, item, purchases, quantity, cents in conn.execute(
            "SELECT customer_id, item, purchases, quantity, spent_cents FROM customer_items"
        ).fetchall():
            _add(kept_customer_item, (customer, item), int(quantity), int(cents), int(purchases))
    errors = []
    for what, counted, kept in (
        ("day, item", by_day_item, kept_day_item),
        ("customer, item", by_customer_item, kept_customer_item),
    ):
        for key in sorted(set(counted) | set(kept), key=str):
            if counted.get(key, [0, 0, 0]) != kept.get(key, [0, 0, 0]):
                errors.append(f"{what} {key}: kept {kept.get(key)}, summed {counted.get(key)}")
    return errors


def expected_report(
    database_url: str, group_by: str, since: datetime, until: datetime
) -> list[dict[str, Any]]:
    """The sales report as the purchases themselves give it."""
    sums: dict[str, list[int]] = {}
    for moment, item, quantity, cents, _ in raw_purchases(database_url):
        if since <= moment < until:
            key = item if group_by == "item" else moment.astimezone(UTC).date().isoformat()
            _add(sums, key, quantity, cents)
    ordered = (
        sorted(sums.items()) if group_by == "day" else sorted(sums.items(), key=lambda kv: (-kv[1][2], kv[0]))
    )
    return [
        {"key": key, "purchases": p, "quantity": q, "revenue": f"{cents // 100}.{cents % 100:02d}"}
        for key, (p, q, cents) in ordered
    ]


def report(client: TestClient, group_by: str, since: datetime, until: datetime) -> list[dict[str, Any]]:
    params = {"group_by": group_by, "since": since.isoformat(), "until": until.isoformat(), "limit": 1000}
    response = client.get("/reports/sales", params=params)
    assert response.status_code == 200, response.text
    rows: list[dict[str, Any]] = response.json()["rows"]
    return rows


START = datetime(2026, 3, 1, tzinfo=UTC)
MOMENTS = st.integers(0, 4 * 24 * 60).map(lambda minutes: START + timedelta(minutes=minutes))
ITEMS = st.sampled_from(["book", "pen", "flash-item"])
EMAILS = st.sampled_from([f"c{n}@example.com" for n in range(5)])
PURCHASES = st.builds(
    lambda email, item, quantity, cents, moment: purchase(
        email,
        item=item,
        quantity=quantity,
        unit_price=f"{cents // 100}.{cents % 100:02d}",
        purchased_at=moment.isoformat(),
    ),
    EMAILS,
    ITEMS,
    st.integers(1, 5),
    st.integers(0, 99_999),
    MOMENTS,
)
# One write: a purchase, a batch, a replayed purchase, or a change by hand.
WRITES = st.one_of(
    st.tuples(st.just("one"), PURCHASES),
    st.tuples(st.just("batch"), st.lists(PURCHASES, min_size=1, max_size=6)),
    st.tuples(st.just("replay"), PURCHASES),
    st.tuples(st.just("delete purchase"), st.integers(0, 50)),
    st.tuples(st.just("delete customer"), st.integers(0, 4)),
    st.tuples(st.just("move purchase"), st.integers(0, 50)),
)


def test_random_mixes_of_purchases_keep_the_rollups_and_every_report_exact(
    authed: TestClient, database_url: str
) -> None:
    replays = [0]

    @settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        st.lists(WRITES, min_size=1, max_size=12),
        st.lists(st.tuples(MOMENTS, MOMENTS), min_size=2, max_size=4),
    )
    def mix(writes: list[tuple[str, Any]], ranges: list[tuple[datetime, datetime]]) -> None:
        for what, detail in writes:
            if what == "one":
                assert authed.post("/purchases", json=detail).status_code == 201
            elif what == "batch":
                assert authed.post("/purchases/batch", json={"purchases": detail}).status_code == 201
            elif what == "replay":
                replays[0] += 1
                for _ in range(2):
                    sent = authed.post(
                        "/purchases", json=detail, headers={"Idempotency-Key": f"k{replays[0]}"}
                    )
                    assert sent.status_code == 201
            elif what == "delete purchase":
                run_sql(
                    database_url,
                    f"DELETE FROM purchases WHERE id = (SELECT min(id) + {detail} FROM purchases)",
                )
            elif what == "delete customer":
                run_sql(database_url, f"DELETE FROM customers WHERE email = 'c{detail}@example.com'")
            else:  # an operator corrects a purchase: another item, another quantity
                run_sql(
                    database_url,
                    "UPDATE purchases SET item = 'pen', quantity = quantity + 1,"
                    f" total_cents = total_cents * 2 WHERE id = (SELECT max(id) - {detail} FROM purchases)",
                )
        assert rollup_errors(database_url) == []
        for since, until in ranges:
            since, until = min(since, until), max(since, until)
            for group_by in ("day", "item"):
                assert report(authed, group_by, since, until) == expected_report(
                    database_url, group_by, since, until
                ), (group_by, since, until)

    mix()


def test_a_range_that_starts_and_ends_inside_days_takes_those_parts_from_the_purchases(
    authed: TestClient, database_url: str
) -> None:
    at = [START + timedelta(hours=hours) for hours in (1, 11, 13, 25, 37, 49, 71, 73)]
    bodies = [
        purchase(f"c{n}@example.com", item="book", unit_price="1.01", purchased_at=m.isoformat())
        for n, m in enumerate(at)
    ]
    assert authed.post("/purchases/batch", json={"purchases": bodies}).status_code == 201
    cases = [
        (START + timedelta(hours=12), START + timedelta(hours=50)),  # half a day, a whole one, part of one
        (START + timedelta(hours=2), START + timedelta(hours=12)),  # inside one day
        (START, START + timedelta(days=3)),  # whole days only
        (START + timedelta(hours=11), START + timedelta(hours=11, microseconds=1)),  # one microsecond
        (START + timedelta(days=1), START + timedelta(hours=73)),  # a whole day, then part of the next two
    ]
    for since, until in cases:
        for group_by in ("day", "item"):
            assert report(authed, group_by, since, until) == expected_report(
                database_url, group_by, since, until
            )
    assert report(authed, "day", START + timedelta(hours=12), START + timedelta(hours=50)) == [
        {"key": "2026-03-01", "purchases": 1, "quantity": 1, "revenue": "1.01"},
        {"key": "2026-03-02", "purchases": 2, "quantity": 2, "revenue": "2.02"},
        {"key": "2026-03-03", "purchases": 1, "quantity": 1, "revenue": "1.01"},
    ]


def test_the_summary_reads_the_customers_rollups(authed: TestClient, database_url: str) -> None:
    bodies = [
        purchase(
            "ann@example.com",
            item=item,
            quantity=q,
            unit_price=price,
            purchased_at=f"2026-03-0{day}T10:00:00Z",
        )
        for item, q, price, day in [
            ("a", 1, "5.00", 1),
            ("b", 2, "1.00", 2),
            ("a", 1, "5.00", 3),
            ("c", 1, "0.10", 4),
        ]
        + [(f"x{n}", 1, "0.01", 5) for n in range(5)]
    ]
    assert authed.post("/purchases/batch", json={"purchases": bodies}).status_code == 201
    customer = authed.get("/customers", params={"email": "ann@example.com"}).json()["items"][0]["id"]
    summary = authed.get(f"/customers/{customer}/summary").json()
    assert {k: summary[k] for k in ("purchase_count", "total_quantity", "total_spent")} == {
        "purchase_count": 9,
        "total_quantity": 10,
        "total_spent": "12.15",
    }
    assert summary["first_purchase_at"].startswith("2026-03-01") and summary["last_purchase_at"].startswith(
        "2026-03-05"
    )
    assert [(i["item"], i["quantity"], i["spent"]) for i in summary["top_items"]] == [
        ("a", 2, "10.00"),
        ("b", 2, "2.00"),
        ("c", 1, "0.10"),
        ("x0", 1, "0.01"),
        ("x1", 1, "0.01"),
    ]
    # Every purchase of an item deleted: the item leaves the summary, and the totals drop.
    run_sql(database_url, f"DELETE FROM purchases WHERE customer_id = {customer} AND item = 'a'")
    summary = authed.get(f"/customers/{customer}/summary").json()
    assert (summary["purchase_count"], summary["total_spent"]) == (7, "2.15")
    assert "a" not in [i["item"] for i in summary["top_items"]]
    assert rollup_errors(database_url) == []


def test_a_rollup_changed_by_hand_is_caught(authed: TestClient, database_url: str) -> None:
    assert authed.post("/purchases", json=purchase(purchased_at="2026-03-01T10:00:00Z")).status_code == 201
    assert rollup_errors(database_url) == []
    run_sql(database_url, "UPDATE daily_sales SET revenue_cents = revenue_cents + 1")
    assert rollup_errors(database_url) == [
        "day, item ('2026-03-01', 'book'): kept [1, 1, 1251], summed [1, 1, 1250]"
    ]
    since, until = START, START + timedelta(days=1)
    assert report(authed, "item", since, until) != expected_report(database_url, "item", since, until)


def test_a_flash_sale_of_concurrent_buyers_lands_whole_in_the_rollups(
    live_service: Any, settings: Any, database_url: str
) -> None:
    key = make_api_key(settings)
    buyers = 48
    with live_service() as base:

        async def sale() -> list[int]:
            async with live_client(base, headers={"X-API-Key": key}, timeout=30) as api:
                sent = await asyncio.gather(
                    *(
                        api.post(
                            "/purchases",
                            json=purchase(f"buyer{n}@example.com", item="flash-item", unit_price="9.99"),
                        )
                        for n in range(buyers)
                    )
                )
                return [response.status_code for response in sent]

        assert asyncio.run(sale()) == [201] * buyers
    assert rollup_errors(database_url) == []
    by_item: dict[str, int] = defaultdict(int)
    for _, item, _, cents, _ in raw_purchases(database_url):
        by_item[item] += cents
    assert by_item == {"flash-item": 999 * buyers}


def rollup_rows_per_day_and_item(database_url: str) -> list[int]:
    """How many daily_sales rows (shards) each day and item has, sorted."""
    with table_connection(database_url) as conn:
        rows = conn.execute("SELECT count(*) FROM daily_sales GROUP BY day, item").fetchall()
    return sorted(int(n) for (n,) in rows)


def test_a_batch_upserts_one_rollup_row_per_day_and_item(authed: TestClient, database_url: str) -> None:
    """Not one per shard its purchases' ids fall in: a batch over few items stays a few upserts."""
    bodies = [
        purchase(f"c{n}@example.com", item=f"item{n % 5}", purchased_at=f"2026-03-0{1 + n % 2}T10:00:00Z")
        for n in range(200)
    ]
    assert authed.post("/purchases/batch", json={"purchases": bodies}).status_code == 201
    assert rollup_rows_per_day_and_item(database_url) == [1] * 10
    assert rollup_errors(database_url) == []


def test_housekeeping_folds_ended_days_into_one_row_each_and_keeps_every_sum(
    authed: TestClient, database_url: str, settings: Any
) -> None:
    from service.reports import fold_ended_days
    from tests.conftest import on_database

    bodies = [
        purchase(f"c{n}@example.com", item="book", purchased_at=f"2026-03-0{1 + n % 3}T10:00:00Z")
        for n in range(40)
    ]
    assert authed.post("/purchases/batch", json={"purchases": bodies}).status_code == 201
    for body in bodies[:20]:  # and one at a time, as the single purchase does
        assert authed.post("/purchases", json=body).status_code == 201
    on_database(settings, lambda db: fold_ended_days(db, datetime(2026, 3, 3, 12, tzinfo=UTC)))
    with table_connection(database_url) as conn:
        rows = conn.execute("SELECT day, count(*) FROM daily_sales GROUP BY day ORDER BY day").fetchall()
    assert [(str(day), int(n)) for day, n in rows][:2] == [("2026-03-01", 1), ("2026-03-02", 1)]
    if not database_url.startswith("sqlite"):  # (SQLite has one row per day and item from the start)
        assert int(rows[2][1]) > 1  # the day not yet ended keeps its shards
    assert rollup_errors(database_url) == []
