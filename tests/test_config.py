"""Settings come from the environment and .env; a bad one stops start-up with one clear line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from service.config import SETTINGS_DOC, SettingsError, load_settings
from tests.conftest import ROOT


def test_defaults_need_no_configuration() -> None:
    settings = load_settings(environ={}, env_file=None)
    assert settings.database_url == "sqlite:///./data/service.db"
    assert (settings.host, settings.port, settings.workers) == ("127.0.0.1", 8000, 1)
    assert settings.max_body_bytes == 1024 * 1024
    assert settings.log_format == "text"
    assert settings.migrate_on_start is True


@pytest.mark.parametrize(("raw", "value"), [("false", False), ("0", False), ("off", False), ("TRUE", True)])
def test_migrate_on_start_reads_the_usual_spellings(raw: str, value: bool) -> None:
    assert load_settings(environ={"MIGRATE_ON_START": raw}, env_file=None).migrate_on_start is value


def test_environment_overrides_dot_env_which_overrides_defaults(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("PORT=9001\nLOG_FORMAT=json\n")
    settings = load_settings(environ={"PORT": "9002"}, env_file=env_file)
    assert settings.port == 9002
    assert settings.log_format == "json"


def test_the_pool_defaults_to_two_connections_on_sqlite_and_ten_on_postgres() -> None:
    assert load_settings(environ={}, env_file=None).db_pool_max == 2
    assert load_settings(environ={"DATABASE_URL": "postgresql://u@h/db"}, env_file=None).db_pool_max == 10
    assert load_settings(environ={"DB_POOL_MAX": "4"}, env_file=None).db_pool_max == 4


def test_the_limits_have_defaults_and_the_busy_timeout_keeps_its_old_name() -> None:
    settings = load_settings(environ={}, env_file=None)
    limits = settings.database_limits
    assert (limits.pool_timeout_ms, limits.pool_max_waiters) == (2000, 100)
    assert (limits.lock_timeout_ms, limits.statement_timeout_ms) == (2000, 5000)
    assert settings.shutdown_grace_seconds == 5
    old = load_settings(environ={"SQLITE_BUSY_TIMEOUT_MS": "700"}, env_file=None)
    assert old.db_lock_timeout_ms == 700
    both = load_settings(
        environ={"SQLITE_BUSY_TIMEOUT_MS": "700", "DB_LOCK_TIMEOUT_MS": "900"}, env_file=None
    )
    assert both.db_lock_timeout_ms == 900


def test_a_transaction_pooler_needs_a_direct_url_for_the_schema_step() -> None:
    pooled = {"DATABASE_URL": "postgresql://u@bouncer:6432/db", "DB_STATEMENT_CACHE": "0"}
    with pytest.raises(SettingsError, match="needs MIGRATION_DATABASE_URL"):
        load_settings(environ=pooled, env_file=None)
    settings = load_settings(
        environ={**pooled, "MIGRATION_DATABASE_URL": "postgresql://u@db:5432/db"}, env_file=None
    )
    assert settings.behind_transaction_pooler
    assert settings.schema_database_url == "postgresql://u@db:5432/db"
    assert load_settings(
        environ={"DATABASE_URL": "postgresql://u@db/x"}, env_file=None
    ).schema_database_url == ("postgresql://u@db/x")


def test_replicas_are_read_from_a_comma_separated_list_and_need_postgresql() -> None:
    settings = load_settings(
        environ={
            "DATABASE_URL": "postgresql://u@p/db",
            "DATABASE_REPLICA_URLS": "postgresql://u@r1/db, postgres://u@r2/db",
        },
        env_file=None,
    )
    assert settings.database_replica_urls == ("postgresql://u@r1/db", "postgresql://u@r2/db")
    with pytest.raises(SettingsError, match="needs a PostgreSQL DATABASE_URL"):
        load_settings(environ={"DATABASE_REPLICA_URLS": "postgresql://u@r1/db"}, env_file=None)


def test_postgres_scheme_alias_is_accepted() -> None:
    settings = load_settings(environ={"DATABASE_URL": "postgres://u@h/db"}, env_file=None)
    assert settings.database_url == "postgresql://u@h/db"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("PORT", "eighty", "PORT must be a whole number, got 'eighty'"),
        ("PORT", "70000", "PORT must be between 1 and 65535, got 70000"),
        ("WORKERS", "0", "WORKERS must be between 1 and 64, got 0"),
        ("LOG_FORMAT", "xml", "LOG_FORMAT must be one of text, json, got 'xml'"),
        ("DATABASE_URL", "mysql://x/y", "DATABASE_URL must start with sqlite:/// (and name a file)"),
        ("DB_POOL_MIN", "20", "DB_POOL_MIN (20) must not be larger than DB_POOL_MAX (2)"),
        ("MIGRATE_ON_START", "maybe", "MIGRATE_ON_START must be true or false, got 'maybe'"),
        ("MIGRATION_LOCK_TIMEOUT_MS", "5", "MIGRATION_LOCK_TIMEOUT_MS must be between 10 and 600000, got 5"),
        ("DB_LOCK_TIMEOUT_MS", "0", "DB_LOCK_TIMEOUT_MS must be between 1 and 600000, got 0"),
        ("DB_POOL_TIMEOUT_MS", "soon", "DB_POOL_TIMEOUT_MS must be a whole number, got 'soon'"),
        ("SHUTDOWN_GRACE_SECONDS", "-1", "SHUTDOWN_GRACE_SECONDS must be between 0 and 600, got -1"),
    ],
)
def test_a_bad_setting_is_named_plainly(name: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings(environ={name: value}, env_file=None)
    assert str(raised.value).startswith(message)


def test_every_setting_is_documented_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    for name, default, _ in SETTINGS_DOC:
        assert f"`{name}`" in readme, name
        assert f"`{default}`" in readme, (name, default)


@pytest.mark.parametrize(
    ("env", "args", "line"),
    [
        ({"PORT": "abc"}, [], "error: PORT must be a whole number, got 'abc'"),
        ({}, ["--port", "0"], "error: --port must be between 1 and 65535, got 0"),
        ({"DATABASE_URL": "oracle://db"}, [], "error: DATABASE_URL must start with sqlite:///"),
    ],
)
def test_the_service_refuses_to_start_with_one_line_and_no_traceback(
    env: dict[str, str], args: list[str], line: str, tmp_path: Path
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service", *args],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.startswith(line)
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr
