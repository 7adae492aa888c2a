"""Command line: `python -m service` serves; `apikey`, `user`, `db`, `seed` and `bench` do the rest."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict
from typing import Any

from service.bench.scenarios import SCENARIOS
from service.bench.sizes import KINDS, SIZES, chosen_size
from service.config import SCHEMA_CHECKED, Settings, SettingsError, load_settings
from service.tables import ROLES, SCOPES
from service.tracing import checked_exporter, tracing_requested

GRACEFUL_SHUTDOWN_BACKSTOP_SECONDS = 60


def _add_size_options(parser: argparse.ArgumentParser) -> None:
    """--data small|large, then --users N --posts N ... to change any one of them."""
    parser.add_argument(
        "--data",
        choices=list(SIZES),
        default="small",
        help="small: the limit app's shape (the default); large: a year of a busy service (see README)",
    )
    small, large = SIZES["small"], SIZES["large"]
    for kind in KINDS:
        parser.add_argument(
            f"--{kind}",
            type=int,
            metavar="N",
            help=f"how many {kind} to seed (small {getattr(small, kind):,}, large {getattr(large, kind):,})",
        )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m service",
        description="Serve the API (the default), manage API keys, roles and the schema, seed, benchmark.",
    )
    parser.add_argument("--host", help="interface to listen on (default: HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="TCP port (default: PORT or 8000)")
    parser.add_argument("--workers", type=int, help="worker processes (default: WORKERS or 1)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("serve", help="serve the API (what runs without a command)")

    apikey = commands.add_parser("apikey", help="create, list or revoke API keys for machine callers")
    actions = apikey.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="make a key and print it once")
    create.add_argument("name", help="who the key is for, e.g. billing-service")
    create.add_argument(
        "--scope",
        action="append",
        choices=SCOPES,
        dest="scopes",
        help="what the key may do; repeat for several (default: every scope)",
    )
    actions.add_parser("list", help="every key with its scopes and state (never the key)")
    revoke = actions.add_parser("revoke", help="revoke the live key with this name")
    revoke.add_argument("name")

    user = commands.add_parser("user", help="a user's role: member (the default) or staff")
    user_actions = user.add_subparsers(dest="action", metavar="ACTION", required=True)
    set_role = user_actions.add_parser(
        "set-role", help="make a user staff (the purchase ledger too) or a member again"
    )
    set_role.add_argument("username")
    set_role.add_argument("role", choices=ROLES)

    from service.migrations.commands import add_db_commands

    add_db_commands(commands)

    seed = commands.add_parser(
        "seed", help="load a social data set (users, posts, likes, ...) for demos and benchmarks"
    )
    _add_size_options(seed)
    seed.add_argument("--random-seed", type=int, default=42, help="same seed, same shape of data")

    bench = commands.add_parser(
        "bench", help="load-test the databases through the service, beside the limit app"
    )
    bench.add_argument(
        "--database",
        action="append",
        choices=["sqlite", "postgresql"],
        help="repeat for several (default: both)",
    )
    bench.add_argument(
        "--scenario",
        action="append",
        choices=list(SCENARIOS),
        help="repeat for several (default: all)",
    )
    bench.add_argument("--workers", type=int, default=1, help="service workers (default 1)")
    bench.add_argument("--seconds", type=int, default=10, help="length of one run (default 10)")
    bench.add_argument("--connections", type=int, default=32, help="concurrent connections (default 32)")
    bench.add_argument("--rounds", type=int, default=3, help="alternating rounds; the median is reported")
    bench.add_argument("--generator", choices=["wrk", "builtin"], help="default: wrk when installed")
    bench.add_argument(
        "--limit-app", default="../shared/bench/limit_app.py", help="the speed limit to compare with"
    )
    bench.add_argument(
        "--postgres-url",
        default=os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"),
        help="a server to make a fresh benchmark database on (BENCH_POSTGRES_URL)",
    )
    bench.add_argument(
        "--memory",
        type=int,
        default=200_000,
        metavar="N",
        help="then N requests of the mixed scenario, RSS compared after N/10 and N (0: skip; default 200000)",
    )
    bench.add_argument(
        "--output",
        default="bench-results",
        help="folder for bench.json and its charts (bench.png, sweep.png)",
    )
    bench.add_argument(
        "--port", type=int, default=8911, help="the service's port (the limit app takes the next)"
    )
    bench.add_argument(
        "--sweep",
        action="store_true",
        help="each scenario at 1, 2, 4, ... up to --connections: the throughput-latency curve",
    )
    bench.add_argument(
        "--target",
        type=_http_url,
        metavar="URL",
        help="drive this running service instead of starting one (seeded through its API)",
    )
    bench.add_argument(
        "--api-key",
        default=os.environ.get("BENCH_API_KEY", ""),
        help="with --target, needed: the key (every scope) the ledger's scenarios send (BENCH_API_KEY)",
    )
    _add_size_options(bench)
    actions = bench.add_subparsers(dest="action", metavar="ACTION")
    compare = actions.add_parser(
        "compare", help="each scenario's change between two bench.json files, against the rounds' spread"
    )
    compare.add_argument("old", help="bench.json of the run before")
    compare.add_argument("new", help="bench.json of the run after")
    return parser


def _http_url(text: str) -> str:
    if not text.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"{text!r} is not an http:// or https:// URL")
    return text.rstrip("/")


def serve(settings: Settings, host: str | None, port: int | None, workers: int | None) -> int:
    import logging

    import uvicorn

    from service.logs import configure_logging
    from service.migrations.schema import prepare_schema

    configure_logging(settings.log_level, settings.log_format)
    # Once, before any worker starts; a refusal (SchemaRefused) ends start-up in main().
    logging.getLogger("service").info(prepare_schema(settings.schema_database_url, settings.migration_policy))
    os.environ[SCHEMA_CHECKED] = "1"
    workers = workers or settings.workers
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Each worker writes its metrics here; a scrape of any worker sums them all.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="service-metrics-")
    uvicorn.run(
        "service.app:serve_app",
        factory=True,
        host=host or settings.host,
        port=port or settings.port,
        workers=workers,
        loop="uvloop",
        http="httptools",
        log_config=None,
        access_log=False,
        server_header=False,
        # A backstop only: every request is bounded by the database limits well within it.
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_BACKSTOP_SECONDS,
    )
    return 0


def _with_database(settings: Settings, work: Callable[[Any], Awaitable[int]]) -> int:
    from service.db import open_database
    from service.migrations.schema import prepare_schema

    async def run() -> int:
        prepare_schema(settings.schema_database_url, settings.migration_policy)
        db = open_database(settings)
        await db.connect()
        try:
            return await work(db)
        finally:
            await db.disconnect()

    return asyncio.run(run())


def apikey(settings: Settings, action: str, name: str | None, scopes: list[str] | None = None) -> int:
    from service import apikeys

    async def create(db: Any) -> int:
        assert name is not None
        try:
            key, row = await apikeys.create_api_key(db, name, scopes or SCOPES)
        except apikeys.KeyNameTaken:
            print(f"error: a live key named {name!r} exists; revoke it first", file=sys.stderr)
            return 1
        print(key)
        if not scopes:
            print(f"no --scope given: the key may do everything ({row['scopes']})", file=sys.stderr)
        print(
            f"created API key {row['name']!r} with scopes {row['scopes']}; it is shown only this once."
            " Send it as X-API-Key.",
            file=sys.stderr,
        )
        return 0

    async def list_keys(db: Any) -> int:
        for row in await apikeys.list_api_keys(db):
            state = f"revoked {row['revoked_at']}" if row["revoked_at"] else "live"
            print(
                f"{row['name']}\t{row['key_prefix']}...\t{row['scopes']}"
                f"\tcreated {row['created_at']}\t{state}"
            )
        return 0

    async def revoke(db: Any) -> int:
        assert name is not None
        if await apikeys.revoke_api_key(db, name):
            print(f"revoked API key {name!r}", file=sys.stderr)
            return 0
        print(f"error: no live key named {name!r}", file=sys.stderr)
        return 1

    return _with_database(settings, {"create": create, "list": list_keys, "revoke": revoke}[action])


def user(settings: Settings, username: str, role: str) -> int:
    from service.accounts import set_role

    async def change(db: Any) -> int:
        row = await set_role(db, username, role)
        if row is None:
            print(f"error: there is no user {username!r}", file=sys.stderr)
            return 1
        print(f"{row['username']} is now {row['role']}; it counts from their next request", file=sys.stderr)
        return 0

    return _with_database(settings, change)


def seed(settings: Settings, args: argparse.Namespace) -> int:
    import time

    from service.migrations.schema import prepare_schema
    from service.seed import SEED_PASSWORD, seed

    size = chosen_size(args)
    if any(count < 0 for count in asdict(size).values()):
        print("error: counts must not be negative", file=sys.stderr)
        return 2
    prepare_schema(settings.schema_database_url, settings.migration_policy)
    started = time.perf_counter()
    loaded = seed(
        settings.schema_database_url,
        size,
        settings.bcrypt_rounds,
        args.random_seed,
        report=lambda line: print(f"seeded {line}", file=sys.stderr, flush=True),
    )
    took = time.perf_counter() - started
    print(", ".join(f"{count} {kind}" for kind, count in loaded.items()) + f" in {took:.1f} s")
    print(f"every seeded user's password is {SEED_PASSWORD!r}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
        if tracing_requested():
            checked_exporter()
        for flag, low, high in (("port", 1, 65535), ("workers", 1, 64)):
            value = getattr(args, flag)
            if value is not None and not low <= value <= high:
                raise SettingsError(f"--{flag} must be between {low} and {high}, got {value}")
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # Imported here, not at the top: uvicorn's worker processes import this module again.
    from service.migrations.schema import SchemaRefused

    try:
        return _run(settings, args)
    except SchemaRefused as exc:
        # Like a bad setting: one line, exit status 2, no traceback.
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(settings: Settings, args: argparse.Namespace) -> int:
    if args.command == "apikey":
        return apikey(settings, args.action, getattr(args, "name", None), getattr(args, "scopes", None))
    if args.command == "user":
        return user(settings, args.username, args.role)
    if args.command == "seed":
        return seed(settings, args)
    if args.command == "db":
        from service.migrations.commands import run_db_command

        return run_db_command(settings.schema_database_url, settings.migration_policy, args)
    if args.command == "bench":
        from pathlib import Path

        from service.bench.runner import run_bench

        if args.target and not args.api_key:
            # The accounts it registers are members, who may not record or read purchases.
            print(
                "error: --target needs --api-key (or BENCH_API_KEY): a key with every scope, made on the"
                " target's server with: python -m service apikey create bench",
                file=sys.stderr,
            )
            return 2
        args.database = args.database or ["sqlite", "postgresql"]
        args.scenario = args.scenario or list(SCENARIOS)
        return run_bench(args, Path.cwd())
    return serve(settings, args.host, args.port, args.workers)


if __name__ == "__main__":
    sys.exit(main())
