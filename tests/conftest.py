"""Fixtures: every database test runs on SQLite, on PostgreSQL, and on PostgreSQL through PgBouncer.

PostgreSQL comes from TEST_DATABASE_URL (a server the tests may create databases on). Each run
creates its own database and drops it at the end; each test starts with empty tables. Without
TEST_DATABASE_URL the PostgreSQL tests skip with the reason; with REQUIRE_POSTGRES=1 (CI) they fail.
The `pgbouncer` backend is the same database through a real PgBouncer in transaction mode (Debian's
`pgbouncer`, started once per session on its own port): the service runs with DB_STATEMENT_CACHE=0
and its schema step connects directly (MIGRATION_DATABASE_URL), as the README says to deploy it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import re
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx2 as httpx
import psycopg
import pytest
from starlette.testclient import TestClient

from service.app import create_app
from service.config import Settings, load_settings
from service.tables import SCOPES, metadata
from tests.pgbouncer import pgbouncer_binary, running_pgbouncer
from tests.replication import Cluster, postgres_binaries, replicated_cluster

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
TEST_SECRET_KEY = "test-signing-key-long-enough-for-hs512-forgeries-0123456789abcdef"
BACKENDS = ("sqlite", "postgresql", "pgbouncer")
# URL through PgBouncer -> the same database directly, for every pooled URL a fixture handed out.
POOLED: dict[str, str] = {}


def _postgres_admin_url() -> str | None:
    return os.environ.get("TEST_DATABASE_URL") or None


def _postgres_unavailable_reason() -> str | None:
    url = _postgres_admin_url()
    if url is None:
        return "PostgreSQL tests need TEST_DATABASE_URL (e.g. postgresql://postgres@127.0.0.1:5432/test)"
    try:
        with psycopg.connect(url, connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return f"PostgreSQL at TEST_DATABASE_URL is not reachable: {exc.__class__.__name__}"


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this test run; its URL."""
    reason = _postgres_unavailable_reason()
    if reason is not None:
        if os.environ.get("REQUIRE_POSTGRES") == "1":
            pytest.fail(f"REQUIRE_POSTGRES=1 but {reason}")
        pytest.skip(reason)
    admin_url = _postgres_admin_url()
    assert admin_url is not None
    name = f"pfs_test_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = admin_url.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pgbouncer(postgres_database: str) -> Iterator[str]:
    """A real PgBouncer (transaction pooling) in front of the test server; the test database through it."""
    if pgbouncer_binary() is None:
        reason = "the PgBouncer tests need pgbouncer (apt-get install pgbouncer)"
        if os.environ.get("REQUIRE_POSTGRES") == "1":
            pytest.fail(f"REQUIRE_POSTGRES=1 but {reason}")
        pytest.skip(reason)
    # Behind a transaction-mode pooler the server's timeouts come from the database's (or role's)
    # settings, not from the service's connections: set them as the README says (the defaults).
    limits = load_settings(environ={}, env_file=None).database_limits
    name = urlsplit(postgres_database).path.lstrip("/")
    with psycopg.connect(postgres_database, autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE \"{name}\" SET statement_timeout = '{limits.statement_timeout_ms}ms'")
        conn.execute(f"ALTER DATABASE \"{name}\" SET lock_timeout = '{limits.lock_timeout_ms}ms'")
    with running_pgbouncer(postgres_database, free_port()) as server:
        pooled = f"{server}/{name}"
        POOLED[pooled] = postgres_database
        yield pooled


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A private primary and a streaming standby (tests/replication.py), for one test module."""
    if postgres_binaries() is None:
        reason = "replication tests need PostgreSQL 15's server binaries (/usr/lib/postgresql/15/bin)"
        if os.environ.get("REQUIRE_POSTGRES") == "1":
            pytest.fail(f"REQUIRE_POSTGRES=1 but {reason}")
        pytest.skip(reason)
    with replicated_cluster(free_port(), free_port()) as built:
        yield built


@pytest.fixture
def fresh_database_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A database with no tables at all (not even the ones earlier tests made), dropped afterwards."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    request.getfixturevalue("postgres_database")  # skips or fails exactly as the shared database does
    admin = _postgres_admin_url()
    assert admin is not None
    name = f"pfs_fresh_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"{admin.rsplit('/', 1)[0]}/{name}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def empty_postgres(url: str) -> None:
    tables = ", ".join(table.name for table in metadata.sorted_tables)
    with psycopg.connect(url, autocommit=True) as conn:
        exists = conn.execute("SELECT to_regclass('api_keys') IS NOT NULL").fetchone()
        if exists and exists[0]:
            conn.execute(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of the test's backend."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'service.db'}"
    url: str = request.getfixturevalue("postgres_database")
    empty_postgres(url)
    if backend == "pgbouncer":
        return str(request.getfixturevalue("pgbouncer"))
    return url


def pooler_settings(database_url: str) -> dict[str, str]:
    """The settings a service behind PgBouncer runs with (none for a direct URL)."""
    if database_url not in POOLED:
        return {}
    return {"DB_STATEMENT_CACHE": "0", "MIGRATION_DATABASE_URL": POOLED[database_url]}


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> Settings:
    """The default settings on an empty SQLite file, for what only SQLite has."""
    return replace(load_settings(environ={}, env_file=None), database_url=f"sqlite:///{tmp_path / 'only.db'}")


@pytest.fixture
def settings(database_url: str) -> Settings:
    return replace(
        load_settings(environ={"DATABASE_URL": database_url, **pooler_settings(database_url)}, env_file=None),
        bcrypt_rounds=4,  # the cost is a setting; tests do not need to pay 12 rounds
        secret_key=TEST_SECRET_KEY,
    )


# Every password a test sends; no response anywhere in the suite may contain one, or any bcrypt hash.
PASSWORDS_SENT: set[str] = set()
BCRYPT_HASH = re.compile(r"\$2[aby]?\$\d\d\$[./A-Za-z0-9]{53}")


def assert_no_secret_leaks(response: httpx.Response) -> None:
    response.read()
    text = response.text
    assert not BCRYPT_HASH.search(text), f"a bcrypt hash left the service: {response.request.url}"
    leaked = [password for password in PASSWORDS_SENT if password in text]
    assert not leaked, f"a password left the service: {response.request.url}"


async def assert_no_secret_leaks_async(response: httpx.Response) -> None:
    await response.aread()
    assert_no_secret_leaks(response)


def live_client(base: str, **options: Any) -> httpx.AsyncClient:
    """An HTTP client for a live server, checking its responses as the test client does."""
    return httpx.AsyncClient(
        base_url=base, event_hooks={"response": [assert_no_secret_leaks_async]}, **options
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """The app on the test's database, lifespan run (schema created, pool open).

    Every response it receives is checked for passwords and password hashes.
    """
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        test_client.event_hooks["response"] = [assert_no_secret_leaks]
        yield test_client


PASSWORD = "correct horse battery"


def register(client: TestClient, username: str = "tim", password: str = PASSWORD) -> dict[str, Any]:
    PASSWORDS_SENT.add(password)
    account = {"username": username, "email": f"{username}@example.com", "password": password}
    response = client.post("/auth/register", json=account)
    assert response.status_code == 201, response.text
    user: dict[str, Any] = response.json()
    return user


def login(client: TestClient, username: str = "tim", password: str = PASSWORD) -> dict[str, Any]:
    PASSWORDS_SENT.add(password)
    response = client.post("/auth/login", json={"username": username, "password": password})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def bearer(token_body: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {token_body['access_token']}"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def service_env(database_url: str, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PROMETHEUS_")}
    env.update(
        {
            "DATABASE_URL": database_url,
            "LOG_LEVEL": "warning",
            "BCRYPT_ROUNDS": "4",
            "SECRET_KEY": TEST_SECRET_KEY,
            "SHUTDOWN_GRACE_SECONDS": "0",  # tests stop services often; the draining test sets its own
            **pooler_settings(database_url),
            **extra,
        }
    )
    return env


def wait_until_answering(process: subprocess.Popen[Any], base: str, path: str, timeout: float) -> None:
    """Wait until the service `process` answers 200 at `path`; fail with its output if it exits."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            output = process.communicate()[0] or ""
            text = output.decode() if isinstance(output, bytes) else output
            raise AssertionError(f"service exited with {process.returncode}:\n{text}")
        try:
            if httpx.get(f"{base}{path}", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"service did not answer {path} in time")
        time.sleep(0.1)


@contextmanager
def running_service(
    args: list[str], env: dict[str, str], port: int, cwd: Path = ROOT, timeout: float = 30.0
) -> Iterator[str]:
    """Start `python -m service` (or `args`) on `port`; yield its base URL once /health answers."""
    process = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(process, base, "/health", timeout)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def service_process(
    database_url: str, log: Path | None = None, **env: str
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """One worker of the real service on `database_url` (and `env`), ready; yields the process (for
    a test to signal or kill) and its base URL. Killed after, if the test left it running. Its
    output goes to `log` when given."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "--port", str(port)],
        cwd=ROOT,
        env=service_env(database_url, **env),
        stdout=log.open("ab") if log else subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until_answering(process, base, "/ready", 30)
        yield process, base
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


@pytest.fixture
def live_service(database_url: str) -> Callable[..., Iterator[str]]:
    """Start the real service with uvicorn on the test's database: `with live_service(workers=2) as url:`."""

    @contextmanager
    def start(workers: int = 1, **env: str) -> Iterator[str]:
        port = free_port()
        args = [sys.executable, "-m", "service", "--port", str(port), "--workers", str(workers)]
        with running_service(args, service_env(database_url, **env), port) as base:
            yield base

    return start


@contextmanager
def table_connection(database_url: str) -> Iterator[Any]:
    """A plain DB-API connection to the test's database (autocommit), outside the service."""
    if database_url.startswith("sqlite"):
        import sqlite3

        conn = sqlite3.connect(database_url.split(":///", 1)[1], isolation_level=None)
        conn.execute("PRAGMA foreign_keys = ON")
        with contextlib.closing(conn):
            yield conn
        return
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


def run_sql(database_url: str, *statements: str) -> None:
    """Statements run on the test's database as an operator would, outside the service."""
    with table_connection(database_url) as conn:
        for statement in statements:
            conn.execute(statement)


def table_counts(database_url: str) -> dict[str, int]:
    """Rows in every table the database has (an older revision lacks the newer tables), read
    straight from the database (not through the service)."""
    names = [table.name for table in metadata.sorted_tables]
    if database_url.startswith("sqlite"):
        import sqlite3

        with contextlib.closing(sqlite3.connect(database_url.split(":///", 1)[1])) as conn:
            present = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            return {
                name: conn.execute(f"SELECT count(*) FROM {name}").fetchone()[0]
                for name in names
                if name in present
            }
    with psycopg.connect(database_url) as conn:
        present = {
            row[0] for row in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        }
        return {
            name: conn.execute(f"SELECT count(*) FROM {name}").fetchone()[0]  # type: ignore[index]
            for name in names
            if name in present
        }


def on_database(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    """`work(db)` on the test's database, outside the app (as the command line reaches it)."""
    from service.db import open_database
    from service.migrations.schema import prepare_schema

    async def run() -> T:
        prepare_schema(settings.schema_database_url)
        db = open_database(settings)
        await db.connect()
        try:
            return await work(db)
        finally:
            await db.disconnect()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(run())
    # Under a loop already running in this thread (playwright's sync API keeps one): another thread.
    with concurrent.futures.ThreadPoolExecutor(1) as thread:
        return thread.submit(asyncio.run, run()).result()


def api_key_row(n: int, **changes: Any) -> dict[str, Any]:
    """An api_keys row for a test that needs some write to make: named k<n>, its hash made of n."""
    from service.timestamps import utc_now

    row = {"name": f"k{n}", "key_hash": f"{n:064d}", "key_prefix": "p", "scopes": "reports:read"}
    return {**row, "created_at": utc_now(), **changes}


def make_api_key(settings: Settings, name: str = "tests", scopes: Iterable[str] = SCOPES) -> str:
    """A live API key on the test's database, made as `python -m service apikey create` makes one."""
    from service.apikeys import create_api_key

    async def create(db: Any) -> str:
        key, _ = await create_api_key(db, name, scopes)
        return key

    return on_database(settings, create)


def set_role(settings: Settings, username: str, role: str) -> None:
    """Give a registered user `role`, as `python -m service user set-role USERNAME ROLE` does."""
    from service.accounts import set_role as change_role

    async def change(db: Any) -> None:
        assert await change_role(db, username, role) is not None, f"no user {username}"

    on_database(settings, change)


def make_staff(settings: Settings, username: str) -> None:
    set_role(settings, username, "staff")


@pytest.fixture
def api_key(settings: Settings) -> str:
    return make_api_key(settings)


@pytest.fixture
def authed(client: TestClient, api_key: str) -> TestClient:
    """The test client sending a live API key with every request."""
    client.headers["X-API-Key"] = api_key
    return client
