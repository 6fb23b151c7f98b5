"""Reliability: nothing a shadow does reaches the caller, no version unloads under a call, no
event is lost unseen.

One rule for ``BaseException`` (``SystemExit``, ``KeyboardInterrupt``, ``GeneratorExit``): on the
caller's own path it propagates as it would without dualrun; raised by a shadow run, a hook, a
comparator, a ``repr``, a redactor or inside a worker thread, it is recorded as that run's outcome
and never reaches the caller nor stops a thread. Each test here failed on the code before its fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import errno
import json
import os
import subprocess
import sys
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from lifecycle_helpers import Bench, wait_until
from shadow_helpers import Lab, route_report
from test_lifecycle import quote_pair

import dualrun
from dualrun import eventlog
from dualrun import shadow as shadow_module
from dualrun.eventlog import EventLog, _LineFile
from dualrun.logread import report_from_logs


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    lab = Lab(tmp_path)
    yield lab
    lab.cleanup()


@pytest.fixture
def shadow_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inline shadows run before the primary (the order is otherwise random)."""
    monkeypatch.setattr(shadow_module, "random", types.SimpleNamespace(random=lambda: 0.0))


BAD = {"SystemExit": SystemExit, "KeyboardInterrupt": KeyboardInterrupt}


# -- 1. a call is in flight from the moment its version is chosen ------------------------------

# The primary imports at call time: run in an unloaded version, that import fails.
LAZY_OLD = """
def f(x):
    from . import VERSION as version
    return (version, 2 * x)


async def af(x):
    from . import VERSION as version
    return (version, 2 * x)
"""

BLOCKING_NEW = """
GATE = threading.Event()
ENTERED = threading.Event()


def f(x):
    ENTERED.set()
    GATE.wait(10)
    return (VERSION, 2 * x)


async def af(x):
    ENTERED.set()
    while not GATE.is_set():
        await asyncio.sleep(0.001)
    return (VERSION, 2 * x)
"""


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_promote_while_the_shadow_runs_first_does_not_unload_the_callers_version(
    lab: Lab, shadow_first: None, flavour: str
) -> None:
    versions = lab.pair(LAZY_OLD, BLOCKING_NEW)
    new_engine = lab.engine(versions, "new")
    lab.gates.append(new_engine.GATE)
    d = lab.dispatcher(versions, shadow=dualrun.Shadow())
    routed = d.route(lab.target("f" if flavour == "sync" else "af"))
    outcome: list[Any] = []

    def call() -> None:
        try:
            if flavour == "sync":
                outcome.append(routed(3))
            else:
                outcome.append(asyncio.run(routed(3)))
        except BaseException as exc:
            outcome.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    assert new_engine.ENTERED.wait(5), "the shadow did not start"
    assert d.in_flight("old") == 1  # chosen, not run yet: in flight all the same
    d.promote(retire=True, drain_timeout=10)
    time.sleep(0.1)  # a retirement that does not wait for the call unloads old by now
    assert not d.retired, "old was unloaded while a call routed to it was still running"
    new_engine.GATE.set()
    caller.join(10)
    assert outcome == [("old", 6)]
    assert d.wait_retired(5)
    assert d.retired[0].forced is False and d.retired[0].in_flight_at_unload == 0


# -- 2. an async shadow never tears down the caller's event loop --------------------------------

ASYNC_OLD = """
async def f(x):
    await asyncio.sleep(0)
    return x
"""

ASYNC_BAD_NEW = """
async def f(x):
    await asyncio.sleep(0)
    raise {bad}("from the shadow")
"""


@pytest.mark.parametrize("bad", sorted(BAD))
@pytest.mark.parametrize(
    "shadow",
    [
        {"timeout": 5.0},
        {"mode": "background"},
        {"mode": "background", "timeout": 5.0},
        {},
    ],
    ids=["inline-timeout", "background", "background-timeout", "inline"],
)
def test_an_async_shadow_raising_system_exit_is_its_outcome_not_the_loops(
    lab: Lab, bad: str, shadow: dict[str, Any]
) -> None:
    versions = lab.pair(ASYNC_OLD, ASYNC_BAD_NEW.format(bad=bad))
    d = lab.dispatcher(versions, shadow=dualrun.Shadow(**shadow))
    f = d.route(lab.target("f"))

    async def unrelated() -> str:
        for _ in range(50):
            await asyncio.sleep(0.001)
        return "done"

    async def main() -> list[Any]:
        other = asyncio.ensure_future(unrelated())
        results = [await f(i) for i in range(10)]
        while asyncio.all_tasks() - {asyncio.current_task(), other}:
            await asyncio.sleep(0.001)  # background comparisons finish on this loop
        return [*results, await other]

    assert asyncio.run(main()) == [*range(10), "done"]
    report = route_report(d, lab.target("f"))
    assert (report.comparisons, report.mismatches, report.errors["new"]) == (10, 10, 10)
    assert f"raised builtins.{bad}" in d.report().to_json()


# -- 3. the background pool survives whatever a shadow does -----------------------------------


class ReprRaises:
    """A value whose repr raises ``exc``: a report needs that repr when the values differ."""

    def __init__(self, exc: type[BaseException]) -> None:
        self.exc = exc

    def __repr__(self) -> str:
        raise self.exc("from a repr")


@pytest.mark.parametrize("bad", sorted(BAD))
def test_background_workers_survive_a_shadow_raising_system_exit(lab: Lab, bad: str) -> None:
    versions = lab.pair(
        "def f(x):\n    return x\n", f"def f(x):\n    raise {bad}('from the shadow')\n"
    )
    d = lab.dispatcher(versions, shadow=dualrun.Shadow(mode="background", workers=2))
    f = d.route(lab.target("f"))
    for round_ in range(3):
        assert [f(i) for i in range(10)] == list(range(10))
        assert d.flush(5), f"flush() did not finish in round {round_}"
    report = route_report(d, lab.target("f"))
    assert (report.comparisons, report.mismatches, report.dropped) == (30, 30, 0)


@pytest.mark.parametrize("bad", sorted(BAD))
@pytest.mark.parametrize("mode", ["inline", "background"])
def test_a_value_whose_repr_raises_system_exit_is_counted_not_raised(
    lab: Lab, bad: str, mode: str
) -> None:
    common = "class Odd:\n    def __eq__(self, other):\n        return False\n"
    versions = lab.pair(
        "def f(x, make):\n    return make()\n", "def f(x, make):\n    return x\n", common
    )
    d = lab.dispatcher(versions, shadow=dualrun.Shadow(mode=mode, workers=2, copy=None))
    f = d.route(lab.target("f"))

    def make() -> ReprRaises:
        return ReprRaises(BAD[bad])

    for _ in range(3):
        for i in range(10):
            assert isinstance(f(i, make), ReprRaises)
        assert d.flush(5)
    report = route_report(d, lab.target("f"))
    assert report.comparisons + report.internal_errors == 30, report
    assert report.dropped == 0


def test_flush_without_timeout_returns_after_a_keyboard_interrupt_in_the_pool(lab: Lab) -> None:
    versions = lab.pair("def f(x):\n    return x\n", "def f(x):\n    raise KeyboardInterrupt\n")
    d = lab.dispatcher(versions, shadow=dualrun.Shadow(mode="background", workers=1))
    f = d.route(lab.target("f"))
    for i in range(5):
        f(i)
    flushed: list[bool] = []
    waiter = threading.Thread(target=lambda: flushed.append(d.flush()), daemon=True)
    waiter.start()
    waiter.join(5)
    assert flushed == [True]


def test_flush_returns_false_when_no_worker_is_left_to_run_the_queue() -> None:
    from dualrun.workers import WorkerPool

    pool = WorkerPool(1, 10, "test-pool")
    release = threading.Event()
    assert pool.submit(lambda: release.wait(5) and None)
    pool._threads[0].join(0.05)
    # A forked child inherits the queue but not the threads: simulate workers that are gone.
    pool._threads = [threading.Thread(target=lambda: None)]
    started = time.monotonic()
    assert pool.join() is False
    assert time.monotonic() - started < 1
    release.set()


def test_an_idle_pool_wakes_for_a_job_at_once() -> None:
    from dualrun.workers import IDLE_SECONDS, PARK_SECONDS, WorkerPool

    pool = WorkerPool(2, 10, "test-pool")
    try:
        assert pool.submit(lambda: None) and pool.join(5)
        for n in range(10):
            if n % 2 == 0:
                time.sleep(IDLE_SECONDS + 0.05)  # both workers stop looking and park
            done = threading.Event()
            started = time.monotonic()
            assert pool.submit(done.set)
            assert done.wait(5)
            assert time.monotonic() - started < PARK_SECONDS / 2  # woken, not timed out
    finally:
        pool.close(1)


def race_close(pool: Any, late_job: Any) -> None:
    """Make ``pool``'s queue one where a submit that passed its check before ``close()``
    counts and queues ``late_job`` right behind the first stop marker."""
    from collections import deque

    from dualrun import workers

    class RacingQueue(deque[Any]):
        def append(self, job: Any) -> None:
            super().append(job)
            if job is workers._STOP and late_job not in self:
                next(pool._submitted)
                super().append(late_job)

    pool._queue = RacingQueue()


def test_a_job_queued_behind_the_stop_markers_by_a_racing_submit_is_returned_by_close() -> None:
    from dualrun.workers import WorkerPool

    late_job = ("late",)
    ran: list[Any] = []
    pool = WorkerPool(1, 10, "test-pool", ran.append)
    race_close(pool, late_job)
    assert pool.submit(("early",)) and pool.join(5)
    assert pool.close(5) == [late_job]  # nobody is left to run it: the caller counts it
    assert ran == [("early",)] and pool.pending() == 0


def test_a_shadow_run_queued_while_the_runner_closes_is_counted_as_dropped(lab: Lab) -> None:
    versions = lab.pair("def f(x):\n    return x\n", "def f(x):\n    return x\n")
    d = lab.dispatcher(versions, shadow=dualrun.Shadow(mode="background", workers=1))
    target = lab.target("f")
    f = d.route(target)
    late_job = (d.routes[target], "old")  # what close() reads of a job it counts
    race_close(d._shadow._pool, late_job)  # type: ignore[union-attr]
    assert f(1) == 1 and d.flush(5)
    d.close()
    route = d.report().route(target)
    assert (route.comparisons, route.dropped) == (1, 1)


def test_a_pool_runs_every_job_exactly_once_under_racing_submitters() -> None:
    import sys

    from dualrun.workers import WorkerPool

    pool = WorkerPool(3, 1_000_000, "test-pool")
    ran: list[int] = []
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:

        def submit(base: int) -> None:
            for n in range(2000):
                assert pool.submit(lambda n=base + n: ran.append(n))
                if n % 300 == 0:
                    time.sleep(0.002)  # let the workers run dry and park

        submitters = [threading.Thread(target=submit, args=(i * 10_000,)) for i in range(4)]
        for thread in submitters:
            thread.start()
        for thread in submitters:
            thread.join()
        assert pool.join(30)
    finally:
        sys.setswitchinterval(interval)
        pool.close(1)
    assert sorted(ran) == [i * 10_000 + n for i in range(4) for n in range(2000)]
    assert pool.pending() == 0


# -- 4. the event-log writer survives its redactor and its logger ---------------------------


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("bad", sorted(BAD))
def test_a_redactor_raising_system_exit_loses_one_event_counted_not_the_writer(
    tmp_path: Path, bad: str
) -> None:
    def redact(event: dict[str, Any]) -> dict[str, Any]:
        if event.get("n") == 3:
            raise BAD[bad]("redactor")
        return event

    log = EventLog(tmp_path / "log.jsonl", redact=redact)
    try:
        for n in range(10):
            assert log.emit("test.event", n=n)
        assert log.flush(5)
        assert log.dropped_count() == 1
        assert log._thread is not None and log._thread.is_alive()
        for n in range(10, 15):
            log.emit("test.event", n=n)
    finally:
        closer = threading.Thread(target=lambda: log.close(timeout=None), daemon=True)
        closer.start()
        closer.join(5)
        assert not closer.is_alive(), "close(timeout=None) hung"
    lines = _lines(tmp_path / "log.jsonl")
    written = [e["n"] for e in lines if e.get("event") == "test.event"]
    assert written == [n for n in range(15) if n != 3]
    errors = [e for e in lines if e.get("event") == "dualrun.error"]
    assert errors and errors[0]["where"] == "event log" and bad in errors[0]["error"]


class ExitingLogger:
    """An app's logger that raises ``SystemExit`` on some events."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def info(self, event: str, **fields: Any) -> None:
        if fields.get("n") == 2:
            raise SystemExit("logger")
        self.events.append(event)


def test_a_logger_raising_system_exit_keeps_the_dispatcher_closable(lab: Lab) -> None:
    versions = lab.pair("def f(x):\n    return x\n", "def f(x):\n    return x + 1\n")
    logger = ExitingLogger()
    log = EventLog(logger, summary_interval=0.05)
    d = dualrun.Dispatcher(versions, shadow=dualrun.Shadow(), log=log)
    f = d.route(lab.target("f"))
    for n in range(5):
        f(n)
        log.emit("test.event", n=n)
    assert log.flush(5)
    assert log.dropped_count() >= 1
    closer = threading.Thread(target=lambda: d.close(timeout=None), daemon=True)
    closer.start()
    closer.join(5)
    assert not closer.is_alive(), "Dispatcher.close(timeout=None) hung"
    assert logger.events.count("test.event") == 4
    assert logger.events.count("dualrun.divergence") == 5
    assert logger.events[-1] == "dualrun.summary"


def test_flush_and_close_do_not_wait_for_a_writer_that_is_gone(tmp_path: Path) -> None:
    from dualrun.eventlog import _STOP

    log = EventLog(tmp_path / "log.jsonl")
    log.emit("test.event")
    assert log.flush(5)
    log._queue.put(_STOP)  # the writer ends (as it is absent in a forked child)
    assert log._thread is not None
    log._thread.join(5)
    log.emit("test.event")
    started = time.monotonic()
    assert log.flush(timeout=None) is False
    log.close(timeout=None)
    assert time.monotonic() - started < 1


# -- 13. a swap's summaries: exact call counts per candidate ----------------------------------


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Bench]:
    bench = Bench(tmp_path)
    yield bench
    bench.cleanup()


def _summed_calls(events: list[dict[str, Any]], route: str) -> dict[str, int]:
    totals = {"old": 0, "new": 0}
    for event in events:
        if event.get("event") == "dualrun.summary" and route in event["routes"]:
            calls = event["routes"][route].get("calls", {})
            for label in totals:
                assert calls.get(label, 0) >= 0, f"a negative count in {event}"
                totals[label] += calls.get(label, 0)
    return totals


def test_a_swap_writes_each_candidates_calls_exactly_and_restarts_both_counts(
    bench: Bench, tmp_path: Path
) -> None:
    path = tmp_path / "log.jsonl"
    d = bench.dispatcher(bench.pair("A", "B"), policy=dualrun.Fixed("new"), log=str(path))
    quote = d.route(bench.target)
    with dualrun.context(pin="old"):
        for i in range(10):
            quote(i)
    for i in range(50):
        assert quote(i)[0] == "B"
    assert d.journal is not None
    d.journal.summarize()  # a periodic summary between the calls
    for i in range(45):
        quote(i)
    d.swap_candidate(bench.source("C"))
    for i in range(30):
        assert quote(i)[0] == "C"
    with dualrun.context(pin="old"):
        for i in range(20):
            quote(i)
    assert d.report().route(bench.target).calls == {"old": 20, "new": 30}
    d.close()
    events = _lines(path)
    swap = next(i for i, e in enumerate(events) if e["event"] == "dualrun.swap")
    assert _summed_calls(events[:swap], bench.target) == {"old": 10, "new": 95}
    assert _summed_calls(events[swap:], bench.target) == {"old": 20, "new": 30}


# -- 5. hooks and values raising BaseExceptions ------------------------------------------------

HOOK_BAD = {
    "SystemExit": SystemExit,
    "GeneratorExit": GeneratorExit,
    "KeyboardInterrupt": KeyboardInterrupt,
}


def _raiser(exc: type[BaseException]) -> Any:
    def hook(*args: Any) -> Any:
        raise exc("from a hook")

    return hook


@pytest.mark.parametrize("bad", sorted(HOOK_BAD))
@pytest.mark.parametrize("hook", ["compare", "clean", "copy", "exception_key", "redact"])
@pytest.mark.parametrize("mode", ["inline", "background"])
def test_a_hook_raising_a_base_exception_never_reaches_the_caller(
    lab: Lab, bad: str, hook: str, mode: str
) -> None:
    if hook == "exception_key":  # called when both versions raise
        versions = lab.pair(
            "def f(x):\n    raise ValueError('old')\n", "def f(x):\n    raise ValueError('new')\n"
        )
    else:
        versions = lab.pair("def f(x):\n    return [x]\n", "def f(x):\n    return [x + 1]\n")
    shadow = dualrun.Shadow(mode=mode, **{hook: _raiser(HOOK_BAD[bad])})
    d = lab.dispatcher(versions, shadow=shadow)
    f = d.route(lab.target("f"))
    for i in range(6):
        if hook == "exception_key":
            with pytest.raises(ValueError, match="old"):
                f(i)
        else:
            assert f(i) == [i]
    assert d.flush(5)
    report = route_report(d, lab.target("f"))
    assert report.comparisons + report.internal_errors + report.skipped == 6, report
    assert report.comparisons == 0  # every run ended in the hook
    # The shadow keeps working once the hook behaves.
    d.shadow = dualrun.Shadow(mode=mode)
    with contextlib.suppress(ValueError):
        f(1)
    assert d.flush(5)
    assert route_report(d, lab.target("f")).comparisons == 1


def test_inline_timeout_helpers_survive_a_keyboard_interrupt_in_the_shadow(lab: Lab) -> None:
    versions = lab.pair(
        "def f(x):\n    return x\n",
        "def f(x):\n    if x < 5:\n        raise KeyboardInterrupt\n    return x\n",
    )
    d = lab.dispatcher(versions, shadow=dualrun.Shadow(timeout=5.0, workers=2))
    f = d.route(lab.target("f"))
    assert [f(i) for i in range(15)] == list(range(15))
    report = route_report(d, lab.target("f"))
    assert (report.timeouts, report.comparisons, report.matches) == (0, 15, 10)


# -- 7. a full disk: whole lines after a short write, an exact count of lost lines ------------


class FullDisk:
    """Stands in for the ``os`` module: ``write`` follows a script, the rest is ``os``'s.

    Each script entry is a number of bytes to write (a short write) or ``None`` for ENOSPC;
    once the script is used up, writes go through."""

    def __init__(self, script: list[int | None]) -> None:
        self.script = script

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def write(self, fd: int, data: Any) -> int:
        if not self.script:
            return os.write(fd, data)
        step = self.script.pop(0)
        if step is None:
            raise OSError(errno.ENOSPC, "No space left on device")
        return os.write(fd, bytes(data[:step]))


LINES = [json.dumps({"n": n, "pad": "x" * 20}) for n in range(5)]


@pytest.mark.parametrize(
    ("whole", "extra"),
    [(0, 0), (0, 10), (2, 0), (2, 10), (4, 30)],
    ids=["nothing", "part-of-1", "2-lines", "2-lines-and-part", "4-lines-and-part"],
)
def test_after_a_short_write_the_next_lines_start_on_a_new_line_and_the_loss_is_exact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, whole: int, extra: int
) -> None:
    path = tmp_path / "log.jsonl"
    sink = _LineFile(path)
    written = sum(len(line) + 1 for line in LINES[:whole]) + extra
    # A short write, then the disk is full.
    monkeypatch.setattr(eventlog, "os", FullDisk([written, None]))
    for line in LINES:
        sink.msg(line)
    assert sink.write_pending() == len(LINES) - whole
    for n in range(5, 8):
        sink.msg(json.dumps({"n": n}))
    assert sink.write_pending() == 0
    assert sink.close() == 0
    good, bad = [], []
    for line in path.read_text().splitlines():
        try:
            good.append(json.loads(line)["n"])
        except ValueError:
            bad.append(line)
    assert good == [*range(whole), 5, 6, 7]
    assert len(bad) == (1 if extra else 0)


def test_lines_the_disk_refused_are_counted_as_dropped_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = EventLog(tmp_path / "log.jsonl")
    log.emit("first")
    assert log.flush(5)
    monkeypatch.setattr(eventlog, "os", FullDisk([None]))
    log.emit("lost")
    assert log.flush(5)
    log.emit("after")
    log.close(5)
    assert log.dropped_count() == 1
    kinds = [e["event"] for e in _lines(tmp_path / "log.jsonl")]
    assert kinds == ["first", "after"]


# -- 15. numbers checked when they are given ---------------------------------------------------

HUGE = 10**400
BAD_WAITS = [float("inf"), float("nan"), -5, -0.1, "5", HUGE, True]


@pytest.mark.parametrize("value", [float("inf"), HUGE, 0, -1, "1", float("nan")])
def test_shadow_timeout_must_be_a_finite_number_of_seconds(value: object) -> None:
    with pytest.raises(ValueError, match="Shadow timeout"):
        dualrun.Shadow(timeout=value)  # type: ignore[arg-type]


def test_shadow_workers_are_bounded() -> None:
    with pytest.raises(ValueError, match="Shadow workers"):
        dualrun.Shadow(workers=10**6)


@pytest.mark.parametrize("value", [float("inf"), HUGE, 0, "60"])
def test_rollout_interval_must_be_a_finite_number_of_seconds(bench: Bench, value: object) -> None:
    d = bench.dispatcher(bench.pair(), shadow=dualrun.Shadow("any"))
    with pytest.raises(ValueError, match="interval"):
        dualrun.Rollout(d, interval=value)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", BAD_WAITS, ids=repr)
@pytest.mark.parametrize("method", ["promote", "rollback", "swap_candidate", "retire"])
def test_a_bad_drain_timeout_is_refused_before_anything_changes(
    bench: Bench, value: object, method: str
) -> None:
    d = bench.dispatcher(bench.pair())
    quote = d.route(bench.target)
    policy = d.policy
    args: tuple[Any, ...] = (bench.source("C"),) if method == "swap_candidate" else ()
    if method == "retire":
        d.promote()
        policy = d.policy
    with pytest.raises(ValueError, match="drain_timeout"):
        getattr(d, method)(*args, drain_timeout=value)
    assert d.policy is policy and not d.retired and not d._retiring
    assert quote(1)[0] == ("B" if method == "retire" else "A")


@pytest.mark.parametrize("value", BAD_WAITS, ids=repr)
def test_bad_timeouts_of_flush_close_and_wait_retired_are_refused(
    bench: Bench, value: object
) -> None:
    d = bench.dispatcher(bench.pair())
    for call in (d.flush, d.wait_retired, d.close):
        with pytest.raises(ValueError, match="timeout"):
            call(value)  # type: ignore[operator]


@pytest.mark.parametrize("value", [0, 0.5, None])
def test_good_drain_timeouts_are_accepted(bench: Bench, value: float | None) -> None:
    d = bench.dispatcher(bench.pair())
    d.promote(retire=True, drain_timeout=value)
    assert d.wait_retired(5)


# -- 16. close() stops a running rollout; a gate that raises rolls back ------------------------


def _rollout_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "dualrun-rollout" and t.is_alive()]


def test_close_stops_a_running_rollout(bench: Bench) -> None:
    d = bench.dispatcher(bench.pair(), shadow=dualrun.Shadow("any"))
    evaluations: list[int] = []

    class CountingGate(dualrun.Gate):
        def evaluate(self, evidence: Any) -> Any:
            evaluations.append(1)
            return super().evaluate(evidence)

    before = len(_rollout_threads())
    rollout = dualrun.Rollout(d, gate=CountingGate(), interval=0.01).start()
    assert wait_until(lambda: len(evaluations) >= 2)
    policy = d.policy
    d.close()
    assert rollout.status().state == "aborted"
    assert "closed" in (rollout.status().reason or "")
    assert len(_rollout_threads()) == before
    seen = len(evaluations)
    time.sleep(0.05)
    assert len(evaluations) == seen
    assert d.policy is policy  # closing leaves the traffic split as it was


class RaisingGate(dualrun.Gate):
    def __init__(self, exc: BaseException) -> None:
        super().__init__()
        self.exc = exc

    def evaluate(self, evidence: Any) -> Any:
        raise self.exc


@pytest.mark.parametrize("exc", [ZeroDivisionError("gate"), SystemExit(2)], ids=repr)
def test_a_rollout_whose_gate_raises_rolls_back_and_ends(bench: Bench, exc: BaseException) -> None:
    d = bench.dispatcher(bench.pair(), shadow=dualrun.Shadow("any"))
    quote = d.route(bench.target)
    before = len(_rollout_threads())
    rollout = dualrun.Rollout(d, steps=[50, 100], gate=RaisingGate(exc), interval=0.01).start()
    with dualrun.context(key="k"):
        quote(1)
    assert rollout.wait(5)
    status = rollout.status()
    assert status.state == "aborted" and type(exc).__name__ in (status.reason or "")
    assert isinstance(d.policy, dualrun.Fixed) and d.policy.label == "old"
    assert wait_until(lambda: len(_rollout_threads()) == before)
    assert all(quote(i)[0] == "A" for i in range(20))


# -- paths no test walked: migrations reach the shadow ----------------------------------------


@pytest.mark.parametrize("mode", ["inline", "background"])
def test_with_migrate_the_shadow_gets_values_converted_for_its_version(
    bench: Bench, mode: str
) -> None:
    versions, old, _, migrate = quote_pair(bench)
    shadow = dualrun.Shadow(mode=mode, clean=lambda quote: quote.total()[1:])
    d = bench.dispatcher(versions, migrate=migrate, shadow=shadow)
    add = d.route(f"{bench.name}.engine:add")
    start = old.make(12.5, "CHF")
    for _ in range(10):
        result = add(start, 1)  # served by old; new's shadow needs a new Quote
        assert type(result) is old.Quote and result.amount == 13.5
    assert d.flush(5)
    report = d.report().route(f"{bench.name}.engine:add")
    assert (report.comparisons, report.matches, report.mismatches) == (10, 10, 0), report
    assert (start.amount, start.currency) == (12.5, "CHF")


# -- paths no test walked: a background shadow keeps the caller's context ---------------------


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_background_divergence_event_carries_the_callers_structlog_context(
    lab: Lab, tmp_path: Path, flavour: str
) -> None:
    body = "def f(x):\n    return x{}\n\nasync def af(x):\n    return x{}\n"
    versions = lab.pair(body.format("", ""), body.format(" + 1", " + 1"))
    path = tmp_path / "log.jsonl"
    d = lab.dispatcher(versions, shadow=dualrun.Shadow(mode="background"), log=str(path))
    ids = [f"req-{i}" for i in range(6)]

    if flavour == "sync":
        f = d.route(lab.target("f"))

        def one(request_id: str, i: int) -> None:
            with structlog.contextvars.bound_contextvars(request_id=request_id):
                assert f(i) == i

        for i, request_id in enumerate(ids):
            contextvars.copy_context().run(one, request_id, i)
    else:
        af = d.route(lab.target("af"))

        async def one_async(request_id: str, i: int) -> None:
            with structlog.contextvars.bound_contextvars(request_id=request_id):
                assert await af(i) == i

        async def main() -> None:
            await asyncio.gather(*(one_async(r, i) for i, r in enumerate(ids)))
            while asyncio.all_tasks() - {asyncio.current_task()}:
                await asyncio.sleep(0.001)  # the background comparisons on this loop

        asyncio.run(main())
    assert d.flush(5)
    d.close()
    divergences = [e for e in _lines(path) if e["event"] == "dualrun.divergence"]
    assert len(divergences) == len(ids)
    by_value = {json.loads(e["old"]["value"]): e.get("request_id") for e in divergences}
    assert by_value == {i: request_id for i, request_id in enumerate(ids)}


# -- paths no test walked: periodic summaries, routes made after a retirement -------------------


def test_periodic_summaries_carry_calls_and_matches_before_any_close(
    lab: Lab, tmp_path: Path
) -> None:
    versions = lab.pair("def f(x):\n    return x\n", "def f(x):\n    return x if x % 4 else -x\n")
    path = tmp_path / "log.jsonl"
    log = EventLog(path, summary_interval=0.05)
    d = lab.dispatcher(versions, shadow=dualrun.Shadow(), log=log)
    f = d.route(lab.target("f"))
    for i in range(1, 21):
        f(i)

    def summed() -> dict[str, int]:
        log.flush(5)
        totals = {"calls": 0, "comparisons": 0, "matches": 0}
        for event in _lines(path):  # what a SIGKILLed process leaves: no final summary
            if event["event"] == "dualrun.summary":
                entry = event["routes"].get(lab.target("f"), {})
                totals["calls"] += entry.get("calls", {}).get("old", 0)
                aggregate = entry.get("aggregate", {})
                totals["comparisons"] += aggregate.get("comparisons", 0)
                totals["matches"] += aggregate.get("matches", 0)
        return totals

    expected = {"calls": 20, "comparisons": 20, "matches": 15}
    assert wait_until(lambda: summed() == expected, timeout=5), summed()


def test_a_route_made_after_a_retirement_serves_and_counts_the_live_version(
    bench: Bench,
) -> None:
    d = bench.dispatcher(bench.pair("A", "B"))
    first = d.route(bench.target)
    first(1)
    d.promote(retire=True)
    assert d.wait_retired(5)
    later = d.route(f"{bench.name}.engine:version")  # made after old was unloaded
    with dualrun.context(pin="old"):
        assert later() == "B"
        assert first(2)[0] == "B"
    assert later() == "B"
    report = d.report().route(f"{bench.name}.engine:version")
    assert report.calls == {"old": 0, "new": 2}


# -- 18. background shadows queued at exit: run within a bound, the rest counted --------------

EXITING_CHILD = """
import sys

import dualrun

name, old, new, log, calls = sys.argv[1:6]
versions = dualrun.load(name, old=old, new=new)
d = dualrun.Dispatcher(
    versions, shadow=dualrun.Shadow(mode="background", workers=1, queue_size=1000), log=log
)
f = d.route(name + ".engine:f")
for i in range(int(calls)):
    f(i)
print("CALLED", flush=True)
# no close(): the interpreter exits with the shadows still queued
"""


@pytest.mark.parametrize(("delay", "all_run"), [(0.01, True), (0.5, False)])
def test_background_shadows_queued_at_exit_are_run_or_counted_as_dropped(
    tmp_path: Path, delay: float, all_run: bool
) -> None:
    name = f"exitpkg_{int(delay * 1000)}"
    dirs = []
    for label, body in (("old", "x"), ("new", "x + 1")):
        package = tmp_path / label / name
        package.mkdir(parents=True)
        (package / "__init__.py").write_text("")
        (package / "engine.py").write_text(
            f"import time\n\n\ndef f(x):\n    time.sleep({delay if label == 'new' else 0})\n"
            f"    return {body}\n"
        )
        dirs.append(package.parent)
    script = tmp_path / "child.py"
    script.write_text(EXITING_CHILD)
    log = tmp_path / "log.jsonl"
    calls = 50
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(script), name, str(dirs[0]), str(dirs[1]), str(log), str(calls)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0 and "CALLED" in done.stdout, done.stderr
    problems: list[str] = []
    report, _ = report_from_logs([str(log)], problems.append)
    assert not problems
    route = report.route(f"{name}.engine:f")
    assert route.calls["old"] == calls
    assert route.comparisons + route.dropped == calls, (route.comparisons, route.dropped)
    if all_run:
        assert route.comparisons == calls
    else:
        assert route.dropped > 0
        assert elapsed < 20  # the exit waited about EXIT_FLUSH_SECONDS, not for every shadow


def test_close_counts_every_background_shadow_it_does_not_wait_for_exactly_once(lab: Lab) -> None:
    versions = lab.pair(
        "def f(x):\n    return x\n", "def f(x):\n    time.sleep(0.1)\n    return x + 1\n"
    )
    d = lab.dispatcher(versions, shadow=dualrun.Shadow(mode="background", workers=2))
    f = d.route(lab.target("f"))
    for i in range(10):
        f(i)
    d.close(timeout=0.15)
    time.sleep(0.3)  # the two runs in progress at close() end meanwhile: they record nothing
    report = route_report(d, lab.target("f"))
    assert report.comparisons + report.dropped == 10, (report.comparisons, report.dropped)
    assert report.dropped >= 4


def test_calls_before_a_swap_that_precedes_the_first_summary_are_in_the_log(
    bench: Bench, tmp_path: Path
) -> None:
    # Found by the chaos test: the first summary only knew the counters bound at that time.
    path = tmp_path / "log.jsonl"
    d = bench.dispatcher(bench.pair("A", "B"), policy=dualrun.Fixed("new"), log=str(path))
    quote = d.route(bench.target)
    for i in range(30):
        quote(i)
    d.swap_candidate(bench.source("C"))  # no summary was written before it
    for i in range(10):
        quote(i)
    d.close()
    events = _lines(path)
    swap = next(i for i, e in enumerate(events) if e["event"] == "dualrun.swap")
    assert _summed_calls(events[:swap], bench.target) == {"old": 0, "new": 30}
    assert _summed_calls(events[swap:], bench.target) == {"old": 0, "new": 10}


# -- 20. reprs for reports are bounded ----------------------------------------------------------

COUNTED = """
class Counted:
    reprs = 0

    def __repr__(self):
        Counted.reprs += 1
        return "C"


BIG = [Counted() for _ in range(200_000)]
"""


@pytest.mark.parametrize("shape", ["list", "nested"])
def test_a_huge_shadow_value_is_printed_only_as_far_as_a_report_shows(lab: Lab, shape: str) -> None:
    value = "BIG" if shape == "list" else "{'items': (BIG, [BIG]), 'n': len(BIG)}"
    versions = lab.pair("def f():\n    return []\n", f"def f():\n    return {value}\n", COUNTED)
    d = lab.dispatcher(versions, shadow=dualrun.Shadow(copy=None))
    f = d.route(lab.target("f"))
    assert f() == []
    report = route_report(d, lab.target("f"))
    assert report.mismatches == 1
    counted = lab.engine(versions, "new").Counted
    assert 0 < counted.reprs < 20_000, counted.reprs  # not 200,000 (or 600,000)


def test_bounded_repr_is_repr_for_small_values_and_cut_for_big_ones() -> None:
    from dualrun.compare import bounded_repr

    cycle: list[Any] = [1]
    cycle.append(cycle)
    small = [[], (), {}, set(), frozenset(), (1,), {"a": [1, (2,)], 3: {4}}, "x", b"y", cycle]
    for value in small:
        assert bounded_repr(value) == repr(value)
    big = bounded_repr(list(range(10**6)), budget=1000)
    assert big.startswith("[0, 1, 2") and big.endswith("…]") and len(big) < 1100
    assert bounded_repr("z" * 10**6, budget=100) == repr("z" * 100) + "…"


def test_async_background_shadows_cancelled_with_their_loop_are_counted_as_dropped(
    lab: Lab,
) -> None:
    versions = lab.pair(
        "async def f(x):\n    return x\n",
        "async def f(x):\n    await asyncio.sleep(x % 2 * 5)\n    return x\n",
    )
    d = lab.dispatcher(versions, shadow=dualrun.Shadow(mode="background"))
    f = d.route(lab.target("f"))

    async def main() -> list[int]:
        results = [await f(i) for i in range(10)]
        await asyncio.sleep(0.05)  # the even ones finish, the odd ones sleep on
        return results

    assert asyncio.run(main()) == list(range(10))  # the loop ends: pending shadows cancelled
    report = route_report(d, lab.target("f"))
    assert (report.comparisons, report.dropped) == (5, 5)
