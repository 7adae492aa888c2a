"""`python -m service bench`: load-test a database through the service, beside the stack's speed limit.

For each database it makes a fresh one, seeds it, starts the service (N workers) and - for the
scenarios it has too - `../shared/bench/limit_app.py` on the same database, then drives each
scenario with the same load: wrk when it is installed, a built-in asyncio generator otherwise.
Rounds alternate between the service and the limit app (who goes first alternates too), so drift
on a shared machine hits both; medians are reported, and the ratio is the median of the rounds'.
`--sweep` drives each scenario at 1, 2, 4, ... connections instead; `--target URL` drives a service
that is already running, seeded through its API. The report is in report.py.
"""

from __future__ import annotations

import asyncio
import contextlib
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

from service.bench.load import Run, builtin_load, wrk_load, wrk_script
from service.bench.progress import Progress
from service.bench.report import (
    MEMORY_LIMIT,
    Memory,
    Result,
    Step,
    Sweep,
    compare,
    memory_line,
    print_report,
    row,
    sweep_rows,
    write_report,
)
from service.bench.scenarios import SCENARIOS, Context, Scenario
from service.bench.sizes import SeedSize, chosen_size
from service.bench.target import record_customers, seed_through_api, sign_in

# Before a scenario's rounds each server gets this much of its load, unmeasured: pools fill,
# statements are prepared, caches warm.
WARM_UP_SECONDS = 2
MEMORY_RUN_SECONDS = 10
SWEEP_START = 1


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


def sweep_steps(bound: int) -> list[int]:
    """1, 2, 4, ... up to `bound`, which is always the last step."""
    steps = [SWEEP_START]
    while steps[-1] * 2 < bound:
        steps.append(steps[-1] * 2)
    return [*steps, bound] if bound > steps[-1] else steps


# Databases and servers.


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


def limit_app_command(port: int) -> list[str]:
    """How the limit app is served (from its own folder, LIMIT_DB naming the database)."""
    return [
        sys.executable,
        *("-m", "uvicorn", "limit_app:app", "--port", str(port), "--no-access-log"),
        *("--log-level", "warning", "--loop", "uvloop", "--http", "httptools"),
    ]


def seed_database(url: str, size: SeedSize, say: Callable[[str], None]) -> str:
    """Seed `size`; the username of the seeded user who follows the most others."""
    from sqlalchemy import text

    from service.migrations.schema import prepare_schema, schema_connection
    from service.queries import load_queries
    from service.seed import seed

    prepare_schema(url)
    seed(url, size, bcrypt_rounds=4, report=lambda line: say(f"seeding {line}"))
    with schema_connection(url) as connection:
        statement = load_queries(connection.dialect.name).busiest_follower
        row = connection.execute(text(statement.source)).first()
    return str(row[0]) if row else ""


def copy_data_to_limit_app(url: str) -> None:
    """Give the limit app the service's rows (after its first start made its tables): on data
    other than its own seed's, both must serve the same posts, likes and customers."""
    from sqlalchemy import text

    from service.migrations.schema import schema_connection
    from service.queries import load_queries
    from service.seed import analyze

    tables = ("likes", "reposts", "comments", "posts", "users", "purchases", "customers")
    with schema_connection(url) as connection:
        connection.commit()
        queries = load_queries(connection.dialect.name)
        with connection.begin():
            for table in tables:
                connection.execute(text(getattr(queries, f"clear_limit_app_{table}").source))
            for table in reversed(tables):
                connection.execute(text(getattr(queries, f"copy_{table}_to_limit_app").source))
            if connection.dialect.name == "postgresql":  # (SQLite's row ids follow the highest)
                connection.execute(text(queries.limit_app_next_ids.source))
        analyze(connection, queries)


def prepare(base: str, env: dict[str, str], root: Path, reader: str, say: Callable[[str], None]) -> Context:
    """An API key (made with the CLI), the seeded reader signed in, and the summary's customers."""
    from service.seed import SEED_PASSWORD

    key = subprocess.run(
        [sys.executable, "-m", "service", "apikey", "create", f"bench-{secrets.token_hex(3)}"],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    ctx = Context(api_key=key, token=sign_in(base, reader, SEED_PASSWORD), customer_ids=[])
    record_customers(base, ctx, say)
    return ctx


# Load.


def _drive(
    url: str,
    scenario: Scenario,
    ctx: Context,
    options: Any,
    folder: Path,
    seconds: int | None = None,
    connections: int | None = None,
) -> Run:
    connections = connections or scenario.connections or options.connections
    seconds = seconds or options.seconds
    rng = random.Random(secrets.randbits(32))
    if options.generator == "wrk":
        reference = Path(options.limit_app).parent / "purchases.lua"
        if scenario.name == "purchase" and reference.is_file() and ctx.api_key:
            # The reference load itself: 5,000 emails, about half the requests new customers.
            os.environ["API_KEY"] = ctx.api_key
            return wrk_load(url, reference, seconds, connections)
        sample = [scenario.make(rng, ctx) for _ in range(20 if scenario.name == "batch" else 2000)]
        return wrk_load(url, wrk_script(sample, folder), seconds, connections)
    return asyncio.run(builtin_load(url, lambda: scenario.make(rng, ctx), seconds, connections))


def _in_turn(targets: dict[str, str], number: int) -> list[tuple[str, str]]:
    """The targets in the order the `number`th run (from 0) drives them: who goes first alternates
    (service-limit, limit-service, ...), so a machine that speeds up or slows down favours neither."""
    order = list(targets.items())
    return order if number % 2 == 0 else order[::-1]


def compared_with_limit(options: Any, scenario: Scenario) -> bool:
    """Whether the limit app runs beside the service for this scenario: it serves it, it is there,
    and the bench started both (not --target)."""
    return scenario.compared and not options.target and Path(options.limit_app).is_file()


def warm_up(
    targets: dict[str, str], scenario: Scenario, ctx: Context, options: Any, folder: Path, progress: Progress
) -> None:
    seconds = min(WARM_UP_SECONDS, options.seconds)
    for target, url in targets.items():
        progress.step(f"{scenario.name}: warming up the {target} ({seconds} s, not counted)", seconds)
        _drive(url, scenario, ctx, options, folder, seconds)


def measure_rounds(
    database: str,
    targets: dict[str, str],
    scenario: Scenario,
    ctx: Context,
    options: Any,
    folder: Path,
    progress: Progress,
) -> Result:
    """Alternating rounds against each target ("service", and "limit" when it serves the scenario)."""
    warm_up(targets, scenario, ctx, options, folder, progress)
    runs: dict[str, list[Run]] = {target: [] for target in targets}
    for round_number in range(1, options.rounds + 1):
        for target, url in _in_turn(targets, round_number - 1):
            progress.step(
                f"{database} {scenario.name}: round {round_number}/{options.rounds}, {target}",
                options.seconds,
            )
            runs[target].append(_drive(url, scenario, ctx, options, folder))
    service = _median_run(runs["service"])
    limit = _median_run(runs["limit"]) if "limit" in runs else None
    return Result(
        database=database,
        scenario=scenario.name,
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


def sweep(
    database: str,
    targets: dict[str, str],
    scenario: Scenario,
    ctx: Context,
    options: Any,
    folder: Path,
    progress: Progress,
) -> Sweep:
    """The scenario at each step of connections, each target once a step (in alternating order)."""
    warm_up(targets, scenario, ctx, options, folder, progress)
    result = Sweep(database, scenario.name, scenario.title, options.workers, options.seconds)
    for number, connections in enumerate(sweep_steps(options.connections)):
        runs: dict[str, Run] = {}
        for target, url in _in_turn(targets, number):
            progress.step(f"{database} {scenario.name}: {connections} connections, {target}", options.seconds)
            runs[target] = _drive(url, scenario, ctx, options, folder, connections=connections)
        result.steps.append(Step(connections, runs["service"], runs.get("limit")))
    return result


def planned_seconds(options: Any) -> float:
    """Seconds of load one database's scenarios will take (not the seeding, not the memory check)."""
    runs = len(sweep_steps(options.connections)) if options.sweep else options.rounds
    per_target = min(WARM_UP_SECONDS, options.seconds) + runs * options.seconds
    targets = [2 if compared_with_limit(options, SCENARIOS[name]) else 1 for name in options.scenario]
    return float(per_target * sum(targets))


# Memory.


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
    kind: str, url: str, pid: int, ctx: Context, options: Any, folder: Path, progress: Progress
) -> Memory:
    """Drive the mixed scenario for `options.memory` requests; RSS after a tenth of them and at the end."""
    scenario, total, early_mark = SCENARIOS["mixed"], options.memory, options.memory // 10
    workers = _worker_pids(pid)
    done, early, samples, rate = 0, None, [], 0.0
    while done < total:
        # Short runs until the early mark, so that sample lands close to it; then no longer than
        # the requests still to go need.
        seconds = 1 if early is None else max(1, min(MEMORY_RUN_SECONDS, math.ceil((total - done) / rate)))
        progress.step(f"{kind} memory check: {done:,} of {total:,} requests of the mixed scenario")
        run = _drive(url, scenario, ctx, options, folder, seconds)
        rate = max(run.requests_per_second, 1.0)
        if run.non_2xx or run.errors:
            raise SystemExit(f"memory check: {run.non_2xx} non-2xx answers, {run.errors} socket errors")
        done += run.requests
        rss = [round(_rss_mib(worker), 1) for worker in workers]
        samples.append((done, rss))
        if early is None and done >= early_mark:
            early = (done, rss)
    assert early is not None
    return Memory(kind, len(workers), early[0], early[1], done, rss, samples)


# The runs.


@dataclass
class Outcome:
    """Everything measured, in the order it was."""

    results: list[Result] = field(default_factory=list)
    sweeps: list[Sweep] = field(default_factory=list)
    memories: list[Memory] = field(default_factory=list)


def drive_scenarios(
    database: str,
    targets_of: Callable[[Scenario], dict[str, str]],
    ctx: Context,
    options: Any,
    folder: Path,
    progress: Progress,
    outcome: Outcome,
) -> None:
    for name in options.scenario:
        scenario = SCENARIOS[name]
        targets = targets_of(scenario)
        if options.sweep:
            outcome.sweeps.append(sweep(database, targets, scenario, ctx, options, folder, progress))
            for line in sweep_rows(outcome.sweeps[-1]):
                progress.note(line)
        else:
            outcome.results.append(
                measure_rounds(database, targets, scenario, ctx, options, folder, progress)
            )
            progress.note(row(outcome.results[-1]))


def bench_database(kind: str, options: Any, root: Path, progress: Progress, outcome: Outcome) -> None:
    service_port, limit_port = options.port, options.port + 1
    service_url, limit_url = f"http://127.0.0.1:{service_port}", f"http://127.0.0.1:{limit_port}"
    limit_app = Path(options.limit_app)
    compare_with_limit = any(compared_with_limit(options, SCENARIOS[name]) for name in options.scenario)

    def targets_of(scenario: Scenario) -> dict[str, str]:
        if compared_with_limit(options, scenario):
            return {"service": service_url, "limit": limit_url}
        return {"service": service_url}

    with fresh_database(kind, options.postgres_url) as url, tempfile.TemporaryDirectory() as folder:
        size = chosen_size(options)
        reader = seed_database(url, size, lambda line: progress.step(f"{kind}: {line}"))
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
        limit_args = limit_app_command(limit_port)
        with contextlib.ExitStack() as stack:
            progress.step(
                f"{kind}: starting the service" + (" and the limit app" if compare_with_limit else "")
            )
            service_process = stack.enter_context(server(service_args, env, f"{service_url}/health", root))
            if compare_with_limit:
                limit_probe = f"{limit_url}/posts?limit=1"
                if size != SeedSize():  # not the limit app's own seed: it serves the service's rows
                    with server(limit_args, env, limit_probe, limit_app.parent):
                        pass  # its first start makes its tables
                    progress.step(f"{kind}: copying the data to the limit app")
                    copy_data_to_limit_app(url)
                stack.enter_context(server(limit_args, env, limit_probe, limit_app.parent))
            ctx = prepare(service_url, env, root, reader, lambda line: progress.step(f"{kind}: {line}"))
            drive_scenarios(kind, targets_of, ctx, options, Path(folder), progress, outcome)
            if options.memory:
                outcome.memories.append(
                    measure_memory(
                        kind, service_url, service_process.pid, ctx, options, Path(folder), progress
                    )
                )
                progress.note(memory_line(outcome.memories[-1]))


def bench_target(options: Any, progress: Progress, outcome: Outcome) -> None:
    """Drive a running service: no database of our own, no limit app, no memory check (its
    processes are elsewhere)."""
    base = options.target.rstrip("/")
    ctx = seed_through_api(base, options.api_key, lambda line: progress.step(f"target: {line}"))
    with tempfile.TemporaryDirectory() as folder:
        drive_scenarios(
            "target", lambda scenario: {"service": base}, ctx, options, Path(folder), progress, outcome
        )


def run_bench(options: Any, root: Path) -> int:
    if getattr(options, "action", None) == "compare":
        return compare(Path(options.old), Path(options.new))
    if options.generator is None:
        options.generator = "wrk" if shutil.which("wrk") else "builtin"
    databases = ["target"] if options.target else options.database
    progress = Progress(planned_seconds(options) * len(databases))
    outcome = Outcome()
    try:
        if options.target:
            bench_target(options, progress, outcome)
        else:
            for kind in options.database:
                bench_database(kind, options, root, progress, outcome)
    finally:
        progress.done()
    print(
        f"load by {options.generator}, {options.connections} connections"
        + (" at most (swept)" if options.sweep else "")
        + f", {options.seconds} s a run, {options.rounds} rounds, {options.workers} worker(s)"
        + (f", against {options.target}" if options.target else "")
    )
    print_report(outcome.results, outcome.sweeps, outcome.memories)
    settings = {
        key: getattr(options, key)
        for key in (
            "database",
            "scenario",
            "workers",
            "seconds",
            "connections",
            "rounds",
            "generator",
            "sweep",
            "target",
        )
    }
    written = write_report(Path(options.output), settings, outcome.results, outcome.sweeps, outcome.memories)
    print(
        "\nwrote "
        + " and ".join(str(path) for path in written)
        + ("" if len(written) > 1 else " (no chart: pip install matplotlib, or make bench)")
    )
    runs = [r.service for r in outcome.results] + [s.service for w in outcome.sweeps for s in w.steps]
    failed = any(run.non_2xx + run.errors for run in runs)
    grew = any(m.growth > MEMORY_LIMIT for m in outcome.memories)
    return 1 if failed or grew else 0
