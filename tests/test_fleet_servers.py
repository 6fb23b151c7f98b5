"""Many processes, one rollout, with real servers: gunicorn (4 workers, with and without
``--preload``) and uvicorn (2 workers) serve the example shop with a control store, and httpx
requests check what every worker serves after each ``dualrun control`` command, at each step of
a fleet rollout, and when the rollout's controller is killed. Slow: ``pytest -m slow``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from servers import ROOT, Server, new_connections

import dualrun
from dualrun.cli import main
from dualrun.logread import report_from_logs
from dualrun.pins import mint

pytestmark = pytest.mark.slow
SECRET = "fleet-test-secret-0123456789abcdef"
ROUTE = "pricing.engine:quote"


class Client:
    """Requests to one server from many users, counted."""

    def __init__(self, server: Server, items: str = "bolt:1") -> None:
        self.url = server.url
        self.items = items  # bolt:1 tells the versions apart by the body; apple:1 does not
        self.http = new_connections()
        self.sent = 0
        self.lock = threading.Lock()

    def served(self, user: str, pin: str | None = None) -> tuple[str, int]:
        """(version that served, worker pid) for one quote by ``user``."""
        headers = {"X-User-Id": user}
        if pin is not None:
            headers["X-Dualrun-Version"] = mint(pin, SECRET, ttl=600)  # type: ignore[arg-type]
        answer = self.http.get(self.url + "/quote", params={"items": self.items}, headers=headers)
        with self.lock:
            self.sent += 1
        assert answer.status_code == 200, answer.text
        worker = int(answer.headers["X-Shop-Worker"])
        if self.items != "bolt:1":
            return answer.headers["X-Dualrun-Served-By"], worker
        # What really served, from the body: 1.4 rounds 0.125 half to even, 1.5 half up.
        return {"0.12": "old", "0.13": "new"}[answer.json()["lines"][0]["total"]], worker

    def burst(self, users: list[str], pin: str | None = None) -> list[tuple[str, str, int]]:
        """Each user once, 8 at a time: (user, version, worker)."""
        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(lambda u: (u, *self.served(u, pin)), users))


def control(db: Path, *args: str) -> None:
    assert main(["control", "--db", str(db), *args]) == 0


def workers_known(store: dualrun.SQLiteControl, server: Server) -> None:
    """Until every worker of ``server`` reports to the store (it has applied the state)."""
    deadline = time.monotonic() + 30
    while not set(server.worker_pids()) <= {p.pid for p in store.status().live}:
        assert time.monotonic() < deadline, store.status().to_text()
        time.sleep(0.05)


def within(seconds: float, client: Client, users: list[str], want: str, pin: str | None = None
           ) -> float:  # fmt: skip
    """Seconds until a burst from ``users`` is served by ``want`` only (every worker seen)."""
    start = time.monotonic()
    while True:
        results = client.burst(users, pin)
        if {version for _, version, _ in results} == {want}:
            return time.monotonic() - start
        assert time.monotonic() - start < seconds, f"still {results[:5]}"


@pytest.mark.parametrize(
    ("kind", "workers", "preload"),
    [("gunicorn", 4, True), ("gunicorn", 4, False), ("uvicorn", 2, False)],
)
def test_every_worker_obeys_the_control_store(
    servers: Any, tmp_path: Path, kind: str, workers: int, preload: bool
) -> None:
    db = tmp_path / "control.db"
    store = dualrun.SQLiteControl(db)
    store.ensure()
    logs = tmp_path / "events-{pid}.jsonl"
    server = servers.start(
        kind,
        workers=workers,
        preload=preload,
        env={
            "SHOP_CONTROL": str(db),
            "SHOP_CONTROL_POLL": "0.2",
            "SHOP_PIN_SECRET": SECRET,
            "SHOP_EVENT_LOG": str(logs),
            "SHOP_CANARY": "0",
        },
    )
    workers_known(store, server)
    client = Client(server)
    users = [f"user-{n}" for n in range(40)]
    seen_workers: set[int] = set()

    control(db, "promote")
    assert within(2, client, users, "new") <= 2
    status = store.wait(2)
    assert status.acknowledged, status.to_text()

    control(db, "rollback")
    time.sleep(2)
    results = client.burst(users) + client.burst(users, pin="new")
    assert {version for _, version, _ in results} == {"old"}  # pinned ones included
    seen_workers |= {worker for _, _, worker in results}

    control(db, "pins", "on")
    control(db, "kill", "test")
    time.sleep(2)
    results = client.burst(users, pin="new")
    assert {version for _, version, _ in results} == {"old"}
    control(db, "revive")
    control(db, "--wait", "--timeout", "5", "percent", "30", "--salt", "fleet")
    results = client.burst(users * 4)
    by_user: dict[str, set[str]] = defaultdict(set)
    for user, version, worker in results:
        by_user[user].add(version)
        seen_workers.add(worker)
    expected = {u: "new" if dualrun.stable_bucket(u, "fleet") < 30 else "old" for u in users}
    assert {u: v.pop() if len(v) == 1 else v for u, v in by_user.items()} == expected
    assert seen_workers == set(server.worker_pids())  # every worker was asked, and obeyed

    sent = client.sent
    assert server.stop() is not None
    assert [p.pid for p in store.status().processes] == []  # each left the fleet as it exited
    files = [str(p) for p in tmp_path.glob("events-*.jsonl")]
    report, _ = report_from_logs(files, lambda message: None)
    calls = report.route(ROUTE).calls
    assert calls["old"] + calls["new"] == sent  # every worker's events reached the log, once
    pids = {int(Path(f).stem.split("-")[1]) for f in files}
    if not preload:
        assert pids >= set(seen_workers)


def _start_controller(db: Path, tmp_path: Path, name: str) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "dualrun", "rollout", "--db", str(db), "--steps", "10,50",
        "--interval", "1", "--min-comparisons", "20", "--lease", "2", "--timeout", "60",
        "--max-mismatch-rate", "0.05", "--max-error-rate", "0.05", "--max-latency-ratio", "3",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = (tmp_path / f"{name}.out").open("wb")
    return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)  # fmt: skip


@pytest.fixture
def controllers(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for process in started:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def test_a_rollout_steps_every_worker_and_survives_its_controller(
    servers: Any, tmp_path: Path, controllers: list[subprocess.Popen[bytes]]
) -> None:
    db = tmp_path / "control.db"
    store = dualrun.SQLiteControl(db)
    store.ensure()
    server = servers.start(
        "gunicorn",
        workers=2,
        env={"SHOP_CONTROL": str(db), "SHOP_CONTROL_POLL": "0.2", "SHOP_SHADOW": "100"},
    )
    workers_known(store, server)
    client = Client(server, items="apple:1")  # the same answer from both: the gate promotes
    results: list[tuple[float, str, str]] = []
    stop = threading.Event()

    failures: list[BaseException] = []

    def traffic() -> None:
        n = 0
        while not stop.is_set():
            user = f"user-{n % 60}"
            try:
                version, _ = client.served(user)
            except BaseException as exc:
                failures.append(exc)
                raise
            results.append((time.time(), user, version))
            n += 1

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        controllers.append(_start_controller(db, tmp_path, "a"))
        controllers.append(_start_controller(db, tmp_path, "b"))
        # (the shop shadows calls served by old: a 100% step would gather no comparisons)
        rollout = dualrun.FleetRollout(store, (10, 50), name="rollout")
        deadline = time.monotonic() + 30
        while not rollout.decisions():
            assert time.monotonic() < deadline, (tmp_path / "a.out").read_text()
            time.sleep(0.1)
        driver = int(rollout.decisions()[0]["holder"].split(":")[1])
        os.kill(driver, signal.SIGKILL)  # the driver dies mid-rollout
        deadline = time.monotonic() + 40
        while (rollout.record() or {}).get("state") != "promoted":
            assert time.monotonic() < deadline, (rollout.record(), failures, rollout.decisions())
            time.sleep(0.2)
        assert store.wait(3).acknowledged
    finally:
        stop.set()
        thread.join(10)
    decisions = [d for d in rollout.decisions() if d["verdict"] != "hold"]
    assert [(d["percent"], d["verdict"]) for d in decisions] == [(10, "promote"), (50, "promote")]
    holders = {int(d["holder"].split(":")[1]) for d in rollout.decisions()}
    assert driver in holders and len(holders) == 2  # the standby took over
    for d in decisions:
        assert d["processes"] == 2 and d["comparisons"] >= 20  # both workers' evidence
    assert {client.served(f"u{n}")[0] for n in range(20)} == {"new"}
    # At every step, once it had reached every worker, each user was served by one version.
    changes = [when for (when,) in store._read(lambda db: db.execute(
        "SELECT changed FROM changes ORDER BY version").fetchall())]  # fmt: skip
    segments: dict[tuple[int, str], set[str]] = defaultdict(set)
    for when, user, version in results:
        step = sum(1 for c in changes if c <= when)
        if all(not 0 <= when - c < 1.0 for c in changes):  # not in the second after a change
            segments[(step, user)].add(version)
    assert segments and all(len(v) == 1 for v in segments.values())
    flips = {user for (_, user), versions in segments.items() if versions == {"new"}}
    assert flips  # the canary did move users
