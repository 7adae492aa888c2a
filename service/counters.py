"""Filling what the database keeps (the counts of 0005, the sales rollups of 0006) from the rows
already there.

The triggers that keep them (sql/counters.<dialect>.sql, sql/rollups.<dialect>.sql) count every
change from the moment they exist; a revision makes them first and then fills in what was there
before, here, one range at a time (of ids, or of days for daily_sales). Each range is replaced
whole, so the fill can be stopped at any point and run again from the start.

On PostgreSQL each range is its own short transaction holding SHARE locks on the tables it reads:
writers of those rows wait for that one range (tens of milliseconds), readers never; what a writer
adds after the range is done, its trigger counts. A range that cannot get its locks within the
session's lock_timeout is tried again after a pause. On SQLite the migration holds the one write
lock throughout, so each table is filled in one go.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, timedelta
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from service.queries import Queries, load_queries
from service.tables import COUNTER_SHARDS

log = logging.getLogger("service.counters")

# How much a range covers, so that a writer never waits long behind one: 20,000 posts (about
# 60 ms on the data set, three likes and a comment a post), 5,000 customers or one day of
# purchases (about 25,000 and 14,000 purchases there, a few tens of milliseconds).
IDS_PER_RANGE = 20_000
_RETRIES = 20
# lock_timeout ran out; a deadlock detected (a writer that already held one of the tables).
_TRY_AGAIN = {"55P03", "40P01"}


@dataclass(frozen=True)
class Kept:
    """One table the triggers keep, and the statements that fill it (`lock` on PostgreSQL only)."""

    table: str
    ranges_of: str  # "day", or the highest_ids column where its ranges of ids end
    lock: str
    clear: str
    fill: str
    per_range: int = IDS_PER_RANGE  # ids, or days


POST_COUNTS = Kept("post_counts", "post_id", "lock_posts_counted", "clear_post_counts", "fill_post_counts")
USER_COUNTS = Kept("user_counts", "user_id", "lock_users_counted", "clear_user_counts", "fill_user_counts")
CUSTOMER_ITEMS = Kept(
    "customer_items",
    "customer_id",
    "lock_customer_items",
    "clear_customer_items",
    "fill_customer_items",
    5_000,
)
DAILY_SALES = Kept("daily_sales", "day", "lock_daily_sales", "clear_daily_sales", "fill_daily_sales", 1)

COUNTS = (POST_COUNTS, USER_COUNTS)
ROLLUPS = (CUSTOMER_ITEMS, DAILY_SALES)


def fill(connection: Connection, kept: tuple[Kept, ...], ids_per_range: int | None = None) -> str:
    """Make each kept table equal to the rows it keeps. Says how long it took.

    `ids_per_range` overrides each table's own (tests use tiny ranges). PostgreSQL: the
    connection must be in autocommit (the migration's `outside_transaction`);
    each range begins and commits its own transaction. SQLite: runs in the caller's transaction.
    """
    started = time.perf_counter()
    dialect = connection.dialect.name
    queries = load_queries(dialect)
    edges = dict(connection.execute(text(queries.highest_ids.source)).mappings().one())
    ranges = 0
    for table in kept:
        for first, end in _ranges(dialect, table, edges, ids_per_range):
            if dialect == "sqlite":
                fill_range(connection, queries, table, first, end)
            else:
                _fill_range_in_own_transaction(connection, queries, table, first, end)
            ranges += 1
    names = ", ".join(table.table for table in kept)
    return f"filled {names} in {ranges} ranges ({time.perf_counter() - started:.1f} s)"


def _ranges(
    dialect: str, table: Kept, edges: Mapping[str, Any], ids_per_range: int | None
) -> Iterator[tuple[Any, Any]]:
    if table.ranges_of == "day":
        if dialect == "sqlite":  # one range holding every day: stored timestamps and days are text
            yield "0000-01-01", "9999-12-32"
            return
        first_at, last_at = edges["first_purchased_at"], edges["last_purchased_at"]
        if first_at is None:
            return
        day, last = first_at.astimezone(UTC).date(), last_at.astimezone(UTC).date()
        while day <= last:
            yield day, day + timedelta(days=table.per_range)
            day += timedelta(days=table.per_range)
        return
    end_of_ids = int(edges[table.ranges_of]) + 1
    step = end_of_ids if dialect == "sqlite" else ids_per_range or table.per_range
    for first in range(0, end_of_ids, step):
        yield first, first + step


def fill_range(connection: Connection, queries: Queries, table: Kept, first: Any, end: Any) -> None:
    """Replace what `table` keeps for [first, end) with what the rows say (in the caller's transaction)."""
    shards = COUNTER_SHARDS if connection.dialect.name == "postgresql" else 1  # SQLite: shard 0 only
    bounds = {"first": first, "end": end, "shards": shards}
    connection.execute(text(getattr(queries, table.clear).source), bounds)
    connection.execute(text(getattr(queries, table.fill).source), bounds)


def _fill_range_in_own_transaction(
    connection: Connection, queries: Queries, table: Kept, first: Any, end: Any
) -> None:
    pause = 0.1
    for attempt in range(_RETRIES + 1):
        connection.exec_driver_sql("BEGIN")
        try:
            connection.execute(text(getattr(queries, table.lock).source))
            fill_range(connection, queries, table, first, end)
        except DBAPIError as exc:
            connection.exec_driver_sql("ROLLBACK")
            if getattr(exc.orig, "sqlstate", None) not in _TRY_AGAIN or attempt == _RETRIES:
                raise
            log.warning(
                "filling %s %s-%s waited too long for its locks; again in %.1f s",
                table.table,
                first,
                end,
                pause,
            )
            time.sleep(pause)
            pause = min(pause * 2, 2.0)
            continue
        connection.exec_driver_sql("COMMIT")
        return
