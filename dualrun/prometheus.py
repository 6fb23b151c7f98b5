"""Evidence from Prometheus: what every process of the fleet counted, as the gate reads it.

Fleets export ``dualrun.otel``'s metrics to Prometheus (each process scraped on its own);
:class:`PrometheusEvidence` reads them back through Prometheus' HTTP query API and adds them up
across processes and hosts into the per-route numbers a :class:`~dualrun.Gate` evaluates —
as Argo Rollouts and Flagger judge a canary. Standard library only (``urllib``).

Counts are the sums of the processes' counters, either over their lifetime (minus a
:meth:`~PrometheusEvidence.mark`, e.g. taken when a rollout step began) or over a trailing
``window`` (``increase(...[window])``). Latency quantiles are interpolated in the summed
histogram buckets the way Prometheus' ``histogram_quantile`` does.
"""

from __future__ import annotations

import json
import math
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from dualrun.gate import Decision, Gate
from dualrun.report import QUANTILES, Report, RouteReport, wilson

# The names OpenTelemetry's Prometheus exporter gives dualrun.otel's instruments.
COUNTERS = {
    "comparisons": "dualrun_comparisons_total",
    "mismatches": "dualrun_mismatches_total",
    "new_only_errors": "dualrun_new_only_errors_total",
}
CALLS = "dualrun_calls_total"
ERRORS = "dualrun_errors_total"
DROPS = "dualrun_drops_total"
BUCKETS = "dualrun_call_duration_seconds_bucket"
ROUTE, VERSION, REASON = "dualrun_route", "dualrun_version", "dualrun_reason"
DROP_FIELDS = {  # dualrun.drops' reason -> the report's field
    "queue_full": "dropped",
    "not_copyable": "skipped",
    "timeout": "timeouts",
    "internal_error": "internal_errors",
}
_WINDOW = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")


class PrometheusError(RuntimeError):
    """Prometheus could not be asked, or did not answer a query."""


@dataclass
class _Route:
    """One route's numbers as summed over the fleet."""

    counts: dict[str, float] = field(default_factory=dict)
    calls: dict[str, float] = field(default_factory=dict)
    errors: dict[str, float] = field(default_factory=dict)
    buckets: dict[str, dict[float, float]] = field(default_factory=dict)  # version -> le -> n

    def minus(self, before: _Route | None) -> _Route:
        if before is None:
            return self
        return _Route(
            _sub(self.counts, before.counts),
            _sub(self.calls, before.calls),
            _sub(self.errors, before.errors),
            {
                version: _sub(b, before.buckets.get(version, {}))
                for version, b in self.buckets.items()
            },
        )


def _sub(now: dict[Any, float], before: dict[Any, float]) -> dict[Any, float]:
    # A process that restarted counts from zero again: never below zero.
    return {k: max(0.0, v - before.get(k, 0.0)) for k, v in now.items()}


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """The ``q`` quantile of cumulative ``{upper bound: count}`` buckets, interpolated
    linearly within a bucket as ``histogram_quantile`` does (None without observations)."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    total = buckets[bounds[-1]]
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower  # beyond the highest finite bound: its value is the best known
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


def _distribution(buckets: dict[float, float]) -> list[list[float]]:
    """Cumulative ``{upper bound (s): count}`` as the report's ``[[ns, count], ...]``: each
    bucket's count at its middle (the highest finite bound for the last one)."""
    rows: list[list[float]] = []
    lower, below = 0.0, 0.0
    for bound in sorted(buckets):
        count = round(buckets[bound] - below)
        value = lower if math.isinf(bound) else (lower + bound) / 2
        if count > 0:
            rows.append([value * 1e9, count])
        if not math.isinf(bound):
            lower = bound
        below = buckets[bound]
    return rows


class PrometheusEvidence:
    """The fleet's comparisons, errors and latencies from Prometheus, for a gate.

    ``url``: Prometheus' base URL (``http://prometheus:9090``). ``selector``: label matchers
    that pick this application's series, e.g. ``'job="shop"'``. ``window``: only what was
    counted in this trailing range (``"10m"``), else everything since the processes started
    (less what :meth:`mark` saw). ``timeout``: seconds per query.
    """

    def __init__(
        self,
        url: str,
        *,
        selector: str = "",
        window: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        parsed = urllib.parse.urlparse(url) if isinstance(url, str) else None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"url is Prometheus' http(s) base URL, got {url!r}")
        self.url = url.rstrip("/")
        if not isinstance(selector, str) or any(c in selector for c in "{}"):
            raise ValueError(
                f"selector is label matchers without braces, e.g. 'job=\"shop\"', got {selector!r}"
            )
        self.selector = selector.strip()
        if window is not None and (not isinstance(window, str) or not _WINDOW.match(window)):
            raise ValueError(
                f"window is a Prometheus duration such as '5m' or None, got {window!r}"
            )
        self.window = window
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise ValueError(f"timeout is a number of seconds > 0, got {timeout!r}")
        self.timeout = float(timeout)
        self._baseline: dict[str, _Route] = {}

    def __repr__(self) -> str:
        return (
            f"PrometheusEvidence({self.url!r}, selector={self.selector!r}, window={self.window!r})"
        )

    # -- the query API ---------------------------------------------------------------------

    def query(self, promql: str) -> list[tuple[dict[str, str], float]]:
        """Run an instant query; the result's series as (labels, value)."""
        address = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        try:
            with urllib.request.urlopen(address, timeout=self.timeout) as answer:
                data = json.loads(answer.read())
        except (OSError, ValueError) as exc:
            raise PrometheusError(f"querying {self.url} for {promql!r}: {exc}") from exc
        if data.get("status") != "success":
            raise PrometheusError(f"{self.url} refused {promql!r}: {data.get('error', data)}")
        result = data["data"]["result"]
        return [(dict(series["metric"]), float(series["value"][1])) for series in result]

    def _sum(self, metric: str, by: Iterable[str]) -> list[tuple[dict[str, str], float]]:
        series = f"{metric}{{{self.selector}}}"
        if self.window is not None:
            series = f"increase({series}[{self.window}])"
        return self.query(f"sum by ({', '.join(by)}) ({series})")

    # -- evidence --------------------------------------------------------------------------

    def totals(self) -> dict[str, _Route]:
        """Every route's numbers, summed over all the series the selector picks."""
        routes: dict[str, _Route] = {}

        def route(labels: dict[str, str]) -> _Route:
            return routes.setdefault(labels.get(ROUTE, ""), _Route())

        for name, metric in COUNTERS.items():
            for labels, value in self._sum(metric, [ROUTE]):
                route(labels).counts[name] = value
        for labels, value in self._sum(DROPS, [ROUTE, REASON]):
            field_name = DROP_FIELDS.get(labels.get(REASON, ""))
            if field_name is not None:
                route(labels).counts[field_name] = value
        for labels, value in self._sum(CALLS, [ROUTE, VERSION]):
            route(labels).calls[labels.get(VERSION, "")] = value
        for labels, value in self._sum(ERRORS, [ROUTE, VERSION]):
            route(labels).errors[labels.get(VERSION, "")] = value
        for labels, value in self._sum(BUCKETS, [ROUTE, VERSION, "le"]):
            histogram = route(labels).buckets.setdefault(labels.get(VERSION, ""), {})
            histogram[float(labels["le"])] = value
        routes.pop("", None)
        return routes

    def mark(self) -> None:
        """From now on, count only what is added after this moment (a rollout step's start)."""
        self._baseline = self.totals()

    def routes(self) -> list[RouteReport]:
        """Per-route evidence in the shape :meth:`dualrun.Gate.evaluate` reads."""
        return [
            _route_report(name, numbers.minus(self._baseline.get(name)))
            for name, numbers in sorted(self.totals().items())
        ]

    def report(self) -> Report:
        """The fleet's numbers as a :class:`~dualrun.Report` (counts and latencies; the
        divergence examples live in the event logs)."""
        return Report(policy=repr(self), routes=self.routes())

    def evaluate(self, gate: Gate) -> Decision:
        """``gate``'s decision on what the whole fleet saw."""
        return gate.evaluate(self.routes())


def _route_report(name: str, numbers: _Route) -> RouteReport:
    report = RouteReport(route=name)
    report.calls = {v: round(numbers.calls.get(v, 0.0)) for v in ("old", "new")}
    report.errors = {v: round(numbers.errors.get(v, 0.0)) for v in ("old", "new")}
    for counted in ("comparisons", "mismatches", "new_only_errors", *DROP_FIELDS.values()):
        setattr(report, counted, round(numbers.counts.get(counted, 0.0)))
    report.matches = report.comparisons - report.mismatches
    if report.comparisons:
        report.mismatch_rate = report.mismatches / report.comparisons
        report.mismatch_rate_ci = wilson(report.mismatches, report.comparisons)
    for version in ("old", "new"):
        buckets = numbers.buckets.get(version, {})
        report.latency_histogram[version] = _distribution(buckets)
        report.latency_ns[version] = {
            label: None if (value := quantile(q, buckets)) is None else value * 1e9
            for label, q in QUANTILES
        }
    for label, _ in QUANTILES:
        old, new = report.latency_ns["old"][label], report.latency_ns["new"][label]
        report.latency_ratio[label] = new / old if old and new is not None else None
    return report
