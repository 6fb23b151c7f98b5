"""``intercept("pkg.mod:func")``: every caller the host has of its installed function routes;
the two-argument form refuses a host signature the target cannot serve; mistakes that used to
fail silently (a module that cannot be imported, a patch still pending) are reported."""

from __future__ import annotations

import importlib
import inspect
import re
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import wrapt
from routing_helpers import forget_host, make_pair, target, unique

import dualrun

INSTALLED_ENGINE = '''\
def quote(cart, *, discount=0):
    """The installed quote."""
    return ("installed", sum(cart) - discount)


def tax(x):
    return ("installed", x)
'''

# Ways the host's code reaches the installed function.
HOST_APP = """\
import {pkg}.engine
import {pkg}.engine as engine_alias
from {pkg}.engine import quote
from {pkg}.engine import quote as price_it
from {pkg} import quote as from_package


def by_module(cart):
    return {pkg}.engine.quote(cart)


def by_alias(cart):
    return engine_alias.quote(cart)


def by_name(cart):
    return quote(cart)


def by_renamed(cart):
    return price_it(cart)


def by_package(cart):
    return from_package(cart)


def _closure():
    held = quote
    return lambda cart: held(cart)


by_closure = _closure()


def by_default(cart, fn=quote):
    return fn(cart)


REGISTRY = {{"quote": quote}}
"""


@pytest.fixture
def versions(tmp_path: Path) -> Iterator[dualrun.VersionPair]:
    pair = make_pair(tmp_path / "versions")
    yield pair
    pair.unload()


@pytest.fixture
def installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, versions: dualrun.VersionPair
) -> Iterator[str]:
    """The host's own installed copy of the versions' package (same name), and a host app
    ``app_<n>.views`` that uses it; nothing imported yet. Yields the app's module name."""
    root = tmp_path / "site"
    pkg = root / versions.old.name
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .engine import quote\n")
    (pkg / "engine.py").write_text(INSTALLED_ENGINE)
    app = unique("app")
    (root / app).mkdir()
    (root / app / "__init__.py").write_text("")
    (root / app / "views.py").write_text(HOST_APP.format(pkg=versions.old.name))
    monkeypatch.syspath_prepend(str(root))
    yield f"{app}.views"
    forget_host(app)
    forget_host(versions.old.name)


@pytest.fixture
def d(versions: dualrun.VersionPair) -> Iterator[dualrun.Dispatcher]:
    dispatcher = dualrun.Dispatcher(versions, policy=dualrun.Fixed("new"))
    yield dispatcher
    dispatcher.close()


ROUTED = ("by_module", "by_alias", "by_name", "by_renamed", "by_package")
NOT_FOUND = ("by_closure", "by_default")


def calls(views: Any, names: tuple[str, ...]) -> dict[str, str]:
    return {name: getattr(views, name)([1, 2])[0] for name in names}


def test_one_argument_routes_every_caller_of_the_installed_function(
    versions: dualrun.VersionPair, installed: str, d: dualrun.Dispatcher
) -> None:
    views = importlib.import_module(installed)
    engine = sys.modules[f"{versions.old.name}.engine"]
    package = sys.modules[versions.old.name]
    original = engine.quote
    handle = d.intercept(target(versions, "quote"))
    assert handle.applied
    assert calls(views, ROUTED) == dict.fromkeys(ROUTED, "new")
    with dualrun.context(pin="old"):
        assert calls(views, ROUTED) == dict.fromkeys(ROUTED, "old")
    # What the scan of module globals cannot see keeps the installed function (README says so).
    assert calls(views, NOT_FOUND) == dict.fromkeys(NOT_FOUND, "installed")
    assert views.REGISTRY["quote"] is original
    assert sorted(handle.aliases) == sorted(
        [
            f"{installed}:quote",
            f"{installed}:price_it",
            f"{installed}:from_package",
            f"{versions.old.name}:quote",
        ]
    )
    assert d.report().route(target(versions, "quote")).calls == {"old": 5, "new": 5}
    handle.undo()
    for module, name in [(engine, "quote"), (package, "quote")] + [
        (views, n) for n in ("quote", "price_it", "from_package")
    ]:
        assert vars(module)[name] is original, (module, name)
    assert calls(views, ROUTED) == dict.fromkeys(ROUTED, "installed")


def test_one_argument_before_the_host_imports_it(
    versions: dualrun.VersionPair, installed: str, d: dualrun.Dispatcher
) -> None:
    handle = d.intercept(target(versions, "quote"))
    assert handle.pending and not handle.applied
    views = importlib.import_module(installed)  # imports the package, then binds the names
    assert handle.applied and not handle.pending
    assert calls(views, ROUTED) == dict.fromkeys(ROUTED, "new")
    # bound after the patch: even the closure and the default argument hold the routed one
    assert calls(views, NOT_FOUND) == dict.fromkeys(NOT_FOUND, "new")


def test_an_alias_undone_under_a_foreign_wrapper_keeps_the_wrapper(
    versions: dualrun.VersionPair, installed: str, d: dualrun.Dispatcher
) -> None:
    views = importlib.import_module(installed)
    original = sys.modules[f"{versions.old.name}.engine"].quote
    handle = d.intercept(target(versions, "quote"))
    wrapt.wrap_function_wrapper(views, "quote", lambda w, i, a, k: ("wrapped", w(*a, **k)))
    assert views.by_name([1]) == ("wrapped", ("new", 1))
    handle.undo()
    assert views.by_name([1]) == ("wrapped", ("installed", 1))
    assert views.quote.__wrapped__ is original


HOST_SIGNATURES = '''\
def extra_keyword(cart, user_id=None):
    return ("host", cart)


def optional(cart=()):
    return ("host", cart)


def fewer(cart):
    """The host's quote, without a discount."""
    return ("host", cart)


def positional_extra(cart, region):
    return ("host", cart)


class Shop:
    def price(self, x, currency="EUR"):
        return ("host", x)

    def plain(self, x):
        return ("host", x)
'''


@pytest.fixture
def shop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    name = unique("shop")
    (tmp_path / "shop").mkdir()
    (tmp_path / "shop" / f"{name}.py").write_text(HOST_SIGNATURES)
    monkeypatch.syspath_prepend(str(tmp_path / "shop"))
    importlib.import_module(name)
    yield name
    forget_host(name)


@pytest.mark.parametrize(
    ("host", "version", "why"),
    [
        ("extra_keyword", "quote", "no positional argument 2 ('user_id')"),
        ("positional_extra", "quote", "no positional argument 2 ('region')"),
        ("Shop.price", "Engine.price", "no positional argument 2 ('currency')"),
        ("fewer", "describe", "no parameter 'cart'"),
        ("optional", "quote", "required parameter 'cart' is not always given"),
    ],
)
def test_two_arguments_refuse_a_host_signature_the_target_cannot_serve(
    versions: dualrun.VersionPair,
    shop: str,
    d: dualrun.Dispatcher,
    host: str,
    version: str,
    why: str,
) -> None:
    module = sys.modules[shop]
    before = dict(vars(module))
    with pytest.raises(TypeError, match=f"cannot intercept '{shop}:{host}'.*{re.escape(why)}"):
        d.intercept(f"{shop}:{host}", target(versions, version))
    assert dict(vars(module)) == before


def test_a_pending_intercept_with_a_bad_signature_warns_and_imports_unpatched(
    versions: dualrun.VersionPair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = unique("shop")
    (tmp_path / f"{name}.py").write_text(HOST_SIGNATURES)
    monkeypatch.syspath_prepend(str(tmp_path))
    d = dualrun.Dispatcher(versions, policy=dualrun.Fixed("new"))
    try:
        handle = d.intercept(f"{name}:extra_keyword", target(versions, "quote"))
        with pytest.warns(dualrun.DualrunWarning, match=r"no positional argument 2 \('user_id'\)"):
            module = importlib.import_module(name)
        assert not handle.applied and handle.error is not None
        assert module.extra_keyword(1, user_id=2) == ("host", 1)
    finally:
        d.close()
        forget_host(name)


def test_two_arguments_report_the_target_signature(
    versions: dualrun.VersionPair, shop: str, d: dualrun.Dispatcher
) -> None:
    module = sys.modules[shop]
    d.intercept(f"{shop}:fewer", target(versions, "quote"))
    assert str(inspect.signature(module.fewer)) == "(cart, *, discount=0)"
    assert module.fewer([1, 2], discount=1) == ("new", 2)  # the target's keyword works
    d.intercept(f"{shop}:Shop.plain", target(versions, "describe"))  # a method to a function
    assert module.Shop().plain(2) == ("new", "Shop", 2)


# -- mistakes reported at once ---------------------------------------------------------------


def test_a_module_that_cannot_be_imported_is_refused_without_importing_anything(
    versions: dualrun.VersionPair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = unique("lazy")
    (tmp_path / name).mkdir()
    (tmp_path / name / "__init__.py").write_text("raise RuntimeError('imported!')\n")
    (tmp_path / name / "real.py").write_text("def f(cart, *, discount=0):\n    return 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    d = dualrun.Dispatcher(versions)
    try:
        with pytest.raises(ModuleNotFoundError, match=f"no module named '{name}.typo'"):
            d.intercept(f"{name}.typo:f", target(versions, "quote"))
        with pytest.raises(ModuleNotFoundError, match="no module named 'no_such_app_xyz'"):
            d.intercept("no_such_app_xyz.views:f", target(versions, "quote"))
        handle = d.intercept(f"{name}.real:f", target(versions, "quote"))  # findable: pending
        assert handle.pending
        assert name not in sys.modules  # nothing was imported to check it
    finally:
        d.close()
        forget_host(name)


def test_a_still_pending_intercept_is_warned_once_at_the_first_routed_call(
    versions: dualrun.VersionPair, installed: str
) -> None:
    d = dualrun.Dispatcher(versions)
    try:
        handle = d.intercept(f"{installed}:by_name", target(versions, "quote"))
        routed = d.route(target(versions, "quote"))
        with pytest.warns(dualrun.DualrunWarning, match=f"still pending.*{installed}:by_name"):
            routed([1])
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            routed([1])  # once only
        assert handle.pending
    finally:
        d.close()
