"""SQLite's connections: reads queued on a read lane, writes on the writer's own connection.

With the default pool (2) a SQLite database has one read lane and one connection for the writer
(whoever holds the process's write lock). These tests hold the lane's thread or the write lock on
purpose and look at who waits for whom, and how a queued read's wait is bounded.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import pytest

from service.config import Settings
from service.db import Database, open_database
from service.limits import OVERLOADED, POOL_TIMEOUT, LimitReached
from service.migrations.schema import prepare_schema
from service.queries import Queries, Statement, load_queries
from tests.conftest import api_key_row

COUNT_UP = (
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :upto)"
    " SELECT count(*) AS total FROM n"
)


def with_slow_read() -> Queries:
    statements = {statement.name: statement for statement in load_queries("sqlite")}
    statements["count_up"] = Statement(
        "count_up", "a read that takes as long as it is asked to", COUNT_UP, "sqlite"
    )
    return Queries(statements)


@asynccontextmanager
async def connected(settings: Settings, queries: Queries | None = None) -> AsyncIterator[Database]:
    prepare_schema(settings.schema_database_url)
    db = open_database(settings, queries)
    await db.connect()
    try:
        yield db
    finally:
        await db.disconnect()


def test_the_default_sqlite_pool_is_one_read_lane_beside_the_writers_connection(
    sqlite_settings: Settings,
) -> None:
    async def look() -> tuple[int, int, int, list[Any]]:
        async with connected(sqlite_settings) as db:
            pool = db._backend.pool  # type: ignore[attr-defined]
            lane_pragmas = await pool.lane().read(
                lambda conn: [
                    conn.execute(f"PRAGMA {name}").fetchone()[0]
                    for name in ("query_only", "journal_mode", "foreign_keys", "busy_timeout")
                ]
            )
            writer_query_only = (await db.fetch_one("PRAGMA query_only"))[0]
            return pool.size, len(pool.lanes), writer_query_only, lane_pragmas

    size, lanes, writer_query_only, lane_pragmas = asyncio.run(look())
    assert (size, lanes, writer_query_only) == (2, 1, 0)
    assert lane_pragmas == [1, "wal", 1, sqlite_settings.db_lock_timeout_ms]


def test_a_write_never_queues_behind_reads_nor_a_read_behind_a_write_transaction(
    sqlite_settings: Settings,
) -> None:
    """Two slow reads and ten quick ones queue on the lane: a write still goes through at once, on
    the writer's connection. Then a write transaction stays open: reads go on, and do not see what
    it has not committed. (Two connections lent in turn made that write wait for a slow read.)"""
    upto = 2_000_000

    async def run() -> dict[str, Any]:
        async with connected(sqlite_settings, with_slow_read()) as db:
            started = time.perf_counter()
            await db.fetch_one(db.sql.count_up, {"upto": upto})
            slow_seconds = time.perf_counter() - started

            slow = [asyncio.create_task(db.fetch_one(db.sql.count_up, {"upto": upto})) for _ in range(2)]
            await asyncio.sleep(0.02)
            queued = [asyncio.create_task(db.fetch_all(db.sql.list_api_keys, {})) for _ in range(10)]
            await asyncio.sleep(0.02)
            started = time.perf_counter()
            await db.fetch_one(db.sql.create_api_key, api_key_row(1))
            write_seconds = time.perf_counter() - started
            slow_still_running = not slow[0].done()
            await asyncio.gather(*slow, *queued)

            committed = asyncio.Event()
            inserted = asyncio.Event()

            async def open_transaction() -> None:
                async with db.transaction():
                    await db.fetch_one(db.sql.create_api_key, api_key_row(2))
                    inserted.set()
                    await committed.wait()

            writer = asyncio.create_task(open_transaction())
            await inserted.wait()
            started = time.perf_counter()
            seen_during = len(await db.fetch_all(db.sql.list_api_keys, {}))
            read_seconds = time.perf_counter() - started
            committed.set()
            await writer
            seen_after = len(await db.fetch_all(db.sql.list_api_keys, {}))
        return {
            "slow": slow_seconds,
            "write": write_seconds,
            "slow_still_running": slow_still_running,
            "read": read_seconds,
            "seen": (seen_during, seen_after),
        }

    result = asyncio.run(run())
    assert result["slow"] > 0.3, "the slow read must be slow for this test to mean anything"
    assert result["slow_still_running"]
    assert result["write"] < result["slow"] / 3
    assert result["read"] < 0.2
    assert result["seen"] == (1, 2)


def test_a_queued_read_is_given_up_at_the_wait_limit_or_shed_past_the_queue_and_never_runs(
    sqlite_settings: Settings,
) -> None:
    """The lane's thread is held; three reads queue (one of them then cancelled by its caller) and
    a fourth is refused at once (DB_POOL_MAX_WAITERS=3); the two left get the pool's 503 at its
    wait limit. None of the three ever runs, and the lane serves the next read as usual. Until its
    thread is done with them, the lane counts them and the held read whose caller went away: a
    read sent meanwhile waits behind them, so it gets a wait limit too."""
    wait_ms = 300
    settings = replace(sqlite_settings, db_pool_timeout_ms=wait_ms, db_pool_max_waiters=3)
    ran: list[str] = []

    def work(name: str, hold: threading.Event | None = None) -> Callable[[sqlite3.Connection], str]:
        def run(conn: sqlite3.Connection) -> str:
            if hold is not None:
                hold.wait(5)
            ran.append(name)
            return name

        return run

    async def timed(read: Any) -> tuple[str, float]:
        started = time.perf_counter()
        try:
            return await read, time.perf_counter() - started
        except LimitReached as exc:
            return exc.reason, time.perf_counter() - started

    async def run() -> dict[str, Any]:
        async with connected(settings) as db:
            lane = db._backend.pool.lane()  # type: ignore[attr-defined]
            hold = threading.Event()
            holder = asyncio.create_task(lane.read(work("holder", hold)))
            await asyncio.sleep(0.05)
            waiting = [asyncio.create_task(timed(lane.read(work(f"queued{n}")))) for n in range(3)]
            await asyncio.sleep(0.05)
            shed = await timed(lane.read(work("shed")))
            waiting[2].cancel()
            outcomes = await asyncio.gather(*waiting[:2])
            holder.cancel()  # its read runs on; the lane still counts it and the three given up
            await asyncio.sleep(0.01)
            still_counted = lane.queued
            hold.set()
            after = await lane.read(work("after"))
            return {
                "shed": shed,
                "outcomes": outcomes,
                "after": after,
                "still_counted": still_counted,
                "queued": lane.queued,
                "waiting": db._backend.pool.waits.waiting,  # type: ignore[attr-defined]
            }

    result = asyncio.run(run())
    reason, seconds = result["shed"]
    assert reason == OVERLOADED and seconds < 0.05
    for reason, seconds in result["outcomes"]:
        assert reason == POOL_TIMEOUT
        assert wait_ms / 1000 * 0.9 < seconds < wait_ms / 1000 + 0.5
    assert result["after"] == "after"
    assert result["still_counted"] == 4
    assert ran == ["holder", "after"]
    assert (result["queued"], result["waiting"]) == (0, 0)


def test_a_write_sent_to_a_read_lane_fails_at_once(sqlite_settings: Settings) -> None:
    async def write_on_the_lane() -> None:
        async with connected(sqlite_settings) as db:
            await db._backend.pool.lane().read(  # type: ignore[attr-defined]
                lambda conn: conn.execute("DELETE FROM api_keys").fetchall()
            )

    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        asyncio.run(write_on_the_lane())


def test_reads_and_writes_are_told_apart_as_sqlite_itself_tells_them(sqlite_settings: Settings) -> None:
    """Each named statement's `reads_only` against SQLite's own plan: a statement writes when its
    plan opens a write transaction (the Transaction opcode's P2 is non-zero)."""
    prepare_schema(sqlite_settings.schema_database_url)
    conn = sqlite3.connect(sqlite_settings.database_url.split(":///", 1)[1])
    try:
        for statement in load_queries("sqlite"):
            if "_ddl_" in statement.name:
                continue  # the triggers' DDL is run by the schema step, never served (and exists here)
            if "limit_app" in statement.name:
                continue  # the bench's, on the limit app's own tables (not in this schema)
            unbound = dict.fromkeys(statement.parameters)
            plan = conn.execute(f"EXPLAIN {statement.sql}", unbound).fetchall()
            writes = any(step[1] == "Transaction" and step[3] != 0 for step in plan)
            assert statement.reads_only is not writes, statement.name
    finally:
        conn.close()
