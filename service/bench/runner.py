"""`python -m service bench`: load-test a database through the service, beside the stack's speed limit.

For each database it makes a fresh one, seeds it, starts the service (N workers) and - for the
scenarios it has too - `../shared/bench/limit_app.py` on the same database, then drives each
scenario with the same load: wrk when it is installed, a built-in asyncio generator otherwise.
Rounds alternate between the service and the limit app (who goes first alternates too), so drift
on a shared machine hits both; medians are reported, and the ratio is the median of the rounds'.
Output: a table, the same as JSON, and a PNG chart (with matplotlib).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from service.bench.load import Run, builtin_load, wrk_load, wrk_script
from service.bench.scenarios import SCENARIOS, Context, Scenario, batch_request

# Before a scenario's rounds each server gets this much of its load, unmeasured: pools fill,
# statements are prepared, caches warm.
WARM_UP_SECONDS = 2
MEMORY_RUN_SECONDS = 10
MEMORY_LIMIT = 0.10  # a worker's RSS may grow this much between the early and the late sample


# Orchestration: databases, servers, rounds.


@dataclass
class Result:
    database: str
    scenario: str
    title: str
    workers: int
    service: Run
    rows_per_second: float
    limit: Run | None = None
    ratio: float | None = None
    rounds: list[dict[str, Any]] = field(default_factory=list)


def _median_run(runs: list[Run]) -> Run:
    def middle(name: str) -> float:
        return float(statistics.median(getattr(run, name) for run in runs))

    return Run(
        middle("requests_per_second"),
        middle("p50_ms"),
        middle("p90_ms"),
        middle("p99_ms"),
        max(run.max_ms for run in runs),
        sum(run.non_2xx for run in runs),
        sum(run.errors for run in runs),
        sum(run.requests for run in runs),
    )


def _median_ratio(service: list[Run], limit: list[Run]) -> float:
    """The median of each round's ratio: the two runs of a round are seconds apart, so the drift of
    a shared machine cancels out within a round better than between two medians."""
    ratios = [s.requests_per_second / lim.requests_per_second for s, lim in zip(service, limit, strict=True)]
    return float(statistics.median(ratios))


@contextlib.contextmanager
def fresh_database(kind: str, admin_url: str) -> Iterator[str]:
    if kind == "sqlite":
        with tempfile.TemporaryDirectory(prefix="bench-") as folder:
            yield f"sqlite:///{folder}/bench.db"
        return
    import psycopg

    name = f"bench_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{admin_url.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def server(args: list[str], env: dict[str, str], probe: str, cwd: Path) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(args, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise SystemExit(f"{args[2]} exited with {process.returncode} before answering {probe}")
            with contextlib.suppress(OSError):
                urllib.request.urlopen(probe, timeout=1)
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"{probe} did not answer in time")
            time.sleep(0.2)
        yield process
    finally:
        process.terminate()
        process.wait(timeout=30)


def _post_json(url: str, body: Any, headers: dict[str, str]) -> Any:
    request = urllib.request.Request(url, orjson.dumps(body), {"Content-Type": "application/json", **headers})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read() or b"null")


def seed_database(url: str, size: Any) -> str:
    """Seed the social data set; the username of the seeded user who follows the most others."""
    from dataclasses import replace

    from service.config import load_settings
    from service.db import open_database
    from service.migrations.schema import prepare_schema
    from service.seed import seed

    async def run() -> str:
        prepare_schema(url)
        db = open_database(replace(load_settings(environ={}, env_file=None), database_url=url))
        await db.connect()
        try:
            await seed(db, size, bcrypt_rounds=4)
            row = await db.fetch_one(db.sql.busiest_follower, {})
            return str(row["username"]) if row else ""
        finally:
            await db.disconnect()

    return asyncio.run(run())


def prepare(base: str, env: dict[str, str], root: Path, reader: str, say: Callable[[str], None]) -> Context:
    """An API key, the reader signed in, and 5,000 customers with purchases (for the summary)."""
    from service.seed import SEED_PASSWORD

    key = subprocess.run(
        [sys.executable, "-m", "service", "apikey", "create", f"bench-{secrets.token_hex(3)}"],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    token = _post_json(f"{base}/auth/login", {"username": reader, "password": SEED_PASSWORD}, {})[
        "access_token"
    ]
    ctx = Context(api_key=key, token=token, customer_ids=[])
    say("  recording 10,000 purchases for up to 5,000 customers (for the summary scenario)")
    rng = random.Random(7)
    for _ in range(10):
        _, path, body, headers = batch_request(rng, ctx)
        _post_json(f"{base}{path}", orjson.loads(body or b"{}"), headers)
    # The summary scenario draws among the first thousand customers that exist.
    cursor = ""
    while len(ctx.customer_ids) < 1000:
        request = urllib.request.Request(
            f"{base}/customers?limit=100&cursor={cursor}", headers={"X-API-Key": key}
        )
        with urllib.request.urlopen(request) as response:
            page = json.loads(response.read())
        ctx.customer_ids += [customer["id"] for customer in page["items"]]
        if not (cursor := page["next_cursor"] or ""):
            break
    return ctx


def _drive(
    url: str, scenario: Scenario, ctx: Context, options: Any, folder: Path, seconds: int | None = None
) -> Run:
    connections = scenario.connections or options.connections
    seconds = seconds or options.seconds
    rng = random.Random(secrets.randbits(32))
    if options.generator == "wrk":
        reference = Path(options.limit_app).parent / "purchases.lua"
        if scenario.name == "purchase" and reference.is_file():
            # The reference load itself: 5,000 emails, about half the requests new customers.
            os.environ["API_KEY"] = ctx.api_key
            return wrk_load(url, reference, seconds, connections)
        sample = [scenario.make(rng, ctx) for _ in range(20 if scenario.name == "batch" else 2000)]
        return wrk_load(url, wrk_script(sample, folder), seconds, connections)
    return asyncio.run(builtin_load(url, lambda: scenario.make(rng, ctx), seconds, connections))


@dataclass
class Memory:
    """Each worker's resident memory after the first tenth of the requests and after all of them."""

    database: str
    workers: int
    early_requests: int
    early_rss_mib: list[float]
    late_requests: int
    late_rss_mib: list[float]
    samples: list[tuple[int, list[float]]] = field(default_factory=list)

    @property
    def growth(self) -> float:
        """The largest growth of any worker, as a fraction of its early RSS."""
        pairs = zip(self.early_rss_mib, self.late_rss_mib, strict=True)
        return max(late / early - 1 for early, late in pairs)


def _mib(rss: list[float]) -> str:
    return ", ".join(f"{r:.1f}" for r in rss)


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def _worker_pids(pid: int) -> list[int]:
    """The processes that serve requests: uvicorn's workers, or the server itself with one worker."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(child) for child in children] or [pid]


def measure_memory(
    kind: str, url: str, pid: int, ctx: Context, options: Any, folder: Path, say: Callable[[str], None]
) -> Memory:
    """Drive the mixed scenario for `options.memory` requests; RSS after a tenth of them and at the end."""
    scenario, total, early_mark = SCENARIOS["mixed"], options.memory, options.memory // 10
    workers = _worker_pids(pid)
    done, early, samples, rate = 0, None, [], 0.0
    while done < total:
        # Short runs until the early mark, so that sample lands close to it; then no longer than
        # the requests still to go need.
        seconds = 1 if early is None else max(1, min(MEMORY_RUN_SECONDS, math.ceil((total - done) / rate)))
        run = _drive(url, scenario, ctx, options, folder, seconds)
        rate = max(run.requests_per_second, 1.0)
        if run.non_2xx or run.errors:
            raise SystemExit(f"memory check: {run.non_2xx} non-2xx answers, {run.errors} socket errors")
        done += run.requests
        rss = [round(_rss_mib(worker), 1) for worker in workers]
        samples.append((done, rss))
        if early is None and done >= early_mark:
            early = (done, rss)
            say(f"  memory: {done:,} requests, worker RSS {_mib(rss)} MiB")
    assert early is not None
    say(f"  memory: {done:,} requests, worker RSS {_mib(rss)} MiB")
    return Memory(kind, len(workers), early[0], early[1], done, rss, samples)


def bench_database(
    kind: str, options: Any, root: Path, say: Callable[[str], None]
) -> tuple[list[Result], Memory | None]:
    results: list[Result] = []
    memory = None
    service_port, limit_port = options.port, options.port + 1
    with fresh_database(kind, options.postgres_url) as url, tempfile.TemporaryDirectory() as folder:
        say(f"{kind}: seeding {options.users} users, {options.posts} posts, {options.likes} likes ...")
        reader = seed_database(url, _size(options))
        env = {
            **os.environ,
            "DATABASE_URL": url,
            "LIMIT_DB": url,
            "LOG_LEVEL": "warning",
            "SECRET_KEY": secrets.token_urlsafe(48),
            "WORKERS": str(options.workers),
            "SHUTDOWN_GRACE_SECONDS": "0",  # nobody routes traffic to it: stop at once
        }
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        service_args = [sys.executable, "-m", "service", "--port", str(service_port)]
        limit_app = Path(options.limit_app)
        compare = limit_app.is_file() and any(SCENARIOS[name].compared for name in options.scenario)
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
        with contextlib.ExitStack() as stack:
            service_process = stack.enter_context(
                server(service_args, env, f"http://127.0.0.1:{service_port}/health", root)
            )
            if compare:
                stack.enter_context(
                    server(limit_args, env, f"http://127.0.0.1:{limit_port}/posts?limit=1", limit_app.parent)
                )
            ctx = prepare(f"http://127.0.0.1:{service_port}", env, root, reader, say)
            for name in options.scenario:
                scenario = SCENARIOS[name]
                targets = {"service": service_port}
                if compare and scenario.compared:
                    targets["limit"] = limit_port
                runs: dict[str, list[Run]] = {target: [] for target in targets}
                warm_up = min(WARM_UP_SECONDS, options.seconds)
                say(f"  {name}: warming up ({warm_up} s each, not counted)")
                for port in targets.values():
                    _drive(f"http://127.0.0.1:{port}", scenario, ctx, options, Path(folder), warm_up)
                for round_number in range(1, options.rounds + 1):
                    # Who goes first alternates (service-limit, limit-service, ...): a machine that
                    # speeds up or slows down over the rounds favours neither.
                    order = list(targets.items())
                    for target, port in order if round_number % 2 else order[::-1]:
                        say(f"  {name}: round {round_number}/{options.rounds}, {target} ...")
                        runs[target].append(
                            _drive(f"http://127.0.0.1:{port}", scenario, ctx, options, Path(folder))
                        )
                service = _median_run(runs["service"])
                limit = _median_run(runs["limit"]) if "limit" in runs else None
                results.append(
                    Result(
                        database=kind,
                        scenario=name,
                        title=scenario.title,
                        workers=options.workers,
                        service=service,
                        rows_per_second=service.requests_per_second * scenario.rows_per_request,
                        limit=limit,
                        ratio=_median_ratio(runs["service"], runs["limit"]) if limit else None,
                        rounds=[
                            {target: asdict(run) for target, run in zip(runs, pair, strict=True)}
                            for pair in zip(*runs.values(), strict=True)
                        ],
                    )
                )
                say("  " + _row(results[-1]))
            if options.memory:
                say(f"  memory: {options.memory:,} requests of the mixed scenario ...")
                memory = measure_memory(
                    kind,
                    f"http://127.0.0.1:{service_port}",
                    service_process.pid,
                    ctx,
                    options,
                    Path(folder),
                    say,
                )
    return results, memory


def _size(options: Any) -> Any:
    from service.bench.sizes import SeedSize

    return SeedSize(
        users=options.users,
        posts=options.posts,
        likes=options.likes,
        reposts=options.reposts,
        comments=options.comments,
        follows=options.follows,
    )


HEADER = (
    f"{'database':10} {'scenario':9} {'req/s':>8} {'rows/s':>9} {'p50':>7} {'p90':>7} {'p99':>7} {'max':>8}"
    f" {'non-2xx':>7} {'limit req/s':>11} {'ratio':>6}"
)


def _row(r: Result) -> str:
    s = r.service
    limit = f"{r.limit.requests_per_second:11.0f}" if r.limit else f"{'-':>11}"
    ratio = f"{r.ratio:6.2f}" if r.ratio is not None else f"{'-':>6}"
    return (
        f"{r.database:10} {r.scenario:9} {s.requests_per_second:8.0f} {r.rows_per_second:9.0f}"
        f" {s.p50_ms:7.2f} {s.p90_ms:7.2f} {s.p99_ms:7.2f} {s.max_ms:8.1f} {s.non_2xx + s.errors:7d}"
        f" {limit} {ratio}"
    )


def chart(results: list[Result], path: Path) -> bool:
    """A bar chart of requests/s per scenario, one bar per database; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    scenarios = list(dict.fromkeys(r.scenario for r in results))
    databases = list(dict.fromkeys(r.database for r in results))
    figure, axes = plt.subplots(figsize=(9, 4.5), dpi=110)
    width = 0.8 / max(1, len(databases))
    for index, database in enumerate(databases):
        values = [
            next(
                (
                    r.service.requests_per_second
                    for r in results
                    if r.database == database and r.scenario == name
                ),
                0.0,
            )
            for name in scenarios
        ]
        positions = [n + index * width for n in range(len(scenarios))]
        bars = axes.bar(positions, values, width, label=database)
        axes.bar_label(bars, fmt="%.0f", fontsize=8)
    axes.set_xticks([n + width * (len(databases) - 1) / 2 for n in range(len(scenarios))], scenarios)
    axes.set_ylabel("requests per second")
    axes.set_title("purchase-feed-service by scenario and database")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return True


def run_bench(options: Any, root: Path) -> int:
    if options.generator is None:
        options.generator = "wrk" if shutil.which("wrk") else "builtin"
    started = time.monotonic()

    def say(line: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {line}", flush=True)

    say(
        f"load by {options.generator}, {options.connections} connections, {options.seconds} s a run, "
        f"{options.rounds} rounds, {options.workers} worker(s)"
    )
    results: list[Result] = []
    memories: list[Memory] = []
    for kind in options.database:
        database_results, memory = bench_database(kind, options, root, say)
        results += database_results
        memories += [memory] if memory else []
    print("\n" + HEADER)
    for result in results:
        print(_row(result))
    for memory in memories:
        print(_memory_line(memory))
    output = Path(options.output)
    output.mkdir(parents=True, exist_ok=True)
    report = {
        "scenarios": [asdict(r) for r in results],
        "memory": [{**asdict(m), "growth": round(m.growth, 4)} for m in memories],
    }
    (output / "bench.json").write_text(json.dumps(report, indent=2))
    drawn = chart(results, output / "bench.png")
    print(
        f"\nwrote {output / 'bench.json'}"
        + (f" and {output / 'bench.png'}" if drawn else " (no chart: pip install matplotlib, or make bench)")
    )
    failed = any(r.service.non_2xx + r.service.errors for r in results)
    grew = any(m.growth > MEMORY_LIMIT for m in memories)
    return 1 if failed or grew else 0


def _memory_line(m: Memory) -> str:
    verdict = "within" if m.growth <= MEMORY_LIMIT else "MORE THAN"
    return (
        f"{m.database:10} memory: worker RSS {_mib(m.early_rss_mib)} MiB after {m.early_requests:,} "
        f"requests, {_mib(m.late_rss_mib)} MiB after {m.late_requests:,} "
        f"({m.growth:+.1%}, {verdict} {MEMORY_LIMIT:.0%})"
    )
