"""OpenTelemetry metrics out, through ``opentelemetry-api`` only (extra ``[otel]``).

The application configures the SDK and its exporters; :func:`instrument` creates dualrun's
instruments on the global (or a given) meter provider. Nothing is added to the routed call:
every counter is observable, read when the SDK collects from what dualrun counts anyway (the
routes' lock-free call counters, the recorder's aggregates, the middleware's counts). Only the
latency histogram is fed per compared call, by the recorder where the comparison is recorded
(the SDK costs a few microseconds per value). Without :func:`instrument` the only cost is one
``is None`` test per recorded comparison.

Instruments (attribute names in parentheses):

=============================  ========  ===========  =========================================
name                           kind      unit         attributes
=============================  ========  ===========  =========================================
``dualrun.calls``              counter   ``{call}``   ``dualrun.route``, ``dualrun.version``
``dualrun.comparisons``        counter   ``{comparison}``  ``dualrun.route``
``dualrun.mismatches``         counter   ``{comparison}``  ``dualrun.route``
``dualrun.new_only_errors``    counter   ``{comparison}``  ``dualrun.route``
``dualrun.errors``             counter   ``{error}``  ``dualrun.route``, ``dualrun.version``
``dualrun.drops``              counter   ``{run}``    ``dualrun.route``, ``dualrun.reason``
``dualrun.call.duration``      histogram ``s``        ``dualrun.route``, ``dualrun.version``
``dualrun.requests``           counter   ``{request}``  ``dualrun.version``
``dualrun.request.errors``     counter   ``{request}``  ``dualrun.version``
``dualrun.pins``               counter   ``{request}``  ``dualrun.pin.outcome``
=============================  ========  ===========  =========================================
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics, trace

from dualrun import forks
from dualrun import web as dualrun_web
from dualrun.counters import Counter, peek
from dualrun.recorder import RouteAggregate

if TYPE_CHECKING:
    from dualrun.dispatcher import Dispatcher

SCOPE = "dualrun"
ROUTE = "dualrun.route"
VERSION = "dualrun.version"
# Latencies from a microsecond to ten seconds: dualrun routes function calls, not requests.
DURATION_BUCKETS = (
    *(1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4),
    *(1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
REASON = "dualrun.reason"
DROPS = (  # the aggregate's field, and the reason it is reported under
    ("dropped", "queue_full"),
    ("skipped", "not_copyable"),
    ("internal_errors", "internal_error"),
    ("timeouts", "timeout"),
)
SNAPSHOT_SECONDS = 0.5  # one copy of the aggregates serves all callbacks of a collection


class _Monotonic:
    """Totals that never go down although the counts behind them restart (a swapped-in
    candidate's statistics start from zero)."""

    def __init__(self) -> None:
        self._last: dict[Any, tuple[int, int]] = {}  # key -> (last seen, added before restarts)

    def total(self, key: Any, value: int) -> int:
        last, carried = self._last.get(key, (0, 0))
        if value < last:
            carried += last
        self._last[key] = (value, carried)
        return carried + value


Observe = Callable[[metrics.CallbackOptions], Iterable[metrics.Observation]]


class Instrumentation:
    """What :func:`instrument` set up; :meth:`close` stops feeding the instruments."""

    def __init__(
        self, meter: metrics.Meter, dispatchers: list[Dispatcher], web: bool, latency: bool
    ) -> None:
        self.dispatchers = dispatchers
        self.web = web
        self._closed = False
        self._totals = _Monotonic()
        self._snapshots: tuple[float, list[dict[str, RouteAggregate]]] = (-1.0, [])
        self.duration = meter.create_histogram(
            "dualrun.call.duration",
            "s",
            "Wall time of each version in compared calls",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        observable = [
            ("dualrun.calls", "{call}", "Calls served, by version", self._observe_calls),
            (
                "dualrun.comparisons",
                "{comparison}",
                "Shadowed calls whose results were compared",
                self._observe_count("comparisons"),
            ),
            (
                "dualrun.mismatches",
                "{comparison}",
                "Comparisons where the versions differed",
                self._observe_count("mismatches"),
            ),
            (
                "dualrun.new_only_errors",
                "{comparison}",
                "Comparisons where only the new version raised",
                self._observe_count("new_only_errors"),
            ),
            (
                "dualrun.errors",
                "{error}",
                "Exceptions raised by each version in compared calls",
                self._observe_errors,
            ),
            (
                "dualrun.drops",
                "{run}",
                "Shadow runs that yielded no comparison, by reason",
                self._observe_drops,
            ),
        ]
        if web:
            observable += [
                (
                    "dualrun.requests",
                    "{request}",
                    "Web requests, by the version that served them",
                    self._observe_web("served", VERSION),
                ),
                (
                    "dualrun.request.errors",
                    "{request}",
                    "Web requests that raised or answered 5xx, by the version that served them",
                    self._observe_web("errors", VERSION),
                ),
                (
                    "dualrun.pins",
                    "{request}",
                    "Pins in web requests: honoured, or why refused",
                    self._observe_web("pins", "dualrun.pin.outcome"),
                ),
            ]
        for name, unit, description, callback in observable:
            meter.create_observable_counter(name, [callback], unit, description)
        if web:
            dualrun_web.annotate = annotate_span
        self._previous = [(d.recorder, d.recorder.metrics) for d in dispatchers]
        for dispatcher in dispatchers if latency else ():
            dispatcher.recorder.metrics = self
        forks.register(self)

    def after_fork_in_child(self) -> None:
        """A forked child counts from zero (its recorder and routes do): nothing to carry."""
        self._totals = _Monotonic()
        self._snapshots = (-1.0, [])

    def close(self) -> None:
        """Stop feeding: the recorder hooks and span annotations are removed; observable
        counters report nothing more."""
        self._closed = True
        for recorder, previous in self._previous:
            if recorder.metrics is self:
                recorder.metrics = previous
        if self.web:
            dualrun_web.annotate = None

    # -- fed by the recorder, for each compared call (dualrun.recorder.Metrics) ------------

    def compared(self, route: str, old_wall: int, new_wall: int, primary_only: str | None) -> None:
        # As in the aggregate: a shadow's wall time on a worker thread is not comparable with a
        # caller's, so only the primary's is kept then.
        with contextlib.suppress(Exception):
            if primary_only != "new":
                self.duration.record(old_wall / 1e9, {ROUTE: route, VERSION: "old"})
            if primary_only != "old":
                self.duration.record(new_wall / 1e9, {ROUTE: route, VERSION: "new"})

    # -- read when the SDK collects --------------------------------------------------------

    def _aggregates(self) -> list[dict[str, RouteAggregate]]:
        """Each dispatcher's aggregates, copied once per collection (its callbacks run one
        after another)."""
        taken, snapshots = self._snapshots
        now = time.monotonic()
        if now - taken > SNAPSHOT_SECONDS:
            snapshots = [d.recorder.snapshot() for d in self.dispatchers]
            self._snapshots = (now, snapshots)
        return snapshots

    def _observe(
        self, metric: str, values: Iterable[tuple[dict[str, str], int]]
    ) -> Iterator[metrics.Observation]:
        for attributes, value in values:
            key = (metric, *sorted(attributes.items()))
            yield metrics.Observation(self._totals.total(key, value), attributes)

    def _per_route(
        self, read: Callable[[RouteAggregate], Iterable[tuple[dict[str, str], int]]]
    ) -> Iterator[tuple[dict[str, str], int]]:
        """``read``'s values for every route, added up over the dispatchers."""
        sums: dict[tuple[tuple[str, str], ...], int] = {}
        for aggregates in self._aggregates():
            for name, aggregate in aggregates.items():
                for attributes, value in read(aggregate):
                    key = tuple(sorted({ROUTE: name, **attributes}.items()))
                    sums[key] = sums.get(key, 0) + value
        return ((dict(key), value) for key, value in sums.items())

    def _observe_count(self, field: str) -> Observe:
        def observe(options: metrics.CallbackOptions) -> Iterator[metrics.Observation]:
            if not self._closed:
                values = self._per_route(lambda a: [({}, getattr(a, field))])
                yield from self._observe(field, values)

        return observe

    def _observe_errors(self, options: metrics.CallbackOptions) -> Iterator[metrics.Observation]:
        if not self._closed:
            values = self._per_route(lambda a: [({VERSION: v}, n) for v, n in a.errors.items()])
            yield from self._observe("errors", values)

    def _observe_drops(self, options: metrics.CallbackOptions) -> Iterator[metrics.Observation]:
        if not self._closed:
            values = self._per_route(
                lambda a: [({REASON: reason}, getattr(a, field)) for field, reason in DROPS]
            )
            yield from self._observe("drops", values)

    def _observe_calls(self, options: metrics.CallbackOptions) -> Iterator[metrics.Observation]:
        if self._closed:
            return
        sums: dict[tuple[str, str], int] = {}
        for dispatcher in self.dispatchers:
            for name, route in dispatcher.routes.items():
                for label in ("old", "new"):
                    key = (id(dispatcher), name, label)
                    total = self._totals.total(key, route.calls(label))
                    sums[name, label] = sums.get((name, label), 0) + total
        for (name, label), total in sums.items():
            yield metrics.Observation(total, {ROUTE: name, VERSION: label})

    def _observe_web(self, field: str, attribute: str) -> Observe:
        def observe(options: metrics.CallbackOptions) -> Iterator[metrics.Observation]:
            if self._closed:
                return
            totals: dict[str, int] = {}
            for stats in dualrun_web.all_stats():
                counters: dict[str, Counter] = getattr(stats, field)
                for value, counter in counters.items():
                    totals[value] = totals.get(value, 0) + peek(counter)
            for value, total in totals.items():
                yield metrics.Observation(total, {attribute: value})

        return observe


def annotate_span(label: str, pinned: bool) -> None:
    """Put the serving version on the current span (the web request's, when the app is
    traced); the middleware calls this at the end of each request once instrumented."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute(VERSION, label)
        span.set_attribute("dualrun.pinned", pinned)


def instrument(
    *dispatchers: Dispatcher,
    web: bool = True,
    latency: bool = True,
    meter_provider: metrics.MeterProvider | None = None,
) -> Instrumentation:
    """Report ``dispatchers`` through OpenTelemetry metrics on ``meter_provider`` (default:
    the global one). With ``web``, also the requests of every dualrun WSGI/ASGI middleware
    in the process (made before or after this call), and the serving version goes on the
    current span at the end of each request. ``latency=False`` leaves out the latency
    histogram, the one instrument fed per compared call (the SDK takes microseconds per
    value)."""
    from dualrun.dispatcher import Dispatcher

    for dispatcher in dispatchers:
        if not isinstance(dispatcher, Dispatcher):
            raise TypeError(f"instrument() takes dualrun.Dispatcher objects, got {dispatcher!r}")
    provider = meter_provider or metrics.get_meter_provider()
    return Instrumentation(provider.get_meter(SCOPE), list(dispatchers), bool(web), bool(latency))
