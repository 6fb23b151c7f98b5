"""Version sources, dispatchers and clean-up for the gate, rollout, lifecycle and hot-swap tests.

``Bench(tmp_path)`` writes versions of one package (``engine`` module) into source directories,
one per tag, so that a test can load a pair and later swap in further candidates. Each version's
``engine.quote(x)`` returns ``(TAG, namespace, 2 * x)`` (``+ 1`` while the module flag ``DIVERGE``
is true), so a caller sees which source and which loaded namespace served it; a version blocks
in ``quote`` while its module's ``GATE`` event is set and not released. :meth:`Bench.cleanup`
releases the gates, closes the dispatchers, waits for (or forces) pending retirements and unloads
every version still loaded.
"""

from __future__ import annotations

import itertools
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import dualrun
from dualrun.loading import PREFIX_ROOT, _VersionFinder

_ids = itertools.count()

ENGINE = """\
import threading

from . import VERSION

NAMESPACE = __name__.partition(".")[0]
DIVERGE = False
GATE = None
ENTERED = threading.Event()


def quote(x):
    gate = GATE
    if gate is not None:
        ENTERED.set()
        gate.wait(10)
    return (VERSION, NAMESPACE, 2 * x + (1 if DIVERGE else 0))


def version():
    return VERSION
"""


# Who served (tag, namespace) differs between versions by design: comparisons leave it out.
SERVED_BY = ("$[0]", "$[1]")


def shadow(primary: str = "old", **kwargs: Any) -> dualrun.Shadow:
    """A shadow that compares the quoted value only."""
    return dualrun.Shadow(primary, ignore=SERVED_BY, **kwargs)


def namespaces() -> set[str]:
    """The loaded version namespaces (``_dualrun_<n>`` roots in ``sys.modules``)."""
    return {n.partition(".")[0] for n in sys.modules if n.startswith(PREFIX_ROOT)}


def private_module_count() -> int:
    return sum(1 for n in sys.modules if n.startswith(PREFIX_ROOT))


def finder_count() -> int:
    return sum(1 for f in sys.meta_path if isinstance(f, _VersionFinder))


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``condition`` until it is true or ``timeout`` runs out; return its last value."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return bool(condition())
        time.sleep(0.002)
    return True


class Bench:
    """Sources of one package, the pairs and dispatchers made from them, and the clean-up."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.name = f"lifepkg_{next(_ids)}"
        self.pairs: list[dualrun.VersionPair] = []
        self.dispatchers: list[dualrun.Dispatcher] = []
        self.gates: list[threading.Event] = []

    @property
    def target(self) -> str:
        return f"{self.name}.engine:quote"

    def source(self, tag: str, engine: str = ENGINE, init: str | None = None) -> str:
        """Write version ``tag`` of the package into a directory of its own; return the path."""
        package = self.root / tag / self.name
        package.mkdir(parents=True, exist_ok=True)
        (package / "__init__.py").write_text(
            f"VERSION = {tag!r}\n" if init is None else textwrap.dedent(init)
        )
        (package / "engine.py").write_text(textwrap.dedent(engine))
        return str(package.parent)

    def pair(
        self, old: str = "A", new: str = "B", old_engine: str = ENGINE, new_engine: str = ENGINE
    ) -> dualrun.VersionPair:
        versions = dualrun.load(
            self.name, old=self.source(old, old_engine), new=self.source(new, new_engine)
        )
        self.pairs.append(versions)
        return versions

    def dispatcher(self, versions: dualrun.VersionPair, **kwargs: Any) -> dualrun.Dispatcher:
        d = dualrun.Dispatcher(versions, **kwargs)
        self.dispatchers.append(d)
        return d

    def engine(self, version: dualrun.Version) -> ModuleType:
        module: ModuleType = version.import_module(f"{self.name}.engine")
        return module

    def block(self, version: dualrun.Version) -> tuple[threading.Event, threading.Event]:
        """Make ``quote`` of ``version`` block: returns (entered, release)."""
        module = self.engine(version)
        release = threading.Event()
        self.gates.append(release)
        module.GATE = release
        entered: threading.Event = module.ENTERED
        return entered, release

    def cleanup(self) -> None:
        for gate in self.gates:
            gate.set()
        for d in self.dispatchers:
            d.close(timeout=5)
            d.wait_retired(5, force=True)
            for version in d.versions:
                version.unload()
        for pair in self.pairs:
            pair.unload()
