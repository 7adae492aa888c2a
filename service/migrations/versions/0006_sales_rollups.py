"""daily_sales and customer_items, kept by triggers on purchases, filled from the purchases there.

Revision 0006, after 0005. Sales reports by day and by item read whole days from daily_sales, and
a customer's summary reads customer_items (see service.tables). As in 0005: the tables, then the
triggers (sql/rollups.<dialect>.sql), so that every purchase from here on is counted, whoever
records it (the release before this one too, during a rolling deploy); then the fill
(service.counters): on PostgreSQL a day of purchases or 5,000 customers at a time, each a short
transaction under SHARE locks on purchases (recording a purchase waits for that range), each
range replaced whole, so an interrupted run is simply run again. On SQLite, in the one migration
transaction. This release serves once the revision is done; until then the release before serves
its reports from the purchases, as it always did.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from service.counters import ROLLUPS, fill
from service.migrations import outside_transaction
from service.tables import create_triggers, drop_triggers

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KINDS = ("rollups",)


def _sums(*names: str) -> list[sa.Column[int]]:
    return [sa.Column(name, sa.BigInteger(), server_default=sa.text("0"), nullable=False) for name in names]


def upgrade() -> None:
    present = set(sa.inspect(op.get_bind()).get_table_names())
    if "daily_sales" not in present:
        op.create_table(
            "daily_sales",
            sa.Column("day", sa.Date().with_variant(sa.String(length=10), "sqlite"), nullable=False),
            sa.Column("item", sa.String(length=200), nullable=False),
            sa.Column("shard", sa.Integer(), autoincrement=False, nullable=False),
            *_sums("purchases", "quantity", "revenue_cents"),
            sa.PrimaryKeyConstraint("day", "item", "shard"),
        )
    if "customer_items" not in present:
        op.create_table(
            "customer_items",
            sa.Column("customer_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
            sa.Column("item", sa.String(length=200), nullable=False),
            *_sums("purchases", "quantity", "spent_cents"),
            sa.ForeignKeyConstraint(["customer_id"], ["customers.id"], ondelete="CASCADE"),
            sa.PrimaryKeyConstraint("customer_id", "item"),
        )
    create_triggers(op.get_bind(), KINDS)
    with outside_transaction():
        logging.getLogger("service.migrations").warning("0006: %s", fill(op.get_bind(), ROLLUPS))


def downgrade() -> None:
    drop_triggers(op.get_bind(), KINDS)
    op.drop_table("customer_items")
    op.drop_table("daily_sales")
