"""Value added tax by destination country."""

from decimal import Decimal

from pricing.money import cents

RATES = {"DE": Decimal("0.19"), "FR": Decimal("0.20"), "NL": Decimal("0.21"), "AT": Decimal("0.20")}


def rate_for(country):
    try:
        return RATES[country]
    except KeyError:
        raise ValueError(f"no VAT rate for country {country!r}") from None


def tax_for(country, amount):
    return cents(amount * rate_for(country))
