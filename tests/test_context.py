"""The request context: nesting, propagation into tasks and threads, the decorator form, and
per-request consistency of routing decisions."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from routing_helpers import make_pair, target

import dualrun


@pytest.fixture
def versions(tmp_path: Path) -> Iterator[dualrun.VersionPair]:
    pair = make_pair(tmp_path)
    yield pair
    pair.unload()


def now() -> dualrun.RequestContext:
    request = dualrun.current()
    assert request is not None
    return request


class Counting:
    """A policy that records every request it is asked about and answers from a table."""

    def __init__(self, answers: dict[Any, str] | None = None, default: str = "old") -> None:
        self.answers = answers or {}
        self.default = default
        self.asked: list[Any] = []

    def choose(self, request: dualrun.RequestContext) -> str:
        self.asked.append(request.key)
        return self.answers.get(request.key, self.default)


# -- the context itself ----------------------------------------------------------------------


def test_no_context_outside_and_restored_after() -> None:
    assert dualrun.current() is None
    with dualrun.context(key="u1", pin="new", region="eu") as request:
        assert now() is request
        assert (request.key, request.pin, dict(request.attrs)) == ("u1", "new", {"region": "eu"})
    assert dualrun.current() is None


def test_restored_after_an_exception() -> None:
    with pytest.raises(KeyError), dualrun.context(key="u1"):
        raise KeyError("x")
    assert dualrun.current() is None


def test_nested_contexts_inherit_and_override() -> None:
    with dualrun.context(key="u1", pin="old", region="eu", tier="gold"):
        with dualrun.context(tier="silver") as inner:
            assert (inner.key, inner.pin) == ("u1", "old")
            assert dict(inner.attrs) == {"region": "eu", "tier": "silver"}
        with dualrun.context(key="u2", pin="new") as inner:
            assert (inner.key, inner.pin) == ("u2", "new")
            assert dict(inner.attrs) == {"region": "eu", "tier": "gold"}
            with dualrun.context() as innermost:
                assert (innermost.key, innermost.pin) == ("u2", "new")
        outer = now()
        assert (outer.key, outer.pin, outer.attrs["tier"]) == ("u1", "old", "gold")


def test_attrs_are_read_only() -> None:
    with dualrun.context(region="eu") as request, pytest.raises(TypeError):
        request.attrs["region"] = "us"  # type: ignore[index]


def test_the_same_context_object_can_be_entered_nested_and_again() -> None:
    ctx = dualrun.context(key="k")
    with ctx as outer:
        with ctx as inner:
            assert inner.key == "k"
            assert inner.decisions is outer.decisions  # same key: the same request
        assert now() is outer
    with ctx:
        assert now().key == "k"
    assert dualrun.current() is None


@pytest.mark.parametrize("bad", ["x", "OLD", "", 1, True])
def test_a_pin_that_is_not_a_version_name(bad: Any) -> None:
    with pytest.raises(ValueError, match="pin is 'old' or 'new'") as info:
        dualrun.context(pin=bad)
    assert repr(bad) in str(info.value)


def test_a_callable_key_in_with_is_refused() -> None:
    with pytest.raises(ValueError, match="callable key"), dualrun.context(key=lambda r: r.user):
        pass  # pragma: no cover
    assert dualrun.current() is None


# -- the decorator ---------------------------------------------------------------------------


@dataclass
class Req:
    user_id: str


def test_decorator_with_a_key_from_the_arguments(versions: dualrun.VersionPair) -> None:
    d = dualrun.Dispatcher(versions, policy=dualrun.Canary(50, salt="deco"))
    version = d.route(target(versions, "version"))

    @dualrun.context(key=lambda req: req.user_id, area="checkout")
    def handle(req: Req) -> tuple[Any, Any, str]:
        """Handle a request."""
        request = now()
        return request.key, request.attrs["area"], version()

    assert handle.__name__ == "handle" and handle.__doc__ == "Handle a request."
    for i in range(40):
        user = f"user-{i}"
        expected = "new" if dualrun.stable_bucket(user, "deco") < 50 else "old"
        assert handle(Req(user)) == (user, "checkout", expected)
    assert dualrun.current() is None


def test_decorator_on_an_async_function(versions: dualrun.VersionPair) -> None:
    d = dualrun.Dispatcher(versions, policy=dualrun.Canary(50, salt="deco"))
    aquote = d.route(target(versions, "aquote"))

    @dualrun.context(key=lambda req: req.user_id)
    async def handle(req: Req) -> tuple[Any, Any, Any]:
        first = await aquote([1])
        await asyncio.sleep(0)
        return now().key, first[0], (await aquote([2]))[0]

    assert asyncio.iscoroutinefunction(handle)

    async def main() -> list[tuple[Any, Any, Any]]:
        results = await asyncio.gather(*(handle(Req(f"user-{i}")) for i in range(30)))
        assert dualrun.current() is None
        return results

    for i, (key, first, second) in enumerate(asyncio.run(main())):
        expected = "new" if dualrun.stable_bucket(f"user-{i}", "deco") < 50 else "old"
        assert (key, first, second) == (f"user-{i}", expected, expected)


def test_decorator_with_a_pin_and_a_plain_key(versions: dualrun.VersionPair) -> None:
    version = dualrun.Dispatcher(versions).route(target(versions, "version"))

    @dualrun.context(key="fixed-key", pin="new")
    def handle() -> tuple[Any, str]:
        return now().key, version()

    assert handle() == ("fixed-key", "new")
    assert version() == "old"

    @dualrun.context(pin="new")
    def fails() -> None:
        raise RuntimeError("x")

    with pytest.raises(RuntimeError):
        fails()
    assert dualrun.current() is None


# -- propagation -----------------------------------------------------------------------------


def test_the_context_and_the_pin_propagate_into_asyncio_tasks(
    versions: dualrun.VersionPair,
) -> None:
    d = dualrun.Dispatcher(versions, policy=dualrun.Fixed("old"))
    aquote = d.route(target(versions, "aquote"))
    quote = d.route(target(versions, "quote"))

    async def task(n: int) -> tuple[Any, Any, str, str]:
        await asyncio.sleep(0)
        request = now()
        return request.key, request.pin, (await aquote([n]))[0], quote([n])[0]

    async def main() -> list[tuple[Any, Any, str, str]]:
        with dualrun.context(key="u1", pin="new"):
            return await asyncio.gather(*(task(n) for n in range(10)))

    assert asyncio.run(main()) == [("u1", "new", "new", "new")] * 10


def test_the_pin_propagates_into_threads_that_copy_the_context(
    versions: dualrun.VersionPair,
) -> None:
    d = dualrun.Dispatcher(versions, policy=dualrun.Fixed("old"))
    version = d.route(target(versions, "version"))
    results: dict[str, Any] = {}

    def work(name: str) -> None:
        request = dualrun.current()
        results[name] = (request and (request.key, request.pin), version())

    with dualrun.context(key="u1", pin="new"):
        copied = threading.Thread(target=contextvars.copy_context().run, args=(work, "copied"))
        bare = threading.Thread(target=work, args=("bare",))  # a new thread starts empty
        copied.start()
        bare.start()
        copied.join()
        bare.join()
        with ThreadPoolExecutor(max_workers=2) as pool:
            futures = [pool.submit(contextvars.copy_context().run, version) for _ in range(8)]
            assert [f.result() for f in futures] == ["new"] * 8
            assert pool.submit(version).result() == "old"  # submit alone does not copy
    assert results == {"copied": (("u1", "new"), "new"), "bare": (None, "old")}


# -- per-request consistency -----------------------------------------------------------------


def test_one_request_is_served_by_one_version(versions: dualrun.VersionPair) -> None:
    d = dualrun.Dispatcher(versions, policy=dualrun.Canary(50))
    version = d.route(target(versions, "version"))
    quote = d.route(target(versions, "quote"))
    items = d.route(target(versions, "items"))
    per_request = []
    for n in range(60):
        with dualrun.context():  # no key: the first call is decided at random, then sticks
            labels = {version() for _ in range(50)} | {quote([n])[0] for _ in range(50)}
            labels |= {label for label, _ in items(3)}
        assert len(labels) == 1
        per_request.append(labels.pop())
    assert set(per_request) == {"old", "new"}


def test_keyed_requests_stick_to_their_bucket(versions: dualrun.VersionPair) -> None:
    d = dualrun.Dispatcher(versions, policy=dualrun.Canary(50))
    version = d.route(target(versions, "version"))
    for i in range(30):
        key = f"user-{i}"
        expected = "new" if dualrun.stable_bucket(key) < 50 else "old"
        for _ in range(3):  # three separate requests of the same user
            with dualrun.context(key=key):
                assert {version() for _ in range(20)} == {expected}


def test_outside_a_context_each_call_is_decided_on_its_own(
    versions: dualrun.VersionPair,
) -> None:
    d = dualrun.Dispatcher(versions, policy=dualrun.Canary(50))
    version = d.route(target(versions, "version"))
    labels = [version() for _ in range(400)]
    assert 100 < labels.count("new") < 300
    policy = Counting()
    d.policy = policy
    for _ in range(25):
        version()
    assert policy.asked == [None] * 25


def test_a_request_is_decided_once_for_all_its_routes_tasks_and_threads(
    versions: dualrun.VersionPair,
) -> None:
    policy = Counting(default="new")
    d = dualrun.Dispatcher(versions, policy=policy)
    version = d.route(target(versions, "version"))
    aquote = d.route(target(versions, "aquote"))

    async def tasks() -> set[str]:
        results = await asyncio.gather(*(aquote([n]) for n in range(10)))
        return {label for label, _ in results}

    with dualrun.context(key="k"):
        assert version() == "new"
        assert asyncio.run(tasks()) == {"new"}
        with ThreadPoolExecutor(max_workers=4) as pool:
            futures = [pool.submit(contextvars.copy_context().run, version) for _ in range(20)]
            assert {f.result() for f in futures} == {"new"}
        with dualrun.context(key="k", extra=1):  # nested, same key: the same request
            assert version() == "new"
    assert policy.asked == ["k"]


def test_the_first_decision_is_shared_by_concurrent_tasks_and_threads(
    versions: dualrun.VersionPair,
) -> None:
    d = dualrun.Dispatcher(versions, policy=dualrun.Canary(50))
    aquote = d.route(target(versions, "aquote"))
    version = d.route(target(versions, "version"))

    async def request() -> set[str]:
        with dualrun.context():  # nothing decided yet: the tasks race to decide first
            results = await asyncio.gather(*(aquote([n]) for n in range(20)))
        return {label for label, _ in results}

    seen = set()
    for _ in range(20):
        labels = asyncio.run(request())
        assert len(labels) == 1
        seen |= labels
        barrier = threading.Barrier(4)  # the threads race to decide first

        def call(barrier: threading.Barrier = barrier) -> str:
            barrier.wait()
            return version()

        with dualrun.context(), ThreadPoolExecutor(max_workers=4) as pool:
            futures = [pool.submit(contextvars.copy_context().run, call) for _ in range(4)]
            assert len({f.result() for f in futures}) == 1
    assert seen == {"old", "new"}


def test_a_nested_context_with_another_key_is_another_request(
    versions: dualrun.VersionPair,
) -> None:
    policy = Counting({"a": "old", "b": "new"})
    d = dualrun.Dispatcher(versions, policy=policy)
    version = d.route(target(versions, "version"))
    with dualrun.context(key="a"):
        assert version() == "old"
        with dualrun.context(key="b"):
            assert version() == "new"
            with dualrun.context(key="b"):
                assert version() == "new"
        with dualrun.context(key="a", extra=True):
            assert version() == "old"
        assert version() == "old"
    assert policy.asked == ["a", "b"]


def test_the_pin_wins_over_the_policy_and_the_cached_decision(
    versions: dualrun.VersionPair,
) -> None:
    policy = Counting(default="old")
    d = dualrun.Dispatcher(versions, policy=policy)
    version = d.route(target(versions, "version"))
    with dualrun.context(key="a"):
        assert version() == "old"
        with dualrun.context(pin="new"):
            assert version() == "new"
        assert version() == "old"
    with dualrun.context(key="b", pin="new"):
        assert version() == "new"
        with dualrun.context(pin="old"):
            assert version() == "old"
    assert policy.asked == ["a"]  # a pinned request never asks the policy


def test_a_policy_swap_keeps_routed_requests_promote_and_rollback_switch_them(
    versions: dualrun.VersionPair,
) -> None:
    d = dualrun.Dispatcher(versions, policy=dualrun.Fixed("old"))
    version = d.route(target(versions, "version"))
    with dualrun.context(key="routed"):
        assert version() == "old"
        d.policy = dualrun.Fixed("new")
        assert version() == "old"  # already routed: stays
        with dualrun.context(key="fresh"):
            assert version() == "new"  # a new request follows the new policy
        d.rollback()
        with dualrun.context(key="fresh-2"):
            assert version() == "old"
        assert version() == "old"
        d.promote(retire=False)
        assert version() == "new"  # promote switches even requests already routed
        d.policy = dualrun.Fixed("old")
        assert version() == "new"  # ... and then it sticks again
        d.rollback()
        assert version() == "old"
        with dualrun.context(pin="new"):
            assert version() == "old"  # a rollback overrides pins by default
        d.rollback(honor_pins=True)
        with dualrun.context(pin="new"):
            assert version() == "new"  # unless the operator keeps them


def test_two_dispatchers_decide_independently_in_one_request(
    versions: dualrun.VersionPair,
) -> None:
    old_d = dualrun.Dispatcher(versions, policy=dualrun.Fixed("old"))
    new_d = dualrun.Dispatcher(versions, policy=dualrun.Fixed("new"))
    via_old = old_d.route(target(versions, "version"))
    via_new = new_d.route(target(versions, "version"))
    with dualrun.context(key="k"):
        assert (via_old(), via_new(), via_old(), via_new()) == ("old", "new", "old", "new")
