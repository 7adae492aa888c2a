"""A private PostgreSQL primary and a streaming standby, on their own ports, for replica tests.

`initdb` makes the primary, `pg_basebackup -R` the standby (which then follows it by streaming
replication), both from PostgreSQL's own binaries, run as the `postgres` user; everything lives in
a temporary folder and is stopped and removed afterwards. The standby can be held back on purpose
(`recovery_min_apply_delay`), stopped and started again.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg

BIN = Path("/usr/lib/postgresql/15/bin")


def postgres_binaries() -> Path | None:
    return BIN if (BIN / "initdb").exists() and (BIN / "pg_basebackup").exists() else None


def _as_postgres(*command: str) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else list(command)


def _run(*command: str) -> None:
    done = subprocess.run(_as_postgres(*command), capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}")


@dataclass
class Node:
    data: Path
    port: int

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        _run(str(BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.data / "server.log"), "-w", "start")

    def stop(self) -> None:
        _run(str(BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()


@dataclass
class Cluster:
    primary: Node
    standby: Node

    def hold_back_standby(self, delay: str) -> None:
        """Make the standby apply what it receives `delay` late ('0' to catch up at once)."""
        with psycopg.connect(self.standby.url(), autocommit=True) as conn:
            conn.execute(f"ALTER SYSTEM SET recovery_min_apply_delay = '{delay}'")
            conn.execute("SELECT pg_reload_conf()")
        # The startup process (which applies WAL) reads the reloaded setting on its own time.
        time.sleep(0.5)


@contextlib.contextmanager
def replicated_cluster(primary_port: int, standby_port: int) -> Iterator[Cluster]:
    folder = Path(tempfile.mkdtemp(prefix="replication-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    primary = Node(folder / "primary", primary_port)
    standby = Node(folder / "standby", standby_port)
    try:
        _run(str(BIN / "initdb"), "-D", str(primary.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        with (primary.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"port = {primary_port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{folder}'\n"
                "wal_level = replica\nmax_wal_senders = 5\nfsync = off\nsynchronous_commit = off\n"
            )
        with (primary.data / "pg_hba.conf").open("a") as hba:
            hba.write("host replication postgres 127.0.0.1/32 trust\n")
        primary.start()
        _run(
            str(BIN / "pg_basebackup"), "-D", str(standby.data), "-R", "-X", "stream",
            "-h", "127.0.0.1", "-p", str(primary_port), "-U", "postgres",
        )  # fmt: skip
        with (standby.data / "postgresql.conf").open("a") as conf:
            conf.write(f"port = {standby_port}\nhot_standby = on\n")
        standby.start()
        deadline = time.monotonic() + 30
        while True:
            with psycopg.connect(primary.url(), autocommit=True) as conn:
                streaming = conn.execute("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")
                if streaming.fetchone() == (1,):
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("the standby did not start streaming")
            time.sleep(0.1)
        yield Cluster(primary, standby)
    finally:
        for node in (standby, primary):
            if node.running():
                with contextlib.suppress(RuntimeError):
                    node.stop()
        shutil.rmtree(folder, ignore_errors=True)
