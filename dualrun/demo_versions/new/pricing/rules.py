"""Discount rules. Each rule gives a rate for the cart; the best rate applies."""

from decimal import Decimal

BULK_MIN_ITEMS = 8  # 1.5: bulk discount from 8 items (was 10)
BULK_RATE = Decimal("0.05")
COUPONS = {"WELCOME10": Decimal("0.10"), "SPRING5": Decimal("0.05")}

RULES = []  # registry filled by @rule, once per loaded version


def rule(fn):
    RULES.append(fn)
    return fn


@rule
def bulk(cart):
    items = sum(item["qty"] for item in cart["items"])
    return BULK_RATE if items >= BULK_MIN_ITEMS else Decimal(0)


@rule
def coupon(cart):
    return COUPONS.get(cart.get("coupon") or "", Decimal(0))


def best_rate(cart):
    return max((r(cart) for r in RULES), default=Decimal(0))
