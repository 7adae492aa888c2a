"""Many callers at once against the real server: one customer, every purchase, no errors."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx2 as httpx
import pytest

from service.config import Settings
from tests.conftest import live_client, make_api_key, table_counts
from tests.test_purchases import purchase

pytestmark = pytest.mark.slow


async def post_all(
    base: str, key: str, requests: list[tuple[str, dict[str, Any], dict[str, str]]]
) -> list[Any]:
    """Send every request at once (each on its own connection) and gather the responses."""
    limits = httpx.Limits(max_connections=len(requests))
    async with live_client(base, headers={"X-API-Key": key}, limits=limits, timeout=30) as client:
        return await asyncio.gather(
            *(client.post(path, json=body, headers=headers) for path, body, headers in requests)
        )


@pytest.mark.parametrize("workers", [1, 2])
def test_fifty_callers_upserting_one_new_customer_leave_one_customer_and_fifty_purchases(
    live_service: Callable[..., Any], settings: Settings, database_url: str, workers: int
) -> None:
    key = make_api_key(settings)
    requests = [
        ("/purchases", purchase("Race@Example.com", f"Racer {n}", item=f"i{n}"), {}) for n in range(50)
    ]
    with live_service(workers=workers) as base:
        responses = asyncio.run(post_all(base, key, requests))

    assert [r.status_code for r in responses] == [201] * 50, [
        r.text for r in responses if r.status_code != 201
    ]
    bodies = [r.json() for r in responses]
    assert sum(body["customer_created"] for body in bodies) == 1
    assert len({body["customer"]["id"] for body in bodies}) == 1
    assert len({body["id"] for body in bodies}) == 50
    counts = table_counts(database_url)
    assert (counts["customers"], counts["purchases"]) == (1, 50)


def test_concurrent_retries_with_one_key_record_one_purchase(
    live_service: Callable[..., Any], settings: Settings, database_url: str
) -> None:
    key = make_api_key(settings)
    body = purchase("once@example.com")
    requests = [("/purchases", body, {"Idempotency-Key": "checkout-123"}) for _ in range(20)]
    with live_service() as base:
        responses = asyncio.run(post_all(base, key, requests))

    assert [r.status_code for r in responses] == [201] * 20
    assert len({r.content for r in responses}) == 1
    assert sum(r.headers.get("idempotent-replayed") == "true" for r in responses) == 19
    assert table_counts(database_url)["purchases"] == 1


def test_overlapping_batches_in_opposite_orders_all_commit(
    live_service: Callable[..., Any], settings: Settings, database_url: str
) -> None:
    key = make_api_key(settings)
    emails = [f"shared{n}@example.com" for n in range(40)]
    batches = [
        (
            "/purchases/batch",
            {"purchases": [purchase(email) for email in (emails if n % 2 else emails[::-1])]},
            {},
        )
        for n in range(12)
    ]
    # The batches share every customer, so they run one after another; on a busy host twelve of
    # them through PgBouncer have together passed the 5 s statement limit (seen in CI). What this
    # test asks is that none deadlocks or is lost, not how fast they queue.
    with live_service(DB_STATEMENT_TIMEOUT_MS="60000") as base:
        responses = asyncio.run(post_all(base, key, batches))

    assert [r.status_code for r in responses] == [201] * 12, [
        r.text for r in responses if r.status_code != 201
    ]
    assert sum(r.json()["customers_created"] for r in responses) == 40
    counts = table_counts(database_url)
    assert (counts["customers"], counts["purchases"]) == (40, 480)
