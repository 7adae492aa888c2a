"""Schema evolution: Alembic revisions generated from `service.tables`, applied before serving.

`schema.py` is the start-up step, `commands.py` the `db` command line, `versions/` the revisions.
What a revision may import from here is below.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from alembic import op


@contextlib.contextmanager
def outside_transaction() -> Iterator[None]:
    """For what PostgreSQL refuses inside a transaction (`CREATE INDEX CONCURRENTLY`): the
    revision's transaction is committed first and the block runs in autocommit.

    On SQLite a migration is one transaction holding the write lock from start to end (and
    Alembic's autocommit_block cannot run inside it), so the block simply runs in it.
    """
    context = op.get_context()
    if context.dialect.name == "postgresql":
        with context.autocommit_block():
            yield
    else:
        yield
