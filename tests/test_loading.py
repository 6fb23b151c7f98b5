"""Two versions of the same package loaded side by side: isolation, import forms, bad input."""

from __future__ import annotations

import importlib
import importlib.machinery
import json
import sys
import threading
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import wrapt
from conftest import LAZY_FORMS, Files, dualrun_leftovers, pricing_files

import dualrun
from dualrun.loading import _VersionFinder

LoadPair = Callable[..., dualrun.VersionPair]
WriteTree = Callable[[str, Files], Path]


def real_names(*tops: str) -> list[str]:
    """Modules in sys.modules under the real (unprefixed) top-level names ``tops``."""
    return [n for n in sys.modules if n.partition(".")[0] in tops]


def prefixes_in_sys_modules() -> set[str]:
    return {n.partition(".")[0] for n in sys.modules if n.startswith("_dualrun_")}


# --- every import form, both versions at once ---------------------------------------------


def test_top_level_module_of_each_version(versions: dualrun.VersionPair) -> None:
    old, new = versions
    assert old.module.version() == "v1"
    assert new.module.version() == "v2"
    assert old.module is not new.module
    assert old.module.__name__ == f"{old.prefix}.pricing"
    assert new.module.__name__ == f"{new.prefix}.pricing"
    assert old.prefix != new.prefix
    assert (old.label, new.label) == ("old", "new")
    assert versions["old"] is old and versions["new"] is new
    with pytest.raises(ValueError, match="'old' or 'new'"):
        versions["middle"]


# The import forms pricing/toplevel.py runs at module level, all of them on pricing.sub.
TOPLEVEL_FORMS = (
    "import pricing.sub",
    "import pricing.sub as m",
    "from pricing import sub",
    "from . import sub",
    "importlib.import_module",
    "from importlib import import_module",
    "importlib.import_module relative",
    "__import__ fromlist",
    "__import__",
    "__import__ level 1",
)


@pytest.mark.parametrize("form", TOPLEVEL_FORMS)
def test_module_level_import_forms(versions: dualrun.VersionPair, form: str) -> None:
    for version, tag in zip(versions, ("v1", "v2"), strict=True):
        toplevel = version.import_module("pricing.toplevel")
        seen = toplevel.SEEN[form]
        assert seen is version.import_module("pricing.sub"), form
        assert seen.value() == f"{tag}-sub"
    assert set(versions.old.import_module("pricing.toplevel").SEEN) == set(TOPLEVEL_FORMS)


def test_module_level_from_imports_of_names(versions: dualrun.VersionPair) -> None:
    for version, tag in zip(versions, ("v1", "v2"), strict=True):
        toplevel = version.import_module("pricing.toplevel")
        # "import pricing.sub" binds the version's own top-level package to "pricing".
        assert toplevel.TOP is version.module
        for form, function in toplevel.FUNCTIONS.items():
            assert function() == f"{tag}-sub", form
            assert function.__module__ == version.alias("pricing.sub"), form


@pytest.mark.parametrize("form", LAZY_FORMS)
def test_import_forms_at_call_time_reach_lazy_submodules(
    versions: dualrun.VersionPair, form: str
) -> None:
    old_calltime = versions.old.import_module("pricing.calltime")
    new_calltime = versions.new.import_module("pricing.calltime")
    for version in versions:
        # Nothing has imported the module yet: the call below imports it.
        assert version.alias(f"pricing.lazy.{form}") not in sys.modules
    old_module = getattr(old_calltime, form)()
    new_module = getattr(new_calltime, form)()
    assert f"v1-{form}" == old_module.VALUE
    assert f"v2-{form}" == new_module.VALUE
    assert old_module is sys.modules[versions.old.alias(f"pricing.lazy.{form}")]
    assert new_module is sys.modules[versions.new.alias(f"pricing.lazy.{form}")]
    # Calling again returns the same module: imported once per version.
    assert getattr(old_calltime, form)() is old_module
    assert real_names("pricing") == []


def test_lazy_import_long_after_loading_interleaved(versions: dualrun.VersionPair) -> None:
    old, new = versions
    old_calltime = old.import_module("pricing.calltime")
    new_calltime = new.import_module("pricing.calltime")
    # New first this time, then old: each version keeps resolving to its own copy.
    for form in reversed(LAZY_FORMS):
        assert f"v2-{form}" == getattr(new_calltime, form)().VALUE
        assert f"v1-{form}" == getattr(old_calltime, form)().VALUE
    assert all(old.alias(f"pricing.lazy.{f}") in sys.modules for f in LAZY_FORMS)
    assert all(new.alias(f"pricing.lazy.{f}") in sys.modules for f in LAZY_FORMS)


def test_relative_imports_from_nested_subpackages(versions: dualrun.VersionPair) -> None:
    for version, tag in zip(versions, ("v1", "v2"), strict=True):
        sub = version.import_module("pricing.sub")
        inner = version.import_module("pricing.deep.inner")
        leaf = version.import_module("pricing.deep.deeper.leaf")
        assert tag == inner.PARENT_VERSION  # from .. import VERSION
        assert inner.sub is sub  # from .. import sub
        assert inner.value() == f"{tag}-sub"  # from ..sub import value
        assert tag == leaf.ROOT_VERSION  # from ... import VERSION
        assert leaf.sub is sub
        assert leaf.inner is inner  # from ...deep import inner
        assert leaf.parent_sub is sub  # from .. import parent_sub (an attribute of pricing.deep)


def test_circular_imports(versions: dualrun.VersionPair) -> None:
    for version, tag in zip(versions, ("v1", "v2"), strict=True):
        assert version.import_module("pricing.cycle_a").a() == f"{tag}-a+b-of-{tag}-a"
        assert version.import_module("pricing.cycle_c").c() == f"d-of-{tag}-c"
        cycle_b = version.import_module("pricing.cycle_b")
        assert cycle_b.cycle_a is version.import_module("pricing.cycle_a")


def test_import_module_and_importlib_from_the_host(versions: dualrun.VersionPair) -> None:
    old, new = versions
    assert old.import_module("pricing.sub").value() == "v1-sub"
    assert new.import_module("pricing.sub").value() == "v2-sub"
    assert importlib.import_module(old.alias("pricing.sub")) is old.import_module("pricing.sub")
    assert old.import_module("pricing") is old.module
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("pricing.sub")  # the real name resolves to nothing
    with pytest.raises(ImportError):
        old.import_module("pricing.no_such_module")


def test_import_module_rejects_names_outside_the_version(versions: dualrun.VersionPair) -> None:
    for name in ("json", "pricingx", "pricing_extra.sub"):
        with pytest.raises(ValueError, match=r"not part of the 'old' version") as caught:
            versions.old.import_module(name)
        assert repr(name) in str(caught.value)
        assert "packages=" in str(caught.value)


def test_resolve(versions: dualrun.VersionPair) -> None:
    old, new = versions
    old_quote = old.resolve("pricing.rules:Quote")
    new_quote = new.resolve("pricing.rules:Quote")
    assert old_quote(10).total() == (10, "v1-sub")
    assert new_quote(10).total() == (20, "v2-sub")
    assert new.resolve("pricing.rules:Quote.total") is new_quote.total
    assert old.resolve("pricing.rules:Quote.make")(3).total() == (3, "v1-sub")
    assert old.resolve("pricing:version")() == "v1"
    assert old_quote is not new_quote
    assert old.owns(old_quote) and not old.owns(new_quote)
    assert new.owns(new.module) and not new.owns(json)
    with pytest.raises(dualrun.TargetNotFoundError, match=r"'old'.*'Quote' has no attribute"):
        old.resolve("pricing.rules:Quote.missing")
    with pytest.raises(ValueError, match="a target is"):
        old.resolve("pricing.rules.Quote")


def test_module_state_is_separate_per_version(versions: dualrun.VersionPair) -> None:
    old_registry = versions.old.module.registry
    new_registry = versions.new.module.registry
    assert old_registry.register("a") == 1
    assert old_registry.register("b") == 2
    assert new_registry.register("x") == 1
    assert old_registry.ITEMS == ["a", "b"]
    assert new_registry.ITEMS == ["x"]
    # The version's own code sees the same registry as the host handle.
    assert versions.old.import_module("pricing.toplevel").TOP.registry is old_registry


def test_real_name_never_enters_sys_modules(versions: dualrun.VersionPair) -> None:
    for version in versions:
        calltime = version.import_module("pricing.calltime")
        for form in LAZY_FORMS:
            getattr(calltime, form)()
        version.import_module("pricing.toplevel")
        version.import_module("pricing.deep.deeper.leaf")
        version.import_module("pricing.cycle_a").a()
    assert real_names("pricing") == []
    for version in versions:
        assert version.modules(), "the version's modules live under its prefix"
        assert all(n.startswith(version.prefix) for n in version.modules())


def test_stdlib_and_third_party_stay_shared(versions: dualrun.VersionPair) -> None:
    json_before = sys.modules["json"]
    for version in versions:
        shared = version.import_module("pricing.shared")
        assert shared.json is json_before is json
        assert shared.dumps is json.dumps
        assert shared.collections.abc is sys.modules["collections.abc"]
        assert shared.wrapt is wrapt
        assert shared.json_at_call_time() is json
        spec = shared.importlib_util_spec("json")  # importlib.util reached through the proxy
        assert spec is not None and spec.name == "json"
    assert sys.modules["json"] is json_before
    assert not [n for n in sys.modules if n.startswith("_dualrun_") and ".json" in n]


def test_traceback_shows_the_versions_source_line(
    versions: dualrun.VersionPair, pricing_dirs: tuple[Path, Path]
) -> None:
    for version, tag, root in zip(versions, ("v1", "v2"), pricing_dirs, strict=True):
        with pytest.raises(ValueError, match=f"boom {tag} 7") as caught:
            version.resolve("pricing.boom:explode")(7)
        text = "".join(traceback.format_exception(caught.value))
        assert f'raise ValueError(f"boom {tag} {{amount}}")  # the boom line of {tag}' in text
        assert f'File "{root / "pricing" / "boom.py"}", line 2, in explode' in text


def test_dotted_name_imports_that_module(
    pricing_dirs: tuple[Path, Path], load_pair: LoadPair
) -> None:
    v1, v2 = pricing_dirs
    pair = load_pair("pricing.cycle_a", old=str(v1), new=str(v2))
    assert pair.old.name == "pricing.cycle_a"
    assert pair.old.module.__name__ == pair.old.alias("pricing")  # module: the top level
    assert pair.old.alias("pricing.cycle_a") in pair.old.modules()  # imported at load
    assert pair.new.alias("pricing.cycle_a") in pair.new.modules()


# --- the host's own copy of the name -------------------------------------------------------

HOST_PRICING: Files = {
    "pricing/__init__.py": 'VERSION = "host"\n',
    "pricing/sub.py": 'VALUE = "host-sub"\n\ndef value():\n    return VALUE\n',
    "pricing/host_only.py": "HOST_ONLY = True\n",
}


@pytest.fixture
def host_pricing(write_tree: WriteTree, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """A ``pricing`` of the host on sys.path, imported before any version is loaded."""
    assert real_names("pricing") == []
    monkeypatch.syspath_prepend(str(write_tree("host", HOST_PRICING)))
    module = importlib.import_module("pricing")
    importlib.import_module("pricing.sub")
    yield module
    for name in real_names("pricing"):
        del sys.modules[name]


def test_host_copy_does_not_leak_into_either_version(
    host_pricing: object, pricing_dirs: tuple[Path, Path], load_pair: LoadPair
) -> None:
    host_sub = sys.modules["pricing.sub"]
    v1, v2 = pricing_dirs
    pair = load_pair("pricing", old=str(v1), new=str(v2))
    for version, tag in zip(pair, ("v1", "v2"), strict=True):
        assert version.module is not host_pricing
        assert version.module.version() == tag
        toplevel = version.import_module("pricing.toplevel")
        for form, module in toplevel.SEEN.items():
            assert module is not host_sub, form
            assert module.value() == f"{tag}-sub", form
        calltime = version.import_module("pricing.calltime")
        for form in LAZY_FORMS:
            assert f"{tag}-{form}" == getattr(calltime, form)().VALUE, form
        with pytest.raises(ImportError):
            version.import_module("pricing.host_only")  # the host's module is not the version's
    # ... and the versions do not leak into the host.
    assert sys.modules["pricing"] is host_pricing
    assert sys.modules["pricing.sub"] is host_sub
    assert importlib.import_module("pricing.host_only").HOST_ONLY is True
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("pricing.calltime")
    assert sorted(real_names("pricing")) == ["pricing", "pricing.host_only", "pricing.sub"]
    pair.unload()
    assert sys.modules["pricing"] is host_pricing
    assert sys.modules["pricing.sub"] is host_sub
    assert host_sub.value() == "host-sub"


# --- layouts -----------------------------------------------------------------------------

SINGLE_MODULE = """
    VERSION = "TAG"
    COUNT = 0


    def me():
        import pricing

        return pricing


    def via_importlib():
        import importlib

        return importlib.import_module("pricing")


    def bump():
        global COUNT
        COUNT += 1
        return COUNT
"""


def test_single_module_version(write_tree: WriteTree, load_pair: LoadPair) -> None:
    v1 = write_tree("v1", {"pricing.py": SINGLE_MODULE.replace("TAG", "v1")})
    v2 = write_tree("v2", {"pricing.py": SINGLE_MODULE.replace("TAG", "v2")})
    pair = load_pair("pricing", old=str(v1), new=str(v2))
    assert pair.old.module.VERSION == "v1"
    assert pair.new.module.VERSION == "v2"
    assert pair.old.module.__file__ == str(v1 / "pricing.py")
    assert not hasattr(pair.old.module, "__path__")
    for version in pair:
        assert version.module.me() is version.module
        assert version.module.via_importlib() is version.module
    assert pair.old.module.bump() == 1
    assert pair.old.module.bump() == 2
    assert pair.new.module.bump() == 1
    assert real_names("pricing") == []


TWO_PACKAGES: Files = {
    "pricing/__init__.py": """
        from taxkit import rate

        VERSION = "TAG"


        def total(amount):
            return amount * rate()
    """,
    "taxkit/__init__.py": """
        import pricing


        def rate():
            return int("TAG"[1:]) * 10


        def owner_version():
            import pricing

            return pricing.VERSION


        def owner_lazy():
            from pricing import lazy

            return lazy.VALUE
    """,
    "pricing/lazy.py": 'VALUE = "TAG-lazy"\n',
}


def two_packages(tag: str) -> Files:
    return {path: text.replace("TAG", tag) for path, text in TWO_PACKAGES.items()}


def test_packages_with_two_top_levels_importing_each_other(
    write_tree: WriteTree, load_pair: LoadPair
) -> None:
    assert importlib.util.find_spec("taxkit") is None
    v1 = write_tree("v1", two_packages("v1"))
    v2 = write_tree("v2", two_packages("v2"))
    pair = load_pair("pricing", old=str(v1), new=str(v2), packages=["taxkit"])
    assert pair.old.tops == ("pricing", "taxkit")
    assert pair.old.module.total(2) == 20
    assert pair.new.module.total(2) == 40
    for version, tag in zip(pair, ("v1", "v2"), strict=True):
        taxkit = version.import_module("taxkit")
        assert taxkit.__name__ == version.alias("taxkit")
        assert taxkit.pricing is version.module
        assert taxkit.owner_version() == tag
        assert taxkit.owner_lazy() == f"{tag}-lazy"
        assert version.module.rate is taxkit.rate
    assert real_names("pricing", "taxkit") == []


def test_second_top_level_needs_packages(write_tree: WriteTree, load_pair: LoadPair) -> None:
    v1 = write_tree("v1", two_packages("v1"))
    v2 = write_tree("v2", two_packages("v2"))
    with pytest.raises(dualrun.VersionLoadError, match=r"ModuleNotFoundError.*'taxkit'"):
        load_pair("pricing", old=str(v1), new=str(v2))
    assert dualrun_leftovers() == ([], [])


def test_package_under_src(write_tree: WriteTree, load_pair: LoadPair) -> None:
    v1 = write_tree("v1", {f"src/{p}": t for p, t in pricing_files("v1").items()})
    v2 = write_tree("v2", {f"src/{p}": t for p, t in pricing_files("v2").items()})
    pair = load_pair("pricing", old=str(v1), new=str(v2 / "src"))
    assert pair.old.root == v1 / "src"
    assert pair.new.root == v2 / "src"
    assert pair.old.module.version() == "v1"
    assert pair.new.import_module("pricing.calltime").relative().VALUE == "v2-relative"


def test_namespace_package_without_init(write_tree: WriteTree, load_pair: LoadPair) -> None:
    files = {"pricing/sub.py": 'VALUE = "TAG"\n\ndef lazy():\n    from pricing import more\n'
             "    return more.VALUE\n", "pricing/more.py": 'VALUE = "TAG-more"\n'}  # fmt: skip
    v1 = write_tree("v1", {p: t.replace("TAG", "v1") for p, t in files.items()})
    v2 = write_tree("v2", {p: t.replace("TAG", "v2") for p, t in files.items()})
    pair = load_pair("pricing", old=str(v1), new=str(v2))
    assert pair.old.import_module("pricing.sub").lazy() == "v1-more"
    assert pair.new.import_module("pricing.sub").lazy() == "v2-more"


def test_same_source_twice_gives_independent_namespaces(
    pricing_dirs: tuple[Path, Path], load_pair: LoadPair
) -> None:
    v1, _ = pricing_dirs
    first = load_pair("pricing", old=str(v1), new=str(v1))
    second = load_pair("pricing", old=str(v1), new=str(v1))
    versions = [first.old, first.new, second.old, second.new]
    assert len({v.prefix for v in versions}) == 4
    assert len({id(v.module) for v in versions}) == 4
    registries = [v.module.registry for v in versions]
    assert [r.register("x") for r in registries] == [1, 1, 1, 1]
    assert registries[0].register("y") == 2
    assert [len(r.ITEMS) for r in registries] == [2, 1, 1, 1]
    lazies = [v.import_module("pricing.calltime").absolute() for v in versions]
    assert len({id(m) for m in lazies}) == 4
    assert {m.VALUE for m in lazies} == {"v1-absolute"}


# --- unloading ---------------------------------------------------------------------------


def test_unload_removes_modules_and_finder(versions: dualrun.VersionPair) -> None:
    old, new = versions
    old_calltime = old.import_module("pricing.calltime")
    old_sub = old.import_module("pricing.sub")
    old_finder = old._finder
    assert old_finder in sys.meta_path and old.loaded
    old.unload()
    assert old.modules() == []
    assert not [n for n in sys.modules if n == old.prefix or n.startswith(old.prefix + ".")]
    assert old_finder not in sys.meta_path
    assert not old.loaded
    assert "unloaded" in repr(old)
    # Objects already handed out keep working ...
    assert old_sub.value() == "v1-sub"
    assert old.module.version() == "v1"
    # ... imports the version would run later fail, and leave nothing behind.
    with pytest.raises(ImportError):
        old_calltime.absolute()
    assert old.modules() == []
    with pytest.raises(RuntimeError, match="unloaded"):
        old.import_module("pricing.sub")
    # The other version is untouched, lazy imports included.
    assert new.loaded and new._finder in sys.meta_path
    assert new.import_module("pricing.calltime").absolute().VALUE == "v2-absolute"
    old.unload()  # twice is harmless
    versions.unload()
    assert dualrun_leftovers() == ([], [])


def test_load_and_unload_restore_sys_path_and_meta_path(
    pricing_dirs: tuple[Path, Path],
) -> None:
    path_before, meta_before = list(sys.path), list(sys.meta_path)
    v1, v2 = pricing_dirs
    pair = dualrun.load("pricing", old=str(v1), new=str(v2))
    try:
        assert sys.path == path_before
        assert len(sys.meta_path) == len(meta_before) + 2
        assert sys.meta_path[:2] == [pair.new._finder, pair.old._finder]
    finally:
        pair.unload()
    assert sys.meta_path == meta_before
    assert dualrun_leftovers() == ([], [])


# --- C extensions --------------------------------------------------------------------------


def test_c_extension_is_detected_and_stated(pricing_dirs: tuple[Path, Path]) -> None:
    v1, v2 = pricing_dirs
    extension = v2 / "pricing" / f"_speed{importlib.machinery.EXTENSION_SUFFIXES[0]}"
    extension.write_bytes(b"not really a shared object")
    with pytest.warns(dualrun.DualrunWarning) as caught:
        pair = dualrun.load("pricing", old=str(v1), new=str(v2))
    try:
        assert len(caught) == 1
        message = str(caught[0].message)
        assert str(extension) in message
        assert "'new'" in message and "C extension" in message
        assert caught[0].filename == __file__  # points at the caller of load()
        assert pair.new.extension_modules == (str(extension),)
        assert pair.old.extension_modules == ()
        assert pair.new.module.version() == "v2"  # the package does not import it
    finally:
        pair.unload()


def test_no_warning_without_c_extension(versions: dualrun.VersionPair) -> None:
    assert versions.old.extension_modules == ()
    with warnings.catch_warnings():
        warnings.simplefilter("error", dualrun.DualrunWarning)
        dualrun.load("pricing", old=str(versions.old.root), new=str(versions.new.root)).unload()


# --- bad input -----------------------------------------------------------------------------


@pytest.fixture
def earlier(pricing_dirs: tuple[Path, Path], load_pair: LoadPair) -> dualrun.VersionPair:
    """A pair loaded before the bad input: it must keep working after the failure."""
    v1, v2 = pricing_dirs
    return load_pair("pricing", old=str(v1), new=str(v2))


def assert_only(earlier: dualrun.VersionPair) -> None:
    """Nothing but ``earlier`` is loaded, and it still works, lazy imports included."""
    assert prefixes_in_sys_modules() == {earlier.old.prefix, earlier.new.prefix}
    finders = [f for f in sys.meta_path if isinstance(f, _VersionFinder)]
    assert finders == [earlier.new._finder, earlier.old._finder]
    assert real_names("pricing") == []
    for version, tag in zip(earlier, ("v1", "v2"), strict=True):
        calltime = version.import_module("pricing.calltime")
        assert f"{tag}-from_importlib" == calltime.from_importlib().VALUE
        assert version.module.version() == tag


def assert_load_error(
    error: dualrun.VersionLoadError, label: str, source: str, *cause: str
) -> None:
    assert isinstance(error, ImportError)
    text = str(error)
    assert f"the {label!r} version" in text
    assert repr(source) in text
    assert error.label == label and error.source == source
    for fragment in cause:
        assert fragment in text, (fragment, text)


def test_missing_path(earlier: dualrun.VersionPair, tmp_path: Path) -> None:
    missing = str(tmp_path / "no" / "such" / "dir")
    with pytest.raises(dualrun.VersionLoadError) as caught:
        dualrun.load("pricing", old=str(earlier.old.root), new=missing)
    assert_load_error(caught.value, "new", missing, "does not exist")
    assert_only(earlier)


def test_directory_without_the_package(earlier: dualrun.VersionPair, write_tree: WriteTree) -> None:
    other = str(write_tree("other", {"billing/__init__.py": "X = 1\n"}))
    with pytest.raises(dualrun.VersionLoadError) as caught:
        dualrun.load("pricing", old=other, new=str(earlier.new.root))
    assert_load_error(caught.value, "old", other, "does not contain", "'pricing'", "src/")
    assert_only(earlier)


def test_directory_without_an_extra_package(
    earlier: dualrun.VersionPair, write_tree: WriteTree
) -> None:
    source = str(write_tree("nope", {"pricing/__init__.py": "X = 1\n"}))
    with pytest.raises(dualrun.VersionLoadError) as caught:
        dualrun.load("pricing", old=source, new=source, packages=["taxkit"])
    assert_load_error(caught.value, "old", source, "does not contain", "'taxkit'")
    assert_only(earlier)


def test_file_that_is_not_a_source(earlier: dualrun.VersionPair, tmp_path: Path) -> None:
    for name in ("pricing.py", "notes.txt"):
        path = tmp_path / name
        path.write_text("VERSION = 1\n")
        with pytest.raises(dualrun.VersionLoadError) as caught:
            dualrun.load("pricing", old=str(earlier.old.root), new=str(path))
        assert_load_error(caught.value, "new", str(path), "not a directory", ".whl", "git:")
    assert_only(earlier)


def test_syntax_error_in_the_version(earlier: dualrun.VersionPair, write_tree: WriteTree) -> None:
    files = pricing_files("v3")
    files["pricing/rules.py"] = "def broken(:\n    pass\n"
    source = str(write_tree("v3", files))
    with pytest.raises(dualrun.VersionLoadError) as caught:
        dualrun.load("pricing", old=str(earlier.old.root), new=source)
    assert_load_error(caught.value, "new", source, "SyntaxError")
    cause = caught.value.__cause__
    assert isinstance(cause, SyntaxError)
    assert cause.filename == str(Path(source) / "pricing" / "rules.py")
    assert cause.lineno == 1
    assert_only(earlier)


def test_exception_while_executing_the_version(
    earlier: dualrun.VersionPair, write_tree: WriteTree
) -> None:
    files = {
        "pricing/__init__.py": "from pricing import good\nfrom . import bad\n",
        "pricing/good.py": "GOOD = True\n",
        "pricing/bad.py": 'raise RuntimeError("misconfigured rates")  # the failing line\n',
    }
    source = str(write_tree("v3", files))
    with pytest.raises(dualrun.VersionLoadError) as caught:
        dualrun.load("pricing", old=source, new=str(earlier.new.root))
    assert_load_error(caught.value, "old", source, "RuntimeError: misconfigured rates")
    cause = caught.value.__cause__
    assert isinstance(cause, RuntimeError)
    text = "".join(traceback.format_exception(cause))
    assert 'raise RuntimeError("misconfigured rates")  # the failing line' in text
    assert str(Path(source) / "pricing" / "bad.py") in text
    # pricing.good had been imported before the failure: it is gone as well.
    assert_only(earlier)


def test_failure_of_new_unloads_the_old_of_the_same_call(
    earlier: dualrun.VersionPair, write_tree: WriteTree
) -> None:
    bad = str(write_tree("bad", {"pricing/__init__.py": "1 / 0\n"}))
    with pytest.raises(dualrun.VersionLoadError, match="ZeroDivisionError") as caught:
        dualrun.load("pricing", old=str(earlier.old.root), new=bad)
    assert caught.value.label == "new"
    assert isinstance(caught.value.__cause__, ZeroDivisionError)
    assert_only(earlier)


def test_system_exit_in_the_version_propagates_and_cleans_up(
    earlier: dualrun.VersionPair, write_tree: WriteTree
) -> None:
    source = str(write_tree("bad", {"pricing/__init__.py": "raise SystemExit(3)\n"}))
    with pytest.raises(SystemExit):
        dualrun.load("pricing", old=source, new=source)
    assert_only(earlier)


@pytest.mark.parametrize(
    "name", ["", "pricing-x", "1pricing", "pricing..sub", "pricing.", ".pricing", None, 42]
)
def test_bad_name(earlier: dualrun.VersionPair, name: object) -> None:
    source = str(earlier.old.root)
    with pytest.raises(ValueError, match=r"name is a dotted module name") as caught:
        dualrun.load(name, old=source, new=source)  # type: ignore[arg-type]
    assert repr(name) in str(caught.value)
    assert_only(earlier)


@pytest.mark.parametrize(
    ("packages", "fragment"),
    [
        ("taxkit", "got the string 'taxkit'"),
        (["taxkit", "bad-name"], "got 'bad-name'"),
        (["tax.kit"], "got 'tax.kit'"),
        ([""], "got ''"),
        ([3], "got 3"),
    ],
)
def test_bad_packages(earlier: dualrun.VersionPair, packages: object, fragment: str) -> None:
    source = str(earlier.old.root)
    with pytest.raises(ValueError, match="packages") as caught:
        dualrun.load("pricing", old=source, new=source, packages=packages)  # type: ignore[arg-type]
    assert fragment in str(caught.value)
    assert_only(earlier)


def test_bad_label(earlier: dualrun.VersionPair) -> None:
    with pytest.raises(ValueError, match="'old' or 'new', got 'middle'"):
        dualrun.load_version("middle", "pricing", str(earlier.old.root))  # type: ignore[arg-type]
    assert_only(earlier)


# --- concurrency ---------------------------------------------------------------------------

MANY = 24


def many_modules(tag: str) -> Files:
    files = {
        "pricing/__init__.py": f'VERSION = "{tag}"\n',
        "pricing/sub.py": f'def value():\n    return "{tag}-sub"\n',
        "pricing/many/__init__.py": (
            "def get(i):\n    import importlib\n\n"
            '    return importlib.import_module(f"pricing.many.m{i}")\n'
        ),
    }
    for i in range(MANY):
        files[f"pricing/many/m{i}.py"] = (
            f"import pricing.sub\n\nVALUE = ({tag!r}, {i})\n\n\n"
            "def value():\n    from pricing import sub\n\n    return VALUE, sub.value()\n"
        )
    return files


@pytest.fixture
def many_dirs(write_tree: WriteTree) -> tuple[Path, Path]:
    return write_tree("v1", many_modules("v1")), write_tree("v2", many_modules("v2"))


@pytest.fixture
def fast_switching() -> Iterator[None]:
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(interval)


def run_threads(count: int, work: Callable[[int], None]) -> None:
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            work(index)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    if errors:
        raise errors[0]


@pytest.mark.usefixtures("fast_switching")
def test_threads_import_lazily_from_both_versions(
    many_dirs: tuple[Path, Path], load_pair: LoadPair
) -> None:
    v1, v2 = many_dirs
    threads = 4
    for _round in range(8):
        pair = load_pair("pricing", old=str(v1), new=str(v2))
        start = threading.Barrier(threads)
        results: list[tuple[str, int, object]] = []

        def work(
            index: int,
            pair: dualrun.VersionPair = pair,
            start: threading.Barrier = start,
            results: list[tuple[str, int, object]] = results,
        ) -> None:
            start.wait()
            order = range(MANY) if index % 2 else reversed(range(MANY))
            for i in order:
                for version in pair if index % 3 else reversed(list(pair)):
                    how = (index + i) % 3
                    if how == 0:  # from the host, through the version
                        module = version.import_module(f"pricing.many.m{i}")
                    elif how == 1:  # the version's own importlib.import_module
                        module = version.import_module("pricing.many").get(i)
                    else:  # the host's importlib, on the private name
                        module = importlib.import_module(version.alias(f"pricing.many.m{i}"))
                    results.append((version.label, i, module.value()))

        run_threads(threads, work)
        assert len(results) == threads * MANY * 2
        for label, i, value in results:
            tag = "v1" if label == "old" else "v2"
            assert value == ((tag, i), f"{tag}-sub")
        for version in pair:
            assert len([n for n in version.modules() if ".many.m" in n]) == MANY
        assert real_names("pricing") == []
        pair.unload()


@pytest.mark.usefixtures("fast_switching")
def test_threads_loading_at_once(many_dirs: tuple[Path, Path]) -> None:
    v1, v2 = many_dirs
    threads = 4
    start = threading.Barrier(threads)
    pairs: list[dualrun.VersionPair] = []
    lock = threading.Lock()

    def work(index: int) -> None:
        start.wait()
        pair = dualrun.load("pricing", old=str(v1), new=str(v2))
        with lock:
            pairs.append(pair)
        for i in range(MANY):
            assert pair.old.import_module("pricing.many").get(i).value()[0] == ("v1", i)
            assert pair.new.import_module(f"pricing.many.m{i}").value()[0] == ("v2", i)

    try:
        run_threads(threads, work)
        assert len(pairs) == threads
        assert len({v.prefix for p in pairs for v in p}) == 2 * threads
    finally:
        for pair in pairs:
            pair.unload()
    assert dualrun_leftovers() == ([], [])


def test_importlib_util_and_resources_inside_a_version_see_the_version(
    write_tree: Callable[[str, Files], Path], load_pair: Callable[..., dualrun.VersionPair]
) -> None:
    def files(tag: str) -> Files:
        return {
            "pricing/__init__.py": (
                "import importlib.util\n"
                "from importlib import resources\n"
                "from importlib.resources import files\n"
                "def spec_origin():\n"
                "    return importlib.util.find_spec('pricing.rates').origin\n"
                "def rates_text():\n"
                "    return resources.files('pricing').joinpath('rates.txt').read_text()\n"
                "def rates_text_again():\n"
                "    return files('pricing').joinpath('rates.txt').read_text()\n"
            ),
            "pricing/rates.py": "",
            "pricing/rates.txt": f"rates {tag}\n",
        }

    old, new = write_tree("v1", files("v1")), write_tree("v2", files("v2"))
    pair = load_pair("pricing", old=str(old), new=str(new))
    for version, tag, root in ((pair.old, "v1", old), (pair.new, "v2", new)):
        assert version.module.spec_origin() == str(root / "pricing" / "rates.py")
        assert version.module.rates_text() == f"rates {tag}\n"
        assert version.module.rates_text_again() == f"rates {tag}\n"
    assert "pricing" not in sys.modules
