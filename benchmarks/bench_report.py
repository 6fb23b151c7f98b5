"""Reading a large event log: ``dualrun report``'s time should grow linearly with the size, its
memory not at all.

    python benchmarks/bench_report.py                  # a 1 GB log and a 0.5 GB one
    python benchmarks/bench_report.py --size-mb 100    # a quick run

It writes a log of generated but realistic events to a temporary directory: 8 runs (as 8
processes appending to one file), each with divergence events on three routes (one to three
differences each, keys, both outcomes) and, every 2,000 observations, a summary of what that run
added since its previous one (counts with ~10 matches per divergence, latency histograms,
divergence groups) — the lines a Dispatcher writes. Then a subprocess that does nothing but
``dualrun.logread.report_from_logs`` reads the file; the benchmark prints size, seconds, MB/s
and that subprocess's peak RSS, for the full size and for half of it, and the same peak RSS of
a subprocess that only imports dualrun, for reference. The totals read back are checked
against what was generated.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from dualrun.compare import Difference
from dualrun.recorder import Observation, Outcome, RouteAggregate

RUNS = 8
SUMMARY_EVERY = 2_000  # observations per run between two summaries
MATCHES_PER_DIVERGENCE = 10
ROUTES = ("pricing.engine:quote", "pricing.tax:compute", "pricing.catalog:lookup")
START = 1_772_323_200.0  # 2026-03-01T00:00:00Z
SOURCES = {"old": "git:v1.4.0", "new": "/srv/app/vendor/pricing-1.5.0"}

READER = """
import json, resource, sys, time
from dualrun.logread import report_from_logs
problems = []
started = time.perf_counter()
report, totals = report_from_logs(sys.argv[1:], problems.append)
seconds = time.perf_counter() - started
print(json.dumps({
    "seconds": seconds,
    "cpu_seconds": sum(resource.getrusage(resource.RUSAGE_SELF)[:2]),
    "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    "events": totals.events,
    "problems": problems[:5],
    "comparisons": sum(r.comparisons for r in report.routes),
    "mismatches": sum(r.mismatches for r in report.routes),
}))
"""

BASELINE = """
import json, resource
import dualrun.logread
print(json.dumps({"peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


class Run:
    """One simulated dispatcher: its observations, and the summaries of them."""

    def __init__(self, index: int, rng: random.Random) -> None:
        self.rng = rng
        self.base = {
            "schema": 1,
            "run": f"{index:04x}{rng.getrandbits(48):012x}",
            "pid": 1000 + index,
            "host": f"{socket.gethostname()}-{index % 3}",
        }
        self.seq = 0
        self.since = START
        self.pending: dict[str, RouteAggregate] = {}
        self.observed = 0
        self.comparisons = 0
        self.mismatches = 0

    def observation(self, now: float) -> Observation:
        rng = self.rng
        route = rng.choice(ROUTES)
        item = rng.randrange(20)
        differences = [Difference("$.total", "value", f"{rng.uniform(1, 500):.2f}", "…")]
        if rng.random() < 0.5:
            differences.append(
                Difference(f"$.items[{item}].price", "value", str(rng.randrange(999)), "0")
            )
        if rng.random() < 0.2:
            differences.append(Difference(f"$.items[{item}].discount", "missing", "0.1", "-"))
        old_ns, new_ns = rng.randrange(20_000, 400_000), rng.randrange(15_000, 500_000)
        value = {"total": differences[0].old, "items": [{"sku": f"SKU-{item:05d}", "qty": 2}]}
        return Observation(
            route=route,
            key=f"user-{rng.randrange(10**6)}",
            primary="old",
            old=Outcome("old", repr(value), None, old_ns, old_ns * 9 // 10),
            new=Outcome("new", repr(value).replace("qty", "quantity"), None, new_ns, new_ns),
            differences=tuple(differences),
            noise=(),
            status="mismatch",
            time=now,
        )

    def lines(self, now: float) -> list[str]:
        """One divergence event (and its matches); a summary line when one is due."""
        obs = self.observation(now)
        self.seq += 1
        aggregate = self.pending.setdefault(obs.route, RouteAggregate(obs.route))
        aggregate.add(obs)
        for _ in range(MATCHES_PER_DIVERGENCE):  # matches are only counted in summaries
            wall = self.rng.randrange(20_000, 400_000)
            aggregate.compared(wall, wall, wall, wall, now)
            aggregate.matches += 1
        self.observed += 1
        self.comparisons += 1 + MATCHES_PER_DIVERGENCE
        self.mismatches += 1
        out = [
            self.event("dualrun.divergence", now, seq=self.seq, sources=SOURCES, **obs.to_dict())
        ]
        if self.observed % SUMMARY_EVERY == 0:
            out.append(self.summary(now))
        return out

    def summary(self, now: float) -> str:
        routes = {
            name: {
                "calls": {"old": aggregate.comparisons * 19, "new": aggregate.comparisons},
                "crossings": 0,
                "aggregate": aggregate.to_dict(),
            }
            for name, aggregate in sorted(self.pending.items())
        }
        line = self.event(
            "dualrun.summary",
            now,
            seq=self.seq,
            start=self.since,
            end=now,
            policy="Canary(percent=5)",
            routes=routes,
            dropped_events=0,
        )
        self.pending.clear()
        self.since = now
        return line

    def event(self, name: str, now: float, **fields: Any) -> str:
        stamp = datetime.fromtimestamp(now, UTC).isoformat().replace("+00:00", "Z")
        return json.dumps({**self.base, **fields, "event": name, "timestamp": stamp})


def generate(path: Path, size: int, seed: int = 7) -> dict[str, int]:
    """Write about ``size`` bytes of events; return the totals they add up to."""
    rng = random.Random(seed)
    runs = [Run(i, rng) for i in range(RUNS)]
    written = 0
    now = START
    with open(path, "w", buffering=1 << 20) as out:
        for run in runs:
            load = run.event("dualrun.load", now, policy="Canary(percent=5)", versions=SOURCES)
            written += _write(out, [load])
        while written < size:
            now += 0.002
            written += _write(out, rng.choice(runs).lines(now))
        for run in runs:  # each process closes: a final summary
            written += _write(out, [run.summary(now)])
    return {
        "comparisons": sum(r.comparisons for r in runs),
        "mismatches": sum(r.mismatches for r in runs),
    }


def _write(out: TextIO, lines: list[str]) -> int:
    text = "\n".join(lines) + "\n"
    out.write(text)
    return len(text.encode())


def measure(paths: list[Path], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Read ``paths`` in a fresh subprocess; ``env``: extra environment variables for it."""
    done = subprocess.run(
        [sys.executable, "-c", READER, *map(str, paths)],
        capture_output=True,
        text=True,
        check=True,
        env=None if env is None else {**os.environ, **env},
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=1000, help="log size (default 1000)")
    parser.add_argument("--dir", help="where to write the logs (default: a temporary directory)")
    args = parser.parse_args(argv)
    size = int(args.size_mb * 1_000_000)
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="dualrun-bench-report-") as tmp:
        rows = []
        for label, target in (("half", size // 2), ("full", size)):
            path = Path(tmp) / f"{label}.jsonl"
            started = time.perf_counter()
            expected = generate(path, target)
            generated = time.perf_counter() - started
            actual = os.path.getsize(path)
            print(
                f"generated {label}: {actual / 1e6:,.0f} MB in {generated:.0f} s",
                file=sys.stderr,
                flush=True,
            )
            result = measure([path])
            if result["problems"]:
                raise SystemExit(f"the reader reported problems: {result['problems']}")
            for key, value in expected.items():
                if result[key] != value:
                    raise SystemExit(f"{key}: read {result[key]:,}, generated {value:,}")
            rows.append((label, actual, result))
            path.unlink()
        baseline = measure_baseline()
    print(
        f"{'log':<6}{'size MB':>10}{'events':>12}{'seconds':>10}{'MB/s':>8}{'CPU s':>8}"
        f"{'MB/CPU s':>10}{'peak RSS MB':>13}"
    )
    for label, actual, result in rows:
        mb = actual / 1e6
        print(
            f"{label:<6}{mb:>10,.0f}{result['events']:>12,}{result['seconds']:>10.1f}"
            f"{mb / result['seconds']:>8.1f}{result['cpu_seconds']:>8.1f}"
            f"{mb / result['cpu_seconds']:>10.1f}{result['peak_rss_kb'] / 1024:>13.1f}"
        )
    print(f"{'(a process that only imports the reader)':<64}{baseline / 1024:>13.1f}")
    (_, half_size, half), (_, full_size, full) = rows
    print(
        f"full/half: size {full_size / half_size:.2f}x, wall time "
        f"{full['seconds'] / half['seconds']:.2f}x, CPU time "
        f"{full['cpu_seconds'] / half['cpu_seconds']:.2f}x; peak RSS "
        f"{(full['peak_rss_kb'] - half['peak_rss_kb']) / 1024:+.1f} MB"
    )
    print("(wall time depends on other load on the machine; CPU time much less so)")
    return 0


def measure_baseline() -> int:
    done = subprocess.run(
        [sys.executable, "-c", BASELINE], capture_output=True, text=True, check=True
    )
    return int(json.loads(done.stdout)["peak_rss_kb"])


if __name__ == "__main__":
    raise SystemExit(main())
