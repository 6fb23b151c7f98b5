"""Shared fixtures for the version-loading tests.

* every test session extracts archives and git revisions into a temporary cache, never into
  ``~/.cache``;
* every test must leave no ``_dualrun_`` module in ``sys.modules`` and no dualrun finder on
  ``sys.meta_path`` behind (``load_pair`` / ``load_one`` unload what they loaded);
* ``write_tree`` writes a package tree into ``tmp_path``; ``pricing_files`` is the two-version
  ``pricing`` package most tests load.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import dualrun
from dualrun.loading import PREFIX_ROOT, _VersionFinder

Files = dict[str, str]


def dualrun_leftovers() -> tuple[list[str], list[object]]:
    """The private modules and the dualrun finders currently installed."""
    modules = sorted(n for n in sys.modules if n.startswith(PREFIX_ROOT))
    finders = [f for f in sys.meta_path if isinstance(f, _VersionFinder)]
    return modules, finders


@pytest.fixture(scope="session", autouse=True)
def dualrun_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Archives and git revisions are extracted under a per-session temporary directory."""
    path = tmp_path_factory.mktemp("dualrun-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DUALRUN_CACHE_DIR", str(path))
        yield path


@pytest.fixture(scope="session", autouse=True)
def wrapt_import_hook_finder() -> None:
    """wrapt puts one import-hook finder on ``sys.meta_path`` per process, the first time a
    post-import hook is registered (``intercept()`` of a module not imported yet), and leaves it
    there: install it before the per-test ``sys.meta_path`` check below takes its snapshot."""
    import wrapt

    wrapt.register_post_import_hook(lambda module: None, "wrapt")  # imported: runs at once


@pytest.fixture(autouse=True)
def no_dualrun_leftovers() -> Iterator[None]:
    """Fail the test that leaves a loaded version behind (and clean up for the next one)."""
    assert dualrun_leftovers() == ([], []), "an earlier test left a version loaded"
    meta_path_before = list(sys.meta_path)
    yield
    modules, finders = dualrun_leftovers()
    for name in modules:
        sys.modules.pop(name, None)
    for finder in finders:
        sys.meta_path.remove(finder)
    assert not modules, f"the test left these private modules in sys.modules: {modules}"
    assert not finders, f"the test left {len(finders)} dualrun finder(s) on sys.meta_path"
    assert sys.meta_path == meta_path_before, "sys.meta_path changed"


@pytest.fixture
def load_pair() -> Iterator[Callable[..., dualrun.VersionPair]]:
    """``dualrun.load`` that unloads, at teardown, every pair it loaded."""
    pairs: list[dualrun.VersionPair] = []

    def load(*args: Any, **kwargs: Any) -> dualrun.VersionPair:
        pair = dualrun.load(*args, **kwargs)
        pairs.append(pair)
        return pair

    yield load
    for pair in pairs:
        pair.unload()


@pytest.fixture
def load_one() -> Iterator[Callable[..., dualrun.Version]]:
    """``dualrun.load_version`` that unloads, at teardown, every version it loaded."""
    versions: list[dualrun.Version] = []

    def load(*args: Any, **kwargs: Any) -> dualrun.Version:
        version = dualrun.load_version(*args, **kwargs)
        versions.append(version)
        return version

    yield load
    for version in versions:
        version.unload()


def write_files(root: Path, files: Files) -> Path:
    """Write ``{relative path: source}`` under ``root`` (sources are dedented)."""
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
    return root


@pytest.fixture
def write_tree(tmp_path: Path) -> Callable[[str, Files], Path]:
    """``write_tree("v1", {"pricing/__init__.py": "..."})`` writes the files under tmp_path/v1."""

    def write(where: str, files: Files) -> Path:
        return write_files(tmp_path / where, files)

    return write


# The forms of import a version's code uses at call time, each on a module of its own that
# nothing imports before the call (pricing/lazy/<form>.py).
LAZY_FORMS = (
    "absolute",
    "import_as",
    "from_package",
    "relative",
    "relative_attribute",
    "importlib_module",
    "from_importlib",
    "importlib_relative",
    "dunder_import",
    "dunder_import_top",
    "dunder_import_relative",
    "parent_relative",
)

PRICING_TEMPLATE: Files = {
    "pricing/__init__.py": '''
        """The pricing package, version TAG."""
        VERSION = "TAG"

        from pricing import registry
        from . import rules
        import pricing.sub


        def version():
            return VERSION
    ''',
    "pricing/sub.py": """
        VALUE = "TAG-sub"


        def value():
            return VALUE
    """,
    "pricing/registry.py": """
        ITEMS = []


        def register(item):
            ITEMS.append(item)
            return len(ITEMS)
    """,
    "pricing/rules.py": """
        from pricing.sub import value

        FACTOR = int("TAG"[1:])


        class Quote:
            def __init__(self, amount):
                self.amount = amount

            def total(self):
                return (self.amount * FACTOR, value())

            @classmethod
            def make(cls, amount):
                return cls(amount)
    """,
    "pricing/toplevel.py": """
        import importlib
        from importlib import import_module

        import pricing.sub
        import pricing.sub as aliased_sub
        from pricing import sub as from_sub
        from pricing.sub import value as from_value
        from . import sub as relative_sub
        from .sub import value as relative_value

        TOP = pricing
        SEEN = {
            "import pricing.sub": pricing.sub,
            "import pricing.sub as m": aliased_sub,
            "from pricing import sub": from_sub,
            "from . import sub": relative_sub,
            "importlib.import_module": importlib.import_module("pricing.sub"),
            "from importlib import import_module": import_module("pricing.sub"),
            "importlib.import_module relative": importlib.import_module(".sub", __package__),
            "__import__ fromlist": __import__("pricing.sub", fromlist=["value"]),
            "__import__": __import__("pricing.sub").sub,
            "__import__ level 1": __import__("sub", globals(), None, ["value"], 1),
        }
        FUNCTIONS = {
            "from pricing.sub import value": from_value,
            "from .sub import value": relative_value,
        }
    """,
    "pricing/calltime.py": """
        def absolute():
            import pricing.lazy.absolute

            return pricing.lazy.absolute


        def import_as():
            import pricing.lazy.import_as as module

            return module


        def from_package():
            from pricing.lazy import from_package

            return from_package


        def relative():
            from .lazy import relative

            return relative


        def relative_attribute():
            from .lazy.relative_attribute import VALUE, __name__ as name
            import sys

            return sys.modules[name]


        def importlib_module():
            import importlib

            return importlib.import_module("pricing.lazy.importlib_module")


        def from_importlib():
            from importlib import import_module

            return import_module("pricing.lazy.from_importlib")


        def importlib_relative():
            import importlib

            return importlib.import_module(".lazy.importlib_relative", __package__)


        def dunder_import():
            return __import__("pricing.lazy.dunder_import", fromlist=["VALUE"])


        def dunder_import_top():
            return __import__("pricing.lazy.dunder_import_top").lazy.dunder_import_top


        def dunder_import_relative():
            return __import__("lazy.dunder_import_relative", globals(), None, ["VALUE"], 1)


        def parent_relative():
            from pricing.deep import inner

            return inner.parent_lazy()
    """,
    "pricing/lazy/__init__.py": '''
        """Modules nothing imports until a function of pricing.calltime runs."""
    ''',
    **{f"pricing/lazy/{form}.py": f'VALUE = "TAG-{form}"\n' for form in LAZY_FORMS},
    "pricing/deep/__init__.py": """
        from .. import sub as parent_sub
    """,
    "pricing/deep/inner.py": """
        from .. import VERSION as PARENT_VERSION
        from .. import sub
        from ..sub import value


        def parent_lazy():
            from ..lazy import parent_relative

            return parent_relative
    """,
    "pricing/deep/deeper/__init__.py": "",
    "pricing/deep/deeper/leaf.py": """
        from ... import VERSION as ROOT_VERSION
        from ... import sub
        from ...deep import inner
        from .. import parent_sub
    """,
    "pricing/cycle_a.py": """
        import pricing.cycle_b

        NAME = "TAG-a"


        def a():
            return NAME + "+" + pricing.cycle_b.b()
    """,
    "pricing/cycle_b.py": """
        from pricing import cycle_a


        def b():
            return "b-of-" + cycle_a.NAME
    """,
    "pricing/cycle_c.py": """
        from . import cycle_d

        NAME = "TAG-c"


        def c():
            return cycle_d.d()
    """,
    "pricing/cycle_d.py": """
        from . import cycle_c


        def d():
            return "d-of-" + cycle_c.NAME
    """,
    "pricing/shared.py": """
        import collections.abc
        import json
        from json import dumps

        import wrapt


        def json_at_call_time():
            import json as j

            return j


        def importlib_util_spec(name):
            import importlib.util

            return importlib.util.find_spec(name)
    """,
    "pricing/boom.py": """
        def explode(amount):
            raise ValueError(f"boom TAG {amount}")  # the boom line of TAG
    """,
}


def pricing_files(tag: str) -> Files:
    """The ``pricing`` package of version ``tag`` ("v1", "v2", ...): values carry the tag."""
    return {
        path: textwrap.dedent(text).replace("TAG", tag) for path, text in PRICING_TEMPLATE.items()
    }


@pytest.fixture
def pricing_dirs(write_tree: Callable[[str, Files], Path]) -> tuple[Path, Path]:
    """Two directories, tmp_path/v1 and tmp_path/v2, each holding a version of ``pricing``."""
    return write_tree("v1", pricing_files("v1")), write_tree("v2", pricing_files("v2"))


@pytest.fixture
def versions(
    pricing_dirs: tuple[Path, Path], load_pair: Callable[..., dualrun.VersionPair]
) -> dualrun.VersionPair:
    """Both versions of ``pricing`` loaded (old = v1, new = v2)."""
    v1, v2 = pricing_dirs
    return load_pair("pricing", old=str(v1), new=str(v2))


def git(repo: Path, *args: str) -> str:
    """Run git in ``repo`` and return its output."""
    done = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


@pytest.fixture
def git_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A git that ignores the user's configuration and never finds a repository above tmp_path."""
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "no-gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    for who in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{who}_NAME", "Test")
        monkeypatch.setenv(f"GIT_{who}_EMAIL", "test@example.com")


@pytest.fixture
def servers(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    """Start real servers (``servers.start("gunicorn", workers=2, env={...})``, see
    ``tests/servers.py``); all are stopped at teardown, and their output is printed if the
    test failed."""
    from servers import Servers

    started = Servers(tmp_path)
    try:
        yield started
    finally:
        started.stop_all()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            for server in started.started:
                print(f"--- {server.kind} output ({server.log}) ---\n{server.output()}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the test item, so fixtures can tell whether it failed."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
