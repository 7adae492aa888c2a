"""CPU time per request of the ASGI app alone: the service beside the limit app, no HTTP server.

Throughput on a shared 2-core machine drifts by tens of percent from one minute to the next;
the CPU a request costs the app's process drifts much less, so this is the number to watch while
optimising the hot path. Each app is called in-process (its lifespan run, then 32 callers at once
sending POST /purchases, GET /posts?limit=20, or POST /purchases/batch of 1,000 rows, which the
limit app has no route for, straight to it), and `time.process_time()` over the
run - the main thread and any driver threads - is divided by the requests. Best of the rounds.

Run from the repository root (after `make bench`, which installs what it needs):

    python bench/cpu_per_request.py --database postgresql --route posts
    python bench/cpu_per_request.py --database sqlite --route purchase --rounds 7
    python bench/cpu_per_request.py --database sqlite --route batch --requests 64
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.bench.runner import fresh_database, seed_database  # noqa: E402 - after the path is set
from service.bench.scenarios import Context, batch_request, posts_request, purchase_request  # noqa: E402
from service.bench.sizes import SeedSize  # noqa: E402

CALLERS = 32
App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


async def call(app: App, state: dict[str, Any], route: str, api_key: str, rng: random.Random) -> int:
    """One request of the bench's scenario straight into the app; its status."""
    make = {"posts": posts_request, "purchase": purchase_request, "batch": batch_request}[route]
    method, target, payload, extra = make(rng, Context(api_key=api_key, token="", customer_ids=[]))
    body = payload or b""
    path, _, query = target.partition("?")
    headers = [(b"host", b"bench")] + [(name.lower().encode(), text.encode()) for name, text in extra.items()]
    if payload is not None:
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    scope = {
        "type": "http",
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query.encode(),
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
        "state": dict(state),
    }
    delivered = False
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if delivered:
            await asyncio.Event().wait()  # nobody disconnects
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await app(scope, receive, send)
    return statuses[0]


async def measure(app: App, route: str, api_key: str, requests: int, rounds: int) -> float:
    """Best CPU milliseconds per request over `rounds` runs of `requests` requests."""
    state: dict[str, Any] = {}
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await inbox.put({"type": "lifespan.startup"})
    lifespan = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": state}, inbox.get, outbox.put)
    )
    started = await outbox.get()
    if started["type"] != "lifespan.startup.complete":
        raise SystemExit(f"the app did not start: {started}")
    rng = random.Random(1)
    best = float("inf")

    async def caller(count: int, statuses: list[int]) -> None:
        for _ in range(count):
            statuses.append(await call(app, state, route, api_key, rng))

    try:
        for round_number in range(rounds + 1):  # round 0 warms up and is not counted
            statuses: list[int] = []
            cpu = time.process_time()
            await asyncio.gather(*(caller(requests // CALLERS, statuses) for _ in range(CALLERS)))
            spent = (time.process_time() - cpu) / len(statuses) * 1000
            failed = [status for status in statuses if not 200 <= status < 300]
            if failed:
                raise SystemExit(f"{len(failed)} requests failed, e.g. {failed[0]}")
            if round_number:
                best = min(best, spent)
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        await outbox.get()
        await lifespan
    return best


def service_app(url: str) -> tuple[App, str]:
    from service.apikeys import create_api_key
    from service.app import create_app
    from service.config import load_settings
    from service.db import open_database
    from service.tables import SCOPES

    settings = replace(
        load_settings(environ={}, env_file=None), database_url=url, secret_key="k" * 64, log_level="warning"
    )

    async def make_key() -> str:
        db = open_database(settings)
        await db.connect()
        try:
            key, _ = await create_api_key(db, f"cpu-{random.randrange(10**9)}", SCOPES)
        finally:
            await db.disconnect()
        return key

    return create_app(settings), asyncio.run(make_key())


def limit_app(path: Path, url: str) -> App:
    os.environ["LIMIT_DB"] = url
    spec = importlib.util.spec_from_file_location("limit_app", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.app  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--route", choices=["posts", "purchase", "batch"], default="posts")
    parser.add_argument("--requests", type=int, default=4000, help="requests a round (default 4000)")
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds; the best is kept")
    parser.add_argument("--limit-app", default=str(ROOT.parent / "shared" / "bench" / "limit_app.py"))
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    )
    options = parser.parse_args()
    try:
        import uvloop

        uvloop.install()  # the loop uvicorn runs the service on
    except ImportError:
        pass
    with fresh_database(options.database, options.postgres_url) as url:
        seed_database(url, SeedSize())  # the limit app's shape
        app, key = service_app(url)
        apps: dict[str, tuple[App, str]] = {"service": (app, key)}
        if Path(options.limit_app).is_file() and options.route != "batch":  # it has no batch route
            apps["limit app"] = (limit_app(Path(options.limit_app), url), "")
        for name, (target, api_key) in apps.items():
            spent = asyncio.run(measure(target, options.route, api_key, options.requests, options.rounds))
            print(f"{options.database:10} {options.route:8} {name:9} {spent:.3f} CPU ms a request")


if __name__ == "__main__":
    main()
