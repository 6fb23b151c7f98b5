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


class _Local(threading.local):
    """Each thread's picklers and their buffers, reused: making them costs more than a small
    pickle. ``state`` (comparisons) and ``copying`` are lists ``[busy, buffer, pickler]``:
    one thread-local lookup per use."""

    def __init__(self) -> None:
        self.state: list[Any] = [False, *_new_pickler()]
        self.copying: list[Any] = [False, *_new_copier()]


def _new_pickler() -> tuple[io.BytesIO, pickle.Pickler]:
    buffer = io.BytesIO()
    return buffer, _plain_pickler(buffer)


def _new_copier() -> tuple[io.BytesIO, pickle.Pickler]:
    buffer = io.BytesIO()
    return buffer, _CopyPickler(buffer, pickle.HIGHEST_PROTOCOL)


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
    first ends; None if a value is not plain. Re-entered (a signal handler comparing), it uses
    a pickler of its own."""
    state = _local.state
    if state[0]:
        buffer, pickler = _new_pickler()
    else:
        state[0] = True
        buffer, pickler = state[1], state[2]
        buffer.seek(0)
        buffer.truncate()
    try:
        pickler.dump(first)  # no memo to clear: the pickler keeps none
        middle = buffer.tell()
        if second is not _ALONE:
            pickler.dump(second)
        return buffer.getvalue(), middle
    except Exception:  # not plain data, too deep, ...: the caller compares structurally
        return None
    finally:
        if buffer is state[1]:
            state[0] = False
            if buffer.tell() > _REUSE_LIMIT:
                state[1:] = _new_pickler()  # let a large buffer go


def copy_by_pickle(value: object) -> Any | None:
    """A deep copy through pickle, or None when only ``copy.deepcopy`` would be faithful.
    Re-entered (an object's ``__reduce__`` copying), it uses a pickler of its own."""
    state = _local.copying
    if state[0]:
        buffer, pickler = _new_copier()
    else:
        state[0] = True
        buffer, pickler = state[1], state[2]
        buffer.seek(0)
        buffer.truncate()
    try:
        pickler.dump(value)
        return pickle.loads(buffer.getvalue())
    except Exception:
        return None
    finally:
        if buffer is state[1]:
            pickler.clear_memo()  # let go of the value: the next copy starts with no memo
            state[0] = False
            if buffer.tell() > _REUSE_LIMIT:
                state[1:] = _new_copier()  # let a large buffer go
