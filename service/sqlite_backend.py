"""A `databases` backend for SQLite that keeps its connections open.

The stock backend opens a fresh aiosqlite connection - a new thread and a new file handle - for
every acquire, which is every request. This one keeps a few long-lived connections, each set up
once (WAL, foreign keys, busy timeout), and runs each statement in one hop to the connection's
thread: one connection for the writer, and read lanes (`ReadLane`) on which reads queue one after
another (`SQLitePool`).

Writers: every transaction starts with BEGIN IMMEDIATE, so it holds SQLite's write lock from its
first statement and never fails half-way on a lock upgrade; a write on its own is a transaction of
its own. An asyncio lock queues this process's writers on the event loop; the busy timeout covers
writers in other processes. Writers take that lock before they take a connection
(`Database.transaction`, `Database.fetch_all_atomically`, a connection of one's own): one order, so
no deadlock, and a writer waiting its turn holds no connection (with it held first, half posts and
half purchases went from 14% below its parts' pace to 6% above).

Checkpoints: SQLite copies its write-ahead log back into the database file in the COMMIT that
takes the log past 1,000 pages, while that writer holds the write lock and every writer queued
behind it waits (29% of the connection thread's time under batches of 1,000 purchases). Here a
`Checkpointer` does it beside them, from a thread and a connection of its own, twice a second, in
PASSIVE mode (it never waits for readers or writers); the automatic checkpoint stays as a backstop
at 10,000 pages, for when it falls behind.

Limits (`DatabaseLimits`): a writer's whole wait for the write lock - its place in this process's
queue, then the busy timeout for other processes, set to what is left before BEGIN IMMEDIATE - is
DB_LOCK_TIMEOUT_MS, however many writers queue ahead of it; a wait for a connection is
DB_POOL_TIMEOUT_MS; a statement that runs past DB_STATEMENT_TIMEOUT_MS is interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import uuid
from collections import deque
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping, Sequence
from datetime import datetime
from time import monotonic
from typing import Any, TypeVar

import aiosqlite
from databases.core import DatabaseURL
from databases.interfaces import ConnectionBackend, DatabaseBackend, TransactionBackend
from sqlalchemy.dialects.sqlite import pysqlite
from sqlalchemy.sql import ClauseElement

from service.config import DatabaseLimits
from service.limits import (
    LOCK_TIMEOUT,
    POOL_TIMEOUT,
    REPORT_TIMEOUT,
    LimitReached,
    WaitCounter,
    lock_deadline,
    seconds_left,
)
from service.queries import BoundStatement, bound
from service.timestamps import to_text

T = TypeVar("T")
log = logging.getLogger("service.sqlite")


def sqlite_path(url: str) -> str:
    """`sqlite:///./data/x.db` -> `./data/x.db`; `sqlite:////tmp/x.db` -> `/tmp/x.db`."""
    return url.split(":///", 1)[1].split("?", 1)[0]


def _adapt(arguments: dict[str, Any]) -> dict[str, Any]:
    # SQLite has no timestamp type: store the same text the API shows.
    for key, value in arguments.items():
        if isinstance(value, datetime):
            arguments = {**arguments, key: to_text(value)}
    return arguments


class TaskLock:
    """An asyncio lock that the task holding it may take again (each take needs its release).

    SQLite's write lock in this process: writers take it before they borrow a connection; a
    transaction opened inside another one takes it again on the same task. A task waits for it at
    most its lock budget; `deadline` is when the holder's budget ends (its busy timeout is the rest).
    """

    def __init__(self, budget_seconds: float, waits: WaitCounter) -> None:
        self._lock = asyncio.Lock()
        self._owner: asyncio.Task[Any] | None = None
        self._depth = 0
        self.budget = budget_seconds
        self.waits = waits
        self.deadline = 0.0

    async def acquire(self) -> None:
        task = asyncio.current_task()
        if self._owner is not None and self._owner is task:
            self._depth += 1
            return
        deadline = lock_deadline.get() or monotonic() + self.budget
        if self._lock.locked():
            self.waits.join()
            try:
                async with asyncio.timeout(seconds_left(deadline)):
                    await self._lock.acquire()
            except TimeoutError:
                raise LimitReached(LOCK_TIMEOUT) from None
            finally:
                self.waits.leave()
        else:
            await self._lock.acquire()
        self._owner, self._depth, self.deadline = task, 1, deadline

    def release(self) -> None:
        self._depth -= 1
        if self._depth == 0:
            self._owner = None
            self._lock.release()

    def held_here(self) -> bool:
        return self._owner is not None and self._owner is asyncio.current_task()

    def busy_timeout_ms(self) -> int:
        """The holder's busy timeout: what is left of its budget (LimitReached when nothing is)."""
        if not self.held_here():
            return int(self.budget * 1000)  # a writer outside this lock (none in the service)
        return max(1, int(seconds_left(self.deadline) * 1000))

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()


# How often (in SQLite virtual machine steps) a running statement checks its time limit: about
# every 10 ms. Every 10,000 steps cost GET /posts 25 us of CPU (the check takes the GIL).
_STEPS_BETWEEN_CHECKS = 1_000_000


@contextlib.contextmanager
def _report_interrupted(limit: float | None) -> Iterator[None]:
    """A report (`limit` set) stopped by its clock is the report limit's 503, not the statement's."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        if limit is not None and str(exc) == "interrupted":
            raise LimitReached(REPORT_TIMEOUT) from None
        raise


class _StatementClock:
    """When the statements of one hop to a connection's thread must have finished, and the
    connection's busy timeout as last set."""

    __slots__ = ("busy_ms", "deadline", "limit")

    def __init__(self, limit_seconds: float, busy_ms: int) -> None:
        self.limit = limit_seconds
        self.deadline = float("inf")
        self.busy_ms = busy_ms

    def start(self, limit: float | None = None) -> None:
        """From now, the statement limit (or `limit`, a report's) until `stop`."""
        self.deadline = monotonic() + (self.limit if limit is None else limit)

    def stop(self) -> None:
        self.deadline = float("inf")

    def expired(self) -> bool:
        # SQLite's progress handler: true interrupts the statement ("interrupted"), which rolls it back.
        return monotonic() > self.deadline


CHECKPOINT_INTERVAL_SECONDS = 0.5
AUTOCHECKPOINT_BACKSTOP_PAGES = 10_000
# Each pooled connection's page cache (SQLite's default is 2 MiB). A 1,000-row batch dirties a page
# of ix_purchases_customer_sales per row (customers arrive in no order): past 2 MiB SQLite spills dirty
# pages to the WAL mid-transaction and reads them back. At 250,000 purchases the batch's insert
# took 18.4 ms with 2 MiB and 12.0 with 16 MiB (8, 16 and 32 MiB measured alike). Pages are
# allocated as used, so a small database never takes it.
CACHE_KIB = 16 * 1024


class Checkpointer:
    """PASSIVE checkpoints of the database's WAL every CHECKPOINT_INTERVAL_SECONDS, off the write path."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        # Asked, not cancelled: a checkpoint under way in its thread finishes before the connection closes.
        self._stop.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        connection = await asyncio.to_thread(
            sqlite3.connect, self.path, isolation_level=None, check_same_thread=False
        )
        try:
            while not self._stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), CHECKPOINT_INTERVAL_SECONDS)
                    break
                try:
                    await asyncio.to_thread(connection.execute, "PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error as exc:  # busy with another process's checkpoint, say: next time
                    log.debug("checkpoint skipped: %s", exc)
        finally:
            await asyncio.to_thread(connection.close)


def _give_up(waiter: asyncio.Future[Any], reason: str) -> None:
    if not waiter.done():
        waiter.set_exception(LimitReached(reason))


class ReadLane:
    """A reader connection that runs single reads one after another, queued on its thread as they
    come: no connection is lent and given back, so its thread goes from one statement straight to
    the next instead of waiting for the event loop to hand the connection to the next caller. On 2
    cores GET /posts went from 2,350 to 2,830 req/s, the limit app's pace (which queues the same way).

    Its waits are bounded like a pool's: past DB_POOL_MAX_WAITERS a read is refused at once, and a
    read still queued after DB_POOL_TIMEOUT_MS is given up (never started) with a 503.
    """

    def __init__(
        self,
        connection: aiosqlite.Connection,
        clock: _StatementClock,
        waits: WaitCounter,
        wait_seconds: float,
    ) -> None:
        self.connection = connection
        self._clock = clock
        self._waits = waits
        self._wait_seconds = wait_seconds
        # Reads sent that the thread has not done with, their callers gone or not: a read sent
        # behind any of them waits, so it gets a wait limit.
        self.queued = 0

    def _finished(self) -> None:
        self.queued -= 1

    def _settle(self, answer: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
        self.queued -= 1
        if answer.done():
            return
        if error is None:
            answer.set_result(result)
        else:
            answer.set_exception(error)

    async def read(self, work: Callable[[sqlite3.Connection], T], limit: float | None = None) -> T:
        """`work` on this lane's thread, within the statement limit (or `limit` seconds)."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[T] = loop.create_future()
        # Taken (popped, atomic under the GIL) by whoever comes first: the thread starting the read,
        # or the wait limit / a cancelled caller giving up on it.
        claim = [True]
        raw, clock = self.connection._conn, self._clock

        def run() -> None:
            try:
                claim.pop()
            except IndexError:
                loop.call_soon_threadsafe(self._finished)  # given up on while queued
                return
            clock.start(limit)
            try:
                result, error = work(raw), None
            except BaseException as exc:
                result, error = None, exc
            finally:
                clock.stop()
            loop.call_soon_threadsafe(self._settle, answer, result, error)

        def give_up() -> None:
            try:
                claim.pop()
            except IndexError:
                return  # under way: it ends within the statement limit
            _give_up(answer, POOL_TIMEOUT)

        waiting = self.queued > 0
        if waiting:
            self._waits.join()  # OVERLOADED past the bound
        self.queued += 1
        expiry = loop.call_later(self._wait_seconds, give_up) if waiting else None
        self.connection._tx.put_nowait((None, run))  # aiosqlite's own queue, as its _execute uses it
        try:
            return await answer
        except asyncio.CancelledError:
            with contextlib.suppress(IndexError):
                claim.pop()  # the caller is gone: if it has not started, it never will
            raise
        finally:
            if expiry is not None:
                expiry.cancel()
            if waiting:
                self._waits.leave()


class SQLitePool:
    """Long-lived aiosqlite connections: with `max_size` 2 or more, one for the writer (whoever holds
    the write lock) and `max_size - 1` read lanes (`ReadLane`), all opened at start-up; with
    `max_size` 1, one connection lent to reader and writer alike, last-in first-out.

    Every connection is a thread that takes the GIL to build its rows: on 2 cores one read lane
    beside the writer served GET /posts at 2,830 req/s where two connections lent in turn to every
    caller served 2,350 (0.49 CPU ms a request against 0.40). The writer's own connection: a write
    never queues for a connection behind the reads (it has queued for the write lock already), and
    a read never waits for a write transaction.
    """

    def __init__(self, path: str, min_size: int, max_size: int, limits: DatabaseLimits) -> None:
        self.path = path
        self.min_size = min_size
        self.max_size = max_size
        self.limits = limits
        self.waits = WaitCounter(limits.pool_max_waiters)
        self.write_lock = TaskLock(limits.lock_timeout_ms / 1000, self.waits)
        self.clocks: dict[aiosqlite.Connection, _StatementClock] = {}
        self.lanes: list[ReadLane] = []
        self._idle: deque[aiosqlite.Connection] = deque()
        self._opened = 0
        self._waiters: deque[asyncio.Future[aiosqlite.Connection]] = deque()
        self.checkpointer = Checkpointer(path)

    @property
    def size(self) -> int:
        return self._opened

    @property
    def in_use(self) -> int:
        return self._opened - len(self._idle) - sum(1 for lane in self.lanes if not lane.queued)

    async def open(self) -> None:
        if self.max_size > 1:
            self._idle.append(await self._connect())  # the writer's
            for _ in range(self.max_size - 1):
                connection = await self._connect(reads_only=True)
                lane = ReadLane(
                    connection, self.clocks[connection], self.waits, self.limits.pool_timeout_ms / 1000
                )
                self.lanes.append(lane)
        else:
            for _ in range(self.min_size):
                self._idle.append(await self._connect())
        self.checkpointer.start()

    async def read_alone(self, query: BoundStatement) -> list[Any]:
        """A named read's rows, from the read lane with the shortest queue."""
        sql, arguments = query.statement.sql, _adapt(query.arguments)  # type: ignore[arg-type]
        limit = self.report_limit(query.statement)
        with _report_interrupted(limit):
            return await self.lane().read(lambda conn: conn.execute(sql, arguments).fetchall(), limit)

    def report_limit(self, statement: Any) -> float | None:
        """REPORT_STATEMENT_TIMEOUT_MS, in seconds, for a report (`-- limit: report`); else None."""
        return self.limits.report_statement_timeout_ms / 1000 if statement.report else None

    def lane(self) -> ReadLane:
        """The read lane with the shortest queue."""
        return self.lanes[0] if len(self.lanes) == 1 else min(self.lanes, key=lambda lane: lane.queued)

    async def _connect(self, reads_only: bool = False) -> aiosqlite.Connection:
        self._opened += 1
        try:
            connection = await aiosqlite.connect(self.path, isolation_level=None)
            connection.row_factory = sqlite3.Row
            await connection.execute(f"PRAGMA busy_timeout = {int(self.limits.lock_timeout_ms)}")
            await connection.execute("PRAGMA foreign_keys = ON")
            # WAL makes NORMAL safe from corruption; a power cut may lose the last commits, not the file.
            await connection.execute("PRAGMA synchronous = NORMAL")
            await connection.execute(f"PRAGMA wal_autocheckpoint = {AUTOCHECKPOINT_BACKSTOP_PAGES}")
            await connection.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
            if reads_only:
                # A write sent to a lane by mistake fails at once, instead of holding up every read
                # queued behind it while it waits for the write lock.
                await connection.execute("PRAGMA query_only = ON")
            clock = _StatementClock(self.limits.statement_timeout_ms / 1000, self.limits.lock_timeout_ms)
            raw = connection._conn
            await connection._execute(lambda: raw.set_progress_handler(clock.expired, _STEPS_BETWEEN_CHECKS))  # type: ignore[no-untyped-call]
        except BaseException:
            self._opened -= 1
            raise
        self.clocks[connection] = clock
        return connection

    async def acquire(self) -> aiosqlite.Connection:
        """A connection of one's own: with read lanes, the writer's (the caller holds the write lock)."""
        if self._idle:
            return self._idle.pop()
        if self._opened < self.max_size and not self.lanes:
            return await self._connect()
        self.waits.join()
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[aiosqlite.Connection] = loop.create_future()
        self._waiters.append(waiter)
        # A plain timer that fails the waiter: cheaper than asyncio.timeout, and most requests
        # wait here under load (two connections, many callers).
        expiry = loop.call_later(self.limits.pool_timeout_ms / 1000, _give_up, waiter, POOL_TIMEOUT)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.release(waiter.result())  # handed a connection as the caller went away
            raise
        finally:
            expiry.cancel()
            self.waits.leave()

    def release(self, connection: aiosqlite.Connection) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        self._idle.append(connection)

    async def close(self) -> None:
        await self.checkpointer.stop()
        lanes, self.lanes = self.lanes, []
        for lane in lanes:
            self._idle.append(lane.connection)
        while self._idle:
            connection = self._idle.pop()
            self.clocks.pop(connection, None)
            await connection.close()
            self._opened -= 1


class SQLiteBackend(DatabaseBackend):
    def __init__(self, database_url: DatabaseURL | str, **options: Any) -> None:
        self._dialect = pysqlite.dialect(paramstyle="named")
        self.pool = SQLitePool(
            sqlite_path(str(database_url)),
            min_size=int(options.get("min_size", 1)),
            max_size=int(options.get("max_size", 4)),
            limits=options.get("limits") or DatabaseLimits(),
        )

    async def connect(self) -> None:
        await self.pool.open()

    async def disconnect(self) -> None:
        await self.pool.close()

    def connection(self) -> SQLiteConnection:
        return SQLiteConnection(self.pool, self._dialect)


class SQLiteConnection(ConnectionBackend):
    """A connection of one's own (reads alone go to a read lane instead: `Database`). With read
    lanes the one connection to lend is the writer's, so taking it takes the write lock first
    unless this task holds it already: one order, lock then connection, for everyone."""

    def __init__(self, pool: SQLitePool, dialect: pysqlite.SQLiteDialect_pysqlite) -> None:
        self._pool = pool
        self._dialect = dialect
        self._connection: aiosqlite.Connection | None = None
        self._locked = False

    async def acquire(self) -> None:
        assert self._connection is None, "Connection is already acquired"
        if self._pool.lanes and not self._pool.write_lock.held_here():
            await self._pool.write_lock.acquire()
            self._locked = True
        try:
            self._connection = await self._pool.acquire()
        except BaseException:
            self._unlock()
            raise

    def _unlock(self) -> None:
        if self._locked:
            self._locked = False
            self._pool.write_lock.release()

    async def release(self) -> None:
        assert self._connection is not None, "Connection is not acquired"
        connection, self._connection = self._connection, None
        try:
            if connection.in_transaction:
                # A task cancelled mid-transaction must not hand an open transaction to the next caller.
                await connection.execute("ROLLBACK")
        finally:
            self._pool.release(connection)
            self._unlock()

    @property
    def raw_connection(self) -> aiosqlite.Connection:
        assert self._connection is not None, "Connection is not acquired"
        return self._connection

    def _prepare(self, query: ClauseElement) -> tuple[str, Mapping[str, Any]]:
        named = bound(query)
        if named is not None:
            assert isinstance(named.arguments, dict)
            return named.statement.sql, _adapt(named.arguments)
        # A plain string (TextClause): compile it as the stock backend would.
        compiled = query.compile(dialect=self._dialect, compile_kwargs={"render_postcompile": True})
        params = compiled.construct_params() or {}
        processors = getattr(compiled, "_bind_processors", {})
        return compiled.string, {
            key: processors[key](value) if key in processors else value for key, value in params.items()
        }

    async def _in_thread(self, work: Callable[[sqlite3.Connection], T], limit: float | None = None) -> T:
        # aiosqlite's own queue: the callable runs on the connection's thread, one hop for the lot.
        connection = self.raw_connection
        clock = self._pool.clocks[connection]

        def timed() -> T:
            clock.start(limit)
            try:
                return work(connection._conn)
            finally:
                clock.stop()

        return await connection._execute(timed)  # type: ignore[no-untyped-call,no-any-return]

    def _begin_writing(self) -> tuple[str, ...]:
        """BEGIN IMMEDIATE, after setting the busy timeout to what is left of this writer's lock
        budget - unless the connection's is within a twentieth of the budget of that already (as
        it is for a writer that did not wait): a statement saved on nearly every write."""
        left = self._pool.write_lock.busy_timeout_ms()
        clock = self._pool.clocks[self.raw_connection]
        if abs(clock.busy_ms - left) <= self._pool.limits.lock_timeout_ms / 20:
            return ("BEGIN IMMEDIATE",)
        clock.busy_ms = left
        return (f"PRAGMA busy_timeout = {left}", "BEGIN IMMEDIATE")

    async def fetch_all(self, query: ClauseElement) -> list[Any]:
        sql, arguments = self._prepare(query)
        named = bound(query)
        limit = None if named is None else self._pool.report_limit(named.statement)
        with _report_interrupted(limit):
            return await self._in_thread(lambda conn: conn.execute(sql, arguments).fetchall(), limit)

    async def fetch_one(self, query: ClauseElement) -> Any | None:
        rows = await self.fetch_all(query)
        return rows[0] if rows else None

    async def execute(self, query: ClauseElement) -> int:
        """Run a statement; return how many rows it changed."""
        sql, arguments = self._prepare(query)
        return await self._in_thread(lambda conn: conn.execute(sql, arguments).rowcount)

    async def execute_many(self, queries: list[ClauseElement]) -> None:
        prepared = [self._prepare(query) for query in queries]

        def run(conn: sqlite3.Connection) -> None:
            for sql, arguments in prepared:
                conn.execute(sql, arguments)

        await self._in_thread(run)

    async def fetch_all_atomically(
        self, queries: Sequence[ClauseElement], in_transaction: bool
    ) -> list[list[Any]]:
        """Run the statements as one transaction (or inside the open one) in a single thread hop.

        The caller holds the process's write lock (`Database.fetch_all_atomically` takes it).
        """
        prepared = [self._prepare(query) for query in queries]

        def run(conn: sqlite3.Connection) -> list[list[Any]]:
            return [conn.execute(sql, arguments).fetchall() for sql, arguments in prepared]

        if in_transaction:
            return await self._in_thread(run)
        return await self._in_thread(_as_transaction(self._begin_writing(), run))

    async def write_alone(self, query: ClauseElement) -> tuple[list[Any], int]:
        """One writing statement as a transaction of its own, in one hop: its rows (RETURNING) and
        how many rows it changed. The caller holds the write lock; BEGIN IMMEDIATE sets the busy
        timeout to what is left of its budget, as for every transaction."""
        sql, arguments = self._prepare(query)

        def run(conn: sqlite3.Connection) -> tuple[list[Any], int]:
            cursor = conn.execute(sql, arguments)
            rows = cursor.fetchall()
            return rows, cursor.rowcount

        return await self._in_thread(_as_transaction(self._begin_writing(), run))

    async def iterate(self, query: ClauseElement) -> AsyncGenerator[Any, None]:
        for row in await self.fetch_all(query):
            yield row

    def transaction(self) -> SQLiteTransaction:
        return SQLiteTransaction(self)


def _as_transaction(
    begin: Sequence[str], work: Callable[[sqlite3.Connection], T]
) -> Callable[[sqlite3.Connection], T]:
    """`work` between `begin` and COMMIT, rolled back if it fails."""

    def run(conn: sqlite3.Connection) -> T:
        for sql in begin:
            conn.execute(sql)
        try:
            result = work(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return result

    return run


class SQLiteTransaction(TransactionBackend):
    def __init__(self, connection: SQLiteConnection) -> None:
        self._connection = connection
        self._is_root = False
        self._savepoint = ""

    async def _run(self, *statements: str) -> None:
        await self._connection._in_thread(lambda conn: [conn.execute(sql) for sql in statements])

    async def start(self, is_root: bool, extra_options: dict[Any, Any]) -> None:
        self._is_root = is_root
        if not is_root:
            self._savepoint = f"sp_{uuid.uuid4().hex}"
            await self._run(f"SAVEPOINT {self._savepoint}")
            return
        # `Database.transaction` holds the process's write lock around the whole transaction; the
        # busy timeout (other processes' writers) is what is left of this writer's lock budget.
        await self._run(*self._connection._begin_writing())

    async def commit(self) -> None:
        if not self._is_root:
            await self._run(f"RELEASE SAVEPOINT {self._savepoint}")
            return
        await self._run("COMMIT")

    async def rollback(self) -> None:
        if not self._is_root:
            await self._run(f"ROLLBACK TO SAVEPOINT {self._savepoint}")
            await self._run(f"RELEASE SAVEPOINT {self._savepoint}")
            return
        if self._connection.raw_connection.in_transaction:
            await self._run("ROLLBACK")
