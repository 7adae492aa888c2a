"""ix_purchases_customer_sales in place of ix_purchases_customer: the report by customer from the
index alone.

Revision 0007, after 0006. The same key (customer_id, purchased_at, id), and on PostgreSQL the
quantity and total_cents beside it (INCLUDE), so that `GET /reports/sales?group_by=customer`
sums every purchase of a range in customer order by an index-only scan. The new index is built
CONCURRENTLY (writes go on while it reads the purchases; about 5 s for 5M), then the old one is
dropped CONCURRENTLY; a customer's purchases are listed by either meanwhile. On SQLite (no
INCLUDE) the same key under the new name, in the migration's transaction. An interrupted run left
an INVALID index behind: `db upgrade` drops it and builds it again.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from service.migrations import outside_transaction

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEY = ["customer_id", "purchased_at", "id"]


def _replace_index(old: str, new: str, include: list[str]) -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":  # what an interrupted run left: built again whole
        with outside_transaction():
            op.execute(sa.text(f"DROP INDEX CONCURRENTLY IF EXISTS {new}"))
    with outside_transaction():
        op.create_index(new, "purchases", KEY, postgresql_include=include, postgresql_concurrently=True)
        op.drop_index(old, table_name="purchases", postgresql_concurrently=True)


def upgrade() -> None:
    _replace_index("ix_purchases_customer", "ix_purchases_customer_sales", ["quantity", "total_cents"])


def downgrade() -> None:
    _replace_index("ix_purchases_customer_sales", "ix_purchases_customer", [])
