"""The stock `databases` asyncpg backend, with named statements sent as they were compiled at start-up.

asyncpg prepares and caches each distinct SQL text per connection, so a named statement costs one
round trip and no SQLAlchemy compile. Anything else (a plain string) takes the stock path.
"""

from __future__ import annotations

from typing import Any

from databases.backends.postgres import PostgresBackend as StockPostgresBackend
from databases.backends.postgres import PostgresConnection as StockPostgresConnection
from sqlalchemy.sql import ClauseElement

from service.queries import bound


async def _keep_session(connection: Any) -> None:
    """Release without asyncpg's default reset (RESET ALL; UNLISTEN *; CLOSE ALL; unlock all).

    That reset is a round trip on every release. The service never leaves session state behind -
    no SET, LISTEN, session advisory locks or cursors outside a transaction - and asyncpg still
    rolls back an open transaction before calling this, so there is nothing to reset.
    """


def _affected_rows(status: str) -> int:
    # asyncpg returns the command tag: "UPDATE 3", "INSERT 0 1", "DELETE 0".
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


class PostgresBackend(StockPostgresBackend):
    def __init__(self, database_url: Any, **options: Any) -> None:
        options.pop("busy_timeout_ms", None)
        options.setdefault("server_settings", {"application_name": "purchase-feed-service"})
        options.setdefault("reset", _keep_session)
        super().__init__(database_url, **options)

    @property
    def pool(self) -> Any:
        return self._pool

    def connection(self) -> PostgresConnection:
        return PostgresConnection(self, self._dialect)


class PostgresConnection(StockPostgresConnection):
    async def fetch_all(self, query: ClauseElement) -> list[Any]:
        named = bound(query)
        if named is not None:
            return list(await self.raw_connection.fetch(named.statement.sql, *named.arguments))
        return list(await super().fetch_all(query))

    async def fetch_one(self, query: ClauseElement) -> Any | None:
        named = bound(query)
        if named is not None:
            return await self.raw_connection.fetchrow(named.statement.sql, *named.arguments)
        return await super().fetch_one(query)

    async def execute(self, query: ClauseElement) -> Any:
        """Run a statement; for a named one, return how many rows it changed."""
        named = bound(query)
        if named is not None:
            status = await self.raw_connection.execute(named.statement.sql, *named.arguments)
            return _affected_rows(status)
        return await super().execute(query)

    async def execute_many(self, queries: list[ClauseElement]) -> None:
        named = [bound(query) for query in queries]
        if named and named[0] is not None:
            first = named[0].statement
            if all(query is not None and query.statement is first for query in named):
                await self.raw_connection.executemany(
                    first.sql, [query.arguments for query in named if query is not None]
                )
                return
        for query in queries:
            await self.execute(query)
