"""A module of a version that cannot be imported is a VersionLoadError that names the version.

Wherever the import happens — at ``load()``, ``route()``, ``resolve()``, ``import_module()``, or
inside the version's own code at call time — the error names the label, the source and the
module, and is chained to the cause. ``load(preload=True)`` (or a list of modules) refuses a
broken version before it serves.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import dualrun_leftovers

import dualrun
from dualrun import VersionModuleNotFoundError

LoadPair = Callable[..., dualrun.VersionPair]
WriteTree = Callable[[str, dict[str, str]], Path]

GOOD = {
    "pricing/__init__.py": "VERSION = 'TAG'\n",
    "pricing/rules.py": "RATE = 2\n\ndef rate():\n    return RATE\n",
    "pricing/engine.py": """\
def quote(n):
    from pricing import rules  # at call time
    return n * rules.rate()


def quote_relative(n):
    from . import rules
    return n * rules.RATE


def quote_importlib(n):
    import importlib
    return n * importlib.import_module("pricing.rules").RATE


def missing():
    import pricing.nope  # no such module in the version
    return pricing.nope


def optional():
    try:
        import pricing._speedups  # an optional part, absent here
    except ModuleNotFoundError as exc:
        return exc.name
    return None
""",
    "pricing/__main__.py": "raise SystemExit('the command line ran')\n",
    "pricing/sub/__init__.py": "",
    "pricing/sub/deep.py": "DEEP = 'TAG'\n",
}


def broken(files: dict[str, str]) -> dict[str, str]:
    """The same package whose ``pricing.rules`` raises while it is imported."""
    return {
        **files,
        "pricing/rules.py": "raise RuntimeError('pricing config missing')\n",
    }


def tree(write_tree: WriteTree, tag: str, files: dict[str, str]) -> str:
    return str(write_tree(tag, {p: t.replace("TAG", tag) for p, t in files.items()}))


def assert_names(error: BaseException, label: str, source: str, module: str) -> None:
    assert isinstance(error, dualrun.VersionLoadError), repr(error)
    assert (error.label, error.source, error.module) == (label, source, module)
    text = str(error)
    assert f"{label!r} version" in text and repr(source) in text and module in text
    assert "_dualrun_" not in text


def assert_config_missing(error: BaseException, label: str, source: str) -> None:
    assert_names(error, label, source, "pricing.rules")
    assert "RuntimeError: pricing config missing" in str(error)
    assert isinstance(error.__cause__, RuntimeError)


@pytest.fixture
def pair(write_tree: WriteTree, load_pair: LoadPair) -> dualrun.VersionPair:
    """old is good; new's pricing.rules raises while it is imported. load() accepts both."""
    return load_pair(
        "pricing",
        old=tree(write_tree, "v1", GOOD),
        new=tree(write_tree, "v2", broken(GOOD)),
    )


def test_import_module_and_resolve_name_the_version(pair: dualrun.VersionPair) -> None:
    source = pair.new.source
    with pytest.raises(dualrun.VersionLoadError) as caught:
        pair.new.import_module("pricing.rules")
    assert_config_missing(caught.value, "new", source)
    with pytest.raises(dualrun.VersionLoadError) as caught:
        pair.new.resolve("pricing.rules:rate")
    assert_config_missing(caught.value, "new", source)
    assert pair.old.resolve("pricing.rules:rate")() == 2


def test_route_names_the_version_not_a_bare_runtime_error(pair: dualrun.VersionPair) -> None:
    d = dualrun.Dispatcher(pair, policy=dualrun.Fixed("old"))
    try:
        with pytest.raises(dualrun.VersionLoadError) as caught:
            d.route("pricing.rules:rate")
        assert_config_missing(caught.value, "new", pair.new.source)
    finally:
        d.close()


@pytest.mark.parametrize("function", ["quote", "quote_relative", "quote_importlib"])
def test_imports_at_call_time_name_the_version(pair: dualrun.VersionPair, function: str) -> None:
    d = dualrun.Dispatcher(pair, policy=dualrun.Fixed("new"))
    try:
        routed = d.route(f"pricing.engine:{function}")
        with pytest.raises(dualrun.VersionLoadError) as caught:
            routed(3)
        assert_config_missing(caught.value, "new", pair.new.source)
        d.policy = dualrun.Fixed("old")
        assert routed(3) == 6
    finally:
        d.close()


def test_a_missing_module_is_still_a_module_not_found_error(pair: dualrun.VersionPair) -> None:
    engine = pair.old.import_module("pricing.engine")
    with pytest.raises(VersionModuleNotFoundError) as caught:
        engine.missing()
    assert isinstance(caught.value, ModuleNotFoundError)
    assert caught.value.name == "pricing.nope"
    assert_names(caught.value, "old", pair.old.source, "pricing.nope")
    # Code that guards an optional import of its own keeps working, and sees its own name.
    assert engine.optional() == "pricing._speedups"
    with pytest.raises(VersionModuleNotFoundError):
        pair.old.import_module("pricing.nope")


def test_a_routed_module_that_is_missing_is_no_such_target(pair: dualrun.VersionPair) -> None:
    d = dualrun.Dispatcher(pair, policy=dualrun.Fixed("old"))
    try:
        with pytest.raises(dualrun.TargetNotFoundError, match=r"pricing\.absent"):
            d.route("pricing.absent:f")
    finally:
        d.close()


def test_a_missing_dependency_of_a_routed_module_is_a_broken_version(
    write_tree: WriteTree, load_pair: LoadPair
) -> None:
    files = {
        **GOOD,
        "pricing/rules.py": "import no_such_dependency_xyz\n\ndef rate():\n    return 1\n",
    }
    pair = load_pair("pricing", old=tree(write_tree, "v1", GOOD), new=tree(write_tree, "v2", files))
    d = dualrun.Dispatcher(pair, policy=dualrun.Fixed("old"))
    try:
        with pytest.raises(dualrun.VersionLoadError) as caught:
            d.route("pricing.rules:rate")
        assert not isinstance(caught.value, dualrun.TargetNotFoundError)
        assert_names(caught.value, "new", pair.new.source, "pricing.rules")
        assert "no_such_dependency_xyz" in str(caught.value)
        assert isinstance(caught.value.__cause__, ModuleNotFoundError)
    finally:
        d.close()


def test_load_checks_only_the_top_level_by_default(pair: dualrun.VersionPair) -> None:
    assert pair.new.module.VERSION == "v2"  # loaded: the broken submodule is not imported yet


def test_preload_refuses_a_broken_version_and_leaves_nothing(write_tree: WriteTree) -> None:
    good, bad = tree(write_tree, "v1", GOOD), tree(write_tree, "v2", broken(GOOD))
    for preload in (True, ["pricing.rules"]):
        with pytest.raises(dualrun.VersionLoadError) as caught:
            dualrun.load("pricing", old=good, new=bad, preload=preload)
        assert_config_missing(caught.value, "new", bad)
        assert dualrun_leftovers() == ([], [])


def test_preload_imports_every_module_but_the_command_line(write_tree: WriteTree) -> None:
    good, other = tree(write_tree, "v1", GOOD), tree(write_tree, "v2", GOOD)
    pair = dualrun.load("pricing", old=good, new=other, preload=True)
    try:
        for version in pair:
            loaded = {name.partition(".")[2] for name in version.modules()}
            assert {"pricing.rules", "pricing.engine", "pricing.sub.deep"} <= loaded
            assert "pricing.__main__" not in loaded
        assert pair.new.import_module("pricing.sub.deep").DEEP == "v2"
    finally:
        pair.unload()
    pair = dualrun.load(
        "pricing", old=good, new=tree(write_tree, "v3", broken(GOOD)), preload=["pricing.engine"]
    )
    try:
        assert {n.partition(".")[2] for n in pair.new.modules()} >= {"pricing.engine"}
    finally:
        pair.unload()


@pytest.mark.parametrize(
    "preload", ["pricing.rules", ["other.module"], [1], ["pricing..x"], 3.5, b"pricing"]
)
def test_bad_preload_values_are_refused_by_name(write_tree: WriteTree, preload: Any) -> None:
    good = tree(write_tree, "v1", GOOD)
    with pytest.raises(ValueError, match="preload"):
        dualrun.load("pricing", old=good, new=good, preload=preload)
    assert dualrun_leftovers() == ([], [])


def test_a_failure_at_load_names_the_module(write_tree: WriteTree) -> None:
    files = {**broken(GOOD), "pricing/__init__.py": "from pricing import rules\n"}
    bad = tree(write_tree, "v2", files)
    with pytest.raises(dualrun.VersionLoadError) as caught:
        dualrun.load("pricing", old=tree(write_tree, "v1", GOOD), new=bad)
    assert_config_missing(caught.value, "new", bad)
