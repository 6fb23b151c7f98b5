"""``dualrun report`` on hostile logs: never a traceback, every unusable line named, and no raw
control character (terminal escape, newline) or script breaker in any rendering.

A valid divergence and a valid summary are written, then one of their values somewhere (at a
random JSON path) is replaced by a random JSON value, including ``NaN``, ``Infinity``, huge
integers, unknown labels, non-dict examples and strings full of control characters; lines of
random JSON shape are thrown in too. Whatever the line, the command exits 0 (the line was
usable) or 1 (it was skipped and named on stderr as ``FILE:LINE``), and every format renders.
"""

from __future__ import annotations

import copy
import io
import json
import math
import re
import tempfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dualrun import cli
from dualrun.html import render_html
from dualrun.report import Report, RouteReport

DIVERGENCE: dict[str, Any] = {
    "schema": 1,
    "run": "r1",
    "pid": 1,
    "host": "h",
    "seq": 1,
    "route": "svc.a:quote",
    "key": "k",
    "primary": "old",
    "old": {
        "label": "old",
        "value": "1",
        "error": None,
        "wall_ns": 1000,
        "cpu_ns": 500,
        "timed_out": False,
    },
    "new": {
        "label": "new",
        "value": "2",
        "error": None,
        "wall_ns": 2000,
        "cpu_ns": 1000,
        "timed_out": False,
    },
    "differences": [{"path": "$.price", "kind": "value", "old": "1", "new": "2"}],
    "noise": [],
    "status": "mismatch",
    "time": 1772323200.0,
    "event": "dualrun.divergence",
}
SUMMARY: dict[str, Any] = {
    "schema": 1,
    "run": "r2",
    "seq": 1,
    "start": 1772323200.0,
    "end": 1772323260.0,
    "policy": "Fixed('old')",
    "routes": {
        "svc.a:quote": {
            "calls": {"old": 3, "new": 1},
            "crossings": 0,
            "aggregate": {
                "route": "svc.a:quote",
                "comparisons": 1,
                "matches": 0,
                "mismatches": 1,
                "noise": 0,
                "timeouts": 0,
                "dropped": 0,
                "skipped": 0,
                "internal_errors": 0,
                "groups_overflow": 0,
                "new_only_errors": 0,
                "errors": {"old": 0, "new": 0},
                "latency": {"old": {"175": 1}, "new": {"191": 1}},
                "cpu_ns": {"old": 500, "new": 1000},
                "groups": [
                    {
                        "path": "$.price",
                        "kind": "value",
                        "count": 1,
                        "examples": [{"path": "$.price", "old": "1", "new": "2", "key": "k"}],
                    }
                ],
                "noise_groups": [],
                "timeline": {"29538720": [1, 1]},
                "last_internal_error": None,
            },
        }
    },
    "dropped_events": 0,
    "policy_errors": 0,
    "last_policy_error": None,
    "event": "dualrun.summary",
}
FORMATS = ("text", "markdown", "json", "html")
HOSTILE_TEXT = "a\x1b[2J\x1b]0;pwned\x07\nfake line\r\x9b31m\u202eevil\x00<!--<script></SCRIPT>&"
# Control characters a terminal or a pager acts on: C0 (but the layout's own newlines), DEL,
# C1, line and paragraph separators, and bidirectional overrides.
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def report_cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli.main(["report", *args])
    assert "Traceback" not in err.getvalue()
    return code, out.getvalue(), err.getvalue()


def every_format(log: Path) -> list[tuple[int, str, str]]:
    return [report_cli(str(log), "--format", fmt) for fmt in FORMATS]


def write(path: Path, *events: Any) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return path


def assert_clean(fmt: str, out: str) -> None:
    if fmt in ("text", "markdown"):
        assert not RAW_CONTROL.search(out), RAW_CONTROL.findall(out)
    if fmt == "json":
        json.loads(out)  # strict enough: also no NaN (json.dumps would write it)
        assert "NaN" not in out and "Infinity" not in out
    if fmt == "html":
        assert_script_safe(out)


def assert_script_safe(page: str) -> None:
    """The inline JSON holds no '<' at all, so no string can end or re-open a script."""
    data = re.search(
        r"<script type='application/json' id='dualrun-data'>(.*?)</script>", page, re.S
    )
    assert data is not None
    assert "<" not in data.group(1) and ">" not in data.group(1)
    json.loads(data.group(1))
    assert page.count("<script") == 2 and page.lower().count("</script") == 2


# -- known bad lines --------------------------------------------------------------------------


def _set(event: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    changed = copy.deepcopy(event)
    node = changed
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return changed


AGG = ("routes", "svc.a:quote", "aggregate")
BAD_LINES = {
    "unknown label in an outcome": (DIVERGENCE, ("old", "label"), "x"),
    "NaN time": (DIVERGENCE, ("time",), math.nan),
    "infinite time": (DIVERGENCE, ("time",), math.inf),
    "huge time": (DIVERGENCE, ("time",), 10**400),
    "huge wall time": (DIVERGENCE, ("new", "wall_ns"), 10**30),
    "string wall time": (DIVERGENCE, ("new", "wall_ns"), "12"),
    "unknown status": (DIVERGENCE, ("status",), "weird"),
    "difference not a dict": (DIVERGENCE, ("differences",), [1, 2]),
    "difference with extra field": (
        DIVERGENCE,
        ("differences",),
        [{"path": "$", "kind": "value", "old": "1", "new": "2", "x": 1}],
    ),
    "route not a string": (DIVERGENCE, ("route",), ["a"]),
    "seq a float": (DIVERGENCE, ("seq",), 1.5),
    "summary end NaN": (SUMMARY, ("end",), math.nan),
    "summary end huge": (SUMMARY, ("end",), 10**400),
    "examples not dicts": (SUMMARY, (*AGG, "groups", 0, "examples"), [1, "x"]),
    "examples not a list": (SUMMARY, (*AGG, "groups", 0, "examples"), "abc"),
    "huge histogram bucket": (SUMMARY, (*AGG, "latency", "old"), {str(10**12): 1}),
    "huge count": (SUMMARY, (*AGG, "comparisons"), 10**400),
    "NaN count": (SUMMARY, (*AGG, "mismatches"), math.nan),
    "timeline not pairs": (SUMMARY, (*AGG, "timeline"), {"5": [1]}),
    "huge timeline minute": (SUMMARY, (*AGG, "timeline"), {str(10**30): [1, 1]}),
    "calls not numbers": (SUMMARY, ("routes", "svc.a:quote", "calls"), {"old": "x"}),
    "routes not a dict": (SUMMARY, ("routes",), ["svc.a:quote"]),
    "route entry not a dict": (SUMMARY, ("routes", "svc.a:quote"), 5),
    "policy error not text": (SUMMARY, ("last_policy_error",), {"a": 1}),
    "internal error not text": (SUMMARY, (*AGG, "last_internal_error"), [1]),
}


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_an_unusable_line_is_skipped_and_named_never_a_traceback(case: str, tmp_path: Path) -> None:
    base, path, value = BAD_LINES[case]
    log = write(
        tmp_path / "log.jsonl", DIVERGENCE if base is SUMMARY else SUMMARY, _set(base, path, value)
    )
    for fmt, (code, out, err) in zip(FORMATS, every_format(log), strict=True):
        assert code == 1, (fmt, err, out)
        assert f"{log}:2: " in err and f"{log}:1" not in err, err
        assert_clean(fmt, out)


def test_the_good_lines_read_back_cleanly(tmp_path: Path) -> None:
    log = write(tmp_path / "log.jsonl", DIVERGENCE, SUMMARY)
    for fmt, (code, out, err) in zip(FORMATS, every_format(log), strict=True):
        assert (code, err) == (0, ""), fmt
        assert_clean(fmt, out)


# -- control characters and script breakers in every string -----------------------------------

STRING_PATHS = [
    ("route",),
    ("key",),
    ("old", "value"),
    ("old", "error"),
    ("differences", 0, "path"),
    ("differences", 0, "kind"),
    ("differences", 0, "old"),
]
SUMMARY_STRING_PATHS = [
    ("policy",),
    ("last_policy_error",),
    (*AGG, "last_internal_error"),
    (*AGG, "groups", 0, "path"),
    (*AGG, "groups", 0, "kind"),
    (*AGG, "groups", 0, "examples", 0, "old"),
    (*AGG, "groups", 0, "examples", 0, "key"),
]


# Shown in the HTML report only (keys, outcomes), or not the first example of their group.
NOT_IN_TEXT = [
    ("key",),
    ("old", "value"),
    ("old", "error"),
    ("differences", 0, "old"),
    (*AGG, "groups", 0, "examples", 0, "key"),
]


@pytest.mark.parametrize("where", STRING_PATHS + SUMMARY_STRING_PATHS, ids=str)
def test_control_characters_read_from_a_log_are_escaped_in_every_format(
    where: tuple[Any, ...], tmp_path: Path
) -> None:
    if where in STRING_PATHS:
        events = [_set(DIVERGENCE, where, HOSTILE_TEXT), SUMMARY]
    else:
        hostile = _set(SUMMARY, where, HOSTILE_TEXT)
        if where == ("last_policy_error",):
            hostile["policy_errors"] = 1
        if where[-1] == "last_internal_error":
            hostile["routes"]["svc.a:quote"]["aggregate"]["internal_errors"] = 1
        events = [DIVERGENCE, hostile]
    log = write(tmp_path / "log.jsonl", *events)
    for fmt, (code, out, err) in zip(FORMATS, every_format(log), strict=True):
        assert (code, err) == (0, ""), fmt
        assert_clean(fmt, out)
        shown_in_text = where not in NOT_IN_TEXT
        if fmt in ("text", "markdown") and shown_in_text:
            assert "\\x1b[2J" in out, out  # shown, escaped, not acted upon


def test_a_file_name_with_control_characters_is_escaped_on_stderr(tmp_path: Path) -> None:
    log = tmp_path / "evil\x1b[2Jname\n.jsonl"
    log.write_text("not json\n" + json.dumps(DIVERGENCE) + "\n")
    code, _out, err = report_cli(str(log))
    assert code == 1
    assert "\x1b" not in err and err.count("\n") == 1
    assert "evil\\x1b[2Jname\\n.jsonl:1: corrupt line skipped" in err


def test_a_script_breaker_in_any_string_leaves_the_page_script_intact() -> None:
    breakers = [
        "<!--<script>",
        "</script>",
        "</SCRIPT >",
        "<ScRiPt",
        "-->",
        "]]>",
        "&lt;",
        "\u2028",
    ]
    route = RouteReport(route=" ".join(breakers), calls={"old": 1, "new": 0})
    report = Report(policy="".join(breakers), routes=[route], last_policy_error="<!--<script>")
    page = render_html(report)
    assert_script_safe(page)
    data = re.search(r"id='dualrun-data'>(.*?)</script>", page, re.S)
    assert data is not None and json.loads(data.group(1)) == report.to_dict()


# -- random shapes ----------------------------------------------------------------------------

SPECIAL_NUMBERS = st.sampled_from([math.nan, math.inf, -math.inf, 10**400, -(10**30), 2**64])
JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | SPECIAL_NUMBERS
    | st.text(max_size=20)
    | st.sampled_from(["old", "new", "match", "mismatch", "$.x", HOSTILE_TEXT])
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            found += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += _paths(v, (*prefix, i))
    return found


@st.composite
def mutated_events(draw: st.DrawFn) -> Any:
    choice = draw(st.integers(0, 2))
    if choice == 2:  # any shape at all, sometimes pretending to be an event
        value = draw(JSON_VALUES)
        if isinstance(value, dict) and draw(st.booleans()):
            value.update(
                schema=1, event=draw(st.sampled_from(["dualrun.summary", "dualrun.divergence"]))
            )
        return value
    event = DIVERGENCE if choice == 0 else SUMMARY
    paths = [p for p in _paths(event) if p[-1] not in ("schema", "event")]
    return _set(event, draw(st.sampled_from(paths)), draw(JSON_VALUES))


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(events=st.lists(mutated_events(), min_size=1, max_size=4), fast=st.booleans())
def test_lines_of_any_shape_never_break_the_report(events: list[Any], fast: bool) -> None:
    """Both decoders: the standard library's and, with the ``fast`` extra, msgspec's."""
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as patch:
        patch.setenv("DUALRUN_FAST_JSON", "1" if fast else "0")
        log = write(Path(tmp) / "log.jsonl", DIVERGENCE, *events, SUMMARY)
        for fmt, (code, out, err) in zip(FORMATS, every_format(log), strict=True):
            assert code in (0, 1), err
            named = {int(n) for n in re.findall(re.escape(str(log)) + r":(\d+): ", err)}
            assert (code == 1) == bool(err), err
            assert len(named) == err.count("\n"), err  # every message names its line
            assert 1 not in named and len(events) + 2 not in named, err  # the good ones count
            assert_clean(fmt, out)


def test_replay_and_pin_token_messages_are_escaped(tmp_path: Path) -> None:
    missing = tmp_path / "evil\x1b]0;pwned\x07\n.jsonl"
    err = io.StringIO()
    with redirect_stdout(io.StringIO()), redirect_stderr(err):
        code = cli.main(["replay", str(missing), "--new", str(tmp_path), "--old", str(tmp_path)])
    assert code == 2
    assert "\x1b" not in err.getvalue() and "\x07" not in err.getvalue()
    assert "evil\\x1b]0;pwned\\x07\\n.jsonl" in err.getvalue()
    secret_file = tmp_path / "no\x1b[2Jsecret"
    err = io.StringIO()
    with redirect_stdout(io.StringIO()), redirect_stderr(err):
        code = cli.main(["pin-token", "new", "--secret-file", str(secret_file)])
    assert code == 2 and "\x1b" not in err.getvalue() and "no\\x1b[2Jsecret" in err.getvalue()


def test_control_messages_are_escaped(tmp_path: Path) -> None:
    store = tmp_path / "no\x1b[2Jstore.db"
    err = io.StringIO()
    with redirect_stdout(io.StringIO()), redirect_stderr(err):
        code = cli.main(["control", "--db", str(store), "status"])
    assert code == 2
    assert "\x1b" not in err.getvalue() and "no\\x1b[2Jstore.db" in err.getvalue()
