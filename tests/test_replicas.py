"""Read replicas with real streaming replication: reads go to the replica, a caller's own writes are
never stale on any instance (the consistency token), and a replica that stops costs no request."""

from __future__ import annotations

import asyncio
import re
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx2 as httpx
import psycopg
import pytest

from service.config import load_settings
from tests.conftest import (
    ROOT,
    free_port,
    live_client,
    make_api_key,
    running_service,
    service_env,
)
from tests.otlp_receiver import OtlpReceiver
from tests.replication import Cluster
from tests.test_purchases import purchase

pytestmark = pytest.mark.slow


@pytest.fixture
def replicated(cluster: Cluster) -> Iterator[tuple[str, str]]:
    """A new database on the primary, once it has reached the standby: (primary URL, replica URL)."""
    name = f"pfs_{time.monotonic_ns() % 10**9}"
    with psycopg.connect(cluster.primary.url(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    deadline = time.monotonic() + 10
    while True:
        try:
            with psycopg.connect(cluster.standby.url(name)):
                break
        except psycopg.OperationalError:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    yield cluster.primary.url(name), cluster.standby.url(name)
    cluster.hold_back_standby("0")
    if not cluster.standby.running():
        cluster.standby.start()


def statements_served(metrics: str, target: str) -> float:
    found = re.search(rf'^db_statements_total\{{target="{target}"\}} (\S+)$', metrics, re.M)
    return float(found.group(1)) if found else 0.0


def start_instances(stack: ExitStack, primary: str, replica: str, count: int, **extra: str) -> list[str]:
    env = service_env(primary, DATABASE_REPLICA_URLS=replica, **{"REPLICA_MAX_LAG_MS": "60000", **extra})
    bases = []
    for _ in range(count):
        port = free_port()
        args = [sys.executable, "-m", "service", "--port", str(port)]
        bases.append(stack.enter_context(running_service(args, env, port, ROOT)))
    return bases


def test_with_its_token_a_write_is_never_stale_on_any_instance(
    cluster: Cluster, replicated: tuple[str, str]
) -> None:
    primary, replica = replicated
    key = make_api_key(load_settings(environ={"DATABASE_URL": primary}, env_file=None))
    cluster.hold_back_standby("1s")  # the replica is always a second behind

    async def scenario(bases: list[str]) -> dict[str, Any]:
        headers = {"X-API-Key": key}
        async with live_client(bases[0], headers=headers) as a, live_client(bases[1], headers=headers) as b:
            clients = [a, b]
            stale_without, fresh_with, tokens = 0, 0, []
            for n in range(200):
                writer, reader = clients[n % 2], clients[(n + 1) % 2]
                written = await writer.post(
                    "/purchases", json=purchase(f"c{n % 7}@example.com", item=f"i{n}")
                )
                assert written.status_code == 201
                token = written.headers["x-consistency-token"]
                tokens.append((written.json()["id"], token))
                path = f"/purchases/{written.json()['id']}"
                with_token = await reader.get(path, headers={"X-Consistency-Token": token})
                fresh_with += with_token.status_code == 200
                if n % 10 == 0:  # and now and then the same read without the token, at once
                    stale_without += (await reader.get(path)).status_code == 404
            # Caught up, the replica serves the same reads with the same tokens.
            cluster.hold_back_standby("0")
            await asyncio.sleep(1.5)
            before = statements_served((await a.get("/metrics")).text, "replica1")
            caught_up = [
                (await a.get(f"/purchases/{ident}", headers={"X-Consistency-Token": token})).status_code
                for ident, token in tokens[:50]
            ]
            after = statements_served((await a.get("/metrics")).text, "replica1")
        return {
            "fresh_with": fresh_with,
            "stale_without": stale_without,
            "caught_up": caught_up,
            "replica_reads": after - before,
        }

    with ExitStack() as stack:
        result = asyncio.run(scenario(start_instances(stack, primary, replica, 2)))

    assert result["fresh_with"] == 200  # never stale with the token
    assert result["stale_without"] >= 15  # without it, the (held back) replica answered
    assert set(result["caught_up"]) == {200}
    assert result["replica_reads"] >= 50  # ... and once caught up the replica served the token reads


def test_a_stopped_replica_costs_no_request_and_is_used_again_when_back(
    cluster: Cluster, replicated: tuple[str, str]
) -> None:
    primary, replica = replicated
    key = make_api_key(load_settings(environ={"DATABASE_URL": primary}, env_file=None))

    async def reads(client: httpx.AsyncClient, count: int) -> list[int]:
        return [(await client.get("/purchases?limit=5")).status_code for _ in range(count)]

    async def scenario(base: str) -> dict[str, Any]:
        async with live_client(base, headers={"X-API-Key": key}) as client:
            assert (await client.post("/purchases", json=purchase("r@example.com"))).status_code == 201
            await asyncio.sleep(0.5)
            first = await reads(client, 20)
            served_before = statements_served((await client.get("/metrics")).text, "replica1")
            cluster.standby.stop()
            while_down = await reads(client, 50)
            ready_while_down = (await client.get("/ready")).status_code
            down_metrics = (await client.get("/metrics")).text
            cluster.standby.start()
            await asyncio.sleep(2.0)  # the monitor looks every 0.2 s
            back = await reads(client, 20)
            served_after = statements_served((await client.get("/metrics")).text, "replica1")
        return {
            "first": first,
            "while_down": while_down,
            "ready": ready_while_down,
            "down_metrics": down_metrics,
            "served": (served_before, served_after),
            "back": back,
        }

    with ExitStack() as stack:
        [base] = start_instances(stack, primary, replica, 1)
        result = asyncio.run(scenario(base))

    assert set(result["first"] + result["while_down"] + result["back"]) == {200}
    assert result["ready"] == 200  # readiness is the primary's
    assert 'db_replica_usable{replica="replica1"} 0.0' in result["down_metrics"]
    before, after = result["served"]
    assert before >= 20
    assert after >= before + 20  # used again once back


def test_a_replica_further_behind_than_the_limit_is_skipped_until_it_catches_up(
    cluster: Cluster, replicated: tuple[str, str]
) -> None:
    primary, replica = replicated
    key = make_api_key(load_settings(environ={"DATABASE_URL": primary}, env_file=None))

    async def scenario(base: str) -> dict[str, Any]:
        async with live_client(base, headers={"X-API-Key": key}) as client:

            async def write_then_read(n: int) -> int:
                written = await client.post("/purchases", json=purchase("lag@example.com", item=f"i{n}"))
                # No token: the replica would serve this, were it usable.
                return (await client.get(f"/purchases/{written.json()['id']}")).status_code

            cluster.hold_back_standby("2s")
            for n in range(10):  # let it fall behind, past the 300 ms limit
                await write_then_read(n)
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)
            skipped = [await write_then_read(100 + n) for n in range(30)]
            lagging = (await client.get("/metrics")).text
            cluster.hold_back_standby("0")
            await asyncio.sleep(1.5)
            served_before = statements_served((await client.get("/metrics")).text, "replica1")
            again = [(await client.get("/purchases?limit=5")).status_code for _ in range(10)]
            served_after = statements_served((await client.get("/metrics")).text, "replica1")
        return {
            "skipped": skipped,
            "lagging": lagging,
            "again": again,
            "served": (served_before, served_after),
        }

    with ExitStack() as stack:
        env = {"REPLICA_MAX_LAG_MS": "300"}
        [base] = start_instances(stack, primary, replica, 1, **env)
        result = asyncio.run(scenario(base))

    assert set(result["skipped"]) == {200}  # the lagging replica was not asked: nothing stale
    assert 'db_replica_usable{replica="replica1"} 0.0' in result["lagging"]
    assert set(result["again"]) == {200}
    before, after = result["served"]
    assert after >= before + 10  # caught up: in use again


def test_a_write_whose_token_cannot_be_read_still_gets_its_answer() -> None:
    from starlette.testclient import TestClient

    from service.middleware import RequestContextMiddleware

    class PrimaryGoneAfterTheCommit:
        replicas = object()

        async def consistency_token(self) -> str:
            raise OSError("the primary went away")

    async def committed(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    middleware = RequestContextMiddleware(committed, max_body_bytes=1024)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await middleware({**scope, "state": {"db": PrimaryGoneAfterTheCommit()}}, receive, send)

    response = TestClient(app).post("/purchases")
    assert response.status_code == 201
    assert "x-consistency-token" not in response.headers


def test_a_traced_statement_names_the_target_that_served_it(
    cluster: Cluster, replicated: tuple[str, str]
) -> None:
    primary, replica = replicated
    key = make_api_key(load_settings(environ={"DATABASE_URL": primary}, env_file=None))

    async def scenario(base: str) -> None:
        async with live_client(base, headers={"X-API-Key": key}) as client:
            assert (await client.post("/purchases", json=purchase("t@example.com"))).status_code == 201
            await asyncio.sleep(0.5)  # the monitor has seen the replica catch up
            assert (await client.get("/purchases?limit=5")).status_code == 200

    with OtlpReceiver() as receiver, ExitStack() as stack:
        [base] = start_instances(
            stack,
            primary,
            replica,
            1,
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
            OTEL_BSP_SCHEDULE_DELAY="50",
        )
        asyncio.run(scenario(base))
        read = receiver.wait_for("list_purchases")
        write = receiver.wait_for("record_purchase")
    assert read.attributes == {"db.system.name": "postgresql", "db.target": "replica1"}
    assert write.attributes == {"db.system.name": "postgresql", "db.target": "primary"}
