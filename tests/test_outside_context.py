"""Routed calls made outside any ``dualrun.context`` are decided one by one: they are counted
per route and shown, with what they mean, in every report format (in process and from logs);
``Dispatcher(require_context=True)`` makes them an error at the first such call."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from log_helpers import LogLab, target

import dualrun
from dualrun.logread import report_from_logs

EXPLANATION = "each decided on its own"


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[LogLab]:
    lab = LogLab(tmp_path)
    yield lab
    lab.cleanup()


def test_calls_outside_any_context_are_counted_and_explained_in_every_format(
    lab: LogLab,
) -> None:
    versions = lab.pair()
    log = lab.path()
    d = lab.dispatcher(versions, policy=dualrun.Canary(50), log=str(log))
    quote = d.route(target(versions, "quote"))
    method_like = d.route(target(versions, "stamp"))
    for n in range(1, 11):
        quote(n)  # outside: one "user" reaches both versions
    with dualrun.context(key="user-1"):
        for n in range(1, 6):
            quote(n)
            method_like(n)
    route = d.report().route(target(versions, "quote"))
    assert route.outside_context == 10 and sum(route.calls.values()) == 15
    assert d.report().route(target(versions, "stamp")).outside_context == 0
    d.close()
    from_logs, _ = report_from_logs([str(log)], lambda problem: None)
    for report in (d.report(), from_logs):
        assert report.route(target(versions, "quote")).outside_context == 10
        assert "outside context  10 calls made outside any dualrun.context" in report.to_text()
        for rendered in (report.to_text(), report.to_markdown(), report.to_html()):
            assert "10 calls made outside any dualrun.context" in rendered
            assert EXPLANATION in rendered
        data = json.loads(report.to_json())
        counts = {r["route"]: r["outside_context"] for r in data["routes"]}
        assert counts == {target(versions, "quote"): 10, target(versions, "stamp"): 0}


def test_require_context_refuses_the_first_call_outside_a_context(lab: LogLab) -> None:
    versions = lab.pair()
    for policy in (dualrun.Fixed("new"), dualrun.Canary(50)):
        d = lab.dispatcher(versions, policy=policy, require_context=True)
        quote = d.route(target(versions, "quote"))
        with pytest.raises(dualrun.ContextRequiredError, match=r"dualrun\.context\(key=\.\.\.\)"):
            quote(1)
        with dualrun.context(key="u"):
            assert quote(1) == {"n": 1, "price": 2, "items": [1, 1]}
        d.kill("incident")  # the kill switch serves old, still inside contexts only
        with pytest.raises(dualrun.ContextRequiredError):
            quote(1)


def test_require_context_is_checked(lab: LogLab) -> None:
    with pytest.raises(ValueError, match="require_context is True or False"):
        lab.dispatcher(lab.pair(), require_context="yes")


def test_pending_interceptions_are_listed_in_the_report(lab: LogLab) -> None:
    versions = lab.pair()
    d = lab.dispatcher(versions)
    d.intercept("json.tool:main", target(versions, "quote"))  # a stdlib module not imported
    report = d.report()
    assert report.pending_interceptions == ["json.tool:main"]
    for rendered in (report.to_text(), report.to_markdown(), report.to_html()):
        assert "pending interceptions" in rendered and "json.tool:main" in rendered
    assert json.loads(report.to_json())["pending_interceptions"] == ["json.tool:main"]
