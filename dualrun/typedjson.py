"""JSON with typed extensions: how recorded calls are written, and read back without running
anything from the file.

JSON's own types are written as they are. Other values become an object with one ``"$kind"``
key: ``{"$decimal": "0.10"}``, ``{"$datetime": "2026-11-29T10:00:00+00:00"}``, ``{"$tuple":
[...]}``, ``{"$bytes": "<base64>"}``; records (dataclasses, attrs, pydantic, ``__slots__`` and
``__dict__`` objects — the fields the comparison reads) become ``{"$object": {"type":
"pkg.mod.Qual", "fields": {...}}}``. Reading builds only containers, standard-library atoms and
:class:`RecordedObject` instances of a class named after the recorded type (made with ``type()``:
no import, no constructor, nothing of the recorded code runs). What has no faithful form
(functions, files, generators, a value nested deeper than :data:`MAX_DEPTH`) is written as
``{"$repr": ...}`` and read back as :class:`Unrecorded`, which a replay refuses to call with.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import enum
import fractions
import math
import re
import uuid
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from dualrun.compare import _fields, short_repr, type_name

MAX_DEPTH = 40
Redactor = Callable[[str, Any], Any]  # (path, leaf value) -> the value to write
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class RecordedObject:
    """A record read back from a recording: its fields as attributes, compared by value.

    Each recorded type name gets its own subclass, whose ``__module__`` and ``__qualname__`` are
    the recorded ones, so the comparison sees the same type name as for the live object.
    """

    def __init__(self, fields: dict[str, Any]) -> None:
        self.__dict__.update(fields)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.__dict__ == self.__dict__

    def __hash__(self) -> int:
        return hash((type(self).__qualname__, tuple(sorted(self.__dict__))))

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items())
        return f"{type(self).__qualname__}({fields})"


class RecordedError(Exception):
    """An exception read back from a recording: same type name and message as recorded."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclasses.dataclass(frozen=True)
class Unrecorded:
    """A value that had no faithful form: its type and a short repr only."""

    type: str
    repr: str


_classes: dict[tuple[str, str, type], type] = {}


def recorded_class(name: str, base: type) -> type:
    """The subclass of ``base`` standing for recorded type ``name`` (``pkg.mod.Qual``)."""
    module, _, qualname = name.rpartition(".")
    key = (module, qualname, base)
    cls = _classes.get(key)
    if cls is None:
        simple = qualname.rpartition(".")[2]
        cls = type(simple if _NAME.match(simple) else "Recorded", (base,), {})
        cls.__module__, cls.__qualname__ = module or "recorded", qualname
        cls = _classes.setdefault(key, cls)
    return cls


def error_from(name: str, message: str) -> BaseException:
    """An exception whose type name and ``str()`` are the recorded ones."""
    cls = recorded_class(name, RecordedError)
    return cls(message)  # type: ignore[no-any-return]


# -- writing ----------------------------------------------------------------------------------


def encode(value: Any, redact: Redactor | None = None, path: str = "$") -> Any:
    """``value`` as JSON-ready data with typed extensions; ``redact`` sees every leaf first."""
    return _encode(value, redact, path, 0, set())


def _leaf(value: Any, redact: Redactor | None, path: str) -> Any:
    return value if redact is None else redact(path, value)


def _encode(value: Any, redact: Redactor | None, path: str, depth: int, seen: set[int]) -> Any:
    if value is None or isinstance(value, bool):
        return value
    kind = type(value)
    if kind is str or kind is int:
        return _leaf(value, redact, path)
    if kind is float:
        value = _leaf(value, redact, path)
        if isinstance(value, float) and not math.isfinite(value):
            return {"$float": repr(value)}
        return value
    if isinstance(value, enum.Enum):  # before int and str: IntEnum, StrEnum
        return {"$enum": {"type": type_name(value), "name": value.name}}
    simple = _simple(value, redact, path)
    if simple is not None:
        return simple
    if depth >= MAX_DEPTH or id(value) in seen:
        return _unrecorded(value)
    seen.add(id(value))
    try:
        return _container(value, redact, path, depth + 1, seen)
    finally:
        seen.discard(id(value))


def _simple(value: Any, redact: Redactor | None, path: str) -> Any:
    """The typed form of an atom of the standard library, or None."""
    if isinstance(value, str):  # subclasses of the JSON types are written as their base
        return _leaf(str.__str__(value), redact, path)
    if isinstance(value, int):
        return _leaf(int.__index__(value), redact, path)
    if isinstance(value, float):
        return _encode(float.__float__(value), redact, path, 0, set())
    if isinstance(value, Decimal):
        return {"$decimal": str(_leaf(value, redact, path))}
    if isinstance(value, bytes | bytearray):
        data = _leaf(bytes(value), redact, path)
        tag = "$bytes" if isinstance(value, bytes) else "$bytearray"
        return {tag: base64.b64encode(bytes(data)).decode("ascii")}
    if isinstance(value, dt.datetime):
        return {"$datetime": _leaf(value, redact, path).isoformat()}
    if isinstance(value, dt.date):
        return {"$date": _leaf(value, redact, path).isoformat()}
    if isinstance(value, dt.time):
        return {"$time": _leaf(value, redact, path).isoformat()}
    if isinstance(value, dt.timedelta):
        value = _leaf(value, redact, path)
        return {"$timedelta": [value.days, value.seconds, value.microseconds]}
    if isinstance(value, uuid.UUID):
        return {"$uuid": str(_leaf(value, redact, path))}
    if isinstance(value, complex):
        return {"$complex": [value.real, value.imag]}
    if isinstance(value, fractions.Fraction):
        return {"$fraction": str(_leaf(value, redact, path))}
    return None


def _container(value: Any, redact: Redactor | None, path: str, depth: int, seen: set[int]) -> Any:
    if isinstance(value, list):
        return [_encode(v, redact, f"{path}[{i}]", depth, seen) for i, v in enumerate(value)]
    if isinstance(value, tuple):
        items = [_encode(v, redact, f"{path}[{i}]", depth, seen) for i, v in enumerate(value)]
        return {"$tuple": items}
    if isinstance(value, set | frozenset):
        ordered = sorted(value, key=short_repr)
        items = [_encode(v, redact, f"{path}{{}}", depth, seen) for v in ordered]
        return {"$set" if isinstance(value, set) else "$frozenset": items}
    if isinstance(value, Mapping):
        return _mapping(value, redact, path, depth, seen)
    if isinstance(value, BaseException):
        return {"$exception": {"type": type_name(value), "message": _message(value)}}
    if callable(value) or isinstance(value, type):
        return _unrecorded(value)
    fields = _fields(value)
    if fields is None:
        return _unrecorded(value)
    encoded = {
        name: _encode(v, redact, f"{path}.{name}", depth, seen) for name, v in fields.items()
    }
    return {"$object": {"type": type_name(value), "fields": encoded}}


def _mapping(
    value: Mapping[Any, Any], redact: Redactor | None, path: str, depth: int, seen: set[int]
) -> Any:
    if all(type(k) is str and not k.startswith("$") for k in value):
        return {k: _encode(v, redact, _key_path(path, k), depth, seen) for k, v in value.items()}
    pairs = [
        [
            _encode(k, redact, f"{path}<key>", depth, seen),
            _encode(v, redact, f"{path}[{short_repr(k)}]", depth, seen),
        ]
        for k, v in value.items()
    ]
    return {"$dict": pairs}


def _key_path(path: str, key: str) -> str:
    return f"{path}.{key}" if _NAME.match(key) else f"{path}[{key!r}]"


def _message(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return "<the message could not be made>"


def _unrecorded(value: Any) -> dict[str, Any]:
    return {"$repr": {"type": type_name(value), "repr": short_repr(value)}}


# -- reading ----------------------------------------------------------------------------------


def decode(data: Any) -> Any:
    """The value :func:`encode` wrote (records as :class:`RecordedObject`); ``ValueError`` for
    data it did not write."""
    if isinstance(data, list):
        return [decode(v) for v in data]
    if not isinstance(data, dict):
        if data is None or isinstance(data, str | int | float | bool):
            return data
        raise ValueError(f"not recorded data: {short_repr(data)}")
    if len(data) != 1 or not next(iter(data)).startswith("$"):
        return {k: decode(v) for k, v in data.items()}
    ((tag, body),) = data.items()
    reader = _READERS.get(tag)
    if reader is None:
        raise ValueError(f"unknown typed value {tag!r}")
    try:
        return reader(body)
    except (TypeError, ValueError, KeyError, AttributeError, ArithmeticError) as exc:
        raise ValueError(f"bad {tag} value {short_repr(body)}: {exc}") from None


def _object(body: dict[str, Any]) -> Any:
    fields = body["fields"]
    if not isinstance(fields, dict):
        raise ValueError("fields is not an object")
    cls = recorded_class(str(body["type"]), RecordedObject)
    return cls({str(k): decode(v) for k, v in fields.items()})


_READERS: dict[str, Callable[[Any], Any]] = {
    "$float": float,
    "$decimal": lambda body: Decimal(str(body)),
    "$bytes": lambda body: base64.b64decode(body, validate=True),
    "$bytearray": lambda body: bytearray(base64.b64decode(body, validate=True)),
    "$datetime": dt.datetime.fromisoformat,
    "$date": dt.date.fromisoformat,
    "$time": dt.time.fromisoformat,
    "$timedelta": lambda body: dt.timedelta(*map(int, body)),
    "$uuid": uuid.UUID,
    "$complex": lambda body: complex(float(body[0]), float(body[1])),
    "$fraction": fractions.Fraction,
    "$tuple": lambda body: tuple(decode(v) for v in body),
    "$set": lambda body: {decode(v) for v in body},
    "$frozenset": lambda body: frozenset(decode(v) for v in body),
    "$dict": lambda body: {decode(k): decode(v) for k, v in body},
    "$enum": lambda body: recorded_class(str(body["type"]), RecordedObject)(
        {"name": str(body["name"])}
    ),
    "$exception": lambda body: error_from(str(body["type"]), str(body["message"])),
    "$object": _object,
    "$repr": lambda body: Unrecorded(str(body["type"]), str(body["repr"])),
}


def contains_unrecorded(value: Any) -> Unrecorded | None:
    """The first :class:`Unrecorded` inside a decoded value, or None."""
    if isinstance(value, Unrecorded):
        return value
    if isinstance(value, dict):
        items: Any = [*value.keys(), *value.values()]
    elif isinstance(value, list | tuple | set | frozenset):
        items = value
    elif isinstance(value, RecordedObject):
        items = value.__dict__.values()
    else:
        return None
    for item in items:
        found = contains_unrecorded(item)
        if found is not None:
            return found
    return None
