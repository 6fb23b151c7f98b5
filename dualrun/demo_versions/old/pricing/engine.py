"""Quotes: line totals, discount, tax and total for a cart, in floats."""

import asyncio
import uuid
from datetime import datetime, timezone

from pricing import rules  # absolute self-import

from .catalog import unit_price  # relative import


class Quote:
    def __init__(self, cart):
        self.cart = cart
        self.currency = cart.get("currency", "EUR")
        self.lines = [self._line(item) for item in cart["items"]]
        self.subtotal = round(sum(line["total"] for line in self.lines), 2)
        self.discount = round(self.subtotal * rules.best_rate(cart), 2)
        self.tax = self._tax(cart.get("country", "DE"), self.subtotal - self.discount)

    @staticmethod
    def _line(item):
        unit = unit_price(item["sku"])
        return {"sku": item["sku"], "qty": item["qty"], "unit": unit,
                "total": round(unit * item["qty"], 2)}

    @staticmethod
    def _tax(country, taxable):
        from pricing.tax import tax_for  # imported at call time

        return tax_for(country, taxable)

    def total(self):
        return round(self.subtotal - self.discount + self.tax, 2)

    def as_dict(self):
        return {
            "currency": self.currency,
            "lines": self.lines,
            "subtotal": self.subtotal,
            "discount": self.discount,
            "tax": self.tax,
            "total": self.total(),
            "generated_at": datetime.now(timezone.utc).isoformat(),
            "quote_id": str(uuid.uuid4()),
        }


def quote(cart):
    return Quote(cart).as_dict()


async def quote_async(cart):
    await asyncio.sleep(0)
    return quote(cart)
