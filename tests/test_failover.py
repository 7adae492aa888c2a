"""The service on a Patroni cluster (tests/patroni.py: etcd, two PostgreSQL 15 nodes in synchronous
mode, haproxy checking Patroni's REST API) while the leader's whole node is killed with -9, again
and again: only 201s and 503s with Retry-After, writes back within the ttl and a little, nothing
acknowledged lost or written twice, the replica's reads answering throughout, and a SIGTERM that
still ends in an exit. One cluster for the module (it is slow to make and to heal)."""

from __future__ import annotations

import asyncio
import collections
import itertools
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx2 as httpx
import psycopg
import pytest

from service.config import load_settings
from tests.conftest import live_client, make_api_key, service_process
from tests.patroni import TTL, HaCluster, PatroniNode, ha_binaries, ha_cluster
from tests.test_counts import count_errors
from tests.test_rollups import rollup_errors

pytestmark = pytest.mark.slow

GRACE_SECONDS = 5  # the service's SHUTDOWN_GRACE_SECONDS default


@pytest.fixture(scope="module")
def ha() -> Iterator[HaCluster]:
    missing = ha_binaries()
    if missing:
        if os.environ.get("REQUIRE_POSTGRES"):
            pytest.fail(f"the failover tests need a Patroni cluster: {missing}")
        pytest.skip(f"the failover tests need a Patroni cluster: {missing}")
    with ha_cluster() as cluster:
        yield cluster


def new_database(ha: HaCluster, name: str) -> str:
    with psycopg.connect(ha.url(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return ha.url(name)


@dataclass
class Ledger:
    """What the callers saw."""

    statuses: collections.Counter[Any] = field(default_factory=collections.Counter)
    read_statuses: collections.Counter[Any] = field(default_factory=collections.Counter)
    retry_after_missing: int = 0
    acknowledged: dict[str, list[int]] = field(default_factory=dict)  # Idempotency-Key -> ids
    recovered_after: list[float] = field(default_factory=list)  # seconds from a kill to the next 201
    last_201: float = 0.0
    acknowledged_at: list[float] = field(default_factory=list)  # when each 201's request was sent
    abandoned: int = 0  # keys never answered 201
    token_reads: list[tuple[int, bool]] = field(default_factory=list)  # (status, the write seen)
    readiness: set[int] = field(default_factory=set)  # what /ready answered
    stopped_at: float = 0.0


def purchase_body(n: int, m: int) -> dict[str, Any]:
    return {
        "customer": {"email": f"w{n}-{m}@example.com", "name": "W"},
        "item": f"item{m % 7}",
        "quantity": 1 + m % 3,
        "unit_price": "2.50",
    }


async def careful_writer(
    client: httpx.AsyncClient, key: str, n: int, ledger: Ledger, stop: asyncio.Event
) -> None:
    """Purchases (every fourth writer: batches of five), each with an Idempotency-Key, the same key
    retried on a 503 or a broken connection until it is answered 201; stops between keys."""
    batches = n % 4 == 0
    for m in range(1_000_000):
        if stop.is_set():
            return
        idempotency_key = f"writer{n}-{m}"
        if batches:
            path = "/purchases/batch"
            body: Any = {"purchases": [purchase_body(n, m * 5 + k) for k in range(5)]}
        else:
            path, body = "/purchases", purchase_body(n, m)
        headers = {"X-API-Key": key, "Idempotency-Key": idempotency_key}
        while not (stop.is_set() and time.monotonic() - ledger.stopped_at > 30):  # (a cluster gone for good)
            sent_at = time.monotonic()
            try:
                response = await client.post(path, json=body, headers=headers)
            except httpx.TransportError:
                ledger.statuses["broken connection"] += 1
                await asyncio.sleep(0.2)
                continue
            ledger.statuses[response.status_code] += 1
            if response.status_code == 201:
                answer = response.json()
                ledger.acknowledged[idempotency_key] = answer["ids"] if batches else [answer["id"]]
                ledger.last_201 = max(ledger.last_201, sent_at)  # (sent after a kill: writes are back)
                ledger.acknowledged_at.append(sent_at)
                break
            if response.status_code == 503 and "retry-after" not in response.headers:
                ledger.retry_after_missing += 1
            await asyncio.sleep(0.2)
        else:
            ledger.abandoned += 1


async def reader(client: httpx.AsyncClient, ledger: Ledger, stop: asyncio.Event) -> None:
    """Public reads, which go to the replica; and /ready, which follows the primary."""
    while not stop.is_set():
        try:
            ledger.read_statuses[(await client.get("/posts?limit=5")).status_code] += 1
            ledger.readiness.add((await client.get("/ready")).status_code)
        except httpx.TransportError:
            ledger.read_statuses["broken connection"] += 1
        await asyncio.sleep(0.05)


@dataclass
class Caller:
    client: httpx.AsyncClient
    key: str

    async def write_with_token(self) -> tuple[int, str]:
        """A purchase the old primary acknowledges: its id, and the consistency token it came with."""
        body = purchase_body(999, int(time.monotonic() * 1000))
        response = await self.client.post("/purchases", json=body, headers={"X-API-Key": self.key})
        assert response.status_code == 201, response.text
        return response.json()["id"], response.headers["x-consistency-token"]

    async def read_with_token(self, purchase_id: int, token: str) -> httpx.Response:
        headers = {"X-API-Key": self.key, "X-Consistency-Token": token}
        return await self.client.get(f"/purchases/{purchase_id}", headers=headers)


async def three_failovers(ha: HaCluster, ledger: Ledger, caller: Caller) -> list[str]:
    return await failovers(ha, ledger, caller, 3)


async def failovers(ha: HaCluster, ledger: Ledger, caller: Caller, count: int) -> list[str]:
    """Kill the leader's node `count` times, each time waiting for writes to come back and the
    killed node to rejoin as a synchronous standby. The leaders, in order. Before each kill a
    purchase is written; once the old leader serves as a replica again it is read with the
    consistency token the old leader gave (ledger.token_reads: the statuses and whether it was
    the purchase)."""
    leaders = []
    for _ in range(count):
        await asyncio.sleep(1)
        leader = await asyncio.to_thread(ha.leader)
        assert leader is not None
        leaders.append(leader.name)
        written, token = await caller.write_with_token()
        ledger.acknowledged[f"token probe {len(leaders)}"] = [written]
        await asyncio.to_thread(leader.kill)
        killed_at = time.monotonic()  # (a request sent while the kill was under way may commit)
        while ledger.last_201 < killed_at:
            assert time.monotonic() - killed_at < 60, f"writes did not come back within a minute: {ledger}"
            await asyncio.sleep(0.05)
        ledger.recovered_after.append(ledger.last_201 - killed_at)
        await asyncio.to_thread(leader.start)
        await asyncio.to_thread(ha.wait_healthy)
        await asyncio.sleep(1)  # (the replica monitor sees the rejoined node)
        read = await caller.read_with_token(written, token)
        seen = read.status_code == 200 and read.json()["id"] == written
        ledger.token_reads.append((read.status_code, seen))
    leaders.append((await asyncio.to_thread(ha.leader) or PatroniNode("none", Path(), 0, 0)).name)
    return leaders


async def switchover(ha: HaCluster, ledger: Ledger, caller: Caller) -> list[str]:
    """A planned change of leader (`patronictl switchover`), then the old one back as a standby."""
    await asyncio.sleep(1)
    leader = await asyncio.to_thread(ha.leader)
    assert leader is not None
    candidate = next(node for node in ha.nodes if node is not leader)
    await asyncio.to_thread(ha.switchover, candidate)
    await asyncio.to_thread(ha.wait_healthy)
    await asyncio.sleep(1)
    return [leader.name, (await asyncio.to_thread(ha.leader) or leader).name]


async def drive(
    base: str,
    key: str,
    ha: HaCluster,
    disruption: Callable[[HaCluster, Ledger, Caller], Awaitable[list[str]]],
    writers: int = 8,
) -> tuple[Ledger, list[str]]:
    ledger = Ledger()
    stop = asyncio.Event()
    limits = httpx.Limits(max_connections=writers + 2)
    async with live_client(base, limits=limits, timeout=30) as client:
        tasks = [asyncio.create_task(careful_writer(client, key, n, ledger, stop)) for n in range(writers)]
        tasks.append(asyncio.create_task(reader(client, ledger, stop)))
        try:
            leaders = await disruption(ha, ledger, Caller(client, key))
            await asyncio.sleep(1)
        finally:
            ledger.stopped_at = time.monotonic()
            stop.set()
            await asyncio.gather(*tasks)
    return ledger, leaders


def pool_gauges(base: str) -> dict[str, float]:
    metrics = httpx.get(f"{base}/metrics").text
    found = {}
    for line in metrics.splitlines():
        for gauge in ("open", "in_use"):
            if line.startswith(f"db_pool_connections_{gauge} "):
                found[gauge] = float(line.split()[1])
    return found


def stored_ids(url: str) -> list[int]:
    with psycopg.connect(url) as conn:
        return [row[0] for row in conn.execute("SELECT id FROM purchases").fetchall()]


def test_three_failovers_under_load_lose_nothing_and_cost_only_503s(ha: HaCluster, tmp_path: Path) -> None:
    url = new_database(ha, "failover")
    settings = replace(load_settings(environ={"DATABASE_URL": url}, env_file=None), database_url=url)
    log = Path(os.environ.get("FAILOVER_LOG", tmp_path / "service.log"))
    with service_process(url, log=log, DATABASE_REPLICA_URLS=ha.replica_url("failover")) as (process, base):
        key = make_api_key(settings)
        pool_before = pool_gauges(base)
        ledger, leaders = asyncio.run(drive(base, key, ha, three_failovers))
        pool_after = pool_gauges(base)
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        exit_code = process.wait(timeout=GRACE_SECONDS + 30)
        stopped_after = time.monotonic() - signalled

    print(f"statuses {dict(ledger.statuses)}, reads {dict(ledger.read_statuses)}")
    print(f"writes back after {[round(s, 1) for s in ledger.recovered_after]} s; leaders {leaders}")
    print(f"stopped {stopped_after:.1f} s after SIGTERM")
    assert leaders[0] != leaders[1] != leaders[2] != leaders[3]  # there and back, and there again
    assert set(ledger.statuses) <= {201, 503}, (ledger.statuses, log.read_text()[-3000:])  # never a 500
    assert ledger.retry_after_missing == 0
    assert ledger.statuses[503] > 0  # each outage was seen
    assert max(ledger.recovered_after) < TTL + 2, ledger.recovered_after  # the ttl, then promotion
    assert set(ledger.read_statuses) == {200}, ledger.read_statuses
    assert ledger.token_reads == [(200, True)] * 3  # the old leader's tokens honoured on the new
    assert ledger.readiness == {200, 503}  # /ready said so while there was no primary
    assert exit_code == 0 and stopped_after < GRACE_SECONDS + 5
    # Every connection came back: none in use once the load is over, none left for the close to
    # wait for (it would say so), and no more open than the pool may hold.
    assert pool_after["in_use"] == pool_before["in_use"] == 0, (pool_before, pool_after)
    assert 0 < pool_after["open"] <= 10
    assert "closing the database pool took over" not in log.read_text()
    acknowledged = [purchase_id for ids in ledger.acknowledged.values() for purchase_id in ids]
    assert ledger.abandoned == 0
    assert len(acknowledged) == len(set(acknowledged))
    stored = stored_ids(url)
    assert sorted(stored) == sorted(acknowledged)  # none lost, none twice, nothing unacknowledged
    assert rollup_errors(url) == [] and count_errors(url) == []


def longest_write_gap(ledger: Ledger) -> float:
    """The longest time between two requests that were answered 201 (by when they were sent)."""
    moments = sorted(ledger.acknowledged_at)
    return max(later - earlier for earlier, later in itertools.pairwise(moments))


def test_a_planned_switchover_under_load_costs_a_few_503s_and_loses_nothing(
    ha: HaCluster, tmp_path: Path
) -> None:
    url = new_database(ha, "switchover")
    settings = replace(load_settings(environ={"DATABASE_URL": url}, env_file=None), database_url=url)
    with service_process(url, DATABASE_REPLICA_URLS=ha.replica_url("switchover")) as (_, base):
        key = make_api_key(settings)
        ledger, leaders = asyncio.run(drive(base, key, ha, switchover))
    gap = longest_write_gap(ledger)
    print(f"statuses {dict(ledger.statuses)}, reads {dict(ledger.read_statuses)}; writes paused {gap:.1f} s")
    assert leaders[0] != leaders[1]
    assert set(ledger.statuses) <= {201, 503}, ledger.statuses
    assert ledger.retry_after_missing == 0
    assert gap < 5
    assert set(ledger.read_statuses) == {200}, ledger.read_statuses
    acknowledged = [purchase_id for ids in ledger.acknowledged.values() for purchase_id in ids]
    assert ledger.abandoned == 0 and len(acknowledged) == len(set(acknowledged))
    assert sorted(stored_ids(url)) == sorted(acknowledged)
