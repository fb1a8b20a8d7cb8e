"""Money as integer minor units.

Amounts are ``int`` counts of the currency's minor unit (cents, pence).
Intermediate math uses :class:`decimal.Decimal`; ``float`` is never accepted.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal, InvalidOperation
from functools import lru_cache

from appliance.errors import InputError

#: Rounding modes the configuration may name.
ROUNDING_MODES = {"half_up": ROUND_HALF_UP, "half_even": ROUND_HALF_EVEN}


def round_minor(value: Decimal, mode: str = "half_up") -> int:
    """Round a Decimal amount of minor units to an integer."""
    return int(value.quantize(Decimal(1), rounding=ROUNDING_MODES[mode]))


@lru_cache(maxsize=64)
def currency_exponent(code: str) -> int:
    """Number of minor-unit digits of an ISO 4217 currency (2 for EUR, 0 for JPY)."""
    from babel.numbers import get_currency_precision

    precision: int = get_currency_precision(code)
    return precision


@dataclass(frozen=True)
class Currency:
    """An ISO 4217 currency with its minor-unit exponent."""

    code: str
    exponent: int

    @classmethod
    def of(cls, code: str) -> Currency:
        """Build the currency for an ISO code, looking the exponent up in CLDR."""
        return cls(code.upper(), currency_exponent(code.upper()))

    @property
    def scale(self) -> int:
        """How many minor units make one major unit."""
        return int(10**self.exponent)

    def to_minor(self, major: str | Decimal | int) -> int:
        """Convert a major-unit amount ("1.99") to minor units, exactly.

        Raises :class:`InputError` for floats, non-numbers, or more decimals
        than the currency has.
        """
        if isinstance(major, float | bool):
            raise InputError(f"amount {major!r} must be a string or Decimal, not {type(major).__name__}")
        try:
            value = Decimal(str(major).strip())
        except InvalidOperation:
            raise InputError(f"{major!r} is not an amount") from None
        if not value.is_finite():
            raise InputError(f"{major!r} is not a finite amount")
        minor = value * self.scale
        if minor != minor.to_integral_value():
            raise InputError(f"{major!r} has more than {self.exponent} decimals for {self.code}")
        return int(minor)

    def to_decimal(self, minor: int) -> Decimal:
        """Minor units back to a major-unit Decimal (199 -> Decimal("1.99"))."""
        return Decimal(minor).scaleb(-self.exponent)

    def plain(self, minor: int) -> str:
        """Fixed-point text without symbol, for receipts and CSV ("-1.99")."""
        return f"{self.to_decimal(minor):.{self.exponent}f}"

    def format(self, minor: int, locale: str = "en_US") -> str:
        """Locale-aware text with the currency symbol, via Babel ("1,99 €")."""
        from babel.numbers import format_currency

        return str(format_currency(self.to_decimal(minor), self.code, locale=locale))


def cash_round(amount: int, increment: int) -> int:
    """Round a cash amount to the nearest ``increment`` minor units (Swedish rounding).

    Halves round up, away from zero for positive amounts: 1.02 -> 1.00, 1.03 -> 1.05
    with an increment of 5.
    """
    if increment <= 1:
        return amount
    return round_minor(Decimal(amount) / increment) * increment
