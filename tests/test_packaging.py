"""What the container would run: the wheel, installed into a fresh environment outside the repository.

No Docker engine runs here, so this does what the Dockerfile does - build the wheels, install them
with no index into a new virtual environment - and then starts `python -m service` from it.
"""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import httpx2 as httpx
import pytest

from tests.conftest import ROOT, free_port, running_service, service_env

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The service's wheel and every dependency's, as the image's build stage makes them."""
    wheels = tmp_path_factory.mktemp("wheels")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(wheels), str(ROOT)],
        check=True,
        timeout=600,
    )
    return wheels


@pytest.fixture(scope="module")
def installed_service(wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment outside the repo, installed from the wheelhouse alone; its python."""
    environment = tmp_path_factory.mktemp("image") / "venv"
    venv.create(environment, with_pip=True)
    python = environment / "bin" / "python"
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-index",
            "--find-links",
            str(wheelhouse),
            "purchase-feed-service",
        ],
        check=True,
        timeout=600,
    )
    return python


def test_the_wheel_carries_the_sql_statements(wheelhouse: Path) -> None:
    (wheel,) = wheelhouse.glob("purchase_feed_service-*.whl")
    shipped = {
        name.rsplit("/", 1)[-1]
        for name in zipfile.ZipFile(wheel).namelist()
        if name.startswith("service/sql/")
    }
    in_repo = {path.name for path in (ROOT / "sql").glob("*.sql")}
    assert in_repo and in_repo <= shipped


def test_the_installed_service_starts_outside_the_repo_and_is_ready(
    installed_service: Path, database_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = service_env(database_url)
    env.pop("PYTHONPATH", None)
    args = [str(installed_service), "-m", "service", "--port", str(port)]
    with running_service(args, env, port, cwd=tmp_path) as base:
        assert httpx.get(f"{base}/ready").json() == {"status": "ready"}
        # The page's files and the docs' assets travel in the wheel and its dependencies.
        for path in ("/", "/static/page.js", "/docs", "/docs/assets/swagger-ui-bundle.js", "/openapi.json"):
            assert httpx.get(f"{base}{path}").status_code == 200, path
    # It must not have been the checkout that answered.
    where = subprocess.run(
        [str(installed_service), "-c", "import service; print(service.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert str(ROOT) not in where


def test_the_installed_service_serves_on_sqlite_with_no_configuration(
    installed_service: Path, tmp_path: Path
) -> None:
    port = free_port()
    env = service_env("")
    env.pop("DATABASE_URL")
    args = [str(installed_service), "-m", "service", "--port", str(port)]
    with running_service(args, env, port, cwd=tmp_path) as base:
        assert httpx.get(f"{base}/ready").status_code == 200
    assert (tmp_path / "data" / "service.db").is_file()


def test_the_wheel_carries_the_migrations(wheelhouse: Path) -> None:
    (wheel,) = wheelhouse.glob("purchase_feed_service-*.whl")
    shipped = {name for name in zipfile.ZipFile(wheel).namelist() if name.startswith("service/migrations/")}
    in_repo = {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "service" / "migrations").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert {"service/migrations/env.py", "service/migrations/script.py.mako"} <= in_repo <= shipped


def test_the_installed_service_migrates_a_database_as_a_one_off_command(
    installed_service: Path, fresh_database_url: str, tmp_path: Path
) -> None:
    """`db upgrade` from the installed package (an image's one-off migration job), then `db check`."""
    env = service_env(fresh_database_url)
    env.pop("PYTHONPATH", None)

    def db(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(installed_service), "-m", "service", "db", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    assert db("check").returncode == 1  # an empty database is not at head
    upgrade = db("upgrade")
    assert upgrade.returncode == 0, upgrade.stderr
    check = db("check")
    assert check.returncode == 0 and "(head); the tables match the code" in check.stdout, check.stderr
