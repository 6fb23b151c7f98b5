"""The gate: promote, hold or roll back, decided from the evidence with confidence bounds.

Each check has three outcomes, as Argo Rollouts' analysis does: it passes when the bound on the
safe side clears the threshold, fails when the bound on the unsafe side does, and is
inconclusive otherwise. Rates use the Wilson score interval at the gate's confidence: a mismatch
rate whose upper bound is below ``max_mismatch_rate`` passes, one whose lower bound is above it
fails. The verdict is ``rollback`` if any check fails, ``promote`` if all pass, else ``hold``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from statistics import NormalDist
from typing import Any, Literal

from dualrun import checks
from dualrun.report import Report, RouteReport, wilson

Verdict = Literal["promote", "hold", "rollback"]
_SEVERITY = {"promote": 0, "hold": 1, "rollback": 2}


@dataclass(frozen=True)
class Check:
    """One criterion and the numbers behind its outcome."""

    name: str
    verdict: Verdict
    value: float | None
    low: float | None
    high: float | None
    threshold: float
    detail: str

    def short(self) -> str:
        """``mismatch rate 0.40% [0.10%, 1.20%]``: the value and its interval, if any."""
        if self.value is None:
            return f"{self.name} -"
        if self.name.startswith("latency"):
            high = "inf" if self.high is None else f"{self.high:.2f}x"
            return f"{self.name} {self.value:.2f}x [{self.low or 0:.2f}x, {high}]"
        if self.name == "comparisons":
            return f"{self.value:.0f} of {self.threshold:.0f} comparisons"
        return f"{self.name} {self.value:.2%} [{self.low or 0:.2%}, {self.high or 0:.2%}]"


@dataclass(frozen=True)
class Decision:
    """What the gate decided, and why: the ``verdict`` (``"promote"``, ``"hold"`` or
    ``"rollback"``), the ``checks`` with the numbers behind each, the ``comparisons`` judged,
    and the ``routes`` they came from."""

    verdict: Verdict
    checks: tuple[Check, ...]
    comparisons: int
    routes: tuple[str, ...] = field(default=())

    @property
    def reasons(self) -> list[str]:
        """The checks that did not pass, in words (all of them if everything passed)."""
        failing = [c.detail for c in self.checks if c.verdict != "promote"]
        return failing or [c.detail for c in self.checks]

    def to_dict(self) -> dict[str, Any]:
        """The decision as JSON-ready data."""
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.verdict}: " + "; ".join(self.reasons)

    def summary(self) -> str:
        """One short line: the verdict and each check's numbers."""
        return f"{self.verdict} after {self.comparisons} comparisons: " + ", ".join(
            c.short() for c in self.checks
        )


def _number(value: object, what: str, high: float | None = None) -> float:
    """A threshold: a number > 0 (a zero threshold could never pass), at most ``high``."""
    if not checks.is_number(value):
        raise ValueError(f"{what} is a number, got {value!r}")
    if value <= 0 or (high is not None and value > high):
        upper = "" if high is None else f" and <= {high:g}"
        raise ValueError(
            f"{what} is a number > 0{upper} (a zero threshold can never pass), got {value!r}"
        )
    return float(value)


LATENCY_MEASURES = ("auto", "wall", "cpu")
_QUANTILE_SHARES = {"p50": 0.50, "p95": 0.95, "p99": 0.99}


class Gate:
    """Thresholds a candidate must meet, and the confidence the decision needs.

    ``min_comparisons``: fewer comparisons never promote, and never roll back on latency (a
    clear mismatch or error rate may roll back earlier). ``max_mismatch_rate``,
    ``max_error_rate``: rates over the comparisons, judged by their Wilson interval at
    ``confidence``; the error rate counts the calls where the new version raised and the old one
    did not, so inputs both versions reject are not held against the new one.

    ``max_latency_ratio``: the highest acceptable new/old ratio of the ``latency_quantile``
    (``"p50"``, ``"p95"``, ``"p99"``). It is judged by a distribution-free confidence interval of
    each version's quantile (ranks of the binomial, at ``confidence`` jointly): rollback only when
    the whole interval of the ratio is above the threshold, promote when it is all within.
    ``latency`` chooses what is compared, always between runs measured the same way:
    ``"wall"`` (wall-clock time of inline shadow pairs, or of each version's runs as the serving
    primary), ``"cpu"`` (thread CPU time of every compared run, comparable even when the shadow
    ran on a worker thread), ``"auto"`` (the default: wall where both versions have such runs,
    else CPU), or ``None`` to leave latency out of the decision.
    """

    def __init__(
        self,
        min_comparisons: int = 500,
        max_mismatch_rate: float = 0.001,
        max_error_rate: float = 0.001,
        max_latency_ratio: float = 1.25,
        confidence: float = 0.95,
        latency_quantile: str = "p95",
        latency: str | None = "auto",
    ) -> None:
        self.min_comparisons = checks.whole_number(min_comparisons, "min_comparisons")
        self.max_mismatch_rate = _number(max_mismatch_rate, "max_mismatch_rate", 1.0)
        self.max_error_rate = _number(max_error_rate, "max_error_rate", 1.0)
        self.max_latency_ratio = _number(max_latency_ratio, "max_latency_ratio")
        confidence = _number(confidence, "confidence", 1.0)
        if not 0.5 <= confidence < 1:
            raise ValueError(f"confidence is a probability from 0.5 to below 1, got {confidence!r}")
        self.confidence = confidence
        self._z = NormalDist().inv_cdf(0.5 + confidence / 2)
        # two quantile intervals make one ratio interval: each at half the risk (Bonferroni)
        self._z_quantile = NormalDist().inv_cdf(1 - (1 - confidence) / 4)
        if latency_quantile not in _QUANTILE_SHARES:
            raise ValueError(f"latency_quantile is 'p50', 'p95' or 'p99', got {latency_quantile!r}")
        self.latency_quantile = latency_quantile
        if latency is not None and latency not in LATENCY_MEASURES:
            raise ValueError(
                f"latency is 'auto', 'wall', 'cpu' or None (no latency check), got {latency!r}"
            )
        self.latency = latency

    def __repr__(self) -> str:
        return (
            f"Gate(min_comparisons={self.min_comparisons}, max_mismatch_rate="
            f"{self.max_mismatch_rate:g}, max_error_rate={self.max_error_rate:g}, "
            f"max_latency_ratio={self.max_latency_ratio:g}, confidence={self.confidence:g}, "
            f"latency_quantile={self.latency_quantile!r}, latency={self.latency!r})"
        )

    def _rate(self, name: str, count: int, trials: int, threshold: float) -> Check:
        low, high = wilson(count, trials, self._z)
        value = count / trials if trials else None
        if high < threshold:
            verdict: Verdict = "promote"
            relation = "below"
        elif low > threshold:
            verdict, relation = "rollback", "above"
        else:
            verdict, relation = "hold", "not clearly below"
        shown = "-" if value is None else f"{value:.4%}"
        detail = (
            f"{name} {shown} ({count} of {trials}; {self.confidence:.0%} interval {low:.4%} to "
            f"{high:.4%}) is {relation} {threshold:.4%}"
        )
        return Check(name, verdict, value, low, high, threshold, detail)

    def _latency(self, routes: list[RouteReport], comparisons: int) -> Check:
        name = f"latency ratio {self.latency_quantile}"
        share = _QUANTILE_SHARES[self.latency_quantile]
        measured: list[tuple[str, str, float, float, float | None]] = []
        for route in routes:
            measure = self._measure(route)
            histograms = route.latency_histogram if measure == "wall" else route.cpu_histogram
            old = quantile_interval(histograms.get("old", []), share, self._z_quantile)
            new = quantile_interval(histograms.get("new", []), share, self._z_quantile)
            if old is None or new is None or old[0] <= 0:
                continue
            low = new[1] / old[2] if old[2] else 0.0
            high = None if new[2] is None or old[1] <= 0 else new[2] / old[1]
            measured.append((route.route, measure, new[0] / old[0], low, high))
        if not measured:
            return Check(
                name, "hold", None, None, None, self.max_latency_ratio,
                f"{name}: no latencies of both versions measured the same way yet",
            )  # fmt: skip
        limit = self.max_latency_ratio
        worst = max(measured, key=lambda m: (m[3], m[2]))  # the most clearly slow route
        where, measure, value, low, high = worst
        shown = "inf" if high is None else f"{high:.2f}x"
        what = f"{name} new/old ({measure} time) {value:.2f}x ({self.confidence:.0%} interval "
        what += f"{low:.2f}x to {shown}"
        what += f", route {where})" if len(routes) > 1 else ")"
        verdict: Verdict
        if low > limit and comparisons < self.min_comparisons:
            verdict = "hold"  # a latency never rolls back on little evidence
            detail = (
                f"{what} is above {limit:.2f}x, judged after {self.min_comparisons} comparisons"
            )
        elif low > limit:
            verdict, detail = "rollback", f"{what} is above {limit:.2f}x"
        elif all(m[4] is not None and m[4] <= limit for m in measured):
            verdict, detail = "promote", f"{what} is within {limit:.2f}x"
        else:
            verdict, detail = "hold", f"{what} is not clearly within {limit:.2f}x"
        return Check(name, verdict, value, low, high, limit, detail)

    def _measure(self, route: RouteReport) -> str:
        if self.latency != "auto":
            return str(self.latency)
        both = all(route.latency_histogram.get(label) for label in ("old", "new"))
        return "wall" if both else "cpu"

    def evaluate(self, report: Report | RouteReport | Iterable[RouteReport]) -> Decision:
        """Decide from a report (all its routes together), one route, or several."""
        if isinstance(report, Report):
            routes = list(report.routes)
        elif isinstance(report, RouteReport):
            routes = [report]
        else:
            routes = list(report)
        comparisons = sum(r.comparisons for r in routes)
        mismatches = sum(r.mismatches for r in routes)
        new_only_errors = sum(r.new_only_errors for r in routes)
        checks = [
            self._rate("mismatch rate", mismatches, comparisons, self.max_mismatch_rate),
            self._rate(
                "error rate", min(new_only_errors, comparisons), comparisons, self.max_error_rate
            ),
        ]
        if self.latency is not None:
            checks.append(self._latency(routes, comparisons))
        verdict = max((c.verdict for c in checks), key=_SEVERITY.__getitem__)
        if comparisons < self.min_comparisons and verdict == "promote":
            verdict = "hold"
            checks.append(
                Check(
                    "comparisons",
                    "hold",
                    comparisons,
                    None,
                    None,
                    self.min_comparisons,
                    f"{comparisons} comparisons of the {self.min_comparisons} needed",
                )
            )
        return Decision(verdict, tuple(checks), comparisons, tuple(r.route for r in routes))


def quantile_interval(
    histogram: list[list[float]], share: float, z: float
) -> tuple[float, float, float | None] | None:
    """The ``share`` quantile of a ``[[value, count], ...]`` histogram (ascending), with a
    distribution-free confidence interval: the order statistics at the binomial ranks
    ``n*share -/+ z*sqrt(n*share*(1-share))``. The low end is 0 and the high end None
    (unbounded) where those ranks fall outside the sample. None if the histogram is empty."""
    n = sum(int(count) for _, count in histogram)
    if n == 0:
        return None

    def at(rank: int) -> float:
        seen = 0
        for value, count in histogram:
            seen += int(count)
            if seen >= rank:
                return float(value)
        return float(histogram[-1][0])

    half = z * math.sqrt(n * share * (1 - share))
    low_rank = math.floor(n * share - half)
    high_rank = math.ceil(n * share + half)
    estimate = at(max(1, math.ceil(share * n)))
    low = at(low_rank) if low_rank >= 1 else 0.0
    high = at(high_rank) if high_rank <= n else None
    return estimate, low, high
