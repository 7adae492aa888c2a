"""What PgBouncer in transaction mode costs the service, against direct connections, in one run.

    python bench/pgbouncer_cost.py [--postgres-url URL] [--seconds 8] [--rounds 5]

A fresh database, seeded as `python -m service bench` seeds it, and two service processes on it
(one worker each): one connected directly, one through a PgBouncer started here
(DB_STATEMENT_CACHE=0, MIGRATION_DATABASE_URL direct, the timeouts as database settings, as the
README's Scaling out says). Each scenario alternates between the two, round by round, under the
bench's load (wrk, 32 connections); it prints each side's median run and the median of the rounds'
ratios (pooled / direct). Run from the repository root after `make bench`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import secrets
import sys
import tempfile
import urllib.request
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402 - after the path is set

from service.bench.runner import (  # noqa: E402
    _drive,
    _median_ratio,
    _median_run,
    fresh_database,
    prepare,
    seed_database,
    server,
)
from service.bench.scenarios import SCENARIOS  # noqa: E402
from service.bench.sizes import SeedSize  # noqa: E402
from service.config import load_settings  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.pgbouncer import running_pgbouncer  # noqa: E402


def purchases_flushed(port: int) -> tuple[float, float]:
    """(flushes, purchases) so far from the service's group-commit histogram."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as response:
        text = response.read().decode()
    found = [
        re.search(rf'^db_group_commit_size_{part}{{kind="purchase"}} (\S+)$', text, re.M)
        for part in ("count", "sum")
    ]
    return (float(found[0].group(1)), float(found[1].group(1))) if found[0] and found[1] else (0.0, 0.0)


def cpu_seconds_by_program() -> dict[str, float]:
    """CPU seconds used so far by every process on this machine, summed by program name."""
    ticks = os.sysconf("SC_CLK_TCK")
    used: dict[str, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            text = stat.read_text()
            name = text[text.index("(") + 1 : text.rindex(")")]
            fields = text[text.rindex(")") + 2 :].split()
            used[name] = used.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return used


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--scenario", action="append", choices=list(SCENARIOS))
    args = parser.parse_args()
    options = SimpleNamespace(
        connections=args.connections,
        seconds=args.seconds,
        generator="wrk",
        limit_app=str(ROOT.parent / "shared" / "bench" / "limit_app.py"),
    )
    limits = load_settings(environ={}, env_file=None).database_limits
    with fresh_database("postgresql", args.postgres_url) as direct, tempfile.TemporaryDirectory() as folder:
        name = direct.rsplit("/", 1)[1]
        with psycopg.connect(direct, autocommit=True) as conn:
            conn.execute(
                f"ALTER DATABASE \"{name}\" SET statement_timeout = '{limits.statement_timeout_ms}ms'"
            )
            conn.execute(f"ALTER DATABASE \"{name}\" SET lock_timeout = '{limits.lock_timeout_ms}ms'")
        print("seeding ...", flush=True)
        reader = seed_database(direct, SeedSize(), print)
        common = {
            **os.environ,
            "LOG_LEVEL": "warning",
            "SECRET_KEY": secrets.token_urlsafe(48),
            "SHUTDOWN_GRACE_SECONDS": "0",
        }
        with contextlib.ExitStack() as stack:
            bouncer = stack.enter_context(running_pgbouncer(direct, free_port(), pool_size=20))
            sides = {
                "direct": {**common, "DATABASE_URL": direct},
                "pgbouncer": {
                    **common,
                    "DATABASE_URL": f"{bouncer}/{name}",
                    "DB_STATEMENT_CACHE": "0",
                    "MIGRATION_DATABASE_URL": direct,
                },
            }
            ports = {}
            for side, env in sides.items():
                ports[side] = free_port()
                args_ = [sys.executable, "-m", "service", "--port", str(ports[side])]
                stack.enter_context(server(args_, env, f"http://127.0.0.1:{ports[side]}/health", ROOT))
            ctx = prepare(f"http://127.0.0.1:{ports['direct']}", sides["direct"], ROOT, reader, print)
            for scenario_name in args.scenario or ["purchase", "posts"]:
                scenario = SCENARIOS[scenario_name]
                runs: dict[str, list] = {side: [] for side in sides}
                flushed_before = {side: purchases_flushed(port) for side, port in ports.items()}
                cpu_used: dict[str, dict[str, float]] = {side: {} for side in sides}
                requests = dict.fromkeys(sides, 0)
                for port in ports.values():  # warm up, not counted
                    _drive(f"http://127.0.0.1:{port}", scenario, ctx, options, Path(folder), 2)
                for round_number in range(1, args.rounds + 1):
                    order = list(ports.items()) if round_number % 2 else list(ports.items())[::-1]
                    for side, port in order:
                        before = cpu_seconds_by_program()
                        run = _drive(f"http://127.0.0.1:{port}", scenario, ctx, options, Path(folder))
                        for name, seconds in cpu_seconds_by_program().items():
                            spent = seconds - before.get(name, 0.0)
                            cpu_used[side][name] = cpu_used[side].get(name, 0.0) + spent
                        requests[side] += round(run.requests_per_second * options.seconds)
                        runs[side].append(run)
                for side in sides:
                    run = _median_run(runs[side])
                    cpu = cpu_used[side]
                    shares = ", ".join(
                        f"{name} {seconds * 1000 / requests[side]:.3f}"
                        for name, seconds in sorted(cpu.items(), key=lambda item: -item[1])[:4]
                    )
                    latencies = f"p50 {run.p50_ms:6.2f}  p90 {run.p90_ms:6.2f}  p99 {run.p99_ms:6.2f} ms"
                    print(
                        f"{scenario_name:9} {side:10} {run.requests_per_second:8.0f} req/s  {latencies}"
                        f"  non-2xx {run.non_2xx}  errors {run.errors}"
                    )
                    print(f"{'':9} {side:10} CPU ms a request: {shares}")
                    (flushes, purchases), (flushes_0, purchases_0) = (
                        purchases_flushed(ports[side]),
                        flushed_before[side],
                    )
                    if flushes > flushes_0:
                        per_flush = (purchases - purchases_0) / (flushes - flushes_0)
                        print(f"{'':9} {side:10} {per_flush:8.1f} purchases a flush")
                ratio = _median_ratio(runs["pgbouncer"], runs["direct"])
                print(f"{scenario_name:9} pgbouncer / direct: {ratio:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
