"""Alembic's environment: every command runs on the connection `python -m service db` hands it."""

from __future__ import annotations

from alembic import context

from service.migrations.schema import COMPARE_OPTIONS
from service.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `python -m service db ...`; there is no alembic.ini")

context.configure(
    connection=connection,
    target_metadata=metadata,
    # SQLite alters little in place: batch mode rebuilds a table where it must (a no-op elsewhere).
    render_as_batch=connection.dialect.name == "sqlite",
    # Each migration commits on its own, so one that needs to run outside a transaction
    # (CREATE INDEX CONCURRENTLY, in an autocommit_block) can, and a failure keeps the ones before.
    transaction_per_migration=True,
    **COMPARE_OPTIONS,
)

with context.begin_transaction():
    context.run_migrations()
