"""C extensions inside a version: what dualrun can see of them, and say.

A C extension is loaded once per file and process, so versions loaded from the same file share
its C state. And its C code imports by absolute name (``PyImport_ImportModule("markupsafe")``,
as markupsafe's ``_speedups`` does), which bypasses the version's ``__import__``: it reaches
the host's copy of the package, or fails. dualrun runs an extension's initialisation under
builtins whose ``__import__`` notices such an import, and warns with the module named.
"""

from __future__ import annotations

import _imp
import builtins
import importlib.machinery
import threading
import types
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dualrun.errors import DualrunWarning

_real_import = builtins.__import__
# PyImport_Import takes __import__ from the builtins of the innermost Python frame's globals:
# calling the C code from a function with globals of our own puts our __import__ in its path.
_TRAMPOLINE = compile(
    "def call(function, argument):\n    return function(argument)\n", "<dualrun>", "exec"
)


def extension_files(root: Path, tops: Sequence[str]) -> tuple[str, ...]:
    """The C extension files among the version's packages and top-level modules."""
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    found: list[str] = []
    for top in tops:
        for candidate in [root / top, root]:
            if candidate.is_dir():
                pattern = "**/*" if candidate != root else f"{top}.*"
                found += [str(p) for p in candidate.glob(pattern) if p.name.endswith(suffixes)]
    return tuple(sorted(set(found)))


def is_extension(loader: object) -> bool:
    return isinstance(loader, importlib.machinery.ExtensionFileLoader)


class ExtensionWatch:
    """Runs a version's C extensions so that absolute imports of the version's names are seen."""

    def __init__(
        self, label: str, source: str, tops: frozenset[str], strip: Callable[[str], str]
    ) -> None:
        self._label = label
        self._source = source
        self._tops = tops
        self._strip = strip
        self._warned: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def create(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module: types.ModuleType = self._call(spec.name, _imp.create_dynamic, spec)
        return module

    def exec(self, module: types.ModuleType) -> None:
        self._call(module.__name__, _imp.exec_dynamic, module)
        for value in list(vars(module).values()):  # a host module it keeps in its globals
            if (
                isinstance(value, types.ModuleType)
                and value.__name__.partition(".")[0] in self._tops
            ):
                self._warn(module.__name__, value.__name__)

    def _call(self, module: str, function: Callable[[Any], Any], argument: Any) -> Any:
        tops = self._tops

        def watching_import(
            name: str,
            globals: Any = None,  # the signature of __import__
            locals: Any = None,
            fromlist: Any = (),
            level: int = 0,
        ) -> Any:
            if level == 0 and name.partition(".")[0] in tops:
                self._warn(module, name)
            return _real_import(name, globals, locals, fromlist, level)

        namespace = dict(builtins.__dict__)
        namespace["__import__"] = watching_import
        trampoline: dict[str, Any] = {"__builtins__": namespace}
        exec(_TRAMPOLINE, trampoline)
        return trampoline["call"](function, argument)

    def _warn(self, module: str, imported: str) -> None:
        module = self._strip(module)
        with self._lock:
            if (module, imported) in self._warned:
                return
            self._warned.add((module, imported))
        warnings.warn(
            f"the {self._label!r} version ({self._source}): its C extension module {module} "
            f"imports {imported!r} by absolute name from C, which reaches the host's "
            f"{imported!r} (or fails) instead of the version's own, so it may hand out the "
            "host's objects or fall back silently; load a pure-Python build of the package "
            "to compare its own code",
            DualrunWarning,
            stacklevel=2,
        )
