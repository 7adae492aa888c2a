"""Does bcrypt stall the event loop? GET /health alone, then while clients log in non-stop.

bcrypt (cost BCRYPT_ROUNDS, 12 by default) runs in threads; if it ran on the loop, every /health
would wait behind a ~0.25 s hash. Run from the repository root (needs wrk):

    python bench/login_stall.py --seconds 10 --logins 8
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOGIN_LUA = ROOT / "bench" / "login.lua"


def wrk(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(["wrk", "-t1", "--latency", *args], stdout=subprocess.PIPE, text=True, env=env)


def summary(output: str) -> tuple[float, float, int]:
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", output)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    return (
        rate,
        float(p99.group(1)) * scale[p99.group(2)] if p99 else float("nan"),
        int(bad.group(1)) if bad else 0,
    )


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
        server = subprocess.Popen(
            [sys.executable, "-m", "service", "--port", str(args.port)], env=env, cwd=ROOT
        )
        try:
            for _ in range(100):
                try:
                    urllib.request.urlopen(f"{base}/health", timeout=1)
                    break
                except OSError:
                    time.sleep(0.2)
            account = {"username": "bench", "email": "bench@example.com", "password": "bench-password"}
            request = urllib.request.Request(
                f"{base}/auth/register", json.dumps(account).encode(), {"Content-Type": "application/json"}
            )
            urllib.request.urlopen(request)
            health = [f"-c{args.connections}", f"-d{args.seconds}s", f"{base}/health"]
            alone = summary(wrk(health).communicate()[0])
            logins = wrk(
                [f"-c{args.logins}", f"-d{args.seconds + 2}s", f"-s{LOGIN_LUA}", f"{base}/auth/login"]
            )
            time.sleep(1)  # let the logins get going first
            beside = summary(wrk(health).communicate()[0])
            login_result = summary(logins.communicate()[0])
        finally:
            server.terminate()
            server.wait()
    rounds = os.environ.get("BCRYPT_ROUNDS", "12")
    print(f"GET /health, wrk -t1 -c{args.connections} -d{args.seconds}s, one worker, bcrypt cost {rounds}")
    print(
        f"  alone:                        {alone[0]:8.0f} req/s  p99 {alone[1]:7.2f} ms  non-2xx {alone[2]}"
    )
    print(
        f"  with {args.logins} clients logging in:   {beside[0]:8.0f} req/s  p99 {beside[1]:7.2f} ms"
        f"  non-2xx {beside[2]}"
    )
    print(
        f"  the logins meanwhile:         {login_result[0]:8.1f} req/s  p99 {login_result[1]:7.2f} ms"
        f"  non-2xx {login_result[2]}"
    )


if __name__ == "__main__":
    main()
