"""Surviving ``fork()``: what a child process must renew before it serves.

A forked child (gunicorn ``--preload``, ``multiprocessing`` with the fork start method) has a
copy of the parent's memory but only the thread that forked: writer threads and worker pools
are gone, a lock another thread held stays held forever, queued events are the parent's to
write, and the aggregate holds the parent's evidence. Objects that own such state register
here; after a fork each renews itself in the child, in the order they registered (an event log
before the dispatcher that writes to it).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import weakref
from typing import Protocol


class ForkAware(Protocol):
    def after_fork_in_child(self) -> None:
        """Renew threads, locks, queues and per-process identity in the child."""


_registered: weakref.WeakValueDictionary[int, ForkAware] = weakref.WeakValueDictionary()
_order = itertools.count()


def register(obj: ForkAware, first: bool = False) -> None:
    """Call ``obj.after_fork_in_child()`` in every child forked while ``obj`` is alive; with
    ``first``, before the others (what they may use as they renew, such as a lock)."""
    _registered[-1 if first else next(_order)] = obj


def _in_child() -> None:
    for key in sorted(_registered.keys()):
        obj = _registered.get(key)
        if obj is not None:
            # A failure must not stop the others from renewing: the child would hang or lie.
            with contextlib.suppress(Exception):
                obj.after_fork_in_child()


os.register_at_fork(after_in_child=_in_child)
