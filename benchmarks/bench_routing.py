"""The routed call against its anchors, measured in one run: ratios, then ns per call.

    python benchmarks/bench_routing.py

Anchors: a direct call of the same function and a bare wrapt FunctionWrapper pass-through.
Targets from the routing issue: Fixed policy, no context <= 1.3x bare wrapt; Canary inside an
active context(key=...) <= 1.6x bare wrapt.
"""

from __future__ import annotations

import statistics
import tempfile
import timeit
from pathlib import Path

import wrapt

import dualrun

REPEAT = 7
NUMBER = 200_000


def make_versions(root: Path) -> dualrun.VersionPair:
    for tag in ("old", "new"):
        package = root / tag / "bench_target"
        package.mkdir(parents=True)
        (package / "__init__.py").write_text(f"def add(a, b):\n    return a + b  # {tag}\n")
    return dualrun.load("bench_target", old=str(root / "old"), new=str(root / "new"))


def ns_per_call(stmt: str, env: dict[str, object]) -> float:
    timer = timeit.Timer(stmt, globals=env)
    runs = timer.repeat(repeat=REPEAT, number=NUMBER)
    return statistics.median(runs) / NUMBER * 1e9


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        versions = make_versions(Path(tmp))
        target = versions.old.resolve("bench_target:add")
        bare = wrapt.FunctionWrapper(
            target, lambda wrapped, instance, args, kw: wrapped(*args, **kw)
        )
        fixed = dualrun.Dispatcher(versions, policy=dualrun.Fixed("old")).route("bench_target:add")
        canary = dualrun.Dispatcher(versions, policy=dualrun.Canary(50)).route("bench_target:add")
        pinned = dualrun.Dispatcher(versions, policy=dualrun.Canary(50)).route("bench_target:add")
        results = {
            "direct call": ns_per_call("target(1, 2)", {"target": target}),
            "bare wrapt FunctionWrapper": ns_per_call("bare(1, 2)", {"bare": bare}),
            "route, Fixed, no context": ns_per_call("fixed(1, 2)", {"fixed": fixed}),
        }
        with dualrun.context(key="user-42"):
            results["route, Canary, in context(key=...)"] = ns_per_call(
                "canary(1, 2)", {"canary": canary}
            )
        with dualrun.context(pin="new"):
            results["route, pinned in context"] = ns_per_call("pinned(1, 2)", {"pinned": pinned})
        versions.unload()
    base = results["bare wrapt FunctionWrapper"]
    print(f"{'what':40} {'ns/call':>9} {'x bare wrapt':>13}")
    for what, ns in results.items():
        print(f"{what:40} {ns:9.1f} {ns / base:13.2f}")


if __name__ == "__main__":
    main()
