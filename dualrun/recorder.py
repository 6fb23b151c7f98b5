"""Observations of shadowed calls, and the bounded aggregate they add up to.

Memory does not grow with the number of calls: counts, log-bucketed latency histograms,
divergence groups capped in number with a few examples each (as Diffy keeps five per field), and
a per-minute timeline capped in length. Everything is built from :class:`Observation` alone, so
an aggregate rebuilt from an event log equals the one kept in the process.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from dualrun.compare import Difference, generalize

EXAMPLES_PER_GROUP = 5
MAX_GROUPS = 200
TIMELINE_MINUTES = 24 * 60
_SUB_BITS = 4  # histogram: 16 buckets per power of two, so quantiles are within ~3%
_EXACT = 2 << _SUB_BITS  # below this many ns, a bucket per value

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


def bucket_of(ns: int) -> int:
    """Histogram bucket of a duration: its bit length and the next four bits (integer ops)."""
    if ns < _EXACT:
        return max(ns, 0)
    length = ns.bit_length()
    return (length << _SUB_BITS) | ((ns >> (length - _SUB_BITS - 1)) & ((1 << _SUB_BITS) - 1))


def bucket_value(bucket: int) -> float:
    """The middle of a bucket's range, in ns."""
    if bucket < _EXACT:
        return float(bucket)
    length, mantissa = bucket >> _SUB_BITS, bucket & ((1 << _SUB_BITS) - 1)
    width = 1 << (length - _SUB_BITS - 1)
    return ((1 << _SUB_BITS) + mantissa) * width + width / 2


class Histogram:
    """Log-bucketed latencies: bounded, mergeable, and deterministic."""

    __slots__ = ("buckets", "count")

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.count = 0

    def add(self, ns: int) -> None:
        bucket = bucket_of(ns)
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
                return bucket_value(bucket)
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
    cpu_ns: dict[str, int] = field(default_factory=lambda: {"old": 0, "new": 0})  # totals
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
        self.compared(obs.old.wall_ns, obs.old.cpu_ns, obs.new.wall_ns, obs.new.cpu_ns, obs.time)
        if obs.status == "match":
            self.matches += 1
        elif obs.status == "noise":
            self.noise += 1
        else:
            self.mismatches += 1
            self.timeline[int(obs.time // 60)][1] += 1
        self._group(self.groups, obs.differences, obs.key)
        self._group(self.noise_groups, obs.noise, obs.key)

    def compared(
        self, old_wall: int, old_cpu: int, new_wall: int, new_cpu: int, when: float
    ) -> None:
        """Count one comparison (its outcome is counted by the caller)."""
        self.comparisons += 1
        self.latency["old"].add(old_wall)
        self.latency["new"].add(new_wall)
        self.cpu_ns["old"] += old_cpu
        self.cpu_ns["new"] += new_cpu
        minute = int(when // 60)
        slot = self.timeline.get(minute)
        if slot is None:
            slot = self.timeline[minute] = [0, 0]
            if len(self.timeline) > TIMELINE_MINUTES:
                del self.timeline[min(self.timeline)]
        slot[0] += 1

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
        self.match_sinks: list[Callable[[str, int, int, int, int, float], None]] = []

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

    def record_match(
        self, route: str, old_wall: int, old_cpu: int, new_wall: int, new_cpu: int
    ) -> None:
        """The common case, kept cheap: both versions agreed and nothing else happened."""
        when = time.time()
        with self._lock:
            aggregate = self._routes.get(route) or self._route(route)
            aggregate.compared(old_wall, old_cpu, new_wall, new_cpu, when)
            aggregate.matches += 1
        for sink in self.match_sinks:
            sink(route, old_wall, old_cpu, new_wall, new_cpu, when)

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
