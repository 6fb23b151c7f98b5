"""What a dispatcher saw, per route: the page a reviewer reads before pressing promote.

A :class:`Report` is plain data built from the aggregates (in process, or rebuilt from event
logs), rendered as text for a terminal, Markdown for a pull request, or JSON with a stable
schema (``"schema": 1``). The renderers read the report and sit above it: :mod:`dualrun.render`
and :mod:`dualrun.html` register themselves in :data:`RENDERERS` (``import dualrun`` imports
them).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from dualrun.recorder import COUNTS, DivergenceGroup, RouteAggregate, bucket_value

SCHEMA_VERSION = 1
Z_95 = 1.959963984540054
QUANTILES = (("p50", 0.50), ("p95", 0.95), ("p99", 0.99))


Renderer = Callable[["Report", "int | None"], str]
RENDERERS: dict[str, Renderer] = {}
"""A renderer by format (``"text"``, ``"markdown"``, ``"html"``), for ``Report.to_<format>``."""


def wilson(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a proportion; (0, 1) when there are no trials."""
    if trials <= 0:
        return 0.0, 1.0
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class Divergence:
    """A group of differences with one signature (generalised path + kind)."""

    path: str
    kind: str
    count: int
    share: float  # of the route's comparisons: the calls with this divergence, each call once
    examples: list[dict[str, Any]]


@dataclass
class RouteReport:
    """One route's numbers."""

    route: str
    # the versions' sources these numbers are about ({"old": ..., "new": ...}; empty if unknown):
    # after a swap, a report from logs has one RouteReport per candidate
    sources: dict[str, str] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=lambda: {"old": 0, "new": 0})
    in_flight: dict[str, int] = field(default_factory=lambda: {"old": 0, "new": 0})
    crossings: int = 0  # method calls that ran in their object's version, not the chosen one
    # calls made outside any dualrun.context: each decided on its own, not sticky per request
    outside_context: int = 0
    # results of one version converted by a migration into what callers expect (results_as)
    results_converted: int = 0
    comparisons: int = 0
    matches: int = 0
    mismatches: int = 0
    noise: int = 0
    timeouts: int = 0
    dropped: int = 0
    skipped: int = 0
    internal_errors: int = 0
    last_internal_error: str | None = None
    errors: dict[str, int] = field(default_factory=lambda: {"old": 0, "new": 0})
    new_only_errors: int = 0  # comparisons where new raised and old did not
    mismatch_rate: float | None = None
    mismatch_rate_ci: tuple[float, float] | None = None
    # Wall-clock latency of runs measured the same way only: both runs of an inline shadow (one
    # thread, random order), and the primary's run otherwise (a shadow on a worker thread is
    # timed by how busy that thread is, not by its code).
    latency_ns: dict[str, dict[str, float | None]] = field(default_factory=dict)
    latency_ratio: dict[str, float | None] = field(default_factory=dict)  # new / old
    # [[ns, count], ...] per version: the distributions behind the quantiles
    latency_histogram: dict[str, list[list[float]]] = field(default_factory=dict)
    # CPU time of every compared run (thread CPU time: comparable wherever a version ran)
    cpu_ns: dict[str, dict[str, float | None]] = field(default_factory=dict)
    cpu_ratio: dict[str, float | None] = field(default_factory=dict)  # new / old
    cpu_histogram: dict[str, list[list[float]]] = field(default_factory=dict)
    divergences: list[Divergence] = field(default_factory=list)
    noise_divergences: list[Divergence] = field(default_factory=list)
    divergences_overflow: int = 0
    timeline: list[list[int]] = field(default_factory=list)  # [minute, comparisons, mismatches]


def _divergences(groups: dict[str, DivergenceGroup], comparisons: int) -> list[Divergence]:
    ordered = sorted(groups.values(), key=lambda g: (-g.count, g.path, g.kind))
    return [
        Divergence(
            g.path, g.kind, g.count, g.count / comparisons if comparisons else 0.0, list(g.examples)
        )
        for g in ordered
    ]


def route_report(
    route: str,
    calls: dict[str, int],
    crossings: int,
    aggregate: RouteAggregate | None,
    outside_context: int = 0,
    results_converted: int = 0,
) -> RouteReport:
    """One route's report from its call counts and its comparison aggregate."""
    report = RouteReport(
        route=route,
        calls=dict(calls),
        crossings=crossings,
        outside_context=outside_context,
        results_converted=results_converted,
    )
    if aggregate is None:
        return report
    for name in COUNTS:  # the aggregate's overflow of signatures is the report's
        setattr(
            report,
            "divergences_overflow" if name == "groups_overflow" else name,
            getattr(aggregate, name),
        )
    report.last_internal_error = aggregate.last_internal_error
    report.errors = dict(aggregate.errors)
    if aggregate.comparisons:
        report.mismatch_rate = aggregate.mismatches / aggregate.comparisons
        report.mismatch_rate_ci = wilson(aggregate.mismatches, aggregate.comparisons)
    for quantiles, ratios, histograms, source in (
        (report.latency_ns, report.latency_ratio, report.latency_histogram, aggregate.latency),
        (report.cpu_ns, report.cpu_ratio, report.cpu_histogram, aggregate.cpu),
    ):
        for label in ("old", "new"):
            histogram = source[label]
            quantiles[label] = {name: histogram.quantile(q) for name, q in QUANTILES}
            histograms[label] = [
                [bucket_value(bucket), count] for bucket, count in sorted(histogram.buckets.items())
            ]
        for name, _ in QUANTILES:
            old, new = quantiles["old"][name], quantiles["new"][name]
            ratios[name] = new / old if old and new is not None else None
    report.divergences = _divergences(aggregate.groups, aggregate.comparisons)
    report.noise_divergences = _divergences(aggregate.noise_groups, aggregate.comparisons)
    report.timeline = [[minute, *counts] for minute, counts in sorted(aggregate.timeline.items())]
    return report


@dataclass
class Report:
    """Per-route counts, comparisons, latencies and divergences.

    ``policy``: the policy's repr. ``routes``: one :class:`RouteReport` per route.
    ``policy_errors``, ``last_policy_error``: calls served by old because the policy failed,
    and the last failure. ``dropped_events``: event-log lines lost to a full queue.
    ``pending_interceptions``: ``intercept()`` targets whose host module is not imported yet.
    Read from logs with bounded memory: ``omitted_routes`` (``omitted_routes_at_least``: a lower
    bound), ``omitted_calls`` and ``omitted_comparisons`` are what lies beyond ``max_routes``;
    ``uncounted_divergences``: divergence lines that could not be held until a summary covered
    them.
    """

    policy: str
    routes: list[RouteReport] = field(default_factory=list)
    policy_errors: int = 0
    last_policy_error: str | None = None
    dropped_events: int = 0  # event-log lines lost to a full queue
    # Read from logs, memory is bounded: routes beyond the first max_routes are counted only,
    # and divergence lines that could not be held until a summary covered them are counted.
    omitted_routes: int = 0
    omitted_routes_at_least: bool = False  # so many that they were counted up to a bound
    omitted_calls: int = 0
    omitted_comparisons: int = 0
    max_routes: int | None = None
    uncounted_divergences: int = 0
    # intercept() targets whose host module is not imported yet: their callers are not routed
    pending_interceptions: list[str] = field(default_factory=list)

    def route(self, name: str) -> RouteReport:
        """The report of the route ``name`` (``"pkg.mod:qualname"``); KeyError if absent."""
        for route in self.routes:
            if route.route == name:
                return route
        raise KeyError(
            f"no route {name!r} in this report; routes: {[r.route for r in self.routes]}"
        )

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (``"schema": 1``)."""
        return {"schema": SCHEMA_VERSION, **asdict(self)}

    def to_json(self, top: int | None = None) -> str:
        """The report as JSON (schema 1); ``top`` limits the divergences listed per route."""
        data = self.to_dict()
        if top is not None:
            for route in data["routes"]:
                route["divergences"] = route["divergences"][:top]
                route["noise_divergences"] = route["noise_divergences"][:top]
        return json.dumps(data, indent=2, sort_keys=True)

    def to_text(self, top: int | None = None) -> str:
        """Aligned text for a terminal; ``top`` limits the divergences shown per route."""
        return RENDERERS["text"](self, top)

    def to_markdown(self, top: int | None = None) -> str:
        """Markdown that pastes into a pull request; ``top`` limits the divergences per route."""
        return RENDERERS["markdown"](self, top)

    def to_html(self, top: int | None = None) -> str:
        """One self-contained page (no network, no CDN) with charts per route; ``top`` limits
        the divergences listed per route."""
        return RENDERERS["html"](self, top)
