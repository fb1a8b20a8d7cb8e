"""Worked tax examples, each figure computed by hand in the comments.

Amounts are in cents. "x / 107" and "x / 119" extract 7% and 19% VAT from a gross
price: tax = gross x rate / (1 + rate).
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from appliance.tax import (
    Exemption,
    LineTax,
    RateTotal,
    TaxableLine,
    TaxClass,
    TaxPolicy,
    TaxRate,
    compute_tax,
)

ONE = Decimal(1)

# --------------------------------------------------------------------------- Germany

DE_RATES = {
    "DE07": TaxRate("DE07", "MwSt 7%", Decimal("7")),
    "DE19": TaxRate("DE19", "MwSt 19%", Decimal("19")),
}
DE_CLASSES = {
    "standard": TaxClass("standard", ("DE19",)),
    "food": TaxClass("food", ("DE07",)),
}


def germany(rounding: str) -> TaxPolicy:
    return TaxPolicy(DE_RATES, DE_CLASSES, prices_include_tax=True, rounding=rounding)  # type: ignore[arg-type]


def test_germany_basket_with_both_rates() -> None:
    lines = [
        TaxableLine("bread", "food", 249, ONE),
        TaxableLine("milk", "food", 119, ONE),
        TaxableLine("shampoo", "standard", 395, ONE),
        TaxableLine("batteries", "standard", 999, ONE),
    ]
    res = compute_tax(lines, germany("line"))
    # bread     2.49 x 7/107  = 1743/107  = 16.29  -> 0.16, net 2.33
    # milk      1.19 x 7/107  =  833/107  =  7.79  -> 0.08, net 1.11
    # shampoo   3.95 x 19/119 = 7505/119  = 63.07  -> 0.63, net 3.32
    # batteries 9.99 x 19/119 = 18981/119 = 159.50 -> 1.60, net 8.39
    assert res.lines["bread"] == LineTax("bread", 233, 16, 249, {"DE07": 16})
    assert res.lines["milk"] == LineTax("milk", 111, 8, 119, {"DE07": 8})
    assert res.lines["shampoo"] == LineTax("shampoo", 332, 63, 395, {"DE19": 63})
    assert res.lines["batteries"] == LineTax("batteries", 839, 160, 999, {"DE19": 160})
    # receipt footer: 7%: net 2.33 + 1.11 = 3.44, VAT 0.24 (gross 3.68)
    #                 19%: net 3.32 + 8.39 = 11.71, VAT 2.23 (gross 13.94)
    assert res.rates == (
        RateTotal("DE07", "MwSt 7%", Decimal("7"), 344, 24),
        RateTotal("DE19", "MwSt 19%", Decimal("19"), 1171, 223),
    )
    assert (res.total_net, res.total_tax, res.total_gross) == (1515, 247, 1762)

    # Invoice rounding agrees here: 3.68 x 7/107 = 24.07 -> 0.24; 13.94 x 19/119 = 222.57 -> 2.23.
    inv = compute_tax(lines, germany("invoice"))
    assert inv.rates == res.rates
    assert inv.lines == res.lines


def test_germany_line_and_invoice_rounding_differ() -> None:
    lines = [TaxableLine(f"gum{i}", "standard", 99, ONE) for i in (1, 2, 3)]
    # per line: 0.99 x 19/119 = 1881/119 = 15.81 -> 0.16 each, 0.48 in all
    per_line = compute_tax(lines, germany("line"))
    assert [lt.tax for lt in per_line.lines.values()] == [16, 16, 16]
    assert (per_line.total_net, per_line.total_tax) == (249, 48)
    # per invoice: 2.97 x 19/119 = 5643/119 = 47.42 -> 0.47. Every line rounded up by the
    # same 0.19 cents, so the one cent too many is taken back from the earliest line.
    per_invoice = compute_tax(lines, germany("invoice"))
    assert [lt.tax for lt in per_invoice.lines.values()] == [15, 16, 16]
    assert [lt.net for lt in per_invoice.lines.values()] == [84, 83, 83]
    assert per_invoice.rates == (RateTotal("DE19", "MwSt 19%", Decimal("19"), 250, 47),)
    assert (per_invoice.total_net, per_invoice.total_tax, per_invoice.total_gross) == (250, 47, 297)


def test_germany_exchange_with_a_returned_item() -> None:
    lines = [
        TaxableLine("batteries-back", "standard", -999, Decimal(-1)),
        TaxableLine("shampoo", "standard", 395, ONE),
    ]
    res = compute_tax(lines, germany("line"))
    # the return mirrors the sale: -9.99 -> VAT -1.60, net -8.39; shampoo as above
    assert res.lines["batteries-back"] == LineTax("batteries-back", -839, -160, -999, {"DE19": -160})
    # customer is paid back 6.04, of which VAT -0.97 (-1.60 + 0.63), net -5.07
    assert (res.total_net, res.total_tax, res.total_gross) == (-507, -97, -604)


# --------------------------------------------------------------------------- Massachusetts

# 6.25% state sales tax, no local sales tax on goods. Clothing: the first $175 of each
# item is exempt and only the excess is taxed. Groceries are exempt.
MA_RATES = {"MA": TaxRate("MA", "MA sales tax", Decimal("6.25"))}
MA_CLASSES = {
    "general": TaxClass("general", ("MA",)),
    "clothing": TaxClass("clothing", ("MA",), (Exemption(17500, "excess"),)),
    "grocery": TaxClass("grocery", ()),
}


def massachusetts(rounding: str = "line", mode: str = "half_up") -> TaxPolicy:
    return TaxPolicy(
        MA_RATES,
        MA_CLASSES,
        prices_include_tax=False,
        rounding=rounding,  # type: ignore[arg-type]
        rounding_mode=mode,
    )


MA_BASKET = [
    TaxableLine("jacket", "clothing", 20000, ONE),
    TaxableLine("shirt", "clothing", 5000, ONE),
    TaxableLine("two-shirts", "clothing", 20000, Decimal(2)),
    TaxableLine("lamp", "general", 4000, ONE),
    TaxableLine("bread", "grocery", 349, ONE),
]


@pytest.mark.parametrize("rounding", ["line", "invoice"])
def test_massachusetts_clothing_threshold(rounding: str) -> None:
    res = compute_tax(MA_BASKET, massachusetts(rounding))
    # jacket $200: taxed on $200 - $175 = $25 -> 25.00 x 6.25% = 1.5625 -> $1.56
    assert res.lines["jacket"] == LineTax("jacket", 20000, 156, 20156, {"MA": 156})
    # shirt $50: under $175, exempt
    assert res.lines["shirt"].tax == 0
    # two shirts at $100 each: $200 in all, but each item is under $175, so exempt
    assert res.lines["two-shirts"].tax == 0
    # lamp $40: 40.00 x 6.25% = $2.50
    assert res.lines["lamp"] == LineTax("lamp", 4000, 250, 4250, {"MA": 250})
    # bread: grocery, no rate at all
    assert res.lines["bread"] == LineTax("bread", 349, 0, 349, {})
    # taxable base: 25.00 + 0 + 0 + 40.00 = $65.00; 65.00 x 6.25% = 4.0625 -> $4.06 either way
    assert res.rates == (RateTotal("MA", "MA sales tax", Decimal("6.25"), 6500, 406),)
    # net 200 + 50 + 200 + 40 + 3.49 = $493.49, plus $4.06 tax
    assert (res.total_net, res.total_tax, res.total_gross) == (49349, 406, 49755)


@pytest.mark.parametrize(("mode", "tax"), [("half_up", 313), ("half_even", 312)])
def test_massachusetts_two_jackets_round_a_tie(mode: str, tax: int) -> None:
    two = [TaxableLine("jackets", "clothing", 40000, Decimal(2))]
    res = compute_tax(two, massachusetts(mode=mode))
    # 2 x ($200 - $175) = $50 taxable; 50.00 x 6.25% = 3.125 exactly: a tie
    assert res.lines["jackets"].tax == tax
    assert res.rates[0].taxable == 5000


# --------------------------------------------------------------------------- New York City

# 8.875% = 4% New York State + 4.5% New York City + 0.375% Metropolitan Commuter
# Transportation District. Clothing and footwear sold for less than $110 per item is
# exempt from all three in New York City; at $110 or more the full 8.875% applies.
NYC_RATES = {
    "NYS": TaxRate("NYS", "New York State", Decimal("4")),
    "NYC": TaxRate("NYC", "New York City", Decimal("4.5")),
    "MCTD": TaxRate("MCTD", "MCTD", Decimal("0.375")),
}
NYC_CLASSES = {
    "general": TaxClass("general", ("NYS", "NYC", "MCTD")),
    "clothing": TaxClass("clothing", ("NYS", "NYC", "MCTD"), (Exemption(11000, "below"),)),
}
NYC_BASKET = [
    TaxableLine("shirt", "clothing", 5000, ONE),
    TaxableLine("sneakers", "clothing", 10999, ONE),
    TaxableLine("boots", "clothing", 11000, ONE),
    TaxableLine("jacket", "clothing", 20000, ONE),
    TaxableLine("umbrella", "general", 1099, ONE),
]


def test_new_york_city_clothing_under_110_is_exempt() -> None:
    pol = TaxPolicy(NYC_RATES, NYC_CLASSES, prices_include_tax=False)
    res = compute_tax(NYC_BASKET, pol)
    # shirt $50 and sneakers $109.99: under $110, exempt from every rate
    assert res.lines["shirt"].by_rate == {"NYS": 0, "NYC": 0, "MCTD": 0}
    assert res.lines["sneakers"].tax == 0
    # boots at exactly $110: 4.40 + 4.95 + 0.4125 -> 440 + 495 + 41 = $9.76
    assert res.lines["boots"].by_rate == {"NYS": 440, "NYC": 495, "MCTD": 41}
    # jacket $200: 8.00 + 9.00 + 0.75 = $17.75
    assert res.lines["jacket"].tax == 1775
    # umbrella $10.99: 0.4396 -> 44, 0.49455 -> 49, 0.0412 -> 4: $0.97
    assert res.lines["umbrella"].by_rate == {"NYS": 44, "NYC": 49, "MCTD": 4}
    # every rate taxes 110.00 + 200.00 + 10.99 = $320.99
    assert [(r.code, r.taxable, r.tax) for r in res.rates] == [
        ("MCTD", 32099, 41 + 75 + 4),
        ("NYC", 32099, 495 + 900 + 49),
        ("NYS", 32099, 440 + 800 + 44),
    ]
    assert (res.total_net, res.total_tax, res.total_gross) == (48098, 2848, 50946)


def test_new_york_city_as_one_combined_rate() -> None:
    # Rounding per rate is not the same as rounding the combined 8.875%: the umbrella's
    # 10.99 x 8.875% = 0.9754 -> $0.98, one cent more than the three rounded parts.
    # A till that must match a combined-rate tax table configures one rate instead.
    rates = {"NY": TaxRate("NY", "NYC sales tax", Decimal("8.875"))}
    classes = {
        "general": TaxClass("general", ("NY",)),
        "clothing": TaxClass("clothing", ("NY",), (Exemption(11000, "below"),)),
    }
    res = compute_tax(NYC_BASKET, TaxPolicy(rates, classes, prices_include_tax=False))
    # boots 9.7625 -> 9.76, jacket 17.75, umbrella 0.98
    assert [lt.tax for lt in res.lines.values()] == [0, 0, 976, 1775, 98]
    assert res.total_tax == 2849
