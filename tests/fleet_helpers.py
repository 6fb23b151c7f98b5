"""Version pairs whose every callable returns the label of the version that ran it, dispatchers
with a control, and a wait loop, for the control and fleet tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from routing_helpers import unique, write_versions

import dualrun


def eventually(check: Callable[[], bool], timeout: float = 5.0) -> float:
    """Seconds until ``check()`` held; fails the test after ``timeout``."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            pytest.fail(f"not within {timeout} s")
        time.sleep(0.005)
    return time.monotonic() - start


class Lab:
    """Version pairs and dispatchers made by one test; everything is undone by cleanup()."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pairs: list[dualrun.VersionPair] = []
        self.dispatchers: list[dualrun.Dispatcher] = []

    def pair(self) -> dualrun.VersionPair:
        name = unique("fleetpkg")
        old, new = write_versions(self.root / name, name)
        versions = dualrun.load(name, old=str(old), new=str(new))
        self.pairs.append(versions)
        return versions

    def third(self, versions: dualrun.VersionPair, label: str = "third") -> Path:
        """Another candidate of the same package, whose callables return ``label``."""
        name = versions.old.name
        _, new = write_versions(self.root / f"{name}-{label}", name)
        (new / name / "__init__.py").write_text(f"VERSION = {label!r}\n")
        return new

    def dispatcher(self, versions: dualrun.VersionPair, **kwargs: Any) -> dualrun.Dispatcher:
        d = dualrun.Dispatcher(versions, **kwargs)
        self.dispatchers.append(d)
        return d

    def cleanup(self) -> None:
        for d in self.dispatchers:
            d.close(timeout=5)
        for d in self.dispatchers:
            d.wait_retired(5, force=True)
            for v in {id(v): v for v in d.versions}.values():
                v.unload()
        for pair in self.pairs:
            pair.unload()


def served(fn: Any, key: object, pin: str | None = None) -> str:
    """Which version served ``fn([1])`` for request ``key``."""
    with dualrun.context(key=key, pin=pin):  # type: ignore[arg-type]
        return str(fn([1])[0])
