"""The scaled-out picture, all real and all local: haproxy in front of two service instances, which
reach a primary through PgBouncer (transaction mode) and read from a streaming standby. A mixed
load runs through haproxy while one instance is restarted; it drains first, so no request fails.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import psycopg
import pytest

from service.config import load_settings
from tests.conftest import ROOT, free_port, live_client, make_api_key, service_env, wait_until_answering
from tests.pgbouncer import running_pgbouncer
from tests.replication import Cluster
from tests.test_purchases import purchase

pytestmark = pytest.mark.slow

GRACE_SECONDS = 2


@pytest.fixture
def haproxy_binary() -> str:
    found = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(found).exists():
        pytest.fail("the topology test needs haproxy (apt-get install haproxy)")
    return found


def start_instance(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    wait_until_answering(process, f"http://127.0.0.1:{port}", "/ready", 60)
    return process


def haproxy_config(port: int, servers: list[int]) -> str:
    lines = [
        "defaults",
        "  mode http",
        "  timeout connect 2s",
        "  timeout client 30s",
        "  timeout server 30s",
        "  retries 3",
        "  option redispatch",  # a connection refused by a stopping instance is retried on another
        "frontend web",
        f"  bind 127.0.0.1:{port}",
        "  default_backend services",
        "backend services",
        "  balance roundrobin",
        "  option httpchk GET /ready",  # /ready turns 503 the moment an instance starts draining
        "  http-check expect status 200",
        "  default-server inter 200ms fall 1 rise 2",
    ]
    lines += [f"  server s{n} 127.0.0.1:{server} check" for n, server in enumerate(servers)]
    return "\n".join(lines) + "\n"


@pytest.fixture
def topology(cluster: Cluster, haproxy_binary: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    name = f"pfs_topology_{time.monotonic_ns() % 10**9}"
    with psycopg.connect(cluster.primary.url(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
        # Behind PgBouncer the timeouts are the database's (README, Scaling out).
        conn.execute(f"ALTER DATABASE \"{name}\" SET statement_timeout = '5000ms'")
        conn.execute(f"ALTER DATABASE \"{name}\" SET lock_timeout = '2000ms'")
    primary, replica = cluster.primary.url(name), cluster.standby.url(name)
    with running_pgbouncer(cluster.primary.url(), free_port()) as bouncer:
        env = service_env(
            f"{bouncer}/{name}",
            DB_STATEMENT_CACHE="0",
            MIGRATION_DATABASE_URL=primary,
            DATABASE_REPLICA_URLS=replica,
            SHUTDOWN_GRACE_SECONDS=str(GRACE_SECONDS),
        )
        ports = [free_port(), free_port()]
        logs = [tmp_path / f"instance{n}.log" for n in range(2)]
        processes = [start_instance(env, port, log) for port, log in zip(ports, logs, strict=True)]
        front = free_port()
        (tmp_path / "haproxy.cfg").write_text(haproxy_config(front, ports))
        balancer = subprocess.Popen(
            [haproxy_binary, "-f", str(tmp_path / "haproxy.cfg"), "-db"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{front}/ready", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "haproxy did not come up"
                time.sleep(0.1)
            yield {
                "base": f"http://127.0.0.1:{front}",
                "env": env,
                "ports": ports,
                "logs": logs,
                "processes": processes,
                "key": make_api_key(load_settings(environ={"DATABASE_URL": primary}, env_file=None)),
            }
        finally:
            balancer.terminate()
            balancer.wait(timeout=10)
            for process in processes:
                if process.poll() is None:
                    process.terminate()
                    process.wait(timeout=15)


def test_a_mixed_load_through_haproxy_loses_nothing_while_an_instance_restarts(
    topology: dict[str, Any],
) -> None:
    outcomes: list[str] = []
    stopped = asyncio.Event()

    async def caller(n: int) -> None:
        async with live_client(
            topology["base"], headers={"X-API-Key": topology["key"]}, timeout=30
        ) as client:
            count = 0
            while not stopped.is_set():
                try:
                    if count % 3 == 0:  # a purchase, then reading it back with its token
                        written = await client.post(
                            "/purchases", json=purchase(f"t{n}@example.com", item=f"{n}-{count}")
                        )
                        outcomes.append(str(written.status_code))
                        if written.status_code == 201:
                            token = written.headers["x-consistency-token"]
                            read = await client.get(
                                f"/purchases/{written.json()['id']}", headers={"X-Consistency-Token": token}
                            )
                            outcomes.append(str(read.status_code))
                    else:
                        outcomes.append(str((await client.get("/posts?limit=20")).status_code))
                except httpx.TransportError as exc:
                    outcomes.append(exc.__class__.__name__)
                count += 1

    async def restart_one() -> dict[str, float]:
        await asyncio.sleep(1.5)
        old = topology["processes"][0]
        signalled = time.monotonic()
        old.send_signal(signal.SIGTERM)
        while old.poll() is None:  # noqa: ASYNC110 - a child process, not an event
            await asyncio.sleep(0.05)
        exited = time.monotonic()
        assert old.returncode == 0
        new = await asyncio.to_thread(
            start_instance, topology["env"], topology["ports"][0], topology["logs"][0]
        )
        topology["processes"][0] = new
        back = time.monotonic()
        await asyncio.sleep(2.0)  # and the load goes on with both
        stopped.set()
        return {"drained_for": exited - signalled, "down_for": back - signalled}

    async def scenario() -> dict[str, float]:
        callers = [asyncio.create_task(caller(n)) for n in range(8)]
        timing = await restart_one()
        await asyncio.gather(*callers)
        return timing

    timing = asyncio.run(scenario())
    counts = {outcome: outcomes.count(outcome) for outcome in set(outcomes)}
    assert set(counts) <= {"200", "201"}, counts
    assert len(outcomes) >= 200
    assert timing["drained_for"] >= GRACE_SECONDS
    print(
        f"\ntopology: {len(outcomes)} requests, {counts}; the restarted instance drained for"
        f" {timing['drained_for']:.1f} s and served again {timing['down_for']:.1f} s after SIGTERM"
    )
