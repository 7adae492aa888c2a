"""What `python -m service bench` prints and writes: the tables, bench.json, the charts, and
`bench compare OLD.json NEW.json`."""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.bench.load import Run

MEMORY_LIMIT = 0.10  # a worker's RSS may grow this much between the early and the late sample
KNEE_SHARE = 0.9  # a sweep's knee: the fewest connections that reach this share of its best throughput


@dataclass
class Result:
    database: str
    scenario: str
    title: str
    workers: int
    service: Run
    rows_per_second: float
    limit: Run | None = None
    ratio: float | None = None
    rounds: list[dict[str, Any]] = field(default_factory=list)

    @property
    def tail_ratio(self) -> float | None:
        """The service's p99 over the limit app's, in the same run: its tail against the machine's."""
        return self.service.p99_ms / self.limit.p99_ms if self.limit and self.limit.p99_ms else None


@dataclass
class Step:
    connections: int
    service: Run
    limit: Run | None = None


@dataclass
class Sweep:
    """One scenario at 1, 2, 4, ... connections: where throughput stops growing and latency starts to."""

    database: str
    scenario: str
    title: str
    workers: int
    seconds: int
    steps: list[Step] = field(default_factory=list)

    @property
    def knee(self) -> int | None:
        """The fewest connections whose throughput is within KNEE_SHARE of the sweep's best."""
        if not self.steps:
            return None
        best = max(step.service.requests_per_second for step in self.steps)
        return next(s.connections for s in self.steps if s.service.requests_per_second >= KNEE_SHARE * best)


@dataclass
class Memory:
    """Each worker's resident memory after the first tenth of the requests and after all of them."""

    database: str
    workers: int
    early_requests: int
    early_rss_mib: list[float]
    late_requests: int
    late_rss_mib: list[float]
    samples: list[tuple[int, list[float]]] = field(default_factory=list)

    @property
    def growth(self) -> float:
        """The largest growth of any worker, as a fraction of its early RSS."""
        pairs = zip(self.early_rss_mib, self.late_rss_mib, strict=True)
        return max(late / early - 1 for early, late in pairs)


# Tables.

LIMIT_COLUMNS = f" {'limit req/s':>11} {'limit p50':>9} {'limit p99':>9} {'ratio':>6} {'p99 x':>6}"
HEADER = (
    f"{'database':10} {'scenario':9} {'req/s':>8} {'rows/s':>9} {'p50':>7} {'p90':>7} {'p99':>7} {'max':>8}"
    f" {'non-2xx':>7}" + LIMIT_COLUMNS
)
SWEEP_HEADER = (
    f"{'database':10} {'scenario':9} {'conns':>5} {'req/s':>8} {'p50':>7} {'p90':>7} {'p99':>7}"
    f" {'non-2xx':>7} {'limit req/s':>11} {'limit p50':>9} {'limit p99':>9}"
)


def _cell(value: float | None, width: int, form: str) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:{width}{form}}"


def _limit_cells(limit: Run | None) -> str:
    """The limit app's req/s, p50 and p99 in the same run, or dashes where it does not serve it."""
    if limit is None:
        return f"{'-':>11} {'-':>9} {'-':>9}"
    return f"{limit.requests_per_second:11.0f} {limit.p50_ms:9.2f} {limit.p99_ms:9.2f}"


def row(r: Result) -> str:
    s, lim = r.service, r.limit
    return (
        f"{r.database:10} {r.scenario:9} {s.requests_per_second:8.0f} {r.rows_per_second:9.0f}"
        f" {s.p50_ms:7.2f} {s.p90_ms:7.2f} {s.p99_ms:7.2f} {s.max_ms:8.1f} {s.non_2xx + s.errors:7d}"
        f" {_limit_cells(lim)} {_cell(r.ratio, 6, '.2f')} {_cell(r.tail_ratio, 6, '.2f')}"
    )


def sweep_rows(sweep: Sweep) -> list[str]:
    lines = []
    for step in sweep.steps:
        s, lim = step.service, step.limit
        lines.append(
            f"{sweep.database:10} {sweep.scenario:9} {step.connections:5d} {s.requests_per_second:8.0f}"
            f" {s.p50_ms:7.2f} {s.p90_ms:7.2f} {s.p99_ms:7.2f} {s.non_2xx + s.errors:7d}"
            f" {_limit_cells(lim)}"
        )
    lines.append(f"{'':10} {'':9} knee at {_connections(sweep.knee)} ({KNEE_SHARE:.0%} of the best req/s)")
    return lines


def _connections(count: int | None) -> str:
    return f"{count} connection" + ("" if count == 1 else "s")


def _mib(rss: list[float]) -> str:
    return ", ".join(f"{r:.1f}" for r in rss)


def memory_line(m: Memory) -> str:
    verdict = "within" if m.growth <= MEMORY_LIMIT else "MORE THAN"
    return (
        f"{m.database:10} memory: worker RSS {_mib(m.early_rss_mib)} MiB after {m.early_requests:,} "
        f"requests, {_mib(m.late_rss_mib)} MiB after {m.late_requests:,} "
        f"({m.growth:+.1%}, {verdict} {MEMORY_LIMIT:.0%})"
    )


def print_report(results: list[Result], sweeps: list[Sweep], memories: list[Memory]) -> None:
    if results:
        print("\n" + HEADER)
        for result in results:
            print(row(result))
    if sweeps:
        print("\n" + SWEEP_HEADER)
        for sweep in sweeps:
            print("\n".join(sweep_rows(sweep)))
    for memory in memories:
        print(memory_line(memory))


def write_report(
    output: Path, options: dict[str, Any], results: list[Result], sweeps: list[Sweep], memories: list[Memory]
) -> list[Path]:
    """bench.json, and the charts matplotlib can draw; the files written."""
    from dataclasses import asdict

    output.mkdir(parents=True, exist_ok=True)
    report = {
        "options": options,
        "scenarios": [{**asdict(r), "tail_ratio": r.tail_ratio} for r in results],
        "sweeps": [{**asdict(s), "knee": s.knee} for s in sweeps],
        "memory": [{**asdict(m), "growth": round(m.growth, 4)} for m in memories],
    }
    written = [output / "bench.json"]
    written[0].write_text(json.dumps(report, indent=2))
    if results and bar_chart(results, output / "bench.png"):
        written.append(output / "bench.png")
    if sweeps and sweep_chart(sweeps, output / "sweep.png"):
        written.append(output / "sweep.png")
    return written


# Charts (with matplotlib, from `make bench` or the `bench` extra; none without it).


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def bar_chart(results: list[Result], path: Path) -> bool:
    """Requests/s per scenario, one bar per database; False without matplotlib."""
    plt = _pyplot()
    if plt is None:
        return False
    scenarios = list(dict.fromkeys(r.scenario for r in results))
    databases = list(dict.fromkeys(r.database for r in results))
    figure, axes = plt.subplots(figsize=(9, 4.5), dpi=110)
    width = 0.8 / max(1, len(databases))
    for index, database in enumerate(databases):
        by_scenario = {r.scenario: r.service.requests_per_second for r in results if r.database == database}
        positions = [n + index * width for n in range(len(scenarios))]
        bars = axes.bar(positions, [by_scenario.get(name, 0.0) for name in scenarios], width, label=database)
        axes.bar_label(bars, fmt="%.0f", fontsize=8)
    axes.set_xticks([n + width * (len(databases) - 1) / 2 for n in range(len(scenarios))], scenarios)
    axes.set_ylabel("requests per second")
    axes.set_title("purchase-feed-service by scenario and database")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return True


def sweep_chart(sweeps: list[Sweep], path: Path) -> bool:
    """Throughput against latency, one panel per swept scenario, each point labelled with its
    connections: the curve runs right while the server keeps up, and turns up at the knee."""
    plt = _pyplot()
    if plt is None:
        return False
    figure, panels = plt.subplots(1, len(sweeps), figsize=(6 * len(sweeps), 4.8), dpi=110, squeeze=False)
    for axes, sweep in zip(panels[0], sweeps, strict=True):
        lines = [("service p99", "service", "p99_ms", "-"), ("service p50", "service", "p50_ms", ":")]
        if any(step.limit for step in sweep.steps):
            lines.append(("limit app p99", "limit", "p99_ms", "--"))
        for label, who, percentile, style in lines:
            runs = [(step.connections, getattr(step, who)) for step in sweep.steps if getattr(step, who)]
            xs = [run.requests_per_second for _, run in runs]
            ys = [getattr(run, percentile) for _, run in runs]
            axes.plot(xs, ys, style, marker="o", label=label)
            if percentile == "p99_ms":
                for (connections, _), x, y in zip(runs, xs, ys, strict=True):
                    axes.annotate(
                        str(connections), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7
                    )
        axes.set_yscale("log")
        axes.set_xlabel("requests per second")
        axes.set_ylabel("latency (ms, log scale)")
        axes.set_title(f"{sweep.database}: {sweep.title}\nknee at {_connections(sweep.knee)}", fontsize=10)
        axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return True


# Comparing two runs.


@dataclass
class Change:
    """One figure of one scenario in two runs: each run's rounds, and what the difference means."""

    name: str
    old: list[float]
    new: list[float]

    @property
    def ratio(self) -> float:
        return statistics.median(self.new) / statistics.median(self.old)

    @property
    def beyond_noise(self) -> bool:
        """True when every round of one run beats every round of the other. With three rounds
        each, two runs of the same setup are apart like this one time in ten (2 of 20 orders)."""
        return min(self.new) > max(self.old) or max(self.new) < min(self.old)

    def describe(self) -> str:
        verdict = "beyond the noise" if self.beyond_noise else "within the noise"
        if len(self.old) < 2 or len(self.new) < 2:
            verdict = "one round: no noise estimate"
        return (
            f"{self.name:>10}: {self.ratio - 1:+7.1%}  old {_spread(self.old)}  new {_spread(self.new)}"
            f"  {verdict}"
        )


def _spread(values: list[float]) -> str:
    middle = statistics.median(values)
    digits = 0 if middle >= 100 else 2
    return f"{middle:,.{digits}f} [{min(values):,.{digits}f}..{max(values):,.{digits}f}]"


def _changes(old: dict[str, Any], new: dict[str, Any]) -> Iterable[Change]:
    def rounds(entry: dict[str, Any], who: str, figure: str) -> list[float]:
        return [float(r[who][figure]) for r in entry["rounds"] if r.get(who)]

    def ratios(entry: dict[str, Any]) -> list[float]:
        return [
            r["service"]["requests_per_second"] / r["limit"]["requests_per_second"]
            for r in entry["rounds"]
            if r.get("limit")
        ]

    yield Change(
        "req/s", rounds(old, "service", "requests_per_second"), rounds(new, "service", "requests_per_second")
    )
    yield Change("p99 ms", rounds(old, "service", "p99_ms"), rounds(new, "service", "p99_ms"))
    if ratios(old) and ratios(new):
        # Against the limit app in the same round: what is left when the machine's drift cancels out.
        yield Change("ratio", ratios(old), ratios(new))


def compare(old_path: Path, new_path: Path) -> int:
    """Each scenario both runs measured: the change of its median, and whether the rounds' spread
    makes it real. Sweeps are not compared (one run a step: no spread to judge by)."""
    old, new = (json.loads(Path(path).read_text()) for path in (old_path, new_path))
    old_by_name = {(e["database"], e["scenario"]): e for e in old.get("scenarios", [])}
    shared = [e for e in new.get("scenarios", []) if (e["database"], e["scenario"]) in old_by_name]
    if not shared:
        print(
            f"error: {old_path} and {new_path} have no scenario on the same database in common",
            file=sys.stderr,
        )
        return 2
    print(f"{new_path} against {old_path} (change of the medians; [lowest..highest] of the rounds)")
    for entry in shared:
        print(f"\n{entry['database']} {entry['scenario']} ({entry['title']})")
        for change in _changes(old_by_name[(entry["database"], entry["scenario"])], entry):
            if change.old and change.new:
                print("  " + change.describe())
    return 0
