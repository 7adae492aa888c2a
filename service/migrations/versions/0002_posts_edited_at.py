"""posts.edited_at, for editing posts (PATCH /posts/{id}).

Revision 0002, after 0001. A nullable column without a default: on PostgreSQL a change to the
catalogue only (a brief ACCESS EXCLUSIVE lock, no table rewrite); on SQLite an in-place ADD COLUMN.
The code before it never names the column, so it keeps working on this schema (expand first).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("posts", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "edited_at", sa.DateTime(timezone=True).with_variant(sa.Text(), "sqlite"), nullable=True
            )
        )


def downgrade() -> None:
    # SQLite rebuilds the table to drop a column (batch mode); its rows and indexes are copied.
    with op.batch_alter_table("posts", schema=None) as batch_op:
        batch_op.drop_column("edited_at")
