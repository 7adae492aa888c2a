"""keep_sales() puts all of one statement's purchases in one daily_sales shard.

Revision 0009, after 0008. PostgreSQL only (SQLite keeps one shard). Before, each purchase went to
the shard of its own id, so a batch of a thousand purchases over fifty items upserted up to eight
hundred rollup rows; now the statement's rows go to the shard of its first purchase: fifty rows.
Concurrent statements still spread over the shards, as single purchases always did. Which shard
holds a sale changes no answer (every read sums a day's shards), so the release before this one
runs correctly on either body: CREATE OR REPLACE swaps it in one statement, the triggers keep
calling it, and the downgrade leaves it in place.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op
from sqlalchemy import text

from service.queries import load_queries

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        bind.execute(text(load_queries("postgresql").rollups_ddl_keep_sales.source))


def downgrade() -> None:
    """Nothing to undo: 0008's code reads and writes the rollups the same way with either body."""
