"""The database: the async `databases` connection the routes use, and how its errors are classified.

The schema is set up before serving by `service.migrations` (a sync engine, Alembic).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import databases
import databases.core

from service.config import DatabaseLimits, Settings
from service.limits import WriterTurns
from service.metrics import observe_replicas, observe_statement_target
from service.queries import Queries, Statement, load_queries
from service.replicas import REPLICA_READS, Replica, ReplicaSet, parse_token, required_position
from service.sqlite_backend import SQLiteBackend, SQLiteConnection, TaskLock

PING_TIMEOUT_SECONDS = 2.0

T = TypeVar("T")


class Database(databases.Database):
    """`databases.Database` with our two backends and this dialect's named statements as `.sql`."""

    SUPPORTED_BACKENDS = {  # noqa: RUF012 - databases declares it a plain class attribute
        "sqlite": "service.sqlite_backend:SQLiteBackend",
        "postgresql": "service.postgres_backend:PostgresBackend",
    }

    def __init__(self, url: str, queries: Queries | None = None, **options: Any) -> None:
        limits = options.setdefault("limits", DatabaseLimits())
        super().__init__(url, **options)
        self.dialect = "sqlite" if url.startswith("sqlite") else "postgresql"
        self.sql = queries or load_queries(self.dialect)
        self.writer_turns = WriterTurns(limits.lock_timeout_ms / 1000)
        self.replicas: ReplicaSet | None = None
        # This worker's group commits by kind (service.group_commit), made by their domains.
        self.group_commits: dict[str, Any] = {}
        self.group_commit_max = limits.group_commit_max

    async def connect(self) -> None:
        await super().connect()
        for replica in self.replicas.replicas if self.replicas else ():
            await replica.backend.connect()  # no connection yet (min_size 0): a replica may be away

    async def disconnect(self) -> None:
        for replica in self.replicas.replicas if self.replicas else ():
            await replica.backend.disconnect()
        await super().disconnect()

    async def consistency_token(self) -> str:
        """The primary's WAL insert position now: after a commit, the token of that write."""
        row = await self.fetch_one(self.sql.wal_position, {})
        return str(row["position"])

    def writer_turn(self, key: Any) -> Any:
        """`async with db.writer_turn(key)`: one request per key at a time in this worker (WriterTurns)."""
        return self.writer_turns.turn(key)

    def pool_stats(self) -> tuple[int, int]:
        """(connections open, connections in use) right now."""
        if isinstance(self._backend, SQLiteBackend):
            return self._backend.pool.size, self._backend.pool.in_use
        pool = getattr(self._backend, "pool", None)
        if pool is None:
            return 0, 0
        # In use: connections handed out and not yet given back (the pool's turns), which counts
        # one the server has dropped as well, as asyncpg does while it waits for its release.
        return pool.get_size(), self._backend.in_use()

    # One statement on its own: the stock `Database.fetch_*` wraps every statement in a
    # `databases.Connection` (three asyncio locks, a per-task registry, a counter); when this task
    # holds no connection, borrowing one straight from the backend's pool does the same job.
    # CPU ms for the GET /posts statement on PostgreSQL: stock 0.074, this way 0.070, asyncpg's bare
    # pool 0.062.

    def _borrows(self, query: Any) -> bool:
        """True when `query` may run on a pooled connection of its own: a named statement, and no
        transaction or `connection()` open in this task (which the statement must then share)."""
        return (
            isinstance(query, Statement)
            and self._global_connection is None
            and asyncio.current_task() not in self._connection_map
        )

    async def _run_borrowed(self, run: Callable[[Any], Awaitable[T]], backend: Any = None) -> T:
        connection = (backend or self._backend).connection()
        await connection.acquire()
        try:
            return await run(connection)
        finally:
            await connection.release()

    async def _read_with_replicas(self, statement: Statement, run: Callable[[Any], Awaitable[T]]) -> T:
        """A borrowed read: on a replica when the statement may be a moment old and one is current
        enough for the request's consistency token; else (or if that replica fails) the primary."""
        assert self.replicas is not None
        if statement.name in REPLICA_READS:
            replica = self.replicas.choose(required_position.get())
            if replica is not None:
                try:
                    result = await self._run_borrowed(run, replica.backend)
                except Exception as exc:
                    if not is_database_unavailable(exc):
                        raise
                    self.replicas.set_aside(replica, exc)  # and the primary answers instead
                else:
                    self._served_by(replica.name)
                    return result
        self._served_by("primary")
        return await self._run_borrowed(run)

    def _served_by(self, target: str) -> None:
        observe_statement_target(target)

    async def _alone_on_sqlite(
        self, statement: Statement, values: dict[str, Any] | None
    ) -> tuple[list[Any], int]:
        """A named statement on its own on SQLite: a read on a read lane (or a lent connection when
        there are none), a write as a transaction of its own, under the write lock. Its rows, and
        how many rows it changed."""
        assert isinstance(self._backend, SQLiteBackend)
        pool = self._backend.pool
        bound = statement.values(**(values or {}))
        if statement.reads_only:
            if pool.lanes:
                return await pool.read_alone(bound), -1
            rows = await self._run_borrowed(lambda connection: connection.fetch_all(bound))
            return rows, -1
        async with pool.write_lock:
            return await self._run_borrowed(lambda connection: connection.write_alone(bound))

    async def fetch_all(self, query: Any, values: dict[str, Any] | None = None) -> list[Any]:
        if not self._borrows(query):
            return await super().fetch_all(query, values)
        if self.dialect == "sqlite":
            return (await self._alone_on_sqlite(query, values))[0]
        bound = query.values(**(values or {}))
        run: Callable[[Any], Awaitable[list[Any]]] = lambda connection: connection.fetch_all(bound)  # noqa: E731
        if self.replicas is None:  # the usual case: no extra hop on the hot path
            return await self._run_borrowed(run)
        return await self._read_with_replicas(query, run)

    async def fetch_one(self, query: Any, values: dict[str, Any] | None = None) -> Any:
        if not self._borrows(query):
            return await super().fetch_one(query, values)
        if self.dialect == "sqlite":
            rows = (await self._alone_on_sqlite(query, values))[0]
            return rows[0] if rows else None
        bound = query.values(**(values or {}))
        run: Callable[[Any], Awaitable[Any]] = lambda connection: connection.fetch_one(bound)  # noqa: E731
        if self.replicas is None:
            return await self._run_borrowed(run)
        return await self._read_with_replicas(query, run)

    async def execute(self, query: Any, values: dict[str, Any] | None = None) -> Any:
        if not self._borrows(query):
            return await super().execute(query, values)
        if self.dialect == "sqlite":
            return (await self._alone_on_sqlite(query, values))[1]
        bound = query.values(**(values or {}))
        return await self._run_borrowed(lambda connection: connection.execute(bound))

    async def fetch_all_atomically(self, steps: list[tuple[Statement, dict[str, Any]]]) -> list[list[Any]]:
        """Run named statements in one transaction (or inside the open one); each one's rows.

        On SQLite the whole transaction is a single hop to the connection's thread instead of one
        hop per statement plus BEGIN and COMMIT; elsewhere it is an ordinary transaction.
        """
        queries = [statement.values(**values) for statement, values in steps]
        if isinstance(self._backend, SQLiteBackend) and self._borrows(steps[0][0]):
            # SQLite writers queue for the write lock before they borrow a connection: a writer
            # waiting its turn must not sit on one of the few connections readers need meanwhile.
            async with self._backend.pool.write_lock:
                return await self._run_borrowed(
                    lambda connection: connection.fetch_all_atomically(queries, in_transaction=False)
                )
        async with self.connection() as connection:
            backend = connection._connection
            if isinstance(backend, SQLiteConnection):
                in_transaction = bool(connection._transaction_stack)
                # An open transaction holds the write lock already; otherwise take it now (second,
                # as this task already holds its connection).
                writing = contextlib.nullcontext() if in_transaction else self._backend.pool.write_lock
                async with connection._query_lock, writing:
                    return await backend.fetch_all_atomically(queries, in_transaction)
            async with _GivesItsConnectionBack(lambda: connection, force_rollback=False):
                return [list(await connection.fetch_all(query)) for query in queries]

    def transaction(self, *, force_rollback: bool = False, **options: Any) -> databases.core.Transaction:
        if isinstance(self._backend, SQLiteBackend):
            return _WriteLockFirst(self._backend.pool.write_lock, self.connection, force_rollback, **options)
        return _GivesItsConnectionBack(self.connection, force_rollback=force_rollback, **options)

    async def check_server_limits(self, limits: DatabaseLimits) -> str | None:
        """Behind a transaction-mode pooler: None when the server's statement and lock timeouts
        are the service's, else what to run so they are (the role's settings in this database)."""
        if not getattr(self._backend, "behind_pooler", False):
            return None
        found = {row["name"]: row["ms"] for row in await self.fetch_all(self.sql.server_limits, {})}
        wanted = {"statement_timeout": limits.statement_timeout_ms, "lock_timeout": limits.lock_timeout_ms}
        if found == wanted:
            return None
        settings = ", ".join(f"{name} = '{ms}ms'" for name, ms in wanted.items())
        return (
            f"behind a transaction-mode pooler the server's timeouts are {found}, not the service's"
            f" (asyncpg still stops statements at {limits.statement_timeout_ms} ms); to make them the"
            f" server's: ALTER ROLE <the service's role> IN DATABASE <its database> SET {settings}"
        )

    async def ping(self) -> None:
        """Raise unless the database answers a trivial query within PING_TIMEOUT_SECONDS."""
        async with asyncio.timeout(PING_TIMEOUT_SECONDS):
            await self.fetch_one(self.sql.ping, {})


class _GivesItsConnectionBack(databases.core.Transaction):
    """`databases`' transaction, except that a BEGIN, COMMIT or ROLLBACK that fails still gives
    the connection back. Stock, the connection is let go only after the statement succeeds: one
    that failed because the server went away (a failover: "connection is closed", "unexpected
    connection_lost()") held its pooled connection for ever, and closing the pool at shutdown
    then waited for it without end."""

    async def start(self) -> Any:
        connection = self._connection
        holders = connection._connection_counter
        try:
            return await super().start()
        except BaseException:
            if connection._connection_counter > holders:  # taken for this transaction: give it back
                await connection.__aexit__()
            raise

    async def commit(self) -> None:
        await self._ending(super().commit)

    async def rollback(self) -> None:
        await self._ending(super().rollback)

    async def _ending(self, end: Callable[[], Awaitable[None]]) -> None:
        connection = self._connection
        holders = connection._connection_counter
        try:
            await end()
        except BaseException:
            if connection._connection_counter == holders:  # failed before it let the connection go
                self._transaction = None
                await connection.__aexit__()
            raise


class _WriteLockFirst(_GivesItsConnectionBack):
    """A SQLite transaction that takes the process's write lock before its connection, as every
    SQLite writer here does: locks always in one order (no deadlock with a writer that holds the
    lock and waits for a connection), and no connection held while waiting for the lock."""

    def __init__(
        self,
        write_lock: TaskLock,
        connection: Callable[[], databases.core.Connection],
        force_rollback: bool,
        **options: Any,
    ) -> None:
        super().__init__(connection, force_rollback, **options)
        self._write_lock = write_lock

    async def start(self) -> _WriteLockFirst:
        await self._write_lock.acquire()
        try:
            await super().start()  # (a BEGIN that fails - the lock budget ran out - gives it back)
        except BaseException:
            self._write_lock.release()
            raise
        return self

    async def commit(self) -> None:
        try:
            await super().commit()
        finally:
            self._write_lock.release()

    async def rollback(self) -> None:
        try:
            await super().rollback()
        finally:
            self._write_lock.release()


def open_database(settings: Settings, queries: Queries | None = None, tracer: Any = None) -> Database:
    """The database the settings name; with a tracer, one that puts a span around each statement."""
    options: dict[str, Any] = {}
    if not settings.is_sqlite:
        options["statement_cache_size"] = settings.db_statement_cache
    make: Callable[..., Database] = Database
    if tracer is not None:
        from service.tracing import TracedDatabase  # the SDK is imported only when tracing is on

        make = functools.partial(TracedDatabase, tracer=tracer)
    db = make(
        settings.database_url,
        queries,
        min_size=settings.db_pool_min,
        max_size=settings.db_pool_max,
        limits=settings.database_limits,
        **options,
    )
    if settings.database_replica_urls:
        from service.postgres_backend import PostgresBackend

        replicas = [
            Replica(
                f"replica{n}",
                PostgresBackend(
                    url,
                    min_size=0,  # opened when first needed: start-up never waits for a replica
                    max_size=settings.db_pool_max,
                    limits=settings.database_limits,
                    **options,
                ),
            )
            for n, url in enumerate(settings.database_replica_urls, 1)
        ]
        db.replicas = ReplicaSet(replicas, settings.replica_max_lag_ms / 1000)
    return db


async def watch_replicas(db: Database, every_seconds: float = 0.2) -> None:
    """Each worker's look at its replicas: how far each has replayed, and whether it is usable."""
    assert db.replicas is not None
    while True:
        try:
            primary = parse_token((await db.consistency_token()).encode())
        except Exception:  # the primary is away: /ready says so; keep looking
            await asyncio.sleep(every_seconds)
            continue
        for replica in db.replicas.replicas:
            try:
                async with asyncio.timeout(1.0):
                    row = await db._run_borrowed(
                        lambda connection: connection.fetch_one(db.sql.replica_position.values()),
                        replica.backend,
                    )
            except Exception as exc:  # unreachable or refusing: skip it, look again next time
                db.replicas.set_aside(replica, exc)
            else:
                db.replicas.record(replica, row, primary)
        observe_replicas(db.replicas.replicas)
        await asyncio.sleep(every_seconds)


_UNAVAILABLE_POSTGRES = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.InternalClientError,  # with TargetServerAttributeNotMatched
    # A node that is not (or not yet) the primary: mid-failover, before the new leader's promotion
    # has finished, or the old one still taking connections as it steps down.
    asyncpg.exceptions.ReadOnlySQLTransactionError,
)


def is_database_unavailable(exc: BaseException) -> bool:
    """True when the failure is the database being out of reach, not a bug: a 503.

    (A limit reached - a lock held too long, a full pool - is told apart by `limits.limit_reached`.)
    """
    if isinstance(exc, (OSError, TimeoutError, *_UNAVAILABLE_POSTGRES)):
        return True
    if isinstance(exc, asyncpg.InterfaceError):  # a statement on a connection the server dropped
        return "connection is closed" in str(exc)
    if isinstance(exc, sqlite3.OperationalError):
        return "unable to open" in str(exc)
    return False


def is_unique_violation(exc: BaseException) -> bool:
    if isinstance(exc, asyncpg.UniqueViolationError):
        return True
    return isinstance(exc, sqlite3.IntegrityError) and getattr(exc, "sqlite_errorname", "") in (
        "SQLITE_CONSTRAINT_UNIQUE",
        "SQLITE_CONSTRAINT_PRIMARYKEY",
    )
