"""Nothing reaches a report or a log before the redactor: dict keys and set members inside
difference paths, the error texts of hooks, policy errors, and the events written when a
redactor itself fails.

Each test puts a secret where it could leak, runs shadowed calls with
``Shadow(redact=...)`` and an event log, and then looks for the secret in every rendering of
the in-process report, in the report read back from the log, and in the log's bytes.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from shadow_helpers import Lab

import dualrun
from dualrun import cli
from dualrun.compare import Differ
from dualrun.redaction import redact_path

SECRET = "alice@example.com"


def hashed(what: str, text: str) -> str:
    return f"<{what} {hashlib.sha256(text.encode()).hexdigest()[:8]}>"


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    lab = Lab(tmp_path)
    yield lab
    lab.cleanup()


def assert_nowhere(d: dualrun.Dispatcher, log: Path, secret: str = SECRET) -> None:
    d.close()
    report = d.report()
    for text in (report.to_text(), report.to_markdown(), report.to_json(), report.to_html()):
        assert secret not in text
    assert secret not in log.read_text()
    code = cli.main(["report", str(log), "--format", "json"])
    assert code == 0


def run(lab: Lab, old: str, new: str, tmp_path: Path, **shadow: Any) -> tuple[Any, Path, Any]:
    versions = lab.pair(old, new)
    log = tmp_path / "redacted.jsonl"
    d = lab.dispatcher(versions, shadow=dualrun.Shadow(redact=hashed, **shadow), log=str(log))
    return d, log, d.route(lab.target("quote"))


def test_dict_keys_in_difference_paths_are_redacted(lab: Lab, tmp_path: Path) -> None:
    d, log, quote = run(
        lab,
        f"def quote(n):\n    return {{'balances': {{{SECRET!r}: n, ('bob', 7): 1}}}}\n",
        f"def quote(n):\n    return {{'balances': {{{SECRET!r}: n + 1, ('bob', 8): 1}}}}\n",
        tmp_path,
    )
    quote(1)
    [route] = d.report().routes
    paths = {x["path"] for g in route.divergences for x in g.examples}
    assert f"$.balances[{hashed('value', repr(SECRET))}]" in paths  # the structure stays
    assert all("bob" not in p for p in paths)
    assert_nowhere(d, log)
    assert "bob" not in log.read_text()


def test_set_members_in_difference_paths_are_redacted(lab: Lab, tmp_path: Path) -> None:
    d, log, quote = run(
        lab,
        f"def quote(n):\n    return {{'tags': {{{SECRET!r}, 'a'}}}}\n",
        "def quote(n):\n    return {'tags': {'a', 'b'}}\n",
        tmp_path,
    )
    quote(1)
    [route] = d.report().routes
    assert {g.path for g in route.divergences} == {
        f"$.tags{{{hashed('value', repr(SECRET))}}}",
        f"$.tags{{{hashed('value', repr('b'))}}}",
    }
    assert_nowhere(d, log)


def test_hook_error_texts_are_redacted(lab: Lab, tmp_path: Path) -> None:
    def compare(old: Any, new: Any) -> bool:
        raise ValueError(f"cannot compare {old!r}")

    d, log, quote = run(
        lab,
        f"def quote(n):\n    return {SECRET!r}\n",
        f"def quote(n):\n    return {SECRET!r} + '!'\n",
        tmp_path,
        compare=compare,
    )
    quote(1)
    [route] = d.report().routes
    assert route.internal_errors == 1
    assert route.last_internal_error is not None and route.last_internal_error.startswith("<error ")
    assert_nowhere(d, log)


def test_a_failing_shadow_redactor_is_never_quoted(lab: Lab, tmp_path: Path) -> None:
    def redact(what: str, text: str) -> str:
        raise ValueError(f"no redaction for {text}")

    versions = lab.pair(
        f"def quote(n):\n    return {SECRET!r}\n", f"def quote(n):\n    return {SECRET!r} + '!'\n"
    )
    log = tmp_path / "redacted.jsonl"
    d = lab.dispatcher(versions, shadow=dualrun.Shadow(redact=redact), log=str(log))
    with dualrun.context(key=SECRET):
        d.route(lab.target("quote"))(1)
    [route] = d.report().routes
    # Nothing it could not redact is recorded: the run is an internal error, and its text
    # (which quotes the secret) could not be redacted either, so it is not shown.
    assert (route.comparisons, route.internal_errors) == (0, 1)
    assert route.last_internal_error == "<not shown: the redactor raised ValueError>"
    assert_nowhere(d, log)


def test_policy_errors_are_redacted(lab: Lab, tmp_path: Path) -> None:
    class Leaky:
        def choose(self, request: Any) -> str:
            raise KeyError(f"no bucket for {request.key}")

    versions = lab.pair("def quote(n):\n    return n\n", "def quote(n):\n    return n\n")
    log = tmp_path / "redacted.jsonl"
    d = lab.dispatcher(versions, policy=Leaky(), shadow=dualrun.Shadow(redact=hashed), log=str(log))
    with dualrun.context(key=SECRET):
        assert d.route(lab.target("quote"))(1) == 1
    assert d.policy_error_count() == 1
    assert d.last_policy_error is not None and d.last_policy_error.startswith("<error ")
    assert_nowhere(d, log)


def test_the_event_written_when_an_event_redactor_fails_holds_no_value(
    lab: Lab, tmp_path: Path
) -> None:
    def redact(event: dict[str, Any]) -> dict[str, Any]:
        text = json.dumps(event, default=repr)
        if SECRET in text:
            raise ValueError(f"cannot redact {SECRET} in {text}")
        return event

    versions = lab.pair("def quote(n):\n    return n\n", "def quote(n):\n    return n + 1\n")
    log = tmp_path / "redacted.jsonl"
    d = lab.dispatcher(
        versions, shadow=dualrun.Shadow(), log=dualrun.EventLog(str(log), redact=redact)
    )
    with dualrun.context(key=SECRET):
        d.route(lab.target("quote"))(1)
    d.close()
    text = log.read_text()
    assert SECRET not in text
    assert "ValueError (its message is not written: redaction failed)" in text


# -- the path parser --------------------------------------------------------------------------

KEYS = st.one_of(
    st.text(max_size=12),
    st.integers(),
    st.tuples(st.text(max_size=5), st.integers()),
    st.frozensets(st.text(max_size=4), max_size=2),
    st.sampled_from(["]", "['", '"]', "\\", "a'b\"c]", "{x}", "(]"]),
)


@given(key=KEYS)
def test_every_dict_key_of_a_path_reaches_the_redactor(key: Any) -> None:
    seen: list[str] = []

    def redact(what: str, text: str) -> str:
        seen.append(text)
        return "R"

    [difference] = Differ().diff({"k": {key: [1, {"x": 1}]}}, {"k": {key: [1, {"x": 2}]}})
    redacted = redact_path(difference.path, redact)
    field = isinstance(key, str) and re.fullmatch("[A-Za-z_][A-Za-z0-9_]*", key)
    if field or (type(key) is int and key >= 0):
        # shown as a field name or a list index: structure, not passed (see the README)
        assert redacted == difference.path
    else:
        assert redacted == "$.k[R][1].x", (difference.path, redacted)
        assert seen == [difference.path[len("$.k[") : -len("][1].x")]]


def test_paths_the_parser_cannot_follow_are_redacted_to_the_end() -> None:
    assert redact_path("$.a['unterminated", lambda w, t: "R") == "$.a[R]"
    assert redact_path("$.a[3].b", lambda w, t: "R") == "$.a[3].b"
    assert redact_path("$arguments.args[0]['k'].x", lambda w, t: "R") == "$arguments.args[0][R].x"
    assert redact_path("$.s{'m'}", lambda w, t: "R") == "$.s{R}"
    assert redact_path("$.x..y", lambda w, t: "R") == "$.x[R]"
