"""The service against the speed limit of its stack, side by side in one run.

Starts the service and ../shared/bench/limit_app.py on the same database (the limit app keeps
its own lim_* tables), one uvicorn worker each, and drives each in turn with the same wrk load.
Rounds alternate between the two so that drift on a shared machine hits both; the median of
the rounds is reported, and the service's throughput as a ratio of the limit app's.

    python bench/compare_limit.py --database sqlite --database postgresql --scenario purchase

Scenarios: purchase (POST /purchases with ../shared/bench/purchases.lua) and posts (GET /posts?limit=20
on the limit app's data shape, seeded with `python -m service seed`), compared with the limit app;
batch (POST /purchases/batch, 1000 rows each, bench/batch.lua), the service alone, in rows/s.
PostgreSQL: a fresh database is made on BENCH_POSTGRES_URL's server and dropped afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIMIT_APP = ROOT.parent / "shared" / "bench" / "limit_app.py"
PURCHASES_LUA = ROOT.parent / "shared" / "bench" / "purchases.lua"
BATCH_LUA = ROOT / "bench" / "batch.lua"
# name: (title, wrk arguments, path, rows a request writes, compared with the limit app?)
SCENARIOS = {
    "purchase": ("POST /purchases", [f"-s{PURCHASES_LUA}"], "/", 1, True),
    "batch": ("POST /purchases/batch", [f"-s{BATCH_LUA}"], "/", 1000, False),
    "posts": ("GET /posts?limit=20", [], "/posts?limit=20", 1, True),
}
# The limit app seeds 1,000 users, 10,000 posts, ~50,000 likes, 10,000 reposts, 20,000 comments.
SEED_LIKE_LIMIT_APP = [
    *("--users", "1000", "--posts", "10000", "--likes", "50000"),
    *("--reposts", "10000", "--comments", "20000", "--follows", "10000"),
]


@dataclass
class Run:
    requests_per_second: float
    non_2xx: int
    socket_errors: str | None
    p99_ms: float


def wrk(url: str, extra: list[str], seconds: int, connections: int, env: dict[str, str]) -> Run:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", *extra, url],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        cwd=PURCHASES_LUA.parent,
    ).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    p99_ms = float(p99.group(1)) * scale[p99.group(2)] if p99 else float("nan")
    return Run(rate, int(bad.group(1)) if bad else 0, errors.group(0) if errors else None, p99_ms)


def wait_until_up(url: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{url} did not answer in time")


@contextlib.contextmanager
def server(args: list[str], env: dict[str, str], probe: str, cwd: Path) -> Iterator[None]:
    process = subprocess.Popen(args, env=env, cwd=cwd, stdout=subprocess.DEVNULL)
    try:
        wait_until_up(probe, process)
        yield
    finally:
        process.terminate()
        process.wait(timeout=30)


@contextlib.contextmanager
def database(kind: str) -> Iterator[str]:
    if kind == "sqlite":
        with tempfile.TemporaryDirectory(prefix="bench-") as folder:
            yield f"sqlite:///{folder}/bench.db"
        return
    import psycopg

    admin = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
    name = f"bench_{secrets.token_hex(4)}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{admin.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def compare(kind: str, scenario: str, seconds: int, connections: int, rounds: int) -> dict[str, object]:
    title, wrk_args, path, rows_per_request, compared = SCENARIOS[scenario]
    service_port, limit_port = 8911, 8912
    with database(kind) as url:
        env = {
            **os.environ,
            "DATABASE_URL": url,
            "LIMIT_DB": url,
            "LOG_LEVEL": "warning",  # no access log lines, as the limit app runs with --no-access-log
            "SECRET_KEY": secrets.token_urlsafe(48),
        }
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        key = subprocess.run(
            [sys.executable, "-m", "service", "apikey", "create", "bench"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        if scenario == "posts":
            seed = [sys.executable, "-m", "service", "seed", *SEED_LIKE_LIMIT_APP]
            subprocess.run(seed, env=env, cwd=ROOT, check=True, capture_output=True)
        wrk_env = {**os.environ, "API_KEY": key}
        service_args = [sys.executable, "-m", "service", "--port", str(service_port), "--workers", "1"]
        limit_args = [
            sys.executable,
            "-m",
            "uvicorn",
            "limit_app:app",
            "--port",
            str(limit_port),
            "--no-access-log",
            "--log-level",
            "warning",
            "--loop",
            "uvloop",
            "--http",
            "httptools",
        ]
        runs: dict[str, list[Run]] = {"service": [], "limit": []}
        with (
            server(service_args, env, f"http://127.0.0.1:{service_port}/health", ROOT),
            server(limit_args, env, f"http://127.0.0.1:{limit_port}/posts?limit=1", LIMIT_APP.parent),
        ):
            targets = (
                {"service": service_port, "limit": limit_port} if compared else {"service": service_port}
            )
            for port in targets.values():  # warm up: caches, prepared statements, first customers
                wrk(f"http://127.0.0.1:{port}{path}", wrk_args, 2, connections, wrk_env)
            for _ in range(rounds):
                for name, port in targets.items():
                    runs[name].append(
                        wrk(f"http://127.0.0.1:{port}{path}", wrk_args, seconds, connections, wrk_env)
                    )
    service_rate = statistics.median(run.requests_per_second for run in runs["service"])
    limit_rate = statistics.median(run.requests_per_second for run in runs["limit"]) if compared else None
    return {
        "database": kind,
        "scenario": title,
        "service_rps": round(service_rate, 1),
        "rows_per_second": round(service_rate * rows_per_request),
        "limit_rps": round(limit_rate) if limit_rate else None,
        "ratio": round(service_rate / limit_rate, 3) if limit_rate else None,
        "service_non_2xx": sum(run.non_2xx for run in runs["service"]),
        "limit_non_2xx": sum(run.non_2xx for run in runs["limit"]),
        "service_p99_ms": round(statistics.median(run.p99_ms for run in runs["service"]), 2),
        "limit_p99_ms": round(statistics.median(run.p99_ms for run in runs["limit"]), 2)
        if compared
        else None,
        "socket_errors": [run.socket_errors for name in runs for run in runs[name] if run.socket_errors],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database", action="append", choices=["sqlite", "postgresql"])
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS))
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(
        f"wrk -t1 -c{args.connections} -d{args.seconds}s,"
        f" {args.rounds} alternating rounds, median; one worker each"
    )
    print(
        f"{'database':10} {'scenario':22} {'service/s':>9} {'rows/s':>8} {'limit/s':>8} {'ratio':>6}"
        f" {'non-2xx':>8} {'p99 ms (service/limit)':>22}"
    )
    for kind in args.database or ["sqlite", "postgresql"]:
        for scenario in args.scenario or ["purchase"]:
            r = compare(kind, scenario, args.seconds, args.connections, args.rounds)
            ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else "-"
            print(
                f"{kind:10} {r['scenario']!s:22} {r['service_rps']!s:>9} {r['rows_per_second']!s:>8}"
                f" {r['limit_rps'] or '-'!s:>8} {ratio:>6} {r['service_non_2xx']!s:>8}"
                f" {r['service_p99_ms']!s:>12}/{r['limit_p99_ms'] or '-'!s:<9}"
            )
            if r["socket_errors"]:
                print(f"  socket errors: {r['socket_errors']}")


if __name__ == "__main__":
    main()
