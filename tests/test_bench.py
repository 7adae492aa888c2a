"""The load generators behind `python -m service bench` measure what they claim."""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from service.bench.load import Run, builtin_load, parse_wrk, wrk_load, wrk_script
from service.bench.scenarios import Context, posts_request, purchase_request
from tests.conftest import free_port

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
