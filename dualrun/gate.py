"""The gate: promote, hold or roll back, decided from the evidence with confidence bounds.

Each check has three outcomes, as Argo Rollouts' analysis does: it passes when the bound on the
safe side clears the threshold, fails when the bound on the unsafe side does, and is
inconclusive otherwise. Rates use the Wilson score interval at the gate's confidence: a mismatch
rate whose upper bound is below ``max_mismatch_rate`` passes, one whose lower bound is above it
fails. The verdict is ``rollback`` if any check fails, ``promote`` if all pass, else ``hold``.
"""

from __future__ import annotations

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
            return f"{self.name} {self.value:.2f}x"
        if self.name == "comparisons":
            return f"{self.value:.0f} of {self.threshold:.0f} comparisons"
        return f"{self.name} {self.value:.2%} [{self.low or 0:.2%}, {self.high or 0:.2%}]"


@dataclass(frozen=True)
class Decision:
    """What the gate decided, and why."""

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


class Gate:
    """Thresholds a candidate must meet, and the confidence the decision needs.

    ``max_error_rate`` counts the calls where the new version raised and the old one did not
    (over the comparisons), so inputs both versions reject are not held against the new one.
    ``max_latency_ratio`` compares the new version's ``latency_quantile`` with the old one's.
    """

    def __init__(
        self,
        min_comparisons: int = 500,
        max_mismatch_rate: float = 0.001,
        max_error_rate: float = 0.001,
        max_latency_ratio: float = 1.25,
        confidence: float = 0.95,
        latency_quantile: str = "p95",
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
        if latency_quantile not in ("p50", "p95", "p99"):
            raise ValueError(f"latency_quantile is 'p50', 'p95' or 'p99', got {latency_quantile!r}")
        self.latency_quantile = latency_quantile

    def __repr__(self) -> str:
        return (
            f"Gate(min_comparisons={self.min_comparisons}, max_mismatch_rate="
            f"{self.max_mismatch_rate:g}, max_error_rate={self.max_error_rate:g}, "
            f"max_latency_ratio={self.max_latency_ratio:g}, confidence={self.confidence:g})"
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

    def _latency(self, routes: Iterable[RouteReport]) -> Check:
        measured = (r.latency_ratio.get(self.latency_quantile) for r in routes)
        ratios = [ratio for ratio in measured if ratio is not None]
        name = f"latency ratio {self.latency_quantile}"
        if not ratios:
            return Check(
                name,
                "hold",
                None,
                None,
                None,
                self.max_latency_ratio,
                f"{name}: no latencies measured yet",
            )
        worst = max(ratios)
        verdict: Verdict = "promote" if worst <= self.max_latency_ratio else "rollback"
        relation = "within" if verdict == "promote" else "above"
        return Check(
            name,
            verdict,
            worst,
            worst,
            worst,
            self.max_latency_ratio,
            f"{name} new/old {worst:.2f}x is {relation} {self.max_latency_ratio:.2f}x",
        )

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
            self._latency(routes),
        ]
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
