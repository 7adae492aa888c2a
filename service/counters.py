"""Filling the kept counts (post_counts, user_counts) from the rows already there.

The triggers that keep the counts (sql/counters.<dialect>.sql) count every change from the moment
they exist; revision 0005 makes them first and then fills in what was there before, here, one
range of ids at a time. Each range is replaced whole, so the fill can be stopped at any point and
run again from the start.

On PostgreSQL each range is its own short transaction holding SHARE locks on the tables it counts:
writers of those rows wait for that one range (tens of milliseconds), readers never; what a writer
adds after the range is done, its trigger counts. A range that cannot get its locks within the
session's lock_timeout is tried again after a pause. On SQLite the migration holds the one write
lock throughout, so everything is filled in one go.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from service.queries import Queries, load_queries

log = logging.getLogger("service.counters")

# Ids a range covers: about 60 ms a range of posts on the data set (three likes and one
# comment a post), so that a writer never waits long behind one.
IDS_PER_RANGE = 20_000
_RETRIES = 20
# lock_timeout ran out; a deadlock detected (a writer that already held one of the tables).
_TRY_AGAIN = {"55P03", "40P01"}


@dataclass(frozen=True)
class _Counted:
    """One kept-count table and what fills it."""

    lock: str
    clear: str
    fill: str
    highest: str  # the column of highest_ids where its ranges end


POSTS = _Counted("lock_posts_counted", "clear_post_counts", "fill_post_counts", "post_id")
USERS = _Counted("lock_users_counted", "clear_user_counts", "fill_user_counts", "user_id")


def fill_counts(connection: Connection, ids_per_range: int = IDS_PER_RANGE) -> str:
    """Make post_counts and user_counts equal to the rows they count. Says how long it took.

    PostgreSQL: the connection must be in autocommit (the migration's `outside_transaction`);
    each range begins and commits its own transaction. SQLite: runs in the caller's transaction.
    """
    started = time.perf_counter()
    dialect = connection.dialect.name
    queries = load_queries(dialect)
    highest = connection.execute(text(queries.highest_ids.source)).mappings().one()
    ranges = 0
    for counted in (POSTS, USERS):
        end_of_ids = int(highest[counted.highest]) + 1
        if dialect == "sqlite":
            _fill_range(connection, queries, counted, 0, end_of_ids)
            ranges += 1
            continue
        for first in range(0, end_of_ids, ids_per_range):
            _fill_range_in_own_transaction(connection, queries, counted, first, first + ids_per_range)
            ranges += 1
    return f"kept counts filled in {ranges} ranges ({(time.perf_counter() - started):.1f} s)"


def _fill_range(connection: Connection, queries: Queries, counted: _Counted, first: int, end: int) -> None:
    bounds = {"first": first, "end": end}
    connection.execute(text(getattr(queries, counted.clear).source), bounds)
    connection.execute(text(getattr(queries, counted.fill).source), bounds)


def _fill_range_in_own_transaction(
    connection: Connection, queries: Queries, counted: _Counted, first: int, end: int
) -> None:
    pause = 0.1
    for attempt in range(_RETRIES + 1):
        connection.exec_driver_sql("BEGIN")
        try:
            connection.execute(text(getattr(queries, counted.lock).source))
            _fill_range(connection, queries, counted, first, end)
        except DBAPIError as exc:
            connection.exec_driver_sql("ROLLBACK")
            if getattr(exc.orig, "sqlstate", None) not in _TRY_AGAIN or attempt == _RETRIES:
                raise
            log.warning(
                "filling counts of ids %d-%d waited too long for its locks; again in %.1f s",
                first,
                end,
                pause,
            )
            time.sleep(pause)
            pause = min(pause * 2, 2.0)
            continue
        connection.exec_driver_sql("COMMIT")
        return
