"""Structural comparison: paths, kinds, records of all styles, floats, cycles, exceptions,
the two versions' distinct classes, ignore rules, and the bounds on cost."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from shadow_helpers import Lab

import dualrun
from dualrun.compare import (
    KINDS,
    MAX_DIFFERENCES,
    REPR_LIMIT,
    Differ,
    Difference,
    IgnoreRules,
    exception_key,
    generalize,
    key_path,
    short_repr,
    type_name,
)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    lab = Lab(tmp_path)
    yield lab
    lab.cleanup()


def diff(old: object, new: object, **kwargs: Any) -> list[tuple[str, str]]:
    """(path, kind) of each difference."""
    return [(d.path, d.kind) for d in Differ(**kwargs).diff(old, new)]


# -- equal values -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        None,
        0,
        "text",
        b"bytes",
        3.5,
        float("nan"),
        float("inf"),
        [1, [2, (3, {"a": {4, 5}})]],
        {"items": [{"price": 1.25, "tags": frozenset({"x"})}], "a b": None},
        (),
        {},
        Decimal("1.10"),
    ],
)
def test_a_value_equals_itself_and_its_copy(value: object) -> None:
    import copy

    assert Differ().diff(value, value) == []
    assert Differ().diff(value, copy.deepcopy(value)) == []


def test_equal_by_eq_without_fields_is_equal() -> None:
    assert diff(Decimal("1.0"), Decimal("1.00")) == []
    assert diff(Decimal("1"), Decimal("2")) == [("$", "value")]
    # No fields and == by identity: compared by their text, addresses left out. Two sentinels
    # that print alike are equal values; reporting them would show the same text twice.
    assert diff(object(), object()) == []

    texts: dict[int, str] = {}

    class Printed:
        """No state of its own (no slots, no __dict__) and == by identity; prints its text."""

        __slots__ = ()

        def __init__(self, text: str) -> None:
            texts[id(self)] = text

        def __repr__(self) -> str:
            return texts[id(self)]

    assert diff(Printed("A"), Printed("B")) == [("$", "value")]
    assert diff(Printed("A"), Printed("A")) == []


# -- kinds and paths ----------------------------------------------------------------------------


def test_value_differences_carry_the_full_path() -> None:
    old = {"items": [{"price": 1}, {"price": 2}, {"price": 3}, {"price": 4, "sku": "a"}]}
    new = {"items": [{"price": 1}, {"price": 2}, {"price": 3}, {"price": 5, "sku": "a"}]}
    [difference] = Differ().diff(old, new)
    assert difference == Difference("$.items[3].price", "value", "4", "5")
    assert difference.signature == "$.items[*].price value"
    assert difference.to_dict() == {
        "path": "$.items[3].price",
        "kind": "value",
        "old": "4",
        "new": "5",
    }


def test_keys_that_are_not_identifiers_are_subscripts() -> None:
    old = {"a b": 1, 3: 2, "1x": 3, "": 4, "ok_1": 5, "it's": 6}
    new = {"a b": 0, 3: 0, "1x": 0, "": 0, "ok_1": 0, "it's": 0}
    assert [p for p, _ in diff(old, new)] == [
        "$['a b']",
        "$[3]",
        "$['1x']",
        "$['']",
        "$.ok_1",
        '$["it\'s"]',
    ]
    assert key_path("$", "name") == "$.name" and key_path("$.a", "b-c") == "$.a['b-c']"


def test_type_differences() -> None:
    assert diff(1, "1") == [("$", "type")]
    assert diff(1, 1.0) == [("$", "type")]
    assert diff(True, 1) == [("$", "type")]
    assert diff([1], (1,)) == [("$", "type")]
    assert diff({"a": None}, {"a": 0}) == [("$.a", "type")]
    assert diff({1}, frozenset({1})) == [("$", "type")]


def test_missing_and_extra_keys() -> None:
    found = Differ().diff({"a": 1, "b": 2}, {"b": 2, "c": 3})
    assert found == [
        Difference("$.a", "missing", "1", "<missing>"),
        Difference("$.c", "extra", "<missing>", "3"),
    ]


def test_length_differences_and_the_common_prefix() -> None:
    assert diff([1, 2], [1, 2, 3]) == [("$", "length")]
    [length] = Differ().diff([1, 2], [1, 2, 3])
    assert "2 items" in length.old and "3 items" in length.new
    assert diff([1, 2], [9, 2, 3]) == [("$", "length"), ("$[0]", "value")]
    assert diff({"xs": (1, 2, 3)}, {"xs": (1,)}) == [("$.xs", "length")]


def test_a_permutation_is_one_order_difference() -> None:
    assert diff([1, 2, 3], [3, 1, 2]) == [("$", "order")]
    assert diff((1, 2), (2, 1)) == [("$", "order")]
    rows = [{"id": 1, "tags": ["a"]}, {"id": 2, "tags": ["b"]}]
    assert diff({"rows": rows}, {"rows": rows[::-1]}) == [("$.rows", "order")]
    # Not a permutation: the elements differ, reported where they do.
    assert diff([1, 1, 2], [1, 2, 2]) == [("$[1]", "value")]
    assert diff([[1, 2], [3, 4]], [[4, 3], [1, 2]]) == [
        ("$[0][0]", "value"),
        ("$[0][1]", "value"),
        ("$[1][0]", "value"),
        ("$[1][1]", "value"),
    ]


def test_set_members_are_missing_or_extra() -> None:
    found = Differ().diff({"tags": {"a", "b"}}, {"tags": {"b", "c"}})
    assert found == [
        Difference("$.tags{'a'}", "missing", "'a'", "<missing>"),
        Difference("$.tags{'c'}", "extra", "<missing>", "'c'"),
    ]
    assert diff(frozenset({1, 2}), frozenset({1, 2})) == []
    assert diff({3, 1}, {1, 2, 3}) == [("${2}", "extra")]


class Unprintable:
    """Neither == nor repr can tell two of these apart: nothing to compare them by."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        raise RecursionError("maximum recursion depth exceeded")

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        raise RecursionError("maximum recursion depth exceeded while getting the repr")


def test_every_kind_is_one_of_the_documented_kinds() -> None:
    samples = [
        (1, 2),
        (1, "1"),
        ({"a": 1}, {}),
        ({}, {"a": 1}),
        ([1], [1, 2]),
        ([1, 2], [2, 1]),
        (ValueError("a"), ValueError("b")),
        (Unprintable(), Unprintable()),
    ]
    kinds = [Differ().diff(old, new)[0].kind for old, new in samples]
    assert kinds == [
        "value",
        "type",
        "missing",
        "extra",
        "length",
        "order",
        "exception",
        "uncomparable",
    ]
    assert set(kinds) == set(KINDS)


# -- floats -------------------------------------------------------------------------------------


def test_floats_nan_infinity_and_tolerance() -> None:
    nan = float("nan")
    assert diff(nan, float("nan")) == []
    assert diff({"x": [nan]}, {"x": [float("nan")]}) == []
    assert diff(nan, 1.0) == [("$", "value")]
    assert diff(nan, 1.0, tolerance=10) == [("$", "value")]
    assert diff(math.inf, math.inf) == [] and diff(math.inf, -math.inf) == [("$", "value")]
    assert diff(-0.0, 0.0) == []
    assert diff(0.1 + 0.2, 0.3) == [("$", "value")]
    assert diff(0.1 + 0.2, 0.3, tolerance=1e-9) == []
    assert diff(1.0, 1.005, tolerance=0.01) == []
    assert diff(1.0, 1.02, tolerance=0.01) == [("$", "value")]
    assert diff({"p": 9.99}, {"p": 10.0}, tolerance=0.01) == []
    with pytest.raises(ValueError, match="tolerance"):
        Differ(tolerance=-1)


# -- records ------------------------------------------------------------------------------------


@dataclasses.dataclass
class Line:
    sku: str
    qty: int


@dataclasses.dataclass
class Quote:
    total: float
    lines: list[Line]


class Slotted:
    __slots__ = ("a", "b")

    def __init__(self, a: int, b: int) -> None:
        self.a, self.b = a, b


class SlottedChild(Slotted):
    __slots__ = ("c",)

    def __init__(self, a: int, b: int, c: int) -> None:
        super().__init__(a, b)
        self.c = c


class Plain:
    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)


class _Attribute:
    def __init__(self, name: str) -> None:
        self.name = name


class AttrsStyle:
    """Looks like an attrs class: fields listed in ``__attrs_attrs__``; no ``__eq__``."""

    __attrs_attrs__ = (_Attribute("x"), _Attribute("y"))

    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y
        self._cache = object()  # not a field: not compared


class PydanticStyle:
    """Looks like a pydantic v2 model: fields listed in the class's ``model_fields``."""

    model_fields = {"name": None, "price": None}

    def __init__(self, name: str, price: float) -> None:
        self.name, self.price = name, price
        self._private = object()


def test_dataclasses_compare_by_fields() -> None:
    old = Quote(10.0, [Line("a", 1), Line("b", 2)])
    assert diff(old, Quote(10.0, [Line("a", 1), Line("b", 2)])) == []
    assert diff(old, Quote(10.0, [Line("a", 1), Line("b", 3)])) == [("$.lines[1].qty", "value")]
    assert diff(old, Quote(11.0, [Line("b", 2), Line("a", 1)])) == [
        ("$.total", "value"),
        ("$.lines", "order"),
    ]


def test_slots_dict_attrs_and_pydantic_style_objects_compare_by_fields() -> None:
    assert diff(Slotted(1, 2), Slotted(1, 3)) == [("$.b", "value")]
    assert sorted(diff(SlottedChild(1, 2, 3), SlottedChild(0, 2, 4))) == [
        ("$.a", "value"),
        ("$.c", "value"),
    ]
    assert diff(Plain(a=1, b=[1]), Plain(a=1, b=[2])) == [("$.b[0]", "value")]
    assert diff(Plain(a=1), Plain(a=1, z=2)) == [("$.z", "extra")]
    assert diff(SimpleNamespace(a=1), SimpleNamespace(a=2)) == [("$.a", "value")]
    assert diff(AttrsStyle(1, 2), AttrsStyle(1, 2)) == []  # _cache differs but is no field
    assert diff(AttrsStyle(1, 2), AttrsStyle(1, 5)) == [("$.y", "value")]
    assert diff(PydanticStyle("a", 1.0), PydanticStyle("a", 1.0)) == []
    assert diff(PydanticStyle("a", 1.0), PydanticStyle("b", 1.0)) == [("$.name", "value")]


def test_real_attrs_and_pydantic_classes() -> None:
    import attrs
    import pydantic

    @attrs.define
    class Point:
        x: int
        y: list[int]

    class Item(pydantic.BaseModel):
        name: str
        price: float

    assert diff(Point(1, [2]), Point(1, [3])) == [("$.y[0]", "value")]
    assert diff(Item(name="a", price=1), Item(name="a", price=1)) == []
    assert diff(Item(name="a", price=1), Item(name="a", price=2)) == [("$.price", "value")]


def make_class() -> type:
    """A new class on every call, all with the same module and qualified name."""

    @dataclasses.dataclass
    class Twin:
        value: int

    return Twin


def test_distinct_classes_with_the_same_qualified_name_compare_by_fields() -> None:
    first, second = make_class(), make_class()
    assert first is not second and first.__qualname__ == second.__qualname__
    assert first(1) != second(1)  # dataclass __eq__ refuses another class
    assert diff(first(1), second(1)) == []
    assert diff(first(1), second(2)) == [("$.value", "value")]
    assert diff(first(1), Line("a", 1)) == [("$", "type")]


VERSIONED = """
@dataclasses.dataclass
class Line:
    sku: str
    qty: int


class Total:
    def __init__(self, amount):
        self.amount = amount


class PricingError(Exception):
    pass


def quote(qty):
    return {"lines": [Line("a", qty)], "total": Total(qty * 2)}


def fail(x):
    return PricingError(f"bad {x}")
"""


def test_the_two_versions_classes_compare_as_values(lab: Lab) -> None:
    versions = lab.pair(VERSIONED, VERSIONED, common="import dataclasses\n")
    old, new = lab.engine(versions, "old"), lab.engine(versions, "new")
    assert old.Line is not new.Line
    a, b = old.quote(3), new.quote(3)
    assert type_name(a["lines"][0]) == type_name(b["lines"][0]) == f"{lab.name}.engine.Line"
    assert Differ().diff(a, b) == []
    found = Differ().diff(a, new.quote(4))
    assert [(d.path, d.kind, d.old, d.new) for d in found] == [
        ("$.lines[0].qty", "value", "3", "4"),
        ("$.total.amount", "value", "6", "8"),
    ]
    assert short_repr(a["lines"][0]) == "Line(sku='a', qty=3)"
    assert "_dualrun_" not in short_repr(a["total"])
    assert Differ().diff(old.fail(1), new.fail(1)) == []
    assert exception_key(old.fail(1)) == exception_key(new.fail(1))
    assert [d.kind for d in Differ().diff(old.fail(1), new.fail(2))] == ["exception"]
    # Against a different class of the same version: a type difference.
    assert [d.kind for d in Differ().diff(a["total"], b["lines"][0])] == ["type"]


# -- cycles, depth and bounds -------------------------------------------------------------------


def test_cycles_terminate() -> None:
    a: list[Any] = [1]
    a.append(a)
    b: list[Any] = [1]
    b.append(b)
    assert diff(a, b) == []
    c: list[Any] = [2]
    c.append(c)
    assert diff(a, c) == [("$[0]", "value")]
    x: dict[str, Any] = {"n": 1}
    y: dict[str, Any] = {"x": x}
    x["y"] = y
    x2: dict[str, Any] = {"n": 1}
    y2: dict[str, Any] = {"x": x2, "extra": True}
    x2["y"] = y2
    assert diff(x, x2) == [("$.y.extra", "extra")]
    p, q = Plain(name="p"), Plain(name="p")
    p.me, q.me = p, q
    assert diff(p, q) == []
    # A cycle on one side only.
    d: list[Any] = [1, None]
    d[1] = d
    assert diff(d, [1, [1, [1, None]]]) != []


def deep(depth: int, leaf: object) -> Any:
    node: Any = {"leaf": leaf}
    for i in range(depth):
        node = {"children": [node, {"n": i}]}
    return node


@pytest.mark.parametrize("depth", [5, 18, 30, 200])
def test_deeply_nested_values_are_compared_quickly_and_differences_found(depth: int) -> None:
    started = time.monotonic()
    assert Differ().diff(deep(depth, 1), deep(depth, 1)) == []
    found = Differ().diff(deep(depth, 1), deep(depth, 2))
    assert len(found) == 1 and found[0].kind == "value"
    assert found[0].path.startswith("$.children[0].children[0]")
    nested_old: Any = [1]
    nested_new: Any = [2]
    for _ in range(depth):
        nested_old, nested_new = [nested_old], [nested_new]
    assert len(Differ().diff(nested_old, nested_new)) == 1
    assert time.monotonic() - started < 2.0  # (2**depth before the reordering probe was fixed)


def test_the_number_of_differences_is_bounded() -> None:
    old = list(range(200))
    new = [x + 1000 for x in old]
    assert len(Differ().diff(old, new)) == MAX_DIFFERENCES
    assert len(Differ(limit=5).diff(old, new)) == 5
    assert len(Differ(limit=5).diff({f"k{i}": i for i in range(20)}, {})) == 5


def test_short_repr_is_bounded_and_never_raises() -> None:
    text = short_repr("x" * 1000)
    assert len(text) == REPR_LIMIT and text.endswith("…")

    class Broken:
        def __repr__(self) -> str:
            raise RuntimeError("nope")

    assert short_repr(Broken()).endswith(".Broken with a failing repr: RuntimeError>")

    class Multiline:
        def __repr__(self) -> str:
            return "Multiline(\n  a=1\r\n)"

    assert short_repr(Multiline()) == "Multiline(\\n  a=1\\r\\n)"  # one line, for tables
    assert [d.kind for d in Differ().diff({"x": 1}, {"x": Broken()})] == ["type"]


def test_objects_whose_eq_raises_are_compared_by_fields() -> None:
    class Touchy:
        def __init__(self, v: int) -> None:
            self.v = v

        def __eq__(self, other: object) -> bool:
            raise RuntimeError("no comparisons")

        __hash__ = None  # type: ignore[assignment]

    assert diff(Touchy(1), Touchy(1)) == []
    assert diff(Touchy(1), Touchy(2)) == [("$.v", "value")]


# -- exceptions ---------------------------------------------------------------------------------


def test_exceptions_compare_by_qualified_type_name_and_message() -> None:
    assert diff(ValueError("x"), ValueError("x")) == []
    assert diff(ValueError("x"), ValueError("y")) == [("$", "exception")]
    assert diff(ValueError("x"), KeyError("x")) == [("$", "type")]
    assert exception_key(KeyError("k")) == ("builtins.KeyError", "'k'")
    loose = Differ(exception_key=lambda exc: type(exc).__name__)
    assert loose.diff(ValueError("x"), ValueError("y")) == []
    with pytest.raises(ValueError, match="exception_key"):
        Differ(exception_key="type")  # type: ignore[arg-type]


def test_outcomes_a_value_or_an_exception_each() -> None:
    differ = Differ()
    assert differ.diff_outcomes(1, None, 1, None) == []
    assert differ.diff_outcomes(None, ValueError("a"), None, ValueError("a")) == []
    assert differ.diff_outcomes(1, None, None, ValueError("boom")) == [
        Difference("$", "exception", "returned 1", "raised builtins.ValueError: 'boom'")
    ]
    assert differ.diff_outcomes(None, KeyError("k"), None, ValueError("k")) == [
        Difference(
            "$", "exception", "raised builtins.KeyError: \"'k'\"", "raised builtins.ValueError: 'k'"
        )
    ]
    assert differ.diff_outcomes({"a": 1}, None, {"a": 2}, None) == [
        Difference("$.a", "value", "1", "2")
    ]


# -- generalised paths and ignore rules ---------------------------------------------------------


def test_generalize_replaces_list_indices_only() -> None:
    assert generalize("$.items[3].price") == "$.items[*].price"
    assert generalize("$[0][12]") == "$[*][*]"
    assert generalize("$['a b'][1]") == "$['a b'][*]"
    assert generalize("$.tags{'x'}") == "$.tags{'x'}"


@pytest.mark.parametrize(
    ("pattern", "matching", "not_matching"),
    [
        (
            "$.generated_at",
            ["$.generated_at", "$.generated_at.tz", "$.generated_at[0]", "$.generated_at{1}"],
            ["$.generated_at2", "$.x.generated_at", "$", "$.generated"],
        ),
        (
            "$.items[*].id",
            ["$.items[0].id", "$.items[31].id", "$.items[2].id.hex", "$.items['k'].id"],
            ["$.items.id", "$.items[0].idx", "$.items[0]", "$.items[0].sku", "$.other[0].id"],
        ),
        (
            "$.*.ts",
            ["$.a.ts", "$.meta.ts", "$.a.ts[0]"],
            ["$.ts", "$.a.b.ts", "$.a[0].ts", "$.a.tsx"],
        ),
        ("$.meta.*", ["$.meta.a", "$.meta.b.c", "$.meta.a[1]"], ["$.meta", "$.metax.a"]),
        ("$['a b']", ["$['a b']", "$['a b'].c"], ["$['a bc']", "$.a"]),
        ("$", ["$", "$.a", "$[0]", "${1}"], []),
        ("$side_effects", ["$side_effects['mail'][0].args[0]"], ["$.side_effects", "$"]),
    ],
)
def test_ignore_rules_match_a_path_and_what_lies_below(
    pattern: str, matching: list[str], not_matching: list[str]
) -> None:
    rules = IgnoreRules([pattern])
    assert [p for p in matching if not rules.matches(p)] == []
    assert [p for p in not_matching if rules.matches(p)] == []


def test_ignore_rules_filter_differences() -> None:
    rules = IgnoreRules(("$.generated_at", "$.items[*].id"))
    differences = [
        Difference("$.generated_at", "value", "1", "2"),
        Difference("$.items[0].id", "value", "'a'", "'b'"),
        Difference("$.items[0].price", "value", "1", "2"),
        Difference("$.items", "length", "1", "2"),
    ]
    assert rules.filter(differences) == differences[2:]
    assert bool(rules) and not IgnoreRules(())
    assert IgnoreRules(()).filter(differences) == differences
    assert IgnoreRules("$.items").filter(differences) == differences[:1]  # one str is one rule
    assert IgnoreRules("$.items").patterns == ("$.items",)


@pytest.mark.parametrize("pattern", ["generated_at", ".a", "", 3])
def test_ignore_rules_start_with_the_root(pattern: Any) -> None:
    with pytest.raises(ValueError, match="ignore rule"):
        IgnoreRules([pattern])


def test_difference_is_exported_and_hashable() -> None:
    assert dualrun.Difference is Difference
    assert len({Difference("$", "value", "1", "2"), Difference("$", "value", "1", "2")}) == 1


def test_a_missing_field_is_shown_apart_from_a_field_that_is_none() -> None:
    """``None -> None`` (kind "extra") used to be all a report said of a field that new added
    with the value None: ``<missing>`` names the side that has no value at all."""
    differences = Differ().diff({"a": None}, {"b": None})
    assert [(d.path, d.kind, d.old, d.new) for d in differences] == [
        ("$.a", "missing", "None", "<missing>"),
        ("$.b", "extra", "<missing>", "None"),
    ]
