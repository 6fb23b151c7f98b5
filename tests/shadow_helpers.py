"""Small version pairs and host modules for the shadow, comparison and side-effect tests.

``Lab(tmp_path)`` writes and loads version pairs whose ``engine`` module holds the code a test
gives for the old and the new version, writes host packages onto ``sys.path``, makes
dispatchers, and cleans everything up (gates released, dispatchers closed, versions unloaded,
host modules forgotten) in :meth:`Lab.cleanup`.
"""

from __future__ import annotations

import sys
import textwrap
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

from routing_helpers import unique

import dualrun

ENGINE_HEADER = """\
import asyncio
import threading
import time
import uuid

from . import VERSION

"""


class Lab:
    """Version pairs, host packages and dispatchers made by one test."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pairs: list[dualrun.VersionPair] = []
        self.dispatchers: list[dualrun.Dispatcher] = []
        self.gates: list[threading.Event] = []
        self.hosts: list[str] = []
        self.name = ""

    def pair(self, old: str, new: str, common: str = "") -> dualrun.VersionPair:
        """Load a package whose ``engine`` module is ``common`` + ``old`` (or ``new``)."""
        name = unique("shadowpkg")
        dirs = []
        for label, body in (("old", old), ("new", new)):
            package = self.root / name / label / name
            package.mkdir(parents=True)
            (package / "__init__.py").write_text(f"VERSION = {label!r}\n")
            source = ENGINE_HEADER + textwrap.dedent(common) + "\n" + textwrap.dedent(body)
            (package / "engine.py").write_text(source)
            dirs.append(package.parent)
        versions = dualrun.load(name, old=str(dirs[0]), new=str(dirs[1]))
        self.pairs.append(versions)
        self.name = name
        return versions

    def target(self, qualname: str, versions: dualrun.VersionPair | None = None) -> str:
        name = versions.old.name if versions is not None else self.name
        return f"{name}.engine:{qualname}"

    def engine(self, versions: dualrun.VersionPair, label: str) -> ModuleType:
        """The ``engine`` module of version ``label``."""
        module: ModuleType = versions[label].import_module(f"{versions.old.name}.engine")
        return module

    def dispatcher(self, versions: dualrun.VersionPair, **kwargs: Any) -> dualrun.Dispatcher:
        d = dualrun.Dispatcher(versions, **kwargs)
        self.dispatchers.append(d)
        return d

    def gate(self, module: ModuleType, name: str = "GATE") -> threading.Event:
        """An event set as ``module.<name>``; released at cleanup so no shadow hangs for long."""
        event = threading.Event()
        setattr(module, name, event)
        self.gates.append(event)
        return event

    def host(self, files: dict[str, str]) -> str:
        """Write a host package ``host_<n>`` with ``files`` onto ``sys.path``; return its name."""
        name = unique("host")
        package = self.root / "hosts" / name
        package.mkdir(parents=True)
        (package / "__init__.py").write_text("")
        for relative, text in files.items():
            (package / relative).write_text(textwrap.dedent(text))
        if str(self.root / "hosts") not in sys.path:
            sys.path.insert(0, str(self.root / "hosts"))
        self.hosts.append(name)
        return name

    def cleanup(self) -> None:
        for gate in self.gates:
            gate.set()
        for d in self.dispatchers:
            d.close(timeout=5)
        for pair in self.pairs:
            pair.unload()
        for name in self.hosts:
            for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
                del sys.modules[module]
        hosts = str(self.root / "hosts")
        while hosts in sys.path:
            sys.path.remove(hosts)


def route_report(d: dualrun.Dispatcher, target: str) -> Any:
    """The report of one route."""
    return d.report().route(target)


def accounted(report: Any) -> int:
    """Every sampled call ends as exactly one of these."""
    total: int = (
        report.comparisons
        + report.timeouts
        + report.dropped
        + report.skipped
        + report.internal_errors
    )
    return total
