"""PrometheusEvidence: the fleet's numbers read back from Prometheus' query API, in the shape
the gate evaluates. A canned query API in process for the arithmetic and the failures; a real
Prometheus scraping the example shop's gunicorn workers end to end (slow)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from servers import Servers, free_port, new_connections, prometheus

import dualrun
from dualrun.context import RequestContext
from dualrun.prometheus import PrometheusError, PrometheusEvidence, quantile
from dualrun.report import RouteReport

ROUTE = "pricing.engine:quote"


def test_quantiles_interpolate_within_buckets_as_histogram_quantile_does() -> None:
    buckets = {0.001: 10.0, 0.002: 30.0, 0.004: 40.0, math.inf: 40.0}
    assert quantile(0.25, buckets) == pytest.approx(0.001)
    assert quantile(0.5, buckets) == pytest.approx(0.0015)
    assert quantile(0.875, buckets) == pytest.approx(0.003)
    assert quantile(0.1, buckets) == pytest.approx(0.0004)  # first bucket: from zero
    assert quantile(0.99, {0.001: 1.0, math.inf: 10.0}) == 0.001  # in +Inf: highest bound
    assert quantile(0.5, {}) is None
    assert quantile(0.5, {0.001: 0.0, math.inf: 0.0}) is None


class FakePrometheus:
    """A query API answering from canned series; records the queries it was asked."""

    def __init__(self) -> None:
        self.series: dict[str, list[dict[str, Any]]] = {}
        self.queries: list[str] = []
        self.fail = False
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)["query"][0]
                fake.queries.append(query)
                result = next((s for name, s in fake.series.items() if name in query), [])
                body = {"status": "success", "data": {"resultType": "vector", "result": result}}
                if fake.fail:
                    body = {"status": "error", "error": "parse error"}
                data = json.dumps(body).encode()
                self.send_response(400 if fake.fail else 200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def set(self, metric: str, *points: tuple[dict[str, str], float]) -> None:
        self.series[metric] = [{"metric": m, "value": [0, str(v)]} for m, v in points]


@pytest.fixture
def fake() -> Iterator[FakePrometheus]:
    server = FakePrometheus()
    yield server
    server.server.shutdown()
    server.server.server_close()


def route(version: str | None = None, **more: str) -> dict[str, str]:
    labels = {"dualrun_route": ROUTE, **more}
    if version:
        labels["dualrun_version"] = version
    return labels


def fill(fake: FakePrometheus, scale: float = 1.0) -> None:
    fake.set("dualrun_comparisons_total", (route(), 1000 * scale))
    fake.set("dualrun_mismatches_total", (route(), 4 * scale))
    fake.set("dualrun_new_only_errors_total", (route(), 1 * scale))
    fake.set("dualrun_drops_total", (route(dualrun_reason="queue_full"), 3 * scale))
    fake.set("dualrun_calls_total", (route("old"), 900 * scale), (route("new"), 100 * scale))
    fake.set("dualrun_errors_total", (route("new"), 2 * scale))
    fake.set(
        "dualrun_call_duration_seconds_bucket",
        *[
            (route(v, le=le), n * scale)
            for v, shift in (("old", 0), ("new", 1))
            for le, n in (("0.001", 900 - 800 * shift), ("0.002", 1000), ("+Inf", 1000))
        ],
    )


def test_evidence_adds_up_the_series_into_route_reports(fake: FakePrometheus) -> None:
    fill(fake)
    evidence = PrometheusEvidence(fake.url, selector='job="shop"')
    (report,) = evidence.routes()
    assert report.route == ROUTE
    assert (report.comparisons, report.mismatches, report.new_only_errors) == (1000, 4, 1)
    assert report.calls == {"old": 900, "new": 100}
    assert report.errors == {"old": 0, "new": 2}
    assert report.dropped == 3
    assert report.latency_ns["old"]["p50"] == pytest.approx(1e6 * 500 / 900)
    assert report.latency_ns["new"]["p50"] == pytest.approx(1e6 + 1e6 * 400 / 900)
    assert report.latency_histogram == {
        "old": [[0.5e6, 900], [1.5e6, 100]],
        "new": [[0.5e6, 100], [1.5e6, 900]],
    }
    assert all('{job="shop"}' in q and q.startswith("sum by (") for q in fake.queries)
    gate = dualrun.Gate(min_comparisons=100, max_mismatch_rate=0.05, latency_quantile="p50")
    decision = evidence.evaluate(gate)
    assert decision.verdict == "rollback"  # p50 latency 3x > 1.25x
    assert decision.comparisons == 1000
    assert evidence.report().routes[0].comparisons == 1000


def test_a_mark_counts_only_what_came_after(fake: FakePrometheus) -> None:
    fill(fake)
    evidence = PrometheusEvidence(fake.url)
    evidence.mark()
    fill(fake, scale=3.0)
    (report,) = evidence.routes()
    assert (report.comparisons, report.mismatches) == (2000, 8)
    assert report.calls == {"old": 1800, "new": 200}
    assert report.latency_ns["old"]["p50"] == pytest.approx(1e6 * 500 / 900)


def test_a_window_asks_for_increases(fake: FakePrometheus) -> None:
    fill(fake)
    PrometheusEvidence(fake.url, window="10m").routes()
    assert all("increase(" in q and "[10m]" in q for q in fake.queries)


def test_failures_raise_prometheus_error(fake: FakePrometheus) -> None:
    fake.fail = True
    with pytest.raises(PrometheusError, match="dualrun_"):
        PrometheusEvidence(fake.url).routes()
    with pytest.raises(PrometheusError, match="querying"):
        PrometheusEvidence(f"http://127.0.0.1:{free_port()}", timeout=1).routes()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"url": "prometheus:9090"}, "url"),
        ({"url": "http://p", "selector": "{job='x'}"}, "selector"),
        ({"url": "http://p", "window": "10 minutes"}, "window"),
        ({"url": "http://p", "timeout": 0}, "timeout"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PrometheusEvidence(**kwargs)


# -- end to end: the example shop's workers, scraped by a real Prometheus -----------------

CANARY = 40


def expected(user: str) -> str:
    request = RequestContext(user, None, MappingProxyType({}), {})
    return dualrun.Canary(percent=CANARY).choose(request)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gunicorn", "uvicorn"])
def test_the_fleets_metrics_in_prometheus_add_up_to_the_merged_logs(
    kind: Any, servers: Servers, tmp_path: Path
) -> None:
    ports = [free_port(), free_port()]
    env = {
        "SHOP_CANARY": str(CANARY),
        "SHOP_SHADOW": "100",
        "SHOP_EVENT_LOG": str(tmp_path / "events-{pid}.jsonl"),
        "SHOP_METRICS_PORTS": ",".join(map(str, ports)),
    }
    with prometheus(tmp_path / "prometheus", [f"127.0.0.1:{p}" for p in ports]) as url:
        server = servers.start(kind, workers=2, env=env)
        client = new_connections()
        users = [f"user-{n}" for n in range(50)]

        def get(user: str) -> str:
            answer = client.get(
                f"{server.url}/quote",
                params={"items": "bolt:3,apple:11"},
                headers={"X-User-Id": user},
            )
            assert answer.status_code == 200
            return answer.headers["X-Dualrun-Served-By"]

        with ThreadPoolExecutor(6) as pool:
            served = Counter(pool.map(get, users * 4))
        assert served == Counter(expected(u) for u in users * 4)
        workers = {client.get(f"http://127.0.0.1:{p}/metrics").status_code for p in ports}
        assert workers == {200}, "each worker serves its own metrics"

        evidence = PrometheusEvidence(url, selector='job="shop"')
        deadline = time.monotonic() + 30
        while True:  # until a scrape after the last request has landed
            routes = evidence.routes()
            calls = routes[0].calls if routes else {}
            if calls == {"old": served["old"], "new": served["new"]}:
                break
            assert time.monotonic() < deadline, f"Prometheus has {calls}, sent {served}"
            time.sleep(0.5)
        (fleet,) = routes
        gate = dualrun.Gate(min_comparisons=10, max_mismatch_rate=0.5, max_latency_ratio=100)
        fleet_decision = evidence.evaluate(gate)
        server.stop()

    done = subprocess.run(
        [sys.executable, "-m", "dualrun", "report", "--format", "json"]
        + [str(p) for p in sorted(tmp_path.glob("events-*.jsonl"))],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    (logged,) = json.loads(done.stdout)["routes"]
    assert fleet.calls == logged["calls"]
    assert fleet.comparisons == logged["comparisons"] == served["old"]
    assert fleet.mismatches == logged["mismatches"] > 0
    assert fleet.errors == logged["errors"]
    assert fleet.latency_ns["old"]["p50"] is not None
    from_logs = gate.evaluate(dualrun.Report(policy="logs", routes=[_as_route(logged)]))
    assert fleet_decision.verdict == from_logs.verdict == "rollback"  # every quote differs


def _as_route(data: dict[str, Any]) -> RouteReport:
    fields = {k: v for k, v in data.items() if k in RouteReport.__dataclass_fields__}
    return RouteReport(**fields)
