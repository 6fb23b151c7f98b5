"""A small pricing engine: quotes for shopping carts (release 1.5)."""

VERSION = "1.5.0"

from pricing.engine import Quote, quote, quote_async  # noqa: E402  (absolute self-import)

__all__ = ["VERSION", "Quote", "quote", "quote_async"]
