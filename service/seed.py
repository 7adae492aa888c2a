"""`python -m service seed`: a data set of any size, made by the database itself.

Each table is filled by a few set-based statements (sql/seed.<dialect>.sql) that make rows
n = 1..N from a series, with every choice arithmetic on n: no row crosses the wire, and the same
sizes make the same data on either database. Everything is one transaction holding the seeded
tables' write locks (writers of them wait; readers do not), and ids are given explicitly from past
the highest, so the statements can refer to the rows of the tables seeded before them by
arithmetic too. SQLite's triggers keep the counts and rollups as for any other write; on
PostgreSQL they are off inside the transaction and the seeded ranges are filled set-based before
it commits (row by row, 2M likes of 20 posts took 9 minutes; see sql/seed.postgresql.sql); an
empty table that gets many rows is loaded first and indexed after. The large set: 103 s on
PostgreSQL here.

The shape: the newest twenty posts hold most likes; the first seeded user follows up to 5,000
others (the bench's feed reader); every 250th purchase is one customer's. Seeded users are named
`s<run>_<n>` and all share the password SEED_PASSWORD, so a demo can sign in as any of them.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from functools import partial
from typing import Any

import bcrypt
from sqlalchemy import Connection, text

from service.bench.sizes import KINDS, SeedSize
from service.counters import CUSTOMER_ITEMS, DAILY_SALES, POST_COUNTS, USER_COUNTS, Kept, fill_range
from service.migrations.schema import schema_connection
from service.queries import Queries, load_queries

SEED_PASSWORD = "seed-password"  # noqa: S105 - the published demo password of seeded users
ROWS_PER_STATEMENT = 500_000
HOT_POSTS = 20  # the newest posts, which most likes go to
READER_FOLLOWS = 5_000  # the most the first user follows
WHALE_EVERY = 250  # every so many purchases are the first customer's
ITEMS = 50
BULK_ROWS = 100_000  # an empty table getting at least this many is loaded first, indexed after
DAY = 86_400


def coprime_multiplier(pairs: int, random_seed: int) -> int:
    """A multiplier that walks 0..pairs-1 in a scattered order (coprime to `pairs`)."""
    if pairs <= 2:
        return 1
    candidate = int(pairs * 0.6180339887) + random_seed % max(pairs // 4, 1)
    while math.gcd(candidate, pairs) != 1:
        candidate += 1
    return candidate


class _Seeding:
    """One seed's transaction: each table's rows, and on PostgreSQL the kept counts and rollups."""

    def __init__(self, connection: Connection, report: Callable[[str], None]) -> None:
        self.connection = connection
        self.queries: Queries = load_queries(connection.dialect.name)
        self.report = report
        self.now = time.time()
        self.first: dict[str, int] = {}

    def run(self, name: str, values: dict[str, Any] | None = None) -> Any:
        return self.connection.execute(text(getattr(self.queries, name).source), values or {})

    def reserve_ids(self, counts: dict[str, int]) -> None:
        """Ids from past the highest of each table with ids of its own, kept from other writers
        (on SQLite the write lock does that: a new row's id follows the highest)."""
        highest = self.run("seed_highest_ids").mappings().one()
        for table, count in counts.items():
            self.first[table] = int(highest[table]) + 1
            if count and self.connection.dialect.name == "postgresql":
                self.run("seed_reserve_ids", {"table_name": table, "last_id": self.first[table] + count - 1})

    def table(self, table: str, count: int, start: float, span: float, **shape: Any) -> int:
        """Rows 1..count of `table`, timed evenly over [start, start + span); how many went in."""
        made = 0
        if table in self.first:
            shape["first_id"] = self.first[table]
        rebuild = self._set_indexes_aside(table, count)
        for from_n in range(1, count + 1, ROWS_PER_STATEMENT):
            to_n = min(from_n + ROWS_PER_STATEMENT - 1, count)
            values = {"from_n": from_n, "to_n": to_n, "start": start, "step": span / count, **shape}
            made += self.run(f"seed_{table}", values).rowcount
            self.report(f"{table}: {made:,} of {count:,}")
        if rebuild:
            self.report(f"{table}: building {len(rebuild)} indexes")
        for definition in rebuild:
            self.connection.exec_driver_sql(definition)
        return made

    def _set_indexes_aside(self, table: str, count: int) -> list[str]:
        """On PostgreSQL, when `table` is empty (no id yet) and gets many rows: drop its secondary
        indexes for the load; the statements that build them again after it."""
        if self.connection.dialect.name != "postgresql" or self.first.get(table) != 1 or count < BULK_ROWS:
            return []
        indexes = self.run("seed_secondary_indexes", {"table_name": table}).mappings().all()
        for index in indexes:
            # Names and definitions as the catalog gives them (regclass quotes a name when needed).
            self.connection.exec_driver_sql(f"DROP INDEX {index['name']}")
        return [index["definition"] for index in indexes]

    def fill_kept(self, counts: dict[str, int], first_day: date) -> None:
        """The counts and rollups of the seeded rows, as their triggers would have kept them (the
        seeded posts' and users', the seeded customers' and the days their purchases fell on)."""
        ranges: dict[Kept, tuple[Any, Any]] = {}
        if counts["users"]:
            ranges[POST_COUNTS] = (self.first["posts"], self.first["posts"] + counts["posts"])
            ranges[USER_COUNTS] = (self.first["users"], self.first["users"] + counts["users"])
        if counts["purchases"]:
            ranges[CUSTOMER_ITEMS] = (self.first["customers"], self.first["customers"] + counts["customers"])
            today = datetime.fromtimestamp(self.now, UTC).date()
            ranges[DAILY_SALES] = (first_day, today + timedelta(days=1))
        for kept, (first, end) in ranges.items():
            self.report(f"{kept.table}: filling")
            fill_range(self.connection, self.queries, kept, first, end)


def seed(
    database_url: str,
    size: SeedSize,
    bcrypt_rounds: int,
    random_seed: int = 42,
    report: Callable[[str], None] = lambda line: None,
) -> dict[str, int]:
    """Load a data set of `size` (capped where the people or posts cannot make that many distinct
    pairs), in one transaction; how many rows of each kind went in."""
    users = size.users
    posts = size.posts if users else 0
    hot_posts = min(HOT_POSTS, posts // 2)
    spread_posts = posts - hot_posts
    hot_likes = min(size.likes * 2 // 3, hot_posts * users)
    likes = hot_likes + min(size.likes - hot_likes, users * spread_posts) if posts else 0
    reposts = min(size.reposts, users * posts)
    comments = size.comments if posts else 0
    reader_follows = min(size.follows // 2, READER_FOLLOWS, max(users - 1, 0))
    follows = reader_follows + min(size.follows - reader_follows, (users - 1) ** 2) if users > 1 else 0
    customers = size.customers
    purchases = size.purchases if customers else 0
    with_ids = {
        "users": users,
        "posts": posts,
        "comments": comments,
        "customers": customers,
        "purchases": purchases,
    }
    password_hash = bcrypt.hashpw(SEED_PASSWORD.encode(), bcrypt.gensalt(bcrypt_rounds)).decode()
    run = secrets.token_hex(3)
    mix = partial(coprime_multiplier, random_seed=random_seed)
    made: dict[str, int] = {}
    with schema_connection(database_url) as connection:
        connection.commit()  # (what opening it began)
        s = _Seeding(connection, report)
        month, year = 30 * DAY, 365 * DAY
        social_start = s.now - month  # posts, likes, ... over the last 30 days; users the 30 before
        keeps_afterwards = connection.dialect.name == "postgresql"
        with connection.begin():
            s.run("seed_lock_tables")
            s.reserve_ids(with_ids)
            if keeps_afterwards:
                s.run("seed_triggers_off")
                s.run("seed_sort_in_memory")
            people = {"first_user": s.first["users"], "users": users}
            people_and_posts = {**people, "first_post": s.first["posts"], "posts": posts}
            made["users"] = s.table(
                "users", users, social_start - month, month, prefix=f"s{run}_", password_hash=password_hash
            )
            made["posts"] = s.table("posts", posts, social_start, month, mix=mix(users), **people)
            made["likes"] = s.table(
                "likes", likes, social_start, month, hot=hot_likes, spread_posts=max(spread_posts, 1),
                pairs=max(users * spread_posts, 1), mix=mix(users * spread_posts), **people_and_posts,
            )  # fmt: skip
            made["reposts"] = s.table(
                "reposts", reposts, social_start, month, pairs=max(users * posts, 1),
                mix=coprime_multiplier(users * posts, random_seed + 1), **people_and_posts,
            )  # fmt: skip
            made["comments"] = s.table(
                "comments", comments, social_start, month, mix=mix(posts),
                mix2=coprime_multiplier(users, random_seed + 1), **people_and_posts,
            )  # fmt: skip
            made["follows"] = s.table(
                "follows", follows, social_start, month, hot=reader_follows, pairs=max((users - 1) ** 2, 1),
                mix=mix((users - 1) ** 2), **people,
            )  # fmt: skip
            made["customers"] = s.table("customers", customers, s.now - year - DAY, DAY, prefix=f"c{run}_")
            made["purchases"] = s.table(
                "purchases", purchases, s.now - year, year, first_customer=s.first["customers"],
                customers=customers, whale_every=WHALE_EVERY, items=ITEMS, mix=mix(max(customers - 1, 1)),
                mix2=mix(ITEMS),
            )  # fmt: skip
            if keeps_afterwards:
                s.run("seed_triggers_on")
                s.fill_kept(with_ids, datetime.fromtimestamp(s.now - year, UTC).date())
        if any(made.values()):
            s.report("analyze")
            analyze(connection, s.queries)
    return {kind: made[kind] for kind in KINDS}


def analyze(connection: Connection, queries: Queries) -> None:
    """Statistics (and on PostgreSQL the visibility map) brought up to date after a bulk load."""
    if connection.dialect.name == "postgresql":  # VACUUM runs outside a transaction
        connection.execution_options(isolation_level="AUTOCOMMIT").execute(text(queries.analyze.source))
    else:
        with connection.begin():
            connection.execute(text(queries.analyze.source))
