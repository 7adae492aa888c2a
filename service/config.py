"""Settings: read once from the environment and an optional `.env` file, checked, then frozen."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from starlette.config import Config

T = TypeVar("T")

DEFAULT_DATABASE_URL = "sqlite:///./data/service.db"

# Not a setting: set by `python -m service` once it has checked the schema, for the workers it
# starts, which need not check again (nor import Alembic). A worker started any other way checks.
SCHEMA_CHECKED = "SERVICE_SCHEMA_CHECKED"


class SettingsError(ValueError):
    """A setting has a value the service cannot start with; the message is one line for the operator."""


@dataclass(frozen=True)
class MigrationPolicy:
    """How the start-up step may change the schema, and how long it may wait."""

    migrate_on_start: bool = True
    # PostgreSQL: how long one migration statement waits for a table lock before it gives up
    # (so it never queues the service's own traffic behind it), and how often it tries again.
    lock_timeout_ms: int = 2000
    lock_retries: int = 10
    # How long a starting worker waits for another one's migration to finish.
    wait_seconds: float = 300.0


@dataclass(frozen=True)
class DatabaseLimits:
    """How long a request may wait on the database, and how many may wait at once (per worker)."""

    pool_timeout_ms: int = 2000
    pool_max_waiters: int = 100
    lock_timeout_ms: int = 2000
    statement_timeout_ms: int = 5000
    # Reports (statements marked `-- limit: report`) read a range of rows: a year's may take longer.
    report_statement_timeout_ms: int = 30000
    # Group commit (service.group_commit): the most writes one statement carries; 1 turns it off.
    group_commit_max: int = 1000


@dataclass(frozen=True)
class LoginThrottle:
    """How many failed sign-ins a window allows: one username from one address, and one address."""

    window_seconds: int = 900
    per_account: int = 10
    per_address: int = 100


@dataclass(frozen=True)
class Settings:
    database_url: str
    host: str
    port: int
    workers: int
    log_level: str
    log_format: str
    max_body_bytes: int
    db_pool_min: int
    db_pool_max: int
    db_pool_timeout_ms: int
    db_pool_max_waiters: int
    db_lock_timeout_ms: int
    db_statement_timeout_ms: int
    report_statement_timeout_ms: int
    shutdown_grace_seconds: int
    db_statement_cache: int
    migration_database_url: str
    database_replica_urls: tuple[str, ...]
    replica_max_lag_ms: int
    secret_key: str
    bcrypt_rounds: int
    access_token_ttl: int
    session_retention_hours: int
    migrate_on_start: bool
    migration_lock_timeout_ms: int
    migration_lock_retries: int
    login_throttle_window_seconds: int
    login_failures_per_account: int
    login_failures_per_address: int
    rate_limit_api_key: int
    rate_limit_user: int
    group_commit_max: int

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def schema_database_url(self) -> str:
        """Where the schema step and the `db` commands connect (MIGRATION_DATABASE_URL, if set)."""
        return self.migration_database_url or self.database_url

    @property
    def behind_transaction_pooler(self) -> bool:
        """DB_STATEMENT_CACHE=0 says PostgreSQL is reached through a transaction-mode pooler."""
        return not self.is_sqlite and self.db_statement_cache == 0

    @property
    def database_limits(self) -> DatabaseLimits:
        return DatabaseLimits(
            pool_timeout_ms=self.db_pool_timeout_ms,
            pool_max_waiters=self.db_pool_max_waiters,
            lock_timeout_ms=self.db_lock_timeout_ms,
            statement_timeout_ms=self.db_statement_timeout_ms,
            report_statement_timeout_ms=self.report_statement_timeout_ms,
            group_commit_max=self.group_commit_max,
        )

    @property
    def login_throttle(self) -> LoginThrottle:
        return LoginThrottle(
            window_seconds=self.login_throttle_window_seconds,
            per_account=self.login_failures_per_account,
            per_address=self.login_failures_per_address,
        )

    @property
    def migration_policy(self) -> MigrationPolicy:
        return MigrationPolicy(
            migrate_on_start=self.migrate_on_start,
            lock_timeout_ms=self.migration_lock_timeout_ms,
            lock_retries=self.migration_lock_retries,
        )


# Every setting, its default and what it means: the README's configuration table is this list.
SETTINGS_DOC: list[tuple[str, str, str]] = [
    ("DATABASE_URL", DEFAULT_DATABASE_URL, "sqlite:///PATH or postgresql://USER@HOST:PORT/DB"),
    ("HOST", "127.0.0.1", "interface to listen on (--host)"),
    ("PORT", "8000", "TCP port (--port)"),
    ("WORKERS", "1", "uvicorn worker processes (--workers)"),
    ("LOG_LEVEL", "info", "debug, info, warning, error"),
    ("LOG_FORMAT", "text", "text (one readable line a request) or json (one JSON object a line)"),
    ("MAX_BODY_BYTES", "1048576", "largest request body; larger ones get 413 before they are read"),
    ("DB_POOL_MIN", "2", "connections opened at start-up (on SQLite, all of them unless DB_POOL_MAX is 1)"),
    (
        "DB_POOL_MAX",
        "10 (2 on SQLite)",
        "most connections open at once; on SQLite one is the writer's and the rest are read lanes,"
        " each a thread contending for the GIL",
    ),
    (
        "DB_POOL_TIMEOUT_MS",
        "2000",
        "how long a request waits for a pooled connection before it gets 503",
    ),
    (
        "DB_POOL_MAX_WAITERS",
        "100",
        "requests a worker lets wait for the database at once; past it new ones get 503 at once",
    ),
    (
        "DB_LOCK_TIMEOUT_MS",
        "2000",
        "how long a write waits for a lock: PostgreSQL `lock_timeout`; SQLite, a writer's whole wait"
        " for the write lock (`SQLITE_BUSY_TIMEOUT_MS`, its old name, is still read)",
    ),
    (
        "DB_STATEMENT_TIMEOUT_MS",
        "5000",
        "longest a statement may run: PostgreSQL `statement_timeout`; SQLite, an interrupt",
    ),
    (
        "REPORT_STATEMENT_TIMEOUT_MS",
        "30000",
        "longest a sales report may run (`GET /reports/sales`), in place of DB_STATEMENT_TIMEOUT_MS:"
        " a year's report reads every purchase in it",
    ),
    (
        "DB_STATEMENT_CACHE",
        "100",
        "PostgreSQL: statements asyncpg keeps prepared per connection; 0 behind a transaction-mode"
        " pooler such as PgBouncer (see Scaling out)",
    ),
    (
        "MIGRATION_DATABASE_URL",
        "(DATABASE_URL)",
        "where the schema step and `db` commands connect: the server itself, not a transaction-mode"
        " pooler (its session lock must hold)",
    ),
    (
        "DATABASE_REPLICA_URLS",
        "(none)",
        "PostgreSQL read replicas, comma-separated: reads that may be a moment old go there"
        " (see Scaling out)",
    ),
    (
        "REPLICA_MAX_LAG_MS",
        "1000",
        "a replica further behind than this is skipped until it catches up",
    ),
    (
        "SHUTDOWN_GRACE_SECONDS",
        "5",
        "after SIGTERM, how long `/ready` is 503 while requests are still served, before the worker"
        " stops accepting, finishes what is in flight and exits (`make run`: 0)",
    ),
    (
        "SECRET_KEY",
        "(generated)",
        "signs access tokens (HS256), 32+ characters; unset: made once, kept in secret_key",
    ),
    ("BCRYPT_ROUNDS", "12", "bcrypt cost for passwords (4 to 16)"),
    ("ACCESS_TOKEN_TTL", "3600", "seconds an access token and its session live"),
    (
        "SESSION_RETENTION_HOURS",
        "24",
        "how long expired and revoked sessions are kept before they are purged",
    ),
    (
        "LOGIN_THROTTLE_WINDOW_SECONDS",
        "900",
        "failed sign-ins are counted in fixed windows this long; a block ends with its window",
    ),
    (
        "LOGIN_FAILURES_PER_ACCOUNT",
        "10",
        "failed sign-ins a window allows one username from one client address; then 429",
    ),
    (
        "LOGIN_FAILURES_PER_ADDRESS",
        "100",
        "failed sign-ins a window allows one client address across all usernames; then 429",
    ),
    (
        "RATE_LIMIT_API_KEY",
        "0 (off)",
        "requests a second each API key may send to each worker (a second's worth at once); then 429",
    ),
    (
        "RATE_LIMIT_USER",
        "0 (off)",
        "the same for each signed-in user",
    ),
    (
        "GROUP_COMMIT_MAX",
        "1000",
        "the most single purchases a worker sends to the database in one statement (group commit;"
        " 1: each alone)",
    ),
    (
        "MIGRATE_ON_START",
        "true",
        "bring the schema to the code's head before serving; false: refuse to start until `db upgrade`",
    ),
    (
        "MIGRATION_LOCK_TIMEOUT_MS",
        "2000",
        "PostgreSQL: how long a migration statement waits for a table lock before it backs off",
    ),
    (
        "MIGRATION_LOCK_RETRIES",
        "10",
        "how often a migration that backed off is tried again (pauses grow to 5 s)",
    ),
]


def _integer(name: str, low: int, high: int) -> Callable[[str], int]:
    def cast(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise SettingsError(f"{name} must be a whole number, got {raw!r}") from None
        if not low <= value <= high:
            raise SettingsError(f"{name} must be between {low} and {high}, got {value}")
        return value

    return cast


def _choice(name: str, allowed: tuple[str, ...]) -> Callable[[str], str]:
    def cast(raw: str) -> str:
        value = raw.strip().lower()
        if value not in allowed:
            raise SettingsError(f"{name} must be one of {', '.join(allowed)}, got {raw!r}")
        return value

    return cast


def _database_url(raw: str) -> str:
    value = raw.strip()
    if value.startswith("postgres://"):
        value = "postgresql://" + value.removeprefix("postgres://")
    if value.startswith("sqlite:///") and len(value) > len("sqlite:///"):
        return value
    if value.startswith("postgresql://"):
        return value
    raise SettingsError(
        f"DATABASE_URL must start with sqlite:/// (and name a file) or postgresql://, got {raw!r}"
    )


def _optional_database_url(raw: str) -> str:
    return _database_url(raw) if raw.strip() else ""


def _replica_urls(raw: str) -> tuple[str, ...]:
    urls = tuple(_database_url(part) for part in raw.split(",") if part.strip())
    if any(url.startswith("sqlite") for url in urls):
        raise SettingsError("DATABASE_REPLICA_URLS must be postgresql:// URLs")
    return urls


def _boolean(name: str) -> Callable[[str], bool]:
    def cast(raw: str) -> bool:
        value = raw.strip().lower()
        if value in ("1", "true", "yes", "on"):
            return True
        if value in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{name} must be true or false, got {raw!r}")

    return cast


def _secret_key(raw: str) -> str:
    value = raw.strip()
    if value and len(value) < 32:
        raise SettingsError(f"SECRET_KEY must be at least 32 characters, got {len(value)}")
    return value


def _read(config: Config, name: str, cast: Callable[[str], T], default: str) -> T:
    # Config casts defaults too; wrap so a bad value in any source gives the same one-line error.
    raw = config(name, default=default)
    return cast(str(raw))


def load_settings(environ: Mapping[str, str] | None = None, env_file: str | Path | None = ".env") -> Settings:
    """Read and check every setting; raise SettingsError with one clear line on the first bad one."""
    env = dict(os.environ if environ is None else environ)
    use_file = env_file if env_file is not None and Path(env_file).is_file() else None
    config = Config(use_file, environ=env)
    database_url = _read(config, "DATABASE_URL", _database_url, DEFAULT_DATABASE_URL)
    is_sqlite = database_url.startswith("sqlite")
    settings = Settings(
        database_url=database_url,
        host=_read(config, "HOST", str.strip, "127.0.0.1"),
        port=_read(config, "PORT", _integer("PORT", 1, 65535), "8000"),
        workers=_read(config, "WORKERS", _integer("WORKERS", 1, 64), "1"),
        log_level=_read(
            config, "LOG_LEVEL", _choice("LOG_LEVEL", ("debug", "info", "warning", "error")), "info"
        ),
        log_format=_read(config, "LOG_FORMAT", _choice("LOG_FORMAT", ("text", "json")), "text"),
        max_body_bytes=_read(config, "MAX_BODY_BYTES", _integer("MAX_BODY_BYTES", 1024, 1 << 30), "1048576"),
        db_pool_min=_read(config, "DB_POOL_MIN", _integer("DB_POOL_MIN", 1, 1000), "2"),
        # SQLite: the writer's connection and one read lane (`SQLitePool`). Every connection is a
        # thread contending for the GIL: on 2 cores GET /posts served 1,300 req/s with 10
        # connections lent in turn, 2,350 with 2, and 2,830 with one read lane.
        db_pool_max=_read(
            config, "DB_POOL_MAX", _integer("DB_POOL_MAX", 1, 1000), "2" if is_sqlite else "10"
        ),
        db_pool_timeout_ms=_read(
            config, "DB_POOL_TIMEOUT_MS", _integer("DB_POOL_TIMEOUT_MS", 1, 600_000), "2000"
        ),
        db_pool_max_waiters=_read(
            config, "DB_POOL_MAX_WAITERS", _integer("DB_POOL_MAX_WAITERS", 0, 1_000_000), "100"
        ),
        db_lock_timeout_ms=_read(
            config,
            "DB_LOCK_TIMEOUT_MS",
            _integer("DB_LOCK_TIMEOUT_MS", 1, 600_000),
            str(config("SQLITE_BUSY_TIMEOUT_MS", default="2000")),
        ),
        db_statement_timeout_ms=_read(
            config, "DB_STATEMENT_TIMEOUT_MS", _integer("DB_STATEMENT_TIMEOUT_MS", 1, 3_600_000), "5000"
        ),
        report_statement_timeout_ms=_read(
            config,
            "REPORT_STATEMENT_TIMEOUT_MS",
            _integer("REPORT_STATEMENT_TIMEOUT_MS", 1, 3_600_000),
            "30000",
        ),
        shutdown_grace_seconds=_read(
            config, "SHUTDOWN_GRACE_SECONDS", _integer("SHUTDOWN_GRACE_SECONDS", 0, 600), "5"
        ),
        secret_key=_read(config, "SECRET_KEY", _secret_key, ""),
        bcrypt_rounds=_read(config, "BCRYPT_ROUNDS", _integer("BCRYPT_ROUNDS", 4, 16), "12"),
        access_token_ttl=_read(
            config, "ACCESS_TOKEN_TTL", _integer("ACCESS_TOKEN_TTL", 60, 30 * 86400), "3600"
        ),
        session_retention_hours=_read(
            config, "SESSION_RETENTION_HOURS", _integer("SESSION_RETENTION_HOURS", 0, 24 * 365), "24"
        ),
        migrate_on_start=_read(config, "MIGRATE_ON_START", _boolean("MIGRATE_ON_START"), "true"),
        migration_lock_timeout_ms=_read(
            config, "MIGRATION_LOCK_TIMEOUT_MS", _integer("MIGRATION_LOCK_TIMEOUT_MS", 10, 600_000), "2000"
        ),
        migration_lock_retries=_read(
            config, "MIGRATION_LOCK_RETRIES", _integer("MIGRATION_LOCK_RETRIES", 0, 1000), "10"
        ),
        db_statement_cache=_read(
            config, "DB_STATEMENT_CACHE", _integer("DB_STATEMENT_CACHE", 0, 100_000), "100"
        ),
        migration_database_url=_read(config, "MIGRATION_DATABASE_URL", _optional_database_url, ""),
        database_replica_urls=_read(config, "DATABASE_REPLICA_URLS", _replica_urls, ""),
        replica_max_lag_ms=_read(
            config, "REPLICA_MAX_LAG_MS", _integer("REPLICA_MAX_LAG_MS", 1, 3_600_000), "1000"
        ),
        login_throttle_window_seconds=_read(
            config,
            "LOGIN_THROTTLE_WINDOW_SECONDS",
            _integer("LOGIN_THROTTLE_WINDOW_SECONDS", 10, 86_400),
            "900",
        ),
        login_failures_per_account=_read(
            config, "LOGIN_FAILURES_PER_ACCOUNT", _integer("LOGIN_FAILURES_PER_ACCOUNT", 1, 1_000_000), "10"
        ),
        login_failures_per_address=_read(
            config, "LOGIN_FAILURES_PER_ADDRESS", _integer("LOGIN_FAILURES_PER_ADDRESS", 1, 1_000_000), "100"
        ),
        rate_limit_api_key=_read(
            config, "RATE_LIMIT_API_KEY", _integer("RATE_LIMIT_API_KEY", 0, 1_000_000), "0"
        ),
        rate_limit_user=_read(config, "RATE_LIMIT_USER", _integer("RATE_LIMIT_USER", 0, 1_000_000), "0"),
        group_commit_max=_read(config, "GROUP_COMMIT_MAX", _integer("GROUP_COMMIT_MAX", 1, 1000), "1000"),
    )
    if settings.behind_transaction_pooler and not settings.migration_database_url:
        # Through transaction pooling the schema step's session lock would not be exclusive.
        raise SettingsError(
            "DB_STATEMENT_CACHE=0 (a transaction-mode pooler) needs MIGRATION_DATABASE_URL:"
            " the server itself, for the schema step"
        )
    if settings.database_replica_urls and is_sqlite:
        raise SettingsError("DATABASE_REPLICA_URLS needs a PostgreSQL DATABASE_URL")
    if settings.schema_database_url.startswith("sqlite") != is_sqlite:
        raise SettingsError("MIGRATION_DATABASE_URL must name the same kind of database as DATABASE_URL")
    if settings.db_pool_min > settings.db_pool_max:
        low, high = settings.db_pool_min, settings.db_pool_max
        raise SettingsError(f"DB_POOL_MIN ({low}) must not be larger than DB_POOL_MAX ({high})")
    return settings
