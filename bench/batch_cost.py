"""Where the time of one `POST /purchases/batch` of 1,000 rows goes, step by step, in-process.

The bench's batch request (1,000 rows, emails drawn from 5,000) is taken apart: parsing the JSON
body, validating it, the write (the statements, and the rest of it: parameters, BEGIN, COMMIT),
and the JSON answer; then the whole request through the ASGI app, as CPU and wall time. Each
figure is the median over the batches, in milliseconds. On PostgreSQL the statements' plans are
printed too (EXPLAIN ANALYZE, in a transaction that is rolled back).

Run it on two checkouts (`git worktree add /tmp/before <commit>`) to compare before and after:

    python bench/batch_cost.py --database postgresql
    python bench/batch_cost.py --database sqlite --batches 40
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

from service import purchases  # noqa: E402
from service.bench.runner import fresh_database  # noqa: E402
from service.bench.scenarios import Context, batch_request  # noqa: E402


def validator() -> Callable[[Any], Any]:
    """The route's own validation step (a fast path for valid batches, when this checkout has one)."""
    if hasattr(purchases, "load_batch"):
        return purchases.load_batch  # type: ignore[no-any-return]
    from service.validation import load

    return lambda body: load(purchases._batch_in, body)


@contextmanager
def timed_statements(db: Any, spent: dict[str, float]) -> Iterator[None]:
    """Time every statement the database runs, by name (the database's own methods, wrapped)."""
    methods = ("fetch_all", "fetch_one", "execute", "fetch_all_atomically")
    originals = {name: getattr(db, name) for name in methods if hasattr(db, name)}

    def wrap(name: str) -> Callable[..., Any]:
        async def run(query: Any, *values: Any) -> Any:
            # fetch_all_atomically takes a list of (statement, values): several sent at once.
            named = " + ".join(step[0].name for step in query) if isinstance(query, list) else query.name
            started = time.perf_counter()
            try:
                return await originals[name](query, *values)
            finally:
                spent[named] += time.perf_counter() - started

        return run

    for name in originals:
        setattr(db, name, wrap(name))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(db, name, original)


async def steps(url: str, bodies: list[bytes]) -> dict[str, list[float]]:
    from service.config import load_settings
    from service.db import open_database
    from service.migrations.schema import prepare_schema

    prepare_schema(url)
    db = open_database(replace(load_settings(environ={}, env_file=None), database_url=url))
    await db.connect()
    validate = validator()
    times: dict[str, list[float]] = defaultdict(list)
    try:
        for number, body in enumerate(bodies):
            started = time.perf_counter()
            parsed = orjson.loads(body)
            parsed_at = time.perf_counter()
            batch = validate(parsed)
            validated_at = time.perf_counter()
            spent: dict[str, float] = defaultdict(float)
            with timed_statements(db, spent):
                result = await purchases.record_batch(db, batch["purchases"], "bench:batch-cost")
            written_at = time.perf_counter()
            orjson.dumps(result)
            answered_at = time.perf_counter()
            if number < 3:
                continue  # warming up: connections, prepared statements, caches
            times["parse JSON"].append(parsed_at - started)
            times["validate"].append(validated_at - parsed_at)
            for name, seconds in spent.items():
                times[f"statement {name}"].append(seconds)
            times["rest of the write (parameters, BEGIN, COMMIT)"].append(
                written_at - validated_at - sum(spent.values())
            )
            times["JSON answer"].append(answered_at - written_at)
            times["all of the above"].append(answered_at - started)
        if url.startswith("postgres"):
            await explain(db, bodies[0], validate)
    finally:
        await db.disconnect()
    return times


async def explain(db: Any, body: bytes, validate: Callable[[Any], Any]) -> None:
    """EXPLAIN ANALYZE of each statement the write runs, rolled back."""
    from service.queries import Statement

    plans: list[tuple[str, list[str]]] = []
    originals = {name: getattr(db, name) for name in ("fetch_all", "fetch_one")}

    def explaining(name: str) -> Callable[..., Any]:
        async def run(query: Any, values: Any = None) -> Any:
            explained = Statement(query.name, "", f"EXPLAIN (ANALYZE, BUFFERS) {query.source}", query.dialect)
            plans.append((query.name, [row[0] for row in await originals["fetch_all"](explained, values)]))
            return await originals[name](query, values)

        return run

    async with db.transaction(force_rollback=True):
        for name in originals:
            setattr(db, name, explaining(name))
        try:
            await purchases.record_batch(db, validate(orjson.loads(body))["purchases"], "bench:explain")
        finally:
            for name, original in originals.items():
                setattr(db, name, original)
    for name, lines in plans:
        print(f"\n-- plan of {name}")
        print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--batches", type=int, default=30, help="batches to time (default 30)")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    )
    options = parser.parse_args()
    rng = random.Random(7)
    ctx = Context(api_key="", token="", customer_ids=[])
    bodies = [batch_request(rng, ctx)[2] or b"" for _ in range(options.batches + 3)]
    with fresh_database(options.database, options.postgres_url) as url:
        times = asyncio.run(steps(url, bodies))
    print(f"\n{options.database}: one batch of 1,000 rows, median of {options.batches} (ms)")
    for step, seconds in times.items():
        print(f"  {statistics.median(seconds) * 1000:8.2f}  {step}")


if __name__ == "__main__":
    main()
