"""Every benchmark in one run: one table of ratios against anchors measured in the same run.

    python benchmarks/run_all.py            # the full suite (a few minutes)
    python benchmarks/run_all.py --quick    # fewer rounds and smaller sizes (about a minute)

Anchors: a direct call, a closure decorator, a bare ``wrapt.FunctionWrapper`` and
``laboratory`` (the Python port of GitHub's Scientist). Candidates are timed in interleaved
rounds (the best round counts), so a ratio compares two numbers taken under the same load.
The table is printed, and written as JSON and as a PNG chart (``--out``, default
``benchmarks/results``; the chart needs matplotlib, from the ``bench`` extra). It states the
machine and its load average before and after: on a busy machine, trust the ratios, not the
absolute times.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import timeit
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import bench_loading
import bench_report
import bench_routing
import bench_shadow
import wrapt

import dualrun
from dualrun.compare import Differ

HERE = Path(__file__).resolve().parent


@dataclass
class Row:
    group: str
    what: str
    value: float | None  # in ``unit``
    unit: str
    ratio: float | None = None  # value / anchor (or anchor / value for throughput)
    anchor: str = ""
    target: str = ""


@dataclass
class Settings:
    rounds: int
    number: int  # calls per round for the cheap calls; shadowed calls use a tenth
    routes: tuple[int, ...]
    threads: tuple[int, ...]
    carts: tuple[int, ...]
    log_mb: float
    memory_calls: int
    load_reps: int


FULL = Settings(
    7, 200_000, (1, 10, 100, 1000, 10_000), (1, 2, 4, 8), (0, 10, 100, 1000), 200, 1_000_000, 5
)
QUICK = Settings(3, 50_000, (1, 100, 10_000), (1, 2, 8), (0, 10, 100), 30, 200_000, 2)

Runner = Callable[[int], float]  # number of calls -> seconds


def timer(
    stmt: str, env: dict[str, Any], within: Callable[[], AbstractContextManager[Any]] = nullcontext
) -> Runner:
    compiled = timeit.Timer(stmt, globals=env)

    def run(number: int) -> float:
        with within():
            return compiled.timeit(number)

    return run


def interleaved(candidates: dict[str, Runner], number: int, rounds: int) -> dict[str, float]:
    """ns per call of each candidate: the best of ``rounds`` rounds, candidates interleaved."""
    for run in candidates.values():
        run(max(1, number // 10))  # warm up
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, run in candidates.items():
            samples[name].append(run(number) / number * 1e9)
    return {name: min(values) for name, values in samples.items()}


def closure(fn: Callable[..., Any]) -> Callable[..., Any]:
    def decorated(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return decorated


def bare_wrapt(fn: Callable[..., Any]) -> Any:
    return wrapt.FunctionWrapper(fn, lambda wrapped, instance, args, kw: wrapped(*args, **kw))


def key() -> AbstractContextManager[Any]:
    return dualrun.context(key="user-42")


def pin() -> AbstractContextManager[Any]:
    return dualrun.context(pin="new")


# -- routed calls ---------------------------------------------------------------------------


def routing(s: Settings, tmp: Path) -> tuple[list[Row], dict[str, float]]:
    versions = bench_routing.make_versions(tmp / "routing")
    target = versions.old.resolve("bench_target:add")
    fixed = dualrun.Dispatcher(versions, policy=dualrun.Fixed("old")).route("bench_target:add")
    canary = dualrun.Dispatcher(versions, policy=dualrun.Canary(50)).route("bench_target:add")
    ns = interleaved(
        {
            "direct": timer("f(1, 2)", {"f": target}),
            "closure": timer("f(1, 2)", {"f": closure(target)}),
            "wrapt": timer("f(1, 2)", {"f": bare_wrapt(target)}),
            "fixed": timer("f(1, 2)", {"f": fixed}),
            "canary": timer("f(1, 2)", {"f": canary}, key),
            "pinned": timer("f(1, 2)", {"f": canary}, pin),
        },
        s.number,
        s.rounds,
    )
    versions.unload()
    wr = ns["wrapt"]
    rows = [
        Row("anchors", "direct call", ns["direct"], "ns/call", ns["direct"] / wr, "bare wrapt"),
        Row(
            "anchors",
            "closure decorator",
            ns["closure"],
            "ns/call",
            ns["closure"] / wr,
            "bare wrapt",
        ),
        Row("anchors", "bare wrapt FunctionWrapper", wr, "ns/call", 1.0, "bare wrapt"),
    ]
    for name, what in (
        ("fixed", "routed call, Fixed, no context"),
        ("canary", "routed call, Canary, context(key=...)"),
        ("pinned", "routed call, pinned"),
    ):
        rows.append(
            Row("routing", what, ns[name], "ns/call", ns[name] / wr, "bare wrapt", "<= 0.7")
        )
    return rows, ns


def routes_scaling(s: Settings, tmp: Path) -> list[Row]:
    """The routed call's cost with 1 .. 10,000 routes on the dispatcher."""
    most = max(s.routes)
    for tag in ("old", "new"):
        package = tmp / "many" / tag / "bench_many"
        package.mkdir(parents=True)
        body = "".join(f"def f{i}(a, b):\n    return a + b\n" for i in range(most))
        (package / "__init__.py").write_text(body)
    versions = dualrun.load("bench_many", old=str(tmp / "many/old"), new=str(tmp / "many/new"))
    candidates: dict[str, Runner] = {}
    for n in s.routes:
        d = dualrun.Dispatcher(versions, policy=dualrun.Canary(50))
        first = d.route("bench_many:f0")
        for i in range(1, n):
            d.route(f"bench_many:f{i}")
        candidates[str(n)] = timer("f(1, 2)", {"f": first}, key)
    ns = interleaved(candidates, s.number, s.rounds)
    versions.unload()
    one = ns[str(s.routes[0])]
    return [
        Row(
            "scaling",
            f"routed call (Canary, keyed), {n:,} routes",
            ns[str(n)],
            "ns/call",
            ns[str(n)] / one,
            f"{s.routes[0]} route",
        )
        for n in s.routes
    ]


# -- shadowing ------------------------------------------------------------------------------


def laboratory_of(old: Callable[..., Any], new: Callable[..., Any]) -> Callable[..., Any]:
    def lab(*args: Any) -> Any:
        experiment = bench_shadow.QuietExperiment()
        experiment.control(old, args=list(args))
        experiment.candidate(new, args=list(args))
        return experiment.conduct()

    return lab


def shadow_overhead(
    versions: dualrun.VersionPair,
    name: str,
    arg_stmt: str,
    env: dict[str, Any],
    s: Settings,
    scale: int = 1,
    **shadow: Any,
) -> tuple[float, float]:
    """(inline shadow overhead, laboratory overhead) in ns for ``name(arg)``: each minus the
    two plain calls. ``shadow``: more arguments of the ``Shadow``."""
    target = f"bench_shadow_target:{name}"
    old, new = versions.old.resolve(target), versions.new.resolve(target)
    inline = dualrun.Dispatcher(versions, shadow=dualrun.Shadow(mode="inline", **shadow))
    stmt = f"f({arg_stmt})"
    ns = interleaved(
        {
            "old": timer(stmt, {**env, "f": old}),
            "new": timer(stmt, {**env, "f": new}),
            "lab": timer(stmt, {**env, "f": laboratory_of(old, new)}),
            "inline": timer(stmt, {**env, "f": inline.route(target)}),
        },
        max(1, s.number // 10 // scale),
        s.rounds,
    )
    inline.close()
    both = ns["old"] + ns["new"]
    return ns["inline"] - both, ns["lab"] - both


def cart(items: int) -> dict[str, Any]:
    return {
        "items": [{"sku": f"SKU-{i:05d}", "qty": 1 + i % 3, "price": 1.5 * i} for i in range(items)]
    }


def shadowing(s: Settings, tmp: Path) -> list[Row]:
    versions = bench_shadow.make_versions(tmp / "shadow")
    rows = []
    for what, name, arg, env, target in (
        ("inline shadow overhead, int result", "add", "1, 2", {}, "<= 0.25"),
        ("inline shadow overhead, equal 10-item dict", "record", "7", {}, "<= 0.3"),
    ):
        inline, lab = shadow_overhead(versions, name, arg, env, s)
        rows.append(Row("shadow", what, inline, "ns/call", inline / lab, "laboratory", target))
    for items in s.carts:
        scale = max(1, items // 10)  # fewer calls for larger carts: the same time each
        inline, lab = shadow_overhead(versions, "total", "c", {"c": cart(items)}, s, scale)
        what = f"inline shadow overhead, {items}-item cart argument"
        target = "<= 3" if items == 100 else ""
        rows.append(Row("scaling", what, inline, "ns/call", inline / lab, "laboratory", target))
    # laboratory shares the arguments; so does a shadow told not to copy them
    items = 100
    scale = max(1, items // 10)
    env = {"c": cart(items)}
    inline, lab = shadow_overhead(versions, "total", "c", env, s, scale, copy=None)
    what = f"inline shadow overhead, {items}-item cart argument, copy=None"
    rows.append(Row("scaling", what, inline, "ns/call", inline / lab, "laboratory"))
    rows.append(background(versions))
    rows.extend(thread_scaling(versions, s))
    before, after, comparisons, mismatches = bench_shadow.rss_growth(versions, s.memory_calls)
    rows.append(
        Row(
            "memory",
            f"RSS growth over {s.memory_calls:,} shadowed calls "
            f"({100 * mismatches / comparisons:.0f}% mismatches)",
            after - before,
            "MB",
            target="< 50 MB",
        )
    )
    versions.unload()
    return rows


def background(versions: dualrun.VersionPair) -> Row:
    """Latency a background shadow adds to the caller (the shadow sleeps 1 ms), against the
    routed call's own overhead: medians of single calls."""
    target = "bench_shadow_target:slow_add"
    plain = dualrun.Dispatcher(versions).route(target)
    bg = dualrun.Dispatcher(
        versions, shadow=dualrun.Shadow(mode="background", queue_size=10_000_000)
    )
    slow = bg.route(target)
    direct = versions.old.resolve(target)
    samples: dict[str, list[float]] = {"direct": [], "routed": [], "background": []}
    for _ in range(5):
        for name, fn in (("direct", direct), ("routed", plain), ("background", slow)):
            samples[name].append(bench_shadow.caller_ns(fn, 2_000))
    bg.close(timeout=0)
    ns = {name: statistics.median(values) for name, values in samples.items()}
    added = ns["background"] - ns["routed"]
    routed = ns["routed"] - ns["direct"]
    return Row(
        "shadow",
        "background shadow, latency added to the caller",
        added,
        "ns/call",
        added / routed,
        "routed overhead",
        "<= 1",
    )


def thread_scaling(versions: dualrun.VersionPair, s: Settings) -> list[Row]:
    """Total inline-shadowed calls per second with 1 .. 8 threads, against one thread."""
    d = dualrun.Dispatcher(versions, shadow=dualrun.Shadow(mode="inline"))
    f = d.route("bench_shadow_target:add")
    total = s.number // 2

    def throughput(threads: int) -> float:
        each = total // threads
        barrier = threading.Barrier(threads + 1)

        def work() -> None:
            barrier.wait()
            for _ in range(each):
                f(1, 2)

        pool = [threading.Thread(target=work) for _ in range(threads)]
        for t in pool:
            t.start()
        barrier.wait()
        start = time.perf_counter()
        for t in pool:
            t.join()
        return each * threads / (time.perf_counter() - start)

    best: dict[int, float] = dict.fromkeys(s.threads, 0.0)
    for _ in range(s.rounds):
        for n in s.threads:
            best[n] = max(best[n], throughput(n))
    d.close()
    one = best[s.threads[0]]
    return [
        Row(
            "scaling",
            f"inline-shadowed calls/s, {n} threads",
            best[n],
            "calls/s",
            best[n] / one,
            "1 thread",
            ">= 0.9" if n > 1 else "",
        )
        for n in s.threads
    ]


# -- comparison -----------------------------------------------------------------------------


def value_of_size(size: int) -> Any:
    """A JSON-like value of about ``size`` bytes as JSON: records with nested lists."""
    records = []
    i = 0
    while len(json.dumps(records)) < size:
        records.append(
            {
                "id": i,
                "sku": f"SKU-{i:05d}",
                "qty": i % 7,
                "price": 1.25 * i,
                "tags": ["x", "y"],
                "meta": {"ok": True, "note": None},
            }
        )
        i += 1
    return {"items": records, "total": float(i)}


def comparison(s: Settings) -> list[Row]:
    differ = Differ()
    rows = []
    for label, size in (("1 KB", 1_000), ("100 KB", 100_000)):
        a = value_of_size(size)
        b = json.loads(json.dumps(a))
        number = max(1, s.number // (10 if size < 10_000 else 1000))
        ns = interleaved(
            {
                "eq": timer("a == b", {"a": a, "b": b}),
                "diff": timer("d(a, b)", {"a": a, "b": b, "d": differ.diff}),
            },
            number,
            s.rounds,
        )
        rows.append(
            Row(
                "compare",
                f"structural diff of equal {label} values",
                ns["diff"],
                "ns/call",
                ns["diff"] / ns["eq"],
                "==",
            )
        )
    return rows


# -- reports and loading --------------------------------------------------------------------

JSON_LOOP = """
import json, sys, time
started = time.perf_counter()
with open(sys.argv[1], "rb") as f:
    for line in f:
        json.loads(line)
print(json.dumps({"seconds": time.perf_counter() - started}))
"""


def reports(s: Settings, tmp: Path) -> list[Row]:
    path = tmp / "log.jsonl"
    bench_report.generate(path, int(s.log_mb * 1_000_000))
    mb = path.stat().st_size / 1e6
    readers = {
        "stdlib": lambda: bench_report.measure([path], {"DUALRUN_FAST_JSON": "0"})["seconds"],
        "fast": lambda: bench_report.measure([path], {})["seconds"],
        "json": lambda: _json_loop(path),
    }
    best = dict.fromkeys(readers, float("inf"))
    for _ in range(max(3, s.rounds // 2)):  # interleaved rounds, as for the calls
        for name, read in readers.items():
            best[name] = min(best[name], read())
    anchor = best["json"]
    rows = [
        Row(
            "report",
            f"json.loads loop over the log ({mb:.0f} MB)",
            mb / anchor,
            "MB/s",
            1.0,
            "json.loads loop",
        )
    ]
    for what, name, target in (
        ("dualrun report, standard library only", "stdlib", ">= 100 MB/s"),
        ("dualrun report, with the [fast] extra", "fast", ">= 250 MB/s"),
    ):
        seconds = best[name]
        rows.append(
            Row("report", what, mb / seconds, "MB/s", anchor / seconds, "json.loads loop", target)
        )
    path.unlink()
    return rows


def _json_loop(path: Path) -> float:
    done = subprocess.run(
        [sys.executable, "-c", JSON_LOOP, str(path)], capture_output=True, text=True, check=True
    )
    return float(json.loads(done.stdout)["seconds"])


def loading(s: Settings) -> list[Row]:
    directory = bench_loading.demo_sources()[0]
    plain = []
    for _ in range(max(3, s.load_reps)):
        start = time.perf_counter()
        with bench_loading.plain_import(directory):
            plain.append((time.perf_counter() - start) * 1000)
    anchor = statistics.median(plain)
    rows = [Row("loading", "plain import of the demo package", anchor, "ms", 1.0, "plain import")]
    for kind, first, later in bench_loading.bench_loads(s.load_reps):
        if first is not None:
            rows.append(
                Row(
                    "loading",
                    f"load from {kind}, first (extracts)",
                    first,
                    "ms",
                    first / anchor,
                    "plain import",
                )
            )
        rows.append(
            Row(
                "loading",
                f"load from {kind}" + (", cached" if first else ""),
                later,
                "ms",
                later / anchor,
                "plain import",
            )
        )
    return rows


# -- output ---------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            names = [
                line.split(":", 1)[1].strip() for line in info if line.startswith("model name")
            ]
        model = names[0] if names else model
    except OSError:
        pass
    return {
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "cpu": model,
        "cpus": os.cpu_count(),
        "wrapt": wrapt.__version__,
    }


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "calls/s":
        return f"{value:,.0f}"
    return f"{value:,.1f}" if abs(value) < 10_000 else f"{value:,.0f}"


def table(rows: list[Row]) -> str:
    out = [f"{'what':58} {'value':>12} {'unit':8} {'ratio':>7}  {'anchor':18} target"]
    group = None
    for r in rows:
        if r.group != group:
            out.append(f"-- {r.group}")
            group = r.group
        ratio = "-" if r.ratio is None else f"{r.ratio:.2f}"
        out.append(
            f"{r.what:58} {fmt(r.value, r.unit):>12} {r.unit:8} {ratio:>7}  {r.anchor:18} "
            f"{r.target}"
        )
    return "\n".join(out)


def chart(rows: list[Row], path: Path, title: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    shown = [r for r in rows if r.ratio is not None and r.ratio > 0]
    fig, ax = plt.subplots(figsize=(11, 0.32 * len(shown) + 1.5))
    labels = [f"{r.what}  (/ {r.anchor})" for r in shown]
    colours = [f"C{sorted({r.group for r in rows}).index(r.group)}" for r in shown]
    ax.barh(range(len(shown)), [r.ratio for r in shown], color=colours)
    for i, r in enumerate(shown):
        target = r.target.replace("<=", "").replace(">=", "").strip()
        if target.replace(".", "").isdigit():
            ax.plot([float(target)] * 2, [i - 0.4, i + 0.4], color="black", linewidth=2)
    ax.set_yticks(range(len(shown)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.axvline(1.0, color="grey", linewidth=0.8)
    ax.set_xlabel("ratio to the anchor, same run (black ticks: targets)")
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, smaller sizes")
    parser.add_argument("--out", default=str(HERE / "results"), help="where JSON and PNG go")
    parser.add_argument(
        "--only", nargs="*", default=None, help="groups: routing shadow compare report loading"
    )
    args = parser.parse_args(argv)
    s = QUICK if args.quick else FULL
    wanted = set(args.only or ["routing", "shadow", "compare", "report", "loading"])
    info = machine()
    info["load_average_before"] = os.getloadavg()
    started = time.perf_counter()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="dualrun-bench-") as name:
        tmp = Path(name)
        steps: list[tuple[str, Callable[[], list[Row]]]] = [
            ("routing", lambda: routing(s, tmp)[0] + routes_scaling(s, tmp)),
            ("shadow", lambda: shadowing(s, tmp)),
            ("compare", lambda: comparison(s)),
            ("report", lambda: reports(s, tmp)),
            ("loading", lambda: loading(s)),
        ]
        for step, run in steps:
            if step in wanted:
                print(f"running {step} ...", file=sys.stderr, flush=True)
                rows.extend(run())
    info["load_average_after"] = os.getloadavg()
    info["seconds"] = round(time.perf_counter() - started, 1)
    info["mode"] = "quick" if args.quick else "full"
    order = ["anchors", "routing", "shadow", "compare", "report", "loading", "scaling", "memory"]
    rows.sort(key=lambda r: order.index(r.group))
    load = " ".join(f"{x:.2f}" for x in info["load_average_before"])
    load_after = " ".join(f"{x:.2f}" for x in info["load_average_after"])
    header = (
        f"dualrun benchmarks ({info['mode']}), {info['python']}, {info['cpu']} x{info['cpus']}, "
        f"wrapt {info['wrapt']}\nload average before: {load}; after: {load_after}; "
        f"{info['seconds']} s"
    )
    print(header)
    print(table(rows))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = {"machine": info, "rows": [asdict(r) for r in rows]}
    (out / "results.json").write_text(json.dumps(data, indent=2) + "\n")
    drawn = chart(rows, out / "results.png", header)
    print(f"written: {out / 'results.json'}" + (f", {out / 'results.png'}" if drawn else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
