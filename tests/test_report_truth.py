"""Reports that never mislead: each call counted once per divergence signature, live call
counts in process, ``<missing>`` apart from ``None``."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
from log_helpers import ROUTE_A, T0, LogLab, observation, target

import dualrun
from dualrun.compare import Differ
from dualrun.logread import report_from_logs


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[LogLab]:
    lab = LogLab(tmp_path)
    yield lab
    lab.cleanup()


def test_a_per_element_path_counts_each_call_once_of_calls(lab: LogLab) -> None:
    d = lab.dispatcher(lab.pair())
    for i in range(10):  # each call: three lines differ in quantity
        paths = ("$.lines[0].qty", "$.lines[1].qty", "$.lines[2].qty", "$.total")
        d.recorder.record(observation(ROUTE_A, "mismatch", T0 + i, paths=paths))
    report = d.report()
    route = report.route(ROUTE_A)
    shares = {g.path: (g.count, g.share) for g in route.divergences}
    assert shares == {"$.lines[*].qty": (10, 1.0), "$.total": (10, 1.0)}
    text = report.to_text()
    assert "calls  of calls" in text and "100.00%" in text and "300.00%" not in text
    assert "<th>of calls</th>" in report.to_html()
    assert "| calls | of calls |" in report.to_markdown()


def test_the_in_process_report_shows_live_call_counts(lab: LogLab) -> None:
    versions = lab.pair()
    log = lab.path()
    d = lab.dispatcher(
        versions,
        policy=dualrun.Canary(30),
        shadow=dualrun.Shadow("any", mode="background"),
        log=dualrun.EventLog(str(log), summary_interval=3600),  # no summary meanwhile
    )
    quote = d.route(target(versions, "stamp"))
    for n in range(1, 201):
        with dualrun.context(key=f"user-{n}"):
            quote(n)
    assert d.flush(10)
    route = d.report().route(target(versions, "stamp"))
    assert sum(route.calls.values()) == 200 and route.calls["old"] > 0 and route.calls["new"] > 0
    assert route.comparisons + route.dropped == 200
    d.close()
    from_logs, _ = report_from_logs([str(log)], lambda problem: None)
    assert from_logs.route(target(versions, "stamp")).calls == route.calls


def test_missing_is_shown_apart_from_none_in_every_format(lab: LogLab) -> None:
    d = lab.dispatcher(lab.pair())
    differences = tuple(Differ().diff({"a": None}, {"b": None}))
    d.recorder.record(
        dataclasses.replace(observation(ROUTE_A, "mismatch", T0), differences=differences)
    )
    report = d.report()
    text = report.to_text()
    assert "None -> <missing>" in text and "<missing> -> None" in text
    assert "None → &lt;missing&gt;" in report.to_html()
    assert "&lt;missing&gt; → None" in report.to_html()
    assert "None -> &lt;missing>" in report.to_markdown()  # shown as <missing>
    assert "<missing>" in report.to_json()


FAILING_NEW = """
def quote(n):
    return {"n": n, "rate": helper(n)}


def helper(n):
    if n % 3 == 0:
        raise ValueError(f"no rate in {__name__}")
    return n
"""


def test_a_shadow_exception_keeps_a_bounded_traceback_in_every_format(
    lab: LogLab, tmp_path: Path
) -> None:
    name, old_dir, new_dir = lab.dirs()
    (new_dir / name / "engine.py").write_text(FAILING_NEW)
    (old_dir / name / "engine.py").write_text(FAILING_NEW.replace("n % 3 == 0", "False"))
    versions = dualrun.load(name, old=str(old_dir), new=str(new_dir))
    lab.pairs.append(versions)
    log = lab.path()
    d = lab.dispatcher(versions, shadow=dualrun.Shadow(), log=str(log))
    quote = d.route(f"{name}.engine:quote")
    for n in range(30):
        quote(n)  # new raises ValueError for n % 3 == 0: ten times
    d.close()
    from_logs, _ = report_from_logs([str(log)], lambda problem: None)
    for report in (d.report(), from_logs):
        [group] = report.route(f"{name}.engine:quote").divergences
        assert group.kind == "exception" and group.count == 10
        with_traceback = [x for x in group.examples if "traceback" in x]
        assert len(with_traceback) == len(group.examples) == 5  # the first examples only
        text = with_traceback[0]["traceback"]["new"]
        assert text.startswith("Traceback (most recent call last):")
        assert "in helper" in text
        assert f"ValueError: no rate in {name}.engine" in text  # the private prefix removed
        assert "_dualrun_" not in text
        assert len(text) <= 2000
        for rendered in (
            report.to_text(),
            report.to_markdown(),
            report.to_html(),
            report.to_json(),
        ):
            assert "traceback of new" in rendered or '"traceback"' in rendered
            assert "in helper" in rendered


def test_after_a_swap_the_report_from_logs_shows_each_candidate_apart(
    tmp_path: Path,
) -> None:
    from lifecycle_helpers import ENGINE, Bench, shadow

    bench = Bench(tmp_path / "bench")
    diverging = ENGINE.replace("DIVERGE = False", "DIVERGE = True")
    try:
        versions = bench.pair("A", "B", new_engine=diverging)  # v2: every quote differs
        log = tmp_path / "swap.jsonl"
        d = bench.dispatcher(versions, shadow=shadow(), log=str(log))
        quote = d.route(bench.target)
        for x in range(10):
            quote(x)
        d.swap_candidate(bench.source("C"))  # v2.1: fixed, every quote agrees
        for x in range(30):
            quote(x)
        d.close()
        report, _ = report_from_logs([str(log)], lambda problem: None)
        routes = [r for r in report.routes if r.route == bench.target]
        by_candidate = {r.sources["new"]: (r.comparisons, r.mismatches) for r in routes}
        assert by_candidate == {bench.source("B"): (10, 10), bench.source("C"): (30, 0)}
        assert {r.sources["old"] for r in routes} == {bench.source("A")}
        text = report.to_text()
        assert f"old {bench.source('A')}  new {bench.source('B')}" in text
        assert f"new {bench.source('C')}" in text
        assert d.report().route(bench.target).sources["new"] == bench.source("C")
    finally:
        bench.cleanup()
