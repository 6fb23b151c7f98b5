"""Structural comparison of two versions' results, on values rather than identity.

The two versions' classes are distinct types by construction (the old and the new ``Quote``),
so objects compare by qualified type name (the version prefix removed) and then by their
fields. The result is a list of :class:`Difference`, each with a path such as
``$.items[3].price``, a kind, and both values as short reprs.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from dualrun.loading import PREFIX_ROOT

KINDS = ("value", "type", "missing", "extra", "length", "order", "exception")
REPR_LIMIT = 120
MAX_DIFFERENCES = 50  # per comparison: enough to read, bounded in cost
MAX_DEPTH = 40

_PREFIX = re.compile(re.escape(PREFIX_ROOT) + r"\d+\.")
_INDEX = re.compile(r"\[\d+\]")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_ATOMS = (str, bytes, int, bool, type(None), complex)


@dataclass(frozen=True)
class Difference:
    """One place where the old and the new version disagree."""

    path: str
    kind: str
    old: str
    new: str

    @property
    def signature(self) -> str:
        """The path with list indices generalised, plus the kind: how divergences group."""
        return f"{generalize(self.path)} {self.kind}"

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


def generalize(path: str) -> str:
    """``$.items[3].price`` -> ``$.items[*].price``."""
    return _INDEX.sub("[*]", path)


def short_repr(value: object, limit: int = REPR_LIMIT) -> str:
    """A one-line repr that never raises and never runs long; version prefixes are removed."""
    try:
        text = repr(value)
    except BaseException as exc:  # a broken __repr__ (even a SystemExit) must not break one
        text = f"<{type_name(value)} with a failing repr: {type(exc).__name__}>"
    text = _PREFIX.sub("", text)
    if "\n" in text or "\r" in text:  # a multi-line repr would break report tables
        text = text.replace("\r", "\\r").replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe(exc: BaseException) -> str:
    """``"ValueError: bad input"``, even when the exception's ``__str__`` itself raises."""
    try:
        message = str(exc)
    except BaseException:  # even a SystemExit from __str__ is only a missing message here
        message = "<the message could not be made>"
    return f"{type(exc).__name__}: {message if len(message) <= 300 else message[:299] + '…'}"


def type_name(value: object) -> str:
    """Module and qualified name of ``value``'s type, the same for both versions' classes."""
    cls = type(value)
    return _PREFIX.sub("", f"{cls.__module__}.{cls.__qualname__}")


def exception_key(exc: BaseException) -> tuple[str, str]:
    """How exceptions compare by default: qualified type name and message."""
    return type_name(exc), str(exc)


def key_path(path: str, key: object) -> str:
    if isinstance(key, str) and _IDENTIFIER.match(key):
        return f"{path}.{key}"
    return f"{path}[{key!r}]"


def _fields(value: object) -> dict[str, Any] | None:
    """The fields of a record-like object, or None if it is not one."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    cls = type(value)
    attrs = getattr(cls, "__attrs_attrs__", None)
    if attrs is not None:
        return {a.name: getattr(value, a.name) for a in attrs}
    model_fields = getattr(cls, "model_fields", None)  # pydantic v2
    if isinstance(model_fields, Mapping):
        return {name: getattr(value, name) for name in model_fields}
    fields: dict[str, Any] = {}
    for klass in cls.__mro__:
        for slot in getattr(klass, "__slots__", ()):
            if slot not in ("__dict__", "__weakref__") and hasattr(value, slot):
                fields[slot] = getattr(value, slot)
    instance_dict = getattr(value, "__dict__", None)
    if isinstance(instance_dict, dict):
        fields.update(instance_dict)
    return fields if fields or instance_dict is not None else None


class Differ:
    """Computes the differences between two values; configured once, used for many calls."""

    _orders = True  # whether a list that differs is checked for being a reordering

    def __init__(
        self,
        tolerance: float = 0.0,
        exception_key: Callable[[BaseException], object] = exception_key,
        limit: int = MAX_DIFFERENCES,
    ) -> None:
        if isinstance(tolerance, bool) or not isinstance(tolerance, int | float) or tolerance < 0:
            raise ValueError(f"tolerance is a number >= 0, got {tolerance!r}")
        if not callable(exception_key):
            raise ValueError(
                f"exception_key is a callable taking an exception, got {exception_key!r}"
            )
        self.tolerance = float(tolerance)
        self.exception_key = exception_key
        self.limit = limit
        self._probe: Differ | None = None

    def diff(self, old: object, new: object, path: str = "$") -> list[Difference]:
        """Differences from ``old`` to ``new``; empty when they are equal as values."""
        if old is new or (type(old) is type(new) and type(old) in _ATOMS and old == new):
            return []
        out: list[Difference] = []
        self._walk(old, new, path, out, set(), 0)
        return out

    def diff_outcomes(
        self,
        old_value: object,
        old_exc: BaseException | None,
        new_value: object,
        new_exc: BaseException | None,
    ) -> list[Difference]:
        """Compare two calls' outcomes: a value or an exception each."""
        if old_exc is None and new_exc is None:
            return self.diff(old_value, new_value)
        if (
            old_exc is not None
            and new_exc is not None
            and self.exception_key(old_exc) == self.exception_key(new_exc)
        ):
            return []
        old_text = _outcome_text(old_value, old_exc)
        new_text = _outcome_text(new_value, new_exc)
        return [Difference("$", "exception", old_text, new_text)]

    def _add(self, out: list[Difference], path: str, kind: str, old: object, new: object) -> None:
        if len(out) < self.limit:
            out.append(Difference(path, kind, short_repr(old), short_repr(new)))

    def _walk(
        self,
        old: Any,
        new: Any,
        path: str,
        out: list[Difference],
        seen: set[tuple[int, int]],
        depth: int,
    ) -> None:
        if old is new or len(out) >= self.limit:
            return
        old_type, new_type = type(old), type(new)
        if old_type is new_type and old_type in _ATOMS:
            if old != new:
                self._add(out, path, "value", old, new)
            return
        if old_type is not new_type and type_name(old) != type_name(new):
            self._add(out, path, "type", old, new)
            return
        if isinstance(old, float):
            if not (old == new or (math.isnan(old) and math.isnan(new))) and not (
                self.tolerance and abs(old - new) <= self.tolerance
            ):
                self._add(out, path, "value", old, new)
            return
        if depth >= MAX_DEPTH:  # compare whole reprs: a truncated one hides what lies deeper
            if short_repr(old, sys.maxsize) != short_repr(new, sys.maxsize):
                self._add(out, path, "value", old, new)
            return
        pair = (id(old), id(new))
        if pair in seen:
            return  # a cycle: this pair is being compared further up
        seen.add(pair)
        try:
            self._walk_container(old, new, path, out, seen, depth + 1)
        finally:
            seen.discard(pair)

    def _walk_container(
        self,
        old: Any,
        new: Any,
        path: str,
        out: list[Difference],
        seen: set[tuple[int, int]],
        depth: int,
    ) -> None:
        if isinstance(old, BaseException):
            if self.exception_key(old) != self.exception_key(new):
                self._add(out, path, "exception", old, new)
            return
        if isinstance(old, Mapping):
            self._walk_mapping(old, new, path, out, seen, depth)
        elif isinstance(old, list | tuple):
            self._walk_sequence(old, new, path, out, seen, depth)
        elif isinstance(old, set | frozenset):
            for item in _ordered(old - new):
                self._add(out, f"{path}{{{short_repr(item)}}}", "missing", item, None)
            for item in _ordered(new - old):
                self._add(out, f"{path}{{{short_repr(item)}}}", "extra", None, item)
        else:
            old_fields = None if _equal(old, new) else _fields(old)
            if old_fields is None:
                if not _equal(old, new):
                    self._add(out, path, "value", old, new)
                return
            new_fields = _fields(new) or {}
            self._walk_mapping(old_fields, new_fields, path, out, seen, depth)

    def _walk_mapping(
        self,
        old: Mapping[Any, Any],
        new: Mapping[Any, Any],
        path: str,
        out: list[Difference],
        seen: set[tuple[int, int]],
        depth: int,
    ) -> None:
        for key, value in old.items():
            sub = key_path(path, key)
            if key in new:
                self._walk(value, new[key], sub, out, seen, depth)
            else:
                self._add(out, sub, "missing", value, None)
        for key, value in new.items():
            if key not in old:
                self._add(out, key_path(path, key), "extra", None, value)

    def _walk_sequence(
        self,
        old: Any,
        new: Any,
        path: str,
        out: list[Difference],
        seen: set[tuple[int, int]],
        depth: int,
    ) -> None:
        if len(old) != len(new) and len(out) < self.limit:
            out.append(Difference(path, "length", _items(len(old)), _items(len(new))))
        inner: list[Difference] = []
        for i, (a, b) in enumerate(zip(old, new, strict=False)):
            self._walk(a, b, f"{path}[{i}]", inner, seen, depth)
            if len(inner) + len(out) >= self.limit:
                break
        if (
            inner
            and self._orders
            and len(old) == len(new)
            and self._is_permutation(old, new, seen, depth)
        ):
            self._add(out, path, "order", old, new)
            return
        out.extend(inner[: max(0, self.limit - len(out))])

    def _is_permutation(self, old: Any, new: Any, seen: set[tuple[int, int]], depth: int) -> bool:
        if len(old) > 200:
            return False
        # Equality probes stop at the first difference and skip the reordering check: with it,
        # every nested list would be walked again at every level above (2**depth walks).
        prober = self._probe
        if prober is None:
            prober = self._probe = Differ(self.tolerance, self.exception_key, limit=1)
            prober._orders = False
        remaining = list(new)
        for item in old:
            for i, candidate in enumerate(remaining):
                probe: list[Difference] = []
                prober._walk(item, candidate, "$", probe, seen, depth)
                if not probe:
                    del remaining[i]
                    break
            else:
                return False
        return True


def _items(n: int) -> str:
    return f"{n} item" if n == 1 else f"{n} items"


def _equal(old: object, new: object) -> bool:
    try:
        return bool(old == new)
    except Exception:
        return False


def _ordered(items: Iterable[Any]) -> list[Any]:
    return sorted(items, key=short_repr)


def _outcome_text(value: object, exc: BaseException | None) -> str:
    if exc is None:
        return f"returned {short_repr(value)}"
    return f"raised {type_name(exc)}: {short_repr(str(exc))}"


class IgnoreRules:
    """Paths to leave out of a comparison: ``$.generated_at``, ``$.items[*].id``, ``$.meta.*``.

    ``[*]`` matches any index, ``*`` any single field name; a rule also covers everything
    below the path it matches.
    """

    def __init__(self, patterns: Iterable[str]) -> None:
        if isinstance(patterns, str):
            patterns = (patterns,)
        compiled = []
        self.patterns = tuple(patterns)
        for pattern in self.patterns:
            if not isinstance(pattern, str) or not pattern.startswith("$"):
                raise ValueError(
                    f"an ignore rule is a path starting with '$' such as '$.generated_at' or "
                    f"'$.items[*].id', got {pattern!r}"
                )
            text = re.escape(pattern).replace(r"\[\*\]", r"\[[^\]]+\]").replace(r"\*", r"[^.\[{]+")
            compiled.append(f"(?:{text})")
        self._regex = (
            re.compile("(?:" + "|".join(compiled) + r")(?:[.\[{].*)?\Z") if compiled else None
        )

    def __bool__(self) -> bool:
        return self._regex is not None

    def matches(self, path: str) -> bool:
        return self._regex is not None and self._regex.match(path) is not None

    def filter(self, differences: list[Difference]) -> list[Difference]:
        if self._regex is None:
            return differences
        return [d for d in differences if not self.matches(d.path)]
