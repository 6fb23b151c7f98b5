"""Read event logs back into a :class:`~dualrun.Report`, streaming, whatever their size.

Memory depends on the number of routes and runs, not on the size of the files: each line is
read, applied to a bounded aggregate, and forgotten. Problems (a missing file, a directory, a
corrupt or truncated line, an unknown schema) are reported through ``problem`` with the file
and line, and the rest of the data is still used.
"""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from dualrun.eventlog import SCHEMA
from dualrun.recorder import Observation, RouteAggregate, read_time
from dualrun.report import Report, route_report

Problem = Callable[[str], None]


@dataclass
class _Run:
    """One dispatcher's stream: how far its summaries reach, and the divergences beyond.

    Summaries are deltas over consecutive observation numbers (``seq``), so a divergence is
    counted by a summary exactly when its ``seq`` is at most the highest summary ``seq`` of its
    run, whatever order the files are read in (rotated logs, several files).
    """

    covered: int = 0
    pending: list[tuple[int, Observation]] = field(default_factory=list)

    def cover(self, seq: int) -> None:
        self.covered = max(self.covered, seq)
        self.pending = [(s, obs) for s, obs in self.pending if s > self.covered]


@dataclass
class LogTotals:
    """Everything read so far, added up."""

    aggregates: dict[str, RouteAggregate] = field(default_factory=dict)
    calls: dict[str, dict[str, int]] = field(default_factory=dict)
    crossings: dict[str, int] = field(default_factory=dict)
    policy: str = "unknown"
    dropped_events: int = 0
    policy_errors: int = 0
    last_policy_error: str | None = None
    events: int = 0
    problems: int = 0

    def aggregate(self, route: str) -> RouteAggregate:
        if route not in self.aggregates:
            self.aggregates[route] = RouteAggregate(route)
        return self.aggregates[route]

    def report(self) -> Report:
        names = sorted(set(self.aggregates) | set(self.calls))
        return Report(
            policy=self.policy,
            routes=[
                route_report(
                    name,
                    self.calls.get(name, {"old": 0, "new": 0}),
                    self.crossings.get(name, 0),
                    self.aggregates.get(name),
                )
                for name in names
            ],
            dropped_events=self.dropped_events,
            policy_errors=self.policy_errors,
            last_policy_error=self.last_policy_error,
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


def lines(paths: Iterable[str], problem: Problem) -> Iterator[tuple[str, int, dict[str, Any]]]:
    """(file, line number, event) for every readable event line of every file."""
    for path in paths:
        if os.path.isdir(path):
            problem(f"{path}: is a directory, not a log file; skipped")
            continue
        try:
            handle = open(path, "rb")  # noqa: SIM115 - closed below, whatever happens
        except OSError as exc:
            problem(f"{path}: cannot open ({exc.strerror or exc}); skipped")
            continue
        with handle:
            count = 0
            for number, raw in enumerate(handle, start=1):
                count = number
                if not raw.strip():
                    continue
                complete = raw.endswith(b"\n")
                try:
                    event = json.loads(raw)
                except (ValueError, RecursionError) as exc:  # also UnicodeDecodeError
                    what = "truncated last line" if not complete else "corrupt line"
                    reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
                    problem(f"{path}:{number}: {what} skipped ({reason})")
                    continue
                if not isinstance(event, dict):
                    problem(f"{path}:{number}: not an event object; skipped")
                    continue
                schema = event.get("schema")
                if schema != SCHEMA:
                    problem(
                        f"{path}:{number}: unknown schema version {schema!r} (this dualrun "
                        f"reads schema {SCHEMA}); skipped"
                    )
                    continue
                yield path, number, event
            if count == 0:
                problem(f"{path}: empty file, no events")


class LogReader:
    """Adds events up, keeping only bounded state."""

    def __init__(
        self,
        problem: Problem,
        route: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> None:
        self._problem = problem
        self.totals = LogTotals()
        self._runs: dict[str, _Run] = {}
        self._route = route
        self._since = since
        self._until = until

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

        for path, number, event in lines(paths, problem):
            try:
                self.apply(event)
            except Exception as exc:  # whatever a line holds, it is named and skipped
                kind = event.get("event")
                what = repr(kind) if isinstance(kind, str) else "an"
                problem(f"{path}:{number}: malformed {what[:80]} event skipped ({_why(exc)})")
        for run in self._runs.values():  # divergences after a run's last summary (it died)
            for _, obs in run.pending:
                self.totals.aggregate(obs.route).add(obs)
        self._runs.clear()
        return self.totals

    def apply(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        self.totals.events += 1
        if kind == "dualrun.divergence":
            obs = Observation.from_dict(event)
            seq = _whole(event["seq"], "seq")
            run = self._runs.setdefault(_text(event["run"], "run"), _Run())
            if seq > run.covered and self._wanted(obs.route) and self._inside(obs.time):
                run.pending.append((seq, obs))
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
        parsed: list[tuple[str, dict[str, int] | None, int, RouteAggregate | None]] = []
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
            parsed.append((name, calls, _whole(entry.get("crossings", 0), "crossings"), aggregate))
        self._runs.setdefault(run, _Run()).cover(seq)
        self.totals.policy = policy
        self.totals.dropped_events += dropped
        self.totals.policy_errors += policy_errors
        if policy_errors and last_policy_error is not None:
            self.totals.last_policy_error = str(last_policy_error)
        for name, calls, crossings, aggregate in parsed:
            if calls is not None:
                totals = self.totals.calls.setdefault(name, {"old": 0, "new": 0})
                for label in ("old", "new"):
                    totals[label] += calls[label]
                self.totals.crossings[name] = self.totals.crossings.get(name, 0) + crossings
            if aggregate is not None:
                self.totals.aggregate(name).merge(aggregate)


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
) -> tuple[Report, LogTotals]:
    """The report for any number of logs from any number of processes."""
    totals = LogReader(problem, route, since, until).read(paths)
    return totals.report(), totals
