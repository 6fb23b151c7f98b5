"""The fast paths of comparison, argument copies and histograms answer as the slow ones.

* ``Differ.diff`` first compares the pickles of plain data; hypothesis checks it gives the
  differences the full structural walk gives, on pairs that are equal, equal by ``==`` but not
  by type somewhere deep (``1`` and ``1.0``, ``True`` and ``1``, ``b"x"`` and
  ``bytearray(b"x")``, a list and a tuple, a set and a frozenset), or hold NaNs;
* the shadow's argument copy goes through pickle when that copies as ``copy.deepcopy`` would,
  and through deepcopy otherwise (a ``__deepcopy__`` of its own, a lambda, a lock).
"""

from __future__ import annotations

import copy
import math
import sys
import threading
from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dualrun.compare import Differ, Difference
from dualrun.plain import copy_by_pickle, plain_pickle, same_plain
from dualrun.recorder import Histogram, bucket_of
from dualrun.shadow import copy_arguments

SETTINGS = settings(max_examples=150, deadline=None)

ATOMS = (
    st.none()
    | st.booleans()
    | st.integers(-3, 3)
    | st.sampled_from([0.0, -0.0, 1.0, 2.5, math.nan, math.inf])
    | st.sampled_from(["", "a", "b"])
    | st.sampled_from([b"", b"x"])
)
values = st.recursive(
    ATOMS,
    lambda children: (
        st.lists(children, max_size=3)
        | st.lists(children, max_size=3).map(tuple)
        | st.dictionaries(st.sampled_from(["k", "l", 1]), children, max_size=3)
        | st.frozensets(st.sampled_from([1, "a", b"x", 2.5]), max_size=3)
    ),
    max_leaves=12,
)


def _twin(value: Any, data: st.DataObject) -> Any:
    """A value equal to ``value`` by ``==``, with some types swapped for equal others."""
    t = type(value)
    if t is bool and data.draw(st.booleans()):
        return int(value)
    if t is int and not isinstance(value, bool) and data.draw(st.booleans()):
        return float(value)
    if t is bytes and data.draw(st.booleans()):
        return bytearray(value)
    if t is list:
        items = [_twin(v, data) for v in value]
        return tuple(items) if data.draw(st.booleans()) else items
    if t is tuple:
        return tuple(_twin(v, data) for v in value)
    if t is dict:
        return {k: _twin(v, data) for k, v in value.items()}
    if t is frozenset and data.draw(st.booleans()):
        return set(value)
    return copy.deepcopy(value)


def walked(old: Any, new: Any) -> list[Difference]:
    """The differences of the full structural walk, without any fast path."""
    out: list[Difference] = []
    Differ()._run(old, new, "$", out)
    return out


@SETTINGS
@given(value=values, data=st.data())
def test_the_fast_comparison_gives_what_the_walk_gives(value: Any, data: st.DataObject) -> None:
    twin = _twin(value, data)
    assert Differ().diff(value, twin) == walked(value, twin)
    assert Differ().diff(twin, value) == walked(twin, value)


@SETTINGS
@given(old=values, new=values)
def test_the_fast_comparison_on_unrelated_values(old: Any, new: Any) -> None:
    assert Differ().diff(old, new) == walked(old, new)


def test_what_equal_by_eq_but_not_by_type_still_reports() -> None:
    differ = Differ()
    assert [d.kind for d in differ.diff({"a": [1]}, {"a": [1.0]})] == ["type"]
    assert [d.kind for d in differ.diff([True], [1])] == ["type"]
    assert [d.kind for d in differ.diff({"b": b"x"}, {"b": bytearray(b"x")})] == ["type"]
    assert [d.kind for d in differ.diff({"l": [1, 2]}, {"l": (1, 2)})] == ["type"]
    assert differ.diff({"x": [math.nan]}, {"x": [math.nan]}) == []
    assert differ.diff({"x": [0.0]}, {"x": [-0.0]}) == []


def test_only_builtin_data_is_plain() -> None:
    class Record:
        pass

    assert plain_pickle({"a": [1, (2.5, None)], "b": {b"x"}}) is not None
    for value in (Record(), [Record()], int, len, 1j, range(2), {"a": {"b": Record()}}):
        assert plain_pickle(value) is None
        assert not same_plain(value, value)
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    assert plain_pickle(deep) is None  # too deep for pickle: compared by the walk instead


def test_plain_pickles_from_many_threads_stay_apart() -> None:
    errors: list[str] = []

    def work(n: int) -> None:
        for i in range(2_000):
            value = {"n": n, "i": i, "items": list(range(i % 7))}
            if not same_plain(value, copy.deepcopy(value)) or same_plain(value, {"n": -1}):
                errors.append(f"thread {n}, {i}")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


class Shared:
    """A value holding a resource that its own __deepcopy__ shares instead of copying."""

    def __init__(self) -> None:
        self.resource = object()
        self.items = [1, 2]

    def __deepcopy__(self, memo: dict[int, Any]) -> Shared:
        twin = Shared()
        twin.resource = self.resource
        twin.items = list(self.items)
        return twin


class Cart:
    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = items


def test_arguments_are_copied_as_deepcopy_would() -> None:
    shared_list = [1, 2]
    args, _ = copy_arguments(({"a": shared_list, "b": shared_list}, Cart([{"q": 1}])), {})
    assert args[0] == {"a": [1, 2], "b": [1, 2]} and args[0]["a"] is not shared_list
    assert args[0]["a"] is args[0]["b"]  # sharing inside the arguments is kept
    assert type(args[1]) is Cart and args[1].items == [{"q": 1}]
    original = Shared()
    (copied,), _ = copy_arguments((original,), {})
    assert copied.resource is original.resource  # its own __deepcopy__ was honoured
    assert copied.items == [1, 2] and copied.items is not original.items
    key = (lambda x: x, [1])
    (same_key,), _ = copy_arguments((key,), {"n": [1]})
    assert same_key[0] is key[0]  # deepcopy keeps functions; pickle could not copy the lambda
    assert same_key[1] == [1] and same_key[1] is not key[1]
    assert copy_by_pickle({"lock": threading.Lock()}) is None


def test_functions_and_classes_are_kept_by_the_pickle_copy() -> None:
    value = {"f": copy_arguments, "t": Cart, "nested": [Cart([{"q": 2}])]}
    copied = copy_by_pickle(value)
    assert copied is not None
    assert copied["f"] is copy_arguments and copied["t"] is Cart
    assert copied["nested"][0] is not value["nested"][0]
    assert copied["nested"][0].items == [{"q": 2}]


class CopiesWhilePickled:
    """An object whose pickling copies another value: the thread's copier is re-entered."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __reduce__(self) -> Any:
        return (CopiesWhilePickled, (copy_by_pickle(self.inner),))


def test_a_copy_made_while_a_copy_is_pickled_leaves_both_intact() -> None:
    value = [{"a": [1]}, CopiesWhilePickled({"b": [2, 2.0]}), {"c": b"x"}]
    copied = copy_by_pickle(value)
    assert copied is not None
    assert copied[0] == {"a": [1]} and copied[2] == {"c": b"x"}
    assert copied[1].inner == {"b": [2, 2.0]} and type(copied[1].inner["b"][1]) is float
    again = copy_by_pickle({"after": [3]})  # the thread's copier is free and empty again
    assert again == {"after": [3]}


def test_a_copy_keeps_no_reference_to_what_it_copied() -> None:
    value = [1]
    refs_before = sys.getrefcount(value)
    copied = copy_by_pickle([value, value])
    assert copied is not None and copied[0] is copied[1] and copied[0] is not value
    assert sys.getrefcount(value) == refs_before  # nothing held by the memo past the copy


@SETTINGS
@given(durations=st.lists(st.integers(-10, 2**63 - 1), max_size=50))
def test_histograms_bucket_every_duration_as_bucket_of_does(durations: list[int]) -> None:
    """Histogram.add inlines bucket_of (it runs twice per shadowed call): the same buckets."""
    histogram = Histogram()
    for ns in durations:
        histogram.add(ns)
    assert histogram.buckets == dict(Counter(bucket_of(ns) for ns in durations))
    assert histogram.count == len(durations)


def test_equal_values_shared_differently_are_still_the_same_plain_data() -> None:
    text = "SKU-" + "1"  # one object, used twice on one side
    shared = {"a": text, "b": text, "t": (1, 2), "u": None}
    shared["u"] = shared["t"]
    apart = {"a": "".join(["SKU", "-1"]), "b": "".join(["SKU-", "1"]), "t": (1, 2), "u": (1, 2)}
    assert shared["a"] is shared["b"] and apart["a"] is not apart["b"]
    assert same_plain(shared, apart) and Differ().diff(shared, apart) == []
    cyclic: list[Any] = [1]
    cyclic.append(cyclic)
    assert plain_pickle(cyclic) is None  # compared by the walk, which handles cycles
