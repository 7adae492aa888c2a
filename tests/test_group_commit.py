"""Group commit: single purchases that wait while one is in flight go together, each with its own answer."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx2 as httpx
import psycopg
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY

from service.apikeys import hash_key, revoke_api_key
from service.auth import Caller, PresentedApiKey
from service.config import Settings
from service.errors import Problem
from service.group_commit import GroupCommit
from service.limits import LOCK_TIMEOUT, limit_reached
from service.purchases import record_purchase, record_purchase_group
from tests.conftest import (
    PASSWORD,
    live_client,
    make_api_key,
    make_staff,
    on_database,
    service_process,
    table_connection,
    table_counts,
)
from tests.test_purchases import purchase

# --- the mechanism, with a stand-in write --------------------------------------------------------


class Recorder:
    """A group write that records each group it is given, held in flight until released."""

    def __init__(self, fail_on: Any = None) -> None:
        self.groups: list[list[int]] = []
        self.release = asyncio.Event()
        self.fail_on = fail_on

    async def __call__(self, items: list[int]) -> list[Any]:
        self.groups.append(items)
        await asyncio.sleep(0)  # in flight for a moment at least, as a statement is
        await self.release.wait()
        if self.fail_on in items:
            raise RuntimeError("the group's statement failed")
        return [ValueError(f"item {item} is odd") if item % 2 else item * 10 for item in items]


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_a_lone_write_goes_at_once_and_those_arriving_meanwhile_go_together_next() -> None:
    async def scenario() -> None:
        write = Recorder()
        group = GroupCommit("test", write, cap=100)
        first = asyncio.create_task(group.submit(0))
        await settle()
        assert write.groups == [[0]]  # sent at once: no timer, no waiting for company
        later = [asyncio.create_task(group.submit(n)) for n in (2, 4, 6, 8)]
        await settle()
        assert write.groups == [[0]]  # they wait while the first is in flight
        write.release.set()
        assert await first == 0
        assert await asyncio.gather(*later) == [20, 40, 60, 80]
        assert write.groups == [[0], [2, 4, 6, 8]]  # one group, in arrival order

    asyncio.run(scenario())


def test_groups_are_capped() -> None:
    async def scenario() -> None:
        write = Recorder()
        group = GroupCommit("test", write, cap=10)
        tasks = [asyncio.create_task(group.submit(2 * n)) for n in range(26)]
        await settle()
        write.release.set()
        await asyncio.gather(*tasks)
        assert [len(sent) for sent in write.groups] == [1, 10, 10, 5]

    asyncio.run(scenario())


def test_each_member_gets_its_own_outcome_and_a_failed_write_fails_each_member() -> None:
    async def scenario() -> None:
        write = Recorder(fail_on=14)
        group = GroupCommit("test", write, cap=100)
        first = asyncio.create_task(group.submit(0))
        await settle()
        members = [asyncio.create_task(group.submit(n)) for n in (2, 3, 4)]
        await settle()
        write.release.set()
        results = await asyncio.gather(first, *members, return_exceptions=True)
        assert results[0] == 0 and results[1] == 20 and results[3] == 40
        assert isinstance(results[2], ValueError)  # its own error only
        write.release.clear()
        first = asyncio.create_task(group.submit(0))
        await settle()
        members = [asyncio.create_task(group.submit(n)) for n in (12, 14, 16)]
        await settle()
        write.release.set()
        failed = await asyncio.gather(*members, return_exceptions=True)
        assert await first == 0
        assert [type(outcome) for outcome in failed] == [RuntimeError] * 3  # the whole group's
        assert await group.submit(18) == 180  # and the next write goes as usual
        assert write.groups == [[0], [2, 3, 4], [0], [12, 14, 16], [18]]

    asyncio.run(scenario())


def test_a_caller_that_gives_up_before_its_group_leaves_is_not_written() -> None:
    async def scenario() -> None:
        write = Recorder()
        group = GroupCommit("test", write, cap=100)
        first = asyncio.create_task(group.submit(0))
        await settle()
        staying, leaving = asyncio.create_task(group.submit(2)), asyncio.create_task(group.submit(4))
        await settle()
        leaving.cancel()
        write.release.set()
        assert (await first, await staying) == (0, 20)
        assert write.groups == [[0], [2]]

    asyncio.run(scenario())


def test_a_flush_span_links_both_ways_with_the_requests_it_carried() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")

    async def request(group: GroupCommit[int, int], n: int) -> int:
        with tracer.start_as_current_span(f"request {n}"):
            return await group.submit(n)

    async def scenario() -> None:
        write = Recorder()
        group = GroupCommit("test", write, cap=100, tracer=tracer)
        first = asyncio.create_task(request(group, 0))
        await settle()
        others = [asyncio.create_task(request(group, n)) for n in (2, 4)]
        await settle()
        write.release.set()
        await asyncio.gather(first, *others)

    asyncio.run(scenario())
    spans = {span.name: span for span in exporter.get_finished_spans()}
    lone, grouped = (span for span in exporter.get_finished_spans() if span.name == "test group")
    assert lone.parent is not None and lone.parent.span_id == spans["request 0"].context.span_id
    assert lone.attributes == {"group.size": 1}
    assert grouped.parent is None and grouped.attributes == {"group.size": 2}
    carried = {spans[f"request {n}"].context.span_id for n in (2, 4)}
    assert {link.context.span_id for link in grouped.links} == carried
    for n in (2, 4):
        [link] = spans[f"request {n}"].links
        assert link.context.span_id == grouped.context.span_id


# --- the purchase group on the databases ----------------------------------------------------------


def member(email: str, caller: Caller | PresentedApiKey, **changes: Any) -> tuple[dict[str, Any], Any]:
    """A validated purchase (as the route hands it over) and its caller."""
    loaded = {
        "customer": {"email": email, "name": email.split("@")[0]},
        "item": "book",
        "quantity": 2,
        "unit_price": 1250,
        "purchased_at": None,
        **changes,
    }
    return loaded, caller


def fallbacks() -> float:
    return REGISTRY.get_sample_value("db_group_commit_fallbacks_total", {"kind": "purchase"}) or 0.0


def test_a_group_gives_each_caller_its_own_row_and_a_dead_key_fails_only_its_own(settings: Settings) -> None:
    billing, shop = make_api_key(settings, "billing"), make_api_key(settings, "shop")
    revoked = make_api_key(settings, "old")
    tim = Caller(kind="user", id=1, name="tim")

    async def work(db: Any) -> list[Any]:
        await record_purchase(db, *member("known@example.com", tim))
        await revoke_api_key(db, "old")
        members = [
            member("a@example.com", PresentedApiKey(hash_key(billing), "purchases:write")),
            member("known@example.com", tim, quantity=3, item="pen"),
            member("dead@example.com", PresentedApiKey(hash_key(revoked), "purchases:write")),
            member("b@example.com", PresentedApiKey(hash_key(shop), "purchases:write")),
            member(
                "c@example.com",
                PresentedApiKey(hash_key(shop), "reports:read"),
                purchased_at=datetime(2026, 1, 2, tzinfo=UTC),
            ),
        ]
        before = fallbacks()
        outcomes = await record_purchase_group(db, members)
        assert fallbacks() == before  # one shared write
        return outcomes

    a, known, dead, b, c = on_database(settings, work)
    assert (a["captured_by"], known["captured_by"], b["captured_by"], c["captured_by"]) == (
        "api_key:billing",
        "user:tim",
        "api_key:shop",
        "api_key:shop",
    )
    assert isinstance(dead, Problem) and dead.status == 401
    assert (a["revision"], known["revision"], b["revision"]) == (1, 2, 1)  # known: updated, not created
    assert (known["item"], known["quantity"], known["total_cents"]) == ("pen", 3, 3750)
    assert (a["customer_email"], b["customer_email"]) == ("a@example.com", "b@example.com")
    assert from_row_day(c["purchased_at"]) == "2026-01-02"
    assert len({a["id"], known["id"], b["id"], c["id"]}) == 4
    counts = table_counts(settings.database_url)
    assert (counts["customers"], counts["purchases"]) == (4, 5)  # nothing for the dead key


def from_row_day(value: Any) -> str:
    return str(value)[:10]


def test_a_group_the_database_refuses_is_written_one_at_a_time(settings: Settings) -> None:
    tim = Caller(kind="user", id=1, name="tim")

    async def work(db: Any) -> tuple[list[Any], float]:
        before = fallbacks()
        # quantity 0 passes no validation here: the table's check refuses it, and with it the group.
        members = [member(f"n{n}@example.com", tim, quantity=0 if n == 2 else 1) for n in range(5)]
        outcomes = await record_purchase_group(db, members)
        return outcomes, fallbacks() - before

    outcomes, fell_back = on_database(settings, work)
    assert fell_back == 1
    assert [isinstance(outcome, dict) for outcome in outcomes] == [True, True, False, True, True]
    assert "check" in str(outcomes[2]).lower()
    counts = table_counts(settings.database_url)
    assert (counts["customers"], counts["purchases"]) == (4, 4)


@pytest.mark.parametrize("backend", ["postgresql"])  # SQLite locks the whole file, not one customer
def test_a_locked_customer_does_not_hold_up_its_group(settings: Settings, database_url: str) -> None:
    tim = Caller(kind="user", id=1, name="tim")
    on_database(settings, lambda db: record_purchase(db, *member("locked@example.com", tim)))
    holding, held = threading.Event(), threading.Event()

    def hold_the_row() -> None:
        with psycopg.connect(database_url) as connection:
            connection.execute("SELECT 1 FROM customers WHERE email = 'locked@example.com' FOR UPDATE")
            holding.set()
            held.wait(30)

    holder = threading.Thread(target=hold_the_row)
    holder.start()
    try:
        assert holding.wait(10)
        members = [member(email, tim) for email in ("a@example.com", "locked@example.com", "b@example.com")]
        outcomes = on_database(settings, lambda db: record_purchase_group(db, members))
    finally:
        held.set()
        holder.join()
    assert isinstance(outcomes[0], dict) and isinstance(outcomes[2], dict)
    assert limit_reached(outcomes[1]) == LOCK_TIMEOUT  # refused after the lock limit: a 503
    assert table_counts(database_url)["purchases"] == 3  # the first one's, and both neighbours'


# --- through the running service ------------------------------------------------------------------


def flushes(metrics: str) -> tuple[float, float]:
    """(flushes, purchases flushed) from the group-commit histogram of a /metrics page."""
    count = re.search(r'^db_group_commit_size_count\{kind="purchase"\} (\S+)$', metrics, re.M)
    total = re.search(r'^db_group_commit_size_sum\{kind="purchase"\} (\S+)$', metrics, re.M)
    assert count and total, "no group-commit histogram on /metrics"
    return float(count.group(1)), float(total.group(1))


@pytest.mark.slow
def test_concurrent_purchases_from_different_callers_share_statements_and_keep_their_answers(
    live_service: Callable[..., Any], settings: Settings, database_url: str
) -> None:
    keys = [make_api_key(settings, f"caller{n}") for n in range(3)]
    existing = [f"old{n}@example.com" for n in range(0, 64, 2)]

    account = {"username": "tim", "email": "tim@example.com", "password": PASSWORD}
    bodies = [
        purchase(f"old{n}@example.com" if n % 2 == 0 else f"new{n}@example.com", item=f"i{n}", quantity=n + 1)
        for n in range(64)
    ]

    async def drive(base: str) -> tuple[list[httpx.Response], str, str]:
        async with live_client(base, limits=httpx.Limits(max_connections=70), timeout=30) as client:
            for email in existing:  # half the customers exist before
                response = await client.post(
                    "/purchases", json=purchase(email), headers={"X-API-Key": keys[0]}
                )
                assert response.status_code == 201
            assert (await client.post("/auth/register", json=account)).status_code == 201
            make_staff(settings, "tim")  # a user records purchases as staff
            login = await client.post("/auth/login", json={"username": "tim", "password": PASSWORD})
            staff = {"Authorization": f"Bearer {login.json()['access_token']}"}
            headers = [{"X-API-Key": keys[n % 3]} if n % 4 else staff for n in range(64)]
            before = (await client.get("/metrics")).text
            responses = await asyncio.gather(
                *(client.post("/purchases", json=b, headers=h) for b, h in zip(bodies, headers, strict=True))
            )
            return list(responses), before, (await client.get("/metrics")).text

    with live_service() as base:
        responses, before, after = asyncio.run(drive(base))

    assert [r.status_code for r in responses] == [201] * 64, [
        r.text for r in responses if r.status_code != 201
    ]
    for n, response in enumerate(responses):
        body = response.json()
        assert body["captured_by"] == (f"api_key:caller{n % 3}" if n % 4 else "user:tim")
        assert body["customer"]["email"] == (f"old{n}@example.com" if n % 2 == 0 else f"new{n}@example.com")
        assert body["customer_created"] is (n % 2 == 1)
        assert (body["item"], body["quantity"], body["total"]) == (f"i{n}", n + 1, f"{12.5 * (n + 1):.2f}")
    assert len({r.json()["id"] for r in responses}) == 64
    flushed, grouped = (a - b for a, b in zip(flushes(after), flushes(before), strict=True))
    assert grouped == 64
    assert flushed < 64  # some purchases shared a statement
    counts = table_counts(database_url)
    assert (counts["customers"], counts["purchases"]) == (64, 64 + len(existing))


async def purchase_until_killed(base: str, key: str, process: subprocess.Popen[Any]) -> tuple[set[int], str]:
    """32 writers recording purchases for new customers until the service is killed with -9 after a
    second and a half; the ids it answered 201 for, and /metrics as it was just before the kill."""
    acknowledged: set[int] = set()
    killed = asyncio.Event()

    async def writer(client: httpx.AsyncClient, n: int) -> None:
        for m in range(100_000):
            try:
                body = purchase(f"w{n}-{m}@example.com")
                response = await client.post("/purchases", json=body, headers={"X-API-Key": key})
            except httpx.TransportError:
                assert killed.is_set(), "a request failed before the kill"
                return
            assert response.status_code == 201, response.text
            acknowledged.add(response.json()["id"])

    async with live_client(base, limits=httpx.Limits(max_connections=40), timeout=30) as client:
        writers = [asyncio.create_task(writer(client, n)) for n in range(32)]
        await asyncio.sleep(1.5)
        metrics = (await client.get("/metrics")).text
        killed.set()
        process.send_signal(signal.SIGKILL)
        await asyncio.gather(*writers)
    return acknowledged, metrics


@pytest.mark.slow
def test_every_purchase_answered_201_is_stored_when_the_worker_is_killed_mid_group(
    settings: Settings, database_url: str
) -> None:
    key = make_api_key(settings)
    with service_process(database_url) as (process, base):
        acknowledged, metrics = asyncio.run(purchase_until_killed(base, key, process))
    flushed, grouped = flushes(metrics)
    assert grouped > 100 and flushed < grouped  # there was load, and purchases shared statements
    with table_connection(database_url) as connection:
        stored = {row[0] for row in connection.execute("SELECT id FROM purchases").fetchall()}
    assert len(acknowledged) > 100
    assert acknowledged <= stored, f"{len(acknowledged - stored)} purchases answered 201 are not stored"
