"""Where the database stands against the code, and the one step that brings it to head.

`service.tables.metadata` is the schema; the Alembic revisions in `versions/` are how a deployed
database follows it. Before the service serves (and for `python -m service db ...`):

- a brand-new database is created from the metadata and stamped at head, in one step;
- a database made before migrations existed (revision one's tables, no alembic_version) is
  adopted as revision one, never recreated or emptied;
- behind head: migrated when MIGRATE_ON_START is on, refused otherwise;
- at a revision the code does not know (a newer release migrated it): refused;
- at head but not what the metadata says (someone altered a table by hand): refused, with the
  differences as Alembic's autogenerate comparison finds them.

Workers and containers starting together queue on one lock (a PostgreSQL advisory lock, SQLite's
write lock): one migrates, the others wait, then find the database at head.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, create_engine, inspect, text
from sqlalchemy.exc import DBAPIError, OperationalError

from service.config import MigrationPolicy
from service.sqlite_backend import sqlite_path
from service.tables import metadata, trigger_tables

log = logging.getLogger("service.migrations")

MIGRATIONS_DIRECTORY = Path(__file__).resolve().parent

# Any constant will do; it only has to be the same in every worker of every version.
SCHEMA_LOCK_KEY = 7_311_202_611

# The tables of revision one (versions/0001_baseline.py), frozen here: a database holding all of
# them and no alembic_version is what the service made before it had migrations.
REVISION_ONE = "0001"
REVISION_ONE_TABLES = frozenset(
    {
        "api_keys",
        "customers",
        "purchases",
        "idempotency_keys",
        "users",
        "sessions",
        "posts",
        "comments",
        "likes",
        "reposts",
        "follows",
    }
)

_LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL: lock_timeout ran out


class SchemaRefused(Exception):
    """The service must not serve on this database as it is; the message says why and what to do."""


@dataclass(frozen=True)
class SchemaState:
    revision: str | None  # alembic_version's row; None when there is none
    head: str
    service_tables: frozenset[str]  # which of revision one's tables exist

    @property
    def is_empty(self) -> bool:
        return self.revision is None and not self.service_tables

    @property
    def predates_migrations(self) -> bool:
        return self.revision is None and self.service_tables == REVISION_ONE_TABLES

    @property
    def revision_label(self) -> str:
        if self.revision is not None:
            return self.revision
        if self.is_empty:
            return "none: an empty database"
        if self.predates_migrations:
            return "none: made before migrations, adopted as 0001 by `db upgrade`"
        return "none, and only some of this service's tables"


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """Compare only this service's tables: a database may hold others (an extension's, say)."""
    return type_ != "table" or name in metadata.tables


# One set of options for the drift check, `db check` and `db revision`, so that they agree.
COMPARE_OPTIONS: dict[str, Any] = {"compare_type": True, "include_name": include_name}


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration, made in code: no alembic.ini to ship or to get out of step."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIRECTORY))
    config.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    config.attributes["connection"] = connection
    return config


def scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def known_revisions() -> set[str]:
    return {script.revision for script in scripts().walk_revisions()}


def head_revision() -> str:
    head = scripts().get_current_head()
    assert head is not None, "versions/ holds no revision"
    return head


def read_state(connection: Connection) -> SchemaState:
    revision = MigrationContext.configure(connection).get_current_revision()
    present = set(inspect(connection).get_table_names())
    return SchemaState(revision, head_revision(), frozenset(present & REVISION_ONE_TABLES))


def differences(connection: Connection) -> list[str]:
    """How the live schema differs from the metadata, one `table.column: what differs` a line."""
    context = MigrationContext.configure(connection, opts=COMPARE_OPTIONS)
    found = [describe(diff) for diff in _flatten(compare_metadata(context, metadata))]
    return found + trigger_differences(connection)


def trigger_differences(connection: Connection) -> list[str]:
    """The keeping triggers (which Alembic's comparison does not see) the database lacks or adds."""
    expected = trigger_tables(connection.dialect.name)
    if connection.dialect.name == "sqlite":
        query = "SELECT name, tbl_name FROM sqlite_master WHERE type = 'trigger'"
    else:
        query = (
            "SELECT t.tgname, c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
            "WHERE NOT t.tgisinternal AND c.relnamespace = current_schema()::regnamespace"
        )
    present = {name: table for name, table in connection.exec_driver_sql(query) if table in metadata.tables}
    missing = [
        f"{table}.{name}: trigger missing from the database"
        for name, table in expected.items()
        if present.get(name) != table
    ]
    extra = [
        f"{table}.{name}: trigger in the database but not in the code"
        for name, table in present.items()
        if name not in expected
    ]
    return missing + extra


def _flatten(diffs: list[Any]) -> Iterator[tuple[Any, ...]]:
    for diff in diffs:
        # Column changes come grouped in a list per column; the rest are single tuples.
        yield from (diff if isinstance(diff, list) else [diff])


def describe(diff: tuple[Any, ...]) -> str:
    kind = diff[0]
    where = {"add": "missing from the database", "remove": "in the database but not in the code"}
    if kind in ("add_table", "remove_table"):
        return f"{diff[1].name}: table {where[kind.split('_')[0]]}"
    if kind in ("add_column", "remove_column"):
        return f"{diff[2]}.{diff[3].name}: column {where[kind.split('_')[0]]}"
    if kind in ("add_index", "remove_index"):
        index = diff[1]
        columns = ", ".join(column.name for column in index.columns)
        unique = "unique index" if index.unique else "index"
        return f"{index.table.name}.{index.name}: {unique} on ({columns}) {where[kind.split('_')[0]]}"
    if kind in ("add_constraint", "remove_constraint", "add_fk", "remove_fk"):
        constraint = diff[1]
        columns = ", ".join(column.name for column in constraint.columns)
        what = "foreign key" if kind.endswith("fk") else "unique constraint"
        return f"{constraint.table.name}.{columns}: {what} {where[kind.split('_')[0]]}"
    if kind == "modify_type":
        return f"{diff[2]}.{diff[3]}: type is {diff[5]} in the database, {diff[6]} in the code"
    if kind == "modify_nullable":

        def nullability(nullable: bool) -> str:
            return "nullable" if nullable else "NOT NULL"

        return (
            f"{diff[2]}.{diff[3]}: {nullability(diff[5])} in the database, {nullability(diff[6])} in the code"
        )
    if kind.startswith("modify_"):
        what = kind.removeprefix("modify_").replace("_", " ")
        return f"{diff[2]}.{diff[3]}: {what} is {diff[5]!r} in the database, {diff[6]!r} in the code"
    return f"{kind}: {diff[1:]!r}"


# Connections


def sync_url(database_url: str) -> str:
    """The URL of the sync engine that runs DDL: psycopg for PostgreSQL, sqlite3 for SQLite.

    Several hosts (`postgresql://u@h1:p1,h2:p2/db?target_session_attrs=read-write`, as libpq and
    asyncpg read them) are spelled as SQLAlchemy wants them: `postgresql+psycopg://u@/db?host=h1:p1&
    host=h2:p2&...`; libpq then tries them in turn as it would the first spelling."""
    url = database_url.replace("postgresql://", "postgresql+psycopg://", 1)
    parts = urlsplit(url)
    user, at, hosts = parts.netloc.rpartition("@")
    if "," not in hosts:
        return url
    query = "&".join(
        [*(f"host={host}" for host in hosts.split(",")), *([parts.query] if parts.query else [])]
    )
    return urlunsplit(parts._replace(netloc=user + at, query=query))


@contextlib.contextmanager
def schema_connection(database_url: str) -> Iterator[Connection]:
    """A connection of the sync engine, for schema work only, closed afterwards."""
    if database_url.startswith("sqlite"):
        path = Path(sqlite_path(database_url))
        path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 30})
    else:
        engine = create_engine(sync_url(database_url))
    try:
        with engine.connect() as connection:
            if connection.dialect.name == "sqlite":
                _switch_to_wal(connection)
                # A table rebuilt in batch mode is dropped and renamed: with foreign keys on, the
                # drop would cascade to every row that refers to it. (Off is SQLite's default; say so.)
                connection.exec_driver_sql("PRAGMA foreign_keys = OFF")
            yield connection
    finally:
        engine.dispose()


def _switch_to_wal(connection: Connection, patience_seconds: float = 30.0) -> None:
    """WAL is a property of the file: set once, by whichever worker gets there first.

    SQLite answers "database is locked" at once, without waiting out its busy timeout, when two
    connections race to change the journal mode of a new file; so wait and try again here.
    """
    deadline = time.monotonic() + patience_seconds
    pause = 0.01
    while True:
        try:
            if connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal":
                return
            connection.exec_driver_sql("PRAGMA journal_mode = WAL")
            return
        except OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.5)


@contextlib.contextmanager
def schema_lock(connection: Connection, wait_seconds: float) -> Iterator[None]:
    """Hold the schema lock: one process at a time changes the schema.

    PostgreSQL: a session advisory lock, so that each migration can still commit on its own (and a
    `CREATE INDEX CONCURRENTLY` can run outside a transaction). SQLite: BEGIN IMMEDIATE, the write
    lock, held to the end; everything done under it commits at once or not at all.
    """
    connection.rollback()  # end the read-only transaction that looking around began
    deadline = time.monotonic() + wait_seconds
    if connection.dialect.name == "sqlite":
        _begin_immediate(connection, deadline)
        try:
            yield
            problems = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            if problems:
                raise SchemaRefused(
                    f"the migration would leave rows whose references are broken: {problems[:5]}"
                )
        except BaseException:
            connection.rollback()
            raise
        connection.commit()
        return
    while not connection.execute(
        text("SELECT pg_try_advisory_lock(:key)"), {"key": SCHEMA_LOCK_KEY}
    ).scalar():
        # Wait outside any transaction: an open one here is a snapshot that the holder's
        # CREATE INDEX CONCURRENTLY must wait out (it did, past its lock timeout, and failed).
        connection.rollback()
        if time.monotonic() > deadline:
            raise SchemaRefused(
                f"another process has held the schema lock for over {wait_seconds:.0f} s "
                "(a migration still running?); not starting"
            )
        time.sleep(0.1)
    connection.commit()
    try:
        yield
    finally:
        connection.rollback()
        connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": SCHEMA_LOCK_KEY})
        connection.commit()


def _begin_immediate(connection: Connection, deadline: float) -> None:
    while True:
        try:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
            return
        except OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise SchemaRefused(
                    "the SQLite file stayed locked by another process (a migration still running?); "
                    "not starting"
                ) from None
            connection.rollback()


# Changing the schema


def create_at_head(connection: Connection) -> None:
    """A brand-new database: every table from the metadata, stamped at head, in one transaction."""
    metadata.create_all(connection)
    command.stamp(alembic_config(connection), "head")
    _commit_unless_sqlite(connection)


def adopt(connection: Connection) -> None:
    """Record that a database made before migrations existed is at revision one."""
    command.stamp(alembic_config(connection), REVISION_ONE)
    _commit_unless_sqlite(connection)


def _commit_unless_sqlite(connection: Connection) -> None:
    # SQLite's work commits as a whole when schema_lock's BEGIN IMMEDIATE ends.
    if connection.dialect.name != "sqlite":
        connection.commit()


def migrate(connection: Connection, policy: MigrationPolicy, target: str, downgrade: bool = False) -> None:
    """Upgrade (or downgrade) to `target`. On PostgreSQL each migration is its own transaction, and
    its statements wait at most `lock_timeout_ms` for a lock: past that the migration rolls back,
    the service's traffic goes on, and it is tried again after a pause."""
    run = command.downgrade if downgrade else command.upgrade
    if connection.dialect.name == "sqlite":
        run(alembic_config(connection), target)
        return
    connection.execute(
        text("SELECT set_config('lock_timeout', :ms, false)"), {"ms": f"{policy.lock_timeout_ms}ms"}
    )
    connection.commit()
    pause = 0.25
    for attempt in range(policy.lock_retries + 1):
        try:
            run(alembic_config(connection), target)
            return
        except DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) != _LOCK_NOT_AVAILABLE:
                raise
            connection.rollback()
            if attempt == policy.lock_retries:
                raise SchemaRefused(
                    f"a migration waited {policy.lock_retries + 1} times for a table lock "
                    f"({policy.lock_timeout_ms} ms each) that a long transaction holds; "
                    "not starting (see pg_stat_activity)"
                ) from None
            log.warning(
                "a migration gave up waiting %d ms for a table lock; trying again in %.2f s (%d of %d)",
                policy.lock_timeout_ms,
                pause,
                attempt + 1,
                policy.lock_retries,
            )
            time.sleep(pause)
            pause = min(pause * 2, 5.0)


def prepare_schema(database_url: str, policy: MigrationPolicy | None = None) -> str:
    """Bring the database to the code's head, or raise SchemaRefused. Says what it did."""
    policy = policy or MigrationPolicy()
    started = time.perf_counter()
    with schema_connection(database_url) as connection:
        state = read_state(connection)
        if state.revision != state.head:
            with schema_lock(connection, policy.wait_seconds):
                state = read_state(connection)  # another worker may have got there first
                did = bring_to_head(connection, state, policy)
        else:
            did = f"at {state.head}"
        connection.rollback()
        drift = differences(connection)
        connection.rollback()
    if drift:
        raise SchemaRefused(
            f"the database is at revision {state.head} but its tables differ from the code "
            "(altered by hand?); not starting:\n  " + "\n  ".join(drift)
        )
    return f"schema {did} ({(time.perf_counter() - started) * 1000:.0f} ms)"


def bring_to_head(connection: Connection, state: SchemaState, policy: MigrationPolicy) -> str:
    if state.revision == state.head:
        return f"at {state.head}"
    refuse_unknown_revision(state)
    if not policy.migrate_on_start:
        raise SchemaRefused(
            f"the database is at revision {state.revision_label}, the code's head is "
            f"{state.head}, and MIGRATE_ON_START is off: run `python -m service db upgrade` first"
        )
    if state.is_empty:
        create_at_head(connection)
        return f"created at {state.head}"
    if state.revision is None:
        adopt(connection)
    migrate(connection, policy, "head")
    return f"migrated {state.revision or REVISION_ONE + ' (adopted)'} -> {state.head}"


def refuse_unknown_revision(state: SchemaState) -> None:
    """Refuse a database this code cannot reason about: a revision it does not know, or a partial set
    of its tables with no revision at all."""
    if state.revision is not None:
        if state.revision not in known_revisions():
            raise SchemaRefused(
                f"the database is at revision {state.revision}, which this code does not know (its head "
                f"is {state.head}): a newer release has migrated it. Run that release, or downgrade "
                f"the database with it (`python -m service db downgrade {state.head}`)"
            )
        return
    if state.service_tables and not state.predates_migrations:
        missing = ", ".join(sorted(REVISION_ONE_TABLES - state.service_tables))
        raise SchemaRefused(
            f"the database has some of this service's tables but no alembic_version, and lacks {missing}: "
            "not a database this service made; not starting"
        )
