"""Behind a real PgBouncer in transaction mode: what only a pooler can get wrong.

(Every other database test runs through it too: the `pgbouncer` backend in conftest.py.)
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from service.config import load_settings
from service.db import open_database
from service.migrations.schema import prepare_schema
from tests.conftest import ROOT, _postgres_admin_url, free_port, service_env, wait_until_answering

pytestmark = pytest.mark.slow


@pytest.fixture
def pooled_fresh_database(pgbouncer: str) -> Iterator[tuple[str, str]]:
    """A new, empty database: (its URL through PgBouncer, its URL on the server itself)."""
    admin = _postgres_admin_url()
    assert admin is not None
    name = f"pfs_pooled_{secrets.token_hex(4)}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{pgbouncer.rsplit('/', 1)[0]}/{name}", f"{admin.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_two_instances_through_pgbouncer_migrate_once_over_the_direct_url(
    pooled_fresh_database: tuple[str, str], tmp_path: Path
) -> None:
    # The schema step's session advisory lock means nothing through transaction pooling (each
    # statement may meet another server session), so it connects to MIGRATION_DATABASE_URL.
    pooled, direct = pooled_fresh_database
    env = service_env(pooled, LOG_LEVEL="info", DB_STATEMENT_CACHE="0", MIGRATION_DATABASE_URL=direct)
    ports = [free_port(), free_port()]
    logs = [tmp_path / f"instance{n}.log" for n in range(2)]
    processes = []
    for port, log in zip(ports, logs, strict=True):
        with log.open("wb") as sink:
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "service", "--port", str(port)],
                    cwd=ROOT,
                    env=env,
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                )
            )
    try:
        for process, port in zip(processes, ports, strict=True):
            wait_until_answering(process, f"http://127.0.0.1:{port}", "/ready", 60)
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=15)
    outputs = [log.read_text() for log in logs]
    assert sum("schema created at" in output for output in outputs) == 1, outputs
    assert all("unsupported startup parameter" not in output for output in outputs)


@pytest.mark.parametrize("configured", [False, True])
def test_start_up_says_when_the_servers_timeouts_are_not_the_services(
    pooled_fresh_database: tuple[str, str], configured: bool
) -> None:
    pooled, direct = pooled_fresh_database
    prepare_schema(direct)
    if configured:  # as the README says; a pooler's server sessions pick it up as they open
        with psycopg.connect(direct, autocommit=True) as conn:
            name = direct.rsplit("/", 1)[1]
            conn.execute(f"ALTER DATABASE \"{name}\" SET statement_timeout = '5000ms'")
            conn.execute(f"ALTER DATABASE \"{name}\" SET lock_timeout = '2000ms'")
    settings = load_settings(
        environ={"DATABASE_URL": pooled, "DB_STATEMENT_CACHE": "0", "MIGRATION_DATABASE_URL": direct},
        env_file=None,
    )

    async def advice() -> str | None:
        db = open_database(settings)
        await db.connect()
        try:
            return await db.check_server_limits(settings.database_limits)
        finally:
            await db.disconnect()

    said = asyncio.run(advice())
    if configured:
        assert said is None
    else:  # no timeouts on the server: the service says what to run
        assert said is not None and "ALTER ROLE" in said
        assert "statement_timeout = '5000ms', lock_timeout = '2000ms'" in said


def test_the_default_statement_cache_through_pgbouncer_is_refused_with_advice(
    pooled_fresh_database: tuple[str, str], tmp_path: Path
) -> None:
    pooled, direct = pooled_fresh_database
    env = service_env(pooled, MIGRATION_DATABASE_URL=direct)  # DB_STATEMENT_CACHE left at 100
    env.pop("DB_STATEMENT_CACHE", None)
    done = subprocess.run(
        [sys.executable, "-m", "service", "--port", str(free_port())],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "DB_STATEMENT_CACHE=0" in done.stdout + done.stderr
