"""Parse and look up ``"package.module:Qual.name"`` targets inside a version."""

from __future__ import annotations

import enum
import inspect
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol

from dualrun.errors import TargetNotFoundError


class Searched(Protocol):
    """What :func:`find` reads of a version (a :class:`dualrun.loading.Version`, which sits
    above this module: loading parses targets with it)."""

    @property
    def label(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def tops(self) -> tuple[str, ...]: ...
    def import_module(self, name: str) -> ModuleType: ...


def parse_target(target: object) -> tuple[str, str]:
    """Split ``"pkg.mod:Qual.name"`` into its module and qualified name, or raise ValueError."""
    if not isinstance(target, str) or target.count(":") != 1:
        raise ValueError(f"a target is a string 'package.module:qualified.name', got {target!r}")
    module, qualname = target.split(":")
    parts_ok = all(p.isidentifier() for p in module.split(".")) and all(
        p.isidentifier() for p in qualname.split(".")
    )
    if not parts_ok:
        raise ValueError(
            f"a target is a string 'package.module:qualified.name' made of Python identifiers, "
            f"got {target!r}"
        )
    return module, qualname


class Kind(enum.Enum):
    """How a target is called: the livepatch rule needs to know whose ``self`` it gets."""

    FUNCTION = "function"
    METHOD = "method"
    CLASSMETHOD = "classmethod"
    STATICMETHOD = "staticmethod"


@dataclass(frozen=True)
class Found:
    """A target as it stands in one version."""

    kind: Kind
    owner: type | ModuleType
    name: str
    value: Any  # what ``getattr(owner, name)`` gives: the callable to call (bound for classmethods)


def walk(module: ModuleType, qualname: str, describe: str) -> tuple[Any, Any, str]:
    """Follow ``qualname`` from ``module``; return (owner, value, last name)."""
    owner: Any = module
    parts = qualname.split(".")
    for i, part in enumerate(parts):
        try:
            value = getattr(owner, part)
        except AttributeError:
            where = ".".join(parts[:i]) or module.__name__.partition(".")[2]
            raise TargetNotFoundError(f"{describe}: {where!r} has no attribute {part!r}") from None
        if i == len(parts) - 1:
            return owner, value, part
        owner = value
    raise AssertionError("unreachable")  # pragma: no cover


def find(version: Searched, target: str) -> Found:
    """Look ``target`` up in ``version``; raise TargetNotFoundError naming both if it is absent."""
    module_name, qualname = parse_target(target)
    describe = (
        f"target {target!r} does not exist in the {version.label!r} version ({version.source})"
    )
    if module_name.partition(".")[0] not in version.tops:
        raise TargetNotFoundError(
            f"{describe}: {module_name!r} is not part of it (its top-level names are "
            f"{', '.join(version.tops)})"
        )
    try:
        module = version.import_module(module_name)
    except ModuleNotFoundError as exc:
        # The target's module itself is missing: no such target. A module it imports that is
        # missing is a broken version: the VersionLoadError naming it propagates.
        parts = module_name.split(".")
        if exc.name not in {".".join(parts[: i + 1]) for i in range(len(parts))}:
            raise
        raise TargetNotFoundError(f"{describe}: {exc}") from exc
    owner, value, name = walk(module, qualname, describe)
    if not callable(value):
        raise TargetNotFoundError(f"{describe}: it is a {type(value).__name__}, not a callable")
    if isinstance(owner, type):
        raw = inspect.getattr_static(owner, name)
        if isinstance(raw, classmethod):
            return Found(Kind.CLASSMETHOD, owner, name, value)
        if isinstance(raw, staticmethod):
            return Found(Kind.STATICMETHOD, owner, name, value)
        if inspect.isfunction(raw):
            return Found(Kind.METHOD, owner, name, raw)
        return Found(Kind.STATICMETHOD, owner, name, value)
    return Found(Kind.FUNCTION, owner, name, value)
