"""Bad input gets a clear error naming the field, and the database is unchanged afterwards."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from starlette.testclient import TestClient

from service.config import Settings
from tests.conftest import table_counts
from tests.test_purchases import purchase


def with_customer(**fields: Any) -> dict[str, Any]:
    body = purchase()
    body["customer"] = {**body["customer"], **fields}
    return body


def without(path: str) -> dict[str, Any]:
    body = purchase()
    *parents, leaf = path.split(".")
    target = body
    for part in parents:
        target = target[part]
    del target[leaf]
    return body


JSON = {"content-type": "application/json"}

# (body as bytes, status, field the error must name; None for errors about the whole body)
CASES = [
    pytest.param(b'{"customer": {"email": ', 400, None, id="malformed-json"),
    pytest.param(b'{"item": "b\xff\xfeok"}', 400, None, id="non-utf8-bytes"),
    pytest.param(b"[1, 2, 3]", 422, "body", id="array-not-object"),
    pytest.param(b"null", 422, "body", id="null-body"),
    pytest.param(b'{"item": NaN}', 400, None, id="nan-literal"),
    # wrong types
    pytest.param(purchase(quantity="1"), 422, "quantity", id="quantity-as-string"),
    pytest.param(purchase(quantity=1.5), 422, "quantity", id="quantity-fraction"),
    pytest.param(purchase(quantity=True), 422, "quantity", id="quantity-boolean"),
    pytest.param(purchase(unit_price=True), 422, "unit_price", id="price-boolean"),
    pytest.param(purchase(unit_price=[12]), 422, "unit_price", id="price-list"),
    pytest.param(purchase(customer="tim@example.com"), 422, "customer", id="customer-as-string"),
    pytest.param(purchase(item=5), 422, "item", id="item-number"),
    pytest.param(purchase(purchased_at=1764000000), 422, "purchased_at", id="timestamp-number"),
    pytest.param(with_customer(email=5), 422, "customer.email", id="email-number"),
    # missing and unknown fields
    *[
        pytest.param(without(path), 422, path, id=f"missing-{path}")
        for path in ("customer", "item", "quantity", "unit_price", "customer.email", "customer.name")
    ],
    pytest.param(purchase(discount="10%"), 422, "discount", id="unknown-field"),
    pytest.param(with_customer(phone="555"), 422, "customer.phone", id="unknown-nested-field"),
    # numbers out of range
    pytest.param(purchase(quantity=0), 422, "quantity", id="zero-quantity"),
    pytest.param(purchase(quantity=-3), 422, "quantity", id="negative-quantity"),
    pytest.param(purchase(quantity=1_000_001), 422, "quantity", id="quantity-over-a-million"),
    pytest.param(purchase(quantity=10**30), 422, "quantity", id="huge-quantity"),
    pytest.param(purchase(unit_price="12.345"), 422, "unit_price", id="three-decimals-string"),
    pytest.param(purchase(unit_price=12.345), 422, "unit_price", id="three-decimals-number"),
    pytest.param(purchase(unit_price="-0.01"), 422, "unit_price", id="negative-price"),
    pytest.param(purchase(unit_price="1000000000"), 422, "unit_price", id="price-at-a-billion"),
    pytest.param(purchase(unit_price=1e300), 422, "unit_price", id="huge-price-number"),
    pytest.param(purchase(unit_price=10**30), 422, "unit_price", id="huge-price-integer"),
    pytest.param(purchase(unit_price="NaN"), 422, "unit_price", id="price-nan-string"),
    pytest.param(purchase(unit_price="Infinity"), 422, "unit_price", id="price-infinity-string"),
    pytest.param(purchase(unit_price="12,50"), 422, "unit_price", id="price-comma"),
    # timestamps
    pytest.param(purchase(purchased_at="2026-11-22T10:00:00"), 422, "purchased_at", id="naive-timestamp"),
    pytest.param(purchase(purchased_at="yesterday"), 422, "purchased_at", id="timestamp-words"),
    # empty, blank, long and unprintable strings
    pytest.param(purchase(item=""), 422, "item", id="empty-item"),
    pytest.param(purchase(item="   "), 422, "item", id="blank-item"),
    pytest.param(with_customer(name=""), 422, "customer.name", id="empty-name"),
    pytest.param(with_customer(name=" \t "), 422, "customer.name", id="blank-name"),
    pytest.param(with_customer(email=""), 422, "customer.email", id="empty-email"),
    pytest.param(with_customer(email="   "), 422, "customer.email", id="blank-email"),
    pytest.param(purchase(item="x" * 201), 422, "item", id="long-item"),
    pytest.param(with_customer(name="n" * 201), 422, "customer.name", id="long-name"),
    pytest.param(with_customer(email="a" * 250 + "@example.com"), 422, "customer.email", id="long-email"),
    pytest.param(purchase(item="tea\x00cup"), 422, "item", id="nul-in-item"),
    pytest.param(with_customer(name="Tim\x1b[31m"), 422, "customer.name", id="escape-in-name"),
    pytest.param(
        b'{"customer": {"email": "t@example.com", "name": "Tim"}, "item": "\\ud800",'
        b' "quantity": 1, "unit_price": 1}',
        422,
        "item",
        id="lone-surrogate",
    ),
]

# The cases that are one purchase (not a whole body), to be sent again as a batch entry.
ENTRY_CASES = [case for case in CASES if not isinstance(case.values[0], bytes)]


def post(client: TestClient, body: Any, path: str = "/purchases") -> Any:
    # The standard library, unlike orjson, can write the >64-bit integers some cases send.
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(path, content=content, headers=JSON)


@pytest.mark.parametrize(("body", "status", "field"), CASES)
def test_bad_purchase_is_refused_by_field_and_changes_nothing(
    authed: TestClient, database_url: str, body: Any, status: int, field: str | None
) -> None:
    before = table_counts(database_url)
    response = post(authed, body)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == status and problem["detail"]
    if field is not None:
        assert field in problem["errors"], problem["errors"]
    assert table_counts(database_url) == before


@pytest.mark.parametrize(("body", "status", "field"), ENTRY_CASES)
def test_the_same_bad_entry_in_a_batch_is_named_by_its_position(
    authed: TestClient, database_url: str, body: Any, status: int, field: str | None
) -> None:
    before = table_counts(database_url)
    batch = {"purchases": [purchase("a@example.com"), purchase("b@example.com"), body]}
    response = post(authed, batch, path="/purchases/batch")
    assert response.status_code == status
    assert f"purchases.2.{field}" in response.json()["errors"]
    assert table_counts(database_url) == before


SQL_AND_QUOTES = [
    "Robert'); DROP TABLE customers;--",
    '"; DELETE FROM purchases; --',
    "O'Brien \"the 'quoted'\" \\ backslash % _ ; -- /* */",
    "名前 ✓ emoji 🧾",
]


@pytest.mark.parametrize("text", SQL_AND_QUOTES)
def test_sql_metacharacters_and_quotes_are_stored_verbatim(
    authed: TestClient, database_url: str, text: str
) -> None:
    email = "o'brien+test%_@example.com"
    created = authed.post("/purchases", json=purchase(email, text, item=text))
    assert created.status_code == 201
    shown = authed.get(f"/purchases/{created.json()['id']}").json()
    assert shown["item"] == text.strip()
    assert shown["customer"]["name"] == text.strip()
    assert shown["customer"]["email"] == email
    found = authed.get("/customers", params={"email": email}).json()["items"]
    assert [customer["id"] for customer in found] == [shown["customer"]["id"]]
    by_item = authed.get("/purchases", params={"item": text}).json()["items"]
    assert [row["id"] for row in by_item] == [shown["id"]]
    counts = table_counts(database_url)
    assert (counts["customers"], counts["purchases"]) == (1, 1)


def test_a_body_over_the_limit_is_413_and_changes_nothing(
    authed: TestClient, database_url: str, settings: Settings
) -> None:
    before = table_counts(database_url)
    body = purchase(item="x" * 100)
    body["padding"] = "y" * settings.max_body_bytes
    response = post(authed, body)
    assert response.status_code == 413
    assert table_counts(database_url) == before


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", None]
)
def test_a_body_that_is_not_json_is_415(
    authed: TestClient, database_url: str, content_type: str | None
) -> None:
    before = table_counts(database_url)
    headers = {"content-type": content_type} if content_type else {}
    response = authed.post("/purchases", content=orjson.dumps(purchase()), headers=headers)
    assert response.status_code == 415
    assert table_counts(database_url) == before


def test_a_charset_on_the_json_content_type_is_fine(authed: TestClient) -> None:
    response = authed.post(
        "/purchases",
        content=orjson.dumps(purchase()),
        headers={"content-type": "application/json; charset=utf-8"},
    )
    assert response.status_code == 201


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=ten", "limit"),
        ("cursor=not-a-cursor", "cursor"),
        ("since=2026-11-22T10:00:00", "since"),
        ("customer_id=0", "customer_id"),
        ("customer_id=abc", "customer_id"),
    ],
)
def test_bad_list_parameters_are_422_naming_the_parameter(authed: TestClient, query: str, field: str) -> None:
    response = authed.get(f"/purchases?{query}")
    assert response.status_code == 422
    assert field in response.json()["errors"]


@pytest.mark.parametrize("query", ["", "group_by=week", "group_by=item&limit=0", "group_by=day&until=soon"])
def test_bad_report_parameters_are_422(authed: TestClient, query: str) -> None:
    response = authed.get(f"/reports/sales?{query}")
    assert response.status_code == 422
    assert response.json()["errors"]


def test_timestamps_before_the_year_1000_keep_four_digits_and_their_order(authed: TestClient) -> None:
    # Found by Schemathesis: strftime's %Y wrote "518-11-20...", which is not ISO 8601 and sorts
    # after "2026-..." as SQLite text.
    old = authed.post("/purchases", json=purchase(purchased_at="0518-11-20T03:00:00.201+00:00")).json()
    new = authed.post("/purchases", json=purchase(purchased_at="2026-11-20T03:00:00Z")).json()
    assert old["purchased_at"] == "0518-11-20T03:00:00.201000Z"
    listed = authed.get("/purchases").json()["items"]
    assert [p["id"] for p in listed] == [new["id"], old["id"]]
    assert (
        authed.get("/purchases", params={"until": "1000-01-01T00:00:00Z"}).json()["items"][0]["id"]
        == old["id"]
    )
