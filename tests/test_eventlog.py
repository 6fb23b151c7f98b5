"""The event log: what a dispatcher writes, and the guarantees of the writer.

A process killed with SIGKILL mid-run leaves a log whose every line is readable but at most a
final partial one; an app's own structlog logger receives the events and structlog is never
reconfigured; the redaction hook sees every event; lines carry ISO UTC timestamps and the schema
version; lifecycle events are written; a full queue drops and counts, and the count reaches the
summary and the report; emitting never blocks; bad arguments raise ValueError; a log that is
never closed is flushed at interpreter exit.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from log_helpers import (
    ROUTE_A,
    LogLab,
    call_quietly,
    child_command,
    events,
    kinds,
    observation,
    target,
    wait_for_line,
    write_child,
)
from structlog.testing import CapturingLogger

import dualrun
from dualrun import cli
from dualrun.eventlog import EventLog
from dualrun.logread import report_from_logs

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[LogLab]:
    lab = LogLab(tmp_path)
    yield lab
    lab.cleanup()


def read_report(path: Path) -> tuple[dualrun.Report, list[str]]:
    problems: list[str] = []
    report, _ = report_from_logs([str(path)], problems.append)
    return report, problems


# -- round trip with SIGKILL ----------------------------------------------------------------


def test_a_process_killed_mid_run_leaves_a_readable_log(
    lab: LogLab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name, old, new = lab.dirs()
    log = tmp_path / "killed.jsonl"
    command = child_command(write_child(tmp_path), name, old, new, log, "forever", 300, 0)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert wait_for_line(process, "READY", timeout=60) == "READY"
        time.sleep(0.3)  # it keeps calling, and writing, until it is killed
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()
    assert process.returncode == -signal.SIGKILL

    data = log.read_bytes()
    *complete, tail = data.split(b"\n")
    parsed = [json.loads(line) for line in complete]  # every whole line is an event
    partial = tail != b""
    if partial:
        with pytest.raises(ValueError):
            json.loads(tail)
    assert parsed[0]["event"] == "dualrun.load"
    divergences = [e for e in parsed if e["event"] == "dualrun.divergence"]
    assert len(divergences) > 50, "the child made hundreds of mismatching calls"
    seqs = [e["seq"] for e in divergences]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs) and seqs[0] == 1

    # The CLI reads the log, reports a partial last line if there is one, and exits 0 or 1.
    code = cli.main(["report", str(log), "--format", "json"])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    if partial:
        assert code == 1
        assert f"{log}:{len(complete) + 1}: truncated last line skipped" in err
    else:
        assert (code, err) == (0, "")
    route = json.loads(out)["routes"][0]
    assert route["route"] == f"{name}.engine:quote"
    # Every non-matching comparison was written as an event; none is lost or counted twice.
    assert route["mismatches"] == sum(e["status"] == "mismatch" for e in divergences) > 0
    paths = {d["path"] for d in route["divergences"]}
    assert {"$.price", "$.items[*]"} <= paths

    # A final partial line (here made on purpose) is reported with its line number and skipped.
    cut = tmp_path / "cut.jsonl"
    whole = b"\n".join(complete) + b"\n"
    cut.write_bytes(whole + complete[-1][: len(complete[-1]) // 2])
    assert cli.main(["report", str(cut), "--format", "json"]) == 1
    out_cut, err_cut = capsys.readouterr()
    assert f"{cut}:{len(complete) + 1}: truncated last line skipped" in err_cut
    assert "Traceback" not in err_cut
    clean = tmp_path / "clean.jsonl"
    clean.write_bytes(whole)
    assert cli.main(["report", str(clean), "--format", "json"]) == 0
    assert capsys.readouterr().out == out_cut  # the partial line changed nothing else


# -- the application's own structlog logger ------------------------------------------------


def test_an_app_logger_receives_every_event_and_structlog_is_not_reconfigured(
    lab: LogLab,
) -> None:
    config_before = structlog.get_config()
    configured_before = structlog.is_configured()
    capture = CapturingLogger()
    app_logger = structlog.wrap_logger(
        capture,
        processors=[
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
    )
    versions = lab.pair()
    d = lab.dispatcher(versions, shadow=dualrun.Shadow(), log=app_logger)
    quote = d.route(target(versions, "quote"))
    for n in range(1, 31):
        call_quietly(quote, n)
    d.rollback()
    d.close()

    assert structlog.get_config() == config_before
    assert structlog.is_configured() == configured_before
    assert {call.method_name for call in capture.calls} == {"info"}
    lines = [json.loads(call.args[0]) for call in capture.calls]
    names = [line["event"] for line in lines]
    assert names[0] == "dualrun.load"
    assert names[-1] == "dualrun.summary"
    assert "dualrun.rollback" in names
    mismatches = d.report().route(target(versions, "quote")).mismatches
    assert names.count("dualrun.divergence") == mismatches > 0
    for line in lines:
        assert line["schema"] == 1  # also through the app's logger
        assert line["run"] == lines[0]["run"] and line["pid"] == os.getpid()
        assert ISO_UTC.match(line["timestamp"])  # the app's own TimeStamper ran


def test_file_lines_have_iso_utc_timestamps_schema_and_process_fields(lab: LogLab) -> None:
    config_before = structlog.get_config()
    versions = lab.pair()
    path = lab.path()
    d = lab.dispatcher(versions, shadow=dualrun.Shadow(), log=str(path))
    quote = d.route(target(versions, "quote"))
    for n in range(1, 11):
        call_quietly(quote, n)
    d.close()
    assert structlog.get_config() == config_before
    lines = events(path)
    assert len(lines) > 3
    for line in lines:
        assert line["schema"] == 1
        assert ISO_UTC.match(line["timestamp"]), line["timestamp"]
        assert line["pid"] == os.getpid() and line["host"] and len(line["run"]) == 16
    divergence = next(e for e in lines if e["event"] == "dualrun.divergence")
    assert divergence["sources"] == {"old": versions.old.source, "new": versions.new.source}
    assert divergence["old"]["value"] == "{'n': 3, 'price': 6, 'items': [3, 1]}"
    assert divergence["differences"] == [
        {"path": "$.price", "kind": "value", "old": "6", "new": "7"}
    ]
    assert {"wall_ns", "cpu_ns"} <= set(divergence["new"])


def test_structlog_contextvars_are_merged_into_events(lab: LogLab) -> None:
    versions = lab.pair()
    path = lab.path()
    d = lab.dispatcher(versions, shadow=dualrun.Shadow(), log=str(path))
    quote = d.route(target(versions, "quote"))
    with structlog.contextvars.bound_contextvars(request_id="req-7"):
        quote(3)  # price differs: one divergence, written from this thread
    quote(6)
    d.close()
    divergences = [e for e in events(path) if e["event"] == "dualrun.divergence"]
    assert [e.get("request_id") for e in divergences] == ["req-7", None]


def test_the_redact_hook_maps_every_event_before_it_is_written(lab: LogLab) -> None:
    def digest(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def redact(event: dict[str, Any]) -> dict[str, Any]:
        if event.get("key") is not None:
            event = {**event, "key": digest(event["key"])}
        return {**event, "redacted": True}

    versions = lab.pair()
    path = lab.path()
    d = lab.dispatcher(versions, shadow=dualrun.Shadow(), log=EventLog(path, redact=redact))
    quote = d.route(target(versions, "quote"))
    with dualrun.context(key="alice@example.com"):
        quote(3)
    d.close()
    lines = events(path)
    assert all(line["redacted"] is True for line in lines)
    [divergence] = [e for e in lines if e["event"] == "dualrun.divergence"]
    assert divergence["key"] == digest("alice@example.com")


def test_a_failing_redactor_is_reported_as_a_dualrun_error_and_writing_goes_on(
    lab: LogLab,
) -> None:
    def redact(event: dict[str, Any]) -> dict[str, Any]:
        if "differences" in event:  # only the divergence event
            raise RuntimeError("redactor broke")
        return event

    versions = lab.pair()
    path = lab.path()
    d = lab.dispatcher(versions, shadow=dualrun.Shadow(), log=EventLog(path, redact=redact))
    quote = d.route(target(versions, "quote"))
    quote(3)
    d.close()
    names = kinds(path)
    assert names[0] == "dualrun.load" and names[-1] == "dualrun.summary"
    [error] = [e for e in events(path) if e["event"] == "dualrun.error"]
    assert error["where"] == "event log"
    # Only the type: the message of a failing redactor may quote what it was to redact.
    assert error["error"] == "RuntimeError (its message is not written: redaction failed)"


# -- lifecycle events ------------------------------------------------------------------------


def test_lifecycle_events_load_policy_promote_rollback(lab: LogLab) -> None:
    versions = lab.pair()
    path = lab.path()
    d = lab.dispatcher(versions, log=str(path))
    d.policy = dualrun.Canary(10, salt="s")
    d.rollback()
    d.promote()
    d.close()
    lines = events(path)
    lifecycle = ("dualrun.load", "dualrun.policy", "dualrun.promote", "dualrun.rollback")
    assert [(e["event"], e["policy"]) for e in lines if e["event"] in lifecycle] == [
        ("dualrun.load", "Fixed('old')"),
        ("dualrun.policy", repr(dualrun.Canary(10, salt="s"))),
        ("dualrun.policy", "Fixed('old')"),
        ("dualrun.rollback", "Fixed('old')"),
        ("dualrun.policy", "Fixed('new')"),
        ("dualrun.promote", "Fixed('new')"),
    ]
    assert lines[-1]["event"] == "dualrun.summary"
    assert lines[-1]["policy"] == "Fixed('new')"
    load = lines[0]
    assert load["versions"]["old"]["source"] == versions.old.source
    assert load["versions"]["new"]["name"] == versions.new.name
    assert load["shadow"] == "None"
    report, problems = read_report(path)
    assert (report.policy, problems) == ("Fixed('new')", [])


def test_internal_errors_of_dualrun_are_written_as_error_events(lab: LogLab) -> None:
    versions = lab.pair()
    path = lab.path()
    d = lab.dispatcher(versions, log=str(path))
    d.recorder.count(ROUTE_A, "internal_errors", "ValueError: comparator broke")
    d.close()
    [error] = [e for e in events(path) if e["event"] == "dualrun.error"]
    assert (error["route"], error["error"]) == (ROUTE_A, "ValueError: comparator broke")


def test_match_sample_writes_match_events(lab: LogLab) -> None:
    versions = lab.pair()
    path = lab.path()
    d = lab.dispatcher(versions, shadow=dualrun.Shadow(), log=EventLog(path, match_sample=100))
    quote = d.route(target(versions, "quote"))
    quote(1)  # old and new agree on 1
    d.close()
    [match] = [e for e in events(path) if e["event"] == "dualrun.match"]
    assert match["route"] == target(versions, "quote") and match["old"]["wall_ns"] > 0


def test_no_per_call_events_by_default(lab: LogLab) -> None:
    versions = lab.pair()
    path = lab.path()
    d = lab.dispatcher(versions, shadow=dualrun.Shadow(), log=str(path))
    quote = d.route(target(versions, "quote"))
    for n in (1, 2, 4):  # all match
        quote(n)
    d.close()
    assert kinds(path) == ["dualrun.load", "dualrun.summary"]
    [summary] = [e for e in events(path) if e["event"] == "dualrun.summary"]
    entry = summary["routes"][target(versions, "quote")]
    assert entry["calls"] == {"old": 3, "new": 0}
    assert entry["aggregate"]["matches"] == 3


# -- a full queue, and never blocking --------------------------------------------------------


def test_a_full_queue_drops_counts_and_reports_the_dropped_events(lab: LogLab) -> None:
    entered, release = threading.Event(), threading.Event()

    def slow_redact(event: dict[str, Any]) -> dict[str, Any]:
        entered.set()
        release.wait(10)
        return event

    versions = lab.pair()
    path = lab.path()
    log = EventLog(path, queue_size=1, redact=slow_redact)
    d = lab.dispatcher(versions, log=log)  # writes dualrun.load: the writer takes it, blocks
    try:
        assert entered.wait(5)
        started = time.perf_counter()
        for percent in range(1, 6):
            d.policy = dualrun.Canary(percent)  # one event each: 1 queued, 4 dropped
        d.recorder.record(observation(ROUTE_A, "mismatch"))  # its event is dropped too
        elapsed = time.perf_counter() - started
    finally:
        release.set()
    assert elapsed < 2, "emit must not wait for the writer (stuck for up to 10 s)"
    assert log.dropped_count() == 5
    assert d.report().dropped_events == 5
    assert log.flush(5)
    d.close()
    lines = events(path)
    assert kinds(path) == ["dualrun.load", "dualrun.policy", "dualrun.summary"]
    assert lines[-1]["dropped_events"] == 5
    report, problems = read_report(path)
    assert problems == []
    assert report.dropped_events == 5
    # The divergence event was dropped, but the summary covers its observation.
    assert report.route(ROUTE_A).mismatches == 1
    assert "dropped" in report.to_text().split("\n", 2)[1].lower()
    assert "Event-log lines dropped (queue full): 5" in report.to_html()


def test_many_quick_emits_into_a_small_queue_count_every_drop(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "small.jsonl", queue_size=1)
    accepted = sum(log.emit("dualrun.test", i=i) for i in range(2000))
    log.close()
    lines = (tmp_path / "small.jsonl").read_text().splitlines()
    assert accepted + log.dropped_count() == 2000
    assert log.dropped_count() > 0
    assert len(lines) == accepted  # every accepted event was written


def test_emit_returns_at_once_even_when_the_app_logger_is_slow() -> None:
    gate = threading.Event()
    received: list[str] = []

    class SlowLogger:
        def info(self, event: str, **fields: Any) -> None:
            gate.wait(10)
            received.append(event)

    log = EventLog(SlowLogger())
    try:
        timings = []
        for i in range(100):
            started = time.perf_counter()
            assert log.emit("dualrun.test", i=i)
            timings.append(time.perf_counter() - started)
        # the writer is stuck for up to 10 s: waiting for it at all would show
        assert sum(timings) < 1.0
        assert received == []  # the writer is still stuck in the first one
    finally:
        gate.set()
    log.close(timeout=10)
    assert received == ["dualrun.test"] * 100  # nothing accepted is lost
    assert log.dropped_count() == 0


def test_a_writer_under_sustained_load_keeps_writing(tmp_path: Path) -> None:
    """Lines reach the file while the queue never runs dry, not only when it does."""
    path = tmp_path / "busy.jsonl"
    log = EventLog(path, queue_size=100_000)
    deadline = time.monotonic() + 5
    size = 0
    try:
        while time.monotonic() < deadline:
            for i in range(1000):
                log.emit("dualrun.test", i=i, payload="x" * 100)
            size = path.stat().st_size
            if size:
                break
    finally:
        log.close(timeout=30)
    assert size > 0, "nothing was written during 5 s of steady emitting"


def test_emit_after_close_is_counted_as_dropped(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "closed.jsonl")
    assert log.emit("dualrun.test")
    log.close()
    log.close()  # idempotent
    assert not log.emit("dualrun.test")
    assert log.dropped_count() == 1
    assert len((tmp_path / "closed.jsonl").read_text().splitlines()) == 1


# -- bad arguments ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"redact": "not callable"}, "redact is a callable"),
        ({"summary_interval": 0}, "summary_interval"),
        ({"summary_interval": -1.5}, "summary_interval"),
        ({"summary_interval": True}, "summary_interval"),
        ({"summary_interval": "10"}, "summary_interval"),
        ({"queue_size": 0}, "queue_size"),
        ({"queue_size": 1.5}, "queue_size"),
        ({"queue_size": True}, "queue_size"),
        ({"match_sample": -1}, "match_sample"),
        ({"match_sample": 101}, "match_sample"),
        ({"match_sample": False}, "match_sample"),
    ],
)
def test_bad_eventlog_arguments_raise_value_error(
    tmp_path: Path, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        EventLog(tmp_path / "x.jsonl", **kwargs)
    assert not (tmp_path / "x.jsonl").exists()


def test_a_bad_log_target_raises_value_error(lab: LogLab, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is a directory"):
        EventLog(tmp_path)
    with pytest.raises(ValueError, match="a file path, a structlog logger"):
        EventLog(42)
    versions = lab.pair()
    with pytest.raises(ValueError, match="a file path, a structlog logger"):
        dualrun.Dispatcher(versions, log=object())


# -- interpreter exit ---------------------------------------------------------------------


EXIT_SCRIPT = """
import sys

import dualrun

name, old, new, log = sys.argv[1:5]
versions = dualrun.load(name, old=old, new=new)
d = dualrun.Dispatcher(versions, shadow=dualrun.Shadow(), log=log)
quote = d.route(f"{name}.engine:quote")
for n in range(1, 11):
    quote(n)
print("done", flush=True)
# no d.close(): the final summary and the flush happen at interpreter exit
"""


def test_a_log_that_is_never_closed_is_summarized_and_flushed_at_exit(
    lab: LogLab, tmp_path: Path
) -> None:
    name, old, new = lab.dirs()
    script = tmp_path / "exit_script.py"
    script.write_text(EXIT_SCRIPT)
    log = tmp_path / "exit.jsonl"
    done = subprocess.run(
        [sys.executable, str(script), name, str(old), str(new), str(log)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "done\n"
    names = kinds(log)
    assert names[0] == "dualrun.load" and names[-1] == "dualrun.summary"
    report, problems = read_report(log)
    assert problems == []
    route = report.route(f"{name}.engine:quote")
    # n = 1..10: the price differs for 3, 6, 9; items for 5 and 10 (and price too for none)
    assert (route.calls, route.comparisons, route.mismatches) == ({"old": 10, "new": 0}, 10, 5)
