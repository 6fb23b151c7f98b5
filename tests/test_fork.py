"""Fork safety: a child forked from a process with a dispatcher (gunicorn ``--preload``,
multiprocessing's fork start method) writes its own events under its own identity, through a
writer, shadow pool and locks of its own, and counts only its own evidence.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fleet_helpers import Lab, eventually
from log_helpers import LogLab, call_quietly, events, target

import dualrun
from dualrun.logread import report_from_logs

fork = multiprocessing.get_context("fork")


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[LogLab]:
    lab = LogLab(tmp_path)
    yield lab
    lab.cleanup()


def _child_calls(d: dualrun.Dispatcher, route: str, start: int, count: int, out: Any) -> None:
    """In the child: ``count`` calls, close, send back what the child's own report says."""
    quote = d.route(route)
    for n in range(start, start + count):
        with dualrun.context(key=f"user-{n}"):
            call_quietly(quote, n)
    d.flush(10)
    report = d.report().route(route)
    d.close(timeout=10)
    out.put((report.calls, report.comparisons))


def test_forked_children_write_their_own_events_and_totals_add_up(lab: LogLab) -> None:
    versions = lab.pair()
    route = target(versions, "quote")
    log = lab.path("fork")
    d = lab.dispatcher(
        versions,
        policy=dualrun.Canary(50),
        shadow=dualrun.Shadow(primary="any", mode="background"),
        log=log,
    )
    quote = d.route(route)
    for n in range(40):  # the parent's evidence, before the fork: counted once, by the parent
        with dualrun.context(key=f"parent-{n}"):
            call_quietly(quote, n)
    assert d.flush(10)
    parent_run = d.journal.log.run if d.journal else None
    out = fork.SimpleQueue()
    children = [
        fork.Process(target=_child_calls, args=(d, route, 1000 * (i + 1), 60, out))
        for i in range(4)
    ]
    for child in children:
        child.start()
    try:
        results = [out.get() for _ in children]
    finally:
        for child in children:
            child.join(30)
    assert [child.exitcode for child in children] == [0, 0, 0, 0]
    for calls, comparisons in results:  # each child counted its own 60 calls, not the parent's
        assert calls["old"] + calls["new"] == 60
        assert comparisons == 60
    d.close(timeout=10)

    written = events(log)
    pids = {e["pid"] for e in written}
    assert pids == {child.pid for child in children} | {multiprocessing.current_process().pid}
    runs = {e["run"] for e in written}
    assert len(runs) == 5 and parent_run in runs  # one identity per process
    for child in children:
        child_runs = {e["run"] for e in written if e["pid"] == child.pid}
        assert len(child_runs) == 1 and parent_run not in child_runs

    report, _ = report_from_logs([str(log)], lambda message: None)
    merged = report.route(route)
    assert merged.calls["old"] + merged.calls["new"] == 40 + 4 * 60
    assert merged.comparisons == 40 + 4 * 60
    fleet = dualrun.control.evidence_from_logs([str(log)])  # what a gate reads from the logs
    assert fleet.route(route).comparisons == 40 + 4 * 60


def _record_one(d: dualrun.Dispatcher, route: str, out: Any) -> None:
    quote = d.route(route)
    call_quietly(quote, 3)
    d.flush(5)
    out.put(d.report().route(route).comparisons)
    d.close(timeout=5)


def test_a_lock_held_by_another_thread_at_fork_does_not_hang_the_child(lab: LogLab) -> None:
    versions = lab.pair()
    route = target(versions, "quote")
    d = lab.dispatcher(versions, shadow=dualrun.Shadow(mode="background"), log=lab.path())
    d.route(route)(1)
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with d.recorder.locked(), d._lifecycle:
            holding.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    holding.wait(10)
    out = fork.SimpleQueue()
    child = fork.Process(target=_record_one, args=(d, route, out))
    try:
        child.start()
        child.join(20)
    finally:
        release.set()
        holder.join(10)
    if child.exitcode is None:
        child.kill()
        child.join(5)
        pytest.fail("the child hung on a lock its parent's other thread held at the fork")
    assert child.exitcode == 0
    assert out.get() == 1


def _obey(d: dualrun.Dispatcher, route: str, go: Any, out: Any) -> None:
    """In the child: once told, serve until the fleet's promote has reached this process."""
    quote = d.route(route)
    go.wait(20)
    deadline = time.monotonic() + 10
    while quote([1])[0] != "new" and time.monotonic() < deadline:
        time.sleep(0.01)
    out.put((os.getpid(), quote([1])[0]))
    d.close(timeout=5)


def test_forked_children_join_the_fleet_and_obey_the_control(tmp_path: Path) -> None:
    lab = Lab(tmp_path)
    try:
        control = dualrun.SQLiteControl(
            tmp_path / "c.db", poll_interval=0.05, heartbeat_interval=0.2, live_after=5
        )
        versions = lab.pair()
        route = f"{versions.old.name}.engine:quote"
        d = lab.dispatcher(versions, control=control)
        go, out = fork.Event(), fork.SimpleQueue()
        children = [fork.Process(target=_obey, args=(d, route, go, out)) for _ in range(2)]
        for child in children:
            child.start()
        try:
            eventually(lambda: len(control.status().live) == 3, timeout=20)
            assert {p.pid for p in control.status().live} == {
                os.getpid(),
                *(c.pid for c in children),
            }
            control.promote()
            assert control.wait(15).acknowledged
            go.set()
            results = sorted(out.get() for _ in children)
        finally:
            for child in children:
                child.join(20)
        assert results == sorted((c.pid, "new") for c in children)
    finally:
        lab.cleanup()
