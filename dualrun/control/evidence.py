"""Fleet-wide evidence: each process's aggregate deltas, and their sum over the fleet.

A process takes what its recorder added since its previous report (the same deltas the event
log's summaries carry: counts, latency histograms, divergence groups, calls per version) and
publishes them to the control store; a gate reads the sum of every process's deltas, so it
decides on what the whole fleet saw. The same sum can come from the merged event logs of any
number of hosts (:func:`evidence_from_logs`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from dualrun.counters import Counter
from dualrun.journal import deltas
from dualrun.recorder import RouteAggregate
from dualrun.report import Report, RouteReport, route_report

if TYPE_CHECKING:
    from dualrun.dispatcher import Dispatcher


class DeltaTaker:
    """What one dispatcher added since the previous :meth:`take`."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self._dispatcher = dispatcher
        self.reset()
        self.take()  # what the dispatcher saw before the control was attached is not evidence

    def reset(self) -> None:
        """Count from zero (a forked child: its counters were renewed)."""
        self._last: dict[str, RouteAggregate] = {}
        self._last_calls: dict[str, list[dict[Counter, int]]] = {}

    def take(self) -> dict[str, Any]:
        """``{route: {"calls": {...}, "aggregate": {...}}}`` added since the last call."""
        d = self._dispatcher
        recorder = d.recorder
        with recorder.locked():
            current = recorder.copy_unlocked()
            tallies = {name: route.tally() for name, route in d.routes.items()}
        if any(name in self._last and name not in current for name in self._last):
            self._last = {}  # a swap restarted the statistics: the aggregate starts from zero
        routes, self._last_calls = deltas(current, tallies, self._last, self._last_calls)
        self._last = current
        return routes


def merge(deltas: Iterable[dict[str, Any]]) -> list[RouteReport]:
    """The route reports of the sum of many processes' deltas."""
    aggregates: dict[str, RouteAggregate] = {}
    calls: dict[str, dict[str, int]] = {}
    crossings: dict[str, int] = {}
    for routes in deltas:
        for name, entry in routes.items():
            counted = calls.setdefault(name, {"old": 0, "new": 0})
            for label, n in entry.get("calls", {}).items():
                counted[label] = counted.get(label, 0) + int(n)
            crossings[name] = crossings.get(name, 0) + int(entry.get("crossings", 0))
            if "aggregate" in entry:
                part = RouteAggregate.from_dict(entry["aggregate"])
                aggregates.setdefault(name, RouteAggregate(name)).merge(part)
    return [
        route_report(name, calls[name], crossings.get(name, 0), aggregates.get(name))
        for name in sorted(calls)
    ]


def evidence_from_logs(paths: Iterable[str]) -> Report:
    """The merged evidence of every process that wrote the event logs ``paths`` (any number of
    hosts): give it to :meth:`dualrun.Gate.evaluate`."""
    from dualrun.logread import report_from_logs

    report, _ = report_from_logs(list(paths), lambda message: None)
    return report
