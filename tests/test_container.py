"""The project's Dockerfile, built and run by a real container engine (podman).

No image registry is needed: the base is the official slim Python image when CONTAINER_BASE_IMAGE
names one that is present, otherwise a stand-in made here from Debian's own packages with
mmdebstrap (a minimal bookworm with python3.11, built the way Debian's slim images are) and
loaded with `podman import`. Without podman the tests skip and say why; with REQUIRE_CONTAINER=1
(CI) that is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import psycopg
import pytest
import yaml

from service.config import SETTINGS_DOC
from service.migrations.schema import head_revision
from tests.conftest import ROOT, TEST_SECRET_KEY, _postgres_admin_url, free_port
from tests.test_purchases import purchase

pytestmark = pytest.mark.slow

IMAGE = "localhost/purchase-feed-service:test"
STAND_IN = "localhost/python-standin:3.11-bookworm"
STAND_IN_PACKAGES = "python3.11,python3.11-venv,ca-certificates,netbase,tzdata"
# What the image may add to its base: the service, its dependencies, their compiled bytecode.
# Python service images with an ORM-sized dependency set commonly add 150 MB or more; this one's
# dependencies are mostly SQLAlchemy (29 MB), uvloop (14), asyncpg (12) and psycopg (13).
SIZE_ABOVE_BASE_TARGET = 100_000_000
GRACE_SECONDS = 2
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


class Engine:
    """podman, set up the way it works on these machines: runc, and no default ulimits."""

    def __init__(self, config: Path) -> None:
        self.env = {**os.environ, "CONTAINERS_CONF": str(config)}
        runc = shutil.which("runc") or ("/usr/sbin/runc" if Path("/usr/sbin/runc").exists() else None)
        self.prefix = ["podman", *(["--runtime", runc] if runc else [])]

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*self.prefix, *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    def inspect(self, what: str, template: str) -> str:
        return self("inspect", "--format", template, what).stdout.strip()


def _missing_engine() -> str | None:
    if shutil.which("podman") is None:
        return "container tests need podman (apt-get install podman runc mmdebstrap)"
    return None


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    reason = _missing_engine()
    if reason is not None:
        if os.environ.get("REQUIRE_CONTAINER") == "1":
            pytest.fail(f"REQUIRE_CONTAINER=1 but {reason}")
        pytest.skip(reason)
    config = tmp_path_factory.mktemp("podman") / "containers.conf"
    config.write_text("[containers]\ndefault_ulimits = []\n")
    return Engine(config)


def _base_image(engine: Engine, workspace: Path) -> str:
    wanted = os.environ.get("CONTAINER_BASE_IMAGE")
    if wanted:
        return wanted
    if engine("image", "exists", STAND_IN, check=False).returncode == 0:
        return STAND_IN
    if shutil.which("mmdebstrap") is None:
        pytest.fail("no base image: set CONTAINER_BASE_IMAGE, or install mmdebstrap to make the stand-in")
    rootfs = workspace / "rootfs.tar"
    subprocess.run(
        [
            "mmdebstrap",
            "--variant=minbase",
            f"--include={STAND_IN_PACKAGES}",
            # As Debian's slim images: no documentation, manual pages or translations.
            "--dpkgopt=path-exclude=/usr/share/doc/*",
            "--dpkgopt=path-exclude=/usr/share/man/*",
            "--dpkgopt=path-exclude=/usr/share/locale/*",
            "bookworm",
            str(rootfs),
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    engine("import", "--change", 'CMD ["python3"]', str(rootfs), STAND_IN)
    rootfs.unlink()
    return STAND_IN


@pytest.fixture(scope="session")
def image(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The project's Dockerfile built as it is (Docker's format, so HEALTHCHECK is kept)."""
    base = _base_image(engine, tmp_path_factory.mktemp("base"))
    mounts = ["--volume", f"{CA_BUNDLE}:{CA_BUNDLE}:ro"] if Path(CA_BUNDLE).exists() else []
    started = time.monotonic()
    engine(
        "build", "--network", "host", "--format", "docker", "--build-arg", f"BASE_IMAGE={base}",
        *mounts, "--tag", IMAGE, str(ROOT),
    )  # fmt: skip
    built = time.monotonic() - started
    sizes = {
        name: int(engine("image", "inspect", "--format", "{{.Size}}", name).stdout) for name in (IMAGE, base)
    }
    return {"base": base, "build_seconds": built, "above_base": sizes[IMAGE] - sizes[base]}


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A new, empty database on the machine's PostgreSQL (the container reaches it on the host network)."""
    admin = _postgres_admin_url()
    if admin is None:
        if os.environ.get("REQUIRE_POSTGRES") == "1":
            pytest.fail("REQUIRE_POSTGRES=1 but TEST_DATABASE_URL is not set")
        pytest.skip("the image's PostgreSQL test needs TEST_DATABASE_URL")
    name = f"container_{os.getpid()}_{time.monotonic_ns() % 10**9}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield admin.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def run_service(engine: Engine, port: int, *options: str, **env: str) -> str:
    """Start the image as a deployment would: read-only root, host network; the container's id."""
    settings = {"PORT": str(port), "SHUTDOWN_GRACE_SECONDS": str(GRACE_SECONDS), **env}
    flags = [flag for name, value in settings.items() for flag in ("--env", f"{name}={value}")]
    return engine(
        "run", "--detach", "--network", "host", "--read-only", *flags, *options, IMAGE
    ).stdout.strip()


def wait_ready(engine: Engine, container: str, port: int, timeout: float = 60) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                return time.monotonic() - started
        except httpx.TransportError:
            pass
        if engine.inspect(container, "{{.State.Running}}") != "true":
            break
        time.sleep(0.05)
    logs = engine("logs", container, check=False)
    raise AssertionError(f"the container never became ready:\n{logs.stdout}{logs.stderr}")


def stop(engine: Engine, container: str) -> tuple[float, int]:
    """`stop` (SIGTERM, then SIGKILL after 30 s): how long it took and the exit status."""
    started = time.monotonic()
    engine("stop", "--time", "30", container)
    took = time.monotonic() - started
    status = int(engine.inspect(container, "{{.State.ExitCode}}"))
    engine("rm", container, check=False)
    return took, status


def make_key(engine: Engine, container: str) -> str:
    created = engine("exec", container, "python", "-m", "service", "apikey", "create", "container-test")
    return created.stdout.strip()


def test_the_image_serves_on_postgres_as_an_unprivileged_user_on_a_read_only_root(
    engine: Engine, image: dict[str, Any], postgres_url: str
) -> None:
    port = free_port()
    started = time.monotonic()
    container = run_service(engine, port, DATABASE_URL=postgres_url, SECRET_KEY=TEST_SECRET_KEY)
    try:
        wait_ready(engine, container, port)
        ready_after = time.monotonic() - started
        base = f"http://127.0.0.1:{port}"
        key = make_key(engine, container)
        created = httpx.post(
            f"{base}/purchases", json=purchase("box@example.com"), headers={"X-API-Key": key}
        )
        assert created.status_code == 201, created.text
        read = httpx.get(f"{base}/purchases/{created.json()['id']}", headers={"X-API-Key": key})
        assert read.status_code == 200 and read.json()["customer"]["email"] == "box@example.com"
        assert httpx.get(f"{base}/docs/assets/swagger-ui-bundle.js").status_code == 200

        assert engine("exec", container, "id", "-u").stdout.strip() == "10001"
        assert engine("exec", container, "id", "-un").stdout.strip() == "service"
        assert engine.inspect(container, "{{.HostConfig.ReadonlyRootfs}}") == "true"
        assert engine("exec", container, "touch", "/opt/service/written", check=False).returncode != 0
        healthcheck = engine("image", "inspect", "--format", "{{.Config.Healthcheck.Test}}", IMAGE).stdout
        assert "/health" in healthcheck  # kept: the image is in Docker's format
        assert engine("healthcheck", "run", container, check=False).returncode == 0
        assert engine.inspect(container, "{{.State.Health.Status}}") == "healthy"
        pid = engine.inspect(container, "{{.State.Pid}}")
        rss_kib = int(
            next(
                line
                for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                if line.startswith("VmRSS")
            ).split()[1]
        )
    except BaseException:
        engine("rm", "--force", container, check=False)
        raise
    took, status = stop(engine, container)
    assert status == 0
    assert GRACE_SECONDS <= took < GRACE_SECONDS + 5, took  # it drained, then stopped promptly
    assert image["above_base"] < SIZE_ABOVE_BASE_TARGET, image["above_base"]
    print(
        f"\nimage: {image['above_base'] / 1e6:.1f} MB above its base ({image['base']}), built in"
        f" {image['build_seconds']:.0f} s; run to /ready 200 in {ready_after:.2f} s;"
        f" idle RSS {rss_kib / 1024:.1f} MiB; stopped in {took:.2f} s (grace {GRACE_SECONDS} s)"
    )


def test_sqlite_data_in_the_volume_survives_a_new_container(engine: Engine, image: dict[str, Any]) -> None:
    volume = f"service-data-{os.getpid()}-{time.monotonic_ns() % 10**9}"
    engine("volume", "create", volume)
    mount = ("--volume", f"{volume}:/var/lib/service")
    try:
        port = free_port()
        first = run_service(engine, port, *mount)
        try:
            wait_ready(engine, first, port)
            key = make_key(engine, first)
            created = httpx.post(
                f"http://127.0.0.1:{port}/purchases",
                json=purchase("kept@example.com"),
                headers={"X-API-Key": key},
            )
            assert created.status_code == 201
        finally:
            assert stop(engine, first)[1] == 0
        second = run_service(engine, port, *mount)
        try:
            wait_ready(engine, second, port)
            again = httpx.get(
                f"http://127.0.0.1:{port}/purchases/{created.json()['id']}", headers={"X-API-Key": key}
            )
            assert again.status_code == 200
            assert again.json()["customer"]["email"] == "kept@example.com"
        finally:
            assert stop(engine, second)[1] == 0
    finally:
        engine("volume", "rm", "--force", volume, check=False)


def test_migrations_run_from_the_image_as_a_one_off_command(
    engine: Engine, image: dict[str, Any], postgres_url: str
) -> None:
    one_off = (
        "run",
        "--rm",
        "--network",
        "host",
        "--read-only",
        "--env",
        f"DATABASE_URL={postgres_url}",
        IMAGE,
    )
    assert engine(*one_off, "db", "check", check=False).returncode == 1  # empty: not at head
    upgraded = engine(*one_off, "db", "upgrade")
    assert head_revision() in upgraded.stdout + upgraded.stderr  # brought to the code's head
    assert engine(*one_off, "db", "check").returncode == 0


def test_compose_file_is_valid_and_in_step_with_the_settings() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    service = compose["services"]["service"]
    assert service["build"] == "."
    known = {name for name, _, _ in SETTINGS_DOC}
    assert set(service["environment"]) <= known, set(service["environment"]) - known
    assert service["environment"]["DATABASE_URL"].startswith("postgresql://")
    host = service["environment"]["DATABASE_URL"].split("@", 1)[1].split(":", 1)[0]
    assert host in compose["services"]
    assert service["depends_on"][host]["condition"] == "service_healthy"
    assert service["read_only"] is True
    # The engine must wait longer than the drain before it kills.
    grace = int(service["environment"].get("SHUTDOWN_GRACE_SECONDS", 5))
    assert int(str(service["stop_grace_period"]).rstrip("s")) > grace + 5
    assert any(str(volume).endswith(":/var/lib/service") for volume in service["volumes"])
    for name in service["volumes"]:
        source = str(name).split(":", 1)[0]
        assert source in compose.get("volumes", {}), source
