"""The web middleware against the same app without it, and the cost of OpenTelemetry metrics.

    python benchmarks/bench_web.py [ROUNDS]     # default 7; more on a busy machine

Rows, each timed in interleaved rounds against its anchor (the best round counts):

* a hello-world WSGI app called as a server calls it (environ, start_response, the body
  iterated and closed), bare and wrapped in ``DualrunWSGI(key="header:X-User-Id")``; also with
  pins enabled and a signed token on every request. Target: <= 5 us added per request.
* the same for ASGI (``DualrunASGI``), requests awaited one after another on one event loop.
* the routed call (Canary inside a context) and the inline-shadowed call, without and with
  ``dualrun.otel.instrument`` on an SDK meter provider: the metrics' cost on the hot path.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dualrun
from dualrun.asgi import DualrunASGI
from dualrun.pins import mint
from dualrun.web import Pins
from dualrun.wsgi import DualrunWSGI

ROUNDS = 7
SECRET = "benchmark-secret-0123456789abcdef"


def best_of(runners: dict[str, Callable[[int], float]], number: int) -> dict[str, float]:
    """Seconds per call of each runner: the best of ``ROUNDS`` interleaved rounds."""
    best = {name: float("inf") for name in runners}
    for _ in range(ROUNDS):
        for name, run in runners.items():
            best[name] = min(best[name], run(number) / number)
    return best


def hello_wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


def wsgi_runner(app: Any, headers: dict[str, str]) -> Callable[[int], float]:
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/",
        "REMOTE_ADDR": "203.0.113.9",
        **{"HTTP_" + k.upper().replace("-", "_"): v for k, v in headers.items()},
    }

    def start_response(status: str, headers: list[tuple[str, str]], exc: Any = None) -> None:
        return None

    def run(number: int) -> float:
        start = time.perf_counter()
        for _ in range(number):
            body = app(dict(environ), start_response)
            for _chunk in body:
                pass
            close = getattr(body, "close", None)
            if close is not None:
                close()
        return time.perf_counter() - start

    return run


async def hello_asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


def asgi_runner(app: Any, headers: dict[str, str]) -> Callable[[int], float]:
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "client": ("203.0.113.9", 1),
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        return None

    async def many(number: int) -> float:
        start = time.perf_counter()
        for _ in range(number):
            await app(dict(scope), receive, send)
        return time.perf_counter() - start

    loop = asyncio.new_event_loop()
    return lambda number: loop.run_until_complete(many(number))


def make_versions(root: Path) -> dualrun.VersionPair:
    for tag in ("old", "new"):
        package = root / tag / "bench_web_target"
        package.mkdir(parents=True)
        (package / "__init__.py").write_text(f"def add(a, b):\n    return a + b  # {tag}\n")
    return dualrun.load("bench_web_target", old=str(root / "old"), new=str(root / "new"))


def call_runner(dispatcher: dualrun.Dispatcher) -> Callable[[int], float]:
    add = dispatcher.route("bench_web_target:add")

    def run(number: int) -> float:
        with dualrun.context(key="user-1"):
            start = time.perf_counter()
            for _ in range(number):
                add(1, 2)
            return time.perf_counter() - start

    return run


def otel_rows(root: Path) -> list[tuple[str, float, float]]:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from dualrun.otel import instrument

    versions = make_versions(root)
    rows = []
    try:
        inline = dualrun.Shadow(sample=100, mode="inline")
        for what, shadow, number, latency in (
            ("routed call, Canary in a context", None, 200_000, True),
            ("inline-shadowed call", inline, 20_000, True),
            ("inline-shadowed call, latency=False", inline, 20_000, False),
        ):
            bare = dualrun.Dispatcher(versions, policy=dualrun.Canary(percent=0), shadow=shadow)
            measured = dualrun.Dispatcher(versions, policy=dualrun.Canary(percent=0), shadow=shadow)
            provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
            handle = instrument(measured, meter_provider=provider, web=False, latency=latency)
            times = best_of({"bare": call_runner(bare), "otel": call_runner(measured)}, number)
            rows.append((what, times["bare"], times["otel"]))
            handle.close()
            bare.close()
            measured.close()
    finally:
        versions.unload()
    return rows


def main() -> None:
    global ROUNDS
    if len(sys.argv) > 1:
        ROUNDS = int(sys.argv[1])
    token = mint("new", SECRET, ttl=3600)
    key = {"X-User-Id": "user-42"}
    pinned = {**key, "X-Dualrun-Version": token}
    pins = Pins(SECRET)
    rows: list[tuple[str, str, float, float]] = []
    wsgi = best_of(
        {
            "bare": wsgi_runner(hello_wsgi, key),
            "mw": wsgi_runner(DualrunWSGI(hello_wsgi, key="header:X-User-Id"), key),
            "pins": wsgi_runner(DualrunWSGI(hello_wsgi, key="header:X-User-Id", pins=pins), pinned),
        },
        50_000,
    )
    rows.append(("WSGI hello world", "DualrunWSGI(key=header)", wsgi["bare"], wsgi["mw"]))
    rows.append(("WSGI hello world", "+ a signed pin verified", wsgi["bare"], wsgi["pins"]))
    asgi = best_of(
        {
            "bare": asgi_runner(hello_asgi, key),
            "mw": asgi_runner(DualrunASGI(hello_asgi, key="header:X-User-Id"), key),
            "pins": asgi_runner(DualrunASGI(hello_asgi, key="header:X-User-Id", pins=pins), pinned),
        },
        50_000,
    )
    rows.append(("ASGI hello world", "DualrunASGI(key=header)", asgi["bare"], asgi["mw"]))
    rows.append(("ASGI hello world", "+ a signed pin verified", asgi["bare"], asgi["pins"]))
    with tempfile.TemporaryDirectory() as tmp:
        for what, bare, otel in otel_rows(Path(tmp)):
            rows.append((what, "dualrun.otel.instrument (SDK)", bare, otel))

    print(f"CPython {sys.version.split()[0]}, best of {ROUNDS} interleaved rounds")
    print(f"{'what':38} {'with':31} {'without':>10} {'with':>10} {'added':>9} {'ratio':>6}")
    for what, variant, bare, measured in rows:
        print(
            f"{what:38} {variant:31} {bare * 1e6:8.2f}us {measured * 1e6:8.2f}us "
            f"{(measured - bare) * 1e6:7.2f}us {measured / bare:5.2f}x"
        )


if __name__ == "__main__":
    main()
