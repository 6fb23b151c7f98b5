"""``old=dualrun.INSTALLED``: the host's own imported package is the old version, as it is.

Nothing is copied: the old version's modules and classes are the host's, so with
``Fixed("old")`` the application behaves exactly as without dualrun — the same classes come
back, ``isinstance``, ``functools.singledispatch`` and pickling work — while only the new
version is isolated.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import json
import pickle
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from routing_helpers import unique

import dualrun
from dualrun.logread import report_from_logs

MODELS = """
import dataclasses


@dataclasses.dataclass
class Quote:
    cents: int
    currency: str = "EUR"
"""

ENGINE = """
from NAME.models import Quote

VERSION = "TAG"


def quote(qty):
    return Quote(cents=qty * RATE)


class Pricer:
    def price(self, qty):
        return quote(qty)


async def aquote(qty):
    return quote(qty)
"""

APP = """
import functools

from NAME import engine
from NAME.models import Quote


@functools.singledispatch
def serialize(value):
    raise TypeError(f"cannot serialize {type(value).__qualname__}")


@serialize.register
def _(value: Quote):
    return {"cents": value.cents, "currency": value.currency}


def checkout(qty):
    return engine.quote(qty)
"""


class World:
    """A host package (installed and imported) and a new version of it in a directory."""

    def __init__(self, root: Path) -> None:
        self.name = unique("instpkg")
        self.app = f"{self.name}_app"
        self.site = root / "site"
        self.write(self.site / self.name, rate=100, tag="host")
        (self.site / f"{self.app}.py").write_text(textwrap.dedent(APP.replace("NAME", self.name)))
        self.new_source = root / "new"
        self.write(self.new_source / self.name, rate=101, tag="new")
        sys.path.insert(0, str(self.site))
        importlib.invalidate_caches()
        self.host = importlib.import_module(f"{self.name}.engine")
        self.models = importlib.import_module(f"{self.name}.models")
        self.app_module = importlib.import_module(self.app)

    def write(self, package: Path, rate: int, tag: str) -> None:
        package.mkdir(parents=True)
        (package / "__init__.py").write_text("")
        (package / "models.py").write_text(textwrap.dedent(MODELS))
        engine = ENGINE.replace("NAME", self.name).replace("TAG", tag)
        (package / "engine.py").write_text(textwrap.dedent(engine) + f"\nRATE = {rate}\n")

    def host_modules(self) -> dict[str, Any]:
        return {n: m for n, m in sys.modules.items() if n.partition(".")[0] == self.name}

    def cleanup(self) -> None:
        sys.path.remove(str(self.site))
        for name in [n for n in sys.modules if n.partition(".")[0] in (self.name, self.app)]:
            del sys.modules[name]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    made = World(tmp_path)
    try:
        yield made
    finally:
        made.cleanup()


@pytest.fixture
def pair(world: World) -> Iterator[dualrun.VersionPair]:
    versions = dualrun.load(world.name, old=dualrun.INSTALLED, new=str(world.new_source))
    try:
        yield versions
    finally:
        versions.unload()


def test_the_old_version_is_the_host_package_itself(
    world: World, pair: dualrun.VersionPair
) -> None:
    before = world.host_modules()
    assert pair.old.module is sys.modules[world.name]
    assert pair.old.import_module(f"{world.name}.engine") is world.host
    assert pair.old.resolve(f"{world.name}.engine:quote") is world.host.quote
    assert pair.old.source == "installed" and repr(dualrun.INSTALLED) == "dualrun.INSTALLED"
    assert pair.old.owns(world.models.Quote) and not pair.new.owns(world.models.Quote)
    # Only the new version is isolated, and loading it imported nothing under the real name.
    new_engine = pair.new.import_module(f"{world.name}.engine")
    assert new_engine.VERSION == "new" and new_engine.Quote is not world.models.Quote
    assert world.host_modules() == before


def test_fixed_old_behaves_exactly_as_without_dualrun(
    world: World, pair: dualrun.VersionPair
) -> None:
    without = world.app_module.checkout(3)
    d = dualrun.Dispatcher(pair, policy=dualrun.Fixed("old"))
    try:
        d.intercept(f"{world.name}.engine:quote")  # every caller of the host's quote routes
        quote = world.app_module.checkout(3)
        assert type(quote) is world.models.Quote and type(quote) is type(without)
        assert isinstance(quote, world.models.Quote) and quote == without
        assert world.app_module.serialize(quote) == {"cents": 300, "currency": "EUR"}
        assert pickle.loads(pickle.dumps(quote)) == quote
        routed = d.route(f"{world.name}.engine:Pricer.price")
        assert type(routed(world.host.Pricer(), 2)) is world.models.Quote
        # checkout, and price's own call of the (intercepted) host quote: both routed to old.
        assert d.report().route(f"{world.name}.engine:quote").calls == {"old": 2, "new": 0}
        # The new version's objects are its own: a caller of new sees another class.
        d.policy = dualrun.Fixed("new")
        from_new = world.app_module.checkout(3)
        assert from_new.cents == 303 and not isinstance(from_new, world.models.Quote)
    finally:
        d.close()
    assert world.app_module.checkout(3) == without


def test_shadowing_the_installed_version_compares_values(
    world: World, pair: dualrun.VersionPair
) -> None:
    d = dualrun.Dispatcher(pair, policy=dualrun.Fixed("old"), shadow=dualrun.Shadow())
    try:
        quote = d.route(f"{world.name}.engine:quote")
        assert type(quote(2)) is world.models.Quote
        report = d.report().route(f"{world.name}.engine:quote")
        assert (report.comparisons, report.mismatches) == (1, 1)
        [divergence] = report.divergences
        assert (divergence.path, divergence.kind) == ("$.cents", "value")
    finally:
        d.close()


def test_retiring_the_installed_version_leaves_the_host_its_modules(
    world: World, pair: dualrun.VersionPair
) -> None:
    d = dualrun.Dispatcher(pair, policy=dualrun.Fixed("old"))
    try:
        quote = d.route(f"{world.name}.engine:quote")
        d.promote(retire=True, drain_timeout=5)
        assert quote(1).cents == 101
        deadline = time.monotonic() + 5
        while pair.old.loaded and time.monotonic() < deadline:  # retired once drained
            time.sleep(0.01)
        assert not pair.old.loaded
        assert sys.modules[f"{world.name}.engine"] is world.host
        assert world.host.quote(1) == world.models.Quote(100)
    finally:
        d.close()


def test_installed_is_refused_where_it_cannot_work(world: World, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="INSTALLED"):
        dualrun.load(world.name, old=dualrun.INSTALLED, new=dualrun.INSTALLED)
    missing = unique("notinstalled")
    with pytest.raises(dualrun.VersionLoadError) as caught:
        dualrun.load(missing, old=dualrun.INSTALLED, new=str(world.new_source))
    assert caught.value.label == "old" and caught.value.source == "installed"
    assert isinstance(caught.value, ModuleNotFoundError)
    assert missing in str(caught.value)


def test_functools_partial_results_keep_their_identity(
    world: World, pair: dualrun.VersionPair
) -> None:
    d = dualrun.Dispatcher(pair, policy=dualrun.Fixed("old"))
    try:
        make = functools.partial(d.route(f"{world.name}.engine:quote"), 4)
        assert make() == world.host.quote(4) and type(make()) is world.models.Quote
    finally:
        d.close()


def test_a_migration_converts_new_results_into_what_the_host_expects(
    world: World, pair: dualrun.VersionPair, tmp_path: Path
) -> None:
    def to_host(quote: Any) -> Any:
        return world.models.Quote(cents=quote.cents, currency=quote.currency)

    log = tmp_path / "dualrun.jsonl"
    d = dualrun.Dispatcher(
        pair,
        policy=dualrun.Fixed("new"),
        migrate={("new", "old"): to_host},
        results_as="old",
        log=str(log),
    )
    target = f"{world.name}.engine:quote"
    try:
        d.intercept(target)
        quote = world.app_module.checkout(3)  # served by new, converted for the host
        assert type(quote) is world.models.Quote and quote.cents == 303
        assert world.app_module.serialize(quote) == {"cents": 303, "currency": "EUR"}
        assert pickle.loads(pickle.dumps(quote)) == quote
        aquote = d.route(f"{world.name}.engine:aquote")
        assert type(asyncio.run(aquote(1))) is world.models.Quote
        d.policy = dualrun.Fixed("old")  # old's results are the host's already: not converted
        assert type(world.app_module.checkout(1)) is world.models.Quote
        report = d.report()
        assert report.route(target).results_converted == 1
        assert report.route(f"{world.name}.engine:aquote").results_converted == 1
        for text in (report.to_text(), report.to_markdown(), report.to_html()):
            assert "converted results" in text and "1 results converted" in text
        routes = {r["route"]: r for r in json.loads(report.to_json())["routes"]}
        assert routes[target]["results_converted"] == 1
    finally:
        d.close()
    from_log, _ = report_from_logs([str(log)], lambda *_: None)
    assert from_log.route(target).results_converted == 1
    assert from_log.route(target).calls == {"old": 1, "new": 1}


def test_results_as_needs_its_migration(world: World, pair: dualrun.VersionPair) -> None:
    with pytest.raises(ValueError, match=r"results_as.*migrate\[\('new', 'old'\)\]"):
        dualrun.Dispatcher(pair, results_as="old")
    with pytest.raises(ValueError, match="results_as is 'old' or 'new'"):
        dualrun.Dispatcher(pair, migrate={("new", "old"): lambda v: v}, results_as="host")
