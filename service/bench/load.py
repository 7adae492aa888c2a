"""Load generators for `python -m service bench`: wrk when installed, a built-in one otherwise."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# (method, path, body, extra headers) of one request.
Request = tuple[str, str, bytes | None, dict[str, str]]


@dataclass
class Run:
    requests_per_second: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    non_2xx: int
    errors: int
    requests: int = 0


# The built-in load generator: keep-alive HTTP/1.1 over asyncio streams, one request at a time
# on each connection, like wrk; every latency is kept, so percentiles are exact.


async def _one_connection(
    host: str,
    port: int,
    make: Callable[[], Request],
    until: float,
    latencies: list[float],
    tally: dict[str, int],
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < until:
            method, path, body, headers = make()
            head = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}"]
            head += [f"{name}: {value}" for name, value in headers.items()]
            if body is not None:
                head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
            started = time.perf_counter()
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + (body or b""))
            status_line = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            if not status_line.split(b" ")[1].startswith(b"2"):
                tally["non_2xx"] += 1
    except (OSError, asyncio.IncompleteReadError, IndexError, ValueError):
        tally["errors"] += 1
    finally:
        writer.close()


async def builtin_load(url: str, make: Callable[[], Request], seconds: float, connections: int) -> Run:
    host, port = url.split("//", 1)[1].split(":")
    latencies: list[float] = []
    tally = {"non_2xx": 0, "errors": 0}
    started = time.perf_counter()
    until = started + seconds
    await asyncio.gather(
        *(_one_connection(host, int(port), make, until, latencies, tally) for _ in range(connections))
    )
    elapsed = time.perf_counter() - started
    ordered = sorted(latencies) or [0.0]

    def percentile(share: float) -> float:
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))] * 1000

    return Run(
        len(latencies) / elapsed,
        percentile(0.5),
        percentile(0.9),
        percentile(0.99),
        ordered[-1] * 1000,
        tally["non_2xx"],
        tally["errors"],
        len(latencies),
    )


# wrk, when installed: the scenario's requests are written into a Lua script, drawn at random.


def wrk_script(requests: list[Request], folder: Path) -> Path:
    lines = ["local requests = {}"]
    for method, path, body, headers in requests:
        all_headers = dict(headers)
        if body is not None:
            all_headers["Content-Type"] = "application/json"
        lua_headers = ", ".join(f"[{json.dumps(k)}] = {json.dumps(v)}" for k, v in all_headers.items())
        lua_body = json.dumps(body.decode()) if body is not None else "nil"
        call = f"wrk.format({json.dumps(method)}, {json.dumps(path)}, {{{lua_headers}}}, {lua_body})"
        lines.append(f"requests[#requests + 1] = {call}")
    lines += [
        "math.randomseed(os.time())",
        "request = function() return requests[math.random(#requests)] end",
    ]
    script = folder / f"scenario-{secrets.token_hex(4)}.lua"
    script.write_text("\n".join(lines))
    return script


def _milliseconds(text: str) -> float:
    number, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk_load(url: str, script: Path | None, seconds: int, connections: int) -> Run:
    args = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    out = subprocess.run(
        [*args, *([f"-s{script}"] if script else []), url], capture_output=True, text=True, check=True
    ).stdout
    return parse_wrk(out)


def parse_wrk(out: str) -> Run:
    """wrk --latency's report -> a Run."""
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    points = {p: _milliseconds(v) for p, v in re.findall(r"^\s+(50|90|99)%\s+(\S+)", out, re.MULTILINE)}
    latency_max = re.search(r"Latency\s+\S+\s+\S+\s+(\S+)", out)
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return Run(
        rate,
        points.get("50", 0.0),
        points.get("90", 0.0),
        points.get("99", 0.0),
        _milliseconds(latency_max.group(1)) if latency_max else 0.0,
        int(bad.group(1)) if bad else 0,
        sum(map(int, errors.groups())) if errors else 0,
        int(total.group(1)) if (total := re.search(r"(\d+) requests in", out)) else 0,
    )
