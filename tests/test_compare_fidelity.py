"""A comparison never cries wolf, and never calls a difference a match.

* a value whose ``==`` raises (an aware datetime whose ``utcoffset()`` raises, as dateutil makes
  for ``+2500``) is compared by its text: equal when it prints the same;
* every NaN equals every NaN: float, Decimal (quiet and signalling), complex parts, numpy-like
  scalars;
* the versions' private module prefixes never make two texts differ: exception messages, reprs,
  type names, strings that name a module;
* values nested far deeper than the recursion limit are compared to the end (issue 9, item 8):
  a difference in the 3,000th node is found, and what cannot be compared at all is reported as
  ``uncomparable``, never as a match;
* a reported difference never shows the same text on both sides (hypothesis), and a value
  diffs empty against an equal copy made by the other version (hypothesis).
"""

from __future__ import annotations

import dataclasses
import datetime
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from shadow_helpers import Lab, route_report

import dualrun
from dualrun.compare import (
    Differ,
    Difference,
    describe,
    exception_key,
    short_repr,
    strip_versions,
    two_texts,
    type_name,
)

SETTINGS = settings(max_examples=120, deadline=None)


def kinds(old: object, new: object, **kwargs: Any) -> list[tuple[str, str]]:
    return [(d.path, d.kind) for d in Differ(**kwargs).diff(old, new)]


# -- == raises ----------------------------------------------------------------------------------


class BadOffset(datetime.tzinfo):
    """Like dateutil's ``tzoffset(None, 90000)``: an offset of 25 hours, which Python refuses."""

    def __init__(self, seconds: int) -> None:
        self.seconds = seconds

    def utcoffset(self, dt: datetime.datetime | None) -> datetime.timedelta:
        return datetime.timedelta(seconds=self.seconds)

    def __repr__(self) -> str:
        return f"tzoffset(None, {self.seconds})"


def odd(day: int, seconds: int = 90000) -> datetime.datetime:
    return datetime.datetime(2000, 1, day, tzinfo=BadOffset(seconds))


def test_values_whose_eq_raises_compare_by_their_text() -> None:
    with pytest.raises(ValueError):
        _ = odd(1) == odd(1)
    assert kinds(odd(1), odd(1)) == []
    assert kinds({"when": [odd(1)]}, {"when": [odd(1)]}) == []
    [difference] = Differ().diff({"when": odd(1)}, {"when": odd(2)})
    assert (difference.path, difference.kind) == ("$.when", "value")
    assert difference.old != difference.new and "2000, 1, 2" in difference.new


def test_numpy_like_arrays_whose_eq_answers_an_array() -> None:
    class Array:
        """== answers elementwise, and its truth value is ambiguous, as numpy's."""

        __slots__ = ("items",)

        def __init__(self, *items: int) -> None:
            self.items = list(items)

        def __eq__(self, other: object) -> Any:
            return Bools([a == b for a, b in zip(self.items, other.items, strict=True)])  # type: ignore[attr-defined]

        __hash__ = None  # type: ignore[assignment]

    class Bools(list[bool]):
        def __bool__(self) -> bool:
            raise ValueError("the truth value of an array is ambiguous")

        def all(self) -> bool:
            return all(self)

    assert kinds(Array(1, 2), Array(1, 2)) == []
    assert kinds(Array(1, 2), Array(1, 3)) == [("$.items[1]", "value")]


# -- NaN ----------------------------------------------------------------------------------------


class NumpyLikeNaN:
    """A scalar that is unequal to itself, as numpy's ``float64('nan')``, without fields."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return False

    def __ne__(self, other: object) -> bool:
        return True

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return "np.float64(nan)"


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (float("nan"), float("nan")),
        (Decimal("NaN"), Decimal("NaN")),
        (Decimal("NaN"), Decimal("-NaN")),
        (Decimal("sNaN"), Decimal("sNaN")),  # == itself raises InvalidOperation
        (Decimal("NaN"), Decimal("sNaN")),
        (complex(float("nan"), 1), complex(float("nan"), 1)),
        (complex(0, float("nan")), complex(0, float("nan"))),
        (NumpyLikeNaN(), NumpyLikeNaN()),
        (
            {"x": [Decimal("NaN"), (complex("nan+nanj"),)]},
            {"x": [Decimal("NaN"), (complex("nan+nanj"),)]},
        ),
    ],
)
def test_every_nan_equals_every_nan(old: object, new: object) -> None:
    assert kinds(old, new) == []


def test_nan_still_differs_from_numbers() -> None:
    assert kinds(Decimal("NaN"), Decimal("1")) == [("$", "value")]
    assert kinds(complex(float("nan"), 1), complex(float("nan"), 2)) == [("$", "value")]
    assert kinds(complex(1, 1), complex(1.5, 1), tolerance=1) == []
    assert kinds(Decimal("NaN"), float("nan")) == [("$", "type")]


# -- the versions' prefixes -----------------------------------------------------------------------

NAMING = """
class ConfigError(Exception):
    pass


class Box:
    def __init__(self, value):
        self.value = value


def fail(x):
    raise ConfigError(f"{__name__}.load: bad {x} in {Box!r}")


def where():
    return f"{__name__}:{Box.__qualname__}"


def box(x):
    return Box(x)
"""


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    lab = Lab(tmp_path)
    yield lab
    lab.cleanup()


def outcome(function: Any, *args: Any) -> tuple[Any, BaseException | None]:
    try:
        return function(*args), None
    except Exception as exc:
        return None, exc


def test_texts_naming_the_versions_prefix_compare_and_show_without_it(lab: Lab) -> None:
    versions = lab.pair(NAMING, NAMING)
    old, new = lab.engine(versions, "old"), lab.engine(versions, "new")
    old_value, old_exc = outcome(old.fail, 1)
    new_value, new_exc = outcome(new.fail, 1)
    assert old_exc is not None and new_exc is not None
    assert versions.old.prefix in str(old_exc) and versions.new.prefix in str(new_exc)
    assert exception_key(old_exc) == exception_key(new_exc)
    assert Differ().diff_outcomes(old_value, old_exc, new_value, new_exc) == []
    assert Differ().diff(old_exc, new_exc) == []
    assert describe(old_exc) == describe(new_exc) and "_dualrun_" not in describe(old_exc)
    assert Differ().diff(old.where(), new.where()) == []  # strings that name a module
    assert Differ().diff(old.Box, new.Box) == []  # classes compare by qualified name
    assert Differ().diff(old.box, new.box) == []  # functions too
    assert [d.kind for d in Differ().diff(old.box, new.where)] == ["value"]
    assert type_name(old.box(1)) == type_name(new.box(1))
    assert strip_versions(f"{versions.old.prefix}.x.y") == "x.y"
    # A real difference in the message still shows, both texts without the prefix.
    _, other_exc = outcome(new.fail, 2)
    [difference] = Differ().diff_outcomes(None, old_exc, None, other_exc)
    assert difference.kind == "exception" and "_dualrun_" not in difference.old + difference.new
    assert difference.old != difference.new


def test_the_report_shows_errors_without_the_prefix(lab: Lab) -> None:
    versions = lab.pair(NAMING, NAMING.replace("bad {x}", "wrong {x}"))
    d = lab.dispatcher(versions, policy=dualrun.Fixed("old"), shadow=dualrun.Shadow())
    fail = d.route(lab.target("fail"))
    for x in range(3):
        with pytest.raises(Exception, match="bad"):
            fail(x)
    report = route_report(d, lab.target("fail"))
    assert report.mismatches == 3
    text = d.report().to_text() + d.report().to_json() + d.report().to_markdown()
    assert "_dualrun_" not in text
    assert f"{lab.name}.engine.load: wrong" in text


def test_same_versions_raising_the_same_error_match_in_the_shadow(lab: Lab) -> None:
    versions = lab.pair(NAMING, NAMING)
    d = lab.dispatcher(versions, policy=dualrun.Fixed("old"), shadow=dualrun.Shadow())
    fail = d.route(lab.target("fail"))
    for x in range(3):
        with pytest.raises(Exception, match="bad"):
            fail(x)
    report = route_report(d, lab.target("fail"))
    assert (report.comparisons, report.mismatches) == (3, 0)


# -- deeper than the recursion limit (issue 9, item 8) ------------------------------------------


@dataclasses.dataclass
class Node:
    value: int
    next: Node | None = None


def chain(n: int, last: int) -> Node:
    head = Node(last)
    for i in range(n - 1):
        head = Node(i, head)
    return head


def nested_lists(n: int, last: int) -> list[Any]:
    value: list[Any] = [last]
    for _ in range(n):
        value = [0, value]
    return value


DEEP = 3 * sys.getrecursionlimit()


def test_a_difference_deeper_than_the_recursion_limit_is_found() -> None:
    # Before: past depth 40 both sides were compared by repr, which fails with RecursionError
    # the same way on both sides, and the comparison was recorded as a match.
    [difference] = Differ().diff(chain(DEEP, 1), chain(DEEP, 2))
    assert difference.kind == "value" and (difference.old, difference.new) == ("1", "2")
    assert difference.path == "$" + ".next" * (DEEP - 1) + ".value"
    assert Differ().diff(chain(DEEP, 1), chain(DEEP, 1)) == []
    [difference] = Differ().diff(nested_lists(DEEP, 1), nested_lists(DEEP, 2))
    assert difference.path.endswith("[1][1][0]") and difference.kind == "value"
    assert Differ().diff(nested_lists(DEEP, 1), nested_lists(DEEP, 1)) == []
    deep_dicts_old: Any = {"leaf": 1}
    deep_dicts_new: Any = {"leaf": 2}
    for _ in range(DEEP):
        deep_dicts_old, deep_dicts_new = {"x": deep_dicts_old}, {"x": deep_dicts_new}
    assert [d.kind for d in Differ().diff(deep_dicts_old, deep_dicts_new)] == ["value"]


def test_what_cannot_be_compared_is_uncomparable_never_a_match() -> None:
    class Hidden:
        """Its only state is hidden from the comparison: a C-level object, say."""

        __slots__ = ()

        def __init__(self, depth: int) -> None:
            hidden[id(self)] = depth

        def __eq__(self, other: object) -> bool:
            raise RecursionError("maximum recursion depth exceeded in comparison")

        __hash__ = object.__hash__

        def __repr__(self) -> str:
            raise RecursionError("maximum recursion depth exceeded while getting the repr")

    hidden: dict[int, int] = {}
    a, b = Hidden(1), Hidden(2)
    [difference] = Differ().diff({"x": a}, {"x": b})
    assert difference.kind == "uncomparable" and difference.path == "$.x"
    assert "with a failing repr" in difference.old


def test_deep_values_in_the_shadow_are_mismatches_not_matches(lab: Lab) -> None:
    code = f"""
import dataclasses

@dataclasses.dataclass
class Node:
    value: int
    next: object = None


def build(last):
    head = Node(last)
    for i in range({DEEP - 1}):
        head = Node(i, head)
    return head
"""
    versions = lab.pair(code, code.replace("Node(last)", "Node(last + 1)"))
    d = lab.dispatcher(versions, policy=dualrun.Fixed("old"), shadow=dualrun.Shadow())
    build = d.route(lab.target("build"))
    build(1)
    report = route_report(d, lab.target("build"))
    assert (report.comparisons, report.mismatches, report.matches) == (1, 1, 0)


# -- texts that differ ----------------------------------------------------------------------------


def test_long_values_that_differ_beyond_the_cut_show_where_they_differ() -> None:
    old, new = "x" * 500 + "old", "x" * 500 + "new"
    [difference] = Differ().diff(old, new)
    assert difference.old != difference.new
    assert difference.old.endswith("old'") and difference.new.endswith("new'")
    assert len(difference.old) <= 120
    assert two_texts("abc", "abc") == ("abc", "abc")
    assert two_texts("a" * 300, "a" * 301) != two_texts("a" * 300, "a" * 300)


def test_members_and_keys_made_by_each_version_meet_as_values(lab: Lab) -> None:
    code = """
import enum

class Color(enum.Enum):
    RED = 1
    BLUE = 2


def colors():
    return {Color.RED, Color.BLUE}


def by_color():
    return {Color.RED: 1, Color.BLUE: 2}
"""
    versions = lab.pair(code, code)
    old, new = lab.engine(versions, "old"), lab.engine(versions, "new")
    assert old.Color.RED != new.Color.RED
    assert Differ().diff(old.colors(), new.colors()) == []
    assert Differ().diff(old.by_color(), new.by_color()) == []
    changed = new.by_color()
    changed[new.Color.BLUE] = 3
    assert [d.kind for d in Differ().diff(old.by_color(), changed)] == ["value"]
    assert Differ().diff(old.colors(), {new.Color.RED}) == [
        Difference("${<Color.BLUE: 2>}", "missing", "<Color.BLUE: 2>", "<missing>")
    ]


# -- hypothesis: equal copies made by the other version, and honest texts -----------------------

BUILDER = """
import dataclasses
import datetime
import decimal
import enum


class tzoffset(datetime.tzinfo):
    def __init__(self, name, offset):
        self._name = name
        self._offset = datetime.timedelta(seconds=offset)

    def utcoffset(self, dt):
        return self._offset

    def __repr__(self):
        return f"tzoffset({self._name!r}, {int(self._offset.total_seconds())})"


class ParseError(ValueError):
    pass


class Kind(enum.Enum):
    A = "a"
    B = "b"


@dataclasses.dataclass
class Record:
    name: str
    value: object


class Plain:
    def __init__(self, **fields):
        self.__dict__.update(fields)


MISSING = type("Missing", (), {"__repr__": lambda self: "MISSING", "__slots__": ()})()


def build(spec):
    tag, *rest = spec
    if tag == "atom":
        return rest[0]
    if tag == "float":
        return float(rest[0])
    if tag == "complex":
        return complex(float(rest[0]), float(rest[1]))
    if tag == "decimal":
        return decimal.Decimal(rest[0])
    if tag == "datetime":
        day, offset = rest
        return datetime.datetime(2000, 1, day, tzinfo=tzoffset(None, offset))
    if tag == "error":
        return ParseError(f"{__name__}.build: cannot read {rest[0]!r} ({Record!r})")
    if tag == "named":
        return f"{__name__}.{rest[0]}"
    if tag == "kind":
        return Kind(rest[0])
    if tag == "missing":
        return MISSING
    if tag == "class":
        return Record
    if tag == "record":
        return Record(rest[0], build(rest[1]))
    if tag == "plain":
        return Plain(**{k: build(v) for k, v in rest[0]})
    if tag == "list":
        return [build(item) for item in rest[0]]
    if tag == "tuple":
        return tuple(build(item) for item in rest[0])
    if tag == "dict":
        return {k: build(v) for k, v in rest[0]}
    if tag == "kinds":
        return {Kind(k) for k in rest[0]}
    raise AssertionError(tag)


def raised(spec):
    raise build(("error", spec))
"""

LEAVES = (
    st.tuples(
        st.just("atom"),
        st.none()
        | st.booleans()
        | st.integers(-5, 5)
        | st.text(max_size=4)
        | st.binary(max_size=2),
    )
    | st.tuples(st.just("float"), st.sampled_from(["nan", "-nan", "inf", "0.1", "-0.0", "1e300"]))
    | st.tuples(
        st.just("complex"), st.sampled_from(["nan", "1", "0"]), st.sampled_from(["nan", "2"])
    )
    | st.tuples(
        st.just("decimal"),
        st.sampled_from(["NaN", "-NaN", "sNaN", "1.10", "1.1", "-0", "Infinity"]),
    )
    | st.tuples(
        st.just("datetime"), st.integers(1, 3), st.sampled_from([90000, -90000, 3600, 0, 86399])
    )
    | st.tuples(st.just("error"), st.text(max_size=3))
    | st.tuples(st.just("named"), st.sampled_from(["x", "Record", "a.b"]))
    | st.tuples(st.just("kind"), st.sampled_from(["a", "b"]))
    | st.tuples(st.just("missing"))
    | st.tuples(st.just("class"))
    | st.tuples(st.just("kinds"), st.lists(st.sampled_from(["a", "b"]), max_size=2).map(tuple))
)
NAMES = st.sampled_from(["a", "b", "c d", "e"])


def _extend(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    fields = st.lists(st.tuples(NAMES, children), max_size=3, unique_by=lambda kv: kv[0]).map(tuple)
    return (
        st.tuples(st.just("list"), st.lists(children, max_size=3).map(tuple))
        | st.tuples(st.just("tuple"), st.lists(children, max_size=3).map(tuple))
        | st.tuples(st.just("dict"), fields)
        | st.tuples(st.just("plain"), fields)
        | st.tuples(st.just("record"), NAMES, children)
    )


SPECS = st.recursive(LEAVES, _extend, max_leaves=12)


def builders(lab: Lab) -> tuple[Any, Any]:
    """The ``build`` modules of two versions loaded from the same code."""
    versions = lab.pair(BUILDER, BUILDER)
    return lab.engine(versions, "old"), lab.engine(versions, "new")


@pytest.mark.filterwarnings("ignore:Generating overly large repr")
def test_a_value_and_an_equal_copy_made_by_the_other_version_do_not_differ(lab: Lab) -> None:
    old, new = builders(lab)
    differ = Differ()

    @SETTINGS
    @given(SPECS)
    def check(spec: Any) -> None:
        assert differ.diff(old.build(spec), new.build(spec)) == []
        assert differ.diff(old.build(spec), old.build(spec)) == []
        old_outcome, new_outcome = outcome(old.raised, spec), outcome(new.raised, spec)
        assert differ.diff_outcomes(*old_outcome, *new_outcome) == []

    check()


@pytest.mark.filterwarnings("ignore:Generating overly large repr")
def test_a_reported_difference_never_shows_the_same_text_on_both_sides(lab: Lab) -> None:
    old, new = builders(lab)

    @SETTINGS
    @given(SPECS, SPECS)
    def check(first: Any, second: Any) -> None:
        pairs = ((old.build(first), new.build(second)), (old.build(first), old.build(second)))
        for a, b in pairs:
            for difference in Differ().diff(a, b):
                if difference.kind in ("value", "type", "exception", "order"):
                    assert difference.old != difference.new, difference
        old_outcome, new_outcome = outcome(old.raised, first), outcome(new.raised, second)
        for difference in Differ().diff_outcomes(*old_outcome, *new_outcome):
            assert difference.old != difference.new

    check()


def test_kinds_explain_equal_texts() -> None:
    @dataclasses.dataclass
    class Point:
        x: int

    Other = dataclasses.make_dataclass("Point", [("x", int)])
    Other.__qualname__, Other.__module__ = Point.__qualname__, "elsewhere"
    [difference] = Differ().diff(Point(1), Other(1))
    assert difference.kind == "type" and difference.old != difference.new
    assert difference.new == "elsewhere." + Point.__qualname__ + ": " + short_repr(Point(1))
