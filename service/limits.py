"""Bounded waits: how long a request may wait on the database, and the 503 it gets past a limit.

The limits are settings (`DatabaseLimits`). Past one, the work raises `LimitReached` (or the
database's own error, classified by `limit_reached`); the middleware answers 503 problem+json with
Retry-After, naming the limit, and counts it by reason. By then the transaction has rolled back
(the `databases` transaction, or the backend's own), so nothing is half written, and the
connection is back in the pool.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import deque
from collections.abc import Hashable
from contextvars import ContextVar
from time import monotonic
from typing import Any

import asyncpg

POOL_TIMEOUT = "pool_timeout"
OVERLOADED = "overloaded"
LOCK_TIMEOUT = "lock_timeout"
STATEMENT_TIMEOUT = "statement_timeout"
REPORT_TIMEOUT = "report_timeout"

DETAILS = {
    POOL_TIMEOUT: "No database connection came free within the pool wait limit (DB_POOL_TIMEOUT_MS);"
    " try again shortly.",
    OVERLOADED: "Too many requests are already waiting for the database (DB_POOL_MAX_WAITERS);"
    " try again shortly.",
    LOCK_TIMEOUT: "What this request writes stayed locked past the lock wait limit (DB_LOCK_TIMEOUT_MS);"
    " nothing was written; try again shortly.",
    STATEMENT_TIMEOUT: "The database did not finish within the statement time limit"
    " (DB_STATEMENT_TIMEOUT_MS); nothing was written; try again shortly.",
    REPORT_TIMEOUT: "The report did not finish within the report time limit"
    " (REPORT_STATEMENT_TIMEOUT_MS); try a shorter range, or again shortly.",
}

# When a request has already spent part of its lock budget waiting its turn here, the monotonic
# time by which its database work must have its locks (see `WriterTurns`).
lock_deadline: ContextVar[float | None] = ContextVar("lock_deadline", default=None)


class LimitReached(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def limit_reached(exc: BaseException) -> str | None:
    """Which limit `exc` says was reached, or None when it is something else."""
    if isinstance(exc, LimitReached):
        return exc.reason
    if isinstance(exc, asyncpg.LockNotAvailableError):  # 55P03: lock_timeout
        return LOCK_TIMEOUT
    if isinstance(exc, asyncpg.QueryCanceledError):  # 57014: statement_timeout
        return STATEMENT_TIMEOUT
    if isinstance(exc, sqlite3.OperationalError):
        message = str(exc)
        if "locked" in message:  # the busy timeout ran out: another process holds the write lock
            return LOCK_TIMEOUT
        if message == "interrupted":  # our progress handler: the statement ran out of time
            return STATEMENT_TIMEOUT
    return None


class WaitCounter:
    """How many tasks wait for the database right now, and the bound past which more are shed."""

    def __init__(self, max_waiters: int) -> None:
        self.max_waiters = max_waiters
        self.waiting = 0

    def join(self) -> None:
        if self.waiting >= self.max_waiters:
            raise LimitReached(OVERLOADED)
        self.waiting += 1

    def leave(self) -> None:
        self.waiting -= 1


class WriterTurns:
    """One request at a time per key (a customer's email) in this worker; the others wait here.

    Writes to one row queue on its lock anyway. Without this, a row held by another session (a
    forgotten `psql`, a slow report's FOR UPDATE) would let its requests take every pooled
    connection while they wait, stalling requests for other rows. Waiting here holds no
    connection, and the wait counts against the same lock budget: a request that waited its turn
    takes the rest of its budget to the database (`lock_deadline`), so however many queue, none
    waits much past DB_LOCK_TIMEOUT_MS.
    """

    def __init__(self, lock_timeout_seconds: float) -> None:
        self.budget = lock_timeout_seconds
        self._queues: dict[Hashable, deque[asyncio.Future[None]]] = {}

    def turn(self, key: Hashable) -> _Turn:
        return _Turn(self, key)

    async def _wait(self, key: Hashable) -> float | None:
        """Wait for `key`'s turn; the deadline to take to the database if the wait was long."""
        queue = self._queues.get(key)
        if queue is None:
            self._queues[key] = deque()
            return None  # nobody ahead: the whole budget is left
        started = monotonic()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.append(waiter)
        try:
            async with asyncio.timeout(self.budget):
                await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                self._pass_on(key)  # the turn came as this one gave up: hand it to the next
            else:
                waiter.cancel()
            if isinstance(exc, TimeoutError):
                raise LimitReached(LOCK_TIMEOUT) from None
            raise
        # A short wait (under a tenth of the budget) keeps the database's own limit: the margin is small.
        return started + self.budget if monotonic() - started > self.budget / 10 else None

    def _pass_on(self, key: Hashable) -> None:
        queue = self._queues[key]
        while queue:
            waiter = queue.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        del self._queues[key]


class _Turn:
    __slots__ = ("_key", "_token", "_turns")

    def __init__(self, turns: WriterTurns, key: Hashable) -> None:
        self._turns = turns
        self._key = key
        self._token: Any = None

    async def __aenter__(self) -> None:
        deadline = await self._turns._wait(self._key)
        if deadline is not None:
            self._token = lock_deadline.set(deadline)

    async def __aexit__(self, *exc_info: object) -> None:
        if self._token is not None:
            lock_deadline.reset(self._token)
        self._turns._pass_on(self._key)


def seconds_left(deadline: float) -> float:
    """Time left before `deadline`; LimitReached when there is none."""
    left = deadline - monotonic()
    if left <= 0:
        raise LimitReached(LOCK_TIMEOUT)
    return left
