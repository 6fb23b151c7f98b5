"""Rollback overrides pins; promote keeps the previous version loaded so that rollback works;
every error that gives advice gives advice that works; ``dispatcher.status()``."""

from __future__ import annotations

import importlib
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lifecycle_helpers import ENGINE, Bench, shadow

import dualrun
from dualrun import Canary, Fixed


def served(quote: Any, x: int = 1, **context: Any) -> str:
    """The tag of the version that served ``quote(x)`` inside a request."""
    with dualrun.context(**context):
        tag: str = quote(x)[0]
    return tag


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Bench]:
    bench = Bench(tmp_path)
    yield bench
    bench.cleanup()


def test_rollback_overrides_pins_unless_the_operator_keeps_them(bench: Bench) -> None:
    versions = bench.pair("A", "B")
    d = bench.dispatcher(versions, policy=Canary(50), shadow=shadow())
    quote = d.route(bench.target)
    with dualrun.context(key="pinned", pin="new"):
        assert quote(1)[0] == "B"
        d.rollback()
        assert quote(1)[0] == "A"  # the request in flight, pinned to new, now gets old
    assert served(quote, pin="new") == "A"  # and every later pin too
    assert not d.status().pins_honored
    assert "pins overridden" in d.status().line()
    d.rollback(honor_pins=True)  # the explicit opt-out
    assert served(quote, pin="new") == "B"
    d.rollback()
    d.promote()  # a promotion makes pins count again
    assert d.status().pins_honored and served(quote, pin="old") == "A"


HOST = """\
def helper():
    return "host"
"""

# The version's quote calls a host function that is itself routed: inside a shadow run of new,
# that nested routed call must stay in new, even when pins are overridden after a rollback.
NESTED = (
    ENGINE
    + """

def nested(x):
    import {host}
    return (VERSION, {host}.helper())
"""
)


def test_a_shadow_run_keeps_its_version_after_a_rollback(
    bench: Bench, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = f"host_{bench.name}"
    (tmp_path / f"{host}.py").write_text(HOST)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module(host)
    engine = textwrap.dedent(NESTED.format(host=host))
    versions = bench.pair("A", "B", old_engine=engine, new_engine=engine)
    seen: list[dualrun.recorder.Observation] = []
    d = bench.dispatcher(versions, policy=Fixed("new"), shadow=dualrun.Shadow("old"))
    d.recorder.sinks.append(seen.append)
    try:
        d.intercept(f"{host}:helper", f"{bench.name}.engine:version")
        nested = d.route(f"{bench.name}.engine:nested")
        d.rollback()  # pins overridden; old serves, new is shadowed
        with dualrun.context(key="k"):
            assert nested(1) == ("A", "A")
        assert d.report().route(f"{bench.name}.engine:nested").comparisons == 1
        [mismatch] = seen  # new ran its nested routed call in new, not in old
        assert mismatch.new.value == "('B', 'B')"
    finally:
        sys.modules.pop(host, None)


def test_promote_keeps_old_loaded_unshadowed_and_rollback_brings_it_back(bench: Bench) -> None:
    versions = bench.pair("A", "B")
    d = bench.dispatcher(versions, policy=Canary(10), shadow=shadow("any"))
    quote = d.route(bench.target)
    d.promote()
    assert {served(quote, key=f"k{i}") for i in range(20)} == {"B"}
    assert versions.old.loaded and d.status().pending_retirements == ()
    assert d.shadow is None  # nothing is shadowed after a promotion
    assert d.live_versions is d.versions  # both still there, each under its own label
    d.rollback()
    assert {served(quote, key=f"k{i}") for i in range(20)} == {"A"}
    assert d.shadow is not None  # both loaded: shadowing as configured again
    d.promote()
    d.swap_candidate(bench.source("C"))  # the next candidate: the previous old goes
    assert d.wait_retired(5) and not versions.old.loaded
    assert [v.source for v in d.versions] == [versions.new.source, bench.source("C")]


def test_retire_unloads_the_version_that_no_longer_serves(bench: Bench) -> None:
    versions = bench.pair("A", "B")
    d = bench.dispatcher(versions, policy=Canary(10))
    quote = d.route(bench.target)
    with pytest.raises(ValueError, match=r"promote\(\) or rollback\(\) first, or name") as caught:
        d.retire()
    assert "Canary" in str(caught.value)
    d.promote()  # the advice
    d.retire()
    assert d.wait_retired(5) and not versions.old.loaded
    assert served(quote, pin="old") == "B"
    with pytest.raises(RuntimeError, match="already retired"):
        d.retire()


def test_retiring_the_serving_version_is_refused_with_advice_that_works(bench: Bench) -> None:
    versions = bench.pair("A", "B")
    d = bench.dispatcher(versions)  # Fixed('old')
    quote = d.route(bench.target)
    with pytest.raises(RuntimeError, match=r"serves every call now: promote\(\) or rollback\(\)"):
        d.retire("old")
    d.promote()  # the advice
    d.retire("old")
    assert d.wait_retired(5) and not versions.old.loaded
    assert served(quote, key="k") == "B"


def test_the_advice_after_a_retiring_promotion_brings_the_old_version_back(bench: Bench) -> None:
    versions = bench.pair("A", "B")
    d = bench.dispatcher(versions)
    quote = d.route(bench.target)
    d.promote(retire=True)
    assert d.wait_retired(5)
    with pytest.raises(RuntimeError, match="nothing to roll back to") as caught:
        d.rollback()
    message = str(caught.value)
    source = versions.old.source
    assert f"swap_candidate({source!r}) and promote() it" in message
    d.swap_candidate(source)  # follow the advice, word for word
    d.promote()
    assert {served(quote, key=f"k{i}") for i in range(10)} == {"A"}
    assert d.status().serving == ("new",) and d.versions.new.source == source


def test_the_advice_after_a_retiring_rollback_makes_promotion_possible(bench: Bench) -> None:
    versions = bench.pair("A", "B")
    d = bench.dispatcher(versions)
    quote = d.route(bench.target)
    d.rollback(retire=True)
    assert d.wait_retired(5)
    with pytest.raises(RuntimeError, match=r"swap_candidate\(SOURCE\), then promote\(\)"):
        d.promote()
    d.swap_candidate(bench.source("C"))
    d.promote()
    assert served(quote, key="k") == "C"


def test_the_kill_switch_advice_works(bench: Bench) -> None:
    versions = bench.pair("A", "B")
    d = bench.dispatcher(versions)
    quote = d.route(bench.target)
    d.kill("incident")
    assert d.status().killed == "incident" and d.status().line().startswith("KILLED")
    for operation in (d.promote, lambda: d.swap_candidate(bench.source("C"))):
        with pytest.raises(RuntimeError, match=r"revive\(\) first"):
            operation()
    d.revive()
    d.promote()
    assert served(quote, key="k") == "B"


def test_status_says_who_serves_what_is_loaded_and_what_is_pending(
    bench: Bench, tmp_path: Path
) -> None:
    versions = bench.pair("A", "B")
    d = bench.dispatcher(versions, policy=Canary(5), shadow=shadow())
    quote = d.route(bench.target)
    host = f"later_{bench.name}"
    (tmp_path / f"{host}.py").write_text("def quote(x):\n    return x\n")
    sys.path.insert(0, str(tmp_path))
    try:
        d.intercept(f"{host}:quote", bench.target)
        status = d.status()
        assert status.serving == ("old", "new")
        assert [(v.label, v.source, v.loaded, v.retiring) for v in status.versions] == [
            ("old", versions.old.source, True, False),
            ("new", versions.new.source, True, False),
        ]
        assert status.policy == repr(d.policy) and status.pins_honored and not status.promoted
        assert status.shadow is not None and status.killed is None
        assert status.pending_interceptions == (f"{host}:quote",)
        assert status.in_flight == {"old": 0, "new": 0}
        line = status.line()
        for part in ("serving old (", "and new (", "Canary", "pins honored", "shadow on"):
            assert part in line, (part, line)
        assert f"pending interceptions {host}:quote" in line
        assert status.to_dict()["versions"][0]["label"] == "old"

        with pytest.warns(dualrun.DualrunWarning, match="still pending"):
            served(quote, key="first")  # the first routed call warns of the pending one
        entered, release = bench.block(versions.old)
        caller = threading.Thread(target=lambda: served(quote, pin="old"))
        caller.start()
        assert entered.wait(5)
        d.promote(retire=True, drain_timeout=10)
        status = d.status()
        assert status.serving == ("new",) and status.promoted
        assert status.in_flight["old"] == 1
        assert status.pending_retirements == (versions.old.source,)
        assert status.versions[0].retiring and "retiring" in status.line()
        release.set()
        caller.join(5)
        assert d.wait_retired(5)
        status = d.status()
        assert status.pending_retirements == () and not status.versions[0].loaded
    finally:
        sys.path.remove(str(tmp_path))
