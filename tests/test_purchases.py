"""Purchase capture: customers upserted by email, idempotent retries, batches."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.testclient import TestClient

from service.config import Settings
from tests.conftest import make_api_key, table_counts


def purchase(email: str = "Tim@Example.com", name: str = "Tim", **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "customer": {"email": email, "name": name},
        "item": "book",
        "quantity": 1,
        "unit_price": "12.50",
        "purchased_at": "2026-11-22T10:00:00Z",
    }
    body.update(overrides)
    return body


def test_a_purchase_creates_its_customer(authed: TestClient) -> None:
    response = authed.post("/purchases", json=purchase(quantity=2))
    assert response.status_code == 201
    body = response.json()
    assert response.headers["location"] == f"/purchases/{body['id']}"
    assert body["customer_created"] is True
    assert body["customer"]["email"] == "tim@example.com"
    assert body["customer"]["name"] == "Tim"
    assert body["customer"]["created_at"] == body["customer"]["updated_at"]
    assert (body["item"], body["quantity"], body["unit_price"], body["total"]) == (
        "book",
        2,
        "12.50",
        "25.00",
    )
    assert body["currency"] == "USD"
    assert body["purchased_at"] == "2026-11-22T10:00:00.000000Z"
    assert body["captured_by"] == "api_key:tests"


def test_duplicate_customer_is_updated_not_inserted(authed: TestClient, database_url: str) -> None:
    first = authed.post("/purchases", json=purchase("tim@example.com", "Tim")).json()
    second = authed.post("/purchases", json=purchase("  TIM@example.COM ", "Timothy", item="pen")).json()

    assert second["customer_created"] is False
    assert second["customer"]["id"] == first["customer"]["id"]
    assert second["customer"]["name"] == "Timothy"
    assert second["customer"]["created_at"] == first["customer"]["created_at"]
    assert second["customer"]["updated_at"] > first["customer"]["updated_at"]
    counts = table_counts(database_url)
    assert (counts["customers"], counts["purchases"]) == (1, 2)


def test_purchased_at_defaults_to_now_and_offsets_become_utc(authed: TestClient) -> None:
    body = purchase()
    del body["purchased_at"]
    now_purchase = authed.post("/purchases", json=body).json()
    assert now_purchase["purchased_at"] == now_purchase["customer"]["updated_at"]

    shifted = authed.post("/purchases", json=purchase(purchased_at="2026-11-22T12:30:00+02:30")).json()
    assert shifted["purchased_at"] == "2026-11-22T10:00:00.000000Z"


@pytest.mark.parametrize(
    ("price", "shown"), [(12.5, "12.50"), ("7", "7.00"), (0, "0.00"), ("999999999.99", "999999999.99")]
)
def test_prices_are_numbers_or_strings_shown_with_two_places(
    authed: TestClient, price: Any, shown: str
) -> None:
    body = authed.post("/purchases", json=purchase(unit_price=price)).json()
    assert body["unit_price"] == shown


def test_the_largest_order_keeps_every_cent(authed: TestClient) -> None:
    body = authed.post("/purchases", json=purchase(unit_price="999999999.99", quantity=1_000_000)).json()
    assert body["total"] == "999999999990000.00"
    assert authed.get(f"/purchases/{body['id']}").json()["total"] == "999999999990000.00"


def test_a_stored_purchase_reads_back_with_its_customer_as_now(authed: TestClient) -> None:
    created = authed.post("/purchases", json=purchase()).json()
    authed.post("/purchases", json=purchase(name="Timothy"))
    shown = authed.get(f"/purchases/{created['id']}").json()
    assert shown["customer"]["name"] == "Timothy"
    assert "customer_created" not in shown
    assert {key: shown[key] for key in ("id", "item", "total", "purchased_at", "captured_by")} == {
        key: created[key] for key in ("id", "item", "total", "purchased_at", "captured_by")
    }


def test_an_unknown_purchase_is_404(authed: TestClient) -> None:
    assert authed.get("/purchases/999").status_code == 404
    assert authed.get(f"/purchases/{2**64}").status_code == 404


# Idempotency-Key


def test_a_retry_with_the_same_key_returns_the_first_response_and_records_nothing(
    authed: TestClient, database_url: str
) -> None:
    headers = {"Idempotency-Key": "order-7781"}
    first = authed.post("/purchases", json=purchase(), headers=headers)
    # The same JSON with other spacing and key order is the same body.
    retry = authed.post(
        "/purchases",
        content=b'{"item": "book", "quantity": 1,  "unit_price": "12.50",'
        b' "purchased_at": "2026-11-22T10:00:00Z",'
        b' "customer": {"name": "Tim", "email": "Tim@Example.com"}}',
        headers={**headers, "content-type": "application/json"},
    )
    assert first.status_code == retry.status_code == 201
    assert retry.content == first.content
    assert retry.headers["location"] == first.headers["location"]
    assert retry.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    counts = table_counts(database_url)
    assert (counts["customers"], counts["purchases"]) == (1, 1)


def test_the_same_key_with_another_body_is_409_and_records_nothing(
    authed: TestClient, database_url: str
) -> None:
    headers = {"Idempotency-Key": "order-7781"}
    authed.post("/purchases", json=purchase(), headers=headers)
    before = table_counts(database_url)
    response = authed.post("/purchases", json=purchase(quantity=2), headers=headers)
    assert response.status_code == 409
    assert response.headers["content-type"] == "application/problem+json"
    assert "different request body" in response.json()["detail"]
    assert table_counts(database_url) == before


def test_keys_belong_to_the_caller_that_sent_them(
    authed: TestClient, settings: Settings, database_url: str
) -> None:
    other_key = make_api_key(settings, "other")
    headers = {"Idempotency-Key": "shared-name"}
    mine = authed.post("/purchases", json=purchase(), headers=headers)
    theirs = authed.post("/purchases", json=purchase(), headers={**headers, "X-API-Key": other_key})
    assert mine.status_code == theirs.status_code == 201
    assert mine.json()["id"] != theirs.json()["id"]
    assert table_counts(database_url)["purchases"] == 2


def test_a_request_that_failed_validation_does_not_use_up_its_key(authed: TestClient) -> None:
    headers = {"Idempotency-Key": "retry-after-fix"}
    assert authed.post("/purchases", json=purchase(quantity=0), headers=headers).status_code == 422
    assert authed.post("/purchases", json=purchase(), headers=headers).status_code == 201


@pytest.mark.parametrize("key", ["", " leading-space", "x" * 256, "caf\u00e9"])
def test_a_malformed_key_is_400(authed: TestClient, key: str, database_url: str) -> None:
    response = authed.post("/purchases", json=purchase(), headers={"Idempotency-Key": key.encode()})
    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()["detail"]
    assert table_counts(database_url)["purchases"] == 0


# Batches


def test_a_batch_records_everything_in_order(authed: TestClient, database_url: str) -> None:
    authed.post("/purchases", json=purchase("sue@example.com", "Sue"))
    batch = [
        purchase("new1@example.com", "New One", item="a"),
        purchase("SUE@example.com", "Susan", item="b"),
        purchase("new1@example.com", "New One Again", item="c"),  # same email twice in one batch
        purchase("new2@example.com", "New Two", item="d", unit_price=3),
    ]
    response = authed.post("/purchases/batch", json={"purchases": batch})
    assert response.status_code == 201
    body = response.json()
    assert body["created"] == 4
    assert (body["customers_created"], body["customers_updated"]) == (2, 1)
    assert [authed.get(f"/purchases/{i}").json()["item"] for i in body["ids"]] == ["a", "b", "c", "d"]
    sue = authed.get("/customers", params={"email": "sue@example.com"}).json()["items"][0]
    assert sue["name"] == "Susan"
    new1 = authed.get("/customers", params={"email": "new1@example.com"}).json()["items"][0]
    assert new1["name"] == "New One Again"  # the batch's last word
    counts = table_counts(database_url)
    assert (counts["customers"], counts["purchases"]) == (3, 5)


def test_a_batch_with_one_bad_entry_records_nothing(authed: TestClient, database_url: str) -> None:
    batch = [purchase(f"c{n}@example.com") for n in range(5)]
    batch[3]["customer"]["email"] = "not-an-email"
    response = authed.post("/purchases/batch", json={"purchases": batch})
    assert response.status_code == 422
    assert response.json()["errors"] == {"purchases.3.customer.email": ["Not a valid email address."]}
    counts = table_counts(database_url)
    assert (counts["customers"], counts["purchases"]) == (0, 0)


def test_a_batch_of_a_thousand_is_accepted_and_more_is_refused(authed: TestClient, database_url: str) -> None:
    batch = [purchase(f"c{n % 300}@example.com", f"C {n}", item=f"item{n % 7}") for n in range(1000)]
    response = authed.post("/purchases/batch", json={"purchases": batch})
    assert response.status_code == 201
    assert response.json()["created"] == 1000
    assert response.json()["customers_created"] == 300
    assert len(set(response.json()["ids"])) == 1000

    too_many = authed.post("/purchases/batch", json={"purchases": [*batch, purchase()]})
    assert too_many.status_code == 422
    assert "purchases" in too_many.json()["errors"]
    assert table_counts(database_url)["purchases"] == 1000


def test_an_empty_batch_is_422(authed: TestClient) -> None:
    assert authed.post("/purchases/batch", json={"purchases": []}).json()["errors"] == {
        "purchases": ["Length must be between 1 and 1000."]
    }


def test_a_batch_retry_with_its_key_is_replayed(authed: TestClient, database_url: str) -> None:
    body = {"purchases": [purchase(), purchase("sue@example.com", "Sue")]}
    headers = {"Idempotency-Key": "batch-1"}
    first = authed.post("/purchases/batch", json=body, headers=headers)
    again = authed.post("/purchases/batch", json=body, headers=headers)
    assert first.content == again.content
    assert table_counts(database_url)["purchases"] == 2
    # The same key on the single-purchase route is another request, not a replay.
    assert authed.post("/purchases", json=purchase(), headers=headers).status_code == 409


# Credentials


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/purchases"),
        ("POST", "/purchases/batch"),
        ("GET", "/purchases"),
        ("GET", "/purchases/1"),
        ("GET", "/customers"),
        ("GET", "/customers/1"),
        ("GET", "/customers/1/purchases"),
        ("GET", "/customers/1/summary"),
        ("GET", "/reports/sales?group_by=item"),
    ],
)
def test_every_purchase_route_needs_a_credential(client: TestClient, method: str, path: str) -> None:
    response = client.request(method, path, json=purchase() if method == "POST" else None)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


def test_a_purchase_with_a_key_that_is_not_live_is_401_and_writes_nothing(
    client: TestClient, settings: Settings, database_url: str
) -> None:
    import asyncio

    from service.apikeys import revoke_api_key
    from service.db import open_database

    key = make_api_key(settings, "billing")
    assert client.post("/purchases", json=purchase(), headers={"X-API-Key": key}).status_code == 201

    async def revoke() -> None:
        db = open_database(settings)
        await db.connect()
        try:
            assert await revoke_api_key(db, "billing")
        finally:
            await db.disconnect()

    asyncio.run(revoke())
    before = table_counts(database_url)
    for presented in (key, "pfs_never-given-to-anyone"):
        response = client.post(
            "/purchases", json=purchase("new@example.com"), headers={"X-API-Key": presented}
        )
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
    assert table_counts(database_url) == before  # neither the new customer nor a purchase
