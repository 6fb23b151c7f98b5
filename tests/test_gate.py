"""The gate: promote, hold or roll back from aggregates, with Wilson bounds.

The oracle for the rate checks is the score test the Wilson interval inverts: the interval of
``m`` in ``n`` holds a rate ``t`` exactly when ``(m/n - t)**2 <= z**2 * t * (1 - t) / n``. So a
rate passes when ``m/n < t`` and the inequality fails, and fails when ``m/n > t`` and it fails:
an independent formula, not the gate's own arithmetic.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from statistics import NormalDist
from typing import Any

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from lifecycle_helpers import Bench, shadow

import dualrun
from dualrun.gate import Check, Decision, Gate
from dualrun.report import Report, RouteReport

SEVERITY = {"promote": 0, "hold": 1, "rollback": 2}


def route(
    n: int,
    mismatches: int = 0,
    errors: tuple[int, int] = (0, 0),
    ratio: float | None = 1.0,
    name: str = "pkg.engine:quote",
) -> RouteReport:
    """A route report with ``n`` comparisons, as the recorder would aggregate them; the errors
    of both versions fall on the same inputs, so new adds ``errors[1] - errors[0]`` of its own."""
    return RouteReport(
        route=name,
        comparisons=n,
        matches=n - mismatches,
        mismatches=mismatches,
        errors={"old": errors[0], "new": errors[1]},
        new_only_errors=max(0, errors[1] - errors[0]),
        latency_ratio={} if ratio is None else {"p50": ratio, "p95": ratio, "p99": ratio},
        latency_histogram={} if ratio is None else timings(ratio),
        cpu_histogram={} if ratio is None else timings(ratio),
    )


def timings(ratio: float, samples: int = 1000) -> dict[str, list[list[float]]]:
    """Latencies of both versions, each all alike, new ``ratio`` times old's: the quantile
    intervals are as narrow as they get, so the latency check decides on the ratio alone."""
    return {"old": [[1000.0, samples]], "new": [[1000.0 * ratio, samples]]}


def z_of(confidence: float) -> float:
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def expected_rate_verdict(count: int, n: int, threshold: float, z: float) -> str | None:
    """The score-test oracle; None when too close to the boundary to call in floating point."""
    if n == 0:
        return "hold"
    p = count / n
    gap, room = (p - threshold) ** 2, z * z * threshold * (1 - threshold) / n
    if math.isclose(gap, room, rel_tol=1e-9, abs_tol=1e-15):
        return None
    if gap <= room:
        return "hold"
    return "promote" if p < threshold else "rollback"


def check(decision: Decision, name: str) -> Check:
    [found] = [c for c in decision.checks if c.name == name]
    return found


# -- boundaries -----------------------------------------------------------------------------


def test_zero_mismatches_promote_exactly_from_the_wilson_threshold() -> None:
    # 0 of n: the upper bound is z^2 / (n + z^2), below 5% from n > z^2 * 0.95 / 0.05 = 72.99.
    gate = Gate(min_comparisons=1, max_mismatch_rate=0.05, max_error_rate=0.05)
    at_72 = gate.evaluate(route(72))
    at_73 = gate.evaluate(route(73))
    assert at_72.verdict == "hold"
    assert check(at_72, "mismatch rate").verdict == "hold"
    assert check(at_72, "mismatch rate").high == pytest.approx(3.841459 / (72 + 3.841459))
    assert at_73.verdict == "promote"
    assert check(at_73, "mismatch rate").high < 0.05 < check(at_72, "mismatch rate").high
    # The error rate has the same threshold and the same boundary.
    assert check(at_72, "error rate").verdict == "hold"
    assert check(at_73, "error rate").verdict == "promote"


def test_mismatches_roll_back_exactly_when_the_lower_bound_clears_the_threshold() -> None:
    # 9 of 100: lower bound 4.81% (hold); 10 of 100: 5.52% (rollback).
    gate = Gate(min_comparisons=1, max_mismatch_rate=0.05, max_error_rate=0.05)
    nine, ten = gate.evaluate(route(100, 9)), gate.evaluate(route(100, 10))
    assert (nine.verdict, ten.verdict) == ("hold", "rollback")
    assert check(nine, "mismatch rate").low == pytest.approx(0.04807, abs=1e-4)
    assert check(ten, "mismatch rate").low == pytest.approx(0.05523, abs=1e-4)
    assert any("mismatch rate" in reason and "above" in reason for reason in ten.reasons)


def test_min_comparisons_holds_a_passing_candidate_until_enough_evidence() -> None:
    gate = Gate(min_comparisons=100, max_mismatch_rate=0.05, max_error_rate=0.05)
    below, at = gate.evaluate(route(99)), gate.evaluate(route(100))
    assert check(below, "mismatch rate").verdict == "promote"  # the rate alone would pass
    assert below.verdict == "hold"
    comparisons = check(below, "comparisons")
    assert (comparisons.verdict, comparisons.value, comparisons.threshold) == ("hold", 99, 100)
    assert "99 comparisons of the 100 needed" in below.reasons
    assert at.verdict == "promote"
    assert [c.name for c in at.checks] == ["mismatch rate", "error rate", "latency ratio p95"]


def test_a_clear_failure_rolls_back_before_min_comparisons() -> None:
    gate = Gate(min_comparisons=500, max_mismatch_rate=0.05, max_error_rate=0.05)
    decision = gate.evaluate(route(20, 20))
    assert decision.verdict == "rollback"
    assert decision.comparisons == 20
    failing = check(decision, "mismatch rate")
    assert failing.verdict == "rollback" and failing.value == 1.0
    assert not [c for c in decision.checks if c.name == "comparisons"]


def test_no_comparisons_hold_whatever_the_thresholds() -> None:
    decision = Gate(min_comparisons=1, max_mismatch_rate=1.0).evaluate(route(0, ratio=None))
    assert decision.verdict == "hold"
    rate = check(decision, "mismatch rate")
    assert (rate.value, rate.low, rate.high) == (None, 0.0, 1.0)
    assert check(decision, "latency ratio p95").detail.endswith(
        "no latencies of both versions measured the same way yet"
    )


def test_error_rate_counts_only_the_errors_new_adds_over_old() -> None:
    gate = Gate(min_comparisons=1, max_mismatch_rate=0.05, max_error_rate=0.05)
    # Both versions reject the same 30 inputs (errors on both sides are not held against new)...
    same = gate.evaluate(route(200, errors=(30, 30)))
    assert check(same, "error rate").value == 0.0 and same.verdict == "promote"
    # ... fewer errors in new are no credit on another route...
    better = gate.evaluate(route(200, errors=(30, 0)))
    assert check(better, "error rate").value == 0.0
    # ... but new raising where old does not fails the error check alone.
    worse = gate.evaluate(route(200, errors=(0, 40)))
    assert check(worse, "mismatch rate").verdict == "promote"
    assert check(worse, "error rate").verdict == "rollback"
    assert check(worse, "error rate").value == pytest.approx(40 / 200)
    assert worse.verdict == "rollback"
    assert any(r.startswith("error rate 20.0000% (40 of 200") for r in worse.reasons)


def test_latency_ratio_compares_the_chosen_quantile_of_the_worst_route() -> None:
    gate = Gate(
        min_comparisons=1, max_mismatch_rate=0.05, max_error_rate=0.05, max_latency_ratio=1.25
    )
    assert gate.evaluate(route(200, ratio=1.25)).verdict == "promote"
    slow = gate.evaluate([route(100, ratio=1.0, name="a:f"), route(100, ratio=1.3, name="b:g")])
    latency = check(slow, "latency ratio p95")
    assert (slow.verdict, latency.verdict, latency.value) == ("rollback", "rollback", 1.3)
    assert slow.routes == ("a:f", "b:g") and slow.comparisons == 200
    assert "1.30x (95% interval 1.30x to 1.30x, route b:g) is above 1.25x" in latency.detail
    # The quantile is chosen: a p50 gate reads p50.
    p50 = Gate(
        min_comparisons=1, max_mismatch_rate=0.05, max_error_rate=0.05, latency_quantile="p50"
    )
    report = route(200)
    # new: as fast as old for 90% of calls, 9x slower for the slowest 10%
    report.latency_histogram = {"old": [[1000.0, 1000]], "new": [[1000.0, 900], [9000.0, 100]]}
    assert p50.evaluate(report).verdict == "promote"
    assert gate.evaluate(report).verdict == "rollback"


def test_a_report_is_evaluated_over_all_its_routes_together() -> None:
    gate = Gate(min_comparisons=150, max_mismatch_rate=0.05, max_error_rate=0.05)
    routes = [route(100, 0, name="a:f"), route(100, 0, name="b:g")]
    assert gate.evaluate(routes[0]).verdict == "hold"  # one route is below min_comparisons
    report = Report(policy="Fixed('old')", routes=routes)
    decision = gate.evaluate(report)
    assert decision.verdict == "promote" and decision.comparisons == 200
    assert gate.evaluate(iter(routes)).verdict == "promote"
    # A divergent second route pulls the whole decision down.
    report.routes[1] = route(100, 40, name="b:g")
    assert gate.evaluate(report).verdict == "rollback"


def test_decision_carries_the_numbers_behind_it() -> None:
    gate = Gate(min_comparisons=10, max_mismatch_rate=0.05, max_error_rate=0.02, confidence=0.9)
    decision = gate.evaluate(route(400, 8, errors=(1, 3), ratio=1.1))
    rate = check(decision, "mismatch rate")
    assert rate.value == pytest.approx(0.02)
    assert rate.low is not None and rate.high is not None
    assert 0 <= rate.low < rate.value < rate.high <= 1
    assert rate.threshold == 0.05
    assert "(8 of 400; 90% interval" in rate.detail
    errors = check(decision, "error rate")
    assert errors.value == pytest.approx(2 / 400) and errors.threshold == 0.02
    data = decision.to_dict()
    assert data["verdict"] == decision.verdict and data["comparisons"] == 400
    assert data["routes"] == ("pkg.engine:quote",)
    assert {c["name"] for c in data["checks"]} >= {"mismatch rate", "error rate"}
    assert all({"value", "low", "high", "threshold", "detail"} <= c.keys() for c in data["checks"])
    json.dumps(data)  # the event log writes it
    assert str(decision).startswith(f"{decision.verdict}: ")
    assert decision.reasons  # never empty: all the details when everything passed
    assert "Gate(min_comparisons=10" in repr(gate)


def test_the_gate_reads_a_live_dispatchers_report(tmp_path: Path) -> None:
    bench = Bench(tmp_path)
    try:
        versions = bench.pair()
        bench.engine(versions.new).DIVERGE = True
        d = bench.dispatcher(versions, shadow=shadow())
        quote = d.route(bench.target)
        for i in range(30):
            quote(i)
        gate = Gate(min_comparisons=1000, max_mismatch_rate=0.05, max_latency_ratio=1000)
        decision = gate.evaluate(d.report())
        assert decision.verdict == "rollback"
        assert decision.comparisons == 30
        assert check(decision, "mismatch rate").value == 1.0
    finally:
        bench.cleanup()


# -- bad arguments --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_comparisons": 0},
        {"min_comparisons": -5},
        {"min_comparisons": 1.5},
        {"min_comparisons": True},
        {"min_comparisons": "500"},
        {"max_mismatch_rate": -0.01},
        {"max_mismatch_rate": 1.5},
        {"max_mismatch_rate": float("nan")},
        {"max_mismatch_rate": "0.1"},
        {"max_mismatch_rate": True},
        {"max_error_rate": -1},
        {"max_error_rate": 2},
        {"max_error_rate": None},
        {"max_latency_ratio": -1},
        {"max_latency_ratio": float("nan")},
        {"max_latency_ratio": "fast"},
        {"confidence": 0.4},
        {"confidence": 1.0},
        {"confidence": 95},
        {"confidence": float("nan")},
        {"confidence": False},
        {"latency_quantile": "p90"},
        {"latency_quantile": 95},
    ],
)
def test_bad_gate_arguments_are_refused(kwargs: dict[str, Any]) -> None:
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name):
        Gate(**kwargs)


def test_good_gate_arguments_at_their_limits_are_accepted() -> None:
    gate = Gate(min_comparisons=1, max_mismatch_rate=1e-9, max_error_rate=1, confidence=0.5)
    assert gate.min_comparisons == 1 and gate.confidence == 0.5
    for name in ("max_mismatch_rate", "max_error_rate", "max_latency_ratio"):
        with pytest.raises(ValueError, match="a zero threshold can never pass"):
            Gate(**{name: 0})
    assert dualrun.Gate is Gate and dualrun.Decision is Decision


# -- generated aggregates -------------------------------------------------------------------


@st.composite
def aggregates(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(0, 5000))
    return {
        "n": n,
        "mismatches": draw(st.integers(0, n)),
        "errors": (draw(st.integers(0, n)), draw(st.integers(0, n))),
        "ratio": draw(st.sampled_from([None, 0.5, 1.0, 1.2, 1.25, 1.3, 4.0])),
    }


gates = st.builds(
    Gate,
    min_comparisons=st.integers(1, 3000),
    max_mismatch_rate=st.floats(0.0005, 0.5),
    max_error_rate=st.floats(0.0005, 0.5),
    max_latency_ratio=st.sampled_from([1.0, 1.25, 2.0]),
    confidence=st.sampled_from([0.8, 0.9, 0.95, 0.99]),
)


@settings(max_examples=300, deadline=None)
@given(gate=gates, aggregate=aggregates(), more=st.integers(1, 5000))
@example(
    gate=Gate(min_comparisons=50, max_mismatch_rate=0.05, max_error_rate=0.05),
    aggregate={"n": 100, "mismatches": 9, "errors": (0, 0), "ratio": 1.0},
    more=1,
)
def test_more_mismatches_never_make_the_verdict_milder(
    gate: Gate, aggregate: dict[str, Any], more: int
) -> None:
    n, m = aggregate["n"], aggregate["mismatches"]
    worse = min(n, m + more)
    before = gate.evaluate(route(n, m, aggregate["errors"], aggregate["ratio"]))
    after = gate.evaluate(route(n, worse, aggregate["errors"], aggregate["ratio"]))
    assert SEVERITY[after.verdict] >= SEVERITY[before.verdict], (before, after)
    # The mismatch check itself is monotone too, and its bounds move up with the count.
    first, second = check(before, "mismatch rate"), check(after, "mismatch rate")
    assert SEVERITY[second.verdict] >= SEVERITY[first.verdict]
    assert first.low is not None and second.low is not None
    assert first.high is not None and second.high is not None
    assert second.low >= first.low - 1e-12 and second.high >= first.high - 1e-12


@settings(max_examples=300, deadline=None)
@given(gate=gates, aggregate=aggregates(), more=st.integers(1, 5000))
def test_more_new_errors_never_make_the_verdict_milder(
    gate: Gate, aggregate: dict[str, Any], more: int
) -> None:
    n, m, (old, new) = aggregate["n"], aggregate["mismatches"], aggregate["errors"]
    before = gate.evaluate(route(n, m, (old, new), aggregate["ratio"]))
    after = gate.evaluate(route(n, m, (old, min(n, new + more)), aggregate["ratio"]))
    assert SEVERITY[after.verdict] >= SEVERITY[before.verdict], (before, after)


@settings(max_examples=400, deadline=None)
@given(gate=gates, aggregate=aggregates())
def test_verdict_agrees_with_the_score_test_oracle(gate: Gate, aggregate: dict[str, Any]) -> None:
    n, m, (old, new), ratio = (
        aggregate["n"],
        aggregate["mismatches"],
        aggregate["errors"],
        aggregate["ratio"],
    )
    z = z_of(gate.confidence)
    rate = expected_rate_verdict(m, n, gate.max_mismatch_rate, z)
    errors = expected_rate_verdict(max(0, new - old), n, gate.max_error_rate, z)
    assume(rate is not None and errors is not None)
    assert rate is not None and errors is not None
    latency = (
        "hold" if ratio is None else "promote" if ratio <= gate.max_latency_ratio else "rollback"
    )
    if latency == "rollback" and n < gate.min_comparisons:
        latency = "hold"  # latency decides only past min_comparisons
    expected = max((rate, errors, latency), key=SEVERITY.__getitem__)
    if expected == "promote" and n < gate.min_comparisons:
        expected = "hold"
    decision = gate.evaluate(route(n, m, (old, new), ratio))
    assert check(decision, "mismatch rate").verdict == rate
    assert check(decision, "error rate").verdict == errors
    assert decision.verdict == expected
    assert decision.comparisons == n
    if decision.verdict == "promote":
        assert n >= gate.min_comparisons


@settings(max_examples=200, deadline=None)
@given(
    threshold=st.floats(0.001, 0.5),
    confidence=st.sampled_from([0.8, 0.9, 0.95, 0.99]),
)
def test_zero_mismatches_pass_from_the_smallest_n_the_formula_gives(
    threshold: float, confidence: float
) -> None:
    z = z_of(confidence)
    # 0 of n passes when z^2 / (n + z^2) < t, i.e. n > z^2 (1 - t) / t.
    limit = z * z * (1 - threshold) / threshold
    assume(abs(limit - round(limit)) > 1e-6)
    first = math.floor(limit) + 1
    gate = Gate(min_comparisons=1, max_mismatch_rate=threshold, confidence=confidence)
    assert check(gate.evaluate(route(first)), "mismatch rate").verdict == "promote"
    if first > 1:
        assert check(gate.evaluate(route(first - 1)), "mismatch rate").verdict == "hold"


def test_errors_on_different_inputs_count_even_when_the_totals_are_equal() -> None:
    from dualrun.recorder import Observation, Outcome, RouteAggregate
    from dualrun.report import route_report

    def obs(old_error: str | None, new_error: str | None) -> Observation:
        old = Outcome("old", None if old_error else "1", old_error, 1000, 1000)
        new = Outcome("new", None if new_error else "1", new_error, 1000, 1000)
        status = "match" if old_error == new_error else "mismatch"
        return Observation("r:f", None, "old", old, new, (), (), status, 0.0)

    aggregate = RouteAggregate("r:f")
    for _ in range(10):
        aggregate.add(obs("ValueError: a", None))  # old fails on these inputs
        aggregate.add(obs(None, "ValueError: b"))  # new fails on others
    for _ in range(180):
        aggregate.add(obs(None, None))
    report = route_report("r:f", {"old": 0, "new": 0}, 0, aggregate)
    assert report.errors == {"old": 10, "new": 10} and report.new_only_errors == 10
    gate = Gate(min_comparisons=1, max_mismatch_rate=0.5, max_error_rate=0.01)
    assert check(gate.evaluate(report), "error rate").verdict == "rollback"
