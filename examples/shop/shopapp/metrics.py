"""OpenTelemetry metrics of one worker, served in Prometheus' format for a scraper.

Each worker of a pre-fork server is a process of its own with its own counters, so each serves
its own metrics: it takes the first port of ``ports`` that is free.
"""

from __future__ import annotations

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import start_http_server

import dualrun
from dualrun.otel import Instrumentation, instrument


def serve_metrics(dispatcher: dualrun.Dispatcher, ports: list[int]) -> tuple[int, Instrumentation]:
    """Instrument ``dispatcher`` (and the web middleware) and serve /metrics on 127.0.0.1."""
    provider = MeterProvider(metric_readers=[PrometheusMetricReader()])
    for port in ports:
        try:
            start_http_server(port, addr="127.0.0.1")
        except OSError:  # another worker has it
            continue
        return port, instrument(dispatcher, meter_provider=provider)
    raise RuntimeError(f"no free port for metrics among {ports}")
