"""The schema set-up, the connections behind `databases`, and the named statements."""

from __future__ import annotations

import asyncio
import gc
import os
import sqlite3
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from starlette.testclient import TestClient

from service import app as app_module
from service.app import SWITCH_INTERVAL_SECONDS, create_app
from service.config import Settings, load_settings
from service.db import open_database
from service.migrations.schema import prepare_schema
from service.queries import load_queries, parse_statements, sql_directory
from service.reports import whole_days
from service.sqlite_backend import AUTOCHECKPOINT_BACKSTOP_PAGES, CACHE_KIB, CHECKPOINT_INTERVAL_SECONDS
from service.tables import metadata
from service.timestamps import utc_now
from tests.conftest import api_key_row


def test_every_foreign_key_has_an_index() -> None:
    for table in metadata.sorted_tables:
        led_by = {tuple(col.name for col in index.columns)[:1] for index in table.indexes}
        led_by |= {tuple(col.name for col in table.primary_key.columns)[:1]}
        led_by |= {
            tuple(col.name for col in constraint.columns)[:1]
            for constraint in table.constraints
            if constraint.__class__.__name__ == "UniqueConstraint"
        }
        for fk in table.foreign_key_constraints:
            first = (fk.columns.values()[0].name,)
            assert first in led_by, f"{table.name}.{first[0]} references another table but has no index"


# Statements that list rows in an order; their ORDER BY must be served by an index, not a sort.
# (The feed is the one exception by nature: it merges the index ranges of several authors.)
SORTED_LISTS = [
    "list_posts",
    "list_posts_of_user",
    "list_comments",
    "list_followers",
    "list_following",
    "list_live_sessions",
    "list_api_keys",
    "list_customers",
    "list_purchases",
    "list_purchases_of_customer",
    "list_purchases_of_item",
    "list_purchases_of_customer_and_item",
]


@pytest.mark.parametrize("name", SORTED_LISTS)
def test_sorted_lists_are_read_in_index_order(name: str, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'plan.db'}"
    prepare_schema(url)
    statement = getattr(load_queries("sqlite"), name)
    with sqlite3.connect(tmp_path / "plan.db") as conn:
        plan = conn.execute(
            f"EXPLAIN QUERY PLAN {statement.sql}", dict.fromkeys(statement.parameters)
        ).fetchall()
    details = " | ".join(str(row[-1]) for row in plan)
    assert "TEMP B-TREE FOR ORDER BY" not in details, details


def test_sqlite_connections_are_set_up_once_and_kept(sqlite_settings: Settings) -> None:
    settings = sqlite_settings
    opened = 0
    real_connect = aiosqlite.connect

    def counting_connect(*args: Any, **kwargs: Any) -> Any:
        nonlocal opened
        opened += 1
        return real_connect(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(aiosqlite, "connect", counting_connect)
        with TestClient(create_app(settings)) as client:
            for _ in range(50):
                assert client.get("/ready").status_code == 200
    assert opened == settings.db_pool_min  # not one per request, as the stock backend does


def test_sqlite_connections_use_wal_foreign_keys_a_busy_timeout_and_a_larger_cache(
    sqlite_settings: Settings,
) -> None:
    settings = sqlite_settings

    async def pragmas() -> tuple[Any, ...]:
        prepare_schema(settings.schema_database_url)
        db = open_database(settings)
        await db.connect()
        try:
            values = []
            for name in ("journal_mode", "foreign_keys", "busy_timeout", "cache_size"):
                row = await db.fetch_one(f"PRAGMA {name}")
                assert row is not None
                values.append(row[0])
            return tuple(values)
        finally:
            await db.disconnect()

    assert asyncio.run(pragmas()) == ("wal", 1, settings.db_lock_timeout_ms, -CACHE_KIB)
    assert CACHE_KIB > 2000  # SQLite's default: a 1,000-row batch spilled out of it


def test_sqlite_checkpoints_run_beside_the_writers(sqlite_settings: Settings) -> None:
    """Committed pages reach the database file within a second or so, though they are far fewer
    than the automatic checkpoint's 10,000 pages: the Checkpointer copied them, not a COMMIT."""
    settings = sqlite_settings
    path = settings.database_url.split(":///", 1)[1]

    async def write_then_watch() -> tuple[int, int, list[int]]:
        prepare_schema(settings.schema_database_url)
        db = open_database(settings)
        await db.connect()
        try:
            assert (await db.fetch_one("PRAGMA wal_autocheckpoint"))[0] == AUTOCHECKPOINT_BACKSTOP_PAGES
            await asyncio.sleep(CHECKPOINT_INTERVAL_SECONDS * 2)  # the schema's pages are in by now
            before = os.stat(path).st_size
            # One commit: 200 separate ones outlasted a checkpoint interval on a busy host, and the
            # Checkpointer (rightly) copied the first of them while the rest were being written.
            async with db.transaction():
                for n in range(200):
                    await db.execute(
                        "INSERT INTO customers (email, name, created_at, updated_at) VALUES (:e, :n, :t, :t)",
                        {"e": f"c{n}@example.com", "n": "x" * 500, "t": utc_now()},
                    )
            right_after = os.stat(path).st_size
            sizes = []
            for _ in range(10):
                await asyncio.sleep(CHECKPOINT_INTERVAL_SECONDS / 2)
                sizes.append(os.stat(path).st_size)  # a cheap syscall: no thread needed
            return before, right_after, sizes
        finally:
            await db.disconnect()

    before, right_after, sizes = asyncio.run(write_then_watch())
    assert right_after == before  # committed to the WAL only
    assert sizes[-1] >= before + 200 * 500  # then copied into the file, off the write path


def test_a_connection_given_back_goes_to_the_longest_waiter(settings: Settings) -> None:
    """One connection, held; three tasks queue for it; the moment it is given back (just before
    the longest waiter is woken) a newcomer asks. The waiters get it in the order they came, the
    newcomer last: asyncpg's own queue gave it to the newcomer, which could starve a waiter."""
    one_connection = replace(settings, db_pool_min=1, db_pool_max=1)

    async def take_turns() -> list[str]:
        prepare_schema(one_connection.schema_database_url)
        db = open_database(one_connection)
        await db.connect()
        order: list[str] = []

        async def borrow(name: str) -> None:
            async with db.connection() as connection:
                order.append(name)
                await connection.fetch_one("SELECT 1")

        newcomer: list[asyncio.Task[None]] = []
        try:
            async with db.connection() as held:
                waiters = [asyncio.create_task(borrow(f"W{n}")) for n in range(1, 4)]
                await asyncio.sleep(0.05)  # all three queue
                queue = getattr(getattr(db._backend, "pool", None), "_queue", None)  # asyncpg's
                if queue is not None:
                    put = queue.put_nowait

                    def newcomer_then_put(item: Any) -> None:
                        queue.put_nowait = put  # once
                        newcomer.append(asyncio.create_task(borrow("newcomer")))  # before the woken
                        put(item)

                    queue.put_nowait = newcomer_then_put
                else:  # SQLite's pool: a newcomer just before the connection goes back
                    newcomer.append(asyncio.create_task(borrow("newcomer")))
                await held.fetch_one("SELECT 1")
            await asyncio.gather(*waiters)
            await asyncio.gather(*newcomer)
        finally:
            await db.disconnect()
        return order

    assert asyncio.run(take_turns()) == ["W1", "W2", "W3", "newcomer"]


def test_concurrent_transactions_all_commit(settings: Settings) -> None:
    """Forty writers at once: none is refused for a lock, none is lost."""

    async def write_concurrently() -> int:
        prepare_schema(settings.schema_database_url)
        db = open_database(replace(settings, db_pool_max=5))
        await db.connect()

        async def one(n: int) -> None:
            async with db.transaction():
                await db.execute(db.sql.create_api_key, api_key_row(n))
                await asyncio.sleep(0)  # hand the loop to the others mid-transaction

        try:
            await asyncio.gather(*(one(n) for n in range(40)))
            return len(await db.fetch_all(db.sql.list_api_keys, {}))
        finally:
            await db.disconnect()

    assert asyncio.run(write_concurrently()) == 40


def test_a_failed_transaction_leaves_nothing_behind(settings: Settings) -> None:
    async def fail_half_way() -> int:
        prepare_schema(settings.schema_database_url)
        db = open_database(settings)
        await db.connect()
        row = api_key_row(0, name="a")
        try:
            with pytest.raises(Exception):  # noqa: B017 - either driver's unique violation
                async with db.transaction():
                    await db.execute(db.sql.create_api_key, row)
                    await db.execute(db.sql.create_api_key, {**row, "name": "b"})  # same hash
            return len(await db.fetch_all(db.sql.list_api_keys, {}))
        finally:
            await db.disconnect()

    assert asyncio.run(fail_half_way()) == 0


@pytest.mark.parametrize("ending", ["commit", "rollback"])
def test_a_transaction_whose_end_fails_still_gives_its_connection_back(
    settings: Settings, ending: str
) -> None:
    """A COMMIT or ROLLBACK that fails (the server went away mid-failover) must not keep the pooled
    connection: stock `databases` let it go only after the statement succeeded, and closing the
    pool at shutdown then waited for it for ever."""

    async def end_fails() -> tuple[int, float]:
        prepare_schema(settings.schema_database_url)
        db = open_database(settings)
        await db.connect()

        async def server_gone(*args: Any, **kwargs: Any) -> None:
            raise ConnectionError("unexpected connection_lost() call")

        with pytest.raises(ConnectionError):
            async with db.transaction() as transaction:
                await db.fetch_all(db.sql.list_api_keys, {})
                setattr(transaction._transaction, ending, server_gone)
                if ending == "rollback":
                    raise ConnectionError("the statement failed; the rollback fails too")
        in_use = db.pool_stats()[1]
        started = asyncio.get_running_loop().time()
        await db.disconnect()
        return in_use, asyncio.get_running_loop().time() - started

    in_use, closing_seconds = asyncio.run(end_fails())
    assert in_use == 0
    assert closing_seconds < 2


def test_a_transaction_whose_server_session_is_killed_is_a_503_and_gives_its_connection_back(
    settings: Settings,
) -> None:
    """The real thing on PostgreSQL: the transaction's server process terminated before COMMIT."""
    import psycopg

    if settings.is_sqlite:
        pytest.skip("SQLite runs in the process: there is no server session to terminate")
    postgres_settings = settings

    from service.db import is_database_unavailable

    async def killed() -> tuple[BaseException, int]:
        prepare_schema(postgres_settings.schema_database_url)
        db = open_database(postgres_settings)
        await db.connect()
        try:
            with pytest.raises(Exception) as failure:
                async with db.transaction():
                    pid = (await db.fetch_one("SELECT pg_backend_pid() AS pid"))["pid"]
                    with psycopg.connect(postgres_settings.database_url, autocommit=True) as admin:
                        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
                    await asyncio.sleep(0.2)
            return failure.value, db.pool_stats()[1]
        finally:
            async with asyncio.timeout(3):
                await db.disconnect()

    error, in_use = asyncio.run(killed())
    assert is_database_unavailable(error), repr(error)
    assert in_use == 0


def test_closing_the_pool_does_not_wait_for_ever_for_a_connection_never_given_back(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever holds a connection at shutdown (a bug on some error path), SIGTERM ends in an exit:
    PostgreSQL's pool waits POOL_CLOSE_SECONDS, then closes what is left and says so; SQLite's
    closes its idle connections and never waits."""
    from service import postgres_backend

    monkeypatch.setattr(postgres_backend, "POOL_CLOSE_SECONDS", 0.5)

    async def leak_then_close() -> float:
        prepare_schema(settings.schema_database_url)
        db = open_database(settings)
        await db.connect()
        leaked = db._backend.connection()
        await leaked.acquire()  # and never released
        started = asyncio.get_running_loop().time()
        await db.disconnect()
        closing_seconds = asyncio.get_running_loop().time() - started
        if settings.is_sqlite:  # (its thread, which the pool no longer knows of)
            await leaked._connection.close()
        return closing_seconds

    closing_seconds = asyncio.run(leak_then_close())
    assert closing_seconds < 2
    if not settings.is_sqlite:
        assert "closed it anyway (connections still in use: 1)" in caplog.text


def test_named_statements_compile_for_each_dialect() -> None:
    sqlite = load_queries("sqlite").create_api_key
    postgres = load_queries("postgresql").create_api_key
    assert (
        sqlite.parameters == postgres.parameters == ("name", "key_hash", "key_prefix", "scopes", "created_at")
    )
    assert ":name" in sqlite.sql and "$1" in postgres.sql and ":name" not in postgres.sql


def test_every_statement_has_a_docstring() -> None:
    for path in sorted(sql_directory().glob("*.sql")):
        for statement in parse_statements(path.read_text()):
            assert statement.doc, f"{path.name}: {statement.name} needs a comment line saying what it does"


def test_reports_alone_are_planned_per_call() -> None:
    queries = load_queries("postgresql")
    assert {statement.name for statement in queries if statement.planned_per_call} == {
        "sales_by_day",
        "sales_by_item",
        "sales_by_customer",
    }
    assert "plan:" not in queries.sales_by_day.doc and queries.sales_by_day.doc


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_the_sales_reports_alone_run_under_the_report_limit(dialect: str) -> None:
    queries = load_queries(dialect)
    assert {statement.name for statement in queries if statement.report} == {
        "sales_by_day",
        "sales_by_item",
        "sales_by_customer",
    }
    assert "limit:" not in queries.sales_by_day.doc and queries.sales_by_day.doc


def test_missing_parameters_are_named() -> None:
    with pytest.raises(KeyError, match=":key_hash"):
        load_queries("sqlite").find_live_api_key.values()


def test_statements_run_atomically_commit_together_or_not_at_all(settings: Settings) -> None:
    async def run() -> tuple[int, int]:
        prepare_schema(settings.schema_database_url)
        db = open_database(settings)
        await db.connect()
        row = api_key_row(0, name="a")
        try:
            done = await db.fetch_all_atomically(
                [
                    (db.sql.create_api_key, row),
                    (db.sql.create_api_key, {**row, "name": "b", "key_hash": "i" * 64}),
                ]
            )
            assert [[r["name"] for r in rows] for rows in done] == [["a"], ["b"]]
            with pytest.raises(Exception):  # noqa: B017 - either driver's unique violation
                await db.fetch_all_atomically(
                    [
                        (db.sql.create_api_key, {**row, "name": "c", "key_hash": "j" * 64}),
                        (db.sql.create_api_key, row),
                    ]
                )
            after_failure = len(await db.fetch_all(db.sql.list_api_keys, {}))
            # Inside an open transaction they join it, and its rollback takes them back too.
            with pytest.raises(RuntimeError):
                async with db.transaction():
                    await db.fetch_all_atomically(
                        [(db.sql.create_api_key, {**row, "name": "d", "key_hash": "k" * 64})]
                    )
                    raise RuntimeError("abandon")
            return after_failure, len(await db.fetch_all(db.sql.list_api_keys, {}))
        finally:
            await db.disconnect()

    assert asyncio.run(run()) == (2, 2)


def test_writers_readers_and_transactions_at_once_never_deadlock(settings: Settings) -> None:
    # SQLite writers take the write lock before a connection (so that none waits for the lock while
    # holding one of the two connections readers need). Everything that writes must keep that
    # order, or a writer holding the lock waits for a connection held by a transaction waiting
    # for the lock. Here all three kinds run at once on a pool of two connections.
    async def run() -> int:
        prepare_schema(settings.schema_database_url)
        db = open_database(replace(settings, db_pool_min=1, db_pool_max=2))
        await db.connect()
        counter = iter(range(10_000))

        def key_row() -> dict[str, Any]:
            return api_key_row(next(counter))

        async def single_writer() -> None:
            await db.fetch_all_atomically([(db.sql.create_api_key, key_row())])

        async def transaction() -> None:
            async with db.transaction():
                await db.fetch_one(db.sql.create_api_key, key_row())
                await asyncio.sleep(0)  # let the others pile up while this one holds its connection
                await db.fetch_all_atomically([(db.sql.create_api_key, key_row())])

        async def reader() -> None:
            await db.fetch_all(db.sql.list_api_keys, {})

        try:
            work = [kind() for _ in range(20) for kind in (single_writer, transaction, reader)]
            await asyncio.wait_for(asyncio.gather(*work), timeout=30)
            return len(await db.fetch_all(db.sql.list_api_keys, {}))
        finally:
            await db.disconnect()

    assert asyncio.run(run()) == 20 + 20 * 2


def test_postgres_keeps_one_generic_plan_per_statement_and_plans_reports_per_call(
    postgres_database: str,
) -> None:
    """A paginated list (`LIMIT $n`) is never re-planned on PostgreSQL's `auto` cost comparison,
    which costs such a plan at a tenth of the table and so planned it afresh on every call; a
    report over a caller's range is planned for its values each time, in a transaction or not."""
    one_connection = replace(
        load_settings(environ={}, env_file=None), database_url=postgres_database, db_pool_min=1, db_pool_max=1
    )
    far_past, now = utc_now().replace(year=2000), utc_now()
    page = {"before_at": now, "before_id": 2**63 - 1, "limit": 21}
    report = {"since": far_past, "until": now, "limit": 10}
    report["days_from"], report["days_until"] = whole_days(far_past, now)

    async def plans_made() -> dict[str, tuple[int, int]]:
        prepare_schema(postgres_database)
        db = open_database(one_connection)
        await db.connect()
        try:
            for _ in range(8):
                await db.fetch_all(db.sql.list_posts, page)
                await db.fetch_all(db.sql.sales_by_day, report)
            async with db.transaction():  # inside an open transaction: a savepoint of its own
                await db.fetch_all(db.sql.list_posts, page)
                await db.fetch_all(db.sql.sales_by_day, report)
            rows = await db.fetch_all(
                "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements"
            )
            by_sql = {row[0]: (row[1], row[2]) for row in rows}
            return {name: by_sql[getattr(db.sql, name).sql] for name in ("list_posts", "sales_by_day")}
        finally:
            await db.disconnect()

    assert asyncio.run(plans_made()) == {"list_posts": (9, 0), "sales_by_day": (0, 9)}


def test_a_served_worker_freezes_start_up_and_hands_the_gil_over_sooner(
    sqlite_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `serve_app` does to each uvicorn worker's interpreter (README: How it talks to the
    database): start-up's objects frozen out of the collector, young collections every 20,000
    allocations, and a 1 ms GIL switch interval for the SQLite connection threads."""
    monkeypatch.setenv("DATABASE_URL", sqlite_settings.database_url)
    monkeypatch.setenv("SECRET_KEY", sqlite_settings.secret_key)
    monkeypatch.setattr(app_module, "configure_logging", lambda *_: None)  # the suite's own stays
    thresholds, interval = gc.get_threshold(), sys.getswitchinterval()
    try:
        app_module.serve_app()
        assert gc.get_freeze_count() > 10_000
        assert gc.get_threshold() == (20_000, 10, 10)
        assert sys.getswitchinterval() == SWITCH_INTERVAL_SECONDS == 0.001
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
        sys.setswitchinterval(interval)
