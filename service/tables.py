"""The schema, written once as SQLAlchemy Core metadata. The DDL is generated from it at start-up."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    event,
    text,
)
from sqlalchemy.engine import Connection
from sqlalchemy.types import TypeEngine

from service.queries import load_queries

metadata = MetaData()

# What users.role holds, least first; and every scope an API key can hold, in the order
# api_keys.scopes stores them. service.access says what each lets a caller do.
ROLES = ("member", "staff")
SCOPES = ("purchases:write", "purchases:read", "reports:read")
ALL_SCOPES = " ".join(SCOPES)

# SQLite only auto-assigns ids to a column declared exactly INTEGER PRIMARY KEY.
Id: TypeEngine[int] = BigInteger().with_variant(Integer(), "sqlite")

# PostgreSQL stores real timestamps; SQLite stores the ISO 8601 text the service writes
# (always microseconds and a Z), which sorts and compares correctly as text.
Timestamp: TypeEngine[Any] = DateTime(timezone=True).with_variant(Text(), "sqlite")

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Id, primary_key=True),
    Column("name", String(100), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("key_prefix", String(16), nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("revoked_at", Timestamp),
    # What the key may do, as OAuth2 writes scopes: names separated by single spaces, in the order
    # of service.access.SCOPES. Keys made before scopes existed (revision 0004) have them all.
    Column("scopes", String(200), nullable=False, server_default=text(f"'{ALL_SCOPES}'")),
)
# A name names one live key; a revoked key's name can be used again.
Index(
    "ux_api_keys_live_name",
    api_keys.c.name,
    unique=True,
    postgresql_where=text("revoked_at IS NULL"),
    sqlite_where=text("revoked_at IS NULL"),
)
Index("ix_api_keys_created", api_keys.c.created_at, api_keys.c.id)

customers = Table(
    "customers",
    metadata,
    Column("id", Id, primary_key=True),
    # Trimmed and lower-cased before it gets here: the one identity of a customer.
    Column("email", String(254), nullable=False, unique=True),
    Column("name", String(200), nullable=False),
    # 1 when the row was inserted, +1 on every upsert that found it: tells "created" from "updated"
    # exactly, whatever the clocks or the concurrency.
    Column("revision", Integer, nullable=False, server_default=text("1")),
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
)
Index("ix_customers_created", customers.c.created_at, customers.c.id)

purchases = Table(
    "purchases",
    metadata,
    Column("id", Id, primary_key=True),
    Column("customer_id", Id, ForeignKey("customers.id", ondelete="CASCADE"), nullable=False),
    Column("item", String(200), nullable=False),
    Column("quantity", Integer, nullable=False),
    # Money is integer cents; the total is kept so reports sum a column instead of a product.
    Column("unit_price_cents", BigInteger, nullable=False),
    Column("total_cents", BigInteger, nullable=False),
    Column("purchased_at", Timestamp, nullable=False),
    Column("captured_by", String(120), nullable=False),
    Column("created_at", Timestamp, nullable=False),
    CheckConstraint("quantity > 0", name="ck_purchases_quantity_positive"),
    CheckConstraint("unit_price_cents >= 0", name="ck_purchases_price_not_negative"),
)
# Each list reads newest first from its own index: all purchases, one customer's, one item's.
Index("ix_purchases_purchased", purchases.c.purchased_at, purchases.c.id)
# One customer's purchases; on PostgreSQL it carries what the report by customer sums too
# (revision 0007), so that report reads this index alone, in customer order: 2.5 s for 5M
# purchases where reading each purchase's row took 27-38 s.
Index(
    "ix_purchases_customer_sales",
    purchases.c.customer_id,
    purchases.c.purchased_at,
    purchases.c.id,
    postgresql_include=["quantity", "total_cents"],
)
Index("ix_purchases_item", purchases.c.item, purchases.c.purchased_at, purchases.c.id)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    # Keys are scoped to the credential that sent them: two callers may pick the same key.
    Column("caller", String(120), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("request_hash", String(64), nullable=False),
    Column("status_code", Integer),
    Column("response_body", Text),
    Column("location", String(200)),
    Column("created_at", Timestamp, nullable=False),
)
Index("ix_idempotency_keys_created", idempotency_keys.c.created_at)

users = Table(
    "users",
    metadata,
    Column("id", Id, primary_key=True),
    Column("username", String(32), nullable=False, unique=True),
    Column("email", String(254), nullable=False, unique=True),
    # bcrypt's own format ($2b$12$...): salt and cost travel with the hash. Never leaves the service.
    Column("password_hash", String(60), nullable=False),
    Column("created_at", Timestamp, nullable=False),
    # "member" (the social feed, their own account) or "staff" (also the purchase ledger). Set only
    # from the command line; every account starts, and every account made before 0004 is, a member.
    Column("role", String(16), nullable=False, server_default=text("'member'")),
)
# The few staff, so that start-up's "is anyone staff?" is one index probe, not a scan of every user
# (65 ms a worker at a million users). Members are not in it: their writes never touch it.
Index(
    "ix_users_staff",
    users.c.id,
    postgresql_where=text("role = 'staff'"),
    sqlite_where=text("role = 'staff'"),
)

sessions = Table(
    "sessions",
    metadata,
    # The `sid` of every access token: a request is let in only while its row is live.
    Column("id", Id, primary_key=True),
    Column("user_id", Id, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("expires_at", Timestamp, nullable=False),
    Column("revoked_at", Timestamp),
)
# A user's sessions, newest first; and the purge of dead ones by either clock.
Index("ix_sessions_user", sessions.c.user_id, sessions.c.created_at, sessions.c.id)
Index("ix_sessions_expires", sessions.c.expires_at)
Index("ix_sessions_revoked", sessions.c.revoked_at)

posts = Table(
    "posts",
    metadata,
    Column("id", Id, primary_key=True),
    Column("author_id", Id, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("content", String(280), nullable=False),
    Column("created_at", Timestamp, nullable=False),
    # Set by PATCH /posts/{id}; null until the post is first edited. (Revision 0002.)
    Column("edited_at", Timestamp),
)
# All posts newest first; one author's newest first (also how the feed reads each followee).
Index("ix_posts_created", posts.c.created_at, posts.c.id)
Index("ix_posts_author", posts.c.author_id, posts.c.created_at, posts.c.id)

comments = Table(
    "comments",
    metadata,
    Column("id", Id, primary_key=True),
    Column("post_id", Id, ForeignKey("posts.id", ondelete="CASCADE"), nullable=False),
    Column("author_id", Id, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("body", String(1000), nullable=False),
    Column("created_at", Timestamp, nullable=False),
)
# A post's comments oldest first (and counted by post); an author's, for the cascade.
Index("ix_comments_post", comments.c.post_id, comments.c.created_at, comments.c.id)
Index("ix_comments_author", comments.c.author_id)


def _reaction(name: str) -> Table:
    """Likes and reposts: one per user and post, so PUT and DELETE are idempotent by the key."""
    table = Table(
        name,
        metadata,
        Column("user_id", Id, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
        Column("post_id", Id, ForeignKey("posts.id", ondelete="CASCADE"), primary_key=True),
        Column("created_at", Timestamp, nullable=False),
    )
    Index(f"ix_{name}_post", table.c.post_id)  # counted per post
    return table


likes = _reaction("likes")
reposts = _reaction("reposts")

follows = Table(
    "follows",
    metadata,
    Column("follower_id", Id, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("followee_id", Id, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("created_at", Timestamp, nullable=False),
    CheckConstraint("follower_id <> followee_id", name="ck_follows_not_self"),
)
# Who follows a user, and whom a user follows, each newest follow first.
Index("ix_follows_followee", follows.c.followee_id, follows.c.created_at, follows.c.follower_id)
Index("ix_follows_follower", follows.c.follower_id, follows.c.created_at, follows.c.followee_id)

# Kept counts (revision 0005): what a post or a user shows is read from these rows, never counted from
# the likes, reposts, comments, posts and follows on every read. The database keeps them itself, by
# triggers on those tables (sql/counters.<dialect>.sql, made with the tables, see service.counters),
# so every writer moves them in its own transaction: this release, the release before it during a
# rolling deploy, a cascade from a deleted post or user, and anyone at a psql prompt.
#
# On PostgreSQL a count is spread over COUNTER_SHARDS rows (the shard is a column of the row that was counted,
# the liker's id, say, modulo COUNTER_SHARDS) and summed when read: thirty-two people liking one
# post at once then queue on sixteen row locks, not on one (measured on PostgreSQL 15, one post,
# 32 connections liking and unliking: 2,000 writes/s on one row, 5,500-6,700 on sixteen, 10,000
# with no count kept at all). SQLite, one writer at a time, keeps each count in shard 0.
COUNTER_SHARDS = 16

post_counts = Table(
    "post_counts",
    metadata,
    Column("post_id", Id, ForeignKey("posts.id", ondelete="CASCADE"), primary_key=True),
    Column("shard", Integer, primary_key=True, autoincrement=False),
    Column("like_count", Integer, nullable=False, server_default=text("0")),
    Column("repost_count", Integer, nullable=False, server_default=text("0")),
    Column("comment_count", Integer, nullable=False, server_default=text("0")),
)

user_counts = Table(
    "user_counts",
    metadata,
    Column("user_id", Id, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("shard", Integer, primary_key=True, autoincrement=False),
    Column("post_count", Integer, nullable=False, server_default=text("0")),
    Column("follower_count", Integer, nullable=False, server_default=text("0")),
    Column("following_count", Integer, nullable=False, server_default=text("0")),
)

# Sales rollups (revision 0006), kept by triggers on purchases as the counts above are, for every
# writer: a single purchase, a batch, the release before during a rolling deploy, a cascade from a
# deleted customer. Reports by day and by item read whole days from daily_sales (the partial days
# at either end of a range from the purchases themselves); a customer's summary reads
# customer_items. A flash sale (32 connections buying one item on PostgreSQL 15) made 1,570-1,670
# purchases/s on one rollup row, 4,200-4,800 on sixteen, 5,600 with no rollup: today's rows are
# spread over COUNTER_SHARDS by the purchase's id, and housekeeping folds the shards of every day
# that has ended into shard 0, so that a year's report reads one row per day and item.
Day: TypeEngine[Any] = Date().with_variant(String(10), "sqlite")  # SQLite: 'YYYY-MM-DD', UTC

daily_sales = Table(
    "daily_sales",
    metadata,
    Column("day", Day, primary_key=True),
    Column("item", String(200), primary_key=True),
    Column("shard", Integer, primary_key=True, autoincrement=False),
    Column("purchases", BigInteger, nullable=False, server_default=text("0")),
    Column("quantity", BigInteger, nullable=False, server_default=text("0")),
    Column("revenue_cents", BigInteger, nullable=False, server_default=text("0")),
)

customer_items = Table(
    "customer_items",
    metadata,
    Column("customer_id", Id, ForeignKey("customers.id", ondelete="CASCADE"), primary_key=True),
    Column("item", String(200), primary_key=True),
    Column("purchases", BigInteger, nullable=False, server_default=text("0")),
    Column("quantity", BigInteger, nullable=False, server_default=text("0")),
    Column("spent_cents", BigInteger, nullable=False, server_default=text("0")),
)

login_failures = Table(
    "login_failures",
    metadata,
    # Failed sign-ins in one fixed window, shared by every instance (revision 0003). `limit_name`
    # says which count: "account" (one username from one address) or "address" (across usernames).
    Column("limit_name", String(16), primary_key=True),
    Column("subject", String(120), primary_key=True),
    Column("window_ends_at", Timestamp, primary_key=True),
    Column("failures", Integer, nullable=False),
)
# Housekeeping forgets windows that have ended.
Index("ix_login_failures_window_ends", login_failures.c.window_ends_at)


# What the database keeps by its own triggers: each kind's DDL is the statements named
# `<kind>_ddl_*` in sql/ (counters.<dialect>.sql, rollups.<dialect>.sql), run in file order.
KEPT = ("counts", "rollups")
# Server functions the service calls, made the same way (`writes_ddl_*`: purchases.postgresql.sql).
SERVER_FUNCTIONS = ("writes",)


def trigger_ddl(dialect: str, kinds: tuple[str, ...] = KEPT) -> list[str]:
    """The DDL of the triggers (and their functions) that keep these kinds, in the order it runs."""
    prefixes = tuple(f"{kind}_ddl_" for kind in kinds)
    return [statement.source for statement in load_queries(dialect) if statement.name.startswith(prefixes)]


def trigger_tables(dialect: str, kinds: tuple[str, ...] = KEPT) -> dict[str, str]:
    """Each keeping trigger's name, and the table it is on (for the drift check and drops)."""
    made = re.compile(r"CREATE TRIGGER (\w+) (?:AFTER|BEFORE) [A-Z ]+ ON (\w+)")
    return {match[1]: match[2] for ddl in trigger_ddl(dialect, kinds) for match in made.finditer(ddl)}


def trigger_functions(dialect: str, kinds: tuple[str, ...] = KEPT) -> list[str]:
    """The trigger functions PostgreSQL needs (SQLite's triggers carry their own bodies)."""
    made = re.compile(r"CREATE OR REPLACE FUNCTION (\w+)\(")
    return [match[1] for ddl in trigger_ddl(dialect, kinds) for match in made.finditer(ddl)]


def create_triggers(connection: Connection, kinds: tuple[str, ...] = KEPT) -> None:
    """Make the keeping triggers, or make them again (an interrupted migration runs twice)."""
    drop_triggers(connection, kinds)
    for ddl in trigger_ddl(connection.dialect.name, kinds):
        connection.execute(text(ddl))


def drop_triggers(connection: Connection, kinds: tuple[str, ...] = KEPT) -> None:
    """Drop the keeping triggers, then (PostgreSQL) their functions."""
    dialect = connection.dialect.name
    on_table = dialect == "postgresql"  # PostgreSQL names a trigger within its table
    for name, table in trigger_tables(dialect, kinds).items():
        connection.execute(text(f"DROP TRIGGER IF EXISTS {name}" + (f" ON {table}" if on_table else "")))
    for function in trigger_functions(dialect, kinds):
        connection.execute(text(f"DROP FUNCTION IF EXISTS {function}"))  # (its name is not overloaded)


# Whatever builds the schema from this metadata builds the triggers with it.
event.listen(
    metadata,
    "after_create",
    lambda target, connection, **kw: create_triggers(connection, KEPT + SERVER_FUNCTIONS),
)
