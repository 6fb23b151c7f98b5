"""Fast exact snapshots of values through the C pickler: equality of plain data, and copies.

``same_plain(a, b)``: True when both values are built only of the builtin types pickle writes
itself (dict, list, tuple, set, frozenset, bytearray, str, bytes, int, float, bool, None) and
their pickles are equal: then they are the same value with the same type at every position, so
a structural comparison could find nothing (``1`` and ``1.0``, ``b""`` and ``bytearray()``,
a list and a tuple all pickle differently). Anything else answers False, and the caller
compares structurally: False never means "different".

``copy_by_pickle(value)``: a pickle round trip, several times faster than ``copy.deepcopy``;
None when the value holds something pickle cannot copy as deepcopy would (a ``__deepcopy__``
of its own, a lambda, a lock, ...), so the caller falls back to ``copy.deepcopy``.
"""

from __future__ import annotations

import io
import pickle
import threading
from collections.abc import Callable
from typing import Any

_REUSE_LIMIT = 1 << 20  # a thread keeps its buffer only while the pickles stay this small


class _NotPlain(Exception):
    """Raised by the plain pickler for any object it does not write itself."""


class _PlainPickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        raise _NotPlain  # the C pickler asks only about objects beyond its own builtin types


def _plain_pickler(buffer: io.BytesIO) -> pickle.Pickler:
    pickler = _PlainPickler(buffer, pickle.HIGHEST_PROTOCOL)
    # No memo: equal values built with different sharing of their strings or tuples (one
    # version reuses a literal, the other builds the text) must pickle alike. Without a memo a
    # cycle cannot be pickled: it raises, and is compared by the walk.
    pickler.fast = True
    return pickler


class _CopyPickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        if hasattr(type(obj), "__deepcopy__"):
            raise _NotPlain  # its own idea of a copy: deepcopy will honour it
        return NotImplemented


class _Reused:
    """One thread's pickler and its buffer, reused: making them costs more than a small
    pickle. Re-entered while in use (a signal handler comparing, a ``__reduce__`` copying),
    :meth:`take` makes a pickler of its own for that use."""

    __slots__ = ("buffer", "busy", "make", "pickler")

    def __init__(self, make: Callable[[io.BytesIO], pickle.Pickler]) -> None:
        self.make = make
        self.busy = False
        self.buffer = io.BytesIO()
        self.pickler = make(self.buffer)

    def take(self) -> tuple[io.BytesIO, pickle.Pickler]:
        """An empty buffer and the pickler writing to it."""
        if self.busy:
            buffer = io.BytesIO()
            return buffer, self.make(buffer)
        self.busy = True
        buffer = self.buffer
        buffer.seek(0)
        buffer.truncate()
        return buffer, self.pickler

    def give_back(self, buffer: io.BytesIO) -> None:
        """Done with what :meth:`take` gave: the memo emptied (it holds the values pickled),
        and a buffer grown large let go."""
        if buffer is self.buffer:
            self.pickler.clear_memo()
            self.busy = False
            if buffer.tell() > _REUSE_LIMIT:
                self.buffer = io.BytesIO()
                self.pickler = self.make(self.buffer)


def _copy_pickler(buffer: io.BytesIO) -> pickle.Pickler:
    return _CopyPickler(buffer, pickle.HIGHEST_PROTOCOL)


class _Local(threading.local):
    """Each thread's reused picklers: for comparisons and for copies."""

    def __init__(self) -> None:
        self.comparing = _Reused(_plain_pickler)
        self.copying = _Reused(_copy_pickler)


_local = _Local()


def plain_pickle(value: object) -> bytes | None:
    """The pickle of ``value`` if it is made of builtin types only, else None."""
    dumped = _dump(value)
    return None if dumped is None else dumped[0]


def same_plain(old: object, new: object) -> bool:
    """Whether both are plain data with equal pickles (see the module docstring): both
    pickled one after the other into the thread's buffer, and its two halves compared."""
    dumped = _dump(old, new)
    if dumped is None:
        return False
    data, middle = dumped
    return data[:middle] == data[middle:]


_ALONE = object()  # _dump's second value when there is one value only


def _dump(first: object, second: object = _ALONE) -> tuple[bytes, int] | None:
    """The plain pickles of ``first`` (and ``second``) one after the other, and where the
    first ends; None if a value is not plain."""
    reused = _local.comparing
    buffer, pickler = reused.take()
    try:
        pickler.dump(first)  # the plain pickler keeps no memo
        middle = buffer.tell()
        if second is not _ALONE:
            pickler.dump(second)
        return buffer.getvalue(), middle
    except Exception:  # not plain data, too deep, ...: the caller compares structurally
        return None
    finally:
        reused.give_back(buffer)


def copy_by_pickle(value: object) -> Any | None:
    """A deep copy through pickle, or None when only ``copy.deepcopy`` would be faithful."""
    reused = _local.copying
    buffer, pickler = reused.take()
    try:
        pickler.dump(value)
        return pickle.loads(buffer.getvalue())
    except Exception:
        return None
    finally:
        reused.give_back(buffer)
