"""Shop pricing, release 1.4: quotes for carts, money in decimal cents."""

VERSION = "1.4"

from pricing.engine import quote  # noqa: E402  (the package imports itself by its own name)

__all__ = ["VERSION", "quote"]
