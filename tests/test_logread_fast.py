"""The log reader's two decoders read the same report: the standard library, and msgspec (the
``fast`` extra) that decodes only the head of a divergence line and keeps the rest raw until
no summary covers it. Hypothesis damages real logs in every way a line can be bad, and both
must agree on the report, on every problem they name (in the same words) and on the counts.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from log_helpers import ROUTE_A, ROUTE_B, T0, LogLab, observation

import dualrun
from dualrun.eventlog import EventLog
from dualrun.logread import FAST_JSON_VARIABLE, LogReader, report_from_logs


@pytest.fixture(scope="module")
def base_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[bytes]]:
    """The lines of two dispatchers' logs: summaries in the middle, divergences after."""
    root = tmp_path_factory.mktemp("fastlog")
    lab = LogLab(root)
    versions = lab.pair()
    lines: list[bytes] = []
    try:
        for run in range(2):
            path = lab.path("base")
            d = dualrun.Dispatcher(versions, log=EventLog(path, summary_interval=3600))
            assert d.journal is not None
            for i in range(30):
                status = ("mismatch", "match", "noise", "mismatch")[i % 4]
                route = ROUTE_A if i % 3 else ROUTE_B
                when = T0 + 7 * i + run
                d.recorder.record(observation(route, status, when, key=f"k{i}", old_ns=i * 900))
                if i in (9, 20):
                    d.journal.summarize()
            assert d.journal.log.flush(5)  # no close: the last divergences stay uncovered
            lines += path.read_bytes().splitlines(keepends=True)
            d.close()
    finally:
        lab.cleanup()
    yield lines


def _divergence(lines: list[bytes], i: int) -> dict[str, Any]:
    found = [json.loads(x) for x in lines if b'"dualrun.divergence"' in x]
    return dict(found[i % len(found)])


def bad_line(lines: list[bytes], kind: str, i: int) -> bytes:
    """One damaged line of ``kind``, made from the ``i``-th line or divergence of the log."""
    line = lines[i % len(lines)]
    div = _divergence(lines, i)
    text = json.dumps(div)
    if kind == "garbage":
        return b"not json at all\n"
    if kind == "not utf-8":
        return b"\x80\x81 not utf-8\n"
    if kind == "utf-8 broken inside a string":
        marked = text.replace('"key": "', '"key": "@BAD@', 1).encode()
        return marked.replace(b"@BAD@", b"\xff") + b"\n"
    if kind == "lone surrogate":
        return text.replace('"key": "', '"key": "\\ud800', 1).encode() + b"\n"
    if kind == "truncated":
        return line[: max(1, len(line) // 2)].rstrip(b"\n") + b"\n"
    if kind == "array":
        return b"[1, 2]\n"
    if kind == "deep":
        return b"[" * 3000 + b"\n"
    if kind == "blank":
        return b"   \n"
    if kind == "byte-order mark":
        return b"\xef\xbb\xbf" + line
    if kind == "duplicate":
        return line
    changes: dict[str, Any] = {
        "seq as text": {"seq": str(div["seq"])},
        "run as a number": {"run": 7},
        "unknown schema": {"schema": 2},
        "no route": {"route": None},
        "huge number": {"time": 10**30},
    }
    if kind in changes:
        for field, value in changes[kind].items():
            if value is None:
                div.pop(field, None)
            else:
                div[field] = value
        return json.dumps(div).encode() + b"\n"
    if kind == "infinity":
        return text.replace(f'"time": {json.dumps(div["time"])}', '"time": 1e400').encode() + b"\n"
    if kind == "NaN":
        return text.replace(f'"time": {json.dumps(div["time"])}', '"time": NaN').encode() + b"\n"
    raise AssertionError(kind)


KINDS = [
    "garbage",
    "not utf-8",
    "utf-8 broken inside a string",
    "lone surrogate",
    "truncated",
    "array",
    "deep",
    "blank",
    "byte-order mark",
    "duplicate",
    "seq as text",
    "run as a number",
    "unknown schema",
    "no route",
    "huge number",
    "infinity",
    "NaN",
]


def read(path: Path, fast: bool, **filters: Any) -> tuple[Any, ...]:
    problems: list[str] = []
    report, totals = report_from_logs([str(path)], problems.append, fast=fast, **filters)
    return report.to_dict(), problems, totals.events, totals.problems


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    damage=st.lists(
        st.tuples(st.integers(0, 10**6), st.sampled_from(KINDS), st.integers(0, 10**6)),
        max_size=6,
    ),
    cut=st.booleans(),
    drop=st.integers(0, 10**6),
    filters=st.sampled_from(
        [{}, {"route": ROUTE_A}, {"route": "svc.*"}, {"since": T0 + 60}, {"until": T0 + 100}]
    ),
)
def test_both_decoders_read_the_same_report_problems_and_counts(
    base_log: list[bytes],
    tmp_path: Path,
    damage: list[tuple[int, str, int]],
    cut: bool,
    drop: int,
    filters: dict[str, Any],
) -> None:
    lines = list(base_log)
    del lines[drop % len(lines)]  # a lost line: a summary, a divergence, anything
    for where, kind, which in damage:
        lines.insert(where % (len(lines) + 1), bad_line(base_log, kind, which))
    data = b"".join(lines)
    if cut:
        data = data[: len(data) - len(lines[-1]) // 2]  # a truncated last line
    path = tmp_path / "damaged.jsonl"
    path.write_bytes(data)
    fast, slow = read(path, True, **filters), read(path, False, **filters)
    assert fast == slow


def test_the_fast_decoder_is_used_when_installed_unless_turned_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("msgspec", reason="the fast extra: pip install 'dualrun[fast]'")
    assert LogReader(print)._decoders.fast
    monkeypatch.setenv(FAST_JSON_VARIABLE, "0")
    assert not LogReader(print)._decoders.fast
    assert LogReader(print, fast=True)._decoders.fast


def test_an_uncovered_malformed_divergence_is_named(base_log: list[bytes], tmp_path: Path) -> None:
    div = _divergence(base_log, -1)
    del div["route"]
    path = tmp_path / "malformed.jsonl"
    path.write_bytes(b"".join(base_log) + json.dumps(div).encode() + b"\n")
    for fast in (True, False):
        problems: list[str] = []
        report_from_logs([str(path)], problems.append, fast=fast)
        assert problems == [
            f"{path}:{len(base_log) + 1}: malformed 'dualrun.divergence' event skipped "
            "(no field 'route')"
        ]
