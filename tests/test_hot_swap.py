"""Hot swap under load: candidates come and go while eight threads call the routed function.

Every call returns ``(tag, namespace, 2 * x)`` of the version that served it. The swapping
thread brackets each lifecycle operation by bumping a generation number (odd while the
operation runs), so a worker knows whether its request overlapped one: a request that did not
must have been served by one version for both of its calls.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from lifecycle_helpers import Bench, finder_count, namespaces, private_module_count, shadow

import dualrun
from dualrun import Canary

THREADS = 8
SWAPS = 20


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Bench]:
    bench = Bench(tmp_path)
    yield bench
    bench.cleanup()


class Load:
    """``THREADS`` threads calling ``quote`` twice per request, checking what they get."""

    def __init__(self, quote: Callable[[int], Any], tags: set[str], threads: int = THREADS):
        self.quote = quote
        self.tags = tags
        self.generation = 0
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.failures: list[str] = []
        self.inconsistent: list[str] = []
        self.served: set[tuple[str, str]] = set()  # (tag, namespace)
        self.calls = 0
        self.quiet_requests = 0
        self.threads = [
            threading.Thread(target=self.work, args=(n,), daemon=True) for n in range(threads)
        ]

    def work(self, n: int) -> None:
        served: set[tuple[str, str]] = set()
        calls = quiet = 0
        failures: list[str] = []
        inconsistent: list[str] = []
        for i in itertools.count():
            if self.stop.is_set():
                break
            before = self.generation
            try:
                with dualrun.context(key=f"user-{n}-{i}"):
                    first = self.quote(i)
                    second = self.quote(i + 1)
            except BaseException as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
                continue
            after = self.generation
            calls += 2
            for (tag, namespace, value), x in ((first, i), (second, i + 1)):
                if tag not in self.tags or value != 2 * x:
                    failures.append(f"quote({x}) returned {(tag, namespace, value)}")
                served.add((tag, namespace))
            if before == after and before % 2 == 0:  # no lifecycle operation overlapped
                quiet += 1
                if first[:2] != second[:2]:
                    inconsistent.append(f"request user-{n}-{i}: {first} then {second}")
            if i % 64 == 0:
                time.sleep(0)
        with self.lock:
            self.served |= served
            self.calls += calls
            self.quiet_requests += quiet
            self.failures += failures
            self.inconsistent += inconsistent

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(10)
        assert not any(t.is_alive() for t in self.threads)

    def operation(self, do: Callable[[], object], settle: float = 0.03) -> None:
        """Run one lifecycle operation, marked by the generation, then let traffic flow."""
        self.generation += 1
        try:
            do()
        finally:
            self.generation += 1
        time.sleep(settle)


def test_twenty_swaps_with_promotions_and_rollbacks_under_load(bench: Bench) -> None:
    modules_before, finders_before = private_module_count(), finder_count()
    sources = {tag: bench.source(tag) for tag in ("A", "B", "C")}
    versions = dualrun.load(bench.name, old=sources["A"], new=sources["B"])
    loaded = {versions.old.prefix: "A", versions.new.prefix: "B"}
    d = dualrun.Dispatcher(versions, policy=Canary(50), shadow=shadow("any", sample=20))
    bench.dispatchers.append(d)  # closed, drained and unloaded at clean-up if a check fails
    quote = d.route(bench.target)

    def swap() -> None:
        live = {d.versions.old.source, d.versions.new.source}
        tag, source = next((t, s) for t, s in sources.items() if s not in live)
        d.swap_candidate(source, drain_timeout=5)
        loaded[d.versions.new.prefix] = tag
        d.policy = Canary(50)

    started = time.monotonic()
    with Load(quote, set(sources)) as load:
        time.sleep(0.05)
        for i in range(SWAPS):
            kind = i % 5
            if kind == 1:
                load.operation(lambda: d.promote(retire=False))
            elif kind == 2:
                load.operation(d.rollback)
            elif kind == 3:
                load.operation(lambda: d.promote(retire=True, drain_timeout=5))
            elif kind == 4:
                load.operation(lambda: d.rollback(retire=True, drain_timeout=5))
            load.operation(swap)
    elapsed = time.monotonic() - started

    # Zero failed calls, each served by one known version, requests consistent.
    assert load.failures == []
    assert load.inconsistent == []
    assert load.calls > 2000, load.calls
    assert load.quiet_requests > 500, load.quiet_requests
    assert {namespace for _, namespace in load.served} <= set(loaded)
    assert all(loaded[namespace] == tag for tag, namespace in load.served)  # one version each
    assert len({namespace for _, namespace in load.served}) >= SWAPS  # candidates served
    assert elapsed < 15

    # Every swap retired exactly one version, and each retired version is gone.
    assert d.wait_retired(5)
    assert len(d.retired) == SWAPS
    assert all(not r.forced and r.in_flight_at_unload == 0 for r in d.retired)
    assert len({r.namespace for r in d.retired}) == SWAPS
    live = namespaces()
    for record in d.retired:
        assert record.namespace not in live
        assert record.finished is not None
    assert len(d.history) == SWAPS
    # Only the final pair is loaded: no namespace or finder leaked.
    assert live == {d.versions.old.prefix, d.versions.new.prefix}
    assert finder_count() == finders_before + 2
    d.close()
    d.versions.unload()
    assert private_module_count() == modules_before
    assert finder_count() == finders_before


@pytest.mark.parametrize(
    ("files", "cause"),
    [
        ({"init": "VERSION = 'BAD'\ndef broken(:\n    pass\n"}, SyntaxError),
        ({"engine": "def quote(x):\n    return (x,\n"}, SyntaxError),
        ({"init": "raise RuntimeError('refuses to start')\n"}, RuntimeError),
    ],
    ids=["syntax error in the package", "syntax error in the routed module", "import raises"],
)
def test_a_candidate_that_cannot_load_is_refused_and_service_continues(
    bench: Bench, files: dict[str, str], cause: type[BaseException]
) -> None:
    versions = bench.pair("A", "B")
    d = bench.dispatcher(versions, policy=Canary(50), shadow=shadow())
    quote = d.route(bench.target)

    def outputs() -> list[Any]:
        results = []
        for i in range(40):
            with dualrun.context(key=f"fixed-{i}"):
                results.append(quote(i))
        return results

    before = outputs()
    assert {r[0] for r in before} == {"A", "B"}
    report = d.report().route(bench.target)
    loaded = namespaces()
    if "init" in files:
        bad = bench.source("BAD", init=files["init"])
    else:
        bad = bench.source("BAD", engine=files["engine"])

    with Load(quote, {"A", "B"}, threads=4) as load:
        time.sleep(0.02)
        with pytest.raises(dualrun.VersionLoadError) as raised:
            d.swap_candidate(bad)
        time.sleep(0.02)
    error = raised.value
    assert isinstance(error, ImportError)
    assert error.label == "new" and error.source == bad
    assert "'new'" in str(error) and bad in str(error)
    assert isinstance(error.__cause__, cause)

    # Service continues unchanged: the same versions, the same outputs, the statistics kept.
    assert load.failures == [] and load.inconsistent == [] and load.calls > 0
    assert d.versions.old is versions.old and d.versions.new is versions.new
    assert versions.old.loaded and versions.new.loaded
    assert namespaces() == loaded
    assert outputs() == before
    after = d.report().route(bench.target)
    assert after.calls["old"] > report.calls["old"] and after.calls["new"] > report.calls["new"]
    assert after.comparisons > report.comparisons  # counting went on, nothing was reset
    assert d.history == [] and d.retired == []

    # The next good candidate swaps in as usual.
    d.swap_candidate(bench.source("C"))
    with dualrun.context(pin="new"):
        assert quote(1)[0] == "C"
    assert d.wait_retired(5) and [r.namespace for r in d.retired] == [versions.new.prefix]
