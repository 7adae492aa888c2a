"""record_purchases(), the server function that writes a group of single purchases (group commit).

Revision 0008, after 0007. PostgreSQL only (SQLite writes a group as one transaction of its own
statements): the function's statement is planned once per server session, so a group costs the
server the same directly and behind a transaction-mode pooler, where a statement sent as text is
parsed and planned on every call. The release before this one does not call it, so it may serve
during and after the upgrade; made with CREATE OR REPLACE, so an interrupted run is run again.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from service.tables import create_triggers, drop_triggers

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KINDS = ("writes",)


def upgrade() -> None:
    create_triggers(op.get_bind(), KINDS)


def downgrade() -> None:
    drop_triggers(op.get_bind(), KINDS)
