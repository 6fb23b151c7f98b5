"""Read event logs back into a :class:`~dualrun.Report`, streaming, whatever their size.

Memory depends on the number of routes and runs, not on the size of the files: each line is
read, applied to a bounded aggregate, and forgotten. Problems (a missing file, a directory, a
corrupt or truncated line, an unknown schema) are reported through ``problem`` with the file
and line, and the rest of the data is still used.

Speed: a divergence event is only kept as its raw line until a later summary of its run covers
it (summaries count everything before them), so most are never turned into an
:class:`Observation`; only those no summary covers are parsed fully, at the end (a malformed
one is reported then). With the ``fast`` extra (msgspec) installed, only a line's ``schema``,
``event``, ``run`` and ``seq`` are decoded at first (the rest is still checked to be valid
JSON); set ``DUALRUN_FAST_JSON=0`` to read with the standard library only. Both read the same
report, and any line the fast decoder refuses is read again by the standard library, so a bad
line is described in its words.
"""

from __future__ import annotations

import bisect
import fnmatch
import json
import json.scanner
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, BinaryIO, NamedTuple

from dualrun.eventlog import SCHEMA
from dualrun.recorder import Observation, RouteAggregate, read_time
from dualrun.report import Report, route_report

Problem = Callable[[str], None]
FAST_JSON_VARIABLE = "DUALRUN_FAST_JSON"
MAX_ROUTES = 1000  # routes a report holds; the others are counted, not kept
MAX_PENDING_BYTES = 64 << 20  # divergence lines waiting for a summary of their run
MAX_LINE_BYTES = 32 << 20  # a longer line is skipped unread (dualrun writes far shorter ones)
_TOO_LONG = b"<too long>"  # stands for such a line (compared by identity)
_COUNTED_ROUTES = 100_000  # distinct routes beyond MAX_ROUTES counted exactly up to this many

try:
    import msgspec
except ImportError:  # the standard library reads the same, slower
    msgspec = None  # type: ignore[assignment]


class _Pending(NamedTuple):
    """A divergence no summary covers yet: its raw line, parsed only if none ever does."""

    seq: int
    path: str
    number: int
    data: bytes | dict[str, Any]  # the line, or the event when it was given, not read


_scan: Callable[[str, int], tuple[Any, int]] = json.scanner.make_scanner(
    json.JSONDecoder()  # type: ignore[arg-type]
)


def _parse(raw: bytes) -> Any:
    """``json.loads(raw)``, a little faster for the usual line; its result or its error."""
    try:
        text = raw.decode("utf-8", "surrogatepass")
        value, end = _scan(text, 0)
        if end == len(text) or text[end:].isspace():
            return value
    except Exception:
        pass
    return json.loads(raw)  # its result, or the exact error for a bad line


def _valid_text(raw: bytes) -> bool:
    """Whether ``raw`` is text json accepts (msgspec does not check the strings it skips)."""
    if raw.isascii():
        return True
    try:
        raw.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return False
    return True


class _Decoders:
    """How lines are decoded: ``full(raw)`` the whole event; ``head(raw)``, when there is a
    fast decoder, the run and seq of a divergence line without building the rest."""

    def __init__(self, fast: bool | None = None) -> None:
        if fast is None:
            fast = os.environ.get(FAST_JSON_VARIABLE, "1") != "0"
        self.fast = fast and msgspec is not None
        self.full: Callable[[bytes], Any] = _parse
        self.head: Callable[[bytes], Any] | None = None
        if self.fast:
            self._generic = msgspec.json.Decoder()
            self._head = msgspec.json.Decoder(_head_type())
            self.full, self.head = self._fast_full, self._fast_head

    def _fast_full(self, raw: bytes) -> Any:
        try:
            if _valid_text(raw):
                return self._generic.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError):
            pass
        return _parse(raw)  # json's result, or its error

    def _fast_head(self, raw: bytes) -> Any:
        """The head (``.run``, ``.seq``) of a well-formed divergence line, else None."""
        try:
            h = self._head.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None
        if (
            h.event == "dualrun.divergence"
            and h.schema == SCHEMA
            and type(h.seq) is int
            and -(2**63) < h.seq < 2**63  # as _whole() checks it
            and type(h.run) is str
            and (raw.isascii() or _valid_text(raw))
        ):
            return h
        return None


def _head_type() -> Any:
    class Head(msgspec.Struct, gc=False):
        schema: Any = None
        event: Any = None
        run: Any = None
        seq: Any = None

    return Head


@dataclass
class _Run:
    """One dispatcher's stream: how far its summaries reach, and the divergences beyond.

    Summaries are deltas over consecutive observation numbers (``seq``), so a divergence is
    counted by a summary exactly when its ``seq`` is at most the highest summary ``seq`` of its
    run, whatever order the files are read in (rotated logs, several files).
    """

    covered: int = 0
    pending: list[_Pending] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)  # the pending seqs, ascending while ordered
    sizes: list[int] = field(default_factory=list)  # the pending lines' bytes
    ordered: bool = True
    overflow: int = 0  # divergences not held: too many bytes were waiting already
    overflow_seq: int = 0  # the highest seq among them (a summary covering it covers them all)

    def cover(self, seq: int) -> int:
        """Forget the divergences up to ``seq``; return how many bytes they held."""
        if seq <= self.covered:
            return 0
        self.covered = seq
        if self.ordered:  # one file of one run: its divergences come in order
            cut = bisect.bisect_right(self.seqs, seq)
            freed = sum(self.sizes[:cut])
            del self.pending[:cut], self.seqs[:cut], self.sizes[:cut]
            return freed
        before = sum(self.sizes)
        kept = [(p, n) for p, n in zip(self.pending, self.sizes, strict=True) if p.seq > seq]
        self.pending = [p for p, _ in kept]
        self.sizes = [n for _, n in kept]
        self.seqs = [p.seq for p in self.pending]
        self.ordered = self.seqs == sorted(self.seqs)
        return before - sum(self.sizes)

    def uncounted(self) -> int:
        """Divergences not held that no summary of the run covers: up to this many lost."""
        return self.overflow if self.overflow_seq > self.covered else 0


@dataclass
class LogTotals:
    """Everything read so far, added up."""

    aggregates: dict[str, RouteAggregate] = field(default_factory=dict)
    calls: dict[str, dict[str, int]] = field(default_factory=dict)
    crossings: dict[str, int] = field(default_factory=dict)
    outside_context: dict[str, int] = field(default_factory=dict)
    results_converted: dict[str, int] = field(default_factory=dict)
    policy: str = "unknown"
    dropped_events: int = 0
    policy_errors: int = 0
    last_policy_error: str | None = None
    events: int = 0
    problems: int = 0
    max_routes: int = MAX_ROUTES
    held_routes: set[str] = field(default_factory=set)
    omitted_routes: set[str] = field(default_factory=set)  # (up to _COUNTED_ROUTES of them)
    omitted_calls: int = 0
    omitted_comparisons: int = 0
    uncounted_divergences: int = 0

    def admit(self, route: str) -> bool:
        """Whether ``route`` is one the report holds: those seen first, up to ``max_routes``."""
        if route in self.held_routes:
            return True
        if len(self.held_routes) < self.max_routes:
            self.held_routes.add(route)
            return True
        if len(self.omitted_routes) < _COUNTED_ROUTES:
            self.omitted_routes.add(route)
        return False

    def aggregate(self, route: str) -> RouteAggregate:
        if route not in self.aggregates:
            self.aggregates[route] = RouteAggregate(route)
        return self.aggregates[route]

    def report(self) -> Report:
        routes = []
        for name in sorted(set(self.aggregates) | set(self.calls)):
            route, sources = split_key(name)
            report = route_report(
                route,
                self.calls.get(name, {"old": 0, "new": 0}),
                self.crossings.get(name, 0),
                self.aggregates.get(name),
                outside_context=self.outside_context.get(name, 0),
                results_converted=self.results_converted.get(name, 0),
            )
            report.sources = sources
            routes.append(report)
        return Report(
            policy=self.policy,
            routes=routes,
            dropped_events=self.dropped_events,
            policy_errors=self.policy_errors,
            last_policy_error=self.last_policy_error,
            omitted_routes=len(self.omitted_routes),
            omitted_routes_at_least=len(self.omitted_routes) >= _COUNTED_ROUTES,
            omitted_calls=self.omitted_calls,
            omitted_comparisons=self.omitted_comparisons,
            max_routes=self.max_routes,
            uncounted_divergences=self.uncounted_divergences,
        )


def parse_time(text: str) -> float:
    """Seconds since the epoch from ISO 8601 (``2026-11-26T10:00:00Z``) or a number."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"a time is ISO 8601 such as 2026-11-26T10:00:00Z, or seconds since the epoch; "
            f"got {text!r}"
        ) from None
    if moment.tzinfo is None:
        raise ValueError(f"a time needs its zone, such as 2026-11-26T10:00:00Z; got {text!r}")
    return moment.timestamp()


def _lines(handle: BinaryIO, limit: int) -> Iterator[bytes]:
    """The lines of a file, none longer than ``limit`` bytes held: a longer one is read past
    in pieces and stands as ``_TOO_LONG``."""
    readline = handle.readline
    while line := readline(limit + 1):
        if len(line) > limit and not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):
                line = readline(1 << 20)
            yield _TOO_LONG
        else:
            yield line


def _files(paths: Iterable[str], problem: Problem) -> Iterator[tuple[str, BinaryIO]]:
    """(path, open file) for every path that can be read; the others are named."""
    for path in paths:
        if os.path.isdir(path):
            problem(f"{path}: is a directory, not a log file; skipped")
            continue
        try:
            handle = open(path, "rb")  # noqa: SIM115 - the caller closes it
        except OSError as exc:
            problem(f"{path}: cannot open ({exc.strerror or exc}); skipped")
            continue
        yield path, handle


class LogReader:
    """Adds events up, keeping only bounded state."""

    def __init__(
        self,
        problem: Problem,
        route: str | None = None,
        since: float | None = None,
        until: float | None = None,
        fast: bool | None = None,
        max_routes: int = MAX_ROUTES,
        max_pending_bytes: int = MAX_PENDING_BYTES,
        max_line_bytes: int = MAX_LINE_BYTES,
    ) -> None:
        self._problem = problem
        self._max_line = max_line_bytes
        self.totals = LogTotals(max_routes=max_routes)
        self._runs: dict[str, _Run] = {}
        self._held = 0  # bytes of the divergence lines waiting for a summary
        self._max_pending = max_pending_bytes
        self._route = route
        self._since = since
        self._until = until
        self._decoders = _Decoders(fast)

    def _wanted(self, route: str) -> bool:
        return (
            self._route is None or route == self._route or fnmatch.fnmatchcase(route, self._route)
        )

    def _inside(self, moment: float) -> bool:
        return (self._since is None or moment >= self._since) and (
            self._until is None or moment <= self._until
        )

    def read(self, paths: Iterable[str]) -> LogTotals:
        def problem(message: str) -> None:
            self.totals.problems += 1
            self._problem(message)

        head, runs, totals = self._decoders.head, self._runs, self.totals
        for path, handle in _files(paths, problem):
            with handle:
                number = 0
                for number, raw in enumerate(_lines(handle, self._max_line), start=1):
                    # The usual line, a divergence, is only kept raw: a later summary may cover
                    # it. This is the loop every byte of a log goes through.
                    if raw is _TOO_LONG:
                        problem(
                            f"{path}:{number}: line longer than {self._max_line:,} bytes; "
                            "skipped unread"
                        )
                        continue
                    if head is not None:
                        h = head(raw)
                        if h is not None:
                            totals.events += 1
                            run = runs.get(h.run)
                            if run is None:
                                run = runs[h.run] = _Run()
                            if h.seq > run.covered:
                                self._hold(run, _Pending(h.seq, path, number, raw))
                            continue
                    if raw.isspace():
                        continue
                    event = self._event(path, number, raw, problem)
                    if event is None:
                        continue
                    seq, run_id = event.get("seq"), event.get("run")
                    if (  # a divergence, as above, read by the standard library
                        event.get("event") == "dualrun.divergence"
                        and type(seq) is int
                        and -(2**63) < seq < 2**63  # as _whole() checks it
                        and type(run_id) is str
                    ):
                        totals.events += 1
                        run = runs.get(run_id)
                        if run is None:
                            run = runs[run_id] = _Run()
                        if seq > run.covered:
                            self._hold(run, _Pending(seq, path, number, raw))
                        continue
                    try:
                        self.apply(event, (path, number, raw))
                    except Exception as exc:  # whatever a line holds, it is named and skipped
                        kind = event.get("event")
                        what = repr(kind) if isinstance(kind, str) else "an"
                        problem(
                            f"{path}:{number}: malformed {what[:80]} event skipped ({_why(exc)})"
                        )
                if number == 0:
                    problem(f"{path}: empty file, no events")
        for run in runs.values():  # divergences after a run's last summary (it died)
            for pending in run.pending:
                self._observe(pending, problem)
            totals.uncounted_divergences += run.uncounted()
        runs.clear()
        self._held = 0
        return totals

    def _hold(self, run: _Run, pending: _Pending) -> None:
        """Keep a divergence until a summary of its run covers it, if there is room."""
        data = pending.data
        size = len(data) if type(data) is bytes else 1024  # an event given, not read: about
        if self._held + size > self._max_pending:
            run.overflow += 1
            run.overflow_seq = max(run.overflow_seq, pending.seq)
            return
        self._held += size
        # run.add(pending, size), inlined: once per divergence line
        seqs = run.seqs
        if seqs and pending.seq < seqs[-1]:
            run.ordered = False
        run.pending.append(pending)
        seqs.append(pending.seq)
        run.sizes.append(size)

    def _event(self, path: str, number: int, raw: bytes, problem: Problem) -> dict[str, Any] | None:
        """The event on a line, or None once the problem with it is reported."""
        try:
            event = self._decoders.full(raw)
        except (ValueError, RecursionError) as exc:  # also UnicodeDecodeError
            what = "truncated last line" if not raw.endswith(b"\n") else "corrupt line"
            if isinstance(exc, RecursionError):  # its text depends on the stack: say it plainly
                reason = "nested too deeply"
            else:
                reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
            problem(f"{path}:{number}: {what} skipped ({reason})")
            return None
        if not isinstance(event, dict):
            problem(f"{path}:{number}: not an event object; skipped")
            return None
        schema = event.get("schema")
        if schema != SCHEMA:
            problem(
                f"{path}:{number}: unknown schema version {schema!r} (this dualrun "
                f"reads schema {SCHEMA}); skipped"
            )
            return None
        return event

    def _observe(self, pending: _Pending, problem: Problem) -> None:
        """Count a divergence no summary covers, parsed now."""
        data = pending.data
        event = data if isinstance(data, dict) else self._event("", 0, data, lambda _: None)
        try:
            if event is None:
                raise ValueError("not valid JSON on a second reading")
            obs = Observation.from_dict(event)
        except Exception as exc:  # whatever a line holds, it is named and skipped
            problem(
                f"{pending.path}:{pending.number}: malformed 'dualrun.divergence' event "
                f"skipped ({_why(exc)})"
            )
            return
        if self._wanted(obs.route) and self._inside(obs.time):
            key = route_key(obs.route, event.get("sources"))
            if self.totals.admit(key):
                self.totals.aggregate(key).add(obs)
            elif obs.status != "timeout":
                self.totals.omitted_comparisons += 1

    def apply(self, event: dict[str, Any], line: tuple[str, int, bytes] | None = None) -> None:
        """Add one event; ``line`` is where it was read (file, number, bytes), if it was."""
        kind = event.get("event")
        self.totals.events += 1
        if kind == "dualrun.divergence":
            seq = _whole(event["seq"], "seq")
            run_id = _text(event["run"], "run")
            run = self._runs.get(run_id)
            if run is None:
                run = self._runs[run_id] = _Run()
            if seq > run.covered:
                path, number, data = line if line is not None else ("", 0, event)
                self._hold(run, _Pending(seq, path, number, data))
        elif kind == "dualrun.summary":
            self._summary(event)
        elif kind in ("dualrun.load", "dualrun.policy", "dualrun.promote", "dualrun.rollback"):
            self.totals.policy = _text(event.get("policy", self.totals.policy), "policy")

    def _summary(self, event: dict[str, Any]) -> None:
        # Parse the whole event before using any of it: a malformed one is skipped entirely.
        run, seq = _text(event["run"], "run"), _whole(event["seq"], "seq")
        inside = self._inside(read_time(event["end"], "end"))
        dropped = _whole(event.get("dropped_events", 0), "dropped_events") if inside else 0
        policy_errors = _whole(event.get("policy_errors", 0), "policy_errors") if inside else 0
        last_policy_error = event.get("last_policy_error")
        if last_policy_error is not None:
            last_policy_error = _text(last_policy_error, "last_policy_error")
        policy = _text(event.get("policy", self.totals.policy), "policy")
        routes = event["routes"]
        if not isinstance(routes, dict):
            raise ValueError("routes is an object")
        sources = event.get("sources")
        parsed: list[tuple[str, dict[str, int] | None, int, int, int, RouteAggregate | None]] = []
        for name, entry in routes.items() if inside else ():
            if not self._wanted(name):
                continue
            if not isinstance(entry, dict):
                raise ValueError("a route's entry is an object")
            calls = None
            if "calls" in entry:
                given = entry["calls"]
                if not isinstance(given, dict):
                    raise ValueError("calls is an object")
                calls = {label: _whole(given.get(label, 0), "calls") for label in ("old", "new")}
            aggregate = None
            if "aggregate" in entry:
                aggregate = RouteAggregate.from_dict(entry["aggregate"])
            crossings = _whole(entry.get("crossings", 0), "crossings")
            outside = _whole(entry.get("outside_context", 0), "outside_context")
            converted = _whole(entry.get("results_converted", 0), "results_converted")
            parsed.append(
                (route_key(name, sources), calls, crossings, outside, converted, aggregate)
            )
        self._held -= self._runs.setdefault(run, _Run()).cover(seq)
        self.totals.policy = policy
        self.totals.dropped_events += dropped
        self.totals.policy_errors += policy_errors
        if policy_errors and last_policy_error is not None:
            self.totals.last_policy_error = str(last_policy_error)
        for name, calls, crossings, outside, converted, aggregate in parsed:
            if not self.totals.admit(name):
                if calls is not None:
                    self.totals.omitted_calls += calls["old"] + calls["new"]
                if aggregate is not None:
                    self.totals.omitted_comparisons += aggregate.comparisons
                continue
            if calls is not None:
                totals = self.totals.calls.setdefault(name, {"old": 0, "new": 0})
                for label in ("old", "new"):
                    totals[label] += calls[label]
                self.totals.crossings[name] = self.totals.crossings.get(name, 0) + crossings
                outside_totals = self.totals.outside_context
                outside_totals[name] = outside_totals.get(name, 0) + outside
                if converted:
                    converted_totals = self.totals.results_converted
                    converted_totals[name] = converted_totals.get(name, 0) + converted
            if aggregate is not None:
                self.totals.aggregate(name).merge(aggregate)


_KEY_SEPARATOR = "\x1f"  # never in a target (identifiers, dots and a colon)


def route_key(route: str, sources: object) -> str:
    """Where a route's numbers add up: one place per pair of version sources, so that the
    candidates a swap replaced are reported apart (logs without sources: one place)."""
    if not isinstance(sources, dict) or not sources:
        return route
    labelled = {str(k): str(v) for k, v in sources.items() if k in ("old", "new")}
    return route + _KEY_SEPARATOR + json.dumps(labelled, sort_keys=True)


def split_key(key: str) -> tuple[str, dict[str, str]]:
    """The route and the sources of a :func:`route_key`."""
    route, _, sources = key.partition(_KEY_SEPARATOR)
    return route, (json.loads(sources) if sources else {})


def _whole(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not -(2**63) < value < 2**63:
        raise ValueError(f"{what} is a 64-bit whole number")
    return value


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} is a string")
    return value


def _why(exc: Exception) -> str:
    """What was wrong with a line, in one short line (its text comes from the line itself)."""
    text = f"{type(exc).__name__}: {exc}" if not isinstance(exc, KeyError) else f"no field {exc}"
    return text if len(text) <= 200 else text[:199] + "…"


def report_from_logs(
    paths: Iterable[str],
    problem: Problem,
    route: str | None = None,
    since: float | None = None,
    until: float | None = None,
    fast: bool | None = None,
    max_routes: int = MAX_ROUTES,
    max_pending_bytes: int = MAX_PENDING_BYTES,
) -> tuple[Report, LogTotals]:
    """The report for any number of logs from any number of processes. ``fast``: use the
    ``fast`` extra's decoder if it is installed (default: unless ``DUALRUN_FAST_JSON=0``).
    ``max_routes``: the routes the report holds (the first seen); the others are counted.
    ``max_pending_bytes``: divergence lines held until a summary of their run covers them."""
    reader = LogReader(problem, route, since, until, fast, max_routes, max_pending_bytes)
    totals = reader.read(paths)
    return totals.report(), totals
