"""What the start-up schema step costs: today's (revision read + Alembic's drift comparison) against
the step before migrations (create_all, which only looked for missing tables), on a database at head.

    python bench/schema_startup.py [--postgres-url postgresql://postgres@127.0.0.1:5432/test]

Prints the median of N runs of each, in ms, and the one-off costs: creating a new database, and
adopting and migrating one made before migrations.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
from sqlalchemy import create_engine

from service.migrations.schema import prepare_schema, sync_url
from service.tables import metadata

V1_SCHEMA = Path(__file__).resolve().parent.parent / "tests" / "schema_v1"


def median_ms(work: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        work()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def create_all_only(url: str) -> None:
    """The step before migrations: a sync engine, create_all (checkfirst), dispose."""
    engine = create_engine(sync_url(url))
    try:
        with engine.begin() as conn:
            metadata.create_all(conn)
    finally:
        engine.dispose()


def load_v1(url: str) -> None:
    dialect = "sqlite" if url.startswith("sqlite") else "postgresql"
    engine = create_engine(sync_url(url))
    try:
        with engine.begin() as conn:
            for statement in (V1_SCHEMA / f"{dialect}.sql").read_text().split(";"):
                if statement.strip():
                    conn.exec_driver_sql(statement)
    finally:
        engine.dispose()


def measure(make_url: Callable[[], str], label: str, runs: int) -> None:
    fresh = make_url()
    started = time.perf_counter()
    prepare_schema(fresh)
    created = (time.perf_counter() - started) * 1000
    old = make_url()
    load_v1(old)
    started = time.perf_counter()
    prepare_schema(old)
    migrated = (time.perf_counter() - started) * 1000
    check = median_ms(lambda: prepare_schema(fresh), runs)
    before = median_ms(lambda: create_all_only(fresh), runs)
    print(
        f"{label}: at head {check:.0f} ms (create_all only: {before:.0f} ms, so +{check - before:.0f} ms); "
        f"new database {created:.0f} ms; adopt + migrate 0001 -> head {migrated:.0f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        counter = iter(range(100))
        measure(lambda: f"sqlite:///{folder}/{next(counter)}.db", "SQLite", args.runs)

    made: list[str] = []

    def new_postgres() -> str:
        name = f"bench_schema_{secrets.token_hex(3)}"
        with psycopg.connect(args.postgres_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        made.append(name)
        return f"{args.postgres_url.rsplit('/', 1)[0]}/{name}"

    try:
        measure(new_postgres, "PostgreSQL", args.runs)
    finally:
        with psycopg.connect(args.postgres_url, autocommit=True) as conn:
            for name in made:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
