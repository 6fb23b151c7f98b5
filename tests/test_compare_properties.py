"""Properties of the structural diff and of ignore rules (hypothesis).

* a value never differs from itself nor from a deep copy of itself;
* changing a set of leaves of a nested value yields exactly the paths of those leaves;
* ignore rules remove exactly the differences whose path a reference matcher says they cover.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dualrun.compare import Differ, Difference, IgnoreRules

SETTINGS = settings(max_examples=80, deadline=None)
Access = tuple[Any, ...]  # dict keys and sequence indices from the root to a leaf

KEYS = st.text(alphabet="ab_1 '\"-", max_size=4)
ATOMS = (
    st.none()
    | st.integers(-(10**6), 10**6)
    | st.floats(-1e6, 1e6, allow_nan=False)
    | st.text(max_size=5)
)


def nested(leaves: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaves,
        lambda children: (
            st.lists(children, max_size=4)
            | st.lists(children, max_size=3).map(tuple)
            | st.dictionaries(KEYS, children, max_size=4)
        ),
        max_leaves=25,
    )


VALUES = nested(ATOMS)
ANY_VALUES = nested(
    ATOMS
    | st.floats()  # NaN and infinities too
    | st.booleans()
    | st.binary(max_size=3)
    | st.frozensets(st.integers(0, 5) | st.text(max_size=2), max_size=3)
    | st.sets(st.integers(0, 5), max_size=3)
)


# -- a value and itself ---------------------------------------------------------------------------


@SETTINGS
@given(ANY_VALUES)
def test_a_value_does_not_differ_from_itself_or_its_deep_copy(value: Any) -> None:
    differ = Differ()
    assert differ.diff(value, value) == []
    assert differ.diff(value, copy.deepcopy(value)) == []
    assert differ.diff_outcomes(value, None, copy.deepcopy(value), None) == []


# -- changed leaves are found exactly ------------------------------------------------------------

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def leaves(value: Any, access: Access = ()) -> Iterator[Access]:
    """The access path of every atom in ``value``."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from leaves(item, (*access, key))
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from leaves(item, (*access, i))
    else:
        yield access


def expected_path(value: Any, access: Access) -> str:
    """The documented path syntax, computed independently of dualrun."""
    path = "$"
    for step in access:
        if isinstance(value, dict) and isinstance(step, str) and IDENTIFIER.fullmatch(step):
            path += f".{step}"
        else:
            path += f"[{step!r}]"  # list index [3], or dict key ['a b']
        value = value[step]
    return path


def changed(atom: Any) -> Any:
    """A different atom. Every change raises (ints, floats, str lengths) or removes a None, so
    no sequence of changed atoms can be a reordering of the original one."""
    if atom is None:
        return "was None"
    if isinstance(atom, str):
        return atom + "!"
    return atom + 1


def replace(value: Any, access: Access, change: Callable[[Any], Any]) -> Any:
    """A copy of ``value`` with the leaf at ``access`` changed; containers are rebuilt."""
    if not access:
        return change(value)
    head, rest = access[0], access[1:]
    if isinstance(value, dict):
        return {**value, head: replace(value[head], rest, change)}
    items = list(value)
    items[head] = replace(items[head], rest, change)
    return tuple(items) if isinstance(value, tuple) else items


@st.composite
def value_and_changes(draw: st.DrawFn) -> tuple[Any, list[Access]]:
    value = draw(VALUES)
    paths = list(leaves(value))
    chosen = draw(st.sets(st.sampled_from(paths)) if paths else st.just(set()))
    return value, sorted(chosen, key=repr)


@SETTINGS
@given(value_and_changes())
def test_changing_leaves_gives_exactly_their_paths(case: tuple[Any, list[Access]]) -> None:
    value, accesses = case
    new = value
    for access in accesses:
        new = replace(new, access, changed)
    differ = Differ(limit=10_000)
    found = differ.diff(value, new)
    expected = {expected_path(value, access) for access in accesses}
    assert sorted(d.path for d in found) == sorted(expected)  # each path once, no others
    for d in found:
        assert d.kind == ("type" if d.old == "None" else "value")
    # The other way round: the same paths.
    assert sorted(d.path for d in differ.diff(new, value)) == sorted(expected)


# -- ignore rules against a reference matcher ----------------------------------------------------

# A path is a list of segments: ("field", name), ("index", i), ("key", text), ("member", text).
FIELDS = ("a", "b", "id", "items", "ts")
Segment = tuple[str, Any]

FIELD = st.sampled_from(FIELDS).map(lambda name: ("field", name))
INDEX = st.integers(0, 3).map(lambda i: ("index", i))
KEY = st.sampled_from(("a b", "x-y", "1", "it's")).map(lambda key: ("key", key))
MEMBER = st.sampled_from(("1", "'a'")).map(lambda member: ("member", member))
PATH_SEGMENTS = st.tuples(
    st.lists(FIELD | INDEX | KEY, max_size=4), st.lists(MEMBER, max_size=1)
).map(lambda parts: parts[0] + parts[1])
PATTERN_SEGMENTS = st.lists(
    FIELD
    | INDEX
    | KEY
    | st.just(("field", "*"))  # any one field name
    | st.just(("index", "*")),  # [*]: any index (or key subscript)
    max_size=3,
)


def render(segments: list[Segment]) -> str:
    text = "$"
    for kind, value in segments:
        if kind == "field":
            text += f".{value}"
        elif kind == "index":
            text += f"[{value}]"
        elif kind == "key":
            text += f"[{value!r}]"
        else:
            text += f"{{{value}}}"
    return text


def segment_matches(rule: Segment, segment: Segment) -> bool:
    rule_kind, rule_value = rule
    kind, value = segment
    if rule_kind == "field":
        return kind == "field" and rule_value in ("*", value)
    if rule_kind == "index" and rule_value == "*":
        return kind in ("index", "key")
    return rule == segment


def covers(rule: list[Segment], path: list[Segment]) -> bool:
    """The rule matches the path itself or a path above it."""
    return len(rule) <= len(path) and all(
        segment_matches(r, s) for r, s in zip(rule, path, strict=False)
    )


@SETTINGS
@given(st.lists(PATTERN_SEGMENTS, max_size=3), st.lists(PATH_SEGMENTS, max_size=12))
def test_ignore_rules_remove_exactly_the_covered_paths(
    rules: list[list[Segment]], paths: list[list[Segment]]
) -> None:
    differences = [Difference(render(p), "value", "1", "2") for p in paths]
    kept = IgnoreRules([render(r) for r in rules]).filter(differences)
    expected = [
        d for d, p in zip(differences, paths, strict=True) if not any(covers(r, p) for r in rules)
    ]
    assert kept == expected


@SETTINGS
@given(value_and_changes(), st.data())
def test_ignoring_changed_paths_leaves_the_others(
    case: tuple[Any, list[Access]], data: st.DataObject
) -> None:
    value, accesses = case
    new = value
    for access in accesses:
        new = replace(new, access, changed)
    paths = sorted(expected_path(value, access) for access in accesses)
    ignored = data.draw(st.sets(st.sampled_from(paths)) if paths else st.just(set()))
    rules = IgnoreRules([re.sub(r"\[\d+\]", "[*]", p) for p in ignored])
    kept = {d.path for d in rules.filter(Differ(limit=10_000).diff(value, new))}
    assert ignored.isdisjoint(kept)
    assert kept <= set(paths)
    assert set(paths) - kept == {p for p in paths if rules.matches(p)}
