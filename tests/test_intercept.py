"""Intercepting host entry points: every callable kind, the post-import hook, undo in any order,
and the ``from host import func`` caveat."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import wrapt
from routing_helpers import forget_host, make_pair, target, write_host

import dualrun


@pytest.fixture(scope="module", autouse=True)
def wrapt_import_hook_finder() -> None:
    """wrapt puts one import-hook finder on ``sys.meta_path`` per process, the first time a
    post-import hook is registered, and leaves it there. Install it before the per-test
    ``sys.meta_path`` check in conftest.py takes its snapshot (module-scoped fixtures run
    first), so that check sees only what each test itself changes."""
    wrapt.register_post_import_hook(lambda module: None, "wrapt")  # imported: runs at once


@pytest.fixture
def versions(tmp_path: Path) -> Iterator[dualrun.VersionPair]:
    pair = make_pair(tmp_path / "versions")
    yield pair
    pair.unload()


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The name of a fresh host package ``myapp_<n>`` (with ``checkout`` and ``views``), not
    imported yet."""
    root = tmp_path / "host"
    name = write_host(root)
    monkeypatch.syspath_prepend(str(root))
    yield name
    forget_host(name)


@pytest.fixture
def d(versions: dualrun.VersionPair) -> Iterator[dualrun.Dispatcher]:
    dispatcher = dualrun.Dispatcher(versions, policy=dualrun.Fixed("new"))
    yield dispatcher
    dispatcher.close()


def checkout(host: str) -> ModuleType:
    return importlib.import_module(f"{host}.checkout")


def snapshot(module: ModuleType) -> dict[str, Any]:
    """Every attribute the tests patch, exactly as stored (raw descriptors for classes)."""
    return {
        "quote": vars(module)["quote"],
        "aquote": vars(module)["aquote"],
        "items": vars(module)["items"],
        **{f"Checkout.{k}": v for k, v in vars(module.Checkout).items() if not k.startswith("_")},
        "Base.price": vars(module.Base)["price"],
        "Sub has price": "price" in vars(module.Sub),
    }


def changed(module: ModuleType, before: dict[str, Any]) -> list[str]:
    """The names whose stored object is no longer the very same object (wrapt proxies compare
    equal to what they wrap, so this is by identity)."""
    after = snapshot(module)
    return [name for name, value in before.items() if after.get(name) is not value]


def assert_restored(module: ModuleType, before: dict[str, Any]) -> None:
    assert snapshot(module).keys() == before.keys()
    assert changed(module, before) == []


# -- each kind -------------------------------------------------------------------------------


def test_a_module_function(versions: dualrun.VersionPair, host: str, d: Any) -> None:
    module = checkout(host)
    original = module.quote
    handle = d.intercept(f"{host}.checkout:quote", target(versions, "quote"))
    assert handle.applied
    assert module.quote([1, 2], discount=1) == ("new", 2)
    with dualrun.context(pin="old"):
        assert module.quote([1, 2]) == ("old", 3)
    assert module.quote.__wrapped__ is original
    assert module.quote.__name__ == "quote" and module.quote.__doc__ == "The host's quote."
    assert str(inspect.signature(module.quote)) == "(cart, *, discount=0)"
    assert isinstance(module.quote, wrapt.FunctionWrapper)
    assert d.report().routes[0].calls == {"old": 1, "new": 1}
    handle.undo()
    assert module.quote is original
    assert module.quote([1, 2]) == ("host", 3)


def test_an_async_function_and_a_generator(
    versions: dualrun.VersionPair, host: str, d: Any
) -> None:
    module = checkout(host)
    d.intercept(f"{host}.checkout:aquote", target(versions, "aquote"))
    d.intercept(f"{host}.checkout:items", target(versions, "items"))
    assert inspect.iscoroutinefunction(module.aquote)
    assert asyncio.run(module.aquote([5])) == ("new", 5)
    assert list(module.items(2)) == [("new", 0), ("new", 1)]
    with dualrun.context(pin="old"):
        assert asyncio.run(module.aquote([5])) == ("old", 5)
        assert list(module.items(1)) == [("old", 0)]


def test_a_host_method_routed_to_a_version_method(
    versions: dualrun.VersionPair, host: str, d: Any
) -> None:
    module = checkout(host)
    d.intercept(f"{host}.checkout:Checkout.price", target(versions, "Engine.price"))
    d.intercept(f"{host}.checkout:Checkout.aprice", target(versions, "Engine.aprice"))
    obj = module.Checkout()
    # The version's method runs with the host's instance as self (Checkout.rate == 3).
    assert obj.price(2) == ("new", 6)
    assert module.Checkout.price(obj, 2) == ("new", 6)  # unbound, instance first
    assert asyncio.run(obj.aprice(2)) == ("new", 6)
    with dualrun.context(pin="old"):
        assert obj.price(2) == ("old", 6)
    route = d.routes[target(versions, "Engine.price")]
    assert (route.calls("old"), route.calls("new"), dualrun.counters.peek(route.crossings)) == (
        1,
        2,
        0,
    )


def test_a_host_method_routed_to_a_version_function(
    versions: dualrun.VersionPair, host: str, d: Any
) -> None:
    module = checkout(host)
    d.intercept(f"{host}.checkout:Checkout.describe", target(versions, "describe"))
    obj = module.Checkout()
    assert obj.describe(1) == ("new", "Checkout", 1)  # the instance is passed first
    assert module.Checkout.describe(obj, 1) == ("new", "Checkout", 1)


def test_a_host_classmethod_and_staticmethod(
    versions: dualrun.VersionPair, host: str, d: Any
) -> None:
    module = checkout(host)
    raw = dict(vars(module.Checkout))
    d.intercept(f"{host}.checkout:Checkout.create", target(versions, "Engine.create"))
    d.intercept(f"{host}.checkout:Checkout.tax", target(versions, "Engine.tax"))
    made = module.Checkout.create(4)
    assert versions.new.owns(type(made)) and made.rate == 4
    assert versions.new.owns(type(module.Checkout().create(5)))
    with dualrun.context(pin="old"):
        assert versions.old.owns(type(module.Checkout.create(4)))
        assert module.Checkout.tax(55) == ("old", 5)
    assert module.Checkout.tax(55) == ("new", 5)
    assert module.Checkout().tax(55) == ("new", 5)
    d.close()
    assert vars(module.Checkout)["create"] is raw["create"]
    assert vars(module.Checkout)["tax"] is raw["tax"]
    assert isinstance(vars(module.Checkout)["create"], classmethod)
    assert module.Checkout.create(4) == ("host", 4)


def test_an_inherited_method_patched_on_the_subclass(
    versions: dualrun.VersionPair, host: str, d: Any
) -> None:
    module = checkout(host)
    base_price = vars(module.Base)["price"]
    handle = d.intercept(f"{host}.checkout:Sub.price", target(versions, "Engine.price"))
    assert module.Sub().price(2) == ("new", 10)  # Base.rate == 5
    assert module.Base().price(2) == ("host-base", 2)  # the base is untouched
    assert vars(module.Base)["price"] is base_price
    handle.undo()
    assert "price" not in vars(module.Sub)  # the attribute the patch added is gone
    assert module.Sub().price(2) == ("host-base", 2)


# -- the post-import hook --------------------------------------------------------------------


def test_intercept_before_the_host_is_imported(
    versions: dualrun.VersionPair, host: str, d: Any
) -> None:
    assert f"{host}.checkout" not in sys.modules
    handle = d.intercept(f"{host}.checkout:quote", target(versions, "quote"))
    method = d.intercept(f"{host}.checkout:Checkout.price", target(versions, "Engine.price"))
    assert not handle.applied
    assert "pending import" in repr(handle)
    module = checkout(host)
    assert handle.applied and method.applied
    assert "applied" in repr(handle)
    assert module.quote([1]) == ("new", 1)
    assert module.Checkout().price(1) == ("new", 3)
    handle.undo()
    assert "undone" in repr(handle)
    assert module.quote([1]) == ("host", 1)
    assert not isinstance(module.quote, wrapt.FunctionWrapper)


def test_undo_before_the_host_is_imported_leaves_it_untouched(
    versions: dualrun.VersionPair, host: str, d: Any
) -> None:
    handle = d.intercept(f"{host}.checkout:quote", target(versions, "quote"))
    handle.undo()
    handle.undo()
    module = checkout(host)
    assert not handle.applied
    assert not isinstance(module.quote, wrapt.FunctionWrapper)
    assert module.quote([1]) == ("host", 1)


# -- twice, undo twice, any order ------------------------------------------------------------

HOST_TARGETS = [
    ("quote", "quote"),
    ("Checkout.price", "Engine.price"),
    ("Checkout.create", "Engine.create"),
    ("Checkout.tax", "Engine.tax"),
    ("Sub.price", "Engine.price"),
]


@pytest.mark.parametrize("order", ["reverse", "same", "middle-first"])
@pytest.mark.parametrize(("host_attr", "version_attr"), HOST_TARGETS)
def test_intercept_three_times_and_undo_in_any_order(
    versions: dualrun.VersionPair,
    host: str,
    d: Any,
    host_attr: str,
    version_attr: str,
    order: str,
) -> None:
    module = checkout(host)
    before = snapshot(module)
    handles = [
        d.intercept(f"{host}.checkout:{host_attr}", target(versions, version_attr))
        for _ in range(3)
    ]
    assert all(h.applied for h in handles)
    patched = ["Sub has price"] if host_attr == "Sub.price" else [host_attr]
    assert changed(module, before) == patched
    sequence = {
        "reverse": [2, 1, 0],
        "same": [0, 1, 2],
        "middle-first": [1, 0, 2],
    }[order]
    for step, i in enumerate(sequence):
        handles[i].undo()
        handles[i].undo()  # twice: a no-op
        if step < 2:
            assert changed(module, before) == patched  # still patched by the others
    assert_restored(module, before)
    d.close()  # undoing again through the dispatcher changes nothing
    assert_restored(module, before)


def test_intercepted_twice_counts_each_call_once(
    versions: dualrun.VersionPair, host: str, d: Any
) -> None:
    module = checkout(host)
    first = d.intercept(f"{host}.checkout:quote", target(versions, "quote"))
    d.intercept(f"{host}.checkout:quote", target(versions, "quote"))
    assert module.quote([3]) == ("new", 3)
    assert d.report().routes[0].calls == {"old": 0, "new": 1}
    first.undo()  # the inner patch leaves; the outer one still routes
    assert module.quote([3]) == ("new", 3)
    assert d.report().routes[0].calls == {"old": 0, "new": 2}


def test_undo_splices_out_of_another_dispatchers_patch(
    versions: dualrun.VersionPair, host: str, d: Any
) -> None:
    module = checkout(host)
    original = module.quote
    other = dualrun.Dispatcher(versions, policy=dualrun.Fixed("old"))
    inner = d.intercept(f"{host}.checkout:quote", target(versions, "quote"))
    outer = other.intercept(f"{host}.checkout:quote", target(versions, "quote"))
    assert module.quote([1]) == ("old", 1)  # the outer patch serves
    inner.undo()
    assert module.quote([1]) == ("old", 1)
    assert module.quote.__wrapped__ is original
    outer.undo()
    assert module.quote is original


def test_undo_under_a_foreign_wrapt_wrapper(
    versions: dualrun.VersionPair, host: str, d: Any
) -> None:
    module = checkout(host)
    original = module.quote

    def passthrough(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        return ("wrapped", wrapped(*args, **kwargs))

    handle = d.intercept(f"{host}.checkout:quote", target(versions, "quote"))
    wrapt.wrap_function_wrapper(module, "quote", passthrough)
    assert module.quote([1]) == ("wrapped", ("new", 1))
    handle.undo()
    assert module.quote([1]) == ("wrapped", ("host", 1))  # the foreign wrapper now wraps it
    assert module.quote.__wrapped__ is original


# -- the early-binding caveat ----------------------------------------------------------------


def test_from_host_import_func_keeps_the_original(
    versions: dualrun.VersionPair, host: str, d: Any
) -> None:
    """``from host.checkout import quote`` executed before the patch binds the original
    function: calls through that name are not routed. Avoid it by intercepting before the
    host imports (see the next test) or by intercepting the alias too."""
    views = importlib.import_module(f"{host}.views")  # runs `from .checkout import quote`
    from_import = views.quote
    d.intercept(f"{host}.checkout:quote", target(versions, "quote"))
    assert checkout(host).quote([1]) == ("new", 1)
    assert views.quote is from_import
    assert views.view([1]) == ("host", 1)  # the early binding: not routed
    alias = d.intercept(f"{host}.views:quote", target(versions, "quote"))  # the alias too
    assert views.view([1]) == ("new", 1)
    alias.undo()
    assert views.quote is from_import


def test_intercept_before_the_host_imports_covers_early_bindings(
    versions: dualrun.VersionPair, host: str, d: Any
) -> None:
    d.intercept(f"{host}.checkout:quote", target(versions, "quote"))
    views = importlib.import_module(f"{host}.views")  # the hook patches before views binds
    assert isinstance(views.quote, wrapt.FunctionWrapper)
    assert views.view([2]) == ("new", 2)


# -- bad input -------------------------------------------------------------------------------


def test_a_missing_version_target_patches_nothing(
    versions: dualrun.VersionPair, host: str, d: Any
) -> None:
    module = checkout(host)
    before = snapshot(module)
    with pytest.raises(dualrun.TargetNotFoundError, match="only_old"):
        d.intercept(f"{host}.checkout:quote", target(versions, "only_old"))
    with pytest.raises(ValueError, match="qualified"):
        d.intercept(f"{host}.checkout", target(versions, "quote"))
    with pytest.raises(AttributeError, match=f"'{host}.checkout' has no attribute 'nothing'"):
        d.intercept(f"{host}.checkout:nothing", target(versions, "quote"))
    with pytest.raises(AttributeError, match=r"'[\w.]+\.Checkout' has no attribute 'nope'"):
        d.intercept(f"{host}.checkout:Checkout.nope", target(versions, "quote"))
    assert_restored(module, before)


def test_a_missing_host_attribute_does_not_break_the_hosts_import(
    versions: dualrun.VersionPair, host: str, d: Any
) -> None:
    handle = d.intercept(f"{host}.checkout:nothing", target(versions, "quote"))
    good = d.intercept(f"{host}.checkout:quote", target(versions, "quote"))
    with pytest.warns(dualrun.DualrunWarning, match="imported unpatched") as caught:
        module = checkout(host)  # the host still imports
    assert len(caught) == 1
    assert f"cannot intercept '{host}.checkout:nothing'" in str(caught[0].message)
    assert not handle.applied
    assert handle.error is not None and "has no attribute 'nothing'" in handle.error
    assert "failed" in repr(handle)
    assert good.applied and module.quote([1]) == ("new", 1)
    handle.undo()
    assert "undone" in repr(handle)
