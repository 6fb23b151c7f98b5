"""The control plane on one host: a SQLite store every process's agent reads and obeys.

Changes reach a dispatcher within the poll interval and never through the routed call; a
rollback ignores pins; a missing or corrupt store keeps the last good state, is reported once,
and recovers; concurrent writers lose no update; a candidate that cannot load keeps the process
serving and is reported; every process reports what it applied, and its evidence.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fleet_helpers import Lab, eventually, served
from log_helpers import events

import dualrun
from dualrun.control.evidence import merge
from dualrun.control.state import ControlState, from_dict

POLL = 0.05


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    lab = Lab(tmp_path)
    yield lab
    lab.cleanup()


def store(tmp_path: Path, **kwargs: Any) -> dualrun.SQLiteControl:
    kwargs.setdefault("poll_interval", POLL)
    kwargs.setdefault("heartbeat_interval", 0.2)
    kwargs.setdefault("live_after", 2.0)
    return dualrun.SQLiteControl(tmp_path / "control.db", **kwargs)


def test_every_verb_reaches_the_dispatcher_within_the_poll_interval(
    lab: Lab, tmp_path: Path
) -> None:
    control = store(tmp_path)
    control.ensure()
    versions = lab.pair()
    d = lab.dispatcher(versions, control=control)
    quote = d.route(f"{versions.old.name}.engine:quote")
    users = range(200)

    control.promote()
    assert eventually(lambda: all(served(quote, u) == "new" for u in users)) < 1.0
    control.rollback()
    eventually(lambda: all(served(quote, u, pin="new") == "old" for u in users))  # pins too
    control.set_pins(True)
    eventually(lambda: served(quote, 1, pin="new") == "new")
    control.set_percent(30, salt="s")
    eventually(lambda: isinstance(d.policy, dualrun.Canary))
    expected = {u: "new" if dualrun.stable_bucket(u, "s") < 30 else "old" for u in users}
    assert {u: served(quote, u) for u in users} == expected
    control.kill("test")
    eventually(lambda: d.killed == "control: test")
    assert {served(quote, u, pin="new") for u in users} == {"old"}
    control.revive()
    eventually(lambda: d.killed is None)
    assert {u: served(quote, u) for u in users} == expected  # the canary is back as it was
    status = control.wait(2)
    assert status.state.version == 6 and status.acknowledged
    assert [p.pid for p in status.live] == [os.getpid()]


def test_the_routed_call_reads_no_store(lab: Lab, tmp_path: Path) -> None:
    """The store is gone and the routed call neither fails nor slows: it never touches it."""
    control = store(tmp_path)
    control.set_percent(50)
    versions = lab.pair()
    d = lab.dispatcher(versions, control=control)
    quote = d.route(f"{versions.old.name}.engine:quote")
    control.path.unlink()
    for n in range(1000):
        quote([n])
    assert isinstance(d.policy, dualrun.Canary) and d.policy.percent == 50


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_a_broken_store_keeps_the_last_good_state_reports_once_and_recovers(
    lab: Lab, tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    control = store(tmp_path)
    control.set_percent(20)
    versions = lab.pair()
    log = tmp_path / "log.jsonl"
    d = lab.dispatcher(versions, control=control, log=log)
    agent = d.control
    assert agent is not None
    eventually(lambda: isinstance(d.policy, dualrun.Canary))
    backup = tmp_path / "backup.db"
    control.wait(2)
    shutil.copy(control.path, backup)
    for suffix in ("-wal", "-shm"):
        Path(str(control.path) + suffix).unlink(missing_ok=True)
    with caplog.at_level(logging.WARNING, logger="dualrun.control"):
        if damage == "missing":
            control.path.unlink()
        else:
            control.path.write_bytes(b"this is not a database" * 100)
        eventually(lambda: agent.errors >= 5)  # a few polls failed...
    warnings = [r for r in caplog.records if r.name == "dualrun.control"]
    assert len(warnings) == 1  # ...reported once
    assert isinstance(d.policy, dualrun.Canary) and d.policy.percent == 20  # last good state
    shutil.copy(backup, control.path)  # back
    eventually(lambda: agent.error is None)
    control.set_percent(60)
    eventually(lambda: getattr(d.policy, "percent", None) == 60)
    d.close()
    control_events = [e for e in events(log) if e["event"] == "dualrun.control"]
    assert [e["what"] for e in control_events].count("error") == 1
    assert [e["what"] for e in control_events].count("recovered") == 1


def _toggle(path: str, rounds: int) -> None:
    control = dualrun.SQLiteControl(path, busy_timeout=0.05)
    for i in range(rounds):
        control.change(f"writer {os.getpid()} #{i}", lambda s: s.with_changes(salt=s.salt + "x"))


def test_concurrent_writers_lose_no_update(tmp_path: Path) -> None:
    path = str(tmp_path / "control.db")
    dualrun.SQLiteControl(path).ensure()
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_toggle, args=(path, 25)) for _ in range(4)]
    for w in writers:
        w.start()
    threads = [threading.Thread(target=_toggle, args=(path, 25)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for w in writers:
        w.join(60)
    assert [w.exitcode for w in writers] == [0] * 4  # no "database is locked" escaped
    state = dualrun.SQLiteControl(path).read_state()
    assert state.version == 150 and state.salt == "x" * 150  # every read-modify-write counted


def test_a_candidate_that_cannot_load_keeps_the_process_serving_and_says_why(
    lab: Lab, tmp_path: Path
) -> None:
    control = store(tmp_path)
    versions = lab.pair()
    d = lab.dispatcher(versions, control=control)
    quote = d.route(f"{versions.old.name}.engine:quote")
    control.swap(str(tmp_path / "no-such-version"))
    status = control.wait(5)
    assert status.acknowledged and len(status.failed) == 1
    assert "no-such-version" in (status.failed[0].error or "")
    assert "NOT" not in status.to_text() and "error since" in status.to_text()
    assert quote([4]) == ("old", 4)  # old still serves, and new is still the same
    assert served(quote, 1, pin="new") == "new"
    new_dir = lab.third(versions)
    control.swap(str(new_dir))
    status = control.wait(5)
    assert status.acknowledged and not status.failed
    assert d.versions.new.source == str(new_dir)
    assert served(quote, 1, pin="new") == "third"


def test_the_kill_switch_variable_is_read_while_running(lab: Lab, tmp_path: Path) -> None:
    control = store(tmp_path)
    control.promote()
    versions = lab.pair()
    d = lab.dispatcher(versions, control=control)
    quote = d.route(f"{versions.old.name}.engine:quote")
    assert served(quote, 1) == "new"
    os.environ["DUALRUN_KILL_SWITCH"] = "1"
    try:
        eventually(lambda: served(quote, 1) == "old", timeout=2)
        assert d.killed is not None and "DUALRUN_KILL_SWITCH" in d.killed
    finally:
        del os.environ["DUALRUN_KILL_SWITCH"]
    eventually(lambda: d.killed is None, timeout=2)
    assert served(quote, 1) == "new"


def test_processes_report_what_they_applied_and_their_evidence(lab: Lab, tmp_path: Path) -> None:
    control = store(tmp_path)
    versions = lab.pair()
    d = lab.dispatcher(
        versions, control=control, shadow=dualrun.Shadow(primary="any", mode="inline")
    )
    quote = d.route(f"{versions.old.name}.engine:quote")
    for n in range(100):
        quote([n])
    state = control.set_percent(50)
    control.wait(5)
    for n in range(100, 150):
        quote([n])
    d.close()
    assert control.status().processes == ()  # a process that stopped left the fleet
    everything = merge(routes for _, routes in control.evidence_rows(0))
    assert everything[0].comparisons == 150
    assert everything[0].calls["old"] + everything[0].calls["new"] == 150
    after = merge(routes for _, routes in control.evidence_rows(0, state.version))
    assert after[0].comparisons == 50  # tagged with the state they were observed under
    assert dualrun.Gate(min_comparisons=10).evaluate(control.evidence()).verdict == "rollback"
    assert control.evidence(since_version=state.version)[0].comparisons == 50


def test_bad_arguments_are_refused_when_given(lab: Lab, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="path"):
        dualrun.SQLiteControl(123)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="poll_interval"):
        dualrun.SQLiteControl(tmp_path / "c.db", poll_interval=0)
    with pytest.raises(ValueError, match="live_after"):
        dualrun.SQLiteControl(tmp_path / "c.db", heartbeat_interval=5, live_after=2)
    control = store(tmp_path)
    with pytest.raises(ValueError, match="percent"):
        control.set_percent(150)
    with pytest.raises(ValueError, match="source"):
        control.swap("")
    with pytest.raises(ValueError, match="control"):
        dualrun.Dispatcher(lab.pair(), control=1)  # type: ignore[arg-type]


def test_states_round_trip_and_bad_fields_are_named() -> None:
    state = ControlState(mode="canary", percent=5, salt="a", pins=False, version=3)
    assert from_dict(json.loads(state.to_json())) == state
    for bad, field in (
        ({"mode": "sideways"}, "mode"),
        ({"percent": 101}, "percent"),
        ({"pins": "yes"}, "pins"),
        ({"colour": 1}, "colour"),
        ({"generation": -1}, "generation"),
    ):
        with pytest.raises(ValueError, match=field):
            from_dict(bad)


def test_the_command_line_changes_the_state_and_names_who_has_not_applied_it(
    lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dualrun.cli import main

    control = store(tmp_path)
    db = str(control.path)
    versions = lab.pair()
    d = lab.dispatcher(versions, control=control)
    quote = d.route(f"{versions.old.name}.engine:quote")
    assert main(["control", "--db", db, "--wait", "--timeout", "5", "percent", "100"]) == 0
    out = capsys.readouterr().out
    assert "canary 100%" in out and "acknowledged by all 1 live processes" in out
    assert f"pid {os.getpid()}" in out and served(quote, 7) == "new"
    # A process that stopped polling but still counts as live holds the acknowledgement up.
    control.report(
        {
            "id": "stuck",
            "host": "h",
            "pid": 1,
            "started": 0.0,
            "applied": 1,
            "applied_at": 0.0,
            "serving": "Fixed('old')",
            "error": None,
            "error_since": None,
        }
    )
    assert main(["control", "--db", db, "--wait", "--timeout", "0.3", "rollback"]) == 1
    out = capsys.readouterr().out
    assert "acknowledged by 1 of 2 live processes" in out
    assert "pid 1 on h: NOT applied, at v1, behind for" in out
    assert served(quote, 7, pin="new") == "old"
    assert main(["control", "--db", db, "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["state"]["mode"] == "rolled back"
    for bad in (["percent"], ["percent", "x"], ["pins", "maybe"], ["promote", "now"]):
        assert main(["control", "--db", db, *bad]) == 2
        assert "dualrun control:" in capsys.readouterr().err
    assert main(["control", "--db", str(tmp_path / "none.db"), "status"]) == 2


def test_a_state_the_dispatcher_refuses_is_reported_and_later_ones_still_apply(
    lab: Lab, tmp_path: Path
) -> None:
    control = store(tmp_path)
    versions = lab.pair()
    d = lab.dispatcher(versions, control=control)
    quote = d.route(f"{versions.old.name}.engine:quote")
    d.promote(retire=True)  # the app itself unloads old: nothing left to roll back to
    assert d.wait_retired(5)
    control.rollback()
    status = control.wait(5)
    assert status.acknowledged and len(status.failed) == 1
    assert "rollback" in (status.failed[0].error or "")
    assert served(quote, 1) == "new"  # still serving what it can
    control.set_fixed("new")  # the agent is alive and applies the next state
    status = control.wait(5)
    assert status.acknowledged and not status.failed
