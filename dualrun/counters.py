"""Lock-free counters for the routed call.

``next()`` on an ``itertools.count`` is a single C call, atomic under the GIL: threads can count
calls on the hot path without a lock, and a reader takes the value without disturbing them.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    Counter = itertools.count[int]
else:  # itertools.count is not subscriptable at run time
    Counter = itertools.count


def new_counter() -> Counter:
    """A counter starting at zero; advance it with ``next(counter)``."""
    return itertools.count()


def peek(counter: Counter) -> int:
    """How many times ``next()`` has been called on ``counter``."""
    return int(counter.__reduce__()[1][0])
