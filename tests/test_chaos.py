"""Chaos: threads and asyncio tasks call routed functions while everything else changes.

8 threads and an asyncio loop with 1,000 concurrent tasks call a sync and an async route, each
request twice, in versions that import a module at call time (a version unloaded under a call
fails there). Meanwhile a controller changes the policy and the shadow (inline, background,
none), swaps candidates, promotes, rolls back, retires and flips the kill switch. The whole run
is repeated with ``sys.setswitchinterval(1e-5)``, so threads switch almost between bytecodes.

What must hold: no exception that user code did not raise; the event log's summaries add up to
exactly the calls made; no request is served by two versions unless a promote, rollback, kill
switch, revive or swap happened during it (the documented boundaries); no deadlock (every
thread ends within a hard timeout); no dualrun thread left after ``close()``.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from lifecycle_helpers import SERVED_BY, Bench, wait_until

import dualrun
from dualrun.logread import report_from_logs

ENGINE = """
import asyncio

from . import VERSION

NAMESPACE = __name__.partition(".")[0]


def quote(x):
    from . import helper  # at call time: fails in a version unloaded under the call

    return (VERSION, NAMESPACE, helper.double(x))


async def aquote(x):
    from . import helper

    await asyncio.sleep(0)
    return (VERSION, NAMESPACE, helper.double(x))
"""

HELPER = "def double(x):\n    return 2 * x\n"
THREADS = 8
TASKS = 1000
TRAFFIC_SECONDS = 4.0
HARD_TIMEOUT = 30.0


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Bench]:
    bench = Bench(tmp_path)
    yield bench
    bench.cleanup()


@dataclass
class Tally:
    """What the callers saw; each list is appended to by one thread or the loop only."""

    calls: list[int] = field(default_factory=lambda: [0] * (THREADS + 1))
    requests: list[int] = field(default_factory=lambda: [0] * (THREADS + 1))
    split: list[tuple[Any, Any]] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)


class Boundaries:
    """Counts lifecycle operations: odd while one is under way."""

    def __init__(self) -> None:
        self._count = itertools.count()
        self.value = 0

    def step(self) -> None:
        self.value = next(self._count) + 1


def _source(bench: Bench, tag: str) -> str:
    source = bench.source(tag, ENGINE)
    (Path(source) / bench.name / "helper.py").write_text(HELPER)
    return source


def _dualrun_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("dualrun-") and t.is_alive()}


def _controller(
    d: dualrun.Dispatcher,
    sources: Iterator[str],
    boundaries: Boundaries,
    stop: threading.Event,
    ops: dict[str, int],
    errors: list[BaseException],
) -> None:
    rng = random.Random(7)
    lifecycle = {
        "promote": lambda: d.promote(retire=rng.random() < 0.5, drain_timeout=10),
        "rollback": lambda: d.rollback(retire=rng.random() < 0.3, drain_timeout=10),
        "swap": lambda: d.swap_candidate(next(sources), drain_timeout=10),
        "kill": lambda: d.kill("chaos"),
        "revive": d.revive,
        "retire": lambda: d.retire(drain_timeout=10),
    }
    # Every kind of change in turn (the order matters less than that each one happens often).
    order = itertools.cycle(
        [
            *("policy", "shadow", "swap", "promote", "policy", "shadow", "rollback", "kill"),
            *("shadow", "revive", "policy", "promote", "retire", "swap", "rollback"),
        ]
    )
    shadows = itertools.cycle(
        [
            dualrun.Shadow("any", ignore=SERVED_BY, mode="background"),
            dualrun.Shadow("old", ignore=SERVED_BY, timeout=1.0, sample=50),
            None,
            dualrun.Shadow("any", ignore=SERVED_BY),
        ]
    )
    try:
        while not stop.is_set():
            what = next(order)
            ops[what] = ops.get(what, 0) + 1
            if what == "policy":
                d.policy = rng.choice(
                    [dualrun.Canary(rng.choice([0, 10, 50, 90, 100])), dualrun.Fixed("new")]
                )
            elif what == "shadow":
                if d.killed is None:
                    d.shadow = next(shadows)
            else:
                boundaries.step()
                try:
                    lifecycle[what]()
                except (RuntimeError, ValueError):
                    ops["refused"] = ops.get("refused", 0) + 1  # a documented refusal
                finally:
                    boundaries.step()
            time.sleep(rng.uniform(0.001, 0.01))
    except BaseException as exc:
        errors.append(exc)


def _caller(
    quote: Any, index: int, tally: Tally, boundaries: Boundaries, stop: threading.Event
) -> None:
    i = 0
    try:
        while not stop.is_set():
            before = boundaries.value
            with dualrun.context(key=f"t{index}-{i}"):
                first = quote(i)
                second = quote(i + 1)
            tally.calls[index] += 2
            tally.requests[index] += 1
            assert first[2] == 2 * i and second[2] == 2 * (i + 1)
            if first[:2] != second[:2] and boundaries.value == before and before % 2 == 0:
                tally.split.append((first, second))
            i += 1
            if i % 100 == 0:
                time.sleep(0)  # let the controller in now and then
    except BaseException as exc:
        tally.errors.append(exc)


async def _tasks(aquote: Any, tally: Tally, boundaries: Boundaries, stop: threading.Event) -> None:
    async def one(task: int) -> None:
        i = 0
        while not stop.is_set():
            before = boundaries.value
            with dualrun.context(key=f"a{task}-{i}"):
                first = await aquote(i)
                await asyncio.sleep(0)
                second = await aquote(i + 1)
            tally.calls[THREADS] += 2
            tally.requests[THREADS] += 1
            assert first[2] == 2 * i and second[2] == 2 * (i + 1)
            if first[:2] != second[:2] and boundaries.value == before and before % 2 == 0:
                tally.split.append((first, second))
            i += 1

    results = await asyncio.gather(*(one(t) for t in range(TASKS)), return_exceptions=True)
    tally.errors.extend(r for r in results if isinstance(r, BaseException))
    while asyncio.all_tasks() - {asyncio.current_task()}:
        await asyncio.sleep(0.01)  # background comparisons still running on this loop


def run_chaos(bench: Bench, log: Path) -> dict[str, Any]:
    tags = (f"V{n}" for n in itertools.count())
    sources = (_source(bench, tag) for tag in tags)
    versions = dualrun.load(bench.name, old=next(sources), new=next(sources))
    bench.pairs.append(versions)
    threads_before = _dualrun_threads()
    d = bench.dispatcher(
        versions,
        policy=dualrun.Canary(50),
        shadow=dualrun.Shadow("any", ignore=SERVED_BY),
        log=dualrun.EventLog(log, summary_interval=0.2),
    )
    quote = d.route(f"{bench.name}.engine:quote")
    aquote = d.route(f"{bench.name}.engine:aquote")
    tally, boundaries, stop = Tally(), Boundaries(), threading.Event()
    ops: dict[str, int] = {}
    control_errors: list[BaseException] = []
    workers = [
        threading.Thread(target=_caller, args=(quote, n, tally, boundaries, stop), daemon=True)
        for n in range(THREADS)
    ]
    workers.append(
        threading.Thread(
            target=lambda: asyncio.run(_tasks(aquote, tally, boundaries, stop)), daemon=True
        )
    )
    workers.append(
        threading.Thread(
            target=_controller,
            args=(d, sources, boundaries, stop, ops, control_errors),
            daemon=True,
        )
    )
    for thread in workers:
        thread.start()
    time.sleep(TRAFFIC_SECONDS)
    stop.set()
    deadline = time.monotonic() + HARD_TIMEOUT
    for thread in workers:
        thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [t.name for t in workers if t.is_alive()]
    assert not stuck, f"deadlock: {stuck} still running after {HARD_TIMEOUT} s"
    assert not control_errors, control_errors
    assert not tally.errors, tally.errors[:5]
    assert not tally.split, f"requests served by two versions: {tally.split[:5]}"
    assert d.flush(HARD_TIMEOUT)
    for route in d.routes.values():
        for label in ("old", "new"):
            assert route.in_flight(label) == 0
    d.close(timeout=HARD_TIMEOUT)
    assert d.wait_retired(HARD_TIMEOUT, force=False)
    assert wait_until(lambda: _dualrun_threads() <= threads_before, timeout=10), (
        _dualrun_threads() - threads_before
    )
    problems: list[str] = []
    from_log, _ = report_from_logs([str(log)], problems.append)
    assert not problems, problems[:5]
    logged = sum(sum(route.calls.values()) for route in from_log.routes)
    made = sum(tally.calls)
    assert logged == made, f"the log counts {logged} calls, the callers made {made}"
    comparisons = sum(route.comparisons for route in from_log.routes)
    return {
        "calls": made,
        "requests": sum(tally.requests),
        "async calls": tally.calls[THREADS],
        "comparisons": comparisons,
        "switches": {k: v for k, v in sorted(ops.items())},
    }


@pytest.mark.slow
@pytest.mark.timeout(150)
@pytest.mark.parametrize("switch_interval", [None, 1e-5], ids=["default", "switch-1e-5"])
def test_chaos(bench: Bench, tmp_path: Path, switch_interval: float | None) -> None:
    previous = sys.getswitchinterval()
    if switch_interval is not None:
        sys.setswitchinterval(switch_interval)
    try:
        numbers = run_chaos(bench, tmp_path / "log.jsonl")
    finally:
        sys.setswitchinterval(previous)
    print(f"chaos ({switch_interval or 'default'} switch interval): {numbers}")
    assert numbers["calls"] > 1000 and numbers["comparisons"] > 0
    assert sum(numbers["switches"].values()) > 10
