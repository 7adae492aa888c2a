"""A tool we did not write drives every operation with generated input: no 5xx, and every
response (status, content type, headers, body) must match the OpenAPI document."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from tests.conftest import (
    PASSWORD,
    PASSWORDS_SENT,
    ROOT,
    free_port,
    make_api_key,
    make_staff,
    running_service,
    service_env,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def live_api(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """One live server per database for the whole module, with a staff user and an API key on it."""
    from dataclasses import replace

    from service.config import load_settings
    from tests.conftest import empty_postgres

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('generated') / 'service.db'}"
    else:
        url = request.getfixturevalue("postgres_database")
        empty_postgres(url)
    settings = replace(load_settings(environ={}, env_file=None), database_url=url)
    key = make_api_key(settings)
    port = free_port()
    args = [sys.executable, "-m", "service", "--port", str(port)]
    # Every generated sign-in comes from 127.0.0.1, as the same few usernames, nearly all with a
    # wrong password: login throttling would soon answer 429 to schema-valid sign-ins (which the
    # stateful phase counts as rejected valid data) and to the hooks' own. Its tests are elsewhere.
    env = service_env(url, LOGIN_FAILURES_PER_ACCOUNT="1000000", LOGIN_FAILURES_PER_ADDRESS="1000000")
    with running_service(args, env, port) as base:
        PASSWORDS_SENT.add(PASSWORD)
        account = {"username": "fuzz", "email": "fuzz@example.com", "password": PASSWORD}
        assert httpx.post(f"{base}/auth/register", json=account).status_code == 201
        make_staff(settings, "fuzz")  # so that every operation, the ledger's too, can be reached
        yield {"base": base, "api_key": key}


def test_every_operation_survives_generated_input(live_api: dict[str, Any], tmp_path: Path) -> None:
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks",
        "FUZZ_BASE_URL": live_api["base"],
        "FUZZ_USERNAME": "fuzz",
        "FUZZ_PASSWORD": PASSWORD,
        "PYTHONPATH": str(ROOT),
    }
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            "--config-file",
            str(ROOT / "tests" / "schemathesis.toml"),
            "run",
            f"{live_api['base']}/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            # 15 a operation: every operation and every check still runs; at 30 this one test took
            # 3 of the suite's 15 minutes on a busy 2-core host.
            "15",
            "--seed",
            "20261122",
            "--continue-on-failure",
            "--suppress-health-check",
            "all",
            "--report",
            "junit",
            "--report-dir",
            str(tmp_path),
            "--no-color",
            # Four at once: the server spends much of each case waiting (a fresh login per request
            # is a bcrypt hash in its thread pool); against two, 88 s instead of 105 on SQLite.
            "--workers",
            "4",
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-5000:]
