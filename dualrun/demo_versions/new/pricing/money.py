"""Money in decimal, rounded half up to whole cents (new in 1.5): 0.125 -> 0.13."""

from decimal import ROUND_HALF_UP, Decimal

CENT = Decimal("0.01")


def cents(amount):
    return Decimal(amount).quantize(CENT, rounding=ROUND_HALF_UP)


def dec(value):
    return Decimal(str(value))  # a price-list float as the decimal it was written as
