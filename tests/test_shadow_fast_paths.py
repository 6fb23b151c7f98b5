"""The flattened shadow paths tell the same story as the full comparison.

An inline shadowed call whose outcomes are a plain match is recorded without an observation,
and while no side-effect guard exists the runs share two markers instead of making two
``Run`` objects per call. These tests pin what must not change because of that: the verdict
(match or mismatch, with ``1`` and ``1.0`` different and NaN equal to NaN), argument mutations,
which run a guarded function sees itself in, and that nothing accumulates on the markers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from shadow_helpers import Lab

import dualrun
from dualrun import sideeffects
from dualrun.compare import Differ


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    lab = Lab(tmp_path)
    yield lab
    lab.cleanup()


RETURN_GIVEN = """
VALUE = None
def give(*args):
    return VALUE
def touch(cart):
    cart.update(CHANGE)
    return len(cart)
CHANGE = {}
"""

atoms = st.one_of(
    st.integers(-3, 3),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.booleans(),
    st.none(),
    st.text(max_size=2),
    st.binary(max_size=2),
)
plain = st.recursive(
    atoms,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.tuples(inner, inner),
        st.dictionaries(st.sampled_from("abc"), inner, max_size=3),
    ),
    max_leaves=8,
)


def _counts(d: dualrun.Dispatcher, target: str) -> tuple[int, int]:
    route = d.report().route(target)
    return route.matches, route.mismatches


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(old=plain, new=plain | plain.map(lambda v: v))
def test_the_paired_path_counts_a_match_exactly_when_the_differ_finds_nothing(
    lab: Lab, old: Any, new: Any
) -> None:
    if not lab.pairs:
        lab.pair(RETURN_GIVEN, RETURN_GIVEN)
    versions = lab.pairs[0]
    lab.engine(versions, "old").VALUE = old
    lab.engine(versions, "new").VALUE = new
    d = dualrun.Dispatcher(versions, shadow=dualrun.Shadow(mode="inline"))
    try:
        target = lab.target("give", versions)
        give = d.route(target)
        for _ in range(4):  # both orders of the two runs, most likely
            assert give(1) is old
        expected_match = not Differ().diff(old, new)
        assert _counts(d, target) == ((4, 0) if expected_match else (0, 4))
    finally:
        d.close()


@pytest.mark.parametrize(
    ("old", "new", "match"),
    [
        (1, 1, True),
        (1, 1.0, False),  # equal by ==, a different type
        (True, 1, False),
        ({"qty": 1}, {"qty": 1.0}, False),
        ([1, [2]], [1, (2,)], False),
        (math.nan, math.nan, True),  # every NaN is alike
        ({"x": [math.nan]}, {"x": [math.nan]}, True),
        ({"a": 1, "b": 2}, {"b": 2, "a": 1}, True),  # dict order is not a difference
        ("x", "y", False),
    ],
)
def test_plain_results_match_by_the_differs_rules(
    lab: Lab, old: Any, new: Any, match: bool
) -> None:
    versions = lab.pair(RETURN_GIVEN, RETURN_GIVEN)
    lab.engine(versions, "old").VALUE = old
    lab.engine(versions, "new").VALUE = new
    d = lab.dispatcher(versions, shadow=dualrun.Shadow(mode="inline"))
    target = lab.target("give")
    give = d.route(target)
    for _ in range(6):
        give()
    assert _counts(d, target) == ((6, 0) if match else (0, 6))


def test_an_argument_changed_differently_by_the_shadow_is_a_mismatch_not_a_match(
    lab: Lab,
) -> None:
    versions = lab.pair(RETURN_GIVEN, RETURN_GIVEN)
    lab.engine(versions, "old").CHANGE = {"qty": 1}
    lab.engine(versions, "new").CHANGE = {"qty": 1.0}  # == alike, another type
    d = lab.dispatcher(versions, shadow=dualrun.Shadow(mode="inline"))
    target = lab.target("touch")
    touch = d.route(target)
    cart: dict[str, Any] = {}
    assert touch(cart) == 1
    assert cart == {"qty": 1} and type(cart["qty"]) is int  # the caller sees old's change only
    route = d.report().route(target)
    assert route.mismatches == 1
    assert [(g.path, g.kind) for g in route.divergences] == [("$arguments.args[*].qty", "type")]


SEES_ITS_RUN = """
from dualrun.sideeffects import in_shadow_run
SEEN = []
def f():
    SEEN.append(in_shadow_run())
    return 1
"""


def test_each_run_knows_whether_it_is_the_shadow_without_any_guard(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sideeffects, "guarded", False)
    versions = lab.pair(SEES_ITS_RUN, SEES_ITS_RUN)
    d = lab.dispatcher(versions, shadow=dualrun.Shadow(mode="inline"))
    f = d.route(lab.target("f"))
    for _ in range(20):
        f()
    assert lab.engine(versions, "old").SEEN == [False] * 20  # old serves
    assert lab.engine(versions, "new").SEEN == [True] * 20  # new shadows
    assert not sideeffects.in_shadow_run()


GUARD_MADE_DURING_THE_CALL = """
import dualrun
SENT = []
def f():
    send = dualrun.side_effect(lambda: SENT.append(1), name="send")
    send()
    return 1
"""


def test_a_guard_made_during_a_call_records_nothing_on_the_shared_markers(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sideeffects, "guarded", False)
    versions = lab.pair(GUARD_MADE_DURING_THE_CALL, GUARD_MADE_DURING_THE_CALL)
    d = lab.dispatcher(versions, shadow=dualrun.Shadow(mode="inline"))
    target = lab.target("f")
    f = d.route(target)
    f()  # its guards were made while it ran: the markers keep nothing
    assert list(sideeffects.PRIMARY_RUN.calls) == list(sideeffects.SHADOW_RUN.calls) == []
    assert sideeffects.guarded
    assert lab.engine(versions, "old").SENT == [1]  # the primary executed its side effect
    assert lab.engine(versions, "new").SENT == []  # the shadow did not
    f()  # guards exist now: each run records its own calls, and they agree
    route = d.report().route(target)
    assert (route.matches, route.mismatches) == (2, 0)
    assert lab.engine(versions, "old").SENT == [1, 1]
    assert lab.engine(versions, "new").SENT == []


@pytest.mark.parametrize("serving", ["old", "new"])
def test_a_mismatch_is_compared_once_old_against_new(
    lab: Lab, monkeypatch: pytest.MonkeyPatch, serving: str
) -> None:
    versions = lab.pair(RETURN_GIVEN, RETURN_GIVEN)
    lab.engine(versions, "old").VALUE = {"total": 10, "items": [1, 2]}
    lab.engine(versions, "new").VALUE = {"total": 11, "items": [1, 2]}
    d = lab.dispatcher(
        versions,
        policy=dualrun.Fixed(serving),
        shadow=dualrun.Shadow(mode="inline", primary=serving),
    )
    target = lab.target("give")
    give = d.route(target)
    compared: list[tuple[Any, Any]] = []
    diff = Differ.diff

    def counting(self: Differ, old: Any, new: Any, path: str = "$") -> Any:
        compared.append((old, new))
        return diff(self, old, new, path)

    monkeypatch.setattr(Differ, "diff", counting)
    for _ in range(6):  # either order of the runs
        give()
    assert compared == [({"total": 10, "items": [1, 2]}, {"total": 11, "items": [1, 2]})] * 6
    route = d.report().route(target)
    assert route.mismatches == 6
    assert [(g.path, g.count) for g in route.divergences] == [("$.total", 6)]
    example = route.divergences[0].examples[0]
    assert (example["old"], example["new"]) == ("10", "11")
