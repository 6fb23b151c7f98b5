"""Quotes: line totals, discount, tax and total for a cart, in decimal cents."""

import asyncio
import uuid
from datetime import datetime, timezone

from pricing import rules  # absolute self-import

from .catalog import unit_price  # relative import
from .money import cents, dec


class Quote:
    def __init__(self, cart):
        self.cart = cart
        self.currency = cart.get("currency", "EUR")
        self.lines = [self._line(item) for item in cart["items"]]
        self.subtotal = sum((line["total"] for line in self.lines), dec(0))
        self.discount = cents(self.subtotal * rules.best_rate(cart))
        self.tax = self._tax(cart.get("country", "DE"), self.subtotal - self.discount)

    @staticmethod
    def _line(item):
        unit = dec(unit_price(item["sku"]))
        return {"sku": item["sku"], "qty": item["qty"], "unit": unit,
                "total": cents(unit * item["qty"])}

    @staticmethod
    def _tax(country, taxable):
        from pricing.tax import tax_for  # imported at call time

        return tax_for(country, taxable)

    def total(self):
        return float(self.subtotal - self.discount + self.tax)

    def as_dict(self):
        """The quote as JSON-ready data: amounts are floats of exact cents, as in 1.4."""
        lines = [{**line, "unit": float(line["unit"]), "total": float(line["total"])}
                 for line in self.lines]
        return {
            "currency": self.currency,
            "lines": lines,
            "subtotal": float(self.subtotal),
            "discount": float(self.discount),
            "tax": float(self.tax),
            "total": self.total(),
            "generated_at": datetime.now(timezone.utc).isoformat(),
            "quote_id": str(uuid.uuid4()),
        }


def quote(cart):
    return Quote(cart).as_dict()


async def quote_async(cart):
    await asyncio.sleep(0)
    return quote(cart)
