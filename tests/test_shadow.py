"""Shadow execution: the caller always gets the primary's outcome; the shadow is compared.

Each guarantee of the shadow issue has a test here: a shadow that raises, hangs (inline with a
timeout, in the background, async), returns garbage (unpicklable, self-referential), mutates
its arguments; a comparator that raises; a full queue; sampling; noise calibration; bounded
memory; and the report's renderings.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import threading
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from shadow_helpers import Lab, accounted, route_report

import dualrun
from dualrun.recorder import EXAMPLES_PER_GROUP, MAX_GROUPS, NOT_MEASURED, Observation
from dualrun.render import render_text
from dualrun.shadow import copy_arguments
from dualrun.sideeffects import current_run


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    lab = Lab(tmp_path)
    yield lab
    lab.cleanup()


def observations(d: dualrun.Dispatcher) -> list[Observation]:
    """Every observation the dispatcher records from now on, plain matches aside."""
    seen: list[Observation] = []
    d.recorder.sinks.append(seen.append)
    return seen


def paths(divergences: list[Any]) -> list[str]:
    return sorted(d.path for d in divergences)


# -- which calls are shadowed, and what the caller gets -------------------------------------

SIMPLE_OLD = """
RESULT = {"price": 10, "items": [1, 2]}

def quote(x):
    return RESULT
"""
SIMPLE_NEW = """
def quote(x):
    return {"price": 11, "items": [1, 2]}
"""


@pytest.mark.parametrize("mode", ["inline", "background"])
def test_the_caller_gets_the_primarys_object_and_the_difference_is_recorded(
    lab: Lab, mode: str
) -> None:
    versions = lab.pair(SIMPLE_OLD, SIMPLE_NEW)
    d = lab.dispatcher(versions, shadow=dualrun.Shadow(mode=mode))
    quote = d.route(lab.target("quote"))
    assert quote(1) is lab.engine(versions, "old").RESULT
    assert d.flush(5)
    report = route_report(d, lab.target("quote"))
    assert (report.comparisons, report.mismatches, report.matches) == (1, 1, 0)
    assert report.calls == {"old": 1, "new": 0}  # the shadow run serves no caller
    [divergence] = report.divergences
    assert (divergence.path, divergence.kind, divergence.count) == ("$.price", "value", 1)
    assert divergence.examples[0]["old"] == "10" and divergence.examples[0]["new"] == "11"


@pytest.mark.parametrize(
    ("policy", "primary", "served", "shadowed"),
    [
        ("old", "old", "old", 3),
        ("old", "new", "old", 0),
        ("new", "new", "new", 3),
        ("new", "old", "new", 0),
        ("old", "any", "old", 3),
        ("new", "any", "new", 3),
    ],
)
def test_primary_selects_the_calls_that_are_shadowed(
    lab: Lab, policy: str, primary: str, served: str, shadowed: int
) -> None:
    versions = lab.pair("def who(x):\n    return 'old'\n", "def who(x):\n    return 'new'\n")
    d = lab.dispatcher(
        versions, policy=dualrun.Fixed(policy), shadow=dualrun.Shadow(primary=primary)
    )
    seen = observations(d)
    who = d.route(lab.target("who"))
    assert [who(i) for i in range(3)] == [served] * 3
    report = route_report(d, lab.target("who"))
    assert report.comparisons == report.mismatches == shadowed
    assert all(obs.primary == served for obs in seen)
    assert all((obs.old.value, obs.new.value) == ("'old'", "'new'") for obs in seen)


def test_primary_any_with_a_canary_shadows_both_sides(lab: Lab) -> None:
    versions = lab.pair("def who(x):\n    return 'old'\n", "def who(x):\n    return 'new'\n")
    d = lab.dispatcher(
        versions, policy=dualrun.Canary(percent=50), shadow=dualrun.Shadow(primary="any")
    )
    seen = observations(d)
    who = d.route(lab.target("who"))
    served = []
    for key in range(60):
        with dualrun.context(key=f"user-{key}"):
            served.append(who(key))
    assert set(served) == {"old", "new"}
    assert [obs.primary for obs in seen] == served
    assert {obs.key for obs in seen} == {f"user-{key}" for key in range(60)}
    report = route_report(d, lab.target("who"))
    assert report.comparisons == 60 and report.calls == Counter(served)


def test_inline_runs_both_versions_in_random_order(lab: Lab) -> None:
    # With copy=None the shadow shares the argument, so the list shows who ran first.
    body = "def log(order):\n    order.append(VERSION)\n    return len(order)\n"
    versions = lab.pair(body, body)
    d = lab.dispatcher(versions, shadow=dualrun.Shadow(copy=None))
    log = d.route(lab.target("log"))
    firsts = []
    for _ in range(40):
        order: list[str] = []
        log(order)
        assert sorted(order) == ["new", "old"]
        firsts.append(order[0])
    assert set(firsts) == {"old", "new"}  # 2**-39 chance of a false failure


# -- a shadow that raises, a primary that raises ----------------------------------------------


@pytest.mark.parametrize("mode", ["inline", "background"])
def test_a_shadow_that_raises_never_reaches_the_caller(lab: Lab, mode: str) -> None:
    versions = lab.pair(
        "def quote(x):\n    return x * 2\n",
        "def quote(x):\n    raise RuntimeError(f'new broke on {x}')\n",
    )
    d = lab.dispatcher(versions, shadow=dualrun.Shadow(mode=mode))
    quote = d.route(lab.target("quote"))
    assert [quote(i) for i in range(4)] == [0, 2, 4, 6]
    assert d.flush(5)
    report = route_report(d, lab.target("quote"))
    assert report.errors == {"old": 0, "new": 4}
    assert report.comparisons == report.mismatches == 4
    [divergence] = report.divergences
    assert (divergence.path, divergence.kind, divergence.count) == ("$", "exception", 4)
    # background workers may record in any order: the example of x == 0, wherever it is
    examples = {example["old"]: example["new"] for example in divergence.examples}
    assert examples["returned 0"] == "raised builtins.RuntimeError: 'new broke on 0'"


RAISING_OLD = """
class PricingError(Exception):
    pass

LAST = []

def explode(x):
    error = PricingError(f"no price for {x}")
    LAST.append(error)
    raise error
"""
RAISING_NEW_SAME = """
class PricingError(Exception):
    pass

def explode(x):
    raise PricingError(f"no price for {x}")
"""
RAISING_NEW_VALUE = """
def explode(x):
    return x
"""


@pytest.mark.parametrize("mode", ["inline", "background"])
def test_a_primary_that_raises_reaches_the_caller_as_the_same_instance(lab: Lab, mode: str) -> None:
    versions = lab.pair(RAISING_OLD, RAISING_NEW_VALUE)
    d = lab.dispatcher(versions, shadow=dualrun.Shadow(mode=mode))
    explode = d.route(lab.target("explode"))
    with pytest.raises(Exception, match="no price for 7") as excinfo:
        explode(7)
    old_engine = lab.engine(versions, "old")
    assert excinfo.value is old_engine.LAST[-1]
    frames = traceback.extract_tb(excinfo.value.__traceback__)
    assert frames[-1].name == "explode" and frames[-1].filename == old_engine.__file__
    assert d.flush(5)
    report = route_report(d, lab.target("explode"))
    assert report.errors == {"old": 1, "new": 0}
    assert report.comparisons == report.mismatches == 1  # the shadow still ran and compared
    [divergence] = report.divergences
    assert divergence.kind == "exception"
    assert divergence.examples[0]["old"].startswith("raised ")
    assert divergence.examples[0]["old"].endswith("PricingError: 'no price for 7'")
    assert divergence.examples[0]["new"] == "returned 7"


def test_exceptions_of_the_two_versions_classes_compare_by_name_and_message(lab: Lab) -> None:
    versions = lab.pair(RAISING_OLD, RAISING_NEW_SAME)
    d = lab.dispatcher(versions, shadow=dualrun.Shadow())
    explode = d.route(lab.target("explode"))
    for i in range(3):
        with pytest.raises(Exception, match=f"no price for {i}"):
            explode(i)
    report = route_report(d, lab.target("explode"))
    assert report.errors == {"old": 3, "new": 3}
    assert (report.comparisons, report.matches, report.mismatches) == (3, 3, 0)


def test_an_exception_key_hook_decides_which_exceptions_are_equal(lab: Lab) -> None:
    versions = lab.pair(
        "def f(x):\n    raise KeyError(f'old {x}')\n", "def f(x):\n    raise KeyError(x)\n"
    )
    strict = lab.dispatcher(versions, shadow=dualrun.Shadow())
    loose = lab.dispatcher(
        versions, shadow=dualrun.Shadow(exception_key=lambda exc: type(exc).__name__)
    )
    for d in (strict, loose):
        with pytest.raises(KeyError):
            d.route(lab.target("f"))(1)
    assert route_report(strict, lab.target("f")).mismatches == 1
    assert route_report(loose, lab.target("f")).matches == 1


# -- a shadow that hangs ----------------------------------------------------------------------

HANG_OLD = """
def quote(x):
    return x
"""
HANG_NEW = """
GATE = threading.Event()

def quote(x):
    GATE.wait(5)
    return x
"""


def test_inline_a_hanging_shadow_is_bounded_by_the_timeout(lab: Lab) -> None:
    versions = lab.pair(HANG_OLD, HANG_NEW)
    gate = lab.gate(lab.engine(versions, "new"))
    d = lab.dispatcher(versions, shadow=dualrun.Shadow(timeout=0.2))
    quote = d.route(lab.target("quote"))
    for i in range(2):
        started = time.monotonic()
        assert quote(i) == i
        assert 0.15 < time.monotonic() - started < 1.2  # the shadow would hang for 5 s
    report = route_report(d, lab.target("quote"))
    assert report.timeouts == 2 and report.comparisons == 0
    assert report.errors == {"old": 0, "new": 0}
    assert report.in_flight == {"old": 0, "new": 2}  # the stuck shadow runs, still running
    gate.set()  # they cannot be interrupted, but they finish on their own
    deadline = time.monotonic() + 5
    while route_report(d, lab.target("quote")).in_flight["new"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert route_report(d, lab.target("quote")).in_flight == {"old": 0, "new": 0}


def test_inline_once_every_helper_is_stuck_calls_do_not_wait_at_all(lab: Lab) -> None:
    versions = lab.pair(HANG_OLD, HANG_NEW)
    lab.gate(lab.engine(versions, "new"))
    d = lab.dispatcher(versions, shadow=dualrun.Shadow(timeout=0.2, workers=1))
    quote = d.route(lab.target("quote"))
    assert quote(1) == 1  # takes the only helper thread, which stays stuck
    started = time.monotonic()
    assert [quote(i) for i in range(10)] == list(range(10))
    assert time.monotonic() - started < 1.0  # waiting for the timeout would take 2 s
    assert route_report(d, lab.target("quote")).timeouts == 11


def test_background_a_hanging_shadow_does_not_delay_the_caller(lab: Lab) -> None:
    versions = lab.pair(HANG_OLD, HANG_NEW)
    gate = lab.gate(lab.engine(versions, "new"))
    d = lab.dispatcher(versions, shadow=dualrun.Shadow(mode="background", timeout=0.2))
    quote = d.route(lab.target("quote"))
    started = time.monotonic()
    assert quote(3) == 3
    assert time.monotonic() - started < 0.5  # the shadow hangs for up to 5 s
    assert not d.flush(0.05)
    deadline = time.monotonic() + 5
    while not route_report(d, lab.target("quote")).in_flight["new"]:
        assert time.monotonic() < deadline, "the shadow run never started"
        time.sleep(0.005)
    time.sleep(0.3)
    gate.set()  # the shadow now finishes, having run longer than the timeout
    assert d.flush(5)
    report = route_report(d, lab.target("quote"))
    assert (report.timeouts, report.comparisons) == (1, 0)


# -- garbage results ----------------------------------------------------------------------------

GARBAGE_OLD = """
def garbage(kind):
    return {"value": 1, "extra": None}

def cycle(kind):
    if kind == "list":
        a = [1]
        a.append(a)
        return a
    a = {"n": 1}
    a["self"] = a
    return a
"""
GARBAGE_NEW = """
def garbage(kind):
    if kind == "lambda":
        extra = lambda: 1
    elif kind == "lock":
        extra = threading.Lock()
    elif kind == "generator":
        extra = (i for i in range(3))
    else:
        class Weird:
            def __repr__(self):
                raise RuntimeError("no repr")
            def __eq__(self, other):
                raise RuntimeError("no eq")
            __hash__ = None
        extra = Weird()
    return {"value": 1, "extra": extra}

def cycle(kind):
    if kind == "list":
        a = [2]
        a.append(a)
        return a
    a = {"n": 2}
    a["self"] = a
    return a
"""


@pytest.mark.parametrize("kind", ["lambda", "lock", "generator", "broken repr and eq"])
@pytest.mark.parametrize("mode", ["inline", "background"])
def test_a_shadow_returning_unpicklable_values_is_compared_and_reported(
    lab: Lab, kind: str, mode: str
) -> None:
    versions = lab.pair(GARBAGE_OLD, GARBAGE_NEW)
    d = lab.dispatcher(versions, shadow=dualrun.Shadow(mode=mode))
    assert d.route(lab.target("garbage"))(kind) == {"value": 1, "extra": None}
    assert d.flush(5)
    report = d.report()
    route = report.route(lab.target("garbage"))
    assert (route.comparisons, route.mismatches, route.internal_errors) == (1, 1, 0)
    assert [(x.path, x.kind) for x in route.divergences] == [("$.extra", "type")]
    assert "$.extra" in report.to_text()
    assert json.loads(report.to_json())["routes"][0]["divergences"][0]["path"] == "$.extra"


@pytest.mark.parametrize("kind", ["list", "dict"])
def test_self_referential_results_are_compared_without_recursing_forever(
    lab: Lab, kind: str
) -> None:
    versions = lab.pair(GARBAGE_OLD, GARBAGE_NEW)
    d = lab.dispatcher(versions, shadow=dualrun.Shadow())
    result = d.route(lab.target("cycle"))(kind)
    assert (result[1] if kind == "list" else result["self"]) is result
    route = route_report(d, lab.target("cycle"))
    assert route.comparisons == route.mismatches == 1
    expected = "$[*]" if kind == "list" else "$.n"  # divergences group by generalised path
    assert [(x.path, x.kind) for x in route.divergences] == [(expected, "value")]
    # Two equal cycles are a match.
    same = lab.pair(GARBAGE_OLD, GARBAGE_OLD)
    d2 = lab.dispatcher(same, shadow=dualrun.Shadow())
    d2.route(lab.target("cycle", same))(kind)
    assert route_report(d2, lab.target("cycle", same)).matches == 1


# -- arguments ------------------------------------------------------------------------------

MUTATE_OLD = """
def total(cart, *, extra=None):
    return sum(cart["items"])

def touch(cart):
    cart["touched"] = True
    return False

def look(cart):
    return "touched" in cart

def stamp(cart):
    return len(cart["items"])
"""
MUTATE_NEW = """
def total(cart, *, extra=None):
    cart["items"].append(100)
    cart["seen"] = True
    if extra is not None:
        extra.append("new")
    return sum(cart["items"]) - 100

def touch(cart):
    return "touched" in cart

def look(cart):
    cart["touched"] = True
    return False

def stamp(cart):
    cart["stamped"] = True
    return len(cart["items"])
"""


@pytest.mark.parametrize("mode", ["inline", "background"])
def test_a_shadow_that_mutates_its_arguments_does_not_touch_the_callers(
    lab: Lab, mode: str
) -> None:
    versions = lab.pair(MUTATE_OLD, MUTATE_NEW)
    d = lab.dispatcher(versions, shadow=dualrun.Shadow(mode=mode))
    total = d.route(lab.target("total"))
    for _ in range(20):  # inline: both orders occur
        cart = {"items": [1, 2, 3]}
        extra: list[str] = []
        assert total(cart, extra=extra) == 6
        assert cart == {"items": [1, 2, 3]} and extra == []
    assert d.flush(5)
    report = route_report(d, lab.target("total"))
    assert report.comparisons == report.mismatches == 20  # results agree, arguments do not
    found = {(x.path, x.kind) for x in report.divergences}
    assert found == {
        ("$arguments.args[*].items", "length"),
        ("$arguments.args[*].seen", "extra"),
        ("$arguments.kwargs.extra", "length"),
    }


@pytest.mark.parametrize("mode", ["inline", "background"])
def test_the_shadow_does_not_see_the_primarys_mutations(lab: Lab, mode: str) -> None:
    versions = lab.pair(MUTATE_OLD, MUTATE_NEW)
    d = lab.dispatcher(versions, shadow=dualrun.Shadow(mode=mode))
    touch = d.route(lab.target("touch"))
    carts = [{"n": i} for i in range(20)]
    assert [touch(cart) for cart in carts] == [False] * 20
    assert all(cart.get("touched") is True for cart in carts)  # the primary's own mutation
    assert d.flush(5)
    report = route_report(d, lab.target("touch"))
    assert report.comparisons == 20
    # new answered False every time: it never saw old's mutation; the mutation itself differs.
    assert [(x.path, x.kind, x.count) for x in report.divergences] == [
        ("$arguments.args[*].touched", "missing", 20)
    ]


def test_a_copy_hook_replaces_the_deep_copy_and_copy_none_shares(lab: Lab) -> None:
    versions = lab.pair(MUTATE_OLD, MUTATE_NEW)
    copies = []

    def shallow(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        copies.append(args)
        return tuple({**a, "items": list(a["items"])} for a in args), dict(kwargs)

    d = lab.dispatcher(versions, shadow=dualrun.Shadow(copy=shallow))
    cart = {"items": [1]}
    assert d.route(lab.target("total"))(cart) == 1
    assert cart == {"items": [1]} and len(copies) == 1

    shared = lab.dispatcher(versions, shadow=dualrun.Shadow(copy=None))
    cart = {"items": [1]}
    assert shared.route(lab.target("stamp"))(cart) == 1
    assert cart == {"stamped": True, "items": [1]}  # opting out of the copy shares arguments
    report = route_report(shared, lab.target("stamp"))
    assert report.comparisons == 1 and report.divergences == []


def test_copy_arguments_skips_immutable_atoms_and_deep_copies_the_rest() -> None:
    args, kwargs = (1, "a", 2.5, None, b"x"), {"flag": True}
    copied = copy_arguments(args, kwargs)
    assert copied[0] is args and copied[1] is kwargs
    nested = ([1, [2]],)
    copied_args, _ = copy_arguments(nested, {})
    assert copied_args == nested and copied_args[0] is not nested[0]
    assert copied_args[0][1] is not nested[0][1]


@pytest.mark.parametrize("mode", ["inline", "background"])
def test_uncopyable_arguments_are_served_without_shadow_and_counted_skipped(
    lab: Lab, mode: str
) -> None:
    versions = lab.pair("def f(lock):\n    return 1\n", "def f(lock):\n    return 2\n")
    d = lab.dispatcher(versions, shadow=dualrun.Shadow(mode=mode))
    f = d.route(lab.target("f"))
    assert f(threading.Lock()) == 1
    assert f(lock=threading.Lock()) == 1
    assert d.flush(5)
    report = route_report(d, lab.target("f"))
    assert (report.skipped, report.comparisons, report.calls["old"]) == (2, 0, 2)
    assert "lock" in (report.last_internal_error or "")


# -- the comparator, cleaner and ignore rules --------------------------------------------------

COMPARE_OLD = """
def quote(x):
    return {"price": x, "id": str(uuid.uuid4()), "generated_at": time.monotonic_ns()}
"""
COMPARE_NEW = """
def quote(x):
    return {"price": x + (x % 2), "id": str(uuid.uuid4()), "generated_at": time.monotonic_ns()}
"""


def broken_compare(old: object, new: object) -> bool:
    raise ZeroDivisionError("the compare hook broke")


def broken_clean(value: object) -> object:
    raise ZeroDivisionError("the clean hook broke")


HOOKS = {"compare": broken_compare, "clean": broken_clean}


@pytest.mark.parametrize("hook", ["compare", "clean"])
@pytest.mark.parametrize("mode", ["inline", "background"])
def test_a_comparator_that_raises_is_counted_not_raised(lab: Lab, hook: str, mode: str) -> None:
    versions = lab.pair(COMPARE_OLD, COMPARE_NEW)
    shadow = dualrun.Shadow(mode=mode, **{hook: HOOKS[hook]})  # type: ignore[arg-type]
    d = lab.dispatcher(versions, shadow=shadow)
    quote = d.route(lab.target("quote"))
    assert [quote(i)["price"] for i in range(5)] == list(range(5))
    assert d.flush(5)
    report = route_report(d, lab.target("quote"))
    assert report.internal_errors == 5 and report.comparisons == 0
    assert f"ZeroDivisionError: the {hook}" in (report.last_internal_error or "")
    assert accounted(report) == 5
    assert "dualrun errors" in d.report().to_text()


def test_a_compare_function_returns_a_verdict_or_differences(lab: Lab) -> None:
    versions = lab.pair(COMPARE_OLD, COMPARE_NEW)
    by_bool = lab.dispatcher(
        versions, shadow=dualrun.Shadow(compare=lambda a, b: a["price"] == b["price"])
    )
    by_list = lab.dispatcher(
        versions,
        shadow=dualrun.Shadow(
            compare=lambda a, b: (
                [dualrun.Difference("$.price", "value", str(a["price"]), str(b["price"]))]
                if a["price"] != b["price"]
                else []
            )
        ),
    )
    for d in (by_bool, by_list):
        quote = d.route(lab.target("quote"))
        for i in range(4):
            quote(i)
    a = route_report(by_bool, lab.target("quote"))
    assert (a.matches, a.mismatches) == (2, 2)
    assert [(x.path, x.kind) for x in a.divergences] == [("$", "value")]
    b = route_report(by_list, lab.target("quote"))
    assert (b.matches, b.mismatches) == (2, 2)
    assert [(x.path, x.count, x.examples[0]["new"]) for x in b.divergences] == [("$.price", 2, "2")]


def test_ignore_rules_and_clean_remove_fields_before_comparison(lab: Lab) -> None:
    versions = lab.pair(COMPARE_OLD, COMPARE_NEW)
    ignoring = lab.dispatcher(versions, shadow=dualrun.Shadow(ignore=("$.id", "$.generated_at")))
    cleaning = lab.dispatcher(
        versions, shadow=dualrun.Shadow(clean=lambda value: {"price": value["price"]})
    )
    plain = lab.dispatcher(versions, shadow=dualrun.Shadow())
    for d in (ignoring, cleaning, plain):
        quote = d.route(lab.target("quote"))
        for i in range(4):
            quote(i)
    for d in (ignoring, cleaning):
        report = route_report(d, lab.target("quote"))
        assert (report.matches, report.mismatches) == (2, 2)
        assert paths(report.divergences) == ["$.price"]
    report = route_report(plain, lab.target("quote"))
    assert report.mismatches == 4
    assert paths(report.divergences) == ["$.generated_at", "$.id", "$.price"]


def test_tolerance_and_a_single_ignore_rule_reach_the_comparison(lab: Lab) -> None:
    versions = lab.pair(
        "def f(x):\n    return {'price': x / 3, 'id': 1}\n",
        "def f(x):\n    return {'price': x / 3 + 0.004, 'id': 2}\n",
    )
    tolerant = lab.dispatcher(versions, shadow=dualrun.Shadow(tolerance=0.01, ignore="$.id"))
    strict = lab.dispatcher(versions, shadow=dualrun.Shadow(ignore="$.id"))
    for d in (tolerant, strict):
        d.route(lab.target("f"))(1)
    assert route_report(tolerant, lab.target("f")).matches == 1
    assert paths(route_report(strict, lab.target("f")).divergences) == ["$.price"]


# -- a full queue ------------------------------------------------------------------------------

SLOW_NEW = """
GATE = threading.Event()

def quote(x):
    GATE.wait(5)
    return x
"""


def test_a_full_queue_drops_shadow_runs_and_counts_them(lab: Lab) -> None:
    versions = lab.pair(HANG_OLD, SLOW_NEW)
    gate = lab.gate(lab.engine(versions, "new"))
    d = lab.dispatcher(versions, shadow=dualrun.Shadow(mode="background", workers=1, queue_size=1))
    quote = d.route(lab.target("quote"))
    started = time.monotonic()
    assert [quote(i) for i in range(30)] == list(range(30))
    assert time.monotonic() - started < 1.0  # never blocked on the full queue (5 s)
    assert not d.flush(0.05)
    gate.set()
    assert d.flush(5)
    report = route_report(d, lab.target("quote"))
    # One shadow run holds the worker, one waits in the queue (unless the first was still
    # queued when the second came), the rest are dropped.
    assert report.dropped in (28, 29) and report.comparisons == 30 - report.dropped
    assert accounted(report) == 30 == report.calls["old"]
    assert f"dropped {report.dropped}" in d.report().to_text()


def test_with_a_slow_shadow_every_call_is_accounted_for(lab: Lab) -> None:
    versions = lab.pair(
        HANG_OLD, "def quote(x):\n    time.sleep(0.005)\n    return x + (x % 3 == 0)\n"
    )
    d = lab.dispatcher(versions, shadow=dualrun.Shadow(mode="background", workers=1, queue_size=2))
    quote = d.route(lab.target("quote"))
    assert [quote(i) for i in range(60)] == list(range(60))
    assert d.flush(5)
    report = route_report(d, lab.target("quote"))
    assert report.dropped > 0 and report.comparisons > 0
    assert accounted(report) == 60
    assert report.matches + report.mismatches == report.comparisons


# -- sampling -----------------------------------------------------------------------------------


def test_sample_zero_shadows_nothing(lab: Lab) -> None:
    versions = lab.pair(SIMPLE_OLD, SIMPLE_NEW)
    d = lab.dispatcher(versions, shadow=dualrun.Shadow(sample=0))
    quote = d.route(lab.target("quote"))
    for i in range(50):
        with dualrun.context(key=i):
            quote(i)
        quote(i)
    report = route_report(d, lab.target("quote"))
    assert report.calls["old"] == 100
    assert accounted(report) == 0 and report.divergences == []


def test_sampling_is_stable_per_request_key(lab: Lab) -> None:
    versions = lab.pair(SIMPLE_OLD, SIMPLE_NEW)
    d = lab.dispatcher(versions, shadow=dualrun.Shadow(sample=50))
    seen = observations(d)
    quote = d.route(lab.target("quote"))
    keys = [f"user-{i}" for i in range(60)]
    for _ in range(4):
        for key in keys:
            with dualrun.context(key=key):
                quote(1)
    per_key = Counter(obs.key for obs in seen)
    assert set(per_key.values()) == {4}  # a key is shadowed on every call or on none
    assert 10 < len(per_key) < 50
    again = lab.dispatcher(versions, shadow=dualrun.Shadow(sample=50))
    seen_again = observations(again)
    for key in keys:
        with dualrun.context(key=key):
            again.route(lab.target("quote"))(1)
    assert {obs.key for obs in seen_again} == set(per_key)  # the same keys in another run


def test_sampling_without_a_key_is_a_share_of_calls(lab: Lab) -> None:
    versions = lab.pair(SIMPLE_OLD, SIMPLE_NEW)
    d = lab.dispatcher(versions, shadow=dualrun.Shadow(sample=25))
    quote = d.route(lab.target("quote"))
    for i in range(400):
        quote(i)
    assert 50 < route_report(d, lab.target("quote")).comparisons < 150


# -- noise calibration ---------------------------------------------------------------------------

NOISY_OLD = """
CALLS = []

def quote(x):
    CALLS.append(x)
    return {
        "price": x * 2,
        "id": str(uuid.uuid4()),
        "lines": [{"sku": i, "id": str(uuid.uuid4())} for i in range(2)],
    }
"""
NOISY_NEW = """
def quote(x):
    return {
        "price": x * 2 + (1 if x % 3 == 0 else 0),
        "id": str(uuid.uuid4()),
        "lines": [{"sku": i, "id": str(uuid.uuid4())} for i in range(2)],
    }
"""


@pytest.mark.parametrize("mode", ["inline", "background"])
def test_calibration_turns_random_ids_into_noise_and_keeps_real_mismatches(
    lab: Lab, mode: str
) -> None:
    versions = lab.pair(NOISY_OLD, NOISY_NEW)
    d = lab.dispatcher(versions, shadow=dualrun.Shadow(mode=mode, calibrate=True, workers=1))
    quote = d.route(lab.target("quote"))
    for i in range(30):
        assert quote(i)["price"] == i * 2
    assert d.flush(5)
    report = d.report()
    route = report.route(lab.target("quote"))
    assert route.comparisons == 30
    assert route.mismatches == 10  # x % 3 == 0: a genuine price change
    assert route.noise == 20  # only the ids differ
    assert route.matches == 0
    assert [(x.path, x.kind, x.count) for x in route.divergences] == [("$.price", "value", 10)]
    assert {(x.path, x.kind, x.count) for x in route.noise_divergences} == {
        ("$.id", "value", 30),
        ("$.lines[*].id", "value", 30),  # two lines per call: each call counts once
    }
    text = report.to_text()
    assert "$.price" in text and "$.lines[*].id" in text and "noise" in text
    assert route.mismatch_rate == pytest.approx(1 / 3)


def test_without_calibration_random_ids_are_mismatches(lab: Lab) -> None:
    versions = lab.pair(NOISY_OLD, NOISY_NEW)
    d = lab.dispatcher(versions, shadow=dualrun.Shadow())
    quote = d.route(lab.target("quote"))
    for i in range(6):
        quote(i)
    route = route_report(d, lab.target("quote"))
    assert route.mismatches == 6 and route.noise == 0
    assert paths(route.divergences) == ["$.id", "$.lines[*].id", "$.price"]


def test_calibration_runs_the_primary_again_for_the_first_calls_then_a_sample(lab: Lab) -> None:
    versions = lab.pair(NOISY_OLD, NOISY_NEW)
    d = lab.dispatcher(
        versions, shadow=dualrun.Shadow(calibrate=True, calibrate_calls=5, calibrate_sample=0)
    )
    quote = d.route(lab.target("quote"))
    for i in range(30):
        quote(i)
    calls = lab.engine(versions, "old").CALLS
    assert len(calls) == 35  # 30 served + 5 calibration runs
    assert Counter(calls)[0] == 2 and Counter(calls)[29] == 1
    route = route_report(d, lab.target("quote"))
    assert route.noise == 20 and route.mismatches == 10
    always = lab.dispatcher(
        versions, shadow=dualrun.Shadow(calibrate=True, calibrate_calls=0, calibrate_sample=100)
    )
    calls.clear()
    for i in range(10):
        always.route(lab.target("quote"))(i)
    assert len(calls) == 20


# -- async routes ------------------------------------------------------------------------------

ASYNC_OLD = """
LAST = []

async def aquote(x):
    await asyncio.sleep(0)
    return {"price": x}

async def ahang(x):
    return x

async def afail(x):
    error = ValueError(f"old failed on {x}")
    LAST.append(error)
    raise error

async def aupstream(x):
    return x

async def aslow(x):
    return x

async def aselfcancel(x):
    return x
"""
ASYNC_NEW = """
CANCELLED = []

async def aquote(x):
    await asyncio.sleep(0)
    return {"price": x + 1}

async def ahang(x):
    try:
        await asyncio.sleep(10)
    except asyncio.CancelledError:
        CANCELLED.append(x)
        raise
    return x

async def afail(x):
    raise ValueError(f"new failed on {x}")

async def aupstream(x):
    raise TimeoutError("the upstream service timed out")

async def aslow(x):
    await asyncio.sleep(0.5)
    return x

async def aselfcancel(x):
    raise asyncio.CancelledError("new cancelled itself")
"""


async def wait_for_report(d: dualrun.Dispatcher, target: str, what: str, n: int) -> Any:
    """Poll, on the loop, until the report's ``what`` reaches ``n`` (background tasks)."""
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        report = route_report(d, target)
        if getattr(report, what) >= n:
            return report
        await asyncio.sleep(0.01)
    raise AssertionError(f"{what} did not reach {n}: {route_report(d, target)}")


@pytest.mark.parametrize("mode", ["inline", "background"])
def test_async_routes_shadow_and_compare(lab: Lab, mode: str) -> None:
    versions = lab.pair(ASYNC_OLD, ASYNC_NEW)
    d = lab.dispatcher(versions, shadow=dualrun.Shadow(mode=mode))
    target = lab.target("aquote")
    aquote = d.route(target)

    async def main() -> Any:
        results = [await aquote(i) for i in range(3)]
        return results, await wait_for_report(d, target, "comparisons", 3)

    results, report = asyncio.run(main())
    assert results == [{"price": 0}, {"price": 1}, {"price": 2}]
    assert report.mismatches == 3 and paths(report.divergences) == ["$.price"]


@pytest.mark.parametrize("mode", ["inline", "background"])
def test_async_a_hanging_shadow_is_cancelled_by_the_timeout(lab: Lab, mode: str) -> None:
    versions = lab.pair(ASYNC_OLD, ASYNC_NEW)
    d = lab.dispatcher(versions, shadow=dualrun.Shadow(mode=mode, timeout=0.2))
    target = lab.target("ahang")
    ahang = d.route(target)

    async def main() -> tuple[float, Any]:
        started = time.monotonic()
        assert await ahang(5) == 5
        elapsed = time.monotonic() - started
        return elapsed, await wait_for_report(d, target, "timeouts", 1)

    elapsed, report = asyncio.run(main())
    if mode == "inline":
        assert 0.15 < elapsed < 1.2  # the shadow would hang for 10 s
    else:
        assert elapsed < 0.5
    assert (report.timeouts, report.comparisons) == (1, 0)
    assert lab.engine(versions, "new").CANCELLED == [5]  # really cancelled, not abandoned


def test_async_background_shadow_tasks_are_bounded_and_dropped_when_full(lab: Lab) -> None:
    versions = lab.pair(ASYNC_OLD, ASYNC_NEW)
    d = lab.dispatcher(versions, shadow=dualrun.Shadow(mode="background", queue_size=2))
    target = lab.target("ahang")
    ahang = d.route(target)

    async def main() -> tuple[float, Any]:
        started = time.monotonic()
        assert [await ahang(i) for i in range(10)] == list(range(10))
        elapsed = time.monotonic() - started
        await asyncio.sleep(0.05)  # the shadow tasks start
        report = route_report(d, target)
        for task in asyncio.all_tasks() - {asyncio.current_task()}:
            task.cancel()  # the two hung shadow tasks (no timeout configured)
        return elapsed, report

    elapsed, report = asyncio.run(main())
    assert elapsed < 0.5
    assert (report.dropped, report.comparisons, report.in_flight["new"]) == (8, 0, 2)
    assert sorted(lab.engine(versions, "new").CANCELLED) == [0, 1]


@pytest.mark.parametrize("mode", ["inline", "background"])
def test_async_a_primary_that_raises_reaches_the_caller_as_the_same_instance(
    lab: Lab, mode: str
) -> None:
    versions = lab.pair(ASYNC_OLD, ASYNC_NEW)
    d = lab.dispatcher(versions, shadow=dualrun.Shadow(mode=mode))
    target = lab.target("afail")
    afail = d.route(target)

    async def main() -> tuple[BaseException, Any]:
        try:
            await afail(2)
        except ValueError as exc:
            return exc, await wait_for_report(d, target, "comparisons", 1)
        raise AssertionError("the primary's exception did not reach the caller")

    error, report = asyncio.run(main())
    old_engine = lab.engine(versions, "old")
    assert error is old_engine.LAST[-1]
    frames = traceback.extract_tb(error.__traceback__)
    assert any(f.name == "afail" and f.filename == old_engine.__file__ for f in frames)
    assert report.errors == {"old": 1, "new": 1} and report.mismatches == 1
    assert [x.kind for x in report.divergences] == ["exception"]


def test_async_a_shadow_raising_timeout_error_is_an_error_not_a_timeout(lab: Lab) -> None:
    versions = lab.pair(ASYNC_OLD, ASYNC_NEW)
    d = lab.dispatcher(versions, shadow=dualrun.Shadow(timeout=5))
    target = lab.target("aupstream")
    assert asyncio.run(d.route(target)(4)) == 4
    report = route_report(d, target)
    assert (report.timeouts, report.comparisons, report.errors["new"]) == (0, 1, 1)
    [divergence] = report.divergences
    assert divergence.examples[0]["new"].startswith("raised builtins.TimeoutError")


def test_async_the_callers_cancellation_is_not_swallowed_by_an_inline_shadow(lab: Lab) -> None:
    versions = lab.pair(ASYNC_OLD, ASYNC_NEW)
    d = lab.dispatcher(versions, shadow=dualrun.Shadow())
    target = lab.target("aslow")
    aslow = d.route(target)

    async def main() -> list[str]:
        outcomes = []
        for i in range(4):  # inline, random order: the shadow runs before or after the primary
            try:
                await asyncio.wait_for(aslow(i), 0.05)
                outcomes.append("returned")
            except TimeoutError:
                outcomes.append("timed out")
        return outcomes

    assert asyncio.run(main()) == ["timed out"] * 4  # the caller's own deadline holds
    report = route_report(d, target)
    assert report.errors == {"old": 0, "new": 0}  # new is not blamed for the caller's cancel
    assert report.mismatches == 0


def test_async_background_shadow_cancelled_at_loop_shutdown_is_not_a_new_error(lab: Lab) -> None:
    versions = lab.pair(ASYNC_OLD, ASYNC_NEW)
    d = lab.dispatcher(versions, shadow=dualrun.Shadow(mode="background"))
    target = lab.target("aslow")
    assert asyncio.run(d.route(target)(1)) == 1  # the loop ends with the shadow task pending
    report = route_report(d, target)
    assert report.errors == {"old": 0, "new": 0} and report.comparisons == 0


def test_async_a_shadow_that_cancels_itself_is_an_error_of_its_own(lab: Lab) -> None:
    versions = lab.pair(ASYNC_OLD, ASYNC_NEW)
    d = lab.dispatcher(versions, shadow=dualrun.Shadow())
    target = lab.target("aselfcancel")
    assert asyncio.run(d.route(target)(2)) == 2
    report = route_report(d, target)
    assert (report.errors, report.mismatches) == ({"old": 0, "new": 1}, 1)
    assert "CancelledError" in report.divergences[0].examples[0]["new"]


# -- robustness of the runner itself ---------------------------------------------------------


def test_calls_after_close_or_a_shadow_swap_never_fail(lab: Lab) -> None:
    versions = lab.pair(SIMPLE_OLD, SIMPLE_NEW)
    d = lab.dispatcher(versions, shadow=dualrun.Shadow(timeout=1.0))
    quote = d.route(lab.target("quote"))
    old_result = lab.engine(versions, "old").RESULT
    assert quote(1) is old_result
    d.close()
    for i in range(20):  # inline, random order: the shadow-first path is taken too
        assert quote(i) is old_result
    d.shadow = dualrun.Shadow(timeout=1.0)
    for i in range(10):
        assert quote(i) is old_result
    report = route_report(d, lab.target("quote"))
    assert report.calls["old"] == 31
    # Closed: calls are served without a shadow, until a shadow is set again.
    assert d.shadow is not None
    assert (report.comparisons, report.internal_errors) == (11, 0)


def test_ctrl_c_in_a_shadow_is_its_outcome_and_leaves_no_shadow_state_behind(lab: Lab) -> None:
    # The BaseException rule (README): raised by a shadow run, it is that run's outcome.
    versions = lab.pair("def f(x):\n    return x\n", "def f(x):\n    raise KeyboardInterrupt\n")
    d = lab.dispatcher(versions, shadow=dualrun.Shadow())
    f = d.route(lab.target("f"))

    def calls() -> None:
        for _ in range(6):  # inline, random order: before and after the primary
            assert f(1) == 1
            # Left set, later guarded side effects in this thread would be suppressed.
            assert current_run.get() is None
            assert dualrun.current() is None

    contextvars.copy_context().run(calls)  # a failure here leaves the other tests alone
    report = route_report(d, lab.target("f"))
    assert (report.comparisons, report.errors["new"]) == (6, 6)


def test_nested_routed_calls_run_in_the_shadows_version_and_are_not_shadowed_again(
    lab: Lab,
) -> None:
    body = """
def inner(x):
    return (VERSION, x)

def outer(x):
    return ROUTED_INNER(x)
"""
    versions = lab.pair(body, body)
    d = lab.dispatcher(versions, shadow=dualrun.Shadow())
    inner = d.route(lab.target("inner"))
    for label in ("old", "new"):
        lab.engine(versions, label).ROUTED_INNER = inner
    assert d.route(lab.target("outer"))(1) == ("old", 1)
    outer = route_report(d, lab.target("outer"))
    assert outer.comparisons == outer.mismatches == 1
    [divergence] = outer.divergences
    example = divergence.examples[0]
    # The shadow's nested routed call ran in the shadow's version.
    assert (divergence.path, example["path"], example["old"], example["new"]) == (
        "$[*]",
        "$[0]",
        "'old'",
        "'new'",
    )
    nested = route_report(d, lab.target("inner"))
    assert nested.calls == {"old": 1, "new": 1} and nested.comparisons == 0


def test_observations_record_both_outcomes_with_wall_and_cpu_time(lab: Lab) -> None:
    versions = lab.pair(
        "def f(x):\n    return x\n", "def f(x):\n    time.sleep(0.02)\n    return x + 1\n"
    )
    d = lab.dispatcher(versions, shadow=dualrun.Shadow(cpu_time=True))
    seen = observations(d)
    with dualrun.context(key="k-1"):
        d.route(lab.target("f"))(3)
    [obs] = seen
    assert (obs.route, obs.key, obs.primary) == (lab.target("f"), "k-1", "old")
    assert (obs.status, obs.old.value, obs.new.value) == ("mismatch", "3", "4")
    assert obs.differences == (dualrun.Difference("$", "value", "3", "4"),)
    assert obs.new.wall_ns >= 15_000_000 > obs.new.cpu_ns >= 0
    assert obs.old.wall_ns < obs.new.wall_ns
    assert Observation.from_dict(json.loads(json.dumps(obs.to_dict()))) == obs
    report = route_report(d, lab.target("f"))
    for label in ("old", "new"):
        quantiles = report.latency_ns[label]
        assert set(quantiles) == {"p50", "p95", "p99"}
        assert all(q is not None and q > 0 for q in quantiles.values())
    assert report.latency_ns["new"]["p50"] >= 15_000_000
    assert report.latency_ratio["p50"] is not None and report.latency_ratio["p50"] > 1
    assert all(q is not None for q in report.cpu_ns["new"].values())


@pytest.mark.parametrize(
    ("shadow", "measured"),
    [
        (dualrun.Shadow(), False),  # inline pairs: wall times compare, no CPU clock reads
        (dualrun.Shadow(cpu_time=True), True),
        (dualrun.Shadow(mode="background"), True),  # what the gate compares there
        (dualrun.Shadow(timeout=5), True),
        (dualrun.Shadow(mode="background", cpu_time=False), False),
    ],
)
def test_cpu_time_is_read_where_it_is_judged_or_asked_for(
    lab: Lab, shadow: dualrun.Shadow, measured: bool
) -> None:
    versions = lab.pair("def f(x):\n    return x\n", "def f(x):\n    return x + 1\n")
    d = lab.dispatcher(versions, shadow=shadow)
    seen = observations(d)
    f = d.route(lab.target("f"))
    for n in range(5):
        f(n)  # mismatches
    d.flush(5)
    assert len(seen) == 5
    cpu = {o.cpu_ns for obs in seen for o in (obs.old, obs.new)}
    assert all(ns >= 0 for ns in cpu) if measured else cpu == {NOT_MEASURED}
    report = route_report(d, lab.target("f"))
    assert report.comparisons == 5 and report.latency_ns["old"]["p50"] is not None
    assert (report.cpu_ns["new"]["p50"] is not None) is measured


def test_background_cpu_time_is_sampled_on_the_same_calls_for_both_versions(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dualrun.shadow

    monkeypatch.setattr(dualrun.shadow, "CPU_FIRST_CALLS", 4)
    monkeypatch.setattr(dualrun.shadow, "CPU_SAMPLE", 25.0)
    versions = lab.pair("def f(x):\n    return x\n", "def f(x):\n    return x + 1\n")
    d = lab.dispatcher(versions, shadow=dualrun.Shadow(mode="background"))
    seen = observations(d)
    f = d.route(lab.target("f"))
    for n in range(400):
        f(n)  # mismatches
    assert d.flush(10)
    assert len(seen) == 400
    # Each observation has both CPU times or neither: the gate compares the same calls.
    measured = [obs for obs in seen if obs.old.cpu_ns != NOT_MEASURED]
    assert all(obs.new.cpu_ns >= 0 and obs.old.cpu_ns >= 0 for obs in measured)
    assert all(obs.new.cpu_ns == NOT_MEASURED for obs in seen if obs not in measured)
    assert all(obs.old.cpu_ns >= 0 for obs in seen[:4])  # every call while young
    assert 4 + 40 <= len(measured) <= 4 + 160  # then about a quarter of them
    [aggregate] = d.recorder.snapshot().values()
    assert aggregate.cpu["old"].count == aggregate.cpu["new"].count == len(measured)
    assert aggregate.latency["old"].count == 400  # the primary's wall time, every call


def test_cpu_time_is_true_false_or_none() -> None:
    with pytest.raises(ValueError, match="cpu_time is True, False or None"):
        dualrun.Shadow(cpu_time="yes")  # type: ignore[arg-type]


# -- memory and the report -----------------------------------------------------------------------

MANY_OLD = """
def f(x):
    return {"price": x}
"""
MANY_NEW = """
def f(x):
    return {"price": x + 1, f"k{x}": 1}
"""


def test_memory_is_bounded_with_a_distinct_mismatching_path_per_call(lab: Lab) -> None:
    versions = lab.pair(MANY_OLD, MANY_NEW)
    d = lab.dispatcher(versions, shadow=dualrun.Shadow())
    f = d.route(lab.target("f"))
    n = 20_000
    for i in range(n):
        f(i)
    report = d.report()
    route = report.route(lab.target("f"))
    assert route.comparisons == route.mismatches == n
    assert len(route.divergences) == MAX_GROUPS == 200
    assert all(len(x.examples) <= EXAMPLES_PER_GROUP == 5 for x in route.divergences)
    assert route.divergences_overflow == n - (MAX_GROUPS - 1)
    price = route.divergences[0]
    assert (price.path, price.count, len(price.examples)) == ("$.price", n, 5)
    assert price.share == 1.0
    assert "... and 190 more signatures" in render_text(report, top=10)


def test_the_report_renders_as_text_markdown_and_json(lab: Lab) -> None:
    versions = lab.pair(NOISY_OLD, NOISY_NEW)
    d = lab.dispatcher(versions, policy=dualrun.Fixed("old"), shadow=dualrun.Shadow(calibrate=True))
    quote = d.route(lab.target("quote"))
    for i in range(12):
        with dualrun.context(key=f"k{i}"):
            quote(i)
    report = d.report()
    target = lab.target("quote")

    text = report.to_text()
    assert target in text and "$.price" in text and "$.id" in text
    assert "mismatch rate" in text and "33.33%" in text and "p95" in text

    markdown = report.to_markdown()
    assert f"### `{target}`" in markdown
    assert "| `$.price` |" in markdown and "| `$.lines[*].id` |" in markdown
    assert "**Divergences**" in markdown and "**Noise**" in markdown

    data = json.loads(report.to_json())
    assert data["schema"] == 1
    [route] = data["routes"]
    assert route["route"] == target
    assert (route["comparisons"], route["mismatches"], route["noise"]) == (12, 4, 8)
    assert [x["path"] for x in route["divergences"]] == ["$.price"]
    assert {x["path"] for x in route["noise_divergences"]} == {"$.id", "$.lines[*].id"}
    low, high = route["mismatch_rate_ci"]
    assert low < 1 / 3 < high
    example = route["divergences"][0]["examples"][0]
    assert example["path"] == "$.price" and example["key"] in {f"k{i}" for i in range(0, 12, 3)}


MULTILINE_OLD = """
class Table:
    def __repr__(self):
        return "Table(\\n  rows=3\\n)"

def frame(x):
    return {"m": Table(), "n": x}
"""
MULTILINE_NEW = """
def frame(x):
    return {"m": None, "n": x}
"""


def test_multi_line_reprs_keep_report_tables_one_row_per_divergence(lab: Lab) -> None:
    versions = lab.pair(MULTILINE_OLD, MULTILINE_NEW)
    d = lab.dispatcher(versions, shadow=dualrun.Shadow())
    d.route(lab.target("frame"))(1)
    report = d.report()
    [divergence] = report.route(lab.target("frame")).divergences
    assert divergence.examples[0]["old"] == "Table(\\n  rows=3\\n)"
    [row] = [line for line in report.to_text().splitlines() if "$.m" in line]
    assert row.split()[:4] == ["1", "100.00%", "type", "$.m"] and row.endswith("-> None")
    [md_row] = [line for line in report.to_markdown().splitlines() if "`$.m`" in line]
    assert md_row.startswith("| 1 |") and md_row.endswith("-> None |")


# -- configuration --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"primary": "both"},
        {"sample": 101},
        {"sample": -1},
        {"sample": float("nan")},
        {"sample": True},
        {"mode": "thread"},
        {"timeout": 0},
        {"timeout": -1},
        {"timeout": "1"},
        {"workers": 0},
        {"queue_size": 1.5},
        {"ignore": ("generated_at",)},
        {"compare": "yes"},
        {"clean": 3},
        {"copy": "deep"},
        {"tolerance": -0.1},
        {"calibrate_sample": 200},
    ],
)
def test_bad_shadow_configuration_is_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        dualrun.Shadow(**kwargs)


def test_a_dispatcher_takes_only_a_shadow_config(lab: Lab) -> None:
    versions = lab.pair(SIMPLE_OLD, SIMPLE_NEW)
    with pytest.raises(ValueError, match=r"dualrun\.Shadow"):
        dualrun.Dispatcher(versions, shadow={"sample": 10})  # type: ignore[arg-type]
    d = lab.dispatcher(versions)
    assert d.shadow is None and d.flush(0)
    d.shadow = dualrun.Shadow(sample=10, mode="background")
    assert "sample=10" in repr(d.shadow) and "background" in repr(d.shadow)


def test_calibration_never_takes_the_whole_value_for_noise(lab: Lab) -> None:
    old = "import uuid\ndef price(n):\n    return {'price': n, 'id': str(uuid.uuid4())}\n"
    new = "import uuid\ndef price(n):\n    return {'price': n + (n % 2), 'id': str(uuid.uuid4())}\n"
    versions = lab.pair(old, new)
    d = lab.dispatcher(
        versions,
        shadow=dualrun.Shadow(calibrate=True, compare=lambda a, b: a == b),
    )
    price = d.route(lab.target("price"))
    for n in range(10):
        price(n)
    report = d.report().route(lab.target("price"))
    # A bool comparator can only say "the whole value differs": two runs of one version differ
    # there (by their ids), but learning the root as noise would hide every real change too.
    assert (report.mismatches, report.matches, report.noise) == (10, 0, 0)
    assert [(g.path, g.kind) for g in report.divergences] == [("$", "value")]


def test_redact_sees_every_key_and_value_before_it_is_recorded_or_logged(
    lab: Lab, tmp_path: Path
) -> None:
    seen: list[tuple[str, str]] = []

    def redact(what: str, text: str) -> str:
        seen.append((what, text))
        return f"<{what}>"

    versions = lab.pair(SIMPLE_OLD, SIMPLE_NEW)
    log = tmp_path / "redacted.jsonl"
    d = lab.dispatcher(versions, shadow=dualrun.Shadow(redact=redact), log=log)
    quote = d.route(lab.target("quote"))
    with dualrun.context(key="alice@example.com"):
        quote(1)
    d.close()
    assert ("key", "alice@example.com") in seen and ("value", "10") in seen
    [group] = route_report(d, lab.target("quote")).divergences
    assert group.examples == [
        {"path": "$.price", "old": "<value>", "new": "<value>", "key": "<key>"}
    ]
    text = log.read_text()
    assert "alice" not in text and "'price': 10" not in text and "<key>" in text
    with pytest.raises(ValueError, match="redact is a callable"):
        dualrun.Shadow(redact="hash")  # type: ignore[arg-type]


def test_counts_are_exact_with_many_threads_switching_at_every_instruction(lab: Lab) -> None:
    """Matches are kept per thread without a lock and merged when read: none lost, none twice,
    while readers snapshot, threads end (their buffers are merged, then forgotten), and every
    thread switches as often as the interpreter can."""
    import sys

    versions = lab.pair("def f(x):\n    return x\n", "def f(x):\n    return x if x % 97 else -x\n")
    d = lab.dispatcher(versions, shadow=dualrun.Shadow())
    f = d.route(lab.target("f"))
    calls, threads = 700, 12
    snapshots: list[int] = []
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:

        def work() -> None:
            for n in range(calls):
                f(n)

        def read() -> None:
            for _ in range(30):
                snapshots.append(route_report(d, lab.target("f")).comparisons)

        pool = [threading.Thread(target=work) for _ in range(threads)]
        reader = threading.Thread(target=read)
        for thread in [*pool, reader]:
            thread.start()
        for thread in [*pool, reader]:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    report = route_report(d, lab.target("f"))
    mismatches = threads * len(range(97, calls, 97))  # 0 == -0
    assert (report.comparisons, report.mismatches) == (threads * calls, mismatches)
    assert report.matches == threads * calls - mismatches
    assert snapshots == sorted(snapshots)  # what a reader saw never went back
    assert len(d.recorder._buffers) <= 1  # the ended threads' buffers are gone
    d.recorder.reset()
    f(1)
    assert route_report(d, lab.target("f")).comparisons == 1
