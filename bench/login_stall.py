"""Does bcrypt stall the event loop? GET /health alone, then while clients log in non-stop.

bcrypt (cost BCRYPT_ROUNDS, 12 by default) runs in threads; if it ran on the loop, every /health
would wait behind a ~0.25 s hash. Run from the repository root (needs wrk):

    python bench/login_stall.py --seconds 10 --logins 8
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.bench.load import parse_wrk  # noqa: E402
from service.bench.runner import server  # noqa: E402 - after the path is set

LOGIN_LUA = ROOT / "bench" / "login.lua"


def wrk(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(["wrk", "-t1", "--latency", *args], stdout=subprocess.PIPE, text=True, env=env)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--logins", type=int, default=8, help="clients logging in continuously")
    parser.add_argument("--connections", type=int, default=32, help="clients calling /health")
    parser.add_argument("--port", type=int, default=8931)
    args = parser.parse_args()
    base = f"http://127.0.0.1:{args.port}"
    with tempfile.TemporaryDirectory() as folder:
        env = {
            **os.environ,
            "DATABASE_URL": f"sqlite:///{folder}/bench.db",
            "LOG_LEVEL": "warning",
            "SECRET_KEY": "bench-" + "k" * 40,
        }
        service = [sys.executable, "-m", "service", "--port", str(args.port)]
        with server(service, env, f"{base}/health", ROOT):
            account = {"username": "bench", "email": "bench@example.com", "password": "bench-password"}
            request = urllib.request.Request(
                f"{base}/auth/register", json.dumps(account).encode(), {"Content-Type": "application/json"}
            )
            urllib.request.urlopen(request)
            health = [f"-c{args.connections}", f"-d{args.seconds}s", f"{base}/health"]
            alone = parse_wrk(wrk(health).communicate()[0])
            logins = wrk(
                [f"-c{args.logins}", f"-d{args.seconds + 2}s", f"-s{LOGIN_LUA}", f"{base}/auth/login"]
            )
            time.sleep(1)  # let the logins get going first
            beside = parse_wrk(wrk(health).communicate()[0])
            login_result = parse_wrk(logins.communicate()[0])
    rounds = os.environ.get("BCRYPT_ROUNDS", "12")
    print(f"GET /health, wrk -t1 -c{args.connections} -d{args.seconds}s, one worker, bcrypt cost {rounds}")
    for label, run in (
        ("alone:", alone),
        (f"with {args.logins} clients logging in:", beside),
        ("the logins meanwhile:", login_result),
    ):
        rate, p99 = run.requests_per_second, run.p99_ms
        print(f"  {label:30} {rate:8.1f} req/s  p99 {p99:7.2f} ms  non-2xx {run.non_2xx}")


if __name__ == "__main__":
    main()
