"""Checks of the numbers the public constructors take: one wording for each kind of value, and a
``ValueError`` at the moment a bad one is given."""

from __future__ import annotations

import math
import threading
from typing import TypeGuard

# The longest wait Python's locks and events accept (about 292 years): longer ones overflow.
MAX_SECONDS = threading.TIMEOUT_MAX


def is_number(value: object) -> TypeGuard[float]:
    """An int or float that is not NaN and fits a float (a huge int would overflow later)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return not math.isnan(float(value))
    except OverflowError:
        return False


def percent(value: object, what: str) -> float:
    """A share of calls, from 0 to 100."""
    if not is_number(value) or not 0 <= value <= 100:
        raise ValueError(f"{what} is a percent from 0 to 100, got {value!r}")
    return float(value)


def seconds(value: object, what: str) -> float:
    """A duration in seconds, more than 0 and finite (a thread waits for it)."""
    if not is_number(value) or not 0 < value <= MAX_SECONDS:
        raise ValueError(
            f"{what} is a number of seconds > 0 and at most {MAX_SECONDS:.0f}, got {value!r}"
        )
    return float(value)


def wait_seconds(value: object, what: str) -> float | None:
    """How long to wait: seconds from 0, or None to wait as long as it takes."""
    if value is None:
        return None
    if not is_number(value) or not 0 <= value <= MAX_SECONDS:
        raise ValueError(
            f"{what} is a number of seconds >= 0 and at most {MAX_SECONDS:.0f}, or None to "
            f"wait without a limit; got {value!r}"
        )
    return float(value)


def whole_number(value: object, what: str, minimum: int = 1, maximum: int | None = None) -> int:
    """A count, at least ``minimum`` (and at most ``maximum``)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{what} is a whole number >= {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{what} is a whole number from {minimum} to {maximum}, got {value!r}")
    return value
