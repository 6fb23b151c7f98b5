"""One controller drives the fleet's rollout from everybody's evidence (in one process here; the
real-server version is in test_fleet_servers.py): a lease picks the driver, a standby takes over
when it stops, each step is one transaction, every decision is stored with its evidence, and a
change by hand, the kill switch or a pause are respected.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fleet_helpers import Lab, eventually

import dualrun
from dualrun.cli import main
from dualrun.control import FleetRollout

GATE = dualrun.Gate(
    min_comparisons=30, max_mismatch_rate=0.5, max_error_rate=0.5, max_latency_ratio=1000
)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    lab = Lab(tmp_path)
    yield lab
    lab.cleanup()


@contextlib.contextmanager
def traffic(
    lab: Lab, tmp_path: Path, agree: bool = True
) -> Iterator[tuple[dualrun.SQLiteControl, dualrun.Dispatcher]]:
    """A controlled dispatcher serving requests on a thread until the block ends."""
    control = dualrun.SQLiteControl(
        tmp_path / "c.db", poll_interval=0.05, heartbeat_interval=0.1, live_after=2
    )
    versions = lab.pair()

    def compare(old: Any, new: Any) -> bool:
        return agree and old[1] == new[1]  # the label differs by design; the value must not

    d = lab.dispatcher(
        versions,
        control=control,
        shadow=dualrun.Shadow(primary="any", compare=compare),
    )
    quote = d.route(f"{versions.old.name}.engine:quote")
    stop = threading.Event()

    def serve() -> None:
        n = 0
        while not stop.is_set():
            with dualrun.context(key=f"user-{n % 500}"):
                quote([n])
            n += 1
            time.sleep(0.0005)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        yield control, d
    finally:
        stop.set()
        thread.join(10)


def rollout(control: dualrun.SQLiteControl, **kwargs: Any) -> FleetRollout:
    kwargs.setdefault("interval", 0.3)
    kwargs.setdefault("lease_seconds", 0.6)
    return FleetRollout(control, (10, 50, 100), GATE, **kwargs)


def test_one_of_two_controllers_drives_every_step_to_promotion(lab: Lab, tmp_path: Path) -> None:
    with traffic(lab, tmp_path) as (control, d):
        first, second = rollout(control).start(), rollout(control).start()
        try:
            eventually(lambda: (first.record() or {}).get("state") == "promoted", timeout=30)
        finally:
            first.stop()
            second.stop()
        eventually(lambda: repr(d.policy) == "Fixed('new')")
    decisions = first.decisions()
    assert [(e["percent"], e["verdict"]) for e in decisions if e["verdict"] != "hold"] == [
        (10, "promote"),
        (50, "promote"),
        (100, "promote"),
    ]
    assert len({e["holder"] for e in decisions}) == 1  # one driver
    for entry in decisions:
        assert entry["processes"] == 1 and entry["live_processes"] == 1
        assert entry["comparisons"] >= (30 if entry["verdict"] == "promote" else 0)
    assert control.read_state().mode == "promoted"


def test_a_standby_takes_over_when_the_driver_stops(lab: Lab, tmp_path: Path) -> None:
    with traffic(lab, tmp_path) as (control, _):
        driver = rollout(control).start()
        eventually(lambda: len(driver.decisions()) >= 1, timeout=20)
        driver.stop()  # it dies: its lease runs out
        standby = rollout(control)
        standby.start()
        try:
            took_over = eventually(
                lambda: any(e["holder"] == standby.holder for e in standby.decisions()),
                timeout=10,
            )
            eventually(lambda: (standby.record() or {}).get("state") == "promoted", timeout=30)
        finally:
            standby.stop()
    assert took_over < 0.6 + 0.3 + 2  # lease + a tick + an interval, with room for a slow CI
    verdicts = [(e["percent"], e["verdict"]) for e in standby.decisions() if e["verdict"] != "hold"]
    assert verdicts == [(10, "promote"), (50, "promote"), (100, "promote")]  # none skipped


def test_a_live_lease_keeps_a_second_controller_out(tmp_path: Path) -> None:
    control = dualrun.SQLiteControl(tmp_path / "c.db")
    driver, other = rollout(control, lease_seconds=30), rollout(control, lease_seconds=30)
    assert driver._acquire() and not other._acquire()
    assert driver._acquire()  # renewing


def test_a_failing_candidate_is_rolled_back_everywhere(lab: Lab, tmp_path: Path) -> None:
    with traffic(lab, tmp_path, agree=False) as (control, d):
        record = rollout(control).run(timeout=20)
        assert record is not None and record["state"] == "rolled back"
        state = control.read_state()
        assert state.mode == "rolled back" and not state.pins
        eventually(lambda: not d.pins_honored)


def test_a_change_by_hand_or_the_kill_switch_ends_the_rollout_without_undoing_it(
    lab: Lab, tmp_path: Path
) -> None:
    with traffic(lab, tmp_path) as (control, _):
        driver = rollout(control, interval=30).start()
        try:
            eventually(lambda: driver.record() is not None)
            control.set_fixed("old")
            eventually(lambda: (driver.record() or {}).get("state") == "aborted")
        finally:
            driver.stop()
        assert control.read_state().mode == "fixed"
        assert "by hand" in (driver.record() or {})["reason"]


def test_a_paused_rollout_takes_no_decision(lab: Lab, tmp_path: Path) -> None:
    with traffic(lab, tmp_path) as (control, _):
        control.pause()
        driver = rollout(control)
        driver.tick()  # begins: the first step, which also ends any pause
        control.pause()
        for _ in range(3):
            time.sleep(0.35)
            driver.tick()
        assert driver.decisions() == [] and (driver.record() or {})["state"] == "paused"
        control.resume()
        record = driver.run(timeout=20)
    assert record is not None and record["state"] == "promoted"


def test_the_rollout_command_drives_and_prints_each_decision(
    lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with traffic(lab, tmp_path) as (control, _):
        code = main(
            ["rollout", "--db", str(control.path), "--steps", "20,100", "--interval", "0.3",
             "--min-comparisons", "30", "--max-mismatch-rate", "0.5", "--max-error-rate", "0.5",
             "--max-latency-ratio", "1000", "--lease", "1", "--timeout", "30"]
        )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert "step 20%: promote after" in out and "1 processes reported" in out
    assert "rollout promoted" in out
    assert main(["rollout", "--db", str(control.path), "--steps", "5,1"]) == 2
