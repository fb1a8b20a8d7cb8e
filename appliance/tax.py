"""Sales tax and VAT for a sale: pure, deterministic, integer minor units.

Pricing models
    ``prices_include_tax=True`` (VAT): each line amount is the gross shelf price and
    the tax is extracted. A line taxed at several rates has ``net = gross / (1 + sum
    of rates)``. ``prices_include_tax=False`` (US sales tax): the line amount is net
    and the tax is added on top.

Classes and rates
    A policy holds the rates of one location (``TaxRate``) and the product classes
    (``TaxClass``) naming which of them apply; ``rates=()`` is a fully exempt class.

Exemptions (per class, optionally limited to some of its rates)
    ``"below"``: the rate does not apply to an item whose unit price is under the
    threshold (New York clothing under $110). ``"excess"``: the rate applies only to
    the part of the unit price above the threshold (Massachusetts clothing over $175).
    Thresholds compare with the unit price *as priced* (gross when prices include
    tax) after discounts. A counted line has ``|amount| / |quantity|`` per unit and
    an excess line threshold of ``|quantity| x threshold`` (rounded half-up to a
    minor unit for a fractional count). A ``weighed`` line is one item: its whole
    amount is compared with the threshold. When several exemptions hit one rate the
    most generous wins. In inclusive mode the gross above an excess threshold is
    split into bands, each carrying the tax of the rates that apply in it.

Rounding
    Taxes are exact integer fractions until rounded; rounding is exact and only a
    tie depends on the mode, ``half_up`` (away from zero, so returns mirror sales)
    or ``half_even``, settled by :func:`appliance.money.round_minor`. Each rate is
    rounded on its own: a location whose tax tables use one combined rate (New York
    City's 8.875%) should configure that single rate.
    ``rounding="line"``: each line's tax per rate is rounded, then summed.
    ``rounding="invoice"``: the exact tax per rate is summed over the sale and
    rounded once, then allocated back to the lines by largest remainder: each line
    first gets its own rounded tax, then the difference is given one unit at a time
    to the lines whose rounding moved them furthest the other way (earliest line
    first on ties). Line taxes add up exactly and each stays within one minor unit
    of its exact value.

Guarantees
    ``total_gross == total_net + total_tax``; line taxes, rate taxes and
    ``total_tax`` agree exactly; inclusive: ``total_gross == sum(amount)``;
    exclusive: ``total_net == sum(amount)``; a negated sale (returns) gives exactly
    the negated result. Rounding drift bound, against the exact unrounded tax:
    ``|total_tax - exact| <= 0.5 x lines x rates`` minor units with line rounding
    (0.5 per line and rate applying to it) and ``<= 0.5 x rates`` with invoice
    rounding (0.5 per rate in the breakdown).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from itertools import pairwise
from math import lcm
from types import MappingProxyType
from typing import Literal

from appliance.errors import ConfigError, InputError
from appliance.money import ROUNDING_MODES, round_minor

__all__ = [
    "Exemption",
    "LineTax",
    "RateTotal",
    "TaxClass",
    "TaxPolicy",
    "TaxRate",
    "TaxResult",
    "TaxableLine",
    "compute_tax",
]

_HALF = Decimal("0.5")
_ZERO_ONE = (0, 1)

_Frac = tuple[int, int]  # exact value numerator / denominator, denominator > 0
_Prepared = tuple["TaxableLine", "_Class", list[_Frac], list[_Frac | None] | None]


@dataclass(frozen=True, slots=True)
class TaxRate:
    """One tax rate of a location, e.g. ``TaxRate("DE19", "MwSt 19%", Decimal("19"))``."""

    code: str
    name: str
    percent: Decimal


@dataclass(frozen=True, slots=True)
class Exemption:
    """A per-unit threshold (minor units) limiting some rates of a class.

    ``rates=()`` means every rate of the class.
    """

    threshold: int
    mode: Literal["below", "excess"]
    rates: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TaxClass:
    """A product tax class: the rate codes that apply, and their exemptions."""

    name: str
    rates: tuple[str, ...]
    exemptions: tuple[Exemption, ...] = ()


@dataclass(frozen=True, slots=True, eq=False)
class _Class:
    """A tax class precompiled to integer factors: rate ``i`` is ``nums[i] / scale``."""

    codes: tuple[str, ...]
    nums: tuple[int, ...]
    den: int  # denominator of the tax of a fully taxed line (scale, or scale + sum of nums)
    exemptions: tuple[tuple[int, str, int], ...]  # (rate index, mode, threshold)


@dataclass(frozen=True, slots=True)
class _Compiled:
    scale: int  # 100 x 10**decimals: rate fraction = num / scale
    classes: Mapping[str, _Class]


@dataclass(frozen=True)
class TaxPolicy:
    """Rates, classes and rounding rules of one location. Validated on creation."""

    rates: Mapping[str, TaxRate]
    classes: Mapping[str, TaxClass]
    prices_include_tax: bool
    rounding: Literal["line", "invoice"] = "line"
    rounding_mode: str = "half_up"
    _compiled: _Compiled = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        rates = dict(self.rates)
        classes = dict(self.classes)
        if not isinstance(self.prices_include_tax, bool):
            raise ConfigError(f"prices_include_tax must be true or false, not {self.prices_include_tax!r}")
        if self.rounding not in ("line", "invoice"):
            raise ConfigError(f"tax rounding must be 'line' or 'invoice', not {self.rounding!r}")
        if self.rounding_mode not in ROUNDING_MODES:
            raise ConfigError(f"unknown tax rounding mode {self.rounding_mode!r}")
        decimals = 0
        for code, rate in rates.items():
            if rate.code != code:
                raise ConfigError(f"tax rate listed as {code!r} has code {rate.code!r}")
            p = rate.percent
            if not isinstance(p, Decimal) or not p.is_finite() or not Decimal(0) <= p < Decimal(100):
                raise ConfigError(f"tax rate {code!r}: percent {p!r} must be a Decimal in [0, 100)")
            decimals = max(decimals, -min(0, int(p.as_tuple().exponent)))
        scale = 100 * 10**decimals
        compiled: dict[str, _Class] = {}
        for name, cls in classes.items():
            compiled[name] = _compile_class(name, cls, rates, scale, self.prices_include_tax)
        object.__setattr__(self, "rates", MappingProxyType(rates))
        object.__setattr__(self, "classes", MappingProxyType(classes))
        object.__setattr__(self, "_compiled", _Compiled(scale, MappingProxyType(compiled)))


def _compile_class(name: str, cls: TaxClass, rates: Mapping[str, TaxRate], scale: int, inclusive: bool) -> _Class:
    """Check one class against the known rates and precompute its integer factors."""
    if cls.name != name:
        raise ConfigError(f"tax class listed as {name!r} is named {cls.name!r}")
    given: list[object] = [cls.rates, *(ex.rates for ex in cls.exemptions)]
    if any(isinstance(value, str) for value in given):
        raise ConfigError(f"tax class {name!r}: rates must be a list of rate codes, not a string")
    codes = tuple(cls.rates)
    for code in codes:
        if code not in rates:
            raise ConfigError(f"tax class {name!r} uses unknown rate {code!r}")
    if len(set(codes)) != len(codes):
        raise ConfigError(f"tax class {name!r} lists a rate twice")
    if cls.exemptions and not codes:
        raise ConfigError(f"tax class {name!r} has exemptions but no rates")
    exemptions: list[tuple[int, str, int]] = []
    for ex in cls.exemptions:
        if ex.mode not in ("below", "excess"):
            raise ConfigError(f"tax class {name!r}: exemption mode must be 'below' or 'excess'")
        if type(ex.threshold) is not int or ex.threshold < 0:
            raise ConfigError(f"tax class {name!r}: exemption threshold {ex.threshold!r} must be an int >= 0")
        for code in ex.rates:
            if code not in codes:
                raise ConfigError(f"tax class {name!r}: exemption names rate {code!r} not in the class")
        for code in ex.rates or codes:
            exemptions.append((codes.index(code), ex.mode, ex.threshold))
    nums = tuple(int(rates[c].percent * (scale // 100)) for c in codes)
    den = scale + sum(nums) if inclusive else scale
    return _Class(codes, nums, den, tuple(exemptions))


@dataclass(frozen=True, slots=True)
class TaxableLine:
    """One sale line as the tax engine sees it.

    ``amount`` is after all discounts, in minor units, as priced (gross when prices
    include tax). ``quantity`` counts units (or kg); negative amounts are returns.
    ``weighed`` treats the whole line as one item for thresholds.
    """

    key: str
    tax_class: str
    amount: int
    quantity: Decimal
    weighed: bool = False


@dataclass(frozen=True, slots=True)
class LineTax:
    """Tax of one line; ``by_rate`` holds every rate of its class (0 when exempt)."""

    key: str
    net: int
    tax: int
    gross: int
    by_rate: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class RateTotal:
    """Breakdown of one rate over the sale; ``taxable`` is the net base subject to it.

    A line taxed on its whole amount adds its net; a line under an excess threshold
    adds its exact partial base, rounded. With invoice rounding a tie in the
    allocation can shift one unit between those two kinds of line.
    """

    code: str
    name: str
    percent: Decimal
    taxable: int
    tax: int


@dataclass(frozen=True, slots=True)
class TaxResult:
    """Tax of a whole sale: lines by key (input order) and rates sorted by code."""

    lines: Mapping[str, LineTax]
    rates: tuple[RateTotal, ...]
    total_net: int
    total_tax: int
    total_gross: int


def _add(a: _Frac, num: int, den: int) -> _Frac:
    """Exact sum of the fraction ``a`` and ``num / den`` over their least common denominator."""
    if a[1] == den:
        return a[0] + num, den
    common = lcm(a[1], den)
    return a[0] * (common // a[1]) + num * (common // den), common


def _round(num: int, den: int, mode: str) -> int:
    """Round ``num / den`` (``den > 0``) to an int, exactly.

    Only an exact tie depends on the mode; it is settled by :func:`round_minor`.
    """
    q, r = divmod(num, den)
    r += r
    if r < den:
        return q
    if r > den:
        return q + 1
    return round_minor(Decimal(q) + _HALF, mode)


def _units(line: TaxableLine) -> int | Decimal:
    """How many items the line counts for thresholds (1 for a weighed line)."""
    if line.weighed:
        return 1
    qty: Decimal | int = line.quantity  # an int quantity is accepted too
    if isinstance(qty, int):
        return abs(qty)
    q = abs(qty)
    if q == q.to_integral_value():
        return int(q)
    return q


def _banded(
    line: TaxableLine, a: int, cc: _Class, scale: int, inclusive: bool
) -> tuple[list[_Frac], list[_Frac | None]]:
    """Exact tax and partial base per rate of an unsigned amount ``a`` with exemptions.

    A base is ``None`` when the rate applies to the whole line.
    """
    n = _units(line)
    floors = [0] * len(cc.nums)
    for idx, mode, threshold in cc.exemptions:
        limit = n * threshold
        if mode == "below":
            if a < limit:
                floors[idx] = a
        else:
            floor = limit if type(limit) is int else round_minor(Decimal(limit))
            floors[idx] = max(floors[idx], min(floor, a))
    taxes: list[_Frac] = [_ZERO_ONE] * len(cc.nums)
    bases: list[_Frac | None] = [None if f == 0 else _ZERO_ONE for f in floors]
    if not inclusive:
        for i, (num, floor) in enumerate(zip(cc.nums, floors, strict=True)):
            taxes[i] = ((a - floor) * num, scale)
            if floor:
                bases[i] = (a - floor, 1)
        return taxes, bases
    points = sorted({0, a, *floors})
    for lo, hi in pairwise(points):
        band = hi - lo
        active = [i for i, f in enumerate(floors) if f <= lo]
        den = scale + sum(cc.nums[i] for i in active)
        for i in active:
            taxes[i] = _add(taxes[i], band * cc.nums[i], den)
            base = bases[i]
            if base is not None:
                bases[i] = _add(base, band * scale, den)
    return taxes, bases


def compute_tax(lines: Sequence[TaxableLine], policy: TaxPolicy) -> TaxResult:
    """Compute the tax of a sale under ``policy``; see the module docstring for the rules.

    Raises :class:`InputError` for an unknown tax class, a duplicate key, a non-int
    amount, a non-Decimal quantity, or a zero quantity with a non-zero amount.
    """
    comp = policy._compiled
    classes = comp.classes
    scale = comp.scale
    inclusive = policy.prices_include_tax
    mode = policy.rounding_mode

    # Pass 1: exact tax per line and rate as integer fractions.
    prepared: list[_Prepared] = []
    keys: set[str] = set()
    for line in lines:
        cc = classes.get(line.tax_class)
        if cc is None:
            raise InputError(f"line {line.key!r}: unknown tax class {line.tax_class!r}")
        amount = line.amount
        qty: object = line.quantity
        if type(amount) is not int:
            raise InputError(f"line {line.key!r}: amount {amount!r} must be an int of minor units")
        if not (type(qty) is int or (type(qty) is Decimal and qty.is_finite())):
            raise InputError(f"line {line.key!r}: quantity {qty!r} must be a finite Decimal")
        if not qty and amount:
            raise InputError(f"line {line.key!r}: quantity 0 with a non-zero amount")
        if line.key in keys:
            raise InputError(f"duplicate line key {line.key!r}")
        keys.add(line.key)
        if cc.exemptions:
            taxes, parts = _banded(line, abs(amount), cc, scale, inclusive)
            if amount < 0:
                taxes = [(-n, d) for n, d in taxes]
                parts = [None if b is None else (-b[0], b[1]) for b in parts]
            prepared.append((line, cc, taxes, parts))
        else:
            den = cc.den
            prepared.append((line, cc, [(amount * num, den) for num in cc.nums], None))

    # Pass 2: round per line, or per rate over the invoice and allocate back.
    if policy.rounding == "line":
        rounded = [[_round(n, d, mode) for n, d in taxes] for _line, _cc, taxes, _parts in prepared]
    else:
        rounded = _allocate_invoice(prepared, mode)

    # Pass 3: assemble lines, then fold the rows of each class into the rate breakdown.
    out: dict[str, LineTax] = {}
    rows: dict[_Class, list[list[int]]] = {}
    full_net: dict[_Class, int] = {}  # net of the lines whose every rate taxes the whole line
    rate_base: dict[str, int] = {}
    total_net = total_tax = 0
    for (line, cc, _taxes, bases), line_taxes in zip(prepared, rounded, strict=True):
        tax = sum(line_taxes)
        amount = line.amount
        net = amount - tax if inclusive else amount
        out[line.key] = LineTax(line.key, net, tax, net + tax, dict(zip(cc.codes, line_taxes, strict=False)))
        total_net += net
        total_tax += tax
        if cc in rows:
            rows[cc].append(line_taxes)
        else:
            rows[cc] = [line_taxes]
            full_net[cc] = 0
        if bases is None:
            full_net[cc] += net
        else:
            for code, part in zip(cc.codes, bases, strict=True):
                base = net if part is None else _round(part[0], part[1], mode)
                rate_base[code] = rate_base.get(code, 0) + base
    rate_tax: dict[str, int] = {}
    for cc, class_rows in rows.items():
        net = full_net[cc]
        for code, column in zip(cc.codes, zip(*class_rows, strict=True), strict=True):
            rate_tax[code] = rate_tax.get(code, 0) + sum(column)
            rate_base[code] = rate_base.get(code, 0) + net
    rates = policy.rates
    totals = tuple(
        RateTotal(code, rates[code].name, rates[code].percent, rate_base[code], rate_tax[code])
        for code in sorted(rate_tax)
    )
    return TaxResult(out, totals, total_net, total_tax, total_net + total_tax)


def _allocate_invoice(prepared: Sequence[_Prepared], mode: str) -> list[list[int]]:
    """Round each rate once over the sale and spread it over the lines (largest remainder)."""
    rounded = [[_round(n, d, mode) for n, d in taxes] for _line, _cc, taxes, _bases in prepared]
    groups: dict[_Class, list[int]] = {}
    for li, item in enumerate(prepared):
        group = groups.get(item[1])
        if group is None:
            groups[item[1]] = [li]
        else:
            group.append(li)
    # Exact tax per rate: lines without exemptions share their class denominator.
    exact: dict[str, _Frac] = {}
    cells: dict[str, list[tuple[int, int]]] = {}
    for cc, idxs in groups.items():
        plain = sum(prepared[li][0].amount for li in idxs if prepared[li][3] is None)
        banded = [li for li in idxs if prepared[li][3] is not None]
        for slot, (code, num) in enumerate(zip(cc.codes, cc.nums, strict=True)):
            total = _add(exact.get(code, _ZERO_ONE), plain * num, cc.den)
            for li in banded:
                n, d = prepared[li][2][slot]
                total = _add(total, n, d)
            exact[code] = total
            cells.setdefault(code, []).extend((li, slot) for li in idxs)
    for code, total in exact.items():
        target = _round(total[0], total[1], mode)
        diff = target - sum(rounded[li][slot] for li, slot in cells[code])
        if not diff:
            continue
        # Rounding error of a cell: (n - r * d) / d, compared over a common denominator.
        # |diff| cells always lean the way of diff: each error is within 0.5 and their sum
        # is within 0.5 of diff, so at least 2|diff| - 1 of them have its sign.
        step = 1 if diff > 0 else -1
        common = lcm(*{prepared[li][2][slot][1] for li, slot in cells[code]})
        lean: list[tuple[int, int, int]] = []
        for li, slot in cells[code]:
            n, d = prepared[li][2][slot]
            err = (n - rounded[li][slot] * d) * step
            if err > 0:
                lean.append((-err * (common // d), li, slot))
        lean.sort()
        assert len(lean) >= abs(diff), "tax allocation invariant broken"
        for _err, li, slot in lean[: abs(diff)]:
            rounded[li][slot] += step
    return rounded
