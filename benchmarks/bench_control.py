"""The control plane's three numbers: staleness, the routed call's cost, the store's write load.

    python benchmarks/bench_control.py                  # 4 worker processes, 100 changes
    python benchmarks/bench_control.py --changes 20     # quicker

* staleness: the time from a state change (committed to the SQLite store) until every worker
  process has applied it (each worker's ``applied_at``), p50 and p99 over ``--changes`` changes,
  with the default poll interval (0.5 s);
* the routed call with a control attached, as a ratio to the same call without one (interleaved
  rounds, best round each): the hot path does no I/O, so the target is 1.00;
* the store's write load: transactions per worker process per minute, while idle and while
  the changes were being made.
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from routing_helpers import make_pair

import dualrun

fork = multiprocessing.get_context("fork")


def worker(db: str, root: str, mark: Any, stop: Any, out: Any) -> None:
    """A worker process: a controlled dispatcher serving calls until told to stop; it sends
    back how many transactions its store object committed, at the mark and at the end."""
    versions = make_pair(Path(root))
    control = dualrun.SQLiteControl(db)
    d = dualrun.Dispatcher(versions, control=control)
    quote = d.route(f"{versions.old.name}.engine:quote")
    marked = False
    while not stop.is_set():
        with dualrun.context(key=time.monotonic_ns()):
            quote([1])
        if mark.is_set() and not marked:
            out.put(("mark", control.writes))
            marked = True
        time.sleep(0.001)
    out.put(("end", control.writes))
    d.close()


def staleness(store: dualrun.SQLiteControl, changes: int, workers: int) -> list[float]:
    delays = []
    for n in range(changes):
        time.sleep(random.uniform(0, 0.5))  # changes come at any phase of the workers' polls
        state = store.set_percent(n % 100)
        deadline = time.monotonic() + 10
        while True:
            status = store.status()
            live = status.live
            if len(live) >= workers and all((p.applied or 0) >= state.version for p in live):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(status.to_text())
            time.sleep(0.005)
        delays.append(max(p.applied_at or 0 for p in live) - status.changed)
    return delays


def call_cost(root: Path, rounds: int = 15, number: int = 20_000) -> tuple[float, float, float]:
    """ns per routed call without and with a control, and their ratio (best rounds)."""
    plain_pair = make_pair(root / "plain")
    controlled_pair = make_pair(root / "controlled")
    plain = dualrun.Dispatcher(plain_pair, policy=dualrun.Canary(50))
    control = dualrun.SQLiteControl(root / "cost.db")
    control.set_percent(50)
    controlled = dualrun.Dispatcher(controlled_pair, control=control)
    without = plain.route(f"{plain_pair.old.name}.engine:quote")
    with_control = controlled.route(f"{controlled_pair.old.name}.engine:quote")
    cart = [1]

    def run(fn: Any) -> float:
        with dualrun.context(key="user-1"):
            return timeit.timeit(lambda: fn(cart), number=number) / number * 1e9

    best = {"without": float("inf"), "with": float("inf")}
    for _ in range(rounds):
        best["without"] = min(best["without"], run(without))
        best["with"] = min(best["with"], run(with_control))
    plain.close()
    controlled.close()
    return best["without"], best["with"], best["with"] / best["without"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--idle", type=float, default=20.0, help="seconds of idle load measured")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        db = str(root / "control.db")
        store = dualrun.SQLiteControl(db)
        store.ensure()
        mark, stop, out = fork.Event(), fork.Event(), fork.SimpleQueue()
        procs = [
            fork.Process(target=worker, args=(db, str(root / f"w{i}"), mark, stop, out))
            for i in range(args.workers)
        ]
        for p in procs:
            p.start()
        while len(store.status().live) < args.workers:
            time.sleep(0.05)
        time.sleep(1)
        started = time.monotonic()
        delays = staleness(store, args.changes, args.workers)
        busy = time.monotonic() - started
        mark.set()
        idle_start = time.monotonic()
        time.sleep(args.idle)
        idle = time.monotonic() - idle_start
        stop.set()
        counts = [out.get() for _ in range(2 * len(procs))]
        at_mark = sum(n for what, n in counts if what == "mark")
        at_end = sum(n for what, n in counts if what == "end")
        for p in procs:
            p.join(10)
        without, with_control, ratio = call_cost(root)
    delays.sort()
    p99 = delays[min(len(delays) - 1, int(0.99 * len(delays)))]
    print(f"staleness over {len(delays)} changes, {args.workers} workers, poll 0.5 s: "
          f"p50 {statistics.median(delays) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
          f"max {delays[-1] * 1000:.0f} ms")  # fmt: skip
    print(f"routed call: {without:.0f} ns without a control, {with_control:.0f} ns with one: "
          f"ratio {ratio:.2f}")  # fmt: skip
    workers = len(procs)
    print(f"store writes per worker per minute: {at_mark / workers / busy * 60:.0f} while the "
          f"state changed every {busy / len(delays):.2f} s (one acknowledgement per change, "
          f"heartbeats), {(at_end - at_mark) / workers / idle * 60:.0f} idle "
          f"(heartbeats with evidence); reads: {60 / 0.5:.0f} polls per minute")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
