"""The price list. Small parts are sold by the piece at sub-cent unit prices."""

PRICES = {
    "bolt-m6": 0.125,
    "washer-m6": 0.045,
    "nut-m6": 0.085,
    "bracket": 2.675,
    "hinge": 4.35,
    "drill-bit": 7.99,
    "glue": 3.5,
    "toolbox": 24.9,
}
LOOKUPS = 0  # module state: one counter per loaded version


def unit_price(sku):
    global LOOKUPS
    LOOKUPS += 1
    return PRICES[sku]
