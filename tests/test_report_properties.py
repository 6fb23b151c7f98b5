"""Hypothesis: the report computed in process equals the report computed from the event log.

Generated observation streams (statuses, differences on a few paths and kinds, errors,
durations, times across several minutes, two routes) are fed into a dispatcher's recorder,
with summaries taken at random points; the log read back gives the same per-route numbers,
whether the dispatcher was closed (a final summary covers everything) or only flushed (the
divergences after the last summary are counted from their own events).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from log_helpers import ROUTE_A, ROUTE_B, T0, LogLab, events, observation

import dualrun
from dualrun.compare import Difference
from dualrun.eventlog import EventLog
from dualrun.logread import report_from_logs
from dualrun.recorder import MAX_GROUPS, STATUSES, Observation, Outcome

PATHS = ("$.price", "$.items[0].qty", "$.items[3].qty", "$.tax", "$")
KINDS = ("value", "type", "missing")
SETTINGS = settings(
    max_examples=75,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def outcomes(label: str) -> st.SearchStrategy[Outcome]:
    return st.builds(
        Outcome,
        label=st.just(label),
        value=st.one_of(st.none(), st.text(max_size=6)),
        error=st.one_of(st.none(), st.sampled_from(["ValueError: no", "KeyError: 'k'"])),
        wall_ns=st.integers(0, 10**10),
        cpu_ns=st.integers(0, 10**9),
        timed_out=st.booleans(),
    )


differences = st.builds(
    Difference,
    path=st.sampled_from(PATHS),
    kind=st.sampled_from(KINDS),
    old=st.text(max_size=4),
    new=st.text(max_size=4),
)

observations = st.builds(
    Observation,
    route=st.sampled_from((ROUTE_A, ROUTE_B)),
    key=st.one_of(st.none(), st.text(max_size=8)),
    primary=st.sampled_from(("old", "new")),
    old=outcomes("old"),
    new=outcomes("new"),
    differences=st.lists(differences, max_size=3).map(tuple),
    noise=st.lists(differences, max_size=2).map(tuple),
    status=st.sampled_from(STATUSES),
    time=st.floats(T0, T0 + 10 * 60, allow_nan=False, allow_infinity=False),
)

# Each observation, and whether a summary is taken right after it.
streams = st.lists(st.tuples(observations, st.booleans()), max_size=40)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[LogLab]:
    lab = LogLab(tmp_path)
    yield lab
    lab.cleanup()


def feed(
    lab: LogLab, versions: dualrun.VersionPair, stream: list[tuple[Observation, bool]]
) -> tuple[dualrun.Dispatcher, Path]:
    """A dispatcher whose recorder got ``stream``; summaries only where the stream says."""
    path = lab.path("property")
    d = dualrun.Dispatcher(versions, log=EventLog(path, summary_interval=3600))
    assert d.journal is not None
    for obs, summarize in stream:
        d.recorder.record(obs)
        if summarize:
            d.journal.summarize()
    return d, path


def from_log(path: Path) -> dualrun.Report:
    problems: list[str] = []
    report, _ = report_from_logs([str(path)], problems.append)
    assert problems == []
    return report


def assert_same(in_process: dualrun.Report, logged: dualrun.Report) -> None:
    mine, theirs = in_process.to_dict(), logged.to_dict()
    assert theirs["routes"] == mine["routes"]
    assert (theirs["policy"], theirs["dropped_events"]) == (mine["policy"], 0)


def test_the_report_from_the_log_equals_the_report_in_process(lab: LogLab) -> None:
    versions = lab.pair()

    @SETTINGS
    @given(stream=streams)
    def check(stream: list[tuple[Observation, bool]]) -> None:
        d, path = feed(lab, versions, stream)
        try:
            d.close()
            assert_same(d.report(), from_log(path))
            assert events(path)[-1]["event"] == "dualrun.summary"
        finally:
            d.close()

    check()


def test_divergences_after_the_last_summary_are_counted_from_their_events(
    lab: LogLab,
) -> None:
    versions = lab.pair()

    @SETTINGS
    @given(stream=streams)
    def check(stream: list[tuple[Observation, bool]]) -> None:
        d, path = feed(lab, versions, stream)
        try:
            assert d.journal is not None and d.journal.log.flush(5)  # no close: no final summary
            lines = events(path)
            last = max(
                (n for n, e in enumerate(lines) if e["event"] == "dualrun.summary"), default=-1
            )
            uncovered = [e for e in lines[last + 1 :] if e["event"] == "dualrun.divergence"]
            assert len(uncovered) == len(
                list(itertools.takewhile(lambda x: not x[1], stream[::-1]))
            )
            assert_same(d.report(), from_log(path))
        finally:
            d.close()

    check()


def test_a_run_killed_after_a_summary_counts_both_parts(lab: LogLab) -> None:
    """The deterministic case: a summary in the middle, then divergences and no summary."""
    versions = lab.pair()
    d, path = feed(
        lab,
        versions,
        [
            (observation(ROUTE_A, "mismatch", T0), False),
            (observation(ROUTE_A, "match", T0 + 1), True),
            (observation(ROUTE_A, "mismatch", T0 + 61, paths=("$.tax",)), False),
            (observation(ROUTE_B, "noise", T0 + 62), False),
        ],
    )
    try:
        assert d.journal is not None and d.journal.log.flush(5)
        report = from_log(path)
        a, b = report.route(ROUTE_A), report.route(ROUTE_B)
        assert (a.comparisons, a.matches, a.mismatches) == (3, 1, 2)
        assert [(x.path, x.count) for x in a.divergences] == [("$.price", 1), ("$.tax", 1)]
        assert a.timeline == [[int(T0 // 60), 2, 1], [int(T0 // 60) + 1, 1, 1]]
        assert (b.comparisons, b.noise) == (1, 1)
        assert_same(d.report(), report)
    finally:
        d.close()


def test_more_signatures_than_the_group_cap_agree_too(lab: LogLab) -> None:
    versions = lab.pair()
    many = [f"$.field{i}" for i in range(MAX_GROUPS + 40)]
    stream = [
        (observation(ROUTE_A, "mismatch", T0 + i, paths=(many[i % len(many)],)), i % 97 == 0)
        for i in range(2 * len(many))
    ]
    d, path = feed(lab, versions, stream)
    try:
        d.close()
        report = from_log(path)
        route = report.route(ROUTE_A)
        assert len(route.divergences) == MAX_GROUPS and route.divergences_overflow == 80
        assert_same(d.report(), report)
    finally:
        d.close()
