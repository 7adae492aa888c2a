"""A private high-availability PostgreSQL: one etcd, two PostgreSQL 15 nodes under Patroni
(synchronous mode), and haproxy sending connections to whichever node Patroni's REST API says is
the primary (and, on a second port, to the replica). Everything on free ports in a temporary
folder, run as the `postgres` user, stopped and removed afterwards.

A node can be killed whole (Patroni and its PostgreSQL, with -9: a postmaster killed alone is
only restarted in place by its Patroni) and started again, when it rejoins as a standby of the
new leader (with pg_rewind when it has to).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.replication import BIN

# The settings the README's High availability section states: a leader that stops renewing its
# key loses it after TTL seconds; Patroni acts every LOOP_WAIT seconds; a DCS or PostgreSQL call
# is retried for RETRY_TIMEOUT seconds (Patroni wants ttl >= loop_wait + 2 * retry_timeout).
TTL = 10
LOOP_WAIT = 2
RETRY_TIMEOUT = 4
SCOPE = "pfs"


def ha_binaries() -> str | None:
    """Why the HA cluster cannot run here, or None when it can."""
    for program in ("patroni", "etcd", "haproxy"):
        if shutil.which(program) is None:
            return f"{program} is not installed (apt-get install patroni etcd-server haproxy)"
    if not (BIN / "initdb").exists():
        return f"PostgreSQL 15 is not installed at {BIN}"
    return None


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_postgres(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def _get_json(url: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read() or b"{}")


@dataclass
class PatroniNode:
    name: str
    folder: Path
    pg_port: int
    rest_port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.pg_port}/{database}"

    def role(self) -> str | None:
        """'primary', 'replica', or None when its Patroni does not answer."""
        try:
            status, body = _get_json(f"http://127.0.0.1:{self.rest_port}/patroni")
        except (OSError, ValueError):
            return None
        if status not in (200, 503) or body.get("state") != "running":
            return None
        return (
            "primary" if body.get("role") in ("master", "primary") else str(body.get("role"))
        )  # 3.0: master

    def start(self) -> None:
        log = (self.folder / "patroni.log").open("ab")
        self.process = subprocess.Popen(
            _as_postgres(["patroni", str(self.folder / "patroni.yml")]),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a kill takes PostgreSQL with it
        )
        log.close()

    def kill(self) -> None:
        """Patroni and every PostgreSQL process of this node, at once, with -9."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        self._kill_postgres()
        if self.process is not None:
            self.process.wait()
            self.process = None

    def _kill_postgres(self) -> None:
        """The postmaster and its children (Patroni starts PostgreSQL in a session of its own)."""
        try:
            postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return
        with contextlib.suppress(OSError):  # (a stale file's pid may be anyone's by now)
            if b"postgres" not in Path(f"/proc/{postmaster}/cmdline").read_bytes():
                return
        for pid in (postmaster, *_children(postmaster)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        """Patroni stops PostgreSQL, then itself."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
        self._kill_postgres()  # whatever Patroni left running
        self.process = None


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


@dataclass
class HaCluster:
    nodes: list[PatroniNode]
    primary_port: int  # haproxy: the leader
    replica_port: int  # haproxy: a running replica
    folder: Path
    synchronous: bool = True  # a commit waits for a standby to have it
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def url(self, database: str = "postgres") -> str:
        """Through haproxy to the leader."""
        return f"postgresql://postgres@127.0.0.1:{self.primary_port}/{database}"

    def replica_url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.replica_port}/{database}"

    def multi_host_url(self, database: str = "postgres") -> str:
        """Straight to the nodes, the client picking the one that takes writes."""
        hosts = ",".join(f"127.0.0.1:{node.pg_port}" for node in self.nodes)
        return f"postgresql://postgres@{hosts}/{database}?target_session_attrs=read-write"

    def leader(self) -> PatroniNode | None:
        for node in self.nodes:
            if node.role() == "primary":
                return node
        return None

    def wait_for(self, what: str, check: Callable[[], bool], seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while not check():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the HA cluster: {what} did not happen in {seconds} s\n{self.logs()}")
            time.sleep(0.2)

    def wait_healthy(self, seconds: float = 90) -> PatroniNode:
        """Until there is a leader and every node is running and streaming from it (synchronously)."""

        def healthy() -> bool:
            try:
                _, body = _get_json(f"http://127.0.0.1:{self.nodes[0].rest_port}/cluster")
            except (OSError, ValueError):
                return False
            members = body.get("members", [])
            assert isinstance(members, list)
            states = {member["name"]: (member["role"], member["state"]) for member in members}
            leaders = [
                name for name, (role, state) in states.items() if role == "leader" and state == "running"
            ]
            syncs = [
                name
                for name, (role, state) in states.items()
                if role == ("sync_standby" if self.synchronous else "replica")
                and state in ("running", "streaming")  # (3.0 says running)
            ]
            synchronous = (
                len(states) == len(self.nodes) and len(leaders) == 1 and len(syncs) == len(self.nodes) - 1
            )
            return synchronous and self.leader() is not None

        self.wait_for("a leader with every standby streaming", healthy, seconds)
        leader = self.leader()
        assert leader is not None
        return leader

    def switchover(self, to: PatroniNode) -> None:
        """A planned change of leader, as `patronictl switchover` makes it."""
        leader = self.leader()
        assert leader is not None
        subprocess.run(
            _as_postgres(
                [
                    "patronictl",
                    "-c",
                    str(leader.folder / "patroni.yml"),
                    "switchover",
                    SCOPE,
                    "--leader",
                    leader.name,
                    "--candidate",
                    to.name,
                    "--force",
                ]
            ),
            check=True,
            capture_output=True,
            timeout=60,
        )

    def logs(self) -> str:
        tails = []
        for path in sorted(self.folder.glob("**/*.log")):
            with contextlib.suppress(OSError):
                tails.append(
                    f"--- {path.name}\n" + "".join(path.read_text(errors="replace").splitlines(True)[-15:])
                )
        return "\n".join(tails)


def _patroni_config(node: PatroniNode, etcd_port: int, synchronous: bool) -> str:
    config = {
        "scope": SCOPE,
        "name": node.name,
        "log": {"level": "WARNING"},
        "restapi": {
            "listen": f"127.0.0.1:{node.rest_port}",
            "connect_address": f"127.0.0.1:{node.rest_port}",
        },
        "etcd3": {"hosts": [f"127.0.0.1:{etcd_port}"]},
        "bootstrap": {
            "dcs": {
                "ttl": TTL,
                "loop_wait": LOOP_WAIT,
                "retry_timeout": RETRY_TIMEOUT,
                "maximum_lag_on_failover": 1048576,
                "synchronous_mode": synchronous,
                "postgresql": {
                    "use_pg_rewind": True,
                    "use_slots": True,
                    "parameters": {
                        "wal_level": "replica",
                        "hot_standby": "on",
                        "wal_log_hints": "on",
                        "max_wal_senders": 10,
                        "max_replication_slots": 10,
                        "max_connections": 200,
                        "wal_keep_size": "256MB",
                    },
                },
            },
            "initdb": [{"encoding": "UTF8"}, {"auth": "trust"}, {"username": "postgres"}],
        },
        "postgresql": {
            "listen": f"127.0.0.1:{node.pg_port}",
            "connect_address": f"127.0.0.1:{node.pg_port}",
            "data_dir": str(node.data),
            "bin_dir": str(BIN),
            "pgpass": str(node.folder / "pgpass"),
            "authentication": {
                "superuser": {"username": "postgres", "password": "unused"},
                "replication": {"username": "postgres", "password": "unused"},
                "rewind": {"username": "postgres", "password": "unused"},
            },
            "parameters": {"unix_socket_directories": str(node.folder)},
            "pg_hba": [
                "local all all trust",
                "host all all 127.0.0.1/32 trust",
                "host replication all 127.0.0.1/32 trust",
            ],
        },
    }
    return json.dumps(config)  # YAML is a superset of JSON


def _haproxy_config(primary_port: int, replica_port: int, nodes: list[PatroniNode]) -> str:
    lines = [
        "global",
        "  maxconn 1000",
        "defaults",
        "  mode tcp",
        "  timeout connect 2s",
        "  timeout client 30m",
        "  timeout server 30m",
        "  timeout check 1s",
    ]
    for name, port, check in (("primary", primary_port, "/primary"), ("replica", replica_port, "/replica")):
        lines += [
            f"listen {name}",
            f"  bind 127.0.0.1:{port}",
            f"  option httpchk OPTIONS {check}",  # (no body for haproxy to cut off)
            "  http-check expect status 200",
            # Checked twice a second; a node that stops being what this port wants loses its
            # connections at once, and the new leader gets them after one passing check.
            "  default-server inter 500ms fall 2 rise 1 on-marked-down shutdown-sessions",
        ]
        lines += [
            f"  server {node.name} 127.0.0.1:{node.pg_port} check port {node.rest_port}" for node in nodes
        ]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def ha_cluster(nodes: int = 2, synchronous: bool = True) -> Iterator[HaCluster]:
    folder = Path(tempfile.mkdtemp(prefix="patroni-"))
    os.chmod(folder, 0o755)
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    etcd_port, etcd_peer = _free_port(), _free_port()
    members = [
        PatroniNode(f"node{n + 1}", folder / f"node{n + 1}", _free_port(), _free_port()) for n in range(nodes)
    ]
    cluster = HaCluster(members, _free_port(), _free_port(), folder, synchronous)
    try:
        etcd_log = (folder / "etcd.log").open("ab")
        cluster.processes.append(
            subprocess.Popen(
                _as_postgres(
                    [
                        "etcd",
                        "--name",
                        "etcd0",
                        "--data-dir",
                        str(folder / "etcd"),
                        "--listen-client-urls",
                        f"http://127.0.0.1:{etcd_port}",
                        "--advertise-client-urls",
                        f"http://127.0.0.1:{etcd_port}",
                        "--listen-peer-urls",
                        f"http://127.0.0.1:{etcd_peer}",
                        "--initial-advertise-peer-urls",
                        f"http://127.0.0.1:{etcd_peer}",
                        "--initial-cluster",
                        f"etcd0=http://127.0.0.1:{etcd_peer}",
                        "--enable-v2=true",
                    ]
                ),
                stdout=etcd_log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        etcd_log.close()
        cluster.wait_for("etcd answering", lambda: _answers(f"http://127.0.0.1:{etcd_port}/health"), 30)
        for node in members:
            node.folder.mkdir(mode=0o700)
            (node.folder / "patroni.yml").write_text(_patroni_config(node, etcd_port, synchronous))
            if os.geteuid() == 0:
                shutil.chown(node.folder, "postgres")
                shutil.chown(node.folder / "patroni.yml", "postgres")
        members[0].start()
        cluster.wait_for("the first node leading", lambda: members[0].role() == "primary", 90)
        for node in members[1:]:
            node.start()
        (folder / "haproxy.cfg").write_text(
            _haproxy_config(cluster.primary_port, cluster.replica_port, members)
        )
        haproxy_log = (folder / "haproxy.log").open("ab")
        cluster.processes.append(
            subprocess.Popen(
                ["haproxy", "-f", str(folder / "haproxy.cfg"), "-db"],
                stdout=haproxy_log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        haproxy_log.close()
        cluster.wait_healthy()
        yield cluster
    finally:
        for node in members:
            node.stop()
        for process in reversed(cluster.processes):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        shutil.rmtree(folder, ignore_errors=True)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except (OSError, ValueError):
        return False
