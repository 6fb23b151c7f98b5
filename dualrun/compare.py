"""Structural comparison of two versions' results, on values rather than identity.

The two versions' classes are distinct types by construction (the old and the new ``Quote``),
so objects compare by qualified type name (the version prefix removed) and then by their
fields. The result is a list of :class:`Difference`, each with a path such as
``$.items[3].price``, a kind, and both values as short reprs.

A comparison never cries wolf: every NaN equals every NaN, a value whose ``==`` raises is
compared by its fields or its text, texts are compared and shown with the versions' private
module prefixes removed, and a reported difference always shows two different texts. The walk
is iterative, so values nested deeper than the recursion limit are compared to the end.
"""

from __future__ import annotations

import dataclasses
import re
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from dualrun import checks
from dualrun.loading import strip_versions
from dualrun.plain import same_plain

KINDS = ("value", "type", "missing", "extra", "length", "order", "exception", "uncomparable")
REPR_LIMIT = 120
MAX_DIFFERENCES = 50  # per comparison: enough to read, bounded in cost
MAX_PAIRING = 200  # unmatched set members / dict keys paired by value, at most this many a side

_ADDRESS = re.compile(r" at 0x[0-9A-Fa-f]+")
_INDEX = re.compile(r"\[\d+\]")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_ATOMS = (str, bytes, int, bool, type(None))
_PLAIN = (dict, list, tuple, set, frozenset, bytearray)  # checked by their pickles first
_NAMED = (
    type,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
    types.ModuleType,
    types.MethodDescriptorType,
    types.WrapperDescriptorType,
)


@dataclass(frozen=True)
class Difference:
    """One place where the old and the new version disagree: the ``path`` in the value
    (``$.items[3].price``), the ``kind`` of difference (one of ``KINDS``), and the ``old`` and
    ``new`` values as short reprs (``<missing>`` where a version has no value at all)."""

    path: str
    kind: str
    old: str
    new: str

    @property
    def signature(self) -> str:
        """The path with list indices generalised, plus the kind: how divergences group."""
        return f"{generalize(self.path)} {self.kind}"

    def to_dict(self) -> dict[str, str]:
        """The difference as JSON-ready data."""
        return dataclasses.asdict(self)


class _Missing:
    """Where one version has no value at all (a key, a field, a set member): shown as
    ``<missing>``, never as ``None``, which is a value."""

    __slots__ = ()

    def __repr__(self) -> str:
        return MISSING


MISSING = "<missing>"
_MISSING = _Missing()


def generalize(path: str) -> str:
    """``$.items[3].price`` -> ``$.items[*].price``."""
    return _INDEX.sub("[*]", path)


def _full_repr(value: object) -> tuple[str, bool]:
    """The one-line repr of ``value`` with prefixes removed, and whether its repr worked."""
    try:
        text = bounded_repr(value)
    except BaseException as exc:  # a broken __repr__ (even a SystemExit) must not break one
        return f"<{type_name(value)} with a failing repr: {type(exc).__name__}>", False
    text = strip_versions(text)
    if "\n" in text or "\r" in text:  # a multi-line repr would break report tables
        text = text.replace("\r", "\\r").replace("\n", "\\n")
    return text, True


REPR_BUDGET = 8192  # characters of a repr worth making: reports show at most a window of it
_SEQUENCES: dict[type, tuple[str, str]] = {
    list: ("[", "]"),
    tuple: ("(", ")"),
    set: ("{", "}"),
    frozenset: ("frozenset({", "})"),
}


def bounded_repr(value: object, budget: int = REPR_BUDGET) -> str:
    """``repr(value)``, but built containers (list, tuple, set, frozenset, dict) and long
    strings stop at about ``budget`` characters, ending in ``…``: a 5-million-item value costs
    what its first few thousand characters cost. Other objects' own ``__repr__`` runs as is."""
    parts: list[str] = []
    left = budget
    active: set[int] = set()  # containers being printed: a cycle shows as ``[...]``

    def emit(text: str) -> None:
        nonlocal left
        parts.append(text)
        left -= len(text)

    def walk(item: Any) -> None:
        kind = type(item)
        if kind in _SEQUENCES or kind is dict:
            if not item:
                emit(repr(item))
                return
            if id(item) in active:
                emit("{...}" if kind is dict else "[...]")
                return
            active.add(id(item))
            opening, closing = ("{", "}") if kind is dict else _SEQUENCES[kind]
            emit(opening)
            pairs = item.items() if kind is dict else item
            for i, element in enumerate(pairs):
                if i:
                    emit(", ")
                if left <= 0:
                    emit("…")
                    break
                if kind is dict:
                    walk(element[0])
                    emit(": ")
                    walk(element[1])
                else:
                    walk(element)
            if kind is tuple and len(item) == 1:
                emit(",")
            emit(closing)
            active.discard(id(item))
        elif kind in (str, bytes) and len(item) > left:
            emit(repr(item[: max(left, 0)]) + "…")
        else:
            emit(repr(item))

    walk(value)
    return "".join(parts)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def short_repr(value: object, limit: int = REPR_LIMIT) -> str:
    """A one-line repr that never raises and never runs long; version prefixes are removed."""
    return _cut(_full_repr(value)[0], limit)


def two_texts(old: str, new: str, limit: int = REPR_LIMIT) -> tuple[str, str]:
    """Both texts cut to ``limit``, always different when the full texts differ.

    Two long texts that differ only beyond the cut are shown around their first difference.
    """
    a, b = _cut(old, limit), _cut(new, limit)
    if a != b or old == new:
        return a, b
    at = next((i for i, (x, y) in enumerate(zip(old, new, strict=False)) if x != y), None)
    at = min(len(old), len(new)) if at is None else at
    start = max(0, at - limit // 3)
    return _window(old, start, limit), _window(new, start, limit)


def _window(text: str, start: int, limit: int) -> str:
    body = text[start : start + limit - 2]
    return ("…" if start else "") + body + ("…" if start + len(body) < len(text) else "")


def _message(exc: BaseException) -> str:
    try:
        return strip_versions(str(exc))
    except BaseException:  # even a SystemExit from __str__ is only a missing message here
        return "<the message could not be made>"


def describe(exc: BaseException) -> str:
    """``"ValueError: bad input"``, even when the exception's ``__str__`` itself raises."""
    message = _message(exc)
    return f"{type(exc).__name__}: {message if len(message) <= 300 else message[:299] + '…'}"


def type_name(value: object) -> str:
    """Module and qualified name of ``value``'s type, the same for both versions' classes."""
    return _qualified(type(value))


def _qualified(obj: Any) -> str:
    """``module.Qual.name`` of a class, function or module, without version prefixes."""
    if isinstance(obj, types.ModuleType):
        return strip_versions(str(obj.__name__))
    if isinstance(obj, types.MethodType):
        return _qualified(obj.__func__)
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", "?")
    return strip_versions(f"{module}.{qualname}" if module else str(qualname))


def exception_key(exc: BaseException) -> tuple[str, str]:
    """How exceptions compare by default: qualified type name and message, prefixes removed."""
    return type_name(exc), _message(exc)


def key_path(path: str, key: object) -> str:
    if isinstance(key, str) and _IDENTIFIER.match(key):
        return f"{path}.{key}"
    return f"{path}[{_full_repr(key)[0]}]"


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


def _is_nan(value: object) -> bool:
    """Float, Decimal (quiet or signalling), and numpy-like NaNs through ``x != x``."""
    if isinstance(value, Decimal):
        return value.is_nan()
    try:
        return bool(value != value)
    except BaseException:
        return False


class _Run:
    """The state of one comparison: differences so far, pairs on the path, what to do next."""

    __slots__ = ("eq_recursed", "out", "seen", "stack")

    def __init__(self, out: list[Difference]) -> None:
        self.out = out
        self.seen: set[tuple[int, int]] = set()
        self.stack: list[Any] = []
        self.eq_recursed = False  # an __eq__ hit the recursion limit: do not call it again


class Differ:
    """Computes the differences between two values; configured once, used for many calls.

    Thread-safe: all state of a comparison lives in the comparison.
    """

    _orders = True  # whether a list that differs is checked for being a reordering

    def __init__(
        self,
        tolerance: float = 0.0,
        exception_key: Callable[[BaseException], object] = exception_key,
        limit: int = MAX_DIFFERENCES,
    ) -> None:
        if not checks.is_number(tolerance) or tolerance < 0:
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
        if old is new:
            return []
        kind = type(old)
        if kind is type(new):
            if kind in _ATOMS or kind is float:
                if old == new:
                    return []
            elif kind in _PLAIN and same_plain(old, new):
                return []  # the same plain data, down to every type: nothing to walk
        out: list[Difference] = []
        self._run(old, new, path, out)
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
        old_text, new_text = _outcome_text(old_value, old_exc), _outcome_text(new_value, new_exc)
        if old_text == new_text and old_exc is not None and new_exc is not None:
            # Equal type names and messages, told apart by a custom exception_key.
            old_text += f" (key {short_repr(self.exception_key(old_exc))})"
            new_text += f" (key {short_repr(self.exception_key(new_exc))})"
        return [Difference("$", "exception", *two_texts(old_text, new_text))]

    # -- the walk -----------------------------------------------------------------------------

    def _run(self, old: object, new: object, path: str, out: list[Difference]) -> None:
        """Walk both values depth first with an explicit stack: no recursion limit applies.

        The stack holds pairs to compare (tuples), iterators that yield a container's pairs
        one at a time, and callables that finish a container once its children are done.
        """
        run = _Run(out)
        stack = run.stack
        stack.append((old, new, path))
        limit = self.limit
        while stack:
            frame = stack.pop()
            if type(frame) is tuple:
                if len(out) < limit:
                    self._step(run, *frame)
            elif callable(frame):
                frame()
            elif len(out) < limit:
                pair = next(frame, None)
                if pair is not None:
                    stack.append(frame)
                    stack.append(pair)

    def _add(self, out: list[Difference], path: str, kind: str, old: object, new: object) -> None:
        if len(out) < self.limit:
            out.append(_difference(path, kind, old, new))

    def _step(self, run: _Run, old: Any, new: Any, path: str) -> None:
        out = run.out
        if old is new:
            return
        old_type, new_type = type(old), type(new)
        if old_type is new_type and old_type in _ATOMS:
            if old != new and not (old_type is str and strip_versions(old) == strip_versions(new)):
                self._add(out, path, "value", old, new)
            return
        if old_type is not new_type and type_name(old) != type_name(new):
            self._add(out, path, "type", old, new)
            return
        if old_type is dict or old_type is list or old_type is tuple:  # the common containers
            pair = (id(old), id(new))
            if pair not in run.seen:
                self._enter(run, pair)
                if old_type is dict:
                    run.stack.append(self._mapping_pairs(old, new, path, out))
                else:
                    self._sequence(run, old, new, path)
            return
        if isinstance(old, float | complex):
            if not self._numbers_equal(old, new):
                self._add(out, path, "value", old, new)
            return
        equal = None if run.eq_recursed else _equal(old, new)
        if equal is True:
            return
        if equal is RecursionError:
            run.eq_recursed, equal = True, None
        if isinstance(old, BaseException):
            if self.exception_key(old) != self.exception_key(new):
                self._add(out, path, "exception", old, new)
            return
        if isinstance(old, _NAMED):  # classes, functions, modules: the same by name
            if _qualified(old) != _qualified(new):
                self._add(out, path, "value", old, new)
            return
        pair = (id(old), id(new))
        if pair in run.seen:
            return  # a cycle: this pair is being compared further up
        if isinstance(old, Mapping):
            self._enter(run, pair)
            run.stack.append(self._mapping_pairs(old, new, path, out))
        elif isinstance(old, list | tuple):
            self._enter(run, pair)
            self._sequence(run, old, new, path)
        elif isinstance(old, set | frozenset):
            self._set(old, new, path, out)
        else:
            self._record(run, pair, old, new, path, equal)

    def _enter(self, run: _Run, pair: tuple[int, int]) -> None:
        """Mark ``pair`` as on the current path until its children are done."""
        run.seen.add(pair)
        run.stack.append(lambda: run.seen.discard(pair))

    def _numbers_equal(self, old: Any, new: Any) -> bool:
        if isinstance(old, complex):
            return self._float_equal(old.real, new.real) and self._float_equal(old.imag, new.imag)
        return self._float_equal(old, new)

    def _float_equal(self, old: float, new: float) -> bool:
        if old == new or (old != old and new != new):  # every NaN equals every NaN
            return True
        return bool(self.tolerance) and abs(old - new) <= self.tolerance

    def _mapping_pairs(
        self, old: Mapping[Any, Any], new: Mapping[Any, Any], path: str, out: list[Difference]
    ) -> Iterator[tuple[Any, Any, str]]:
        if type(old) is dict and type(new) is dict and old.keys() == new.keys():
            for key, value in old.items():  # the common case, kept short
                other = new[key]
                if not (
                    value is other
                    or (type(value) is type(other) and type(value) in _ATOMS and value == other)
                ):
                    yield value, other, key_path(path, key)
            return
        only_new = [key for key in new if key not in old]
        partner = self._pairs([key for key in old if key not in new], only_new)
        for key, value in old.items():
            sub = key_path(path, key)
            if key in new:
                yield value, new[key], sub
            elif key in partner:
                yield value, new[partner[key]], sub
            else:
                self._add(out, sub, "missing", value, _MISSING)
        taken = {id(key) for key in partner.values()}
        for key in only_new:
            if id(key) not in taken:
                self._add(out, key_path(path, key), "extra", _MISSING, new[key])

    def _pairs(self, only_old: list[Any], only_new: list[Any]) -> dict[Any, Any]:
        """Members present on one side only that equal one on the other side as values.

        The two versions' enum members or records hash and compare by identity, so a set or
        dict key made by each version is "missing" and "extra" at once; here they meet.
        """
        partner: dict[Any, Any] = {}
        if not only_old or not only_new or max(len(only_old), len(only_new)) > MAX_PAIRING:
            return partner
        remaining = list(only_new)
        for item in only_old:
            for i, candidate in enumerate(remaining):
                if self._same(item, candidate):
                    partner[item] = candidate
                    del remaining[i]
                    break
        return partner

    def _sequence(self, run: _Run, old: Any, new: Any, path: str) -> None:
        out = run.out
        if len(old) != len(new) and len(out) < self.limit:
            out.append(Difference(path, "length", _items(len(old)), _items(len(new))))
        mark = len(out)

        def finish() -> None:
            # A reordering differs in two positions at least: with one, the lists cannot hold
            # the same items (and a deep chain would be probed again at every level).
            if (
                len(out) > mark + 1
                and self._orders
                and len(old) == len(new)
                and len({d.path[len(path) :].partition("]")[0] for d in out[mark:]}) > 1
                and self._is_permutation(old, new)
            ):
                del out[mark:]
                self._add(out, path, "order", old, new)

        run.stack.append(finish)
        run.stack.append(
            (a, b, f"{path}[{i}]")
            for i, (a, b) in enumerate(zip(old, new, strict=False))
            if not (a is b or (type(a) is type(b) and type(a) in _ATOMS and a == b))
        )

    def _set(self, old: Any, new: Any, path: str, out: list[Difference]) -> None:
        only_old, only_new = _ordered(old - new), _ordered(new - old)
        partner = self._pairs(only_old, only_new)
        taken = {id(item) for item in partner.values()}
        for item in only_old:
            if item not in partner:
                self._add(out, f"{path}{{{short_repr(item)}}}", "missing", item, _MISSING)
        for item in only_new:
            if id(item) not in taken:
                self._add(out, f"{path}{{{short_repr(item)}}}", "extra", _MISSING, item)

    def _record(
        self, run: _Run, pair: tuple[int, int], old: Any, new: Any, path: str, equal: Any
    ) -> None:
        """Anything else, not equal by ``==``: its fields, else the printed value."""
        fields = _fields(old)
        if fields is not None:
            self._enter(run, pair)
            new_fields = _fields(new) or {}
            run.stack.append(self._mapping_pairs(fields, new_fields, path, run.out))
            return
        if _is_nan(old) and _is_nan(new):  # Decimal NaN, numpy-like scalars: no fields
            return
        (old_text, old_ok), (new_text, new_ok) = _full_repr(old), _full_repr(new)
        if not (old_ok and new_ok):
            # Neither == nor the text can tell: never a match (the recursion limit, say).
            same_type_unequal = equal is False and type(old) is type(new)
            kind = "value" if same_type_unequal else "uncomparable"
            self._add(run.out, path, kind, old, new)
        elif _ADDRESS.sub("", old_text) != _ADDRESS.sub("", new_text):
            self._add(run.out, path, "value", old, new)
        # Otherwise they print the same and have no fields: sentinels, objects compared by
        # identity, the two versions' instances of a class without __eq__. Equal as values.

    def _same(self, old: object, new: object) -> bool:
        """Whether two values are equal as values: a probe that stops at the first difference."""
        prober = self._probe
        if prober is None:
            # Probes skip the reordering check: with it, every nested list would be walked
            # again at every level above (2**depth walks).
            prober = Differ(self.tolerance, self.exception_key, limit=1)
            prober._orders = False
            self._probe = prober
        return not prober.diff(old, new)

    def _is_permutation(self, old: Any, new: Any) -> bool:
        if len(old) > MAX_PAIRING:
            return False
        remaining = list(new)
        for item in old:
            for i, candidate in enumerate(remaining):
                if self._same(item, candidate):
                    del remaining[i]
                    break
            else:
                return False
        return True


def _difference(path: str, kind: str, old: object, new: object) -> Difference:
    """A difference whose two texts differ (the kind says why when the values print alike)."""
    old_text, new_text = two_texts(_full_repr(old)[0], _full_repr(new)[0])
    if old_text == new_text and kind in ("type", "exception"):
        old_text, new_text = two_texts(
            f"{type_name(old)}: {old_text}", f"{type_name(new)}: {new_text}"
        )
    return Difference(path, kind, old_text, new_text)


def _items(n: int) -> str:
    return f"{n} item" if n == 1 else f"{n} items"


def _equal(old: object, new: object) -> bool | type[RecursionError] | None:
    """``old == new`` as a bool; None when it raises or answers something else."""
    try:
        result = old == new
    except RecursionError:
        return RecursionError
    except BaseException:  # a value's own code: whatever it raises is only "no answer" here
        return None
    if isinstance(result, bool):
        return result
    try:  # numpy-like: an array of booleans
        every = getattr(result, "all", None)
        return bool(every()) if callable(every) else bool(result)
    except BaseException:
        return None


def _ordered(items: Iterable[Any]) -> list[Any]:
    return sorted(items, key=short_repr)


def _outcome_text(value: object, exc: BaseException | None) -> str:
    if exc is None:
        return f"returned {_full_repr(value)[0]}"
    return f"raised {type_name(exc)}: {_full_repr(_message(exc))[0]}"


class IgnoreRules:
    """Paths to leave out of a comparison: ``$.generated_at``, ``$.items[*].id``, ``$.meta.*``.

    ``[*]`` matches any index, ``*`` any single field name; a rule also covers everything
    below the path it matches.
    """

    def __init__(self, patterns: Iterable[str]) -> None:
        if isinstance(patterns, str):
            patterns = (patterns,)
        if not isinstance(patterns, Iterable) or isinstance(patterns, bytes | Mapping):
            raise ValueError(
                f"ignore is a path such as '$.generated_at' or a list of them, got {patterns!r}"
            )
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
