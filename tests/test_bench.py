"""The load generators behind `python -m service bench` measure what they claim."""

from __future__ import annotations

import asyncio
import importlib.util
import io
import json
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from service.bench.load import Run, builtin_load, parse_wrk, wrk_load, wrk_script
from service.bench.progress import Progress
from service.bench.runner import sweep_steps
from service.bench.scenarios import Context, posts_request, purchase_request
from service.config import Settings
from tests.conftest import free_port, make_api_key, table_counts

pytestmark = pytest.mark.slow


@pytest.fixture(params=("sqlite", "postgresql"))
def backend(request: pytest.FixtureRequest) -> str:
    """The bench makes its own databases on the server (`--postgres-url`), never through a pooler."""
    return str(request.param)


WRK_REPORT = """Running 10s test @ http://127.0.0.1:8911/posts?limit=20
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    14.20ms    3.10ms  48.30ms   80.00%
    Req/Sec     2.26k   120.00     2.50k    70.00%
  Latency Distribution
     50%   13.90ms
     75%   15.80ms
     90%   18.10ms
     99%   25.40ms
  22390 requests in 10.00s, 21.90MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 7
Requests/sec:   2238.91
Transfer/sec:      2.19MB
"""


def test_a_wrk_report_is_read_in_full() -> None:
    assert parse_wrk(WRK_REPORT) == Run(2238.91, 13.9, 18.1, 25.4, 48.3, 7, 3, 22390)


def test_the_builtin_generator_counts_every_answer(live_service: Callable[..., Any]) -> None:
    with live_service() as base:
        ok = asyncio.run(builtin_load(base, lambda: ("GET", "/health", None, {}), 1.0, 4))
        missing = asyncio.run(builtin_load(base, lambda: ("GET", "/no/such/page", None, {}), 0.5, 2))
    assert ok.requests_per_second > 50 and ok.non_2xx == 0 and ok.errors == 0
    assert 0 < ok.p50_ms <= ok.p90_ms <= ok.p99_ms <= ok.max_ms
    assert missing.requests > 0 and missing.non_2xx == missing.requests


def test_wrk_sends_the_scenarios_requests(
    live_service: Callable[..., Any], tmp_path: Path, api_key: str
) -> None:
    if not shutil.which("wrk"):
        pytest.skip("wrk is not installed (apt-get install wrk); the built-in generator is used instead")
    rng = random.Random(1)
    ctx = Context(api_key=api_key, token="", customer_ids=[1])
    script = wrk_script([purchase_request(rng, ctx) for _ in range(20)] + [posts_request(rng, ctx)], tmp_path)
    with live_service() as base:
        run = wrk_load(base, script, 1, 4)
    assert run.requests_per_second > 10
    assert run.non_2xx == 0 and run.errors == 0


def test_the_bench_command_drives_every_scenario_and_checks_memory(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    # The whole command, small: a tiny data set, one-second runs, the built-in generator, no limit app.
    args = [
        *("--database", backend, "--generator", "builtin", "--seconds", "1", "--rounds", "1"),
        *("--memory", "3000", "--port", str(free_port()), "--limit-app", str(tmp_path / "absent.py")),
        *("--users", "40", "--posts", "200", "--likes", "300", "--reposts", "50"),
        *("--comments", "100", "--follows", "80", "--output", str(tmp_path)),
    ]
    if backend == "postgresql":
        request.getfixturevalue("postgres_database")  # skips (or fails under REQUIRE_POSTGRES) without one
        args += ["--postgres-url", os.environ["TEST_DATABASE_URL"]]
    done = subprocess.run(
        [sys.executable, "-m", "service", "bench", *args], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((tmp_path / "bench.json").read_text())
    scenarios = {row["scenario"]: row for row in report["scenarios"]}
    assert set(scenarios) == {"purchase", "batch", "posts", "feed", "summary", "mixed"}
    for row in scenarios.values():
        assert row["database"] == backend
        assert row["service"]["requests"] > 0 and row["service"]["non_2xx"] == 0, row
        assert row["ratio"] is None  # no limit app to compare with
    batch = scenarios["batch"]
    assert batch["rows_per_second"] == 1000 * batch["service"]["requests_per_second"]
    [memory] = report["memory"]
    assert 300 <= memory["early_requests"] < memory["late_requests"]
    assert memory["late_requests"] >= 3000
    assert all(rss > 10 for rss in memory["early_rss_mib"] + memory["late_rss_mib"])
    assert f"{backend:10} memory: worker RSS" in done.stdout


def run_bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", "bench", *args], capture_output=True, text=True, timeout=300
    )


SMALL_SEED = ("--users", "40", "--posts", "200", "--likes", "300", "--reposts", "50", "--comments", "100")


def test_a_sweep_measures_each_step_of_connections(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    args = [
        *("--database", backend, "--generator", "builtin", "--seconds", "1", "--memory", "0"),
        *("--scenario", "posts", "--sweep", "--connections", "3"),
        *("--port", str(free_port()), "--limit-app", str(tmp_path / "absent.py"), "--output", str(tmp_path)),
        *SMALL_SEED,
    ]
    if backend == "postgresql":
        request.getfixturevalue("postgres_database")
        args += ["--postgres-url", os.environ["TEST_DATABASE_URL"]]
    done = run_bench(*args)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["scenarios"] == []
    sweeps = {sweep["scenario"]: sweep for sweep in report["sweeps"]}
    assert set(sweeps) == {"posts"}
    steps = sweeps["posts"]["steps"]
    assert [step["connections"] for step in steps] == [1, 2, 3]  # doubling, and the bound last
    for step in steps:
        assert step["service"]["requests"] > 0 and step["service"]["non_2xx"] == 0, step
        assert step["limit"] is None  # no limit app in this run
    best = max(step["service"]["requests_per_second"] for step in steps)
    knee = sweeps["posts"]["knee"]
    assert next(s for s in steps if s["connections"] == knee)["service"]["requests_per_second"] >= 0.9 * best
    assert "knee at" in done.stdout
    # Piped, the run prints its report and nothing else: no progress lines.
    assert "left]" not in done.stdout + done.stderr
    if importlib.util.find_spec("matplotlib"):
        assert (tmp_path / "sweep.png").stat().st_size > 10_000


def test_a_running_service_is_driven_through_its_api(
    live_service: Callable[..., Any], tmp_path: Path, database_url: str, settings: Settings
) -> None:
    scenarios = ("purchase", "batch", "posts", "feed", "summary")
    key = make_api_key(settings, "bench")
    with live_service() as base:
        done = run_bench(
            *(
                "--target",
                base,
                "--api-key",
                key,
                "--generator",
                "builtin",
                "--seconds",
                "1",
                "--rounds",
                "1",
            ),
            *("--memory", "0", "--connections", "4", "--output", str(tmp_path)),
            *(arg for name in scenarios for arg in ("--scenario", name)),
        )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((tmp_path / "bench.json").read_text())
    results = {row["scenario"]: row for row in report["scenarios"]}
    assert set(results) == set(scenarios)
    for row in results.values():
        assert row["database"] == "target"
        assert row["service"]["requests"] > 0 and row["service"]["non_2xx"] == 0, row
    # What the scenarios needed was made through the API: users, posts, follows, purchases.
    counts = table_counts(database_url)
    assert counts["users"] == 11 and counts["posts"] >= 100 and counts["follows"] == 10
    assert counts["customers"] > 1000 and counts["purchases"] >= 10_000


def test_a_target_without_an_api_key_is_refused_before_anything_is_sent() -> None:
    # The accounts it would register are members: the ledger's scenarios need a key.
    done = run_bench("--target", "http://127.0.0.1:9")
    assert done.returncode == 2
    assert "--target needs --api-key" in done.stderr


def test_a_target_that_is_not_http_is_refused() -> None:
    done = run_bench("--target", "file:///etc/passwd")
    assert done.returncode == 2 and "is not an http:// or https:// URL" in done.stderr


def bench_file(path: Path, service: list[float], limit: list[float] | None = None) -> Path:
    def run(rate: float) -> dict[str, Any]:
        return {
            **asdict(Run(rate, 5.0, 8.0, 10.0 + rate / 1000, 20.0, 0, 0, int(rate))),
            "requests": int(rate),
        }

    rounds = [
        {"service": run(rate), **({"limit": run(limit[n])} if limit else {})}
        for n, rate in enumerate(service)
    ]
    entry = {"database": "sqlite", "scenario": "purchase", "title": "POST /purchases", "rounds": rounds}
    path.write_text(json.dumps({"scenarios": [entry], "sweeps": [], "memory": []}))
    return path


def test_compare_tells_a_change_from_the_noise(tmp_path: Path) -> None:
    old = bench_file(tmp_path / "old.json", [1000, 1040, 980], limit=[2000, 2000, 2000])
    faster = bench_file(tmp_path / "faster.json", [1200, 1150, 1230], limit=[2000, 2000, 2000])
    noisy = bench_file(tmp_path / "noisy.json", [1100, 990, 1030], limit=[2000, 2000, 2000])
    done = run_bench("compare", str(old), str(faster))
    assert done.returncode == 0, done.stderr
    req_line = next(line for line in done.stdout.splitlines() if "req/s:" in line)
    assert "+20.0%" in req_line and "beyond the noise" in req_line
    assert "1,000 [980..1,040]" in req_line and "1,200 [1,150..1,230]" in req_line
    assert any("ratio:" in line and "beyond the noise" in line for line in done.stdout.splitlines())
    done = run_bench("compare", str(old), str(noisy))
    req_line = next(line for line in done.stdout.splitlines() if "req/s:" in line)
    assert "+3.0%" in req_line and "within the noise" in req_line
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"scenarios": [], "sweeps": [], "memory": []}))
    refused = run_bench("compare", str(old), str(other))
    assert refused.returncode == 2 and "no scenario on the same database in common" in refused.stderr


def test_progress_shows_on_a_terminal_and_stays_quiet_in_a_pipe() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal, pipe = Terminal(), io.StringIO()
    for stream in (terminal, pipe):
        progress = Progress(100, stream)
        progress.step("sqlite purchase: round 1/3, service", 40)
        progress.step("sqlite purchase: round 1/3, limit", 40)
        progress.note("sqlite     purchase  1234 ...")
        progress.done()
    shown = terminal.getvalue()
    assert "about 1m40s of load left] sqlite purchase: round 1/3, service" in shown
    assert "about 1m00s of load left] sqlite purchase: round 1/3, limit" in shown
    assert "sqlite     purchase  1234 ...\n" in shown
    assert pipe.getvalue() == ""


def test_sweep_steps_double_up_to_the_bound() -> None:
    assert sweep_steps(32) == [1, 2, 4, 8, 16, 32]
    assert sweep_steps(48) == [1, 2, 4, 8, 16, 32, 48]
    assert sweep_steps(1) == [1]


LIMIT_APP = Path(__file__).resolve().parents[2] / "shared" / "bench" / "limit_app.py"


@pytest.mark.skipif(not LIMIT_APP.is_file(), reason=f"no limit app at {LIMIT_APP}")
def test_on_data_of_its_own_size_the_limit_app_serves_the_services_rows(
    client: Any, database_url: str
) -> None:
    from service.bench.runner import copy_data_to_limit_app, limit_app_command, server
    from service.bench.sizes import SeedSize
    from service.seed import seed

    seed(database_url, SeedSize(users=40, posts=300, likes=1800, reposts=60, comments=200, follows=80), 4)
    port = free_port()
    env = {**os.environ, "LIMIT_DB": database_url}
    probe = f"http://127.0.0.1:{port}/posts?limit=1"
    with server(limit_app_command(port), env, probe, LIMIT_APP.parent):
        pass  # its first start makes its tables, and seeds its own rows
    copy_data_to_limit_app(database_url)
    with server(limit_app_command(port), env, probe, LIMIT_APP.parent):
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/posts?limit=20") as answer:
            served = json.load(answer)
    counted = ("id", "like_count", "repost_count", "comment_count")
    by_limit_app = [tuple(post[key] for key in counted) for post in served["items"]]
    listed = client.get("/posts?limit=20").json()["items"]
    by_service = [tuple(post[key] for key in counted) for post in listed]
    assert by_limit_app == by_service
    assert sum(likes for _, likes, _, _ in by_service) == 20 * 40  # each newest post liked by everyone
