"""The scenarios `python -m service bench` drives: what each request of each one looks like."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from service.bench.load import Request


@dataclass
class Context:
    """What a scenario's requests need: credentials and how much data there is."""

    api_key: str  # with every scope: the ledger's scenarios send it
    token: str
    customer_ids: list[int]

    @property
    def caller_headers(self) -> dict[str, str]:
        """How a scenario on the purchase ledger says who it is: the API key."""
        return {"X-API-Key": self.api_key}


def purchase_request(rng: random.Random, ctx: Context) -> Request:
    # The same draw as ../shared/bench/purchases.lua: 5,000 emails, about half new customers.
    n = rng.randint(1, 5000)
    body = {
        "customer": {"email": f"Cust{n}@Example.com", "name": f"Customer {n}"},
        "item": f"item{rng.randint(1, 50)}",
        "quantity": rng.randint(1, 5),
        "unit_price": "12.50",
    }
    return "POST", "/purchases", orjson.dumps(body), ctx.caller_headers


def batch_request(rng: random.Random, ctx: Context) -> Request:
    purchases = []
    for _ in range(1000):
        n = rng.randint(1, 5000)
        purchases.append(
            {
                "customer": {"email": f"cust{n}@example.com", "name": f"Customer {n}"},
                "item": f"item{rng.randint(1, 50)}",
                "quantity": rng.randint(1, 5),
                "unit_price": "12.50",
            }
        )
    return "POST", "/purchases/batch", orjson.dumps({"purchases": purchases}), ctx.caller_headers


def posts_request(rng: random.Random, ctx: Context) -> Request:
    return "GET", "/posts?limit=20", None, {}


def feed_request(rng: random.Random, ctx: Context) -> Request:
    return "GET", "/feed?limit=20", None, {"Authorization": f"Bearer {ctx.token}"}


def summary_request(rng: random.Random, ctx: Context) -> Request:
    # Drawn from ids that exist: PostgreSQL spends a sequence value on every upsert that conflicts.
    return "GET", f"/customers/{rng.choice(ctx.customer_ids)}/summary", None, ctx.caller_headers


def mixed_request(rng: random.Random, ctx: Context) -> Request:
    # A day in the life: mostly reading the feed and posts, a purchase every fifth request.
    roll = rng.random()
    pick = (
        purchase_request
        if roll < 0.2
        else posts_request
        if roll < 0.6
        else feed_request
        if roll < 0.85
        else summary_request
    )
    return pick(rng, ctx)


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    make: Callable[[random.Random, Context], Request]
    rows_per_request: int = 1
    compared: bool = False  # the limit app serves it too
    connections: int | None = None  # instead of --connections (1000-row batches want fewer)


SCENARIOS = {
    s.name: s
    for s in (
        Scenario("purchase", "POST /purchases", purchase_request, compared=True),
        Scenario(
            "batch", "POST /purchases/batch (1000 rows)", batch_request, rows_per_request=1000, connections=4
        ),
        Scenario("posts", "GET /posts?limit=20", posts_request, compared=True),
        Scenario("feed", "GET /feed?limit=20", feed_request),
        Scenario("summary", "GET /customers/{id}/summary", summary_request),
        Scenario("mixed", "mixed: 60% posts/feed, 20% purchases, 15% summary", mixed_request),
    )
}
