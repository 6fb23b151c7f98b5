"""What a dispatcher writes to its event log: lifecycle events, divergences, and summaries.

A summary carries what was added since the previous one (counts, latency histograms, divergence
groups, routed calls per version), so any set of summaries from any number of processes adds up
to the aggregate of all of them, and a time window selects the summaries inside it. Divergence
events carry the sequence number of their observation: those written after a process's last
summary (it was killed) are counted from the events themselves.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from dualrun.counters import Counter, peek
from dualrun.eventlog import EventLog
from dualrun.recorder import Observation, Recorder, RouteAggregate

if TYPE_CHECKING:
    from dualrun.loading import Version


class Tallied(Protocol):
    """A route as a summary counts its calls (:meth:`dualrun.routing.Route.tally`)."""

    def tally(self) -> list[tuple[Counter, list[Counter]]]: ...


class JournalHost(Protocol):
    """What a journal reads of its dispatcher (a :class:`dualrun.Dispatcher`): its recorder,
    versions and routes, its policy errors, and the policy and shadow settings (only their
    repr goes into events)."""

    @property
    def recorder(self) -> Recorder: ...

    @property
    def versions(self) -> Iterable[Version]: ...

    @property
    def routes(self) -> Mapping[str, Tallied]: ...

    @property
    def policy(self) -> object: ...

    @property
    def shadow(self) -> object: ...

    @property
    def last_policy_error(self) -> str | None: ...

    def policy_error_count(self) -> int: ...


class Journal:
    """Connects one dispatcher to one :class:`~dualrun.eventlog.EventLog`."""

    def __init__(self, dispatcher: JournalHost, log: EventLog) -> None:
        self._dispatcher = dispatcher
        self.log = log
        self._last: dict[str, RouteAggregate] = {}
        self._last_calls: dict[str, list[dict[Counter, int]]] = {}  # per tally position
        self._last_dropped = 0
        self._summary_lock = threading.Lock()
        self._last_policy_errors = 0
        self._since = time.time()
        recorder = dispatcher.recorder
        recorder.listener = self
        if log.match_sample > 0:
            recorder.match_listener = self.matched
        log.summarize = self.summarize
        self.event(
            "dualrun.load",
            versions={
                v.label: {"source": v.source, "namespace": v.prefix, "name": v.name}
                for v in dispatcher.versions
            },
        )

    def event(self, name: str, **fields: Any) -> None:
        """A lifecycle event, with the dispatcher's policy and shadow settings."""
        dispatcher = self._dispatcher
        self.log.emit(
            name, policy=repr(dispatcher.policy), shadow=repr(dispatcher.shadow), **fields
        )

    # -- the recorder's listener (called under the recorder's lock) -------------------------

    def observed(self, seq: int, obs: Observation) -> None:
        sources = {v.label: v.source for v in self._dispatcher.versions}  # swaps change them
        self.log.emit("dualrun.divergence", seq=seq, sources=sources, **obs.to_dict())

    def counted(self, route: str, what: str, detail: str | None) -> None:
        if what == "internal_errors":
            self.log.emit("dualrun.error", route=route, error=detail)

    def matched(self, route: str, old: tuple[int, int], new: tuple[int, int]) -> None:
        if random.random() * 100 < self.log.match_sample:
            self.log.emit(
                "dualrun.match",
                route=route,
                old={"wall_ns": old[0], "cpu_ns": old[1]},
                new={"wall_ns": new[0], "cpu_ns": new[1]},
            )

    # -- summaries -------------------------------------------------------------------------

    def summarize(self, force: bool = False) -> None:
        """Write what was added since the last summary (nothing if nothing was, unless forced)."""
        with self._summary_lock, self._dispatcher.recorder.locked():
            self._summarize_locked(force)

    def _summarize_locked(self, force: bool, sources: dict[str, str] | None = None) -> None:
        # Everything is read under the recorder's lock, so the summary agrees with the events
        # around it; the baselines move on only once the summary is in the queue.
        dispatcher = self._dispatcher
        recorder = dispatcher.recorder
        tallies = {name: route.tally() for name, route in dispatcher.routes.items()}
        dropped = self.log.dropped_count()
        policy_errors = dispatcher.policy_error_count()
        current = recorder.copy_unlocked()
        routes, baselines = deltas(current, tallies, self._last, self._last_calls)
        changed = dropped != self._last_dropped or policy_errors != self._last_policy_errors
        if not (routes or force or changed):
            return
        now = time.time()
        written = self.log.emit(
            "dualrun.summary",
            seq=recorder.seq,
            start=self._since,
            end=now,
            policy=repr(dispatcher.policy),
            routes=routes,
            dropped_events=dropped - self._last_dropped,
            policy_errors=policy_errors - self._last_policy_errors,
            last_policy_error=dispatcher.last_policy_error,
            # whose numbers these are: a report from logs shows each candidate apart
            sources=sources or {v.label: v.source for v in dispatcher.versions},
        )
        if written:  # a summary the queue refused is taken again, whole, next time
            self._since = now
            self._last = current
            self._last_calls = baselines
            self._last_dropped = dropped
            self._last_policy_errors = policy_errors

    def after_fork_in_child(self) -> None:
        """A forked child's summaries count from zero (its recorder and counters were
        emptied); the parent's are the parent's."""
        self._summary_lock = threading.Lock()
        self._last = {}
        self._last_calls = {
            name: baseline(route.tally()) for name, route in self._dispatcher.routes.items()
        }
        self._last_dropped = 0
        self._last_policy_errors = 0
        self._since = time.time()

    def restart(self, previous: dict[str, str] | None = None) -> None:
        """Statistics start anew (a swapped candidate): a last summary of the previous one
        (labelled with the ``previous`` versions' sources), then forget them and rebase."""
        dispatcher = self._dispatcher
        with self._summary_lock, dispatcher.recorder.locked():
            self._summarize_locked(force=True, sources=previous)
            dispatcher.recorder.reset_unlocked()
            self._last = {}

    def close(self, timeout: float | None = 5.0) -> None:
        """Flush (so the final summary finds room in the queue), a final summary, close."""
        self.log.flush(timeout)
        self.summarize(force=True)
        self.log.close(timeout)


def deltas(
    current: dict[str, RouteAggregate],
    tallies: dict[str, list[tuple[Counter, list[Counter]]]],
    last: dict[str, RouteAggregate],
    last_calls: dict[str, list[dict[Counter, int]]],
) -> tuple[dict[str, Any], dict[str, list[dict[Counter, int]]]]:
    """Per route, what was added since ``last`` and ``last_calls``: calls per version, method
    crossings, calls outside any context, converted results, and the comparison aggregate (a
    summary's ``routes``, a fleet's evidence); and the call baselines for the next time."""
    routes: dict[str, Any] = {}
    baselines: dict[str, list[dict[Counter, int]]] = {}
    for name in sorted(set(current) | set(tallies)):
        entry: dict[str, Any] = {}
        added, baselines[name] = _calls_since(tallies.get(name, []), last_calls.get(name, []))
        if any(added):
            entry["calls"] = {"old": added[0], "new": added[1]}
            entry["crossings"] = added[2]
            entry["outside_context"] = added[3]
            if added[4]:
                entry["results_converted"] = added[4]
        if name in current:
            before = last.get(name)
            if before is not None and before.comparisons > current[name].comparisons:
                before = None  # the statistics restarted meanwhile
            delta = current[name].since(before).to_dict()
            if delta != RouteAggregate(name).to_dict():
                entry["aggregate"] = delta
        if entry:
            routes[name] = entry
    return routes, baselines


def baseline(tally: list[tuple[Counter, list[Counter]]]) -> list[dict[Counter, int]]:
    """A baseline for :func:`_calls_since` that counts from now on."""
    return [{counter: peek(counter) for counter in every} for _, every in tally]


def _calls_since(
    tally: list[tuple[Counter, list[Counter]]], last: list[dict[Counter, int]]
) -> tuple[list[int], list[dict[Counter, int]]]:
    """Calls counted since ``last``, per position, and the baselines for the next summary.

    Every counter a position ever used gives its calls since ``last`` (a replaced one: the
    previous candidate's, and those of calls that read their slot just before the swap). A
    counter bound since ``last`` (a swap) is counted from the next summary on, so each
    candidate's calls go into the summaries of its own time."""
    added: list[int] = []
    baselines: list[dict[Counter, int]] = []
    for position, (current, every) in enumerate(tally):
        before = last[position] if last else {}
        total = 0
        baseline: dict[Counter, int] = {}
        for counter in every:
            value = peek(counter)
            if counter in before:
                total += value - before[counter]
            elif counter is current and last:
                value = 0  # bound since the last summary: its calls go into the next one
            else:
                total += value  # a route's first summary, or a binding no summary saw
            baseline[counter] = value
        added.append(total)
        baselines.append(baseline)
    return added, baselines
