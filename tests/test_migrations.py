"""Schema evolution: a database made by the code before migrations follows the code to head with
every row intact, start-up refuses what it cannot reason about, and tables.py never moves alone.

The "before" database is built from tests/schema_v1/ (the DDL that code ran, frozen) and rows
written here by hand: never from today's metadata.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bcrypt
import httpx2 as httpx
import psycopg
import pytest
from sqlalchemy import Engine, create_engine, inspect, text
from starlette.testclient import TestClient

from service.apikeys import hash_key
from service.app import create_app
from service.config import MigrationPolicy, Settings
from service.counters import COUNTS, ROLLUPS, Kept, fill
from service.migrations.schema import (
    SchemaRefused,
    differences,
    head_revision,
    migrate,
    prepare_schema,
    schema_connection,
    schema_lock,
    scripts,
    sync_url,
)
from service.queries import load_queries
from service.tables import metadata
from service.timestamps import to_text
from service.tokens import issue_access_token
from tests.conftest import (
    PASSWORD,
    PASSWORDS_SENT,
    ROOT,
    TEST_SECRET_KEY,
    bearer,
    free_port,
    run_sql,
    running_service,
    service_env,
    table_connection,
    table_counts,
    wait_until_answering,
)
from tests.test_counts import count_errors
from tests.test_rollups import rollup_errors

V1_SCHEMA = Path(__file__).resolve().parent / "schema_v1"
HEAD = head_revision()


@pytest.fixture(params=("sqlite", "postgresql"))
def backend(request: pytest.FixtureRequest) -> str:
    """The schema step always connects to the server itself (MIGRATION_DATABASE_URL), never
    through a transaction-mode pooler, so these tests have no PgBouncer variant."""
    return str(request.param)


@contextmanager
def engine_for(url: str) -> Iterator[Engine]:
    engine = create_engine(sync_url(url))
    try:
        yield engine
    finally:
        engine.dispose()


def revision_of(url: str) -> str | None:
    with engine_for(url) as engine, engine.connect() as conn:
        if "alembic_version" not in inspect(conn).get_table_names():
            return None
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def columns_of(url: str, table: str) -> list[str]:
    with engine_for(url) as engine:
        return [column["name"] for column in inspect(engine).get_columns(table)]


@dataclass(frozen=True)
class BeforeMigrations:
    """What the old code's database holds, and the credentials it had handed out."""

    api_key: str
    revoked_api_key: str
    token: dict[str, str]  # a live session's access token, as the old code issued it
    tim_id: int
    tim_post_id: int
    counts: dict[str, int]


def rows_in(url: str) -> dict[str, int]:
    """The tables holding rows, and how many: a revision's new, empty tables are no change to them,
    nor are the kept counts and rollups (0005, 0006), filled from the rest (and tested for it)."""
    derived = {"post_counts", "user_counts", "daily_sales", "customer_items"}
    return {name: count for name, count in table_counts(url).items() if count and name not in derived}


def build_database_before_migrations(url: str) -> BeforeMigrations:
    """The frozen schema of the code before migrations, and rows in every table."""
    dialect = "sqlite" if url.startswith("sqlite") else "postgresql"
    now = datetime.now(UTC).replace(microsecond=123456)

    def at(minutes: int) -> Any:
        moment = now + timedelta(minutes=minutes)
        return to_text(moment) if dialect == "sqlite" else moment

    PASSWORDS_SENT.add(PASSWORD)
    password_hash = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
    rows: list[tuple[str, dict[str, Any]]] = [
        (
            "INSERT INTO api_keys (name, key_hash, key_prefix, created_at, revoked_at)"
            " VALUES ('billing', :live, 'pfs_live00', :t, NULL), ('old', :dead, 'pfs_dead00', :t, :t)",
            {"live": hash_key("pfs_live-key"), "dead": hash_key("pfs_dead-key"), "t": at(-60)},
        ),
        (
            "INSERT INTO customers (email, name, revision, created_at, updated_at)"
            " VALUES ('tim@example.com', 'Tim', 2, :t, :t), ('sue@example.com', 'Sue', 1, :t, :t)",
            {"t": at(-50)},
        ),
        (
            "INSERT INTO purchases (customer_id, item, quantity, unit_price_cents, total_cents,"
            " purchased_at, captured_by, created_at) VALUES"
            " (1, 'book', 2, 1250, 2500, :a, 'billing', :a), (1, 'pen', 1, 199, 199, :b, 'billing', :b),"
            " (2, 'book', 1, 1250, 1250, :c, 'billing', :c)",
            {"a": at(-40), "b": at(-30), "c": at(-20)},
        ),
        (
            "INSERT INTO idempotency_keys (caller, key, request_hash, status_code, response_body,"
            " location, created_at) VALUES ('api-key:billing', 'retry-1', :h, 201, '{}', '/purchases/1', :t)",
            {"h": "0" * 64, "t": at(-40)},
        ),
        (
            "INSERT INTO users (username, email, password_hash, created_at)"
            " VALUES ('tim', 'tim@example.com', :h, :t), ('sue', 'sue@example.com', :h, :t)",
            {"h": password_hash, "t": at(-60)},
        ),
        (
            "INSERT INTO sessions (user_id, created_at, expires_at, revoked_at) VALUES (1, :t, :later, NULL)",
            {"t": at(-5), "later": at(55)},
        ),
        (
            "INSERT INTO posts (author_id, content, created_at)"
            " VALUES (1, 'tim says hi', :a), (1, 'tim again', :b), (2, 'sue here', :c)",
            {"a": at(-30), "b": at(-20), "c": at(-10)},
        ),
        (
            "INSERT INTO comments (post_id, author_id, body, created_at) VALUES (1, 2, 'hi tim', :t)",
            {"t": at(-9)},
        ),
        ("INSERT INTO likes (user_id, post_id, created_at) VALUES (2, 1, :t)", {"t": at(-8)}),
        ("INSERT INTO reposts (user_id, post_id, created_at) VALUES (2, 1, :t)", {"t": at(-8)}),
        ("INSERT INTO follows (follower_id, followee_id, created_at) VALUES (2, 1, :t)", {"t": at(-7)}),
    ]
    with engine_for(url) as engine, engine.begin() as conn:
        for statement in (V1_SCHEMA / f"{dialect}.sql").read_text().split(";"):
            if statement.strip():
                conn.exec_driver_sql(statement)
        for sql, values in rows:
            conn.execute(text(sql), values)
    token = issue_access_token(TEST_SECRET_KEY, 1, 1, now - timedelta(minutes=5), timedelta(hours=1))
    return BeforeMigrations(
        api_key="pfs_live-key",
        revoked_api_key="pfs_dead-key",
        token=bearer({"access_token": token}),
        tim_id=1,
        tim_post_id=1,
        counts=rows_in(url),
    )


def assert_everything_readable(api: Any, old: BeforeMigrations) -> None:
    """Every kind of row the old code wrote, read back through today's API."""
    key = {"X-API-Key": old.api_key}
    purchases = api.get("/purchases", headers=key)
    assert purchases.status_code == 200, purchases.text
    assert [(p["item"], p["quantity"]) for p in purchases.json()["items"]] == [
        ("book", 1),
        ("pen", 1),
        ("book", 2),
    ]
    summary = api.get(f"/customers/{old.tim_id}/summary", headers=key).json()
    assert (summary["purchase_count"], summary["total_spent"]) == (2, "26.99")
    assert api.get("/purchases", headers={"X-API-Key": old.revoked_api_key}).status_code == 401

    posts = api.get("/posts").json()["items"]
    assert [
        (p["id"], p["author"], p["like_count"], p["repost_count"], p["comment_count"]) for p in posts
    ] == [
        (3, "sue", 0, 0, 0),
        (2, "tim", 0, 0, 0),
        (old.tim_post_id, "tim", 1, 1, 1),
    ]
    assert api.get("/users/tim").json()["follower_count"] == 1
    me = api.get("/users/me", headers=old.token)  # a session the old code opened is still live
    assert me.status_code == 200 and me.json()["username"] == "tim"
    login = api.post("/auth/login", json={"username": "tim", "password": PASSWORD})
    assert login.status_code == 200  # the old bcrypt hashes still verify


def start_service(url: str, port: int, **env: str) -> subprocess.Popen[str]:
    args = [sys.executable, "-m", "service", "--port", str(port)]
    return subprocess.Popen(
        args,
        cwd=ROOT,
        env=service_env(url, LOG_LEVEL="info", **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def run_cli(url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        cwd=ROOT,
        env=service_env(url, **env),
        capture_output=True,
        text=True,
        timeout=120,
    )


# Adopting and upgrading the database the code before migrations made


def test_a_database_from_before_migrations_upgrades_on_start_with_every_row_intact(
    fresh_database_url: str,
) -> None:
    url = fresh_database_url
    old = build_database_before_migrations(url)
    assert revision_of(url) is None and "edited_at" not in columns_of(url, "posts")

    port = free_port()
    with (
        running_service(
            [sys.executable, "-m", "service", "--port", str(port)], service_env(url), port
        ) as base,
        httpx.Client(base_url=base, timeout=10) as api,
    ):
        assert api.get("/ready").status_code == 200
        assert revision_of(url) == HEAD
        assert rows_in(url) == old.counts  # adopted and migrated: nothing recreated or emptied
        assert_everything_readable(api, old)
        assert {p["edited_at"] for p in api.get("/posts").json()["items"]} == {None}

        # A post written before the upgrade is edited after it, with the token issued before it.
        edit = api.patch(f"/posts/{old.tim_post_id}", json={"content": "tim, edited"}, headers=old.token)
        assert edit.status_code == 200, edit.text
        assert edit.json()["edited_at"] is not None and edit.json()["like_count"] == 1
        assert api.get(f"/posts/{old.tim_post_id}").json() == edit.json()


def test_downgrade_to_revision_one_and_up_again_keeps_every_row(fresh_database_url: str) -> None:
    url = fresh_database_url
    old = build_database_before_migrations(url)
    assert run_cli(url, "db", "upgrade").returncode == 0
    with TestClient(create_app(settings_for(url))) as api:
        api.patch(f"/posts/{old.tim_post_id}", json={"content": "edited"}, headers=old.token)

    down = run_cli(url, "db", "downgrade", "0001")
    assert down.returncode == 0, down.stderr
    assert revision_of(url) == "0001" and "edited_at" not in columns_of(url, "posts")
    # SQLite rebuilds posts to drop the column: the likes, reposts and comments on it must survive.
    assert rows_in(url) == old.counts

    up = run_cli(url, "db", "upgrade")
    assert up.returncode == 0, up.stderr
    assert revision_of(url) == HEAD and rows_in(url) == old.counts
    check = run_cli(url, "db", "check")
    assert check.returncode == 0, check.stderr
    with TestClient(create_app(settings_for(url))) as api:
        assert_everything_readable(api, old)
        assert api.get(f"/posts/{old.tim_post_id}").json()["content"] == "edited"


def test_upgrading_to_roles_makes_every_user_a_member_and_keeps_every_keys_scopes(
    fresh_database_url: str,
) -> None:
    url = fresh_database_url
    old = build_database_before_migrations(url)
    assert run_cli(url, "db", "upgrade", "0003").returncode == 0
    assert "role" not in columns_of(url, "users") and "scopes" not in columns_of(url, "api_keys")

    port = free_port()
    process = start_service(url, port)
    try:
        wait_until_answering(process, f"http://127.0.0.1:{port}", "/ready", 30)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as api:
            assert revision_of(url) == HEAD and rows_in(url) == old.counts
            # Every account is a member now, the live session it had included.
            me = api.get("/users/me", headers=old.token)
            assert me.status_code == 200 and me.json()["role"] == "member"
            assert api.get("/purchases", headers=old.token).status_code == 403
            assert api.patch(f"/posts/{old.tim_post_id}", json={"content": "x"}, headers=old.token).is_success
            assert_everything_readable(api, old)
            # The key made before scopes existed may still do everything.
            key = {"X-API-Key": old.api_key}
            assert api.get("/reports/sales?group_by=item", headers=key).status_code == 200
            recorded = api.post(
                "/purchases",
                json={
                    "customer": {"email": "ann@example.com", "name": "Ann"},
                    "item": "pen",
                    "quantity": 1,
                    "unit_price": "1.00",
                },
                headers=key,
            )
            assert recorded.status_code == 201, recorded.text
    finally:
        output = stop(process)
    assert "no user is staff yet" in output and "user set-role USERNAME staff" in output
    listed = run_cli(url, "apikey", "list")
    assert [line.split("\t")[2] for line in listed.stdout.splitlines()] == [
        "purchases:write purchases:read reports:read"
    ] * 2


def add_social_rows(url: str, users: int, posts: int, seed: int) -> None:
    """Users, posts, likes, reposts, comments and follows written as any release would write them:
    plain INSERTs (the release before 0005 knew nothing of counts)."""
    import random

    chance = random.Random(seed)
    dialect = "sqlite" if url.startswith("sqlite") else "postgresql"
    now = to_text(datetime.now(UTC)) if dialect == "sqlite" else datetime.now(UTC)
    with engine_for(url) as engine, engine.begin() as conn:
        first_user = conn.execute(text("SELECT coalesce(max(id), 0) + 1 FROM users")).scalar_one()
        people = list(range(first_user, first_user + users))
        conn.execute(
            text("INSERT INTO users (username, email, password_hash, created_at) VALUES (:u, :e, :h, :t)"),
            [{"u": f"user{n}", "e": f"user{n}@example.com", "h": "x" * 60, "t": now} for n in people],
        )
        for _ in range(posts):
            post_id = conn.execute(
                text("INSERT INTO posts (author_id, content, created_at) VALUES (:a, 'p', :t) RETURNING id"),
                {"a": chance.choice(people), "t": now},
            ).scalar_one()
            fans = chance.sample(people, chance.randint(0, users // 2))
            for table, reacting in (("likes", fans), ("reposts", fans[: len(fans) // 2])):
                if reacting:
                    conn.execute(
                        text(f"INSERT INTO {table} (user_id, post_id, created_at) VALUES (:u, :p, :t)"),
                        [{"u": fan, "p": post_id, "t": now} for fan in reacting],
                    )
            for _ in range(chance.randint(0, 3)):
                conn.execute(
                    text(
                        "INSERT INTO comments (post_id, author_id, body, created_at) VALUES (:p, :a, 'c', :t)"
                    ),
                    {"p": post_id, "a": chance.choice(people), "t": now},
                )
        pairs = {tuple(chance.sample(people, 2)) for _ in range(users * 3)}
        conn.execute(
            text("INSERT INTO follows (follower_id, followee_id, created_at) VALUES (:a, :b, :t)"),
            [{"a": a, "b": b, "t": now} for a, b in pairs],
        )


def add_purchases(url: str, customers: int, purchases: int, seed: int) -> None:
    """Purchases over several days, written as the release before 0006 wrote them (one INSERT each,
    customers upserted by email), knowing nothing of rollups."""
    import random

    chance = random.Random(seed)
    sqlite = url.startswith("sqlite")
    with engine_for(url) as engine, engine.begin() as conn:
        for _ in range(purchases):
            email = f"buyer{chance.randrange(customers)}@example.com"
            moment = datetime(2026, 3, 1, tzinfo=UTC) + timedelta(minutes=chance.randrange(5 * 24 * 60))
            at = to_text(moment) if sqlite else moment
            customer = conn.execute(
                text(
                    "INSERT INTO customers (email, name, created_at, updated_at) VALUES (:e, 'B', :t, :t)"
                    " ON CONFLICT (email) DO UPDATE SET revision = customers.revision + 1 RETURNING id"
                ),
                {"e": email, "t": at},
            ).scalar_one()
            quantity, cents = chance.randint(1, 4), chance.randint(1, 5000)
            conn.execute(
                text(
                    "INSERT INTO purchases (customer_id, item, quantity, unit_price_cents, total_cents,"
                    " purchased_at, captured_by, created_at) VALUES (:c, :i, :q, :u, :t, :at, 'old', :at)"
                ),
                {
                    "c": customer,
                    "i": chance.choice(["book", "pen", "ink"]),
                    "q": quantity,
                    "u": cents,
                    "t": quantity * cents,
                    "at": at,
                },
            )


def test_upgrading_to_kept_counts_fills_them_and_counts_what_the_old_release_writes_after(
    fresh_database_url: str,
) -> None:
    url = fresh_database_url
    old = build_database_before_migrations(url)
    assert run_cli(url, "db", "upgrade", "0004").returncode == 0
    add_social_rows(url, users=30, posts=80, seed=5)
    add_purchases(url, customers=3, purchases=60, seed=5)

    upgraded = run_cli(url, "db", "upgrade")
    assert upgraded.returncode == 0 and "filled post_counts, user_counts" in upgraded.stderr, upgraded.stderr
    assert "filled customer_items, daily_sales" in upgraded.stderr
    assert count_errors(url) == [] and rollup_errors(url) == []
    # The release before, still serving in a rolling deploy, writes as it always did: its rows
    # are counted by the triggers all the same, a cascading delete of a post included.
    with engine_for(url) as engine, engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO likes (user_id, post_id, created_at)"
                " SELECT id, 1, created_at FROM users WHERE true ON CONFLICT DO NOTHING"
            )
        )
        conn.execute(text("DELETE FROM follows WHERE follower_id = 3"))
        conn.execute(text("DELETE FROM posts WHERE id IN (2, 5, 8)"))
    add_purchases(url, customers=4, purchases=10, seed=6)  # the old release records purchases too
    assert count_errors(url) == [] and rollup_errors(url) == []
    with TestClient(create_app(settings_for(url)), raise_server_exceptions=False) as api:
        users = table_counts(url)["users"]
        assert api.get(f"/posts/{old.tim_post_id}").json()["like_count"] == users
        profile = api.get("/users/user3")
        assert profile.json()["following_count"] == 0, profile.text


def fill_now(url: str, kept: tuple[Kept, ...], ids_per_range: int) -> str:
    """Run a revision's fill as the migration does (PostgreSQL: in autocommit, a range at a time)."""
    with schema_connection(url) as conn:
        if not url.startswith("sqlite"):
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        said = fill(conn, kept, ids_per_range)
        conn.commit()
    return said


def fill_while_writing(url: str, kept: tuple[Kept, ...], write: Any, writers: int) -> tuple[str, int]:
    """Fill in tiny ranges while `writers` threads each run `write(seed, stop)`, which writes until
    `stop` is set and says how many writes it made; what the fill said, and the writes in all."""
    stop = threading.Event()
    writes: list[int] = []
    threads = [
        threading.Thread(target=lambda seed=seed: writes.append(write(seed, stop))) for seed in range(writers)
    ]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.2)
        said = fill_now(url, kept, ids_per_range=2)
        time.sleep(0.2)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    return said, sum(writes)


def test_the_fill_is_exact_while_writers_write_and_when_run_again(fresh_database_url: str) -> None:
    import random

    url = fresh_database_url
    prepare_schema(url)
    add_social_rows(url, users=40, posts=120, seed=9)
    run_sql(url, "DELETE FROM post_counts", "DELETE FROM user_counts")  # as before revision 0005
    assert count_errors(url) != []

    def write_as_users_do(seed: int, stop: threading.Event) -> int:
        chance = random.Random(seed)
        mark = "?" if url.startswith("sqlite") else "%s"
        written = 0
        with table_connection(url) as conn:
            while not stop.is_set():
                user_id, post_id = chance.randint(1, 40), chance.randint(1, 120)
                table = chance.choice(["likes", "reposts"])
                if chance.random() < 0.5:
                    conn.execute(
                        f"INSERT INTO {table} (user_id, post_id, created_at) SELECT {mark}, id, created_at"
                        f" FROM posts WHERE id = {mark} ON CONFLICT DO NOTHING",
                        (user_id, post_id),
                    )
                else:
                    conn.execute(
                        f"DELETE FROM {table} WHERE user_id = {mark} AND post_id = {mark}", (user_id, post_id)
                    )
                conn.execute(f"DELETE FROM follows WHERE follower_id = {mark}", (user_id,))
                written += 1
        return written

    said, written = fill_while_writing(url, COUNTS, write_as_users_do, writers=4)
    assert written > 20 and "ranges" in said
    assert count_errors(url) == []

    # Stopped part way (here: half the counts lost), it is run again and is exact again.
    run_sql(url, "DELETE FROM post_counts WHERE post_id % 2 = 0", "UPDATE user_counts SET post_count = 7")
    fill_now(url, COUNTS, ids_per_range=7)
    assert count_errors(url) == []


def test_the_rollups_fill_is_exact_while_purchases_are_recorded_and_deleted(fresh_database_url: str) -> None:
    url = fresh_database_url
    prepare_schema(url)
    add_purchases(url, customers=30, purchases=300, seed=11)
    run_sql(url, "DELETE FROM customer_items", "DELETE FROM daily_sales")  # as before revision 0006
    assert rollup_errors(url) != []

    def record_and_delete(seed: int, stop: threading.Event) -> int:
        from sqlalchemy.exc import OperationalError

        rounds = 0
        while not stop.is_set():
            try:
                add_purchases(url, customers=40, purchases=3, seed=seed * 1000 + rounds)
                run_sql(url, f"DELETE FROM purchases WHERE id = (SELECT min(id) + {seed} FROM purchases)")
            except (OperationalError, psycopg.errors.DeadlockDetected) as exc:
                # PostgreSQL broke a deadlock with the fill's locks by failing this writer's
                # transaction (whole): a caller would be told to retry, and so does this one.
                if "deadlock" not in str(exc):
                    raise
            rounds += 1
        return rounds

    said, written = fill_while_writing(url, ROLLUPS, record_and_delete, writers=3)
    assert written > 5 and "filled customer_items, daily_sales" in said
    assert rollup_errors(url) == []


def settings_for(url: str, **changes: Any) -> Settings:
    from service.config import load_settings

    return replace(
        load_settings(environ={}, env_file=None),
        database_url=url,
        bcrypt_rounds=4,
        secret_key=TEST_SECRET_KEY,
        **changes,
    )


def test_two_services_start_together_on_an_old_database_one_migrates_and_both_serve(
    fresh_database_url: str,
) -> None:
    url = fresh_database_url
    old = build_database_before_migrations(url)
    ports = [free_port(), free_port()]
    with ExitStack() as stack:
        processes = [start_service(url, port) for port in ports]
        for process in processes:
            stack.callback(stop, process)
        for port, process in zip(ports, processes, strict=True):
            wait_until_answering(process, f"http://127.0.0.1:{port}", "/ready", timeout=60)
        for port in ports:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as api:
                assert_everything_readable(api, old)
        outputs = [stop(process) for process in processes]
    said = ["migrated" if "schema migrated 0001 (adopted) -> " in out else "found" for out in outputs]
    assert sorted(said) == ["found", "migrated"], outputs
    assert all(f"schema at {HEAD}" in out for out, what in zip(outputs, said, strict=True) if what == "found")
    # Checked once per service, before uvicorn started: its worker trusts that and does not check again.
    assert [out.count(" schema ") for out in outputs] == [1, 1], outputs
    assert revision_of(url) == HEAD and rows_in(url) == {
        **old.counts,
        "sessions": old.counts["sessions"] + 2,
        "login_failures": 1,  # 127.0.0.1's count of failed sign-ins: the two good ones took theirs back
    }


def stop(process: subprocess.Popen[str]) -> str:
    if process.poll() is None:
        process.terminate()
    try:
        output, _ = process.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    return output or ""


def _prepare_after(barrier: Any, url: str) -> None:
    barrier.wait()
    prepare_schema(url)


@pytest.mark.slow  # starts worker processes
def test_workers_starting_at_once_on_a_new_database_create_it_once_at_head(
    fresh_database_url: str, backend: str, tmp_path: Path
) -> None:
    spawn = multiprocessing.get_context("spawn")
    # SQLite files are cheap: race on several new ones (the journal-mode switch only races on a new file).
    urls = [f"sqlite:///{tmp_path / f'race{n}.db'}" for n in range(3)] if backend == "sqlite" else []
    for url in [fresh_database_url, *urls]:
        barrier = spawn.Barrier(6)
        workers = [spawn.Process(target=_prepare_after, args=(barrier, url)) for _ in range(6)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=60)
        assert [worker.exitcode for worker in workers] == [0] * 6
        with engine_for(url) as engine:
            assert set(inspect(engine).get_table_names()) == {*metadata.tables, "alembic_version"}
        assert revision_of(url) == HEAD


def test_preparing_twice_changes_nothing(fresh_database_url: str) -> None:
    assert prepare_schema(fresh_database_url).startswith(f"schema created at {HEAD}")
    assert prepare_schema(fresh_database_url).startswith(f"schema at {HEAD}")


# Refusals: one line of why (plus the differences), exit status 2, no traceback


def assert_refused(result: subprocess.CompletedProcess[str], *phrases: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert result.stderr.startswith("error: ")
    assert "Traceback" not in result.stderr + result.stdout
    for phrase in phrases:
        assert phrase in result.stderr, (phrase, result.stderr)


def test_behind_head_with_migrate_on_start_off_refuses_and_names_the_command(fresh_database_url: str) -> None:
    url = fresh_database_url
    old = build_database_before_migrations(url)
    result = run_cli(url, MIGRATE_ON_START="false")
    assert_refused(result, f"head is {HEAD}", "MIGRATE_ON_START is off", "python -m service db upgrade")
    assert revision_of(url) is None and rows_in(url) == old.counts  # not even adopted

    check = run_cli(url, "db", "check")
    assert check.returncode == 1 and "made before migrations" in check.stderr
    assert run_cli(url, "db", "upgrade").returncode == 0  # what the refusal said to run
    assert revision_of(url) == HEAD


def test_a_revision_the_code_does_not_know_is_refused(fresh_database_url: str) -> None:
    url = fresh_database_url
    prepare_schema(url)
    with engine_for(url) as engine, engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    assert_refused(run_cli(url), "revision 0099, which this code does not know", f"head is {HEAD}")
    check = run_cli(url, "db", "check")
    assert check.returncode == 1 and "unknown to this code" in check.stderr
    assert revision_of(url) == "0099"


DRIFTS = {
    "an extra column": (
        "ALTER TABLE posts ADD COLUMN mood VARCHAR(20)",
        "posts.mood: column in the database but not in the code",
    ),
    "a dropped index": (
        "DROP INDEX ix_purchases_item",
        "purchases.ix_purchases_item: index on (item, purchased_at, id) missing from the database",
    ),
    "a dropped column": (
        "ALTER TABLE customers DROP COLUMN revision",
        "customers.revision: column missing from the database",
    ),
}


@pytest.mark.parametrize("drift", list(DRIFTS))
def test_a_hand_made_drift_refuses_start_and_fails_the_check_naming_it(
    fresh_database_url: str, drift: str
) -> None:
    url = fresh_database_url
    prepare_schema(url)
    statement, named = DRIFTS[drift]
    with engine_for(url) as engine, engine.begin() as conn:
        conn.exec_driver_sql(statement)
    assert_refused(run_cli(url), "tables differ from the code", named)
    check = run_cli(url, "db", "check")
    assert check.returncode == 1 and named in check.stderr and "Traceback" not in check.stderr
    with pytest.raises(SchemaRefused, match=named.split(":")[0]):
        prepare_schema(url)  # and the in-process start-up (create_app's lifespan) refuses too


def test_nullability_and_type_drift_are_named(fresh_database_url: str, backend: str) -> None:
    if backend == "sqlite":
        pytest.skip("SQLite cannot alter a column's type or nullability in place; nobody drifts it by hand")
    url = fresh_database_url
    prepare_schema(url)
    with engine_for(url) as engine, engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE users ALTER COLUMN email DROP NOT NULL")
        conn.exec_driver_sql("ALTER TABLE users ALTER COLUMN username TYPE varchar(40)")
    with schema_connection(url) as conn:
        found = differences(conn)
    assert sorted(found) == [
        "users.email: nullable in the database, NOT NULL in the code",
        "users.username: type is VARCHAR(40) in the database, VARCHAR(32) in the code",
    ]


def test_a_partial_set_of_tables_without_a_revision_is_refused(fresh_database_url: str) -> None:
    url = fresh_database_url
    with engine_for(url) as engine, engine.begin() as conn:
        metadata.tables["users"].create(conn)
    with pytest.raises(SchemaRefused, match="some of this service's tables but no alembic_version"):
        prepare_schema(url)


def test_tables_that_are_not_the_services_are_left_alone(fresh_database_url: str) -> None:
    url = fresh_database_url
    with engine_for(url) as engine, engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE spatial_ref_sys (srid INTEGER PRIMARY KEY)")  # an extension's
    prepare_schema(url)
    prepare_schema(url)
    assert revision_of(url) == HEAD


def test_0009_puts_a_statements_purchases_in_one_rollup_shard(fresh_database_url: str) -> None:
    """The trigger function is replaced in place: before 0009 a statement's purchases spread over
    the shards of their ids (PostgreSQL), after it they share one; the sums are exact either way."""
    url = fresh_database_url

    def purchases_in_one_statement(day: str) -> None:
        moment = f"'{day}T10:00:00.000000Z'"  # SQLite's stored form; PostgreSQL reads it as well
        run_sql(
            url,
            "INSERT INTO customers (email, name, created_at, updated_at) "
            f"VALUES ('{day}@example.com', 'x', {moment}, {moment})",
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 64) "
            "INSERT INTO purchases (customer_id, item, quantity, unit_price_cents, total_cents, "
            "purchased_at, captured_by, created_at) "
            f"SELECT c.id, 'book', 1, 100, 100, {moment}, 'test', {moment} "
            f"FROM n, customers AS c WHERE c.email = '{day}@example.com'",
        )

    def shards_of(day: str) -> int:
        with table_connection(url) as conn:
            return len(conn.execute(f"SELECT shard FROM daily_sales WHERE day = '{day}'").fetchall())

    with schema_connection(url) as conn, schema_lock(conn, wait_seconds=30):
        migrate(conn, MigrationPolicy(), "0008")
    if not url.startswith("sqlite"):  # the body 0006 made in the release before 0009: a shard per id
        body = load_queries("postgresql").rollups_ddl_keep_sales.source
        per_statement = "(SELECT min(id) FROM added) % 16,"
        assert per_statement in body and "FROM added GROUP BY 1, 2 ORDER BY 1, 2" in body
        body = body.replace(per_statement, "id % 16,").replace(
            "FROM added GROUP BY 1, 2 ORDER BY 1, 2", "FROM added GROUP BY 1, 2, 3 ORDER BY 1, 2, 3", 1
        )  # (the first is daily_sales'; customer_items' follows)
        run_sql(url, body)
    purchases_in_one_statement("2026-03-01")
    assert shards_of("2026-03-01") == (1 if url.startswith("sqlite") else 16)
    with schema_connection(url) as conn, schema_lock(conn, wait_seconds=30):
        migrate(conn, MigrationPolicy(), "head")
    purchases_in_one_statement("2026-03-02")
    assert shards_of("2026-03-02") == 1
    assert rollup_errors(url) == []


# tables.py and the migrations never disagree


def test_the_migrations_build_exactly_what_tables_py_says(fresh_database_url: str) -> None:
    """Fails when someone changes tables.py without adding a migration (or the other way round)."""
    with schema_connection(fresh_database_url) as conn:
        with schema_lock(conn, wait_seconds=30):
            migrate(conn, MigrationPolicy(), "head")  # every revision from an empty database, no create_all
        conn.rollback()
        assert differences(conn) == []
    assert revision_of(fresh_database_url) == HEAD


def test_the_revisions_form_one_line_from_revision_one() -> None:
    history = list(reversed(list(scripts().walk_revisions())))
    assert [script.down_revision for script in history] == [None, *[s.revision for s in history[:-1]]]
    assert history[0].revision == "0001" and history[-1].revision == HEAD
    assert scripts().get_heads() == [HEAD]


def test_db_revision_writes_the_next_migration_from_tables_py(tmp_path: Path) -> None:
    """`db revision` on a copy of the migrations, with a column added to tables.py in that process."""
    program = f"""
import shutil, sys
from pathlib import Path
from sqlalchemy import Column, String
import service.migrations.schema as schema
from service.tables import posts
copy = Path({str(tmp_path)!r}) / sys.argv[1]
shutil.copytree(schema.MIGRATIONS_DIRECTORY, copy, ignore=shutil.ignore_patterns("__pycache__"))
schema.MIGRATIONS_DIRECTORY = copy
if sys.argv[1] == "changed":
    posts.append_column(Column("mood", String(20)))
from service.__main__ import main
sys.exit(main(["db", "revision", "-m", "posts.mood"]))
"""
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'unused.db'}"}
    unchanged = subprocess.run(
        [sys.executable, "-c", program, "same"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert unchanged.returncode == 1 and "nothing to write" in unchanged.stderr

    changed = subprocess.run(
        [sys.executable, "-c", program, "changed"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert changed.returncode == 0, changed.stderr
    next_number = f"{int(HEAD) + 1:04d}"
    written = list((tmp_path / "changed" / "versions").glob(f"{next_number}_*.py"))
    assert len(written) == 1
    source = written[0].read_text()
    assert f'revision: str = "{next_number}"' in source or f"revision: str = '{next_number}'" in source
    assert "add_column" in source and "'mood'" in source.replace('"', "'")
    assert not (tmp_path / "unused.db").exists()  # compared with a scratch database, not the configured one


# PostgreSQL: a migration that cannot get its lock backs off instead of stalling traffic


def test_a_migration_waiting_for_a_lock_lets_traffic_through_then_finishes(
    fresh_database_url: str, backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    if backend == "sqlite":
        pytest.skip("SQLite has no table locks to queue behind: its migration holds the one write lock")
    url = fresh_database_url
    build_database_before_migrations(url)
    policy = MigrationPolicy(lock_timeout_ms=200, lock_retries=100)
    holder = psycopg.connect(url)
    holder.execute("SELECT * FROM posts WHERE id = 1 FOR UPDATE")  # a long transaction on posts
    outcome: list[Any] = []
    migration = threading.Thread(target=lambda: outcome.append(_try(prepare_schema, url, policy)))
    migration.start()
    try:
        time.sleep(0.5)
        assert migration.is_alive() and revision_of(url) == "0001"  # adopted, waiting to alter posts
        # Meanwhile reads and writes of posts go on: the ALTER never sits in the lock queue for long.
        with psycopg.connect(url, autocommit=True) as reader:
            reader.execute("SET statement_timeout = '1500ms'")
            for n in range(10):
                reader.execute("SELECT count(*) FROM posts").fetchone()
                reader.execute("UPDATE posts SET content = %s WHERE id = 2", (f"write {n}",))
                time.sleep(0.1)
    finally:
        holder.rollback()
        holder.close()
    migration.join(timeout=30)
    assert outcome and outcome[0].startswith("schema migrated"), outcome
    assert revision_of(url) == HEAD
    assert any("gave up waiting 200 ms for a table lock" in record.message for record in caplog.records)


def _try(function: Any, *args: Any) -> Any:
    try:
        return function(*args)
    except Exception as exc:  # handed to the test thread to report
        return exc


INDEX_CONCURRENTLY = '''"""An index built without blocking writes."""

from service.migrations import outside_transaction
from alembic import op

revision = "{next}"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade():
    with outside_transaction():
        op.create_index("ix_posts_edited", "posts", ["edited_at"], postgresql_concurrently=True)


def downgrade():
    with outside_transaction():
        op.drop_index("ix_posts_edited", "posts", postgresql_concurrently=True)
'''


def test_an_index_built_concurrently_migrates_on_both_databases(
    fresh_database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's recipe for an index that does not block writes, run as a real revision."""
    import shutil

    import service.migrations.schema as schema

    url = fresh_database_url
    build_database_before_migrations(url)
    prepare_schema(url)
    copy = tmp_path / "migrations"
    shutil.copytree(schema.MIGRATIONS_DIRECTORY, copy, ignore=shutil.ignore_patterns("__pycache__"))
    next_revision = f"{int(HEAD) + 1:04d}"
    (copy / "versions" / f"{next_revision}_ix_posts_edited.py").write_text(
        INDEX_CONCURRENTLY.format(next=next_revision, head=HEAD)
    )
    monkeypatch.setattr(schema, "MIGRATIONS_DIRECTORY", copy)

    with schema_connection(url) as conn, schema_lock(conn, wait_seconds=30):
        migrate(conn, MigrationPolicy(), "head")
    assert revision_of(url) == next_revision
    with engine_for(url) as engine:
        indexes = {index["name"] for index in inspect(engine).get_indexes("posts")}
        assert "ix_posts_edited" in indexes
        if url.startswith("postgresql"):
            with engine.connect() as conn:
                valid = conn.execute(
                    text("SELECT indisvalid FROM pg_index WHERE indexrelid = 'ix_posts_edited'::regclass")
                ).scalar()
                assert valid is True
    assert table_counts(url)["posts"] == 3

    with schema_connection(url) as conn, schema_lock(conn, wait_seconds=30):
        migrate(conn, MigrationPolicy(), HEAD, downgrade=True)
    assert revision_of(url) == HEAD
