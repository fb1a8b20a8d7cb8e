from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.errors import InputError
from appliance.money import Currency, cash_round, round_minor


def test_currency_exponents_come_from_cldr() -> None:
    assert Currency.of("EUR").exponent == 2
    assert Currency.of("jpy") == Currency("JPY", 0)
    assert Currency.of("KWD").exponent == 3


@pytest.mark.parametrize(("text", "minor"), [("1.99", 199), ("0", 0), ("12", 1200), (" 3.5 ", 350), ("-0.01", -1)])
def test_to_minor_is_exact(text: str, minor: int) -> None:
    assert Currency.of("EUR").to_minor(text) == minor


@pytest.mark.parametrize("bad", ["1.999", "abc", "", "NaN", "Infinity", "1e400x"])
def test_to_minor_rejects_bad_amounts(bad: str) -> None:
    with pytest.raises(InputError):
        Currency.of("EUR").to_minor(bad)


def test_to_minor_refuses_float() -> None:
    with pytest.raises(InputError, match="float"):
        Currency.of("EUR").to_minor(1.99)  # type: ignore[arg-type]


def test_zero_exponent_currency() -> None:
    yen = Currency.of("JPY")
    assert yen.to_minor("500") == 500
    with pytest.raises(InputError):
        yen.to_minor("1.5")
    assert yen.plain(500) == "500"


def test_format_uses_locale() -> None:
    eur = Currency.of("EUR")
    assert eur.format(123456, "de_DE") == "1.234,56\xa0€"
    assert eur.format(199, "en_IE") == "€1.99"


@given(st.integers(min_value=-(10**12), max_value=10**12))
def test_plain_round_trips(minor: int) -> None:
    eur = Currency.of("EUR")
    assert eur.to_minor(eur.plain(minor)) == minor


@pytest.mark.parametrize(
    ("amount", "inc", "expected"),
    [(102, 5, 100), (103, 5, 105), (1097, 5, 1095), (1098, 10, 1100), (7, 1, 7), (-103, 5, -105)],
)
def test_cash_rounding(amount: int, inc: int, expected: int) -> None:
    assert cash_round(amount, inc) == expected


@given(st.integers(min_value=0, max_value=10**9), st.sampled_from([5, 10, 20, 50, 100]))
def test_cash_rounding_stays_within_half_increment(amount: int, inc: int) -> None:
    rounded = cash_round(amount, inc)
    assert rounded % inc == 0
    assert abs(rounded - amount) * 2 <= inc


def test_round_minor_modes() -> None:
    assert round_minor(Decimal("2.5")) == 3
    assert round_minor(Decimal("2.5"), "half_even") == 2
    assert round_minor(Decimal("-2.5")) == -3
