"""How the social lists are read: stable keyset pages, one statement a page, indexes not scans."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import asdict, replace
from typing import Any

import pytest
from starlette.testclient import TestClient

from service import social
from service.bench.sizes import SeedSize
from service.config import Settings, load_settings
from service.db import Database, open_database
from service.migrations.schema import prepare_schema
from service.postgres_backend import PostgresConnection
from service.seed import seed
from service.sqlite_backend import SQLiteConnection, SQLitePool
from service.timestamps import utc_now
from tests.conftest import bearer, login, table_connection
from tests.test_social import post, user


def every_page(
    client: TestClient, path: str, headers: dict[str, str] | None = None, **params: Any
) -> list[int]:
    ids, cursor = [], None
    while True:
        body = client.get(
            path, params={**params, **({"cursor": cursor} if cursor else {})}, headers=headers
        ).json()
        ids += [item["id"] for item in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            return ids


def test_pages_are_stable_when_posts_share_a_timestamp(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    tim = user(client, "tim")
    moment = utc_now()
    monkeypatch.setattr(social, "utc_now", lambda: moment)
    made = [post(client, tim, f"p{n}")["id"] for n in range(17)]
    assert len({client.get(f"/posts/{i}").json()["created_at"] for i in made}) == 1
    for path in ("/posts", "/users/tim/posts", "/feed"):
        assert every_page(client, path, headers=tim, limit=4) == sorted(made, reverse=True), path


def test_no_duplicates_or_gaps_while_new_posts_arrive(client: TestClient) -> None:
    tim = user(client, "tim")
    existing = [post(client, tim, f"old {n}")["id"] for n in range(10)]
    seen, cursor = [], None
    for round_ in range(10):
        body = client.get("/posts", params={"limit": 3, **({"cursor": cursor} if cursor else {})}).json()
        seen += [item["id"] for item in body["items"]]
        post(client, tim, f"new {round_}")  # lands before page one: never inside later pages
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(existing, reverse=True)


def test_comment_pages_are_stable_oldest_first(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    tim = user(client, "tim")
    p = post(client, tim)
    moment = utc_now()
    monkeypatch.setattr(social, "utc_now", lambda: moment)
    made = [
        client.post(f"/posts/{p['id']}/comments", json={"body": f"c{n}"}, headers=tim).json()["id"]
        for n in range(9)
    ]
    assert every_page(client, f"/posts/{p['id']}/comments", limit=2) == sorted(made)


@pytest.fixture
def statements_sent(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The name of every statement a driver connection was given while the test runs (both backends'
    connections, whether reached through a `databases.Connection`, borrowed for one statement, or
    queued on a SQLite read lane)."""
    sent: list[str] = []
    inside: list[bool] = []  # SQLite's fetch_one runs its fetch_all: count the outer call only
    for backend in (SQLiteConnection, PostgresConnection, SQLitePool):
        for method in (
            "fetch_all",
            "fetch_one",
            "execute",
            "execute_many",
            "fetch_all_atomically",
            "read_alone",
            "write_alone",
        ):
            real = getattr(backend, method, None)
            if real is None:
                continue

            async def counting(self: Any, query: Any, *args: Any, _real: Any = real, **kwargs: Any) -> Any:
                queries = query if isinstance(query, list) else [query]
                if not inside:
                    sent.extend(q.name if hasattr(q, "name") else str(q) for q in queries)
                inside.append(True)
                try:
                    return await _real(self, query, *args, **kwargs)
                finally:
                    inside.pop()

            monkeypatch.setattr(backend, method, counting)
    yield sent


def test_each_posts_page_is_one_statement_however_many_posts_it_holds(
    client: TestClient, statements_sent: list[str]
) -> None:
    tim, sue = user(client, "tim"), user(client, "sue")
    client.put("/users/sue/follow", headers=tim)
    for n in range(25):
        p = post(client, sue, f"p{n}")
        client.put(f"/posts/{p['id']}/like", headers=sue)
        client.put(f"/posts/{p['id']}/repost", headers=tim)
        client.post(f"/posts/{p['id']}/comments", json={"body": "c"}, headers=sue)
    for path, headers, expected in [
        ("/posts", None, ["list_posts"]),
        ("/users/sue/posts", None, ["list_posts_of_user"]),
        (f"/posts/{p['id']}", None, ["get_post"]),
        ("/feed", tim, ["find_live_session", "feed"]),  # the token's session check, then the page
    ]:
        statements_sent.clear()
        response = client.get(path, params={"limit": 20}, headers=headers)
        assert response.status_code == 200
        items = response.json().get("items", [response.json()])
        assert len(items) == (1 if "items" not in response.json() else 20)
        assert all(item["like_count"] == 1 and item["comment_count"] == 1 for item in items)
        assert statements_sent == expected, path


SEEDED = SeedSize(users=1000, posts=10_000, likes=50_000, reposts=10_000, comments=20_000, follows=10_000)


async def _seeded_plans(settings: Settings) -> dict[str, str]:
    prepare_schema(settings.database_url)
    seed(settings.database_url, SEEDED, bcrypt_rounds=4)
    db: Database = open_database(settings)
    await db.connect()
    try:
        plans = {}
        async with db.connection() as connection:
            raw = connection.raw_connection
            for name in ("list_posts", "feed", "list_posts_of_user"):
                statement = getattr(db.sql, name)
                # The plan the service's connections keep: the generic one (plan_cache_mode), which
                # no value changes, so the values here are NULLs.
                await raw.execute(f"PREPARE {name} AS {statement.sql}")
                nulls = ", ".join("NULL" for _ in statement.parameters)
                lines = await raw.fetch(f"EXPLAIN EXECUTE {name}({nulls})")
                await raw.execute(f"DEALLOCATE {name}")
                plans[name] = "\n".join(line[0] for line in lines)
        return plans
    finally:
        await db.disconnect()


def test_postgres_reads_seeded_posts_through_indexes(postgres_database: str) -> None:
    direct = replace(load_settings(environ={}, env_file=None), database_url=postgres_database)
    plans = asyncio.run(_seeded_plans(direct))
    for name, plan in plans.items():
        assert "Seq Scan on posts" not in plan, f"{name}:\n{plan}"
        assert "Seq Scan on likes" not in plan, f"{name}:\n{plan}"
        assert "Index" in plan, f"{name}:\n{plan}"
        assert "$1" in plan, f"{name}: not the generic plan:\n{plan}"


def index_definitions(database_url: str) -> list[tuple[str, str]]:
    """Every index of the database and its definition (SQLite's from sqlite_master)."""
    with table_connection(database_url) as conn:
        if database_url.startswith("sqlite"):
            query = "SELECT name, coalesce(sql, '') FROM sqlite_master WHERE type = 'index' ORDER BY name"
        else:
            query = "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1"
        return [tuple(row) for row in conn.execute(query).fetchall()]


def test_the_seed_loads_the_shape_it_is_asked_for_with_every_count_and_rollup_exact(
    settings: Settings, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service import seed as seed_module
    from tests.conftest import table_counts
    from tests.test_counts import count_errors
    from tests.test_rollups import rollup_errors

    asked = SeedSize(
        users=30, posts=200, likes=500, reposts=100, comments=300, follows=50, customers=20, purchases=1000
    )
    prepare_schema(settings.database_url)
    indexes = index_definitions(database_url)
    # As for a large set: the empty tables are loaded without their secondary indexes, built after.
    monkeypatch.setattr(seed_module, "BULK_ROWS", 100)
    loaded = seed(settings.database_url, asked, 4)
    assert index_definitions(database_url) == indexes
    assert loaded == asdict(asked)
    assert {kind: count for kind, count in table_counts(database_url).items() if kind in loaded} == loaded
    # A second seed lands beside the first (ids past it, its own counts and the same days' rollups).
    assert seed(settings.database_url, asked, 4, random_seed=7) == loaded
    twice = {kind: 2 * count for kind, count in loaded.items()}
    assert {kind: table_counts(database_url)[kind] for kind in loaded} == twice
    assert count_errors(database_url) == []
    assert rollup_errors(database_url) == []


def test_seeded_users_can_sign_in(client: TestClient, settings: Settings) -> None:
    from service.seed import SEED_PASSWORD

    seed(settings.database_url, SeedSize(users=2, posts=3, likes=1, reposts=1, comments=1, follows=1), 4)
    with table_connection(settings.database_url) as conn:
        username = conn.execute("SELECT username FROM users ORDER BY id LIMIT 1").fetchone()[0]
    token = login(client, username, SEED_PASSWORD)
    assert client.get("/users/me", headers=bearer(token)).json()["username"] == username


def test_a_seed_by_the_tables_owner_who_is_no_superuser_keeps_every_count(postgres_database: str) -> None:
    """Only a superuser may skip the triggers for the whole session; the tables' owner turns the
    service's off and on again inside the seed's transaction. Both leave the counts exact."""
    import secrets

    import psycopg

    from tests.test_counts import count_errors
    from tests.test_rollups import rollup_errors

    owner, name = f"seed_owner_{secrets.token_hex(3)}", f"seed_owned_{secrets.token_hex(3)}"
    with psycopg.connect(postgres_database, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {owner} LOGIN NOSUPERUSER")
        admin.execute(f"CREATE DATABASE {name} OWNER {owner}")
    try:
        url = postgres_database.rsplit("/", 1)[0].replace("://postgres@", f"://{owner}@") + f"/{name}"
        prepare_schema(url)
        size = SeedSize(
            users=30, posts=200, likes=500, reposts=100, comments=300, follows=50, customers=20, purchases=900
        )
        assert seed(url, size, 4) == asdict(size)
        with psycopg.connect(url) as conn:
            disabled = conn.execute("SELECT count(*) FROM pg_trigger WHERE tgenabled = 'D'").fetchone()
        assert disabled == (0,)
        assert count_errors(url) == []
        assert rollup_errors(url) == []
    finally:
        with psycopg.connect(postgres_database, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            admin.execute(f"DROP ROLE IF EXISTS {owner}")
