"""Shadow overhead against laboratory (a Python port of Scientist), measured in one run.

    python benchmarks/bench_shadow.py            # overheads and ratios (a few seconds)
    python benchmarks/bench_shadow.py --memory   # also 1,000,000 shadowed calls: RSS growth

Targets from the shadow issue:
- inline shadow overhead per call (time minus the two function calls) <= 0.25x the overhead of
  laboratory's Experiment (control + candidate, no-op publish);
- background shadow: added latency on the caller <= 2x the routed call overhead without shadow
  (the shadow sleeps, so the caller only enqueues);
- memory: 1,000,000 shadowed calls with mismatches on 1% of them grow RSS by < 50 MB.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
import timeit
from pathlib import Path

import laboratory

import dualrun

REPEAT = 7
NUMBER = 20_000

COMMON = """
def record(n):
    return {"id": n, "sku": "SKU-1", "name": "widget", "qty": 2, "price": 9.5,
            "currency": "EUR", "rate": 0.2, "ok": True, "note": None, "tags": ["a", "b"]}
def total(cart):
    return sum(item["qty"] * item["price"] for item in cart["items"])
"""

OLD = """
import time
def add(a, b):
    return a + b
def slow_add(a, b):
    return a + b
def quote(n):
    return {"n": n, "price": n * 2}
"""
NEW = """
import time
def add(a, b):
    return a + b
def slow_add(a, b):
    time.sleep(0.001)
    return a + b
def quote(n):
    return {"n": n, "price": n * 2 + (1 if n % 100 == 0 else 0)}
"""


class QuietExperiment(laboratory.Experiment):  # type: ignore[misc]
    def publish(self, result: object) -> None:
        """No-op publish, as the benchmark asks."""


def make_versions(root: Path) -> dualrun.VersionPair:
    for tag, code in (("old", OLD), ("new", NEW)):
        package = root / tag / "bench_shadow_target"
        package.mkdir(parents=True)
        (package / "__init__.py").write_text(code + COMMON)
    return dualrun.load("bench_shadow_target", old=str(root / "old"), new=str(root / "new"))


def ns(stmt: str, env: dict[str, object], number: int = NUMBER) -> float:
    runs = timeit.Timer(stmt, globals=env).repeat(repeat=REPEAT, number=number)
    return statistics.median(runs) / number * 1e9


def caller_ns(fn: object, calls: int = 5_000) -> float:
    """Median latency of single calls as the caller sees them (perf_counter_ns around each)."""
    samples = []
    for _ in range(calls):
        start = time.perf_counter_ns()
        fn(1, 2)  # type: ignore[operator]
        samples.append(time.perf_counter_ns() - start)
    return statistics.median(samples)


def overheads(versions: dualrun.VersionPair) -> None:
    old_add = versions.old.resolve("bench_shadow_target:add")
    new_add = versions.new.resolve("bench_shadow_target:add")

    def lab(a: int, b: int) -> object:
        experiment = QuietExperiment()
        experiment.control(old_add, args=[a, b])
        experiment.candidate(new_add, args=[a, b])
        return experiment.conduct()

    plain = dualrun.Dispatcher(versions).route("bench_shadow_target:add")
    inline = dualrun.Dispatcher(versions, shadow=dualrun.Shadow(mode="inline"))
    background = dualrun.Dispatcher(
        versions, shadow=dualrun.Shadow(mode="background", queue_size=10_000_000)
    )
    inline_add = inline.route("bench_shadow_target:add")
    background_slow = background.route("bench_shadow_target:slow_add")
    direct = ns("f(1, 2)", {"f": old_add})
    both = direct + ns("f(1, 2)", {"f": new_add})
    laboratory_ns = ns("lab(1, 2)", {"lab": lab})
    routed = ns("f(1, 2)", {"f": plain})
    inline_ns = ns("f(1, 2)", {"f": inline_add})
    routed_caller = caller_ns(plain)
    background_ns = caller_ns(background_slow)
    background.close(timeout=0)
    inline.close()
    lab_overhead = laboratory_ns - both
    inline_overhead = inline_ns - both
    routed_overhead = routed - direct
    added = background_ns - routed_caller
    print(f"{'what':52} {'ns/call':>9}")
    for what, value in (
        ("direct call (old)", direct),
        ("old + new called directly", both),
        ("laboratory Experiment, control + candidate", laboratory_ns),
        ("routed call, no shadow", routed),
        ("routed call, inline shadow", inline_ns),
        ("routed call, no shadow, median single call", routed_caller),
        ("routed call, background shadow, median single call", background_ns),
    ):
        print(f"{what:52} {value:9.0f}")
    print()
    print(f"laboratory overhead      {lab_overhead:8.0f} ns")
    print(
        f"inline shadow overhead   {inline_overhead:8.0f} ns  = "
        f"{inline_overhead / lab_overhead:.3f}x laboratory's  (target <= 0.25x)"
    )
    print(f"routed call overhead     {routed_overhead:8.0f} ns")
    print(
        f"background added latency {added:8.0f} ns  = "
        f"{added / routed_overhead:.2f}x the routed call overhead  (target <= 2x)"
    )


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_growth(versions: dualrun.VersionPair, calls: int) -> tuple[float, float, int, int]:
    """RSS before and after ``calls`` inline-shadowed calls (1% mismatches), in MB, and the
    comparisons and mismatches the report counts."""
    d = dualrun.Dispatcher(versions, shadow=dualrun.Shadow(mode="inline"))
    quote = d.route("bench_shadow_target:quote")
    for n in range(10_000):  # warm up: allocator pools, histogram buckets, groups
        quote(n)
    before = rss_mb()
    for n in range(calls):
        quote(n)
    after = rss_mb()
    route = d.report().route("bench_shadow_target:quote")
    d.close()
    return before, after, route.comparisons, route.mismatches


def memory(versions: dualrun.VersionPair, calls: int = 1_000_000) -> None:
    before, after, comparisons, mismatches = rss_growth(versions, calls)
    print(
        f"{calls:,} shadowed calls, {mismatches:,} mismatches "
        f"({100 * mismatches / comparisons:.1f}%): RSS {before:.1f} MB -> "
        f"{after:.1f} MB, growth {after - before:.1f} MB (target < 50 MB)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--memory", action="store_true", help="also run the 1M-call memory test")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        versions = make_versions(Path(tmp))
        overheads(versions)
        if args.memory:
            memory(versions)
        versions.unload()


if __name__ == "__main__":
    main()
