"""The primary killed under load (issue 27's first step): 503s with Retry-After, never a 500 or a
hang; the service finds the server again without a restart, loses no acknowledged write, and
stops at once when told to."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import time
from dataclasses import replace
from typing import Any

import httpx2 as httpx
import psycopg
import pytest

from service.config import load_settings
from tests.conftest import live_client, make_api_key, service_process
from tests.replication import Cluster

pytestmark = pytest.mark.slow

WRITERS = 8


async def write_through_a_crash(base: str, key: str, cluster: Cluster) -> dict[str, Any]:
    """WRITERS writers for 7 s; the primary killed with -9 after 1.5 s and started again 3 s later;
    /ready polled meanwhile. What every request got, and the ids answered 201."""
    statuses: collections.Counter[Any] = collections.Counter()
    retry_after_missing = 0
    acknowledged: set[int] = set()
    after_restart = 0
    readiness: set[int] = set()
    restarted = asyncio.Event()
    stop = time.monotonic() + 7

    async def writer(client: httpx.AsyncClient, n: int) -> None:
        nonlocal retry_after_missing, after_restart
        for m in range(1_000_000):
            if time.monotonic() > stop:
                return
            body = {
                "customer": {"email": f"w{n}-{m}@example.com", "name": "W"},
                "item": "book",
                "quantity": 1,
                "unit_price": "2.50",
            }
            response = await client.post("/purchases", json=body, headers={"X-API-Key": key})
            statuses[response.status_code] += 1
            if response.status_code == 201:
                acknowledged.add(response.json()["id"])
                after_restart += restarted.is_set()
            elif response.status_code == 503 and "retry-after" not in response.headers:
                retry_after_missing += 1

    async def ready_poller(client: httpx.AsyncClient) -> None:
        while time.monotonic() < stop:
            readiness.add((await client.get("/ready")).status_code)
            await asyncio.sleep(0.1)

    async def crash() -> None:
        await asyncio.sleep(1.5)
        postmaster = int((cluster.primary.data / "postmaster.pid").read_text().split()[0])
        os.kill(postmaster, signal.SIGKILL)
        await asyncio.sleep(3)
        await asyncio.to_thread(cluster.primary.start)
        restarted.set()

    async with live_client(base, limits=httpx.Limits(max_connections=WRITERS + 2), timeout=30) as client:
        await asyncio.gather(crash(), ready_poller(client), *(writer(client, n) for n in range(WRITERS)))
    return {
        "statuses": statuses,
        "retry_after_missing": retry_after_missing,
        "acknowledged": acknowledged,
        "after_restart": after_restart,
        "readiness": readiness,
    }


def test_a_primary_killed_under_load_costs_503s_only_and_the_service_recovers_and_stops(
    cluster: Cluster,
) -> None:
    with psycopg.connect(cluster.primary.url(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE primary_loss")
        # The cluster runs with synchronous_commit off (fast tests); a 201 here must survive a kill.
        conn.execute("ALTER DATABASE primary_loss SET synchronous_commit = on")
    url = cluster.primary.url("primary_loss")
    settings = replace(load_settings(environ={"DATABASE_URL": url}, env_file=None), database_url=url)
    with service_process(url) as (process, base):
        key = make_api_key(settings)
        result = asyncio.run(write_through_a_crash(base, key, cluster))
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
        stopped_after = time.monotonic() - signalled

    statuses = result["statuses"]
    assert set(statuses) <= {201, 503}, statuses  # never a 500
    assert statuses[503] > 0, "the outage was not seen"
    assert result["retry_after_missing"] == 0
    assert 503 in result["readiness"] and 200 in result["readiness"]
    assert result["after_restart"] > 0  # the pool found the server again, no restart of the service
    assert stopped_after < 10
    with psycopg.connect(url) as conn:
        stored = {row[0] for row in conn.execute("SELECT id FROM purchases").fetchall()}
    assert result["acknowledged"] <= stored
