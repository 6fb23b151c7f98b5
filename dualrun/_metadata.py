"""``importlib.metadata`` as a loaded version sees it: its own distribution first.

A version's code asks about itself through ``importlib.metadata`` (``version("attrs")``, the
``markdown.extensions`` entry points). The answers must come from the distribution the version
ships — a wheel's ``*.dist-info``, a source tree's ``*.dist-info`` / ``*.egg-info`` or its
``pyproject.toml`` — not from whatever the host has installed, and its entry points must load
the version's own modules. Every other distribution still resolves to the host's.
"""

from __future__ import annotations

import functools
import importlib.metadata as md
import itertools
import re
import tomllib
import types
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

ImportModule = Callable[[str], types.ModuleType]

_SEPARATORS = re.compile(r"[-_.]+")


def normalize(name: str) -> str:
    """The PEP 503 form of a distribution name: ``Foo_Bar`` -> ``foo-bar``."""
    return _SEPARATORS.sub("-", name).lower()


def own_distributions(
    root: Path, tops: Iterable[str], import_module: ImportModule
) -> tuple[md.Distribution, ...]:
    """The distributions shipped with the version whose packages live in ``root``.

    A ``*.dist-info`` or ``*.egg-info`` beside the packages (or beside their ``src/``) that
    installs one of ``tops``; failing that, the ``pyproject.toml`` of the source tree.
    """
    tops = tuple(tops)
    places = [root, root.parent] if root.name == "src" else [root]
    entry_point = _entry_point_class(import_module)
    found: list[md.Distribution] = []
    for place in places:
        for info in sorted(place.glob("*.dist-info")) + sorted(place.glob("*.egg-info")):
            if info.is_dir() and _installs(info, tops):
                found.append(_VersionDistribution(info, entry_point))
    if found:
        return tuple(found)
    for place in places:
        pyproject = place / "pyproject.toml"
        if pyproject.is_file():
            project = _ProjectDistribution.read(pyproject, entry_point, import_module)
            if project is not None:
                return (project,)
    return ()


def shipped_top_levels(root: Path, tops: Iterable[str]) -> set[str]:
    """Every top-level name the version's installed distribution (``*.dist-info`` or
    ``*.egg-info`` beside ``root``) lists in ``top_level.txt`` or ``RECORD``."""
    tops = tuple(tops)
    names: set[str] = set()
    for info in itertools.chain(root.glob("*.dist-info"), root.glob("*.egg-info")):
        if info.is_dir() and _installs(info, tops):
            names |= _listed(info, ("top_level.txt", "RECORD"))
    return names


def _listed(info: Path, listings: Iterable[str]) -> set[str]:
    """Top-level names in the listings of a distribution's metadata directory."""
    names: set[str] = set()
    for listing in listings:
        text = _read(info / listing)
        if not text:
            continue
        if listing == "top_level.txt":
            names |= {line.strip() for line in text.splitlines() if line.strip()}
            continue
        for line in text.splitlines():
            first = line.split(",", 1)[0].strip().split("/", 1)[0]
            if first and not first.endswith((".dist-info", ".egg-info", ".data")):
                names.add(first.partition(".")[0])
    return names


def _installs(info: Path, tops: tuple[str, ...]) -> bool:
    """Whether the distribution described in ``info`` installs one of ``tops``."""
    names = _listed(info, ("top_level.txt", "RECORD", "SOURCES.txt"))
    if names:
        return any(top in names for top in tops)
    stem = info.name.rpartition(".")[0].partition("-")[0]
    return any(normalize(stem) == normalize(top) for top in tops)


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _entry_point_class(import_module: ImportModule) -> type[md.EntryPoint]:
    """An EntryPoint whose ``load()`` imports through the version."""

    class VersionEntryPoint(md.EntryPoint):
        def load(self) -> Any:
            match = self.pattern.match(self.value)
            if match is None:
                raise ValueError(f"not an entry point value: {self.value!r}")
            module = import_module(match.group("module"))
            attrs = filter(None, (match.group("attr") or "").split("."))
            return functools.reduce(getattr, attrs, module)

    return VersionEntryPoint


def _own_entry_points(
    dist: md.Distribution, text: str | None, entry_point: type[md.EntryPoint]
) -> md.EntryPoints:
    plain = md.EntryPoints._from_text(text)  # type: ignore[attr-defined]
    made = (entry_point(ep.name, ep.value, ep.group) for ep in plain)
    return md.EntryPoints(ep._for(dist) for ep in made)  # type: ignore[attr-defined]


class _VersionDistribution(md.PathDistribution):
    """A ``*.dist-info`` / ``*.egg-info`` of the version; its entry points load its modules."""

    def __init__(self, path: Path, entry_point: type[md.EntryPoint]) -> None:
        super().__init__(path)
        self._entry_point = entry_point

    @property
    def entry_points(self) -> md.EntryPoints:
        return _own_entry_points(self, self.read_text("entry_points.txt"), self._entry_point)


class _ProjectDistribution(md.Distribution):
    """The distribution a source tree's ``pyproject.toml`` describes (PEP 621 fields)."""

    def __init__(
        self,
        base: Path,
        project: dict[str, Any],
        dynamic_version: str | None,
        entry_point: type[md.EntryPoint],
        import_module: ImportModule,
    ) -> None:
        self._base = base
        self._project = project
        self._dynamic_version = dynamic_version
        self._entry_point = entry_point
        self._import_module = import_module

    @classmethod
    def read(
        cls, path: Path, entry_point: type[md.EntryPoint], import_module: ImportModule
    ) -> _ProjectDistribution | None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            return None
        project = data.get("project")
        if not isinstance(project, dict) or not isinstance(project.get("name"), str):
            return None
        dynamic = data.get("tool", {}).get("setuptools", {}).get("dynamic", {}).get("version")
        attr = dynamic.get("attr") if isinstance(dynamic, dict) else None
        return cls(
            path.parent,
            project,
            attr if isinstance(attr, str) else None,
            entry_point,
            import_module,
        )

    def _version(self) -> str | None:
        version = self._project.get("version")
        if isinstance(version, str):
            return version
        if self._dynamic_version:  # setuptools' version = {attr = "pkg.__version__"}
            module, _, attr = self._dynamic_version.rpartition(".")
            try:
                return str(getattr(self._import_module(module), attr))
            except Exception:
                return None
        return None

    def read_text(self, filename: str) -> str | None:
        if filename in ("METADATA", "PKG-INFO"):
            return self._metadata_text()
        if filename == "entry_points.txt":
            return self._entry_points_text()
        return None

    def locate_file(self, path: Any) -> Path:
        return self._base / str(path)

    def _metadata_text(self) -> str:
        project = self._project
        lines = ["Metadata-Version: 2.1", f"Name: {project['name']}"]
        version = self._version()
        if version is not None:
            lines.append(f"Version: {version}")
        if isinstance(project.get("description"), str):
            lines.append(f"Summary: {project['description']}")
        if isinstance(project.get("requires-python"), str):
            lines.append(f"Requires-Python: {project['requires-python']}")
        for requirement in project.get("dependencies") or ():
            lines.append(f"Requires-Dist: {requirement}")
        return "\n".join(lines) + "\n"

    def _entry_points_text(self) -> str:
        groups: dict[str, Any] = {
            "console_scripts": self._project.get("scripts") or {},
            "gui_scripts": self._project.get("gui-scripts") or {},
            **(self._project.get("entry-points") or {}),
        }
        sections = []
        for group, entries in groups.items():
            if isinstance(entries, dict) and entries:
                body = "\n".join(f"{name} = {value}" for name, value in entries.items())
                sections.append(f"[{group}]\n{body}\n")
        return "\n".join(sections)

    @property
    def entry_points(self) -> md.EntryPoints:
        return _own_entry_points(self, self._entry_points_text(), self._entry_point)


def _name(dist: md.Distribution) -> str:
    known = getattr(dist, "_normalized_name", None)
    if isinstance(known, str) and known:
        return normalize(known)
    return normalize(dist.metadata["Name"] or "")


def metadata_module(own: tuple[md.Distribution, ...]) -> types.ModuleType:
    """A stand-in for ``importlib.metadata`` that answers for ``own`` first, else the host."""
    by_name = {_name(dist): dist for dist in own}

    def distribution(distribution_name: str) -> md.Distribution:
        mine = by_name.get(normalize(distribution_name)) if distribution_name else None
        return mine if mine is not None else md.distribution(distribution_name)

    def version(distribution_name: str) -> str:
        return distribution(distribution_name).version

    def metadata(distribution_name: str) -> Any:
        return distribution(distribution_name).metadata

    def files(distribution_name: str) -> Any:
        return distribution(distribution_name).files

    def requires(distribution_name: str) -> Any:
        return distribution(distribution_name).requires

    def distributions(**kwargs: Any) -> Iterator[md.Distribution]:
        name = kwargs.get("name")
        mine = [d for n, d in by_name.items() if name is None or n == normalize(name)]
        if name is not None and mine:
            return iter(mine)
        host = (d for d in md.distributions(**kwargs) if _name(d) not in by_name)
        return itertools.chain(mine, host)

    def entry_points(**params: Any) -> Any:
        seen: set[str] = set()
        unique = []
        for dist in distributions():
            name = _name(dist)
            if name not in seen:
                seen.add(name)
                unique.append(dist)
        eps = itertools.chain.from_iterable(dist.entry_points for dist in unique)
        groups = getattr(md, "SelectableGroups", None)  # Python 3.11: dict-like without params
        if groups is not None:
            return groups.load(eps).select(**params)
        return md.EntryPoints(eps).select(**params)

    def packages_distributions() -> dict[str, list[str]]:
        mapping = dict(md.packages_distributions())
        for dist in own:
            for top in (dist.read_text("top_level.txt") or "").split():
                mapping[top] = [dist.metadata["Name"]]
        return mapping

    proxy = types.ModuleType(md.__name__, md.__doc__)
    proxy.__dict__.update(
        __getattr__=lambda attr: getattr(md, attr),
        distribution=distribution,
        version=version,
        metadata=metadata,
        files=files,
        requires=requires,
        distributions=distributions,
        entry_points=entry_points,
        packages_distributions=packages_distributions,
    )
    return proxy
