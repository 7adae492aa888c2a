"""`python -m service db ...`: upgrade, downgrade, current, history, check, revision."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

from alembic import command

from service.config import MigrationPolicy
from service.migrations.schema import (
    SchemaRefused,
    SchemaState,
    adopt,
    alembic_config,
    bring_to_head,
    differences,
    known_revisions,
    migrate,
    read_state,
    refuse_unknown_revision,
    schema_connection,
    schema_lock,
    scripts,
)


def add_db_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    db = commands.add_parser(
        "db", help="schema migrations: upgrade, downgrade, current, history, check, revision"
    )
    actions = db.add_subparsers(dest="action", metavar="ACTION", required=True)
    upgrade = actions.add_parser("upgrade", help="migrate to REV (default: head); creates a new database")
    upgrade.add_argument("revision", nargs="?", default="head", metavar="REV")
    downgrade = actions.add_parser("downgrade", help="migrate back to REV (e.g. 0001, or -1)")
    downgrade.add_argument("revision", metavar="REV")
    actions.add_parser("current", help="the database's revision, and whether it is the code's head")
    actions.add_parser("history", help="every revision, oldest first, the database's marked")
    actions.add_parser(
        "check", help="exit 1 when migrations are pending or the tables differ from the code (a deploy gate)"
    )
    revision = actions.add_parser(
        "revision", help="write a new migration from the difference between the migrations and tables.py"
    )
    revision.add_argument("-m", "--message", required=True, help="what the migration does")


def run_db_command(database_url: str, policy: MigrationPolicy, args: argparse.Namespace) -> int:
    action = {
        "upgrade": upgrade,
        "downgrade": downgrade,
        "current": current,
        "history": history,
        "check": check,
        "revision": revision,
    }[args.action]
    return action(database_url, policy, args)


def upgrade(database_url: str, policy: MigrationPolicy, args: argparse.Namespace) -> int:
    """Migrate to a revision; a new database is created at head, an unversioned one adopted first."""
    with schema_connection(database_url) as connection, schema_lock(connection, policy.wait_seconds):
        state = read_state(connection)
        allowed = dataclasses.replace(policy, migrate_on_start=True)  # asked for by name
        if args.revision in ("head", state.head):
            did = bring_to_head(connection, state, allowed)
        else:
            refuse_unknown_revision(state)
            if state.predates_migrations:
                adopt(connection)
            migrate(connection, allowed, args.revision)
            did = f"migrated {state.revision or 'none'} -> {read_state(connection).revision}"
    print(did)
    return 0


def downgrade(database_url: str, policy: MigrationPolicy, args: argparse.Namespace) -> int:
    with schema_connection(database_url) as connection, schema_lock(connection, policy.wait_seconds):
        state = read_state(connection)
        refuse_unknown_revision(state)
        if state.revision is None:
            raise SchemaRefused("the database has no revision to go back from")
        migrate(connection, policy, args.revision, downgrade=True)
        print(f"migrated {state.revision} -> {read_state(connection).revision or 'base (no tables)'}")
    return 0


def _describe_state(state: SchemaState) -> str:
    if state.revision == state.head:
        return f"{state.revision} (head)"
    if state.revision is None:
        return f"{state.revision_label} (head is {state.head})"
    if state.revision not in known_revisions():
        return f"{state.revision}: unknown to this code (head is {state.head}): a newer release migrated it"
    return f"{state.revision} (behind head {state.head}: `db upgrade` applies the rest)"


def current(database_url: str, policy: MigrationPolicy, args: argparse.Namespace) -> int:
    with schema_connection(database_url) as connection:
        print(_describe_state(read_state(connection)))
    return 0


def history(database_url: str, policy: MigrationPolicy, args: argparse.Namespace) -> int:
    with schema_connection(database_url) as connection:
        at = read_state(connection).revision
    for script in reversed(list(scripts().walk_revisions())):
        marks = [
            mark for mark, holds in (("head", script.is_head), ("current", script.revision == at)) if holds
        ]
        suffix = f"  ({', '.join(marks)})" if marks else ""
        print(f"{script.revision}  {script.doc}{suffix}")
    return 0


def check(database_url: str, policy: MigrationPolicy, args: argparse.Namespace) -> int:
    """0 when the database is at head and its tables are what the code says; 1 otherwise."""
    with schema_connection(database_url) as connection:
        state = read_state(connection)
        if state.revision != state.head:
            print(f"not at head: {_describe_state(state)}", file=sys.stderr)
            return 1
        drift = differences(connection)
    if drift:
        print("the tables differ from the code:\n  " + "\n  ".join(drift), file=sys.stderr)
        return 1
    print(f"{state.head} (head); the tables match the code")
    return 0


def revision(database_url: str, policy: MigrationPolicy, args: argparse.Namespace) -> int:
    """Autogenerate the next revision by comparing tables.py with a scratch SQLite database that the
    existing migrations have brought to head (never the configured one: its state is no input)."""
    with tempfile.TemporaryDirectory(prefix="service-revision-") as scratch:
        url = f"sqlite:///{Path(scratch) / 'head.db'}"
        with schema_connection(url) as connection, schema_lock(connection, policy.wait_seconds):
            migrate(connection, policy, "head")
            if not differences(connection):
                print("tables.py and the migrations agree: nothing to write", file=sys.stderr)
                return 1
            numbers = [
                int(script.revision) for script in scripts().walk_revisions() if script.revision.isdigit()
            ]
            script = command.revision(
                alembic_config(connection),
                message=args.message,
                autogenerate=True,
                rev_id=f"{max(numbers, default=0) + 1:04d}",
            )
    path = script.path if script is not None and not isinstance(script, list) else "?"
    print(f"wrote {path}: read it, adjust it (see README, Schema changes), and add a test")
    return 0
