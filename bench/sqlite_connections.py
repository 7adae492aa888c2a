"""Before/after for the SQLite connection fix: the stock `databases` backend against the pooled one.

Both serve the same trivial route (`SELECT 1` through `databases`) under uvicorn, one worker, and
the same wrk load drives each in turn. Run from the repository root:

    python bench/sqlite_connections.py --seconds 10 --connections 32
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.bench.load import Run  # noqa: E402 - after the path is set


def build_app(backend: str, url: str):  # type: ignore[no-untyped-def]
    import contextlib

    import databases
    from starlette.applications import Starlette
    from starlette.routing import Route

    from service.db import Database
    from service.migrations.schema import prepare_schema
    from service.responses import JSONResponse

    prepare_schema(url)
    db = databases.Database(url) if backend == "stock" else Database(url, min_size=2, max_size=10)

    async def one(request):  # type: ignore[no-untyped-def]
        row = await db.fetch_one("SELECT 1 AS one")
        return JSONResponse({"one": row[0]})

    @contextlib.asynccontextmanager
    async def lifespan(app):  # type: ignore[no-untyped-def]
        await db.connect()
        yield
        await db.disconnect()

    return Starlette(routes=[Route("/one", one)], lifespan=lifespan)


def serve(backend: str, url: str, port: int) -> None:
    import uvicorn

    uvicorn.run(build_app(backend, url), port=port, loop="uvloop", http="httptools", log_level="warning")


def measure(backend: str, seconds: int, connections: int, port: int) -> Run:
    from service.bench.load import wrk_load
    from service.bench.runner import server

    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{folder}/bench.db"
        args = [sys.executable, __file__, "serve", backend, url, str(port)]
        with server(args, dict(os.environ), f"http://127.0.0.1:{port}/one", ROOT):
            return wrk_load(f"http://127.0.0.1:{port}/one", None, seconds, connections)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        serve(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--port", type=int, default=8950)
    args = parser.parse_args()
    results = {name: measure(name, args.seconds, args.connections, args.port) for name in ("stock", "pooled")}
    print(f"GET /one (SELECT 1 via databases), wrk -t1 -c{args.connections} -d{args.seconds}s, one worker")
    for name, run in results.items():
        print(
            f"  {name:7s} {run.requests_per_second:9.0f} req/s   non-2xx: {run.non_2xx}  errors: {run.errors}"
        )
    pooled, stock = results["pooled"].requests_per_second, results["stock"].requests_per_second
    print(f"  pooled / stock: {pooled / stock:.2f}x")


if __name__ == "__main__":
    main()
