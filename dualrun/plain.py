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
    """Each thread's plain pickler and its buffer, reused: making them costs more than a
    small pickle."""

    def __init__(self) -> None:
        self.busy = False
        self.renew()

    def renew(self) -> None:
        self.buffer = io.BytesIO()
        self.pickler = _plain_pickler(self.buffer)


_local = _Local()


def plain_pickle(value: object) -> bytes | None:
    """The pickle of ``value`` if it is made of builtin types only, else None."""
    local = _local
    if local.busy:  # re-entered (a signal handler comparing): a pickler of its own
        buffer = io.BytesIO()
        pickler: pickle.Pickler = _plain_pickler(buffer)
    else:
        buffer, pickler = local.buffer, local.pickler
        local.busy = True
    try:
        buffer.seek(0)
        buffer.truncate()
        pickler.clear_memo()
        pickler.dump(value)
        data = buffer.getvalue()
    except Exception:  # not plain data, too deep, ...: the caller compares structurally
        return None
    finally:
        if buffer is local.buffer:
            local.busy = False
            if buffer.tell() > _REUSE_LIMIT:
                local.renew()  # let a large buffer go
    return data


def same_plain(old: object, new: object) -> bool:
    """Whether both are plain data with equal pickles (see the module docstring): both
    pickled one after the other into the thread's buffer, and its two halves compared."""
    local = _local
    if local.busy:  # re-entered (a signal handler comparing): one pickler each
        first = plain_pickle(old)
        return first is not None and first == plain_pickle(new)
    local.busy = True
    buffer, pickler = local.buffer, local.pickler
    try:
        buffer.seek(0)
        buffer.truncate()
        pickler.clear_memo()
        pickler.dump(old)
        middle = buffer.tell()
        pickler.dump(new)
        data = buffer.getvalue()
        return data[:middle] == data[middle:]
    except Exception:  # not plain data, too deep, ...: the caller compares structurally
        return False
    finally:
        local.busy = False
        if buffer.tell() > _REUSE_LIMIT:
            local.renew()  # let a large buffer go


def copy_by_pickle(value: object) -> Any | None:
    """A deep copy through pickle, or None when only ``copy.deepcopy`` would be faithful."""
    buffer = io.BytesIO()
    try:
        _CopyPickler(buffer, pickle.HIGHEST_PROTOCOL).dump(value)
        return pickle.loads(buffer.getbuffer())
    except Exception:
        return None
