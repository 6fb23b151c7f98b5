"""Discount rules. Each rule gives a rate for the cart; the best rate applies."""

BULK_MIN_ITEMS = 10
BULK_RATE = 0.05
COUPONS = {"WELCOME10": 0.10, "SPRING5": 0.05}

RULES = []  # registry filled by @rule, once per loaded version


def rule(fn):
    RULES.append(fn)
    return fn


@rule
def bulk(cart):
    items = sum(item["qty"] for item in cart["items"])
    return BULK_RATE if items >= BULK_MIN_ITEMS else 0.0


@rule
def coupon(cart):
    return COUPONS.get(cart.get("coupon") or "", 0.0)


def best_rate(cart):
    return max((r(cart) for r in RULES), default=0.0)
