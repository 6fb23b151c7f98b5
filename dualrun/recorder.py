"""Observations of shadowed calls, and the bounded aggregate they add up to.

Memory does not grow with the number of calls: counts, log-bucketed latency histograms,
divergence groups capped in number with a few examples each (as Diffy keeps five per field), and
a per-minute timeline capped in length. Everything is built from :class:`Observation` alone, so
an aggregate rebuilt from an event log equals the one kept in the process.
"""

from __future__ import annotations

import copy
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from itertools import compress, repeat
from operator import and_, eq, floordiv, le, ne
from typing import Any, Protocol

from dualrun import forks
from dualrun.compare import Difference, generalize
from dualrun.redaction import Redact, safely

EXAMPLES_PER_GROUP = 5
MAX_GROUPS = 200
TIMELINE_MINUTES = 24 * 60
_SUB_BITS = 4  # histogram: 16 buckets per power of two, so quantiles are within ~3%
_EXACT = 2 << _SUB_BITS  # below this many ns, a bucket per value
_MANTISSA = (1 << _SUB_BITS) - 1

STATUSES = ("match", "mismatch", "noise", "timeout")
LABELS = ("old", "new")
NOT_MEASURED = -1  # an outcome's cpu_ns when its thread CPU time was not read
_INT_BOUND = 2**63  # counts and durations read back from a log fit in 64 bits
_MAX_BUCKET = 65 << _SUB_BITS  # bucket_of() of any 64-bit duration is below this
_MAX_TIME = 1e12  # seconds since the epoch (year 33658): what a browser's Date can still show


# -- reading untrusted data back (event logs): exact types, or ValueError/TypeError ------------


def _int(value: object, what: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value < _INT_BOUND:
        raise ValueError(f"{what} is a whole number from {minimum} to 2**63-1")
    return value


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what} is a number, got a {type(value).__name__}")
    if isinstance(value, int) and not -_INT_BOUND < value < _INT_BOUND:
        raise ValueError(f"{what} is out of range")
    if not math.isfinite(value):
        raise ValueError(f"{what} is a finite number, got {value!r}")
    return float(value)


def read_time(value: object, what: str) -> float:
    """Seconds since the epoch read from a log: finite, and within what a report can show."""
    moment = _number(value, what)
    if not -_MAX_TIME < moment < _MAX_TIME:
        raise ValueError(f"{what} is out of range")
    return moment


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} is a string, got a {type(value).__name__}")
    return value


def _optional_text(value: object, what: str) -> str | None:
    return None if value is None else _text(value, what)


def _dict(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{what} is an object, got a {type(value).__name__}")
    return value


def _list(value: object, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"{what} is a list, got a {type(value).__name__}")
    return value


def _label(value: object, what: str) -> str:
    if value not in LABELS:
        raise ValueError(f"{what} is 'old' or 'new'")
    return str(value)


def _per_label(data: dict[str, Any], name: str) -> dict[str, int]:
    values = _dict(data[name], name)
    return {label: _int(values.get(label, 0), f"{name}.{label}") for label in LABELS}


def difference_from_dict(data: object) -> Difference:
    """A :class:`Difference` read back from a log: four strings, nothing else."""
    fields = _dict(data, "a difference")
    if set(fields) != {"path", "kind", "old", "new"}:
        raise ValueError("a difference has the fields path, kind, old and new")
    return Difference(
        *(_text(fields[n], f"difference {n}") for n in ("path", "kind", "old", "new"))
    )


def example_from_dict(data: object) -> dict[str, Any]:
    """One example of a divergence group read back from a log."""
    fields = _dict(data, "an example")
    example: dict[str, Any] = {"path": _text(fields["path"], "example path")}
    for name in ("old", "new", "key"):
        example[name] = _optional_text(fields.get(name), f"example {name}")
    if "traceback" in fields:
        tracebacks = _dict(fields["traceback"], "an example's traceback")
        example["traceback"] = {
            label: _text(tracebacks[label], "a traceback")
            for label in LABELS
            if label in tracebacks
        }
    return example


@dataclass(frozen=True)
class Outcome:
    """What one version did with one call, in short form."""

    label: str
    value: str | None  # short repr of the return value
    error: str | None  # "qualified.Type: message" if it raised
    wall_ns: int
    cpu_ns: int
    timed_out: bool = False
    # the exception's traceback, bounded, for the first examples of each error only
    traceback: str | None = None

    def to_dict(self) -> dict[str, Any]:
        extra = {} if self.traceback is None else {"traceback": self.traceback}
        return {
            **extra,
            "label": self.label,
            "value": self.value,
            "error": self.error,
            "wall_ns": self.wall_ns,
            "cpu_ns": self.cpu_ns,
            "timed_out": self.timed_out,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Outcome:
        data = _dict(data, "an outcome")
        timed_out = data.get("timed_out", False)
        if not isinstance(timed_out, bool):
            raise ValueError("timed_out is true or false")
        return cls(
            _label(data["label"], "an outcome's label"),
            _optional_text(data.get("value"), "value"),
            _optional_text(data.get("error"), "error"),
            _int(data["wall_ns"], "wall_ns", -_INT_BOUND),
            _int(data["cpu_ns"], "cpu_ns", -_INT_BOUND),
            timed_out,
            _optional_text(data.get("traceback"), "traceback"),
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
    # How the two durations were measured: "paired" (one thread, random order: comparable) or
    # "primary" (the shadow ran elsewhere: only the primary's wall time is comparable).
    measured: str = "paired"

    def to_dict(self) -> dict[str, Any]:
        return {
            "route": self.route,
            "measured": self.measured,
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
        """Read back from a log: anything out of shape raises ValueError, TypeError, KeyError."""
        old, new = Outcome.from_dict(data["old"]), Outcome.from_dict(data["new"])
        if (old.label, new.label) != LABELS:
            raise ValueError("the outcomes are labelled 'old' and 'new'")
        status = data["status"]
        if status not in STATUSES:
            raise ValueError(f"status is one of {', '.join(STATUSES)}")
        return cls(
            route=_text(data["route"], "route"),
            key=_optional_text(data.get("key"), "key"),
            primary=_text(data["primary"], "primary"),
            old=old,
            new=new,
            differences=tuple(map(difference_from_dict, _list(data.get("differences", []), "d"))),
            noise=tuple(map(difference_from_dict, _list(data.get("noise", []), "noise"))),
            status=str(status),
            time=read_time(data["time"], "time"),
            measured="primary" if data.get("measured") == "primary" else "paired",
        )


def bucket_of(ns: int) -> int:
    """Histogram bucket of a duration: its bit length and the next four bits (integer ops)."""
    if ns < _EXACT:
        return max(ns, 0)
    length = ns.bit_length()
    return (length << _SUB_BITS) | ((ns >> (length - _SUB_BITS - 1)) & ((1 << _SUB_BITS) - 1))


# The bits a duration keeps in its bucket's lower edge, by bit length: all of them below _EXACT,
# the top 1 + _SUB_BITS above (``ns & _KEPT_BITS[ns.bit_length()]`` is the edge).
_KEPT_BITS = [-1 << max(0, length - _SUB_BITS - 1) for length in range(65)]


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
        # bucket_of(ns), inlined: this runs twice for every shadowed call.
        if ns < _EXACT:
            bucket = max(ns, 0)
        else:
            length = ns.bit_length()
            bucket = (length << _SUB_BITS) | ((ns >> (length - _SUB_BITS - 1)) & _MANTISSA)
        buckets = self.buckets
        buckets[bucket] = buckets.get(bucket, 0) + 1
        self.count += 1

    def add_all(self, durations: Sequence[int]) -> None:
        """:meth:`add` of each, at C speed: a batch's durations are counted by their bucket's lower
        edge (a few distinct ones), and only those go through :func:`bucket_of`."""
        try:
            kept_bits = map(_KEPT_BITS.__getitem__, map(int.bit_length, durations))
            edges = Counter(map(and_, durations, kept_bits))
        except (IndexError, TypeError):  # 2**64 ns and more, or not an int: one at a time
            for ns in durations:
                self.add(ns)
            return
        buckets = self.buckets
        for edge, n in edges.items():  # in order of first appearance, as add() would insert
            bucket = bucket_of(edge)
            buckets[bucket] = buckets.get(bucket, 0) + n
        self.count += len(durations)

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
    """All differences with one signature (generalised path + kind); ``count`` is the number of
    calls that had one (each call once, however many elements of a list differed)."""

    path: str
    kind: str
    count: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)

    def add(
        self, difference: Difference, key: str | None, tracebacks: dict[str, str] | None = None
    ) -> None:
        self.count += 1
        if len(self.examples) < EXAMPLES_PER_GROUP:
            example: dict[str, Any] = {
                "path": difference.path,
                "old": difference.old,
                "new": difference.new,
                "key": key,
            }
            if tracebacks:
                example["traceback"] = tracebacks
            self.examples.append(example)


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
    new_only_errors: int = 0  # comparisons where new raised and old did not
    errors: dict[str, int] = field(default_factory=lambda: {"old": 0, "new": 0})
    latency: dict[str, Histogram] = field(
        default_factory=lambda: {"old": Histogram(), "new": Histogram()}
    )
    cpu_ns: dict[str, int] = field(default_factory=lambda: {"old": 0, "new": 0})  # totals
    # CPU time per call: thread CPU time counts only the thread's own work, so it is comparable
    # wherever each version ran (``latency`` holds wall times measured the same way only).
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
        if obs.new.error is not None and obs.old.error is None:
            self.new_only_errors += 1
        if obs.status == "timeout":
            self.timeouts += 1
            return
        slot = self.compared(
            obs.old.wall_ns,
            obs.old.cpu_ns,
            obs.new.wall_ns,
            obs.new.cpu_ns,
            obs.time,
            None if obs.measured == "paired" else obs.primary,
        )
        if obs.status == "match":
            self.matches += 1
        elif obs.status == "noise":
            self.noise += 1
        else:
            self.mismatches += 1
            slot[1] += 1
        tracebacks = {o.label: o.traceback for o in (obs.old, obs.new) if o.traceback is not None}
        self._group(self.groups, obs.differences, obs.key, tracebacks)
        self._group(self.noise_groups, obs.noise, obs.key)

    def compared(
        self,
        old_wall: int,
        old_cpu: int,
        new_wall: int,
        new_cpu: int,
        when: float,
        primary_only: str | None = None,
    ) -> list[int]:
        """Count one comparison (its outcome is counted by the caller); return its minute's
        ``[comparisons, mismatches]`` slot (a detached one if the minute is too old to keep).

        ``primary_only``: the label of the primary when the shadow ran on another thread; only
        the primary's wall time is then kept, as a shadow's wall time on a busy worker is not
        comparable with a caller's."""
        self.comparisons += 1
        if primary_only != "new":
            self.latency["old"].add(old_wall)
        if primary_only != "old":
            self.latency["new"].add(new_wall)
        if old_cpu >= 0:  # NOT_MEASURED (-1) otherwise: see Shadow(cpu_time=...)
            self.cpu["old"].add(old_cpu)
            self.cpu_ns["old"] += old_cpu
        if new_cpu >= 0:
            self.cpu["new"].add(new_cpu)
            self.cpu_ns["new"] += new_cpu
        return self._count_minute(when)

    def _count_minute(self, when: float) -> list[int]:
        """One more comparison in ``when``'s minute, keeping the latest TIMELINE_MINUTES."""
        minute = int(when // 60)
        slot = self.timeline.get(minute)
        if slot is None:
            slot = self.timeline[minute] = [0, 0]
            if len(self.timeline) > TIMELINE_MINUTES:
                del self.timeline[min(self.timeline)]
        slot[0] += 1
        return slot

    def matched(self, columns: Sequence[Sequence[Any]]) -> None:
        """:meth:`compared` and one more match for each of this route's buffered matches, given
        as columns (routes, old walls, old CPUs, new walls, new CPUs, times, primary_only), a
        column at a time at C speed: the same numbers, in the same order, for far less work."""
        _, old_walls, old_cpus, new_walls, new_cpus, whens, onlys = columns
        n = len(whens)
        self.comparisons += n
        self.matches += n
        if onlys.count(None) != n:  # shadows that ran elsewhere: their primary's wall time only
            old_walls = tuple(compress(old_walls, map(ne, onlys, repeat("new"))))
            new_walls = tuple(compress(new_walls, map(ne, onlys, repeat("old"))))
        self.latency["old"].add_all(old_walls)
        self.latency["new"].add_all(new_walls)
        for label, cpus in (("old", old_cpus), ("new", new_cpus)):
            if cpus.count(NOT_MEASURED) == n:  # see Shadow(cpu_time=...)
                continue
            if min(cpus) < 0:
                cpus = tuple(filter(partial(le, 0), cpus))
            self.cpu[label].add_all(cpus)
            self.cpu_ns[label] += sum(cpus)
        timeline = self.timeline
        first = int(min(whens) // 60)
        minutes: dict[int, int] = (
            {first: n}
            if first == int(max(whens) // 60)  # floor is monotonic: all in one minute
            else Counter(map(int, map(floordiv, whens, repeat(60))))
        )
        new_minutes = sum(minute not in timeline for minute in minutes)
        if len(timeline) + new_minutes > TIMELINE_MINUTES:  # some are dropped: as compared() does
            for when in whens:
                self._count_minute(when)
            return
        for minute, count in minutes.items():  # in order of first appearance, as compared() adds
            slot = timeline.get(minute)
            if slot is None:
                timeline[minute] = [count, 0]
            else:
                slot[0] += count

    def _group(
        self,
        groups: dict[str, DivergenceGroup],
        diffs: Iterable[Difference],
        key: str | None,
        tracebacks: dict[str, str] | None = None,
    ) -> None:
        seen: set[str] = set()
        for difference in diffs:
            signature = difference.signature
            if signature in seen:
                continue  # a group counts calls: $.lines[*].qty once however many lines differ
            seen.add(signature)
            group = groups.get(signature)
            if group is None:
                if len(groups) >= MAX_GROUPS:
                    self.groups_overflow += 1
                    continue
                group = groups[signature] = DivergenceGroup(
                    generalize(difference.path), difference.kind
                )
            group.add(difference, key, tracebacks if difference.kind == "exception" else None)

    # -- serialisation and arithmetic, for event-log summaries --------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "route": self.route,
            **{name: getattr(self, name) for name in COUNTS},
            "errors": dict(self.errors),
            "latency": {
                k: {str(b): n for b, n in h.buckets.items()} for k, h in self.latency.items()
            },
            "cpu_ns": dict(self.cpu_ns),
            "cpu": {k: {str(b): n for b, n in h.buckets.items()} for k, h in self.cpu.items()},
            "groups": [_group_dict(g) for g in self.groups.values()],
            "noise_groups": [_group_dict(g) for g in self.noise_groups.values()],
            "timeline": {str(minute): counts for minute, counts in self.timeline.items()},
            "last_internal_error": self.last_internal_error,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RouteAggregate:
        """Read back from a log: anything out of shape raises ValueError, TypeError, KeyError."""
        data = _dict(data, "an aggregate")
        aggregate = cls(_text(data["route"], "route"))
        for name in COUNTS:
            setattr(aggregate, name, _int(data.get(name, 0), name))
        if aggregate.mismatches > aggregate.comparisons:
            raise ValueError("more mismatches than comparisons")
        aggregate.errors = _per_label(data, "errors")
        aggregate.cpu_ns = _per_label(data, "cpu_ns")
        for name, into in (("latency", aggregate.latency), ("cpu", aggregate.cpu)):
            given = _dict(data[name] if name == "latency" else data.get(name, {}), name)
            for label in LABELS:
                histogram = into[label]
                for bucket, n in _dict(given.get(label, {}), name).items():
                    number = int(bucket)
                    if not 0 <= number < _MAX_BUCKET:
                        raise ValueError(f"{name} bucket {number} does not exist")
                    histogram.buckets[number] = _int(n, "a bucket's count")
                    histogram.count += histogram.buckets[number]
        for key, target in (("groups", aggregate.groups), ("noise_groups", aggregate.noise_groups)):
            for g in _list(data.get(key, []), key):
                g = _dict(g, "a group")
                examples = _list(g["examples"], "examples")[:EXAMPLES_PER_GROUP]
                group = DivergenceGroup(
                    _text(g["path"], "a group's path"),
                    _text(g["kind"], "a group's kind"),
                    _int(g["count"], "a group's count"),
                    [example_from_dict(x) for x in examples],
                )
                target[f"{group.path} {group.kind}"] = group
        for minute, counts in _dict(data["timeline"], "timeline").items():
            pair = _list(counts, "a minute of the timeline")
            number = int(minute)
            if len(pair) != 2 or not -_MAX_TIME < 60 * number < _MAX_TIME:
                raise ValueError("the timeline maps a minute to [comparisons, mismatches]")
            aggregate.timeline[number] = [_int(pair[0], "comparisons"), _int(pair[1], "mismatches")]
        aggregate.last_internal_error = _optional_text(
            data.get("last_internal_error"), "last_internal_error"
        )
        return aggregate

    def merge(self, other: RouteAggregate) -> None:
        """Add ``other``'s numbers to these (across processes, or a summary's delta)."""
        for name in COUNTS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for label in ("old", "new"):
            self.errors[label] += other.errors[label]
            self.latency[label].merge(other.latency[label])
            self.cpu[label].merge(other.cpu[label])
            self.cpu_ns[label] += other.cpu_ns[label]
        for mine, theirs in ((self.groups, other.groups), (self.noise_groups, other.noise_groups)):
            for signature, group in theirs.items():
                target = mine.get(signature)
                if target is None:
                    if len(mine) >= MAX_GROUPS:
                        self.groups_overflow += group.count
                        continue
                    target = mine[signature] = DivergenceGroup(group.path, group.kind)
                target.count += group.count
                room = EXAMPLES_PER_GROUP - len(target.examples)
                target.examples.extend(group.examples[:room])
        for minute, (compared, mismatched) in other.timeline.items():
            slot = self.timeline.setdefault(minute, [0, 0])
            slot[0] += compared
            slot[1] += mismatched
        if len(self.timeline) > TIMELINE_MINUTES:  # the latest minutes, as compared() keeps
            for minute in sorted(self.timeline)[: len(self.timeline) - TIMELINE_MINUTES]:
                del self.timeline[minute]
        if other.last_internal_error is not None:
            self.last_internal_error = other.last_internal_error

    def since(self, previous: RouteAggregate | None) -> RouteAggregate:
        """What was added after ``previous`` (an earlier copy of this aggregate)."""
        if previous is None:
            return copy.deepcopy(self)
        delta = RouteAggregate(self.route)
        for name in COUNTS:
            setattr(delta, name, getattr(self, name) - getattr(previous, name))
        for label in ("old", "new"):
            delta.errors[label] = self.errors[label] - previous.errors[label]
            delta.cpu_ns[label] = self.cpu_ns[label] - previous.cpu_ns[label]
            for now, before, into in (
                (self.latency[label], previous.latency[label], delta.latency[label]),
                (self.cpu[label], previous.cpu[label], delta.cpu[label]),
            ):
                for bucket, n in now.buckets.items():
                    added = n - before.buckets.get(bucket, 0)
                    if added:
                        into.buckets[bucket] = added
                        into.count += added
        for now_groups, before_groups, into_groups in (
            (self.groups, previous.groups, delta.groups),
            (self.noise_groups, previous.noise_groups, delta.noise_groups),
        ):
            for signature, group in now_groups.items():
                old = before_groups.get(signature)
                seen = 0 if old is None else old.count
                shown = 0 if old is None else len(old.examples)
                if group.count > seen:
                    into_groups[signature] = DivergenceGroup(
                        group.path, group.kind, group.count - seen, group.examples[shown:]
                    )
        for minute, (compared, mismatched) in self.timeline.items():
            before_slot = previous.timeline.get(minute, [0, 0])
            if compared - before_slot[0] or mismatched - before_slot[1]:
                delta.timeline[minute] = [compared - before_slot[0], mismatched - before_slot[1]]
        if self.last_internal_error != previous.last_internal_error:
            delta.last_internal_error = self.last_internal_error
        return delta


COUNTS = (
    "comparisons",
    "matches",
    "mismatches",
    "noise",
    "timeouts",
    "dropped",
    "skipped",
    "internal_errors",
    "groups_overflow",
    "new_only_errors",
)


def _group_dict(group: DivergenceGroup) -> dict[str, Any]:
    return {
        "path": group.path,
        "kind": group.kind,
        "count": group.count,
        "examples": list(group.examples),
    }


# A match kept in its thread's buffer: route, old wall and CPU ns, new wall and CPU ns, when,
# and the primary's label if only its wall time is comparable.
_Match = tuple[str, int, int, int, int, float, "str | None"]
MATCHES_PER_MERGE = 256
_FEW_ROUTES = 4  # up to this many routes in a merged batch, one C-speed pass over it for each


class Listener(Protocol):
    """Told about each observation in the order they were recorded (the event log)."""

    def observed(self, seq: int, obs: Observation) -> None: ...

    def counted(self, route: str, what: str, detail: str | None) -> None: ...


class Metrics(Protocol):
    """Told each compared call's wall times after they are added (``dualrun.otel``'s latency
    histograms): quick, and never raising. ``primary_only``: as for
    :meth:`RouteAggregate.compared`, only that version's wall time is comparable."""

    def compared(
        self, route: str, old_wall: int, new_wall: int, primary_only: str | None
    ) -> None: ...


class Recorder:
    """Thread-safe home of the aggregates.

    A listener (the event log) hears of each observation under the same lock that adds it to
    the aggregate, so a summary taken under that lock never disagrees with the events around it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._routes: dict[str, RouteAggregate] = {}
        self._seq = 0
        self.listener: Listener | None = None
        # Callables that receive every observation that is not a plain match (as Scientist's
        # publish does); called in the recording thread, so they must be quick and not raise.
        self.sinks: list[Callable[[Observation], None]] = []
        self.match_listener: Callable[[str, tuple[int, int], tuple[int, int]], None] | None = None
        self.metrics: Metrics | None = None
        self.redact: Redact | None = None  # the shadow's redactor, set by the shadow runner
        self._local = threading.local()
        self._buffers: list[tuple[threading.Thread, list[_Match]]] = []  # see record_match
        forks.register(self)

    def after_fork_in_child(self) -> None:
        """A forked child starts empty: its parent's evidence is the parent's to report."""
        self._lock = threading.Lock()
        self._routes = {}
        self._seq = 0
        self._local = threading.local()
        self._buffers = []

    def _new_buffer(self) -> list[_Match]:
        """This thread's buffer of matches, made and registered on its first match."""
        pending: list[_Match] = []
        self._local.pending = pending
        with self._lock:
            self._merge_unlocked()  # which also forgets the buffers of threads that ended
            self._buffers.append((threading.current_thread(), pending))
        return pending

    def _merge_unlocked(self) -> None:
        """Add every thread's buffered matches to the aggregates; the caller holds the lock.

        Exact under any interleaving: only a merger (one at a time, under the lock) removes
        from a buffer, and only the matches it has read; its thread only appends, after them.
        The matches read are added a route at a time (:meth:`RouteAggregate.matched`)."""
        kept: list[tuple[threading.Thread, list[_Match]]] = []
        batch: list[_Match] = []
        for thread, pending in self._buffers:
            taken = len(pending)
            if taken:
                batch += pending[:taken]
                del pending[:taken]
            if pending or thread.is_alive():
                kept.append((thread, pending))
        self._buffers = kept
        if not batch:
            return
        columns = list(zip(*batch, strict=True))
        routes = columns[0]
        if routes.count(routes[0]) == len(routes):
            self._route(routes[0]).matched(columns)
            return
        order = dict.fromkeys(routes)  # routes in order of first appearance, as one by one
        if len(order) <= _FEW_ROUTES:
            for route in order:
                rows = list(map(eq, routes, repeat(route)))
                self._route(route).matched([tuple(compress(c, rows)) for c in columns])
            return
        by_route: dict[str, list[_Match]] = {route: [] for route in order}
        for match in batch:
            by_route[match[0]].append(match)
        for route, matches in by_route.items():
            self._route(route).matched(list(zip(*matches, strict=True)))

    def _route(self, route: str) -> RouteAggregate:
        aggregate = self._routes.get(route)
        if aggregate is None:
            aggregate = self._routes.setdefault(route, RouteAggregate(route))
        return aggregate

    def record(self, obs: Observation) -> None:
        with self._lock:
            self._route(obs.route).add(obs)
            self._seq += 1
            if self.listener is not None:
                self.listener.observed(self._seq, obs)
        for sink in self.sinks:
            sink(obs)
        if self.metrics is not None and obs.status != "timeout":
            primary_only = None if obs.measured == "paired" else obs.primary
            self.metrics.compared(obs.route, obs.old.wall_ns, obs.new.wall_ns, primary_only)

    def record_match(
        self,
        route: str,
        old_wall: int,
        old_cpu: int,
        new_wall: int,
        new_cpu: int,
        primary_only: str | None = None,
    ) -> None:
        """The common case, kept cheap: both versions agreed and nothing else happened. Kept
        in this thread's own buffer, without a lock, and added to the aggregates under the lock
        when the buffer is full and before anyone reads them (see :meth:`_merge_unlocked`)."""
        match = (route, old_wall, old_cpu, new_wall, new_cpu, time.time(), primary_only)
        try:
            pending: list[_Match] = self._local.pending
        except AttributeError:
            pending = self._new_buffer()
        pending.append(match)
        if len(pending) >= MATCHES_PER_MERGE:
            with self._lock:
                self._merge_unlocked()
        if self.match_listener is not None:
            self.match_listener(route, (old_wall, old_cpu), (new_wall, new_cpu))
        if self.metrics is not None:
            self.metrics.compared(route, old_wall, new_wall, primary_only)

    def count(self, route: str, what: str, detail: str | None = None) -> None:
        """Count a shadow run that yielded no observation: dropped, skipped, internal_errors.
        ``detail`` (a hook's error, which may quote the values) goes through ``redact``."""
        if detail is not None and self.redact is not None:
            detail = safely(self.redact, "error", detail)
        with self._lock:
            aggregate = self._route(route)
            setattr(aggregate, what, getattr(aggregate, what) + 1)
            if detail is not None:
                aggregate.last_internal_error = detail
            if self.listener is not None:
                self.listener.counted(route, what, detail)

    def snapshot(self) -> dict[str, RouteAggregate]:
        """A consistent deep copy of every route's aggregate."""
        with self._lock:
            self._merge_unlocked()
            return copy.deepcopy(self._routes)

    def reset(self) -> None:
        """Forget everything (a new candidate's statistics start from zero)."""
        with self._lock:
            self.reset_unlocked()

    def reset_unlocked(self) -> None:
        """:meth:`reset` for a caller that holds :meth:`locked`."""
        for _, pending in self._buffers:
            del pending[: len(pending)]  # matches of before: forgotten with the rest
        self._routes.clear()

    def locked(self) -> threading.Lock:
        """The lock that orders observations; hold it to take a summary consistent with them."""
        return self._lock

    @property
    def seq(self) -> int:
        """How many observations have been recorded (the last one's sequence number)."""
        return self._seq

    def copy_unlocked(self) -> dict[str, RouteAggregate]:
        """A deep copy of the aggregates; the caller holds :meth:`locked`."""
        self._merge_unlocked()
        return copy.deepcopy(self._routes)
