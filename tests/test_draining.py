"""SIGTERM drains: /ready turns 503 at once, requests are served through the grace period, every
request in flight finishes, every acknowledged write is kept, and the process exits 0."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from service.config import Settings
from tests.conftest import ROOT, free_port, live_client, make_api_key, service_env, wait_until_answering
from tests.test_purchases import purchase

pytestmark = pytest.mark.slow

GRACE_SECONDS = 3
WRITERS = 8


async def steady_load(base: str, key: str, process: subprocess.Popen[Any]) -> dict[str, Any]:
    """Writers and a /ready poller run until the process exits; SIGTERM goes out a second in."""
    writes: list[tuple[float, str, int | None]] = []  # (sent at, outcome, purchase id)
    readiness: list[tuple[float, str]] = []
    stopped = asyncio.Event()

    async def writer(n: int) -> None:
        async with live_client(base, headers={"X-API-Key": key}, timeout=30) as client:
            count = 0
            while not stopped.is_set():
                sent = time.monotonic()
                try:
                    response = await client.post(
                        "/purchases", json=purchase(f"writer{n}@example.com", item=f"{n}-{count}")
                    )
                except httpx.TransportError as exc:  # refused once the worker stops accepting
                    writes.append((sent, exc.__class__.__name__, None))
                    await asyncio.sleep(0.05)
                    continue
                identifier = response.json().get("id") if response.status_code == 201 else None
                writes.append((sent, str(response.status_code), identifier))
                count += 1

    async def poll_ready() -> None:
        while not stopped.is_set():
            sent = time.monotonic()
            try:
                async with live_client(base, timeout=5) as client:
                    readiness.append((sent, str((await client.get("/ready")).status_code)))
            except httpx.TransportError as exc:
                readiness.append((sent, exc.__class__.__name__))
            await asyncio.sleep(0.1)

    tasks = [asyncio.create_task(writer(n)) for n in range(WRITERS)]
    tasks.append(asyncio.create_task(poll_ready()))
    await asyncio.sleep(1.0)
    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    while process.poll() is None and time.monotonic() - signalled < GRACE_SECONDS + 30:  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    exited = time.monotonic()
    stopped.set()
    await asyncio.gather(*tasks)
    return {"writes": writes, "readiness": readiness, "signalled": signalled, "exited": exited}


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_drains_under_steady_writes_and_loses_nothing(
    settings: Settings, database_url: str, workers: int, tmp_path: Path
) -> None:
    from tests.conftest import table_counts

    key = make_api_key(settings)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "service.log"
    with log.open("wb") as sink:  # a file, not a pipe: nobody reads a pipe while the load runs
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "--port", str(port), "--workers", str(workers)],
            cwd=ROOT,
            env=service_env(database_url, SHUTDOWN_GRACE_SECONDS=str(GRACE_SECONDS)),
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until_answering(process, base, "/ready", 30)
        result = asyncio.run(steady_load(base, key, process))
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
    output = log.read_text()

    signalled, exited = result["signalled"], result["exited"]
    assert process.returncode == 0, output
    # It kept serving through the grace period, then stopped promptly.
    assert GRACE_SECONDS <= exited - signalled < GRACE_SECONDS + 5, output
    writes = result["writes"]
    in_grace = [outcome for sent, outcome, _ in writes if signalled <= sent < signalled + GRACE_SECONDS - 0.3]
    assert len(in_grace) >= 20
    assert set(in_grace) == {"201"}, output
    assert {outcome for sent, outcome, _ in writes if sent < signalled} == {"201"}
    # /ready: 200 before, 503 from the signal on (give the signal a moment to arrive).
    readiness = result["readiness"]
    # (A poll sent in the last moment before the signal may be answered after it.)
    assert {status for sent, status in readiness if sent < signalled - 0.2} == {"200"}
    # uvicorn's supervisor (--workers N) looks at its signals every half second, then tells the workers.
    delivered = signalled + (0.3 if workers == 1 else 0.8)
    draining = [status for sent, status in readiness if delivered <= sent < signalled + GRACE_SECONDS - 0.3]
    assert draining and set(draining) == {"503"}
    # Every write that was acknowledged is in the database, and nothing that was not: a request
    # that failed after the grace period (refused, or reset while it sat in the closed listener's
    # queue) was never processed, and none was cut off half-way.
    acknowledged = [identifier for _, outcome, identifier in writes if outcome == "201"]
    assert len(set(acknowledged)) == len(acknowledged)
    assert table_counts(database_url)["purchases"] == len(acknowledged)
    assert {outcome for _, outcome, _ in writes if outcome.isdigit()} == {"201"}
    late = {outcome for sent, outcome, _ in writes if outcome != "201"}
    assert all(sent >= signalled + GRACE_SECONDS - 0.3 for sent, outcome, _ in writes if outcome in late)
