"""Checks of the numbers the public constructors take: one wording for each kind of value, and a
``ValueError`` at the moment a bad one is given."""

from __future__ import annotations

import math
from typing import TypeGuard


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
    """A duration in seconds, more than 0."""
    if not is_number(value) or not value > 0:
        raise ValueError(f"{what} is a number of seconds > 0, got {value!r}")
    return float(value)


def whole_number(value: object, what: str, minimum: int = 1) -> int:
    """A count, at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{what} is a whole number >= {minimum}, got {value!r}")
    return value
