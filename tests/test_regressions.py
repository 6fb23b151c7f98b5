"""Regression tests for the fixes of the code review, one or more per fix.

Each test reproduces a bug the review found and fails on the code before its fix: the event
log's file closed under its writer, bounded shadows keeping the process alive, summaries lost to
a full queue, rotated logs counted twice, generators and coroutines run in a retired version,
shadow sampling per call and a key that cannot be printed, async background arguments changed
by the caller, a raising rollout callback, a retirement thread outliving force(), the shadow
and the retired candidate forgotten across kill / rollback / swap, the context decorator on
generators and async generators, a timeline minute too old to keep, and the meta path edited
in place.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Files
from lifecycle_helpers import Bench, shadow, wait_until
from log_helpers import T0, LogLab, call_quietly, observation, target
from shadow_helpers import Lab, route_report

import dualrun
from dualrun.eventlog import EventLog
from dualrun.loading import _VersionFinder
from dualrun.logread import report_from_logs
from dualrun.policy import stable_bucket
from dualrun.recorder import TIMELINE_MINUTES, RouteAggregate
from dualrun.shadow import _SAMPLE_SALT


@pytest.fixture
def loglab(tmp_path: Path) -> Iterator[LogLab]:
    lab = LogLab(tmp_path)
    yield lab
    lab.cleanup()


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    lab = Lab(tmp_path)
    yield lab
    lab.cleanup()


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Bench]:
    bench = Bench(tmp_path)
    yield bench
    bench.cleanup()


def read_report(paths: list[Path]) -> tuple[dualrun.Report, list[str]]:
    problems: list[str] = []
    report, _ = report_from_logs([str(p) for p in paths], problems.append)
    return report, problems


# -- 1. eventlog: the writer closes its own file ----------------------------------------------


def test_close_with_a_short_timeout_leaves_the_file_to_the_busy_writer(tmp_path: Path) -> None:
    path = tmp_path / "busy.jsonl"
    count = 50_000
    log = EventLog(path, queue_size=count)
    for i in range(count):
        assert log.emit("test.event", i=i)
    log.close(timeout=0.001)
    writer = log._thread
    assert writer is not None and writer.is_alive()  # still writing: the case of the fix

    # Files opened meanwhile may get the descriptor number a closed log file had.
    unrelated = [tmp_path / f"unrelated-{n}.txt" for n in range(8)]
    handles = [open(p, "w") for p in unrelated]  # noqa: SIM115 - closed below
    try:
        for n, handle in enumerate(handles):
            handle.write(f"unrelated {n}\n")
            handle.flush()
        writer.join(30)
        assert not writer.is_alive()
    finally:
        for handle in handles:
            handle.close()

    for n, p in enumerate(unrelated):
        assert p.read_text() == f"unrelated {n}\n"
    lines = path.read_text().splitlines()
    assert len(lines) == count
    assert [json.loads(line)["i"] for line in lines] == list(range(count))
    assert log.dropped_count() == 0


# -- 2. shadow: a hung bounded shadow does not keep the process alive -------------------------

HANG_SCRIPT = """
import sys
import time

import dualrun

root = sys.argv[1]
versions = dualrun.load("hangpkg", old=root + "/old", new=root + "/new")
d = dualrun.Dispatcher(versions, shadow=dualrun.Shadow(timeout=0.1))
g = d.route("hangpkg:g")
started = time.monotonic()
print("served", g(1), flush=True)
assert time.monotonic() - started < 5
d.close(timeout=0.1)
print("closed", flush=True)
"""


def test_a_hung_inline_shadow_with_a_timeout_does_not_keep_the_process_alive(
    write_tree: Callable[[str, Files], Path], tmp_path: Path
) -> None:
    write_tree("old", {"hangpkg/__init__.py": "def g(x):\n    return x\n"})
    write_tree(
        "new",
        {"hangpkg/__init__.py": "import time\n\n\ndef g(x):\n    time.sleep(3600)\n    return x\n"},
    )
    script = tmp_path / "exit_hang.py"
    script.write_text(HANG_SCRIPT)
    try:
        done = subprocess.run(
            [sys.executable, str(script), str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=20,
            cwd=tmp_path,
        )
    except subprocess.TimeoutExpired as exc:  # subprocess.run has killed it
        raise AssertionError(f"the process did not exit: {exc.stdout!r}") from None
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["served 1", "closed"]


# -- 3. journal: a summary refused by a full queue is not lost --------------------------------


class SlowLogger:
    """An app's logger that takes its time: the event queue fills up behind it."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, event: str, **fields: Any) -> None:
        threading.Event().wait(0.02)
        self.lines.append(json.dumps({**fields, "event": event}, default=repr))


def test_a_summary_refused_by_a_full_queue_is_carried_by_the_next_one(
    loglab: LogLab, tmp_path: Path
) -> None:
    versions = loglab.pair()
    logger = SlowLogger()
    log = EventLog(logger, queue_size=5, summary_interval=3600)
    d = loglab.dispatcher(versions, shadow=dualrun.Shadow(), log=log)
    quote = d.route(target(versions, "quote"))
    for n in range(1, 31):  # most differ between the versions: a divergence event each
        call_quietly(quote, n)
    assert d.journal is not None
    before = log.dropped_count()
    d.journal.summarize()  # a periodic summary, while the queue is full
    assert log.dropped_count() == before + 1  # it was refused
    d.close()

    in_process = d.report().route(target(versions, "quote"))
    assert in_process.comparisons == 30 and in_process.mismatches > 0
    path = tmp_path / "slow.jsonl"
    path.write_text("\n".join(logger.lines) + "\n")
    report, problems = read_report([path])
    assert problems == []
    assert [r.route for r in report.routes] == [target(versions, "quote")]
    from_log = report.route(target(versions, "quote"))
    assert from_log.comparisons == in_process.comparisons
    assert from_log.mismatches == in_process.mismatches
    assert from_log.errors == in_process.errors
    assert from_log.calls == in_process.calls == {"old": 30, "new": 0}
    assert report.dropped_events == log.dropped_count() > 0


# -- 4. logread: rotated logs read in any order -----------------------------------------------


def test_rotated_logs_give_the_same_counts_in_either_order(loglab: LogLab) -> None:
    versions = loglab.pair()
    path = loglab.path("rotated")
    d = loglab.dispatcher(versions, shadow=dualrun.Shadow(), log=str(path))
    quote = d.route(target(versions, "quote"))
    for n in range(1, 16):
        call_quietly(quote, n)
    assert d.journal is not None
    d.journal.summarize()  # a periodic summary in the middle of the stream
    for n in range(16, 31):
        call_quietly(quote, n)
    d.close()
    expected = d.report().route(target(versions, "quote"))
    assert expected.mismatches > 0

    lines = path.read_text().splitlines()
    kinds = [json.loads(line)["event"] for line in lines]
    assert kinds.count("dualrun.summary") == 2
    older, newer = path.with_name(path.name + ".1"), path
    last_divergence = max(i for i, k in enumerate(kinds) if k == "dualrun.divergence") + 1
    cuts = sorted({*range(1, len(lines)), last_divergence})
    for cut in cuts:  # wherever the rotation happened
        older.write_text("\n".join(lines[:cut]) + "\n")
        newer.write_text("\n".join(lines[cut:]) + "\n")
        for order in ([older, newer], [newer, older]):
            report, problems = read_report(order)
            assert problems == []
            got = report.route(target(versions, "quote"))
            assert (got.comparisons, got.mismatches) == (
                expected.comparisons,
                expected.mismatches,
            ), (cut, order)
            assert got.calls == expected.calls


# -- 5. routing: generators and coroutines read their slot when they start --------------------

LAZY_ENGINE = """
def gen(n):
    for i in range(n):
        from . import lazy  # imported on the first step, not before

        yield (lazy.TAG, i)


async def coro():
    from . import lazy

    return lazy.TAG
"""


def test_a_generator_and_a_coroutine_made_before_a_retirement_run_in_the_live_version(
    write_tree: Callable[[str, Files], Path],
    load_pair: Callable[..., dualrun.VersionPair],
) -> None:
    dirs = [
        write_tree(
            label,
            {
                "lazypkg/__init__.py": "",
                "lazypkg/engine.py": LAZY_ENGINE,
                "lazypkg/lazy.py": f"TAG = {label!r}\n",
            },
        )
        for label in ("old", "new")
    ]
    versions = load_pair("lazypkg", old=str(dirs[0]), new=str(dirs[1]))
    d = dualrun.Dispatcher(versions)  # Fixed("old")
    try:
        items = d.route("lazypkg.engine:gen")(3)  # routed to old, not started
        pending = d.route("lazypkg.engine:coro")()
        d.promote(retire=True, drain_timeout=5)
        assert d.wait_retired(5)
        assert not versions.old.loaded
        # Calls routed to the retired version go to the other one: so do these.
        assert list(items) == [("new", 0), ("new", 1), ("new", 2)]
        assert asyncio.run(pending) == "new"
    finally:
        d.close()


# -- 6. shadow: sampling once per request, a key that cannot be printed ------------------------


class DriftingKey:
    """A request key whose text changes every time it is taken: the first text is sampled at
    50%, every later one is not."""

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts
        self.taken = 0

    def __str__(self) -> str:
        text = self.texts[min(self.taken, len(self.texts) - 1)]
        self.taken += 1
        return text

    def __repr__(self) -> str:
        return "DriftingKey()"


class UnprintableKey:
    def __str__(self) -> str:
        raise RuntimeError("no text for this key")

    def __repr__(self) -> str:
        return "UnprintableKey()"


def _keys(sampled: bool) -> Iterator[str]:
    for i in range(10_000):
        key = f"user-{i}"
        if (stable_bucket(key, _SAMPLE_SALT) < 50) is sampled:
            yield key


def test_shadow_sampling_is_decided_once_per_request(lab: Lab) -> None:
    versions = lab.pair("def f(x):\n    return x\n", "def f(x):\n    return x + 1\n")
    d = lab.dispatcher(versions, shadow=dualrun.Shadow(sample=50))
    f = d.route(lab.target("f"))
    key = DriftingKey([next(_keys(True)), *itertools.islice(_keys(False), 3)])
    with dualrun.context(key=key):
        assert [f(i) for i in range(20)] == list(range(20))
    report = route_report(d, lab.target("f"))
    assert report.comparisons == 20  # the whole request, as its first call was sampled
    assert key.taken >= 1


def test_a_request_key_that_cannot_be_printed_never_reaches_the_caller(lab: Lab) -> None:
    versions = lab.pair("def f(x):\n    return x\n", "def f(x):\n    return x + 1\n")
    d = lab.dispatcher(versions, shadow=dualrun.Shadow(sample=50))
    f = d.route(lab.target("f"))
    with dualrun.context(key=UnprintableKey()):
        assert [f(i) for i in range(5)] == list(range(5))
    assert f(7) == 7  # and outside the request, as before


# -- 7. shadow: async background snapshots the primary's arguments -----------------------------


def test_async_background_mode_compares_the_arguments_as_they_were_at_the_call(
    lab: Lab,
) -> None:
    common = "async def alen(xs):\n    return len(xs)\n"
    versions = lab.pair("", "", common)
    d = lab.dispatcher(versions, shadow=dualrun.Shadow(mode="background"))
    alen = d.route(lab.target("alen"))

    async def main() -> None:
        xs = [1, 2]
        assert await alen(xs) == 2
        xs.append(3)  # the caller's list, once it has it back
        for _ in range(400):
            if route_report(d, lab.target("alen")).comparisons:
                return
            await asyncio.sleep(0.005)

    asyncio.run(main())
    report = route_report(d, lab.target("alen"))
    assert report.comparisons == 1
    assert report.mismatches == 0
    assert report.divergences == []


# -- 8. rollout: a raising on_change callback does not stop the rollout -----------------------


class Traffic:
    """A thread calling ``quote`` in requests with ever new keys until stopped."""

    def __init__(self, quote: Callable[[int], Any]) -> None:
        self.quote = quote
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            try:
                with dualrun.context(key=f"user-{i}"):
                    self.quote(i)
            except BaseException as exc:
                self.errors.append(exc)
                return
            i += 1
            if i % 50 == 0:
                self.stop.wait(0.0005)  # let the rollout thread in

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        self.thread.join(10)


def _rollout_with(bench: Bench, on_change: Callable[[dualrun.RolloutStatus], None]) -> Any:
    versions = bench.pair("A", "B")
    d = bench.dispatcher(versions, policy=dualrun.Canary(0), shadow=shadow("any"))
    quote = d.route(bench.target)
    gate = dualrun.Gate(
        min_comparisons=20, max_mismatch_rate=0.05, max_error_rate=0.05, max_latency_ratio=1e6
    )
    rollout = dualrun.Rollout(d, steps=[50, 100], gate=gate, interval=0.02, on_change=on_change)
    return d, quote, rollout


@pytest.mark.parametrize("fails_on", ["every change", "the final state"])
def test_a_raising_on_change_callback_does_not_stop_the_rollout(
    bench: Bench, fails_on: str
) -> None:
    seen: list[str] = []

    def on_change(status: dualrun.RolloutStatus) -> None:
        seen.append(status.state)
        if fails_on == "every change" or status.state in ("promoted", "rolled back", "aborted"):
            raise RuntimeError(f"progress bar broke at {status.state}")

    d, quote, rollout = _rollout_with(bench, on_change)
    with Traffic(quote) as traffic:
        status = rollout.run(timeout=10)
    assert not traffic.errors, traffic.errors
    assert rollout.wait(0)
    assert status.state == "promoted", status
    assert rollout.status().state == "promoted"
    assert seen[0] == "running" and seen[-1] == "promoted"
    assert rollout.callback_error == "RuntimeError: progress bar broke at promoted"
    assert isinstance(d.policy, dualrun.Fixed) and d.policy.label == "new"


# -- 9. lifecycle: the retirement thread ends on force() --------------------------------------


def _retire_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "dualrun-retire"}


def test_a_forced_retirement_ends_its_thread(bench: Bench) -> None:
    versions = bench.pair("A", "B")
    d = bench.dispatcher(versions)
    quote = d.route(bench.target)
    entered, release = bench.block(versions.old)
    results: list[Any] = []
    caller = threading.Thread(target=lambda: results.append(quote(1)), daemon=True)
    before = _retire_threads()
    caller.start()
    try:
        assert entered.wait(5)
        d.promote(retire=True, drain_timeout=None)  # waits for the stuck call forever
        assert _retire_threads() - before
        assert d.wait_retired(0.05, force=True)
        assert not versions.old.loaded
        assert d.retired[-1].forced and d.retired[-1].in_flight_at_unload == 1
        assert wait_until(lambda: not (_retire_threads() - before), timeout=1.0)
    finally:
        release.set()
        caller.join(10)
    assert results == [("A", versions.old.prefix, 2)]


# -- 10. / 11. dispatcher: the shadow and the retired candidate across the lifecycle ----------


def test_the_shadow_survives_kill_rollback_retire_revive_and_swap(bench: Bench) -> None:
    versions = bench.pair("A", "B")
    config = shadow("old")
    d = bench.dispatcher(versions, shadow=config)
    quote = d.route(bench.target)
    d.kill("test")
    assert d.shadow is None
    d.rollback(retire=True, drain_timeout=5)
    assert d.wait_retired(5)
    d.revive()
    d.swap_candidate(bench.source("C"))
    assert d.shadow is config
    assert quote(4)[2] == 8
    assert route_report(d, bench.target).comparisons == 1  # and it shadows again


def test_a_retired_candidate_stays_the_new_version_until_swapped(bench: Bench) -> None:
    versions = bench.pair("A", "B")
    d = bench.dispatcher(versions, shadow=shadow("old"))
    quote = d.route(bench.target)
    d.rollback(retire=True, drain_timeout=5)
    assert d.wait_retired(5)
    assert not versions.new.loaded
    assert d.versions.old is versions.old
    assert d.versions.new is versions.new  # the retired candidate, for the record
    assert d.live_versions.old is versions.old
    assert d.live_versions.new is versions.old  # old serves both labels
    assert quote(1)[0] == "A"

    candidate = bench.source("C")
    d.swap_candidate(candidate)
    assert d.history[-1]["candidate"] == versions.new.source
    assert d.versions.old is versions.old and d.versions.new.source == candidate
    assert d.live_versions is d.versions
    assert quote(2)[0] == "A"


# -- 12. context: the decorator on generators and async generators ----------------------------


def test_a_decorated_generator_gets_throw_and_close_inside_the_request() -> None:
    seen: list[tuple[str, Any]] = []

    @dualrun.context(key="req-1")
    def body() -> Iterator[int]:
        try:
            received = yield 1
            seen.append(("sent", received))
            yield 2
        except ValueError as exc:
            request = dualrun.current()
            seen.append(("caught", (str(exc), None if request is None else request.key)))
            yield 3
        finally:
            request = dualrun.current()
            seen.append(("finally", None if request is None else request.key))

    thrown = body()
    assert next(thrown) == 1
    assert thrown.throw(ValueError("stop")) == 3
    assert seen == [("caught", ("stop", "req-1"))]
    with pytest.raises(StopIteration):
        next(thrown)
    assert seen[-1] == ("finally", "req-1")

    seen.clear()
    closed = body()
    assert next(closed) == 1
    assert closed.send("hello") == 2
    closed.close()
    assert seen == [("sent", "hello"), ("finally", "req-1")]
    assert dualrun.current() is None


def test_a_decorated_async_generator_runs_inside_the_request() -> None:
    @dualrun.context(key="req-2", tenant="t")
    async def body() -> Any:
        for i in range(2):
            await asyncio.sleep(0)
            request = dualrun.current()
            yield (i, None if request is None else (request.key, dict(request.attrs)))

    async def collect() -> list[Any]:
        items = [item async for item in body()]
        assert dualrun.current() is None
        return items

    assert asyncio.run(collect()) == [
        (0, ("req-2", {"tenant": "t"})),
        (1, ("req-2", {"tenant": "t"})),
    ]


# -- 13. recorder: an observation older than the timeline ------------------------------------


def test_a_mismatch_older_than_the_whole_timeline_is_counted_without_a_timeline_slot() -> None:
    aggregate = RouteAggregate("svc:route")
    minutes = TIMELINE_MINUTES + 1
    for minute in range(minutes):
        aggregate.add(observation(status="match", when=T0 + 60 * (minute + 1)))
    assert len(aggregate.timeline) == TIMELINE_MINUTES
    kept = {k: list(v) for k, v in aggregate.timeline.items()}

    aggregate.add(observation(status="mismatch", when=T0))  # before every kept minute
    assert aggregate.comparisons == minutes + 1
    assert aggregate.mismatches == 1
    assert aggregate.matches == minutes
    assert {k: list(v) for k, v in aggregate.timeline.items()} == kept


# -- 14. loading: the meta path is replaced, not edited --------------------------------------


def test_loading_and_unloading_replace_the_meta_path_list(
    write_tree: Callable[[str, Files], Path],
) -> None:
    old = write_tree("old", {"metapkg/__init__.py": "X = 1\n"})
    new = write_tree("new", {"metapkg/__init__.py": "X = 2\n"})
    captured = sys.meta_path
    snapshot = list(captured)
    versions = dualrun.load("metapkg", old=str(old), new=str(new))
    try:
        finders = [f for f in sys.meta_path if isinstance(f, _VersionFinder)]
        assert len(finders) == 2
        assert captured == snapshot  # the list an import was iterating is untouched
        assert sys.meta_path is not captured
    finally:
        after_load = sys.meta_path
        versions.unload()
    assert captured == snapshot
    assert not any(isinstance(f, _VersionFinder) for f in sys.meta_path)
    assert len(after_load) == len(snapshot) + 2  # unloading made a new list too
    assert sys.meta_path == snapshot
