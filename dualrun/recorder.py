"""Observations of shadowed calls, and the bounded aggregate they add up to.

Memory does not grow with the number of calls: counts, log-bucketed latency histograms,
divergence groups capped in number with a few examples each (as Diffy keeps five per field), and
a per-minute timeline capped in length. Everything is built from :class:`Observation` alone, so
an aggregate rebuilt from an event log equals the one kept in the process.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from dualrun.compare import Difference, generalize

EXAMPLES_PER_GROUP = 5
MAX_GROUPS = 200
TIMELINE_MINUTES = 24 * 60
_GROWTH = math.log(1.02)  # histogram buckets 2% apart: quantiles within 1%

STATUSES = ("match", "mismatch", "noise", "error", "timeout")


@dataclass(frozen=True)
class Outcome:
    """What one version did with one call, in short form."""

    label: str
    value: str | None  # short repr of the return value
    error: str | None  # "qualified.Type: message" if it raised
    wall_ns: int
    cpu_ns: int
    timed_out: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "value": self.value,
            "error": self.error,
            "wall_ns": self.wall_ns,
            "cpu_ns": self.cpu_ns,
            "timed_out": self.timed_out,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Outcome:
        return cls(
            str(data["label"]),
            data.get("value"),
            data.get("error"),
            int(data["wall_ns"]),
            int(data["cpu_ns"]),
            bool(data.get("timed_out", False)),
        )


@dataclass(frozen=True)
class Observation:
    """One shadowed call: both outcomes, and where they differ."""

    route: str
    key: str | None
    primary: str
    old: Outcome
    new: Outcome
    differences: tuple[Difference, ...]  # mismatches (noise and ignored paths removed)
    noise: tuple[Difference, ...]  # differences on paths that differ between runs of one version
    status: str  # one of STATUSES
    time: float  # seconds since the epoch

    def to_dict(self) -> dict[str, Any]:
        return {
            "route": self.route,
            "key": self.key,
            "primary": self.primary,
            "old": self.old.to_dict(),
            "new": self.new.to_dict(),
            "differences": [d.to_dict() for d in self.differences],
            "noise": [d.to_dict() for d in self.noise],
            "status": self.status,
            "time": self.time,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Observation:
        return cls(
            route=str(data["route"]),
            key=data.get("key"),
            primary=str(data["primary"]),
            old=Outcome.from_dict(data["old"]),
            new=Outcome.from_dict(data["new"]),
            differences=tuple(Difference(**d) for d in data.get("differences", ())),
            noise=tuple(Difference(**d) for d in data.get("noise", ())),
            status=str(data["status"]),
            time=float(data["time"]),
        )


class Histogram:
    """Log-bucketed latencies: bounded, mergeable, and deterministic."""

    __slots__ = ("buckets", "count")

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.count = 0

    def add(self, ns: int) -> None:
        bucket = int(math.log(ns) / _GROWTH) if ns > 1 else 0
        self.buckets[bucket] = self.buckets.get(bucket, 0) + 1
        self.count += 1

    def quantile(self, q: float) -> float | None:
        """The latency in ns below which a share ``q`` of calls fell (None if empty)."""
        if not self.count:
            return None
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for bucket in sorted(self.buckets):
            seen += self.buckets[bucket]
            if seen >= rank:
                return math.exp((bucket + 0.5) * _GROWTH) if bucket else 1.0
        raise AssertionError("unreachable")  # pragma: no cover

    def merge(self, other: Histogram) -> None:
        for bucket, n in other.buckets.items():
            self.buckets[bucket] = self.buckets.get(bucket, 0) + n
        self.count += other.count


@dataclass
class DivergenceGroup:
    """All differences with one signature (generalised path + kind)."""

    path: str
    kind: str
    count: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)

    def add(self, difference: Difference, key: str | None) -> None:
        self.count += 1
        if len(self.examples) < EXAMPLES_PER_GROUP:
            self.examples.append(
                {"path": difference.path, "old": difference.old, "new": difference.new, "key": key}
            )


@dataclass
class RouteAggregate:
    """The numbers of one route."""

    route: str
    comparisons: int = 0
    matches: int = 0
    mismatches: int = 0
    noise: int = 0
    timeouts: int = 0
    dropped: int = 0
    skipped: int = 0  # sampled calls that could not be shadowed (arguments not copyable, ...)
    internal_errors: int = 0  # a comparator, copier or cleaner raised
    errors: dict[str, int] = field(default_factory=lambda: {"old": 0, "new": 0})
    latency: dict[str, Histogram] = field(
        default_factory=lambda: {"old": Histogram(), "new": Histogram()}
    )
    cpu: dict[str, Histogram] = field(
        default_factory=lambda: {"old": Histogram(), "new": Histogram()}
    )
    groups: dict[str, DivergenceGroup] = field(default_factory=dict)
    noise_groups: dict[str, DivergenceGroup] = field(default_factory=dict)
    groups_overflow: int = 0  # differences whose signature did not fit in MAX_GROUPS
    timeline: dict[int, list[int]] = field(default_factory=dict)  # minute -> [comparisons, mism.]
    last_internal_error: str | None = None

    def add(self, obs: Observation) -> None:
        for outcome in (obs.old, obs.new):
            if outcome.error is not None:
                self.errors[outcome.label] += 1
        if obs.status == "timeout":
            self.timeouts += 1
            return
        if obs.status == "error":
            self.internal_errors += 1
            return
        self.comparisons += 1
        for outcome in (obs.old, obs.new):
            self.latency[outcome.label].add(outcome.wall_ns)
            self.cpu[outcome.label].add(outcome.cpu_ns)
        if obs.status == "match":
            self.matches += 1
        elif obs.status == "noise":
            self.noise += 1
        else:
            self.mismatches += 1
        self._group(self.groups, obs.differences, obs.key)
        self._group(self.noise_groups, obs.noise, obs.key)
        minute = int(obs.time // 60)
        slot = self.timeline.setdefault(minute, [0, 0])
        slot[0] += 1
        slot[1] += obs.status == "mismatch"
        if len(self.timeline) > TIMELINE_MINUTES:
            del self.timeline[min(self.timeline)]

    def _group(
        self, groups: dict[str, DivergenceGroup], diffs: Iterable[Difference], key: str | None
    ) -> None:
        for difference in diffs:
            group = groups.get(difference.signature)
            if group is None:
                if len(groups) >= MAX_GROUPS:
                    self.groups_overflow += 1
                    continue
                group = groups[difference.signature] = DivergenceGroup(
                    generalize(difference.path), difference.kind
                )
            group.add(difference, key)


class Recorder:
    """Thread-safe home of the aggregates; sinks (such as the event log) see each observation."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._routes: dict[str, RouteAggregate] = {}
        self.sinks: list[Callable[[Observation], None]] = []

    def _route(self, route: str) -> RouteAggregate:
        aggregate = self._routes.get(route)
        if aggregate is None:
            aggregate = self._routes.setdefault(route, RouteAggregate(route))
        return aggregate

    def record(self, obs: Observation) -> None:
        with self._lock:
            self._route(obs.route).add(obs)
        for sink in self.sinks:
            sink(obs)

    def count(self, route: str, what: str, detail: str | None = None) -> None:
        """Count a shadow run that yielded no observation: dropped, skipped, internal_errors."""
        with self._lock:
            aggregate = self._route(route)
            setattr(aggregate, what, getattr(aggregate, what) + 1)
            if detail is not None:
                aggregate.last_internal_error = detail

    def snapshot(self) -> dict[str, RouteAggregate]:
        """A consistent deep copy of every route's aggregate."""
        import copy

        with self._lock:
            return copy.deepcopy(self._routes)
