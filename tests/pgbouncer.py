"""Start a real PgBouncer in transaction mode on its own port: for the tests, and the bench's cost
measurement (bench/pgbouncer_cost.py)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit


def pgbouncer_binary() -> str | None:
    found = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    return found if Path(found).exists() else None


@contextlib.contextmanager
def running_pgbouncer(server_url: str, port: int, pool_size: int = 40) -> Iterator[str]:
    """PgBouncer (transaction pooling, trust auth) in front of `server_url`'s server, for every
    database on it; yields `postgresql://USER@127.0.0.1:PORT` (add `/DATABASE`). Stopped after."""
    binary = pgbouncer_binary()
    assert binary is not None, "pgbouncer is not installed (apt-get install pgbouncer)"
    server = urlsplit(server_url)
    # Not under pytest's temporary folders: the postgres user must be able to read it.
    folder = Path(tempfile.mkdtemp(prefix="pgbouncer-"))
    (folder / "users.txt").write_text(f'"{server.username}" ""\n')
    (folder / "pgbouncer.ini").write_text(
        f"""[databases]
* = host={server.hostname} port={server.port or 5432}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {folder / "users.txt"}
pool_mode = transaction
max_client_conn = 2000
default_pool_size = {pool_size}
logfile = {folder / "pgbouncer.log"}
"""
    )
    command = [binary, str(folder / "pgbouncer.ini")]
    if os.geteuid() == 0:  # PgBouncer will not run as root
        for path in (folder, *folder.iterdir()):
            shutil.chown(path, "postgres")
        command = ["runuser", "-u", "postgres", "--", *command]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                log = folder / "pgbouncer.log"
                raise RuntimeError(f"pgbouncer did not start:\n{log.read_text() if log.exists() else ''}")
            time.sleep(0.05)
        yield f"postgresql://{server.username}@127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)
