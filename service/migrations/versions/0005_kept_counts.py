"""post_counts and user_counts, kept by triggers, filled from the rows already there.

Revision 0005, after 0004. What a post or a user shows (likes, reposts, comments; posts, followers,
following) is read from these rows from now on, not counted on every read (see service.tables).

1. The two tables, then the triggers that keep them (sql/counters.<dialect>.sql, the same DDL a
   new database gets): from here on every change is counted, whoever makes it - the release
   before this one too, which knows nothing of counts and keeps serving during a rolling deploy.
2. The fill (service.counters): on PostgreSQL one range of ids at a time, each a short transaction
   that replaces its range's counts under SHARE locks (writers of those rows wait for that range,
   readers never). On SQLite, in the migration's one transaction.

While it runs the old release serves as before (it counts from the rows); this release serves once
the revision is done, so no reader of kept counts sees them half filled. Stopped part way (on
PostgreSQL the tables and triggers are committed before the fill), it is simply run again: the
tables are kept, the triggers made again, and every range filled again from the start.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from service.counters import COUNTS, fill
from service.migrations import outside_transaction
from service.tables import create_triggers, drop_triggers

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KINDS = ("counts",)  # the rollups' triggers come with their tables, in 0006


def _counts_table(name: str, owner: str, owner_table: str, *counts: str) -> None:
    op.create_table(
        name,
        sa.Column(owner, sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("shard", sa.Integer(), autoincrement=False, nullable=False),
        *(sa.Column(count, sa.Integer(), server_default=sa.text("0"), nullable=False) for count in counts),
        sa.ForeignKeyConstraint([owner], [f"{owner_table}.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint(owner, "shard"),
    )


def upgrade() -> None:
    present = set(sa.inspect(op.get_bind()).get_table_names())
    if "post_counts" not in present:
        _counts_table("post_counts", "post_id", "posts", "like_count", "repost_count", "comment_count")
    if "user_counts" not in present:
        _counts_table("user_counts", "user_id", "users", "post_count", "follower_count", "following_count")
    create_triggers(op.get_bind(), KINDS)
    with outside_transaction():
        logging.getLogger("service.migrations").warning("0005: %s", fill(op.get_bind(), COUNTS))


def downgrade() -> None:
    drop_triggers(op.get_bind(), KINDS)
    op.drop_table("user_counts")
    op.drop_table("post_counts")
