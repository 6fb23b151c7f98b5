"""``dualrun report``: logs of several processes added up, options, and bad logs.

Two processes writing two logs give a merged report whose counts are the sums of their
in-process reports. ``--route`` (exact or glob), ``--since``/``--until`` (ISO 8601 or epoch
seconds), ``--top`` and every ``--format`` do what they say. Each kind of bad log (a corrupt
line, a truncated last line, an unknown schema version, an empty file, a missing file, a
directory) gives a message on stderr naming the file (and the line), the rest of the data on
stdout, the documented exit code, and never a traceback.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from log_helpers import (
    ROUTE_A,
    ROUTE_B,
    T0,
    FakeClock,
    LogLab,
    child_command,
    observation,
    target,
    write_child,
)

import dualrun.journal
from dualrun import cli
from dualrun.logread import report_from_logs


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[LogLab]:
    lab = LogLab(tmp_path)
    yield lab
    lab.cleanup()


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``dualrun report ARGS``: exit code, stdout, stderr (never a traceback)."""
    code = cli.main(["report", *args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def routes(out: str) -> dict[str, dict[str, Any]]:
    """The routes of a JSON report, by name."""
    report = json.loads(out)
    assert report["schema"] == 1
    return {r["route"]: r for r in report["routes"]}


def counts(route: dict[str, Any]) -> tuple[int, int, int, int]:
    return route["comparisons"], route["matches"], route["mismatches"], route["noise"]


def numbers(report: Any) -> dict[str, Any]:
    """A report's dict without the divergence examples."""
    data = report.to_dict()
    for route in data["routes"]:
        for kind in ("divergences", "noise_divergences"):
            for divergence in route[kind]:
                divergence.pop("examples")
    return data


def divergence_counts(route: dict[str, Any]) -> dict[str, int]:
    return {d["path"]: d["count"] for d in route["divergences"]}


# -- a log with known contents at known times ------------------------------------------------


@pytest.fixture
def timed_log(lab: LogLab, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Two batches an hour apart, each followed by a summary, written by a real dispatcher.

    Batch 1 (summary at T0+120 s): route A 4 mismatches ($.price x4, $.tax x1) + 2 matches;
    route B 2 mismatches ($.total) + 2 matches. Batch 2 (summary at T0+3720 s): route A
    2 mismatches ($.tax) + 3 matches; route B 1 noise.
    """
    clock = FakeClock(T0)
    monkeypatch.setattr(dualrun.journal, "time", clock)
    versions = lab.pair()
    path = lab.path("timed")
    d = lab.dispatcher(versions, log=str(path))
    assert d.journal is not None
    batch1 = [
        observation(ROUTE_A, "mismatch", T0 + 1),
        observation(ROUTE_A, "mismatch", T0 + 2, new_ns=4000),
        observation(ROUTE_A, "mismatch", T0 + 61),
        observation(ROUTE_A, "mismatch", T0 + 62, paths=("$.price", "$.tax")),
        observation(ROUTE_A, "match", T0 + 63),
        observation(ROUTE_A, "match", T0 + 64),
        observation(ROUTE_B, "mismatch", T0 + 5, paths=("$.total",)),
        observation(ROUTE_B, "mismatch", T0 + 6, paths=("$.total",)),
        observation(ROUTE_B, "match", T0 + 7),
        observation(ROUTE_B, "match", T0 + 8),
    ]
    batch2 = [
        observation(ROUTE_A, "mismatch", T0 + 3601, paths=("$.tax",)),
        observation(ROUTE_A, "mismatch", T0 + 3602, paths=("$.tax",)),
        *(observation(ROUTE_A, "match", T0 + 3603 + i) for i in range(3)),
        observation(ROUTE_B, "noise", T0 + 3610),
    ]
    for batch, summary_at in ((batch1, T0 + 120), (batch2, T0 + 3720)):
        for obs in batch:
            d.recorder.record(obs)
        clock.now = summary_at
        d.journal.summarize()
    clock.now = T0 + 3800
    d.close()
    return path


def test_the_timed_log_reads_back_as_written(
    timed_log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, str(timed_log), "--format", "json")
    assert (code, err) == (0, "")
    found = routes(out)
    assert counts(found[ROUTE_A]) == (11, 5, 6, 0)
    assert divergence_counts(found[ROUTE_A]) == {"$.price": 4, "$.tax": 3}
    assert counts(found[ROUTE_B]) == (5, 2, 2, 1)
    assert found[ROUTE_A]["timeline"][0] == [int(T0 // 60), 2, 2]


# -- two processes ------------------------------------------------------------------------


def test_two_processes_add_up_to_the_sum_of_their_reports(
    lab: LogLab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name, old, new = lab.dirs()
    script = write_child(tmp_path)
    logs = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    children = [
        subprocess.Popen(
            child_command(script, name, old, new, log, "once", count, start),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for log, count, start in ((logs[0], 120, 0), (logs[1], 90, 1000))
    ]
    reports = []
    for child in children:
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
        reports.append({r["route"]: r for r in json.loads(out)["routes"]})

    problems: list[str] = []
    merged, totals = report_from_logs([str(p) for p in logs], problems.append)
    assert problems == [] and totals.problems == 0
    quote, stamp = f"{name}.engine:quote", f"{name}.engine:stamp"
    assert sorted(r.route for r in merged.routes) == [quote, stamp]
    for route in (quote, stamp):
        a, b, m = reports[0][route], reports[1][route], merged.route(route)
        for field in ("comparisons", "matches", "mismatches", "noise", "timeouts", "dropped"):
            assert getattr(m, field) == a[field] + b[field], (route, field)
        for label in ("old", "new"):
            assert m.errors[label] == a["errors"][label] + b["errors"][label]
            assert m.calls[label] == a["calls"][label] + b["calls"][label]
        for kind in ("divergences", "noise_divergences"):
            expected: Counter[tuple[str, str]] = Counter()
            for report in (a, b):
                expected.update({(d["path"], d["kind"]): d["count"] for d in report[kind]})
            assert {(d.path, d.kind): d.count for d in getattr(m, kind)} == dict(expected)
    # the data is varied enough for the sums to mean something
    q = merged.route(quote)
    assert q.calls["old"] > 0 and q.calls["new"] > 0 and q.calls["old"] + q.calls["new"] == 210
    assert q.mismatches > 0 and q.matches > 0 and q.errors["old"] > 0 and q.errors["new"] > 0
    assert merged.route(stamp).noise > 0

    # both processes appending to one file (lines interleaved, each run's in order) read the same
    shared = tmp_path / "shared.jsonl"
    a_lines, b_lines = (p.read_text().splitlines(keepends=True) for p in logs)
    interleaved = [
        line for pair in itertools.zip_longest(a_lines, b_lines) for line in pair if line
    ]
    shared.write_text("".join(interleaved))
    together, _ = report_from_logs([str(shared)], problems.append)
    assert problems == []
    # the same numbers; which examples fill a group's few slots depends on the order of lines
    assert numbers(together) == numbers(merged)
    assert numbers(together) != numbers(report_from_logs([str(logs[0])], problems.append)[0])

    # the CLI prints the same merged numbers
    code, out, err = run(capsys, *map(str, logs), "--format", "json")
    assert (code, err) == (0, "")
    assert routes(out)[quote]["comparisons"] == q.comparisons


# -- options ------------------------------------------------------------------------------


def test_route_filter_exact_and_glob(timed_log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for pattern, expected in (
        (ROUTE_A, [ROUTE_A]),
        ("svc.*", [ROUTE_A, ROUTE_B]),
        ("*:total", [ROUTE_B]),
        ("svc.?:quote", [ROUTE_A]),
    ):
        code, out, err = run(capsys, str(timed_log), "--route", pattern, "--format", "json")
        assert (code, err) == (0, "")
        assert sorted(routes(out)) == expected, pattern
    code, out, _ = run(capsys, str(timed_log), "--route", ROUTE_A)
    assert code == 0 and ROUTE_A in out and ROUTE_B not in out
    code, out, _ = run(capsys, str(timed_log), "--route", "nothing.*", "--format", "json")
    assert code == 0 and routes(out) == {}


@pytest.mark.parametrize(
    ("since", "until", "a", "b"),
    [
        ("2026-03-01T00:30:00Z", None, (5, 3, 2, 0), (1, 0, 0, 1)),
        (str(T0 + 1800), None, (5, 3, 2, 0), (1, 0, 0, 1)),
        (None, "2026-03-01T00:30:00Z", (6, 2, 4, 0), (4, 2, 2, 0)),
        (None, str(int(T0 + 1800)), (6, 2, 4, 0), (4, 2, 2, 0)),
        ("2026-03-01T01:00:00+01:00", "2026-03-01T00:10:00Z", (6, 2, 4, 0), (4, 2, 2, 0)),
        ("2026-03-01T00:00:00Z", "2026-03-01T02:00:00Z", (11, 5, 6, 0), (5, 2, 2, 1)),
    ],
)
def test_since_and_until_select_summaries_by_time(
    timed_log: Path,
    capsys: pytest.CaptureFixture[str],
    since: str | None,
    until: str | None,
    a: tuple[int, ...],
    b: tuple[int, ...],
) -> None:
    args = [str(timed_log), "--format", "json"]
    args += ["--since", since] if since else []
    args += ["--until", until] if until else []
    code, out, err = run(capsys, *args)
    assert (code, err) == (0, "")
    found = routes(out)
    assert counts(found[ROUTE_A]) == a
    assert counts(found[ROUTE_B]) == b


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--since", "yesterday", "a time is ISO 8601"),
        ("--until", "2026-13-01T00:00:00Z", "a time is ISO 8601"),
        ("--since", "2026-03-01T00:00:00", "a time needs its zone"),
        ("--top", "0", "--top is a whole number >= 1"),
    ],
)
def test_bad_option_values_exit_2_with_a_message(
    timed_log: Path, capsys: pytest.CaptureFixture[str], option: str, value: str, message: str
) -> None:
    code, out, err = run(capsys, str(timed_log), option, value)
    assert code == 2
    assert out == ""
    assert err.startswith("dualrun report: ") and message in err and value in err


def test_bad_arguments_exit_2(timed_log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for args in (["report"], ["report", str(timed_log), "--format", "pdf"]):
        with pytest.raises(SystemExit) as exited:
            cli.main(args)
        assert exited.value.code == 2
        err = capsys.readouterr().err
        assert "usage: dualrun report" in err and "Traceback" not in err


def test_top_limits_the_divergence_rows(
    timed_log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, full, _ = run(capsys, str(timed_log), "--route", ROUTE_A)
    code, top, err = run(capsys, str(timed_log), "--route", ROUTE_A, "--top", "1")
    assert (code, err) == (0, "")
    assert "$.price" in full and "$.tax" in full
    assert "$.price" in top and "$.tax" not in top  # the most frequent one stays
    assert "... and 1 more signatures" in top
    _, markdown, _ = run(capsys, str(timed_log), "--route", ROUTE_A, "--format", "markdown")
    _, markdown_top, _ = run(
        capsys, str(timed_log), "--route", ROUTE_A, "--format", "markdown", "--top", "1"
    )
    assert markdown.count("| value |") == 2 and markdown_top.count("| value |") == 1
    _, page, _ = run(capsys, str(timed_log), "--format", "html")
    _, page_top, _ = run(capsys, str(timed_log), "--format", "html", "--top", "1")
    # A: 2 divergence rows; B: 1 divergence and 1 noise row
    assert page.count("<tr class='divergence'>") == 4
    assert page_top.count("<tr class='divergence'>") == 3
    _, data, _ = run(capsys, str(timed_log), "--route", ROUTE_A, "--format", "json")
    _, data_top, _ = run(
        capsys, str(timed_log), "--route", ROUTE_A, "--format", "json", "--top", "1"
    )
    assert len(routes(data)[ROUTE_A]["divergences"]) == 2
    assert [d["path"] for d in routes(data_top)[ROUTE_A]["divergences"]] == ["$.price"]


def test_policy_errors_reach_the_report_from_the_log(
    lab: LogLab, capsys: pytest.CaptureFixture[str]
) -> None:
    class Broken:
        def choose(self, request: Any) -> str:
            raise RuntimeError("flag service down")

    versions = lab.pair()
    log = lab.path()
    d = lab.dispatcher(versions, policy=Broken(), log=log)
    quote = d.route(target(versions, "quote"))
    for n in range(1, 6):
        quote(n)
    d.close()
    code, out, _ = run(capsys, str(log), "--format", "json")
    from_log = json.loads(out)
    assert code == 0
    assert from_log["policy_errors"] == 5 == d.report().policy_errors
    assert "flag service down" in from_log["last_policy_error"]


def test_every_format(timed_log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, text, _ = run(capsys, str(timed_log))
    assert code == 0
    assert text.startswith("dualrun report (policy Fixed('old'))")
    assert "mismatch rate" in text and "divergences (most frequent first):" in text
    header = next(line for line in text.splitlines() if "of calls" in line and "path" in line)
    expected = ["calls", "of", "calls", "kind", "path", "example:", "old", "->", "new"]
    assert header.split() == expected

    code, out, _ = run(capsys, str(timed_log), "--format", "json")
    assert code == 0 and json.loads(out)["schema"] == 1

    code, markdown, _ = run(capsys, str(timed_log), "--format", "markdown")
    assert code == 0
    assert markdown.startswith("## dualrun report")
    assert f"### `{ROUTE_A}`" in markdown
    assert "| calls | of calls | kind | path | example: old -> new |" in markdown
    assert "|---|---|---|---|---|" in markdown

    code, page, _ = run(capsys, str(timed_log), "--format", "html")
    assert code == 0
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert page.count("<html") == 1 and page.count("<body") == 1
    assert page.count("<section class='route'") == 2


def test_routes_with_calls_but_no_comparisons_render_in_every_format(
    lab: LogLab, capsys: pytest.CaptureFixture[str]
) -> None:
    versions = lab.pair()
    path = lab.path("calls-only")
    d = lab.dispatcher(versions, log=str(path))  # no shadow: calls are counted, not compared
    quote = d.route(target(versions, "quote"))
    for n in (1, 2, 3):
        quote(n)
    d.close()
    in_process = d.report()
    name = target(versions, "quote")
    assert in_process.route(name).calls == {"old": 3, "new": 0}
    for render in (in_process.to_text, in_process.to_markdown, in_process.to_html):
        assert name in render()
    for fmt in ("text", "markdown", "json", "html"):
        code, out, err = run(capsys, str(path), "--format", fmt)
        assert (code, err) == (0, ""), fmt
        assert name in out
    code, out, _ = run(capsys, str(path), "--format", "json")
    assert routes(out)[name]["calls"] == {"old": 3, "new": 0}
    code, page, _ = run(capsys, str(path), "--format", "html")
    assert "<section class='route'" in page and "<svg class='mismatch-chart'" not in page


# -- bad logs -----------------------------------------------------------------------------


def clean_json(capsys: pytest.CaptureFixture[str], log: Path) -> str:
    code, out, err = run(capsys, str(log), "--format", "json")
    assert (code, err) == (0, "")
    return out


def test_a_corrupt_line_in_the_middle(
    timed_log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = clean_json(capsys, timed_log)
    lines = timed_log.read_bytes().splitlines(keepends=True)
    for number, garbage in enumerate(
        (
            b'{"schema": 1, "event": "dualrun.divergence", "rou\n',
            b"\x80\x81 not utf-8\n",
            b"[" * 5000 + b"\n",
        ),
    ):
        bad = tmp_path / f"corrupt{number}.jsonl"
        bad.write_bytes(b"".join(lines[:3]) + garbage + b"".join(lines[3:]))
        code, out, err = run(capsys, str(bad), "--format", "json")
        assert code == 1
        assert f"{bad}:4: corrupt line skipped" in err
        assert err.count("\n") == 1
        assert out == expected  # the rest is all there


def test_a_truncated_last_line(
    timed_log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = clean_json(capsys, timed_log)
    lines = timed_log.read_bytes().splitlines(keepends=True)
    bad = tmp_path / "truncated.jsonl"
    bad.write_bytes(b"".join(lines) + lines[1][:40])
    code, out, err = run(capsys, str(bad), "--format", "json")
    assert code == 1
    assert err.startswith(f"dualrun report: {bad}:{len(lines) + 1}: truncated last line skipped")
    assert out == expected


def test_an_unknown_schema_version(
    timed_log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = clean_json(capsys, timed_log)
    lines = timed_log.read_bytes().splitlines(keepends=True)
    future = json.loads(lines[2])
    future["schema"] = 2
    bad = tmp_path / "future.jsonl"
    bad.write_bytes(b"".join(lines) + json.dumps(future).encode() + b"\n")
    code, out, err = run(capsys, str(bad), "--format", "json")
    assert code == 1
    assert f"{bad}:{len(lines) + 1}: unknown schema version 2" in err
    assert "reads schema 1" in err
    assert out == expected
    only_future = tmp_path / "only-future.jsonl"
    only_future.write_text(json.dumps(future) + "\n")
    code, out, err = run(capsys, str(only_future))
    assert (code, out) == (2, "")
    assert f"{only_future}:1: unknown schema version 2" in err
    assert "no events could be read" in err


def test_a_malformed_event_is_skipped_whole(
    timed_log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = clean_json(capsys, timed_log)
    summary = {
        "schema": 1,
        "event": "dualrun.summary",
        "run": "r1",
        "end": T0,
        "routes": {
            ROUTE_A: {"calls": {"old": 5, "new": 0}, "aggregate": {"route": ROUTE_A, "x": 1}}
        },
    }
    bad = tmp_path / "malformed.jsonl"
    bad.write_bytes(timed_log.read_bytes() + json.dumps(summary).encode() + b"\n")
    code, out, err = run(capsys, str(bad), "--format", "json")
    assert code == 1
    assert f"{bad}:{len(timed_log.read_bytes().splitlines()) + 1}: malformed " in err
    assert out == expected  # not even the calls of the malformed summary were counted


@pytest.mark.parametrize("kind", ["empty", "missing", "directory"])
def test_an_empty_file_a_missing_file_and_a_directory(
    timed_log: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    kind: str,
) -> None:
    expected = clean_json(capsys, timed_log)
    bad = tmp_path / f"bad-{kind}"
    if kind == "empty":
        bad.write_text("")
    elif kind == "directory":
        bad.mkdir()
    message = {
        "empty": f"{bad}: empty file, no events",
        "missing": f"{bad}: cannot open (No such file or directory); skipped",
        "directory": f"{bad}: is a directory, not a log file; skipped",
    }[kind]
    code, out, err = run(capsys, str(bad))
    assert code == 2 and out == ""
    assert err == f"dualrun report: {message}\ndualrun report: no events could be read\n"
    code, out, err = run(capsys, str(bad), str(timed_log), "--format", "json")
    assert code == 1
    assert err == f"dualrun report: {message}\n"
    assert out == expected


def test_bad_logs_through_python_m_dualrun(
    timed_log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = clean_json(capsys, timed_log)
    lines = timed_log.read_bytes().splitlines(keepends=True)
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_bytes(lines[0] + b"not json at all\n" + b"".join(lines[1:]) + b'{"schema": 1, "ev')
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "adir").mkdir()
    files = [mixed, tmp_path / "empty.jsonl", tmp_path / "missing.jsonl", tmp_path / "adir"]
    done = subprocess.run(
        [sys.executable, "-m", "dualrun", "report", *map(str, files), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stdout == expected
    assert done.stderr.splitlines() == [
        f"dualrun report: {mixed}:2: corrupt line skipped (Expecting value)",
        f"dualrun report: {mixed}:{len(lines) + 2}: truncated last line skipped "
        "(Unterminated string starting at)",
        f"dualrun report: {tmp_path / 'empty.jsonl'}: empty file, no events",
        f"dualrun report: {tmp_path / 'missing.jsonl'}: cannot open (No such file or "
        "directory); skipped",
        f"dualrun report: {tmp_path / 'adir'}: is a directory, not a log file; skipped",
    ]
