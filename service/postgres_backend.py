"""The stock `databases` asyncpg backend, with named statements sent as they were compiled at start-up.

asyncpg prepares and caches each distinct SQL text per connection, so a named statement costs one
round trip and no SQLAlchemy compile. Anything else (a plain string) takes the stock path.

Limits (`DatabaseLimits`): `statement_timeout` and `lock_timeout` are set on every connection as it
opens (no round trip per request); a wait for a pooled connection is bounded and, past
DB_POOL_MAX_WAITERS waiters, refused at once; a request that already spent part of its lock
budget waiting its turn (`service.limits.lock_deadline`) gives its statements only the rest.

Fair turns: a connection is borrowed in arrival order. asyncpg's pool queue is an asyncio.Queue,
and a task woken for a returned connection can find it taken by one that arrived after it (any
task that asks while the woken one waits to run); it then queues again at the back. Under
`GET /posts` at 32 connections on a pool of 10 that gave 1% of the requests 7 times the median
wait (p99 2.4 times the limit app's). An asyncio.Semaphore of the pool's size is taken first: it
hands a freed place to the longest waiter, and newcomers queue behind the waiters.

Plans: each connection keeps one generic plan per statement (`plan_cache_mode =
force_generic_plan`). PostgreSQL's own choice (`auto`) compares a generic plan's cost with the
custom plans': a `LIMIT $n` is costed at a tenth of the table, so every paginated list looked dearer
generic and was planned afresh on each call. Under `GET /posts` at 32 connections that planning was
nearly half of PostgreSQL's CPU (0.40-0.48 -> 0.21-0.27 ms a request) and, on a 2-core host, put the
p99 at 1.1-5 times the limit app's (after: 0.4-0.5 times). The service's statements are keyed
lookups and index-ordered pages, whose plan does not depend on the values; the few that do (reports
over a caller's date range) say `-- plan: per call` and are planned for their values inside a
transaction of their own. PostgreSQL 12 or newer (the setting's first release). Reports (`-- limit:
report`) run the same way, with REPORT_STATEMENT_TIMEOUT_MS as their limit in that transaction.

Behind a transaction-mode pooler (DB_STATEMENT_CACHE=0) a connection is not one server session:
asyncpg keeps no prepared statements, and the two timeouts cannot be startup parameters
(PgBouncer refuses them). There the server's limits come from the role's settings (checked at
start-up, see `server_limits`), and asyncpg's own timeout stops any statement at
DB_STATEMENT_TIMEOUT_MS from this side (a cancel request, which the pooler passes on).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import asyncpg
from databases.backends.postgres import PostgresBackend as StockPostgresBackend
from databases.backends.postgres import PostgresConnection as StockPostgresConnection
from sqlalchemy.sql import ClauseElement

from service.config import DatabaseLimits
from service.limits import (
    LOCK_TIMEOUT,
    POOL_TIMEOUT,
    REPORT_TIMEOUT,
    STATEMENT_TIMEOUT,
    LimitReached,
    WaitCounter,
    lock_deadline,
    seconds_left,
)
from service.queries import bound

T = TypeVar("T")
log = logging.getLogger("service")
POOL_CLOSE_SECONDS = 5.0  # at shutdown, after the drain: how long connections still out may take

# Transaction-scoped, so the session goes back to the pool as it came (see `_keep_session`).
_PLAN_FOR_THESE_VALUES = "SET LOCAL plan_cache_mode = force_custom_plan"


async def _keep_session(connection: Any) -> None:
    """Release without asyncpg's default reset (RESET ALL; UNLISTEN *; CLOSE ALL; unlock all).

    That reset is a round trip on every release. The service never leaves session state behind -
    no SET, LISTEN, session advisory locks or cursors outside a transaction - and asyncpg still
    rolls back an open transaction before calling this, so there is nothing to reset.
    """


def _affected_rows(status: str) -> int:
    # asyncpg returns the command tag: "UPDATE 3", "INSERT 0 1", "DELETE 0".
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


class PostgresBackend(StockPostgresBackend):
    def __init__(self, database_url: Any, **options: Any) -> None:
        self.limits: DatabaseLimits = options.pop("limits", None) or DatabaseLimits()
        self.waits = WaitCounter(self.limits.pool_max_waiters)
        self.behind_pooler = options.get("statement_cache_size") == 0
        server_settings = {"application_name": "purchase-feed-service"}
        if self.behind_pooler:
            # Unnamed statements there: each is planned for its values anyway.
            options.setdefault("command_timeout", self.limits.statement_timeout_ms / 1000)
        else:
            server_settings["plan_cache_mode"] = "force_generic_plan"
            # A generic plan costs `LIMIT $n` at a tenth of the table, which on a big table passes
            # jit_above_cost: GET /posts?limit=20 on a million posts spent 265 ms compiling and 1.5
            # ms running. Nothing the service runs on this path reads enough rows to gain from JIT.
            server_settings["jit"] = "off"
            server_settings["statement_timeout"] = str(self.limits.statement_timeout_ms)
            server_settings["lock_timeout"] = str(self.limits.lock_timeout_ms)
        options.setdefault("server_settings", server_settings)
        options.setdefault("reset", _keep_session)
        # Opening a connection (when the pool grows) counts against the same wait.
        options.setdefault("timeout", self.limits.pool_timeout_ms / 1000)
        super().__init__(database_url, **options)
        self.max_size = int(options.get("max_size", 10))
        self.turns = asyncio.Semaphore(self.max_size)

    @property
    def pool(self) -> Any:
        return self._pool

    async def connect(self) -> None:
        """The stock pool, or for a URL naming several hosts (`postgresql://u@h1:p1,h2:p2/db?
        target_session_attrs=read-write`) asyncpg's own reading of it, which tries the hosts in
        turn for one that has what the URL asks (the stock backend reads one host and port)."""
        url = str(self._database_url)
        if "," not in urlsplit(url).netloc:
            await super().connect()
            return
        self._pool = await asyncpg.create_pool(dsn=url, **self._get_connection_kwargs())

    def in_use(self) -> int:
        """Connections borrowed and not given back yet."""
        return self.max_size - self.turns._value

    async def disconnect(self) -> None:
        """Close the pool, waiting for connections in use at most POOL_CLOSE_SECONDS; then close
        what is left without waiting (asyncpg's own close waits for every connection for ever)."""
        pool, self._pool = self._pool, None
        assert pool is not None, "DatabaseBackend is not running"
        try:
            async with asyncio.timeout(POOL_CLOSE_SECONDS):
                await pool.close()
        except TimeoutError:
            left = self.in_use()
            pool.terminate()
            log.warning(
                "closing the database pool took over %s s: closed it anyway (connections still in use: %d)",
                POOL_CLOSE_SECONDS,
                left,
            )

    def connection(self) -> PostgresConnection:
        return PostgresConnection(self, self._dialect)


class PostgresConnection(StockPostgresConnection):
    _database: PostgresBackend

    async def acquire(self) -> None:
        assert self._connection is None, "Connection is already acquired"
        pool: Any = self._database._pool
        assert pool is not None, "DatabaseBackend is not running"
        turns = self._database.turns
        if turns.locked():  # every connection is out, or others wait already: queue, with a limit
            waits = self._database.waits
            waits.join()
            try:
                async with asyncio.timeout(self._database.limits.pool_timeout_ms / 1000):
                    await turns.acquire()
            except TimeoutError:
                raise LimitReached(POOL_TIMEOUT) from None
            finally:
                waits.leave()
        else:
            await turns.acquire()  # at once: no timer
        try:
            # A turn means a connection is in the pool (or may still be opened, within `timeout`).
            self._connection = await pool.acquire()
        except BaseException:
            turns.release()
            raise

    async def release(self) -> None:
        try:
            await super().release()
        finally:
            self._database.turns.release()

    async def _run_named(self, method: Callable[..., Awaitable[T]], named: Any) -> T:
        if named.statement.report:
            return await self._run_report(method, named)
        if named.statement.planned_per_call and not self._database.behind_pooler:
            # Inside an open transaction this is a savepoint, and the rest of that transaction is
            # planned per call too: SET LOCAL outlives a released savepoint.
            async with self.raw_connection.transaction():
                await self.raw_connection.execute(_PLAN_FOR_THESE_VALUES)
                return await self._run_within_limits(method, named)
        return await self._run_within_limits(method, named)

    async def _run_report(self, method: Callable[..., Awaitable[T]], named: Any) -> T:
        """A report, in a transaction of its own with REPORT_STATEMENT_TIMEOUT_MS as its limit on the
        server (SET LOCAL: a transaction-mode pooler keeps one server session for it, and the
        session goes back as it came) and on this side, planned for its values."""
        limit_ms = self._database.limits.report_statement_timeout_ms
        async with self.raw_connection.transaction():
            await self.raw_connection.execute(
                f"SET LOCAL statement_timeout = {int(limit_ms)}; {_PLAN_FOR_THESE_VALUES}"
            )
            try:
                return await method(named.statement.sql, *named.arguments, timeout=limit_ms / 1000)
            except (TimeoutError, asyncpg.QueryCanceledError):
                raise LimitReached(REPORT_TIMEOUT) from None

    async def _run_within_limits(self, method: Callable[..., Awaitable[T]], named: Any) -> T:
        """`method(sql, *arguments)`: given only the rest of the lock budget after a wait for a turn,
        and with asyncpg's own timeouts (that rest, or behind a pooler the statement limit) as 503s."""
        deadline = lock_deadline.get()
        try:
            if deadline is None:
                return await method(named.statement.sql, *named.arguments)
            return await method(named.statement.sql, *named.arguments, timeout=seconds_left(deadline))
        except TimeoutError:
            # asyncpg's own timeout (the lock budget's rest, or behind a pooler the statement
            # limit) ran out: it has cancelled the statement on the server, which rolled it back.
            raise LimitReached(STATEMENT_TIMEOUT if deadline is None else LOCK_TIMEOUT) from None

    async def fetch_all(self, query: ClauseElement) -> list[Any]:
        named = bound(query)
        if named is not None:
            return list(await self._run_named(self.raw_connection.fetch, named))
        return list(await super().fetch_all(query))

    async def fetch_one(self, query: ClauseElement) -> Any | None:
        named = bound(query)
        if named is not None:
            return await self._run_named(self.raw_connection.fetchrow, named)
        return await super().fetch_one(query)

    async def execute(self, query: ClauseElement) -> Any:
        """Run a statement; for a named one, return how many rows it changed."""
        named = bound(query)
        if named is not None:
            status = await self._run_named(self.raw_connection.execute, named)
            return _affected_rows(status)
        return await super().execute(query)

    async def execute_many(self, queries: list[ClauseElement]) -> None:
        named = [bound(query) for query in queries]
        if named and named[0] is not None:
            first = named[0].statement
            if all(query is not None and query.statement is first for query in named):
                await self.raw_connection.executemany(
                    first.sql, [query.arguments for query in named if query is not None]
                )
                return
        for query in queries:
            await self.execute(query)
