"""Two versions of the same code in one process, each in a namespace of its own.

Each version owns a private module prefix (``_dualrun_<n>``). A meta path finder serves the
version's modules under that prefix, and every module of the version executes with a copy of
the builtins whose ``__import__`` maps the version's top-level names onto the prefix. So
``import pricing.rules``, ``from pricing import rules``, relative imports, imports inside
functions and ``importlib.import_module("pricing.rules")`` all reach the version's own copy;
the real name never enters ``sys.modules``; the standard library and third-party packages stay
shared with the host.
"""

from __future__ import annotations

import builtins
import importlib
import importlib.abc
import importlib.machinery
import importlib.metadata as md
import importlib.resources
import importlib.util
import itertools
import pkgutil
import re
import sys
import threading
import types
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from os import PathLike, fspath
from pathlib import Path
from typing import Any, Literal, cast

from dualrun._extensions import ExtensionWatch, extension_files, is_extension
from dualrun._metadata import metadata_module, own_distributions, shipped_top_levels
from dualrun.errors import DualrunWarning, VersionLoadError, VersionModuleNotFoundError
from dualrun.sources import materialize
from dualrun.targets import parse_target, walk

Label = Literal["old", "new"]
LABELS: tuple[Label, Label] = ("old", "new")
PREFIX_ROOT = "_dualrun_"
_PREFIX = re.compile(re.escape(PREFIX_ROOT) + r"\d+\.")

_ids = itertools.count(1)
_meta_path_lock = threading.Lock()
# CPython 3.11's importlib.invalidate_caches() deletes entries of sys.path_importer_cache it
# listed first: two threads loading at once could delete the same one (KeyError).
_invalidate_lock = threading.Lock()
_real_import = builtins.__import__


def strip_versions(text: str) -> str:
    """``text`` without the versions' private module prefixes (``_dualrun_3.pkg`` -> ``pkg``).

    Messages, reprs, type names and tracebacks pass through here both where they are compared
    and where they are shown, so the two versions' texts agree exactly when their code's do.
    """
    return _PREFIX.sub("", text) if PREFIX_ROOT in text else text


Failed = Callable[[Exception, str], VersionLoadError]


def _failed(label: str, source: str) -> Failed:
    """Turns an exception raised while importing a version's module into a VersionLoadError."""

    def failed(exc: Exception, module: str) -> VersionLoadError:
        module = strip_versions(module)
        try:
            message = strip_versions(str(exc))
        except Exception:
            message = "<the message could not be made>"
        cause = f"importing {module} raised {type(exc).__name__}: {message}"
        kind = (
            VersionModuleNotFoundError if isinstance(exc, ModuleNotFoundError) else VersionLoadError
        )
        error = kind(label, source, cause, module=module)
        if isinstance(exc, ImportError):  # what code that catches it may look at
            error.name = None if exc.name is None else strip_versions(exc.name)
            error.path = exc.path
        error.__cause__ = exc
        return error

    return failed


def _guard(failed: Failed, module: str, prefix: str, exc: Exception) -> VersionLoadError | None:
    """The error to raise instead of ``exc``, or None to let it pass.

    Errors raised while a version module executes are converted where it executes; here only
    a version module that does not exist is: ``exc`` names it under the version's prefix.
    """
    if isinstance(exc, VersionLoadError):
        return None
    if isinstance(exc, ModuleNotFoundError) and (exc.name or "").startswith(prefix + "."):
        return failed(exc, module)
    return None


class _VersionLoader:
    """Delegates to the real loader, but runs the module with the version's builtins."""

    def __init__(
        self,
        inner: Any,
        version_builtins: dict[str, Any],
        failed: Failed,
        watch: ExtensionWatch,
    ) -> None:
        self._inner = inner
        self._builtins = version_builtins
        self._failed = failed
        self._watch = watch if is_extension(inner) else None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        try:
            if self._watch is not None:
                return self._watch.create(spec)
            created: types.ModuleType | None = self._inner.create_module(spec)
        except VersionLoadError:
            raise
        except Exception as exc:  # a C extension's init, say
            raise self._failed(exc, spec.name) from exc
        return created

    def exec_module(self, module: types.ModuleType) -> None:
        module.__dict__["__builtins__"] = self._builtins
        try:
            if self._watch is not None:
                self._watch.exec(module)
            else:
                self._inner.exec_module(module)
        except VersionLoadError:
            raise  # a module it imports failed: that one is named
        except Exception as exc:
            raise self._failed(exc, module.__name__) from exc

    def __getattr__(self, name: str) -> Any:  # get_source, get_resource_reader, is_package...
        return getattr(self._inner, name)


class _VersionFinder:
    """Finds ``<prefix>.<top>...`` modules in the version's directory, and nothing else."""

    def __init__(
        self,
        prefix: str,
        root: Path,
        tops: frozenset[str],
        namespace: Any,
        failed: Failed,
        watch: ExtensionWatch,
    ) -> None:
        self.prefix = prefix
        self._dotted = prefix + "."
        self._root = [str(root)]
        self._tops = tops
        self._builtins = namespace
        self._failed = failed
        self._watch = watch

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith(self._dotted):
            return None
        rest = fullname[len(self._dotted) :]
        top, dot, _ = rest.partition(".")
        if top not in self._tops:
            return None
        search = path if dot else self._root
        if search is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, search)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            loader = _VersionLoader(spec.loader, self._builtins, self._failed, self._watch)
            spec.loader = cast(importlib.abc.Loader, loader)
        return spec

    def invalidate_caches(self) -> None:
        """Nothing cached here; the path finders keep their own caches."""


def _proxy(module: types.ModuleType, **overrides: Any) -> types.ModuleType:
    """A stand-in for ``module``: ``overrides`` first, everything else from the real module."""
    proxy = types.ModuleType(module.__name__, module.__doc__)
    proxy.__dict__.update(__getattr__=lambda attr: getattr(module, attr), **overrides)
    return proxy


def _version_builtins(
    prefix: str, tops: frozenset[str], failed: Failed, root: Path
) -> tuple[dict[str, Any], tuple[md.Distribution, ...]]:
    """A copy of the builtins whose ``__import__`` sends the version's names to ``prefix``,
    and the distributions the version ships (what its ``importlib.metadata`` answers first).

    A version module that does not exist raises a VersionModuleNotFoundError naming the version
    (still a ModuleNotFoundError, for code that guards optional imports).
    """

    def version_import(
        name: str,
        globals: dict[str, Any] | None = None,  # the signature of __import__
        locals: dict[str, Any] | None = None,
        fromlist: Sequence[str] | None = (),
        level: int = 0,
    ) -> types.ModuleType:
        if level == 0:
            top = name.partition(".")[0]
            if top in tops:
                try:
                    module = _real_import(f"{prefix}.{name}", globals, locals, fromlist, 0)
                except Exception as exc:
                    error = _guard(failed, getattr(exc, "name", None) or name, prefix, exc)
                    if error is None:
                        raise
                    raise error from exc
                return module if fromlist else sys.modules[f"{prefix}.{top}"]
            if top == "importlib":
                module = _real_import(name, globals, locals, fromlist, 0)
                if not fromlist:
                    return proxies["importlib"]
                return proxies.get(name, module)
        try:
            return _real_import(name, globals, locals, fromlist, level)
        except Exception as exc:
            error = _guard(failed, getattr(exc, "name", None) or name, prefix, exc)
            if error is None:
                raise
            raise error from exc

    def mapped(name: Any) -> Any:
        if isinstance(name, str) and not name.startswith(".") and name.partition(".")[0] in tops:
            return f"{prefix}.{name}"
        return name

    def import_module(name: str, package: str | None = None) -> types.ModuleType:
        try:
            return importlib.import_module(mapped(name), package)
        except Exception as exc:
            error = _guard(failed, getattr(exc, "name", None) or name, prefix, exc)
            if error is None:
                raise
            raise error from exc

    def find_spec(name: str, package: str | None = None) -> Any:
        return importlib.util.find_spec(mapped(name), package)

    def files(anchor: Any = None) -> Any:
        return importlib.resources.files(mapped(anchor))

    own = own_distributions(root, sorted(tops), import_module)
    proxies = {
        "importlib.util": _proxy(importlib.util, find_spec=find_spec),
        "importlib.resources": _proxy(importlib.resources, files=files),
        "importlib.metadata": metadata_module(own),
    }
    proxies["importlib"] = _proxy(
        importlib,
        import_module=import_module,
        __import__=version_import,
        util=proxies["importlib.util"],
        resources=proxies["importlib.resources"],
        metadata=proxies["importlib.metadata"],
    )
    namespace = dict(builtins.__dict__)
    namespace["__import__"] = version_import
    return namespace, own


class Version:
    """One version of the code, loaded under a private prefix.

    Made by :func:`dualrun.load`: ``label`` (``"old"``/``"new"``), ``source`` (as given),
    ``root`` (the directory its code is imported from), ``name`` (the package or module), and
    ``tops`` (the top-level names that belong to it).
    """

    def __init__(
        self, label: Label, source: str, root: Path, name: str, tops: tuple[str, ...]
    ) -> None:
        self.label: Label = label
        self.source = source
        self.root = root
        self.name = name
        self.tops = tops
        self.prefix = f"{PREFIX_ROOT}{next(_ids)}"
        self.extension_modules: tuple[str, ...] = ()
        self._failed = _failed(label, source)
        namespace, self.distributions = _version_builtins(
            self.prefix, frozenset(tops), self._failed, root
        )
        watch = ExtensionWatch(label, source, frozenset(tops), strip_versions)
        self._finder = _VersionFinder(
            self.prefix, root, frozenset(tops), namespace, self._failed, watch
        )
        self._loaded = False
        self.module: types.ModuleType = types.ModuleType(self.prefix)

    def __repr__(self) -> str:
        state = "loaded" if self._loaded else "unloaded"
        return f"<Version {self.label} {self.source!r} as {self.prefix} ({state})>"

    @property
    def loaded(self) -> bool:
        """False once :meth:`unload` ran (or a retirement unloaded it)."""
        return self._loaded

    def _install(self) -> None:
        root_pkg = types.ModuleType(self.prefix, "dualrun namespace of one loaded version")
        root_pkg.__path__ = []
        root_pkg.__spec__ = importlib.machinery.ModuleSpec(self.prefix, None, is_package=True)
        with _meta_path_lock:
            sys.modules[self.prefix] = root_pkg
            # A new list, not an edit in place: an import running in another thread keeps
            # iterating the list it started with.
            sys.meta_path = [self._finder, *sys.meta_path]
        self._loaded = True

    @property
    def owned_prefixes(self) -> tuple[str, ...]:
        """What the names of the version's modules start with (each ends with a dot)."""
        return (self.prefix + ".",)

    def alias(self, name: str) -> str:
        """The private name under which the version's module ``name`` lives in ``sys.modules``."""
        if name.partition(".")[0] not in self.tops:
            raise ValueError(
                f"{name!r} is not part of the {self.label!r} version; its top-level names are "
                f"{', '.join(self.tops)} (pass packages=... to load() to add more)"
            )
        return f"{self.prefix}.{name}"

    def import_module(self, name: str) -> types.ModuleType:
        """Import the version's module ``name`` (e.g. ``"pricing.rules"``) and return it.

        A module that is missing or fails while it executes raises VersionLoadError naming the
        version, its source and the module, chained to the cause.
        """
        if not self._loaded:
            raise RuntimeError(f"the {self.label!r} version ({self.source}) has been unloaded")
        alias = self.alias(name)
        try:
            return importlib.import_module(alias)
        except Exception as exc:
            error = _guard(self._failed, getattr(exc, "name", None) or alias, self.prefix, exc)
            if error is None:
                raise
            raise error from exc

    def submodules(self) -> list[str]:
        """Every module the version's packages contain (``__main__`` modules left out)."""
        found: list[str] = []
        for top in self.tops:
            path = getattr(self.import_module(top), "__path__", None)
            if path is not None:
                found += _walk_modules([str(p) for p in path], f"{top}.")
        return found

    def preload(self, modules: Iterable[str] | bool = True) -> None:
        """Import ``modules`` (``True``: every module of the version) now, to refuse a broken
        version before it serves."""
        names = self.submodules() if modules is True else list(modules or ())
        for name in names:
            self.import_module(name)

    def resolve(self, target: str) -> Any:
        """The object at ``target`` (``"pkg.sub:Qual.name"``) in this version."""
        module_name, qualname = parse_target(target)
        describe = f"target {target!r} does not exist in the {self.label!r} version"
        return walk(self.import_module(module_name), qualname, describe)[1]

    def owns(self, obj: object) -> bool:
        """Whether ``obj`` (a module, class or function) was defined by this version's code."""
        module = getattr(obj, "__module__", None) or getattr(obj, "__name__", "")
        return isinstance(module, str) and (
            module == self.prefix or module.startswith(self.prefix + ".")
        )

    def modules(self) -> list[str]:
        """Names of this version's modules currently in ``sys.modules``."""
        dotted = self.prefix + "."
        return [n for n in list(sys.modules) if n == self.prefix or n.startswith(dotted)]

    def unload(self) -> None:
        """Remove the version's modules from ``sys.modules`` and its finder from the meta path.

        Objects already handed out keep working; imports the version would run later fail.
        """
        with _meta_path_lock:
            for name in self.modules():
                sys.modules.pop(name, None)
            if self._finder in sys.meta_path:
                sys.meta_path = [f for f in sys.meta_path if f is not self._finder]
            for key in [k for k in sys.path_importer_cache if k.startswith(str(self.root))]:
                sys.path_importer_cache.pop(key, None)
        self._loaded = False


class _Installed:
    """The source ``dualrun.INSTALLED``: the host's own imported package, not a copy."""

    def __repr__(self) -> str:
        return "dualrun.INSTALLED"

    def __str__(self) -> str:
        return "installed"


INSTALLED: Any = _Installed()


class InstalledVersion(Version):
    """The host's own package serving as a version: the same modules, the same classes.

    Nothing is copied or isolated: ``import_module`` is the host's import, the version's objects
    are the host's objects (``isinstance`` and pickling work as without dualrun), and unloading
    stops serving from it but leaves the host's modules where the host imported them.
    """

    def __init__(self, label: Label, name: str, tops: tuple[str, ...]) -> None:
        # Version.__init__ is not called: there is no prefix, finder or copy of the builtins.
        self.label = label
        self.source = str(INSTALLED)
        self.name = name
        self.tops = tops
        self.prefix = ""
        self.extension_modules = ()
        self.distributions = ()
        self._failed = _failed(label, self.source)
        self._loaded = False
        self.module = types.ModuleType(tops[0])
        self.root = Path.cwd()

    def __repr__(self) -> str:
        state = "loaded" if self._loaded else "unloaded"
        return f"<Version {self.label} installed {', '.join(self.tops)} ({state})>"

    @property
    def owned_prefixes(self) -> tuple[str, ...]:
        return tuple(f"{top}." for top in self.tops)

    def _install(self) -> None:
        self._loaded = True

    def alias(self, name: str) -> str:
        super().alias(name)  # the same check: the name must be one of the version's
        return name

    def import_module(self, name: str) -> types.ModuleType:
        """The host's module ``name``, imported as the host imports it."""
        if not self._loaded:
            raise RuntimeError(f"the {self.label!r} version ({self.source}) has been unloaded")
        try:
            return importlib.import_module(self.alias(name))
        except VersionLoadError:
            raise
        except Exception as exc:
            raise self._failed(exc, name) from exc

    def owns(self, obj: object) -> bool:
        module = getattr(obj, "__module__", None) or getattr(obj, "__name__", "")
        return isinstance(module, str) and module.partition(".")[0] in self.tops

    def modules(self) -> list[str]:
        return [n for n in list(sys.modules) if n.partition(".")[0] in self.tops]

    def unload(self) -> None:
        """Stop serving; the host's modules stay imported (the host still uses them)."""
        self._loaded = False


def _installed_version(
    label: Label, name: str, tops: tuple[str, ...], modules: bool | tuple[str, ...]
) -> Version:
    version = InstalledVersion(label, name, tops)
    version._install()
    try:
        for top in tops:
            version.import_module(top)
        version.import_module(name)
        if modules:
            version.preload(modules)
    except BaseException:
        version.unload()
        raise
    version.module = sys.modules[tops[0]]
    origin = getattr(version.module, "__file__", None)
    if origin:
        path = Path(origin).parent
        version.root = path.parent if hasattr(version.module, "__path__") else path
    return version


def _walk_modules(path: list[str], prefix: str) -> list[str]:
    """Module names found under ``path`` (without importing anything), depth first."""
    found: list[str] = []
    for info in pkgutil.iter_modules(path):
        if info.name == "__main__":  # running it would run the package's command line
            continue
        found.append(prefix + info.name)
        if info.ispkg:
            found += _walk_modules(
                [str(Path(p) / info.name) for p in path], f"{prefix}{info.name}."
            )
    return found


@dataclass(frozen=True)
class VersionPair:
    """The old and the new version of the same code."""

    old: Version
    new: Version

    def __getitem__(self, label: str) -> Version:
        if label == "old":
            return self.old
        if label == "new":
            return self.new
        raise ValueError(f"a version is 'old' or 'new', got {label!r}")

    def __iter__(self) -> Iterator[Version]:
        return iter((self.old, self.new))

    def unload(self) -> None:
        """Unload both versions."""
        self.old.unload()
        self.new.unload()


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not all(p.isidentifier() for p in name.split(".")):
        raise ValueError(f"name is a dotted module name such as 'pricing', got {name!r}")
    return name


def _check_packages(name: str, packages: Iterable[str] | None) -> tuple[str, ...]:
    tops = [name.partition(".")[0]]
    if packages is None:
        return tuple(tops)
    if isinstance(packages, str | bytes):
        raise ValueError(f"packages is a list of top-level names, got the string {packages!r}")
    if not isinstance(packages, Iterable):
        raise ValueError(f"packages is a list of top-level names (or None), got {packages!r}")
    for extra in packages:
        if not isinstance(extra, str) or not extra.isidentifier():
            raise ValueError(f"packages lists top-level module names (identifiers), got {extra!r}")
        if extra not in tops:
            tops.append(extra)
    return tuple(tops)


def _locate(label: str, source: str, base: Path, tops: tuple[str, ...]) -> Path:
    """The directory under ``base`` (itself or its ``src/``) that holds all of ``tops``."""
    with _invalidate_lock:
        importlib.invalidate_caches()
    candidates = []
    for root in (base, base / "src"):
        if root.is_dir():
            specs = [importlib.machinery.PathFinder.find_spec(top, [str(root)]) for top in tops]
            if all(spec is not None for spec in specs):
                # A plain directory named like the package (a namespace portion) loses to a
                # real package or module in src/.
                if all(spec is not None and spec.origin is not None for spec in specs):
                    return root
                candidates.append(root)
    if candidates:
        return candidates[0]
    missing = ", ".join(repr(t) for t in tops)
    raise VersionLoadError(
        label,
        source,
        f"{str(base)!r} does not contain the package or module {missing} "
        f"(looked for {tops[0]}/__init__.py or {tops[0]}.py there and in its src/)",
    )


def _shipped_tops(label: str, source: str, root: Path, tops: tuple[str, ...]) -> tuple[str, ...]:
    """``tops`` and every other top-level module the version's distribution installs.

    A wheel's ``top_level.txt`` / ``RECORD`` lists them (attrs ships ``attr`` and ``attrs``);
    they belong to the version as much as the one named. A mypyc-compiled wheel is refused.
    """
    shipped = shipped_top_levels(root, tops)
    compiled = sorted(n for n in shipped if n.endswith("__mypyc"))
    if compiled:
        raise VersionLoadError(
            label,
            source,
            f"it is compiled with mypyc (it ships the shared library {compiled[0]!r} beside "
            f"{tops[0]}/): mypyc's compiled modules import each other by absolute name from C, "
            "which cannot be redirected to the version, so both versions would run the same "
            "code. Load the pure-Python wheel instead (the py3-none-any one, e.g. `pip download "
            f"--no-deps --no-binary :all: {tops[0]}==VERSION`), or a source checkout",
        )
    extra = [
        top
        for top in sorted(shipped)
        if top.isidentifier()
        and top not in tops
        and importlib.machinery.PathFinder.find_spec(top, [str(root)]) is not None
    ]
    return (*tops, *extra)


Preload = bool | Iterable[str]


def _check_preload(preload: object, tops: tuple[str, ...]) -> bool | tuple[str, ...]:
    if isinstance(preload, bool):
        return preload
    if preload is None:
        return False
    if isinstance(preload, str | bytes) or not isinstance(preload, Iterable):
        raise ValueError(
            f"preload is True (every module of the version), False, or a list of module names "
            f"such as ['pricing.rules'], got {preload!r}"
        )
    names = tuple(preload)
    for module in names:
        if not isinstance(module, str) or not all(p.isidentifier() for p in module.split(".")):
            raise ValueError(f"preload lists dotted module names, got {module!r}")
        if module.partition(".")[0] not in tops:
            raise ValueError(
                f"preload names {module!r}, which is not part of the version; its top-level "
                f"names are {', '.join(tops)} (pass packages=... to load() to add more)"
            )
    return names


def load_version(
    label: Label,
    name: str,
    source: str,
    packages: Iterable[str] | None = None,
    preload: Preload = False,
) -> Version:
    """Load one version of ``name`` from ``source`` (or ``INSTALLED``) under ``label``
    (``"old"``/``"new"``); ``packages`` and ``preload`` as for :func:`load`."""
    if label not in LABELS:
        raise ValueError(f"a version label is 'old' or 'new', got {label!r}")
    name = _check_name(name)
    tops = _check_packages(name, packages)
    modules = _check_preload(preload, tops)
    if source is INSTALLED:
        return _installed_version(label, name, tops, modules)
    if not isinstance(source, str | PathLike):
        raise VersionLoadError(
            label,
            repr(source),
            "a source is a directory, a .whl or .zip file, or 'git:REV' / 'git:REPO@REV'",
        )
    source_text = str(fspath(source))
    root = _locate(label, source_text, materialize(label, source_text), tops)
    named = tops
    tops = _shipped_tops(label, source_text, root, tops)
    version = Version(label, source_text, root, name, tops)
    version.extension_modules = extension_files(root, tops)
    if version.extension_modules:
        warnings.warn(
            f"the {label!r} version ({source_text}) contains C extension modules "
            f"({', '.join(version.extension_modules)}): a C extension shares its state with any "
            "other version loaded from the same file, and some refuse to load twice",
            DualrunWarning,
            stacklevel=3,
        )
    version._install()
    try:
        for top in named:
            version.import_module(top)
        version.import_module(name)
        version.module = sys.modules[version.alias(tops[0])]
        if modules:
            version.preload(modules)
    except BaseException as exc:
        version.unload()
        if isinstance(exc, KeyboardInterrupt | SystemExit | VersionLoadError):
            raise
        raise VersionLoadError(
            label, source_text, f"executing the version's code raised {type(exc).__name__}: {exc}"
        ) from exc
    return version


def load(
    name: str,
    old: str,
    new: str,
    packages: Iterable[str] | None = None,
    preload: Preload = False,
) -> VersionPair:
    """Load the old and the new version of ``name`` side by side.

    ``old`` and ``new`` are each a directory that contains the package or module, a wheel or
    zip file, or ``git:REV`` / ``git:REPO_PATH@REV``; one of them may be ``dualrun.INSTALLED``,
    the host's own imported package (usually ``old``), used as it is. ``packages`` names
    further top-level modules that ship with the version. ``preload=True`` imports every module
    of both versions now (a list imports those named), so that a version that fails to import
    is refused here rather than at its first call. A failed load leaves nothing behind.
    """
    packages = None if packages is None else _check_packages(_check_name(name), packages)
    preload = _check_preload(preload, _check_packages(_check_name(name), packages))
    if old is INSTALLED and new is INSTALLED:
        raise ValueError(
            "old and new are both dualrun.INSTALLED: at most one version is the host's own "
            "package; the other is a directory, a wheel or zip file, or 'git:REV'"
        )
    old_version = load_version("old", name, old, packages, preload)
    try:
        new_version = load_version("new", name, new, packages, preload)
    except BaseException:
        old_version.unload()
        raise
    return VersionPair(old_version, new_version)
