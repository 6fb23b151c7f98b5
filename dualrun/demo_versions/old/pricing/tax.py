"""Value added tax by destination country."""

RATES = {"DE": 0.19, "FR": 0.20, "NL": 0.21, "AT": 0.20}


def rate_for(country):
    try:
        return RATES[country]
    except KeyError:
        raise ValueError(f"no VAT rate for country {country!r}") from None


def tax_for(country, amount):
    return round(amount * rate_for(country), 2)
