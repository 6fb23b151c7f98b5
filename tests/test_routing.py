"""Routed calls: every callable kind, counts, crossings, threads, and bad input at route()."""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import wrapt
from routing_helpers import make_pair, target

import dualrun


@pytest.fixture
def versions(tmp_path: Path) -> Iterator[dualrun.VersionPair]:
    pair = make_pair(tmp_path)
    yield pair
    pair.unload()


def engine(versions: dualrun.VersionPair, label: str, rate: int = 2) -> Any:
    """An Engine object created by version ``label``."""
    return versions[label].resolve(target(versions, "Engine"))(rate)


async def collect(agen: Any) -> list[Any]:
    return [item async for item in agen]


# (qualname, how to call the route, what the serving version ``label`` returns)
KINDS: list[tuple[str, Callable[[Any, Any, str], Any], Callable[[str], Any]]] = [
    ("quote", lambda r, v, lab: r([1, 2, 3], discount=1), lambda lab: (lab, 5)),
    ("Engine.price", lambda r, v, lab: r(engine(v, lab), 5), lambda lab: (lab, 10)),
    ("Engine.create", lambda r, v, lab: (lambda e: (e.label, e.rate))(r(7)), lambda lab: (lab, 7)),
    ("Engine.which", lambda r, v, lab: r(), lambda lab: (lab, lab)),
    ("Engine.tax", lambda r, v, lab: r(55), lambda lab: (lab, 5)),
    ("aquote", lambda r, v, lab: asyncio.run(r([1, 2])), lambda lab: (lab, 3)),
    ("Engine.aprice", lambda r, v, lab: asyncio.run(r(engine(v, lab), 3)), lambda lab: (lab, 6)),
    ("Engine.atax", lambda r, v, lab: asyncio.run(r(99)), lambda lab: (lab, 9)),
    ("items", lambda r, v, lab: list(r(2)), lambda lab: [(lab, 0), (lab, 1)]),
    ("Engine.walk", lambda r, v, lab: list(r(engine(v, lab), 2)), lambda lab: [(lab, 0), (lab, 2)]),
    ("aitems", lambda r, v, lab: asyncio.run(collect(r(2))), lambda lab: [(lab, 0), (lab, 1)]),
]
KIND_IDS = [k[0] for k in KINDS]


@pytest.mark.parametrize(("qualname", "call", "expected"), KINDS, ids=KIND_IDS)
@pytest.mark.parametrize("label", ["old", "new"])
def test_each_kind_is_served_by_the_fixed_version(
    versions: dualrun.VersionPair,
    qualname: str,
    call: Callable[[Any, Any, str], Any],
    expected: Callable[[str], Any],
    label: str,
) -> None:
    d = dualrun.Dispatcher(versions, policy=dualrun.Fixed(label))
    routed = d.route(target(versions, qualname))
    assert call(routed, versions, label) == expected(label)
    assert call(routed, versions, label) == expected(label)
    report = d.report().routes[0]
    assert report.calls == {label: 2, "old" if label == "new" else "new": 0}
    assert report.in_flight == {"old": 0, "new": 0}
    assert report.crossings == 0


@pytest.mark.parametrize(("qualname", "call", "expected"), KINDS, ids=KIND_IDS)
def test_each_kind_follows_the_pin_whatever_the_policy(
    versions: dualrun.VersionPair,
    qualname: str,
    call: Callable[[Any, Any, str], Any],
    expected: Callable[[str], Any],
) -> None:
    d = dualrun.Dispatcher(versions, policy=dualrun.Fixed("old"))
    routed = d.route(target(versions, qualname))
    for label in ("new", "old", "new"):
        with dualrun.context(pin=label):
            assert call(routed, versions, label) == expected(label)
    assert d.routes[target(versions, qualname)].calls("new") == 2
    assert d.routes[target(versions, qualname)].calls("old") == 1


def test_the_route_looks_like_the_target(versions: dualrun.VersionPair) -> None:
    d = dualrun.Dispatcher(versions)
    quote = d.route(target(versions, "quote"))
    original = versions.old.resolve(target(versions, "quote"))
    assert quote.__wrapped__ is original
    assert quote.__name__ == "quote"
    assert quote.__qualname__ == "quote"
    assert quote.__doc__ == "Quote a cart: the sum of its items, less the discount."
    assert str(inspect.signature(quote)) == "(cart, *, discount=0)"
    assert inspect.signature(quote) == inspect.signature(original)
    assert callable(quote)


def test_routes_are_function_wrappers_that_behave_the_same_as_class_attributes(
    versions: dualrun.VersionPair,
) -> None:
    """Routes skip wrapt's per-call binding check: calls through a class keep working."""
    d = dualrun.Dispatcher(versions, policy=dualrun.Fixed("new"))
    quote = d.route(target(versions, "quote"))
    price = d.route(target(versions, "Engine.price"))
    assert isinstance(quote, wrapt.FunctionWrapper)
    assert isinstance(price, wrapt.FunctionWrapper)
    assert quote([1, 2]) == ("new", 3)

    class Holder:
        held_quote = quote
        held_price = price

    assert Holder().held_quote([1, 2], discount=1) == ("new", 2)
    assert Holder.held_quote([1, 2]) == ("new", 3)
    assert Holder.held_price(engine(versions, "new"), 5) == ("new", 10)
    assert d.routes[target(versions, "quote")].calls("new") == 3


def test_method_classmethod_staticmethod_routes_look_like_their_targets(
    versions: dualrun.VersionPair,
) -> None:
    d = dualrun.Dispatcher(versions)
    price = d.route(target(versions, "Engine.price"))
    assert price.__name__ == "price"
    assert price.__qualname__ == "Engine.price"
    assert price.__doc__ == "Price x at this engine's rate."
    assert str(inspect.signature(price)) == "(self, x)"
    create = d.route(target(versions, "Engine.create"))
    assert create.__name__ == "create"
    assert create.__doc__ == "Make an engine of this version."
    assert str(inspect.signature(create)) == "(rate)"  # bound: no cls
    tax = d.route(target(versions, "Engine.tax"))
    assert tax.__doc__ == "Tax on x."
    assert str(inspect.signature(tax)) == "(x)"


def test_async_and_generator_routes_keep_their_flavour(versions: dualrun.VersionPair) -> None:
    d = dualrun.Dispatcher(versions)
    aquote = d.route(target(versions, "aquote"))
    assert inspect.iscoroutinefunction(aquote)
    assert aquote.__doc__ == "Quote a cart, asynchronously."
    assert str(inspect.signature(aquote)) == "(cart)"
    items = d.route(target(versions, "items"))
    assert inspect.isgeneratorfunction(items)
    assert items.__doc__ == "Yield n items."
    assert inspect.isasyncgenfunction(d.route(target(versions, "aitems")))
    assert inspect.iscoroutinefunction(d.route(target(versions, "Engine.aprice")))


def test_a_generator_returns_its_value_and_counts_in_flight_while_iterated(
    versions: dualrun.VersionPair,
) -> None:
    d = dualrun.Dispatcher(versions, policy=dualrun.Fixed("new"))
    items = d.route(target(versions, "items"))
    gen = items(2)
    assert next(gen) == ("new", 0)
    assert d.in_flight("new") == 1
    assert next(gen) == ("new", 1)
    with pytest.raises(StopIteration) as stop:
        next(gen)
    assert stop.value.value == "new"  # the generator's return value comes through
    assert d.in_flight("new") == 0
    assert d.routes[target(versions, "items")].calls("new") == 1


def test_an_async_call_is_decided_at_call_time_and_the_pin_holds_across_awaits(
    versions: dualrun.VersionPair,
) -> None:
    d = dualrun.Dispatcher(versions, policy=dualrun.Fixed("old"))
    aquote = d.route(target(versions, "aquote"))
    with dualrun.context(pin="new"):
        coroutine = aquote([4])  # decided here, awaited below, outside the context
    assert asyncio.run(coroutine) == ("new", 4)

    async def request() -> list[Any]:
        with dualrun.context(pin="new"):
            first = await aquote([1])
            await asyncio.sleep(0)
            second = await aquote([2])
        third = await aquote([3])
        return [first, second, third]

    assert asyncio.run(request()) == [("new", 1), ("new", 2), ("old", 3)]


def test_the_routed_version_returns_its_own_objects(versions: dualrun.VersionPair) -> None:
    d = dualrun.Dispatcher(versions, policy=dualrun.Fixed("new"))
    create = d.route(target(versions, "Engine.create"))
    made = create(3)
    assert versions.new.owns(type(made))
    assert not versions.old.owns(type(made))
    assert made.label == "new"
    factory = d.route(target(versions, "make_engine"))
    with dualrun.context(pin="old"):
        assert versions.old.owns(type(factory(1)))
    constructor = d.route(target(versions, "Engine"))
    assert versions.new.owns(type(constructor(2)))


def test_a_method_on_an_object_of_the_other_version_runs_in_the_objects_version(
    versions: dualrun.VersionPair,
) -> None:
    d = dualrun.Dispatcher(versions, policy=dualrun.Canary(50))
    make_engine = d.route(target(versions, "make_engine"))
    price = d.route(target(versions, "Engine.price"))
    aprice = d.route(target(versions, "Engine.aprice"))
    with dualrun.context(pin="old"):
        old_engine = make_engine(4)
    assert versions.old.owns(type(old_engine))
    with dualrun.context(pin="new"):
        assert price(old_engine, 2) == ("old", 8)  # the livepatch rule: the object's version
        assert asyncio.run(aprice(old_engine, 1)) == ("old", 4)
        new_engine = make_engine(1)
        assert price(new_engine, 2) == ("new", 2)  # no crossing for the request's own objects
    price_route = d.routes[target(versions, "Engine.price")]
    assert price_route.calls("old") == 1
    assert price_route.calls("new") == 1
    report = d.report()
    by_route = {r.route: r for r in report.routes}
    assert by_route[target(versions, "Engine.price")].crossings == 1
    assert by_route[target(versions, "Engine.aprice")].crossings == 1
    assert by_route[target(versions, "make_engine")].crossings == 0
    text = report.to_text()
    price_section = text.split(target(versions, "Engine.price"), 1)[1]
    price_section = price_section.split(target(versions, "make_engine"), 1)[0]
    assert re.search(r"crossings\s+1\b", price_section), text
    assert re.search(r"old 1\s+new 1\b", price_section), text
    assert "crossings" not in text.split(target(versions, "make_engine"), 1)[1]
    data = json.loads(report.to_json())
    crossings = {r["route"]: r["crossings"] for r in data["routes"]}
    assert crossings[target(versions, "Engine.price")] == 1
    assert crossings[target(versions, "make_engine")] == 0
    assert re.search(r"crossings\W+1\b", report.to_markdown())


def test_a_method_route_needs_the_instance(versions: dualrun.VersionPair) -> None:
    price = dualrun.Dispatcher(versions).route(target(versions, "Engine.price"))
    with pytest.raises(TypeError, match="instance"):
        price()


def test_exceptions_come_from_the_serving_version_and_the_call_is_counted_out(
    versions: dualrun.VersionPair,
) -> None:
    d = dualrun.Dispatcher(versions, policy=dualrun.Fixed("new"))
    boom = d.route(target(versions, "boom"))
    with pytest.raises(ValueError, match=r"^new$"):
        boom()
    with dualrun.context(pin="old"), pytest.raises(ValueError, match=r"^old$"):
        boom()
    route = d.routes[target(versions, "boom")]
    assert (route.calls("old"), route.calls("new")) == (1, 1)
    assert d.in_flight("old") == d.in_flight("new") == 0


def test_route_is_cached_per_target(versions: dualrun.VersionPair) -> None:
    d = dualrun.Dispatcher(versions, policy=dualrun.Fixed("new"))
    first, second = d.route(target(versions, "quote")), d.route(target(versions, "quote"))
    first([1])
    second([1])
    assert list(d.routes) == [target(versions, "quote")]
    assert d.report().routes[0].calls == {"old": 0, "new": 2}


def test_promote_and_rollback(versions: dualrun.VersionPair) -> None:
    d = dualrun.Dispatcher(versions, policy=dualrun.Canary(0))
    version = d.route(target(versions, "version"))
    assert version() == "old"
    d.promote(retire=False)
    assert version() == "new"
    assert repr(d.policy) == "Fixed('new')"
    d.rollback()
    assert version() == "old"
    assert d.report().policy == "Fixed('old')"


# -- threads ---------------------------------------------------------------------------------


def run_threads(n: int, work: Callable[[int], None]) -> list[BaseException]:
    errors: list[BaseException] = []
    start = threading.Barrier(n)

    def body(i: int) -> None:
        try:
            start.wait()
            work(i)
        except BaseException as exc:  # collected and asserted on below
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    return errors


THREADS, CALLS = 8, 5_000


@pytest.mark.parametrize("label", ["old", "new"])
def test_eight_threads_fixed_every_call_served_and_counted_exactly(
    versions: dualrun.VersionPair, label: str
) -> None:
    d = dualrun.Dispatcher(versions, policy=dualrun.Fixed(label))
    version = d.route(target(versions, "version"))
    served: list[Counter[str]] = [Counter() for _ in range(THREADS)]

    def work(i: int) -> None:
        for _ in range(CALLS):
            served[i][version()] += 1

    assert run_threads(THREADS, work) == []
    total = sum(served, Counter())
    assert total == Counter({label: THREADS * CALLS})
    calls = d.report().routes[0].calls
    other = "old" if label == "new" else "new"
    assert calls == {label: THREADS * CALLS, other: 0}
    assert d.report().routes[0].in_flight == {"old": 0, "new": 0}


def test_eight_threads_canary_in_contexts_counts_exact(versions: dualrun.VersionPair) -> None:
    d = dualrun.Dispatcher(versions, policy=dualrun.Canary(50))
    version = d.route(target(versions, "version"))
    quote = d.route(target(versions, "quote"))
    served: list[Counter[str]] = [Counter() for _ in range(THREADS)]

    def work(i: int) -> None:
        for n in range(CALLS):
            if n % 2:  # half outside any context, half in a request of their own
                served[i][version()] += 1
            else:
                with dualrun.context(key=f"user-{i}-{n}"):
                    label = version()
                    assert quote([n])[0] == label
                    served[i][label] += 1

    assert run_threads(THREADS, work) == []
    total = sum(served, Counter())
    assert total["old"] + total["new"] == THREADS * CALLS
    assert total["old"] > 0 and total["new"] > 0
    report = {r.route: r for r in d.report().routes}
    assert report[target(versions, "version")].calls == dict(total)
    quote_calls = report[target(versions, "quote")].calls
    assert quote_calls["old"] + quote_calls["new"] == THREADS * CALLS // 2


def test_policy_swapped_while_four_threads_call(versions: dualrun.VersionPair) -> None:
    d = dualrun.Dispatcher(versions, policy=dualrun.Fixed("old"))
    version = d.route(target(versions, "version"))
    price = d.route(target(versions, "Engine.price"))
    stop = threading.Event()
    served: list[Counter[str]] = [Counter() for _ in range(4)]
    mixed: list[tuple[str, str]] = []

    def work(i: int) -> None:
        n = 0
        while not stop.is_set() or n < 100:
            n += 1
            if n % 3:
                served[i][version()] += 1
            else:
                with dualrun.context(key=f"k{i}-{n}"):
                    first = version()
                    obj = versions[first].resolve(target(versions, "Engine"))(1)
                    second = price(obj, 1)[0]
                    if first != second:
                        mixed.append((first, second))
                    served[i][first] += 1

    policies = [dualrun.Fixed("new"), dualrun.Canary(30), dualrun.Fixed("old"), dualrun.Canary(90)]
    swapper_errors: list[BaseException] = []

    def swap() -> None:
        try:
            for n in range(400):
                d.policy = policies[n % len(policies)]
        except BaseException as exc:  # collected and asserted on below
            swapper_errors.append(exc)
        finally:
            stop.set()

    swapper = threading.Thread(target=swap)
    swapper.start()
    errors = run_threads(4, work)
    swapper.join()
    assert errors == [] and swapper_errors == []
    assert mixed == []  # a request never mixes versions, even across a swap
    total = sum(served, Counter())
    assert d.routes[target(versions, "version")].calls("old") == total["old"]
    assert d.routes[target(versions, "version")].calls("new") == total["new"]
    assert d.policy_error_count() == 0
    assert d.policy is policies[399 % len(policies)]


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad", ["nocolon", "a:b:c", "pkg.mod:1bad", "pkg mod:f", ":f", "pkg.mod:", "pkg..mod:f", 12]
)
def test_a_target_without_module_qualname_form_is_a_value_error(
    versions: dualrun.VersionPair, bad: Any
) -> None:
    d = dualrun.Dispatcher(versions)
    with pytest.raises(ValueError, match=r"package\.module:qualified\.name") as info:
        d.route(bad)
    assert repr(bad) in str(info.value)
    with pytest.raises(ValueError, match=r"package\.module:qualified\.name"):
        d.intercept(bad, target(versions, "quote"))
    with pytest.raises(ValueError, match=r"package\.module:qualified\.name"):
        d.intercept("host.mod:f", bad)
    assert d.routes == {}


@pytest.mark.parametrize(
    ("qualname", "missing_in"),
    [("only_old", "new"), ("only_new", "old"), ("nothing", "old"), ("Engine.nothing", "old")],
)
def test_a_target_missing_in_one_version_names_the_target_and_the_version(
    versions: dualrun.VersionPair, qualname: str, missing_in: str
) -> None:
    d = dualrun.Dispatcher(versions, policy=dualrun.Fixed("new"))
    name = target(versions, qualname)
    with pytest.raises(dualrun.TargetNotFoundError) as info:
        d.route(name)
    message = str(info.value)
    assert repr(name) in message
    assert f"{missing_in!r} version" in message
    assert versions[missing_in].source in message
    assert isinstance(info.value, LookupError)
    assert d.routes == {}


def test_a_missing_module_or_a_module_outside_the_version(versions: dualrun.VersionPair) -> None:
    d = dualrun.Dispatcher(versions)
    missing = target(versions, "f", module="nomod")
    with pytest.raises(dualrun.TargetNotFoundError, match="'old' version") as info:
        d.route(missing)
    assert repr(missing) in str(info.value)
    with pytest.raises(dualrun.TargetNotFoundError, match="'old' version") as info:
        d.route("json.decoder:JSONDecoder")
    assert "'json.decoder:JSONDecoder'" in str(info.value)
    assert "not part of it" in str(info.value)


def test_a_target_that_is_not_callable(versions: dualrun.VersionPair) -> None:
    with pytest.raises(dualrun.TargetNotFoundError, match="not a callable"):
        dualrun.Dispatcher(versions).route(f"{versions.old.name}:VERSION")


def test_kind_and_flavour_mismatches_are_refused(versions: dualrun.VersionPair) -> None:
    d = dualrun.Dispatcher(versions)
    with pytest.raises(dualrun.TargetNotFoundError) as info:
        d.route(target(versions, "Shifty.move"))
    message = str(info.value)
    assert target(versions, "Shifty.move") in message
    assert "method in the 'old' version" in message
    assert "staticmethod in the 'new' version" in message
    with pytest.raises(dualrun.TargetNotFoundError) as info:
        d.route(target(versions, "flavour"))
    assert "sync callable in the 'old' version" in str(info.value)
    assert "async in the 'new' version" in str(info.value)
    assert d.routes == {}


@pytest.mark.parametrize("bad", [None, "pricing", ("old", "new"), object()])
def test_dispatcher_needs_a_version_pair(versions: dualrun.VersionPair, bad: Any) -> None:
    with pytest.raises(ValueError, match="VersionPair"):
        dualrun.Dispatcher(bad)
    with pytest.raises(ValueError, match="VersionPair"):
        dualrun.Dispatcher(versions.old)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="VersionPair"):
        dualrun.Dispatcher((versions.old, versions.new))  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [object(), "new", None, lambda request: "new", 5])
def test_a_policy_without_choose_is_refused(versions: dualrun.VersionPair, bad: Any) -> None:
    d = dualrun.Dispatcher(versions, policy=dualrun.Fixed("new"))
    before = d.policy
    with pytest.raises(ValueError, match=r"choose\(request\)"):
        d.policy = bad
    assert d.policy is before  # the failed assignment changed nothing
    assert d.route(target(versions, "version"))() == "new"
    if bad is not None:
        with pytest.raises(ValueError, match=r"choose\(request\)"):
            dualrun.Dispatcher(versions, policy=bad)
