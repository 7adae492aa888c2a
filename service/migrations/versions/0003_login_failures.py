"""login_failures, for login throttling (POST /auth/login answers 429 past a count of failures).

Revision 0003, after 0002. A new table and its index: no lock on any table in use, nothing to
rewrite. The code before it never names the table, so it keeps working on this schema; the code
after it needs the table as soon as someone signs in.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "login_failures",
        sa.Column("limit_name", sa.String(length=16), nullable=False),
        sa.Column("subject", sa.String(length=120), nullable=False),
        sa.Column(
            "window_ends_at", sa.DateTime(timezone=True).with_variant(sa.Text(), "sqlite"), nullable=False
        ),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("limit_name", "subject", "window_ends_at"),
    )
    op.create_index("ix_login_failures_window_ends", "login_failures", ["window_ends_at"], unique=False)


def downgrade() -> None:
    # The counts are only ever minutes old: dropping them forgets recent failures, nothing more.
    op.drop_index("ix_login_failures_window_ends", table_name="login_failures")
    op.drop_table("login_failures")
