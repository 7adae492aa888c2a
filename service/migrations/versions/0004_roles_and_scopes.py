"""users.role and api_keys.scopes, for who may call what (service/access.py).

Revision 0004, after 0003. Two NOT NULL columns with a constant default: on PostgreSQL (11 and
later) a change to the catalogue only (a brief ACCESS EXCLUSIVE lock, no table rewrite, existing
rows read the default); on SQLite an in-place ADD COLUMN. Then a partial index of the staff, built
CONCURRENTLY on PostgreSQL (writes go on while it reads the users table). What existing rows get:

- every user is a `member`: before this revision every account could read and write the purchase
  ledger, and anyone can register one, so no account keeps that right by default. Staff are made
  with `python -m service user set-role USERNAME staff`; the service says so at start-up while
  there are none.
- every API key keeps every scope, so machine callers go on working unchanged.

The release before it never names either column, so it keeps working on this schema (it lets any
signed-in user into the ledger, as it always did, until it is replaced).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from service.migrations import outside_transaction

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen here as this revision wrote them (tables.ALL_SCOPES may grow later).
SCOPES_OF_EXISTING_KEYS = "purchases:write purchases:read reports:read"


def upgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "scopes",
                sa.String(length=200),
                server_default=sa.text(f"'{SCOPES_OF_EXISTING_KEYS}'"),
                nullable=False,
            )
        )
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("role", sa.String(length=16), server_default=sa.text("'member'"), nullable=False)
        )
    # Built without blocking sign-ups (it reads every user once, and holds only the staff).
    with outside_transaction():
        op.create_index(
            "ix_users_staff",
            "users",
            ["id"],
            unique=False,
            postgresql_where=sa.text("role = 'staff'"),
            sqlite_where=sa.text("role = 'staff'"),
            postgresql_concurrently=True,
        )


def downgrade() -> None:
    # Forgets who is staff and what each key was limited to; the release before 0004 ignores both.
    # SQLite rebuilds each table to drop a column (batch mode); rows and indexes are copied.
    op.drop_index("ix_users_staff", table_name="users")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("role")
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_column("scopes")
