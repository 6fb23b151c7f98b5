"""OpenTelemetry metrics out: the instruments add up to the dispatcher's own report, read with
the SDK's in-memory metric reader; the serving version lands on the request's span."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import dualrun
from dualrun import otel, web
from dualrun.pins import mint
from dualrun.web import Pins
from dualrun.wsgi import DualrunWSGI

ROUTE = "calc:f"
SECRET = "otel-test-secret-0123456789"


def calc(tag: str) -> str:
    body = "        return x\n"
    if tag == "v2":  # new answers 3 differently and raises on negatives, where old does not
        body = (
            "        if x < 0:\n            raise ValueError(x)\n"
            "        return x + 1 if x == 3 else x\n"
        )
    return f"def f(x):\n    if x == 99:\n        raise KeyError(x)\n    if True:\n{body}"


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def dispatcher(
    write_tree: Callable[[str, dict[str, str]], Path],
    load_pair: Callable[..., dualrun.VersionPair],
) -> Iterator[dualrun.Dispatcher]:
    old = write_tree("v1", {"calc.py": calc("v1")})
    new = write_tree("v2", {"calc.py": calc("v2")})
    versions = load_pair("calc", old=str(old), new=str(new))
    dispatcher = dualrun.Dispatcher(
        versions, policy=dualrun.Canary(percent=50), shadow=dualrun.Shadow(primary="any")
    )
    yield dispatcher
    dispatcher.close()


def points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    """Every data point of dualrun's instruments, by metric name."""
    found: dict[str, list[Any]] = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found.setdefault(metric.name, []).extend(metric.data.data_points)
    return found


def total(found: dict[str, list[Any]], name: str, **attributes: str) -> int:
    return sum(
        int(p.value)
        for p in found.get(name, ())
        if all(p.attributes.get(f"dualrun.{k}") == v for k, v in attributes.items())
    )


def run_calls(dispatcher: dualrun.Dispatcher, inputs: list[int]) -> None:
    f = dispatcher.route(ROUTE)
    for n, x in enumerate(inputs):
        with dualrun.context(key=f"user-{n}"), contextlib.suppress(KeyError, ValueError):
            f(x)


def test_metrics_add_up_to_the_report(
    dispatcher: dualrun.Dispatcher, reader: InMemoryMetricReader
) -> None:
    handle = otel.instrument(dispatcher, meter_provider=MeterProvider(metric_readers=[reader]))
    run_calls(dispatcher, [1, 2, 3, -1, 99, 5, 3, -4] * 25)
    report = dispatcher.report().route(ROUTE)
    found = points(reader)
    for label in ("old", "new"):
        assert total(found, "dualrun.calls", route=ROUTE, version=label) == report.calls[label]
        assert total(found, "dualrun.errors", version=label) == report.errors[label]
    assert report.calls["old"] and report.calls["new"]
    assert total(found, "dualrun.comparisons", route=ROUTE) == report.comparisons == 200
    assert total(found, "dualrun.mismatches", route=ROUTE) == report.mismatches > 0
    assert total(found, "dualrun.new_only_errors") == report.new_only_errors == 50
    durations = [p for p in found["dualrun.call.duration"] if isinstance(p, HistogramDataPoint)]
    assert {p.attributes["dualrun.version"]: p.count for p in durations} == {
        "old": 200,
        "new": 200,
    }
    assert all(0 < p.sum < 1 for p in durations)  # seconds
    handle.close()
    run_calls(dispatcher, [1])
    found = points(reader)  # closed: nothing more is fed or observed
    assert sum(p.count for p in found["dualrun.call.duration"]) == 400
    assert "dualrun.comparisons" not in found


def test_call_counts_never_go_down_when_a_candidate_is_swapped_in(
    dispatcher: dualrun.Dispatcher,
    reader: InMemoryMetricReader,
    write_tree: Callable[[str, dict[str, str]], Path],
) -> None:
    handle = otel.instrument(dispatcher, meter_provider=MeterProvider(metric_readers=[reader]))
    run_calls(dispatcher, [1] * 40)
    before = total(points(reader), "dualrun.calls")
    dispatcher.swap_candidate(str(write_tree("v3", {"calc.py": calc("v2")})))
    run_calls(dispatcher, [1] * 10)
    assert total(points(reader), "dualrun.calls") == before + 10 == 50
    handle.close()
    dispatcher.wait_retired(5, force=True)
    dispatcher.versions.new.unload()  # the swapped-in candidate: not the fixture's to unload


def test_without_latency_nothing_is_fed_per_call(
    dispatcher: dualrun.Dispatcher, reader: InMemoryMetricReader
) -> None:
    provider = MeterProvider(metric_readers=[reader])
    handle = otel.instrument(dispatcher, meter_provider=provider, latency=False)
    assert dispatcher.recorder.metrics is None
    run_calls(dispatcher, [1, 3] * 10)
    found = points(reader)
    assert total(found, "dualrun.comparisons") == 20
    assert total(found, "dualrun.mismatches") == dispatcher.report().route(ROUTE).mismatches
    assert "dualrun.call.duration" not in found
    handle.close()


def test_drops_are_counted_by_reason(
    dispatcher: dualrun.Dispatcher, reader: InMemoryMetricReader
) -> None:
    handle = otel.instrument(dispatcher, meter_provider=MeterProvider(metric_readers=[reader]))
    dispatcher.recorder.count(ROUTE, "dropped")
    dispatcher.recorder.count(ROUTE, "skipped", "not copyable")
    found = points(reader)
    assert total(found, "dualrun.drops", reason="queue_full") == 1
    assert total(found, "dualrun.drops", reason="not_copyable") == 1
    handle.close()


def test_web_requests_pins_and_the_version_on_the_span(
    dispatcher: dualrun.Dispatcher, reader: InMemoryMetricReader
) -> None:
    f = dispatcher.route(ROUTE)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        f(1)
        start_response("500 Oops" if environ.get("HTTP_X_FAIL") else "200 OK", [])
        return [b"ok"]

    middleware = DualrunWSGI(app, key="header:X-User", pins=Pins(SECRET))
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = tracer_provider.get_tracer("test")
    gc.collect()  # the counts of middleware that other tests left behind, gone
    handle = otel.instrument(dispatcher, meter_provider=MeterProvider(metric_readers=[reader]))
    earlier = points(reader)  # counts of other tests' middleware still alive, if any

    def request(**headers: str) -> None:
        environ: dict[str, Any] = {}
        setup_testing_defaults(environ)
        environ.update({"HTTP_" + k.upper().replace("-", "_"): v for k, v in headers.items()})
        with tracer.start_as_current_span("GET /"):  # what a tracing instrumentation does
            body = middleware(environ, lambda *a: None)
            list(body)
            getattr(body, "close", lambda: None)()

    for n in range(10):
        request(X_User=f"u{n}")
    request(X_User="x", X_Dualrun_Version=mint("new", SECRET))
    request(X_User="x", X_Dualrun_Version="new.1.forged", X_Fail="1")
    found = points(reader)
    stats = middleware.stats()

    def added(name: str, **attributes: str) -> int:
        return total(found, name, **attributes) - total(earlier, name, **attributes)

    assert added("dualrun.requests") == stats["requests"] == 12
    for label in ("old", "new"):
        assert added("dualrun.requests", version=label) == stats["served"][label]
    assert added("dualrun.request.errors") == 1
    assert added("dualrun.pins", **{"pin.outcome": "honoured"}) == 1
    assert added("dualrun.pins", **{"pin.outcome": "forged"}) == 1
    spans = exporter.get_finished_spans()
    assert len(spans) == 12
    assert {s.attributes["dualrun.version"] for s in spans} == {"old", "new"}
    assert spans[10].attributes["dualrun.version"] == "new"
    assert spans[10].attributes["dualrun.pinned"] is True
    assert spans[11].attributes["dualrun.pinned"] is False
    handle.close()
    assert web.annotate is None


def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match="Dispatcher"):
        otel.instrument("not a dispatcher")  # type: ignore[arg-type]


def test_monotonic_totals_carry_restarts() -> None:
    totals = otel._Monotonic()
    assert [totals.total("k", v) for v in (3, 5, 1, 4, 0, 2)] == [3, 5, 6, 9, 9, 11]
