"""Real servers for end-to-end tests: gunicorn (WSGI) and uvicorn (ASGI) serving the example shop
(or any app), each in a process group of its own on a free 127.0.0.1 port, always stopped.

Use the ``serve`` context manager, or the ``servers`` fixture (``tests/conftest.py``) that stops
everything it started at teardown, also when the test failed::

    def test_x(servers):
        server = servers.start("gunicorn", workers=2, env={"SHOP_CANARY": "50"})
        httpx.get(server.url + "/quote", headers={"X-User-Id": "u1"})

``server.worker_pids()`` lists the workers; ``server.log`` holds the server's output, shown by
the fixture when a test fails.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import httpx

ROOT = Path(__file__).resolve().parent.parent
SHOP = ROOT / "examples" / "shop"
APPS = {"gunicorn": "shopapp.wsgi:app", "uvicorn": "shopapp.asgi:app"}
Kind = Literal["gunicorn", "uvicorn"]


def new_connections() -> httpx.Client:
    """An HTTP client that opens a new connection per request, so that requests spread over
    the workers (creating a client per request would cost ~20 ms each)."""
    return httpx.Client(limits=httpx.Limits(max_keepalive_connections=0), timeout=10.0)


_CLIENT = new_connections()


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago (the kernel picked it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def command(kind: Kind, app: str, port: int, workers: int, preload: bool) -> list[str]:
    if kind == "gunicorn":
        cmd = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}"]
        cmd += ["--workers", str(workers), "--graceful-timeout", "5", "--log-level", "info"]
        return [*cmd, *(["--preload"] if preload else []), app]
    if preload:
        raise ValueError("uvicorn has no --preload: it imports the app in each worker")
    cmd = [sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port)]
    return [*cmd, "--workers", str(workers), "--timeout-graceful-shutdown", "5", app]


@dataclass
class Server:
    """A running server: its URL, process (the group leader) and output file."""

    kind: Kind
    url: str
    process: subprocess.Popen[bytes]
    log: Path
    workers: int
    env: dict[str, str] = field(default_factory=dict)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def worker_pids(self) -> list[int]:
        """The pids of the server's worker processes (children of the master)."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            pids = [int(p) for p in children.read_text().split()]
        except OSError:
            return []
        # uvicorn's supervisor may also run a resource tracker: keep the serving workers.
        return [pid for pid in pids if "resource_tracker" not in _cmdline(pid)]

    def wait_ready(self, timeout: float) -> None:
        """Until the server answers /health and all its workers run (or fail with its output);
        then, for a few seconds at most, until each worker has answered a burst of requests."""
        deadline = time.monotonic() + timeout
        while not self._answers() or len(self.worker_pids()) < self.workers:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.kind} exited early:\n{self.output()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.kind} not ready after {timeout} s:\n{self.output()}")
            time.sleep(0.05)
        seen: set[int] = set()
        until = min(deadline, time.monotonic() + 5)
        with ThreadPoolExecutor(8) as pool:
            while len(seen) < self.workers and time.monotonic() < until:
                seen.update(p for p in pool.map(lambda _: self._answers(), range(16)) if p)

    def _answers(self) -> int | None:
        """The pid of the worker that answered /health on a new connection, or None."""
        try:
            answer = _CLIENT.get(self.url + "/health", timeout=2.0)
        except httpx.TransportError:
            return None
        return int(answer.json()["pid"]) if answer.status_code == 200 else None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM to the whole process group, SIGKILL after ``timeout``; the exit code."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout)
        # Whatever is left of the group (workers of a killed master included) goes now.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)
        return self.process.returncode


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def start(
    kind: Kind,
    log_dir: Path,
    *,
    app: str | None = None,
    workers: int = 2,
    preload: bool = False,
    env: Mapping[str, str] | None = None,
    cwd: Path = SHOP,
    ready_timeout: float = 30.0,
) -> Server:
    """Start ``kind`` serving ``app`` (default: the example shop) and wait until it answers.

    The process runs in a new session (its own process group) with ``cwd`` and dualrun's
    source tree on ``PYTHONPATH``; ``env`` is added to the environment. On any failure to
    start, the group is killed before the error is raised.
    """
    port = free_port()
    log = log_dir / f"{kind}-{port}.log"
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(cwd), str(ROOT), full_env.get("PYTHONPATH", "")) if p
    )
    full_env["PYTHONUNBUFFERED"] = "1"
    with log.open("wb") as out:
        process = subprocess.Popen(
            command(kind, app or APPS[kind], port, workers, preload),
            cwd=cwd,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(kind, f"http://127.0.0.1:{port}", process, log, workers, dict(env or {}))
    try:
        server.wait_ready(ready_timeout)
    except BaseException:
        server.stop(timeout=2)
        raise
    return server


@contextlib.contextmanager
def serve(kind: Kind, log_dir: Path, **options: object) -> Iterator[Server]:
    """:func:`start` as a context manager: the server is stopped on the way out, always."""
    server = start(kind, log_dir, **options)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.stop()


class Servers:
    """What the ``servers`` fixture gives a test: ``start(...)`` as above, all stopped at the
    end of the test."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[Server] = []

    def start(self, kind: Kind, **options: object) -> Server:
        server = start(kind, self.log_dir, **options)  # type: ignore[arg-type]
        self.started.append(server)
        return server

    def stop_all(self) -> None:
        for server in reversed(self.started):
            server.stop()


PROMETHEUS_CONFIG = """\
global:
  scrape_interval: {interval}
  evaluation_interval: {interval}
scrape_configs:
  - job_name: shop
    static_configs:
      - targets: [{targets}]
"""


def prometheus_binary() -> str:
    """The ``prometheus`` executable, or a skip saying how to get one (a failure when
    ``DUALRUN_REQUIRE_PROMETHEUS=1``, as ``.ci/run`` sets after installing it)."""
    import shutil

    import pytest

    found = shutil.which("prometheus")
    if found is None:
        if os.environ.get("DUALRUN_REQUIRE_PROMETHEUS") == "1":
            pytest.fail("DUALRUN_REQUIRE_PROMETHEUS=1 but no prometheus on PATH")
        pytest.skip(
            "needs the prometheus server: `apt-get install prometheus` (Debian), or set "
            "DUALRUN_REQUIRE_PROMETHEUS=1 to make its absence a failure"
        )
    return found


@contextlib.contextmanager
def prometheus(
    work_dir: Path, targets: list[str], interval: str = "1s", ready_timeout: float = 30.0
) -> Iterator[str]:
    """A Prometheus server on a free 127.0.0.1 port scraping ``targets`` (``host:port``)
    every ``interval``, with its own config and data directory; yields its URL and is
    stopped (its process group killed) on the way out."""
    binary = prometheus_binary()
    work_dir.mkdir(parents=True, exist_ok=True)
    config = work_dir / "prometheus.yml"
    quoted = ", ".join(f"'{t}'" for t in targets)
    config.write_text(PROMETHEUS_CONFIG.format(interval=interval, targets=quoted))
    port = free_port()
    log = work_dir / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={work_dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--web.enable-lifecycle",
            ],
            cwd=work_dir,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server("prometheus", f"http://127.0.0.1:{port}", process, log, 1)  # type: ignore[arg-type]
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"prometheus exited early:\n{server.output()}")
            with contextlib.suppress(httpx.TransportError):
                if _CLIENT.get(server.url + "/-/ready", timeout=2.0).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"prometheus not ready:\n{server.output()}")
            time.sleep(0.1)
        yield server.url
    finally:
        server.stop(timeout=5)
