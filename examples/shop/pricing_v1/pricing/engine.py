"""Quotes: line totals, bulk discount, VAT and total of a cart."""

from decimal import Decimal

from pricing.money import cents

PRICES = {
    "apple": Decimal("0.35"),
    "pear": Decimal("0.45"),
    "melon": Decimal("2.15"),
    "coffee": Decimal("7.99"),
    "bolt": Decimal("0.125"),
    "washer": Decimal("0.045"),
}
VAT_RATE = Decimal("0.19")
BULK_ITEMS = 10
BULK_RATE = Decimal("0.05")


def quote(cart):
    """``{"items": [{"sku": "apple", "qty": 3}, ...]}`` -> the quote as JSON-ready data."""
    lines = []
    for item in cart["items"]:
        sku, qty = item["sku"], int(item["qty"])
        if sku not in PRICES:
            raise KeyError(f"unknown sku {sku!r}")
        if qty < 1:
            raise ValueError(f"qty of {sku!r} is {qty}, not a positive whole number")
        unit = PRICES[sku]
        lines.append({"sku": sku, "qty": qty, "unit": str(unit), "total": cents(unit * qty)})
    subtotal = sum((line["total"] for line in lines), Decimal(0))
    count = sum(line["qty"] for line in lines)
    discount = cents(subtotal * BULK_RATE) if count >= BULK_ITEMS else Decimal("0.00")
    tax = cents((subtotal - discount) * VAT_RATE)
    return {
        "currency": "EUR",
        "lines": [{**line, "total": str(line["total"])} for line in lines],
        "subtotal": str(subtotal),
        "discount": str(discount),
        "tax": str(tax),
        "total": str(subtotal - discount + tax),
    }
