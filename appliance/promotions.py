"""Promotions engine: pure, deterministic, best-for-customer discounts for a cart.

Called on every cart change, so it does no I/O and keeps no state.

Promotion kinds
---------------
* :class:`PercentOff` / :class:`AmountOff` - per-unit discounts ("unit offers") on a
  :class:`Target` (SKU set and/or departments). Weighed lines take them per kg.
* :class:`MultiBuy` - "3 for 2" (``buy``/``pay``) or "2 for 5.00" (``buy``/``price``).
  In each group the cheapest ``buy - pay`` units are free.
* :class:`BuyXGetY` - buy ``buy`` units of ``buy_target``, get ``get`` units of
  ``get_target`` at ``percent`` off. When both targets are equal, the discounted units
  are the cheapest of each deal (equal-or-lesser value); with different targets the
  most expensive get-eligible units are discounted.
* :class:`SpendThreshold` - amount or percent off the (target part of the) cart once
  its eligible subtotal, after item-level promotions, reaches ``threshold``.

Every kind may carry a :class:`Window` and a coupon code (matched case-insensitively).
Weighed lines never count as units for multi-buy or buy-X-get-Y. Ineligible lines and
lines with a non-positive amount or quantity (returns) take no promotion at all.

Resolution algorithm
--------------------
1. Active promotions are filtered by window (store-local time) and coupon. Lines are
   processed sorted by key and promotions by id, so input order never matters.
2. *Unit offers*: every promotable line gets its best per-unit offer ``v`` (largest
   per-unit saving, ties to the smallest id). Per-unit offers never interact, so any
   unit not taken by a deal promotion simply takes its best offer. O(P*L).
3. *Deal promotions* (multi-buy, BXGY) are split into competing groups: connected
   components of promotions sharing a line (union-find, O(P*L)).
4. Per component, each promotion generates its deals greedily from the units still
   available (price descending; among equal prices, units with a smaller opportunity
   cost ``v`` and fewer competing promotions first). A depth-first search, memoised
   on (promotion, remaining units), tries every number of deals 0..max for every
   promotion, in order of standalone net gain, scoring a leaf as deal savings plus
   ``v`` for every unit left. It is exhaustive over those choices as long as it stays
   within :data:`SEARCH_NODE_LIMIT` nodes (components of a few promotions over
   ordinary quantities). Beyond that, a greedy fallback gives each promotion in the
   same order the deal count with the largest net gain over the unit offers.
   Each node costs O(L_c + D) (lines in the component + deals), so a component costs
   at most O(SEARCH_NODE_LIMIT * (L_c + D)); single-promotion components are solved
   exactly in one pass. Equal totals keep the first choice found (more deals for the
   earlier promotion), which is deterministic.
5. Savings are compared exactly (``Decimal``) and rounded half-up once per promotion.
6. Cart level: among active :class:`SpendThreshold` promotions, the single one giving
   the largest saving on the amounts remaining after item-level discounts applies
   (ties to the smallest id). Thresholds do not stack, so tiers can be expressed as
   separate promotions.
7. Each promotion's saving is allocated to lines with :func:`allocate` (proportional
   to the discounted amounts, largest remainder, ties by line key). A unit is consumed
   by at most one item-level promotion and no allocation exceeds the amount it is
   proportional to, so a line never goes negative.

A 50-line cart with ~20 active promotions evaluates in a few hundred microseconds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, tzinfo
from decimal import Decimal, InvalidOperation
from itertools import pairwise
from types import MappingProxyType
from typing import Any, TypeAlias

from appliance.errors import InputError
from appliance.money import Currency, round_minor

#: Largest search tree (product of (max deals + 1) over a competing group's
#: promotions) searched exhaustively; bigger groups use the greedy fallback.
SEARCH_LIMIT = 64

WEEKDAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HUNDRED = Decimal(100)
_ZERO = Decimal(0)


# --------------------------------------------------------------------------- model


def _check_names(values: object, what: str) -> None:
    if not isinstance(values, frozenset):
        raise InputError(f"{what} must be a frozenset, got {type(values).__name__}")
    for value in values:
        if not isinstance(value, str) or not value:
            raise InputError(f"{what} must hold non-empty strings, got {value!r}")


@dataclass(frozen=True)
class Target:
    """Which lines a promotion applies to: any listed SKU or department; empty = everything."""

    skus: frozenset[str] = frozenset()
    departments: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        _check_names(self.skus, "target skus")
        _check_names(self.departments, "target departments")

    @property
    def everything(self) -> bool:
        """True when the target matches every line."""
        return not self.skus and not self.departments

    def matches(self, sku: str, department: str) -> bool:
        """Whether a line with this SKU and department is targeted."""
        return self.everything or sku in self.skus or department in self.departments


def _aware(value: datetime) -> bool:
    return value.tzinfo is not None and value.utcoffset() is not None


@dataclass(frozen=True)
class Window:
    """When a promotion runs.

    ``start`` (inclusive) and ``end`` (exclusive) are aware instants. ``weekdays``
    (0 = Monday) and the daily ``daily_start``/``daily_end`` times are evaluated in the
    store's local time. A daily window may wrap midnight (22:00-02:00); its part after
    midnight belongs to the previous weekday. A missing daily bound means midnight.
    """

    start: datetime | None = None
    end: datetime | None = None
    weekdays: frozenset[int] = frozenset()
    daily_start: time | None = None
    daily_end: time | None = None

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, datetime) or not _aware(value)):
                raise InputError(f"window {name} must be a timezone-aware datetime, got {value!r}")
        if self.start is not None and self.end is not None and self.start >= self.end:
            raise InputError(
                f"window start {self.start.isoformat()} is not before end {self.end.isoformat()}"
            )
        if not isinstance(self.weekdays, frozenset) or any(
            isinstance(d, bool) or not isinstance(d, int) or not 0 <= d <= 6 for d in self.weekdays
        ):
            raise InputError(
                f"window weekdays must be a frozenset of 0..6 (Monday = 0), got {self.weekdays!r}"
            )
        for name in ("daily_start", "daily_end"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, time) or value.tzinfo is not None):
                raise InputError(f"window {name} must be a naive local time, got {value!r}")
        if self.daily_end is not None and (self.daily_start or time.min) == self.daily_end:
            raise InputError("window daily_start and daily_end must differ")

    def contains(self, now: datetime, tz: tzinfo) -> bool:
        """Whether the aware instant ``now`` falls in the window, for a store in ``tz``."""
        if not _aware(now):
            raise InputError(f"time {now!r} must be timezone-aware")
        return self._contains(now, now.astimezone(tz))

    def _contains(self, now: datetime, local: datetime) -> bool:
        if self.start is not None and now < self.start:
            return False
        if self.end is not None and now >= self.end:
            return False
        day = local.weekday()
        if self.daily_start is not None or self.daily_end is not None:
            clock = local.time()
            low = self.daily_start or time.min
            high = self.daily_end
            if high is None:
                inside = clock >= low
            elif low < high:
                inside = low <= clock < high
            elif clock >= low:
                inside = True
            else:
                inside = clock < high
                day = (day - 1) % 7
            if not inside:
                return False
        return not self.weekdays or day in self.weekdays


_ALWAYS = Window()


def _check_percent(value: object, what: str) -> None:
    if not isinstance(value, Decimal) or not value.is_finite() or not _ZERO < value <= _HUNDRED:
        raise InputError(f"{what} must be a Decimal in (0, 100], got {value!r}")


def _check_int(value: object, what: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{what} must be an integer >= {minimum}, got {value!r}")


def _check_target(value: object, what: str) -> None:
    if not isinstance(value, Target):
        raise InputError(f"{what} must be a Target, got {type(value).__name__}")


@dataclass(frozen=True)
class _PromotionBase:
    """Fields shared by every promotion kind (window and coupon are keyword-only)."""

    id: str
    name: str
    window: Window = field(default=_ALWAYS, kw_only=True)
    coupon: str | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id.strip():
            raise InputError(f"promotion id must be a non-empty string, got {self.id!r}")
        if not isinstance(self.name, str) or not self.name.strip():
            raise InputError(f"promotion {self.id!r}: name must be a non-empty string")
        if not isinstance(self.window, Window):
            raise InputError(f"promotion {self.id!r}: window must be a Window")
        if self.coupon is not None and (not isinstance(self.coupon, str) or not self.coupon.strip()):
            raise InputError(f"promotion {self.id!r}: coupon must be a non-empty string or None")

    def _what(self, name: str) -> str:
        return f"promotion {self.id!r}: {name}"


@dataclass(frozen=True)
class PercentOff(_PromotionBase):
    """``percent`` off every targeted unit (or weighed line)."""

    target: Target
    percent: Decimal

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_target(self.target, self._what("target"))
        _check_percent(self.percent, self._what("percent"))


@dataclass(frozen=True)
class AmountOff(_PromotionBase):
    """``amount`` minor units off every targeted unit, or per kg on weighed lines."""

    target: Target
    amount: int

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_target(self.target, self._what("target"))
        _check_int(self.amount, self._what("amount"), 1)


@dataclass(frozen=True)
class MultiBuy(_PromotionBase):
    """Buy ``buy`` targeted units and pay for ``pay`` of them, or pay ``price`` for them."""

    target: Target
    buy: int
    pay: int | None = None
    price: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_target(self.target, self._what("target"))
        _check_int(self.buy, self._what("buy"), 1)
        if (self.pay is None) == (self.price is None):
            raise InputError(self._what("give exactly one of pay and price"))
        if self.pay is not None:
            _check_int(self.pay, self._what("pay"), 0)
            if self.pay >= self.buy:
                raise InputError(self._what(f"pay ({self.pay}) must be less than buy ({self.buy})"))
        else:
            _check_int(self.price, self._what("price"), 1)


@dataclass(frozen=True)
class BuyXGetY(_PromotionBase):
    """Buy ``buy`` units of ``buy_target``, get ``get`` units of ``get_target`` at ``percent`` off."""

    buy_target: Target
    buy: int
    get_target: Target
    get: int
    percent: Decimal = Decimal(100)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_target(self.buy_target, self._what("buy_target"))
        _check_target(self.get_target, self._what("get_target"))
        _check_int(self.buy, self._what("buy"), 1)
        _check_int(self.get, self._what("get"), 1)
        _check_percent(self.percent, self._what("percent"))


@dataclass(frozen=True)
class SpendThreshold(_PromotionBase):
    """``amount`` or ``percent`` off the targeted lines once their subtotal reaches ``threshold``."""

    threshold: int
    amount: int | None = None
    percent: Decimal | None = None
    target: Target = Target()

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_int(self.threshold, self._what("threshold"), 0)
        _check_target(self.target, self._what("target"))
        if (self.amount is None) == (self.percent is None):
            raise InputError(self._what("give exactly one of amount and percent"))
        if self.amount is not None:
            _check_int(self.amount, self._what("amount"), 1)
        else:
            _check_percent(self.percent, self._what("percent"))


Promotion: TypeAlias = PercentOff | AmountOff | MultiBuy | BuyXGetY | SpendThreshold
_ItemPromotion: TypeAlias = PercentOff | AmountOff | MultiBuy | BuyXGetY


@dataclass(frozen=True)
class PromoLine:
    """A cart line as the engine sees it; ``amount`` is the line amount before promotions.

    Counted lines need an integral ``quantity`` and ``amount == unit_price * quantity``;
    weighed lines carry kg in ``quantity`` and their rounded amount.
    """

    key: str
    sku: str
    department: str
    unit_price: int
    quantity: Decimal
    amount: int
    weighed: bool = False
    eligible: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key:
            raise InputError(f"line key must be a non-empty string, got {self.key!r}")
        what = f"line {self.key!r}"
        if not isinstance(self.sku, str) or not isinstance(self.department, str):
            raise InputError(f"{what}: sku and department must be strings")
        for name in ("unit_price", "amount"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise InputError(f"{what}: {name} must be an integer of minor units, got {value!r}")
        if not isinstance(self.quantity, Decimal) or not self.quantity.is_finite():
            raise InputError(f"{what}: quantity must be a finite Decimal, got {self.quantity!r}")
        if not self.weighed:
            if self.quantity != self.quantity.to_integral_value():
                raise InputError(f"{what}: counted quantity {self.quantity} must be whole")
            if self.amount != self.unit_price * int(self.quantity):
                raise InputError(
                    f"{what}: amount {self.amount} is not unit_price {self.unit_price} x {self.quantity}"
                )


@dataclass(frozen=True)
class PromoContext:
    """When and where the cart is evaluated: an aware ``now``, the store zone, entered coupons."""

    now: datetime
    tz: tzinfo
    coupons: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if not isinstance(self.now, datetime) or not _aware(self.now):
            raise InputError(f"context now must be a timezone-aware datetime, got {self.now!r}")
        if not isinstance(self.tz, tzinfo):
            raise InputError(f"context tz must be a tzinfo, got {self.tz!r}")
        _check_names(self.coupons, "context coupons")


@dataclass(frozen=True)
class Applied:
    """One promotion that applied: its saving and how it is split over line keys."""

    promo_id: str
    name: str
    amount: int
    allocations: Mapping[str, int]


@dataclass(frozen=True)
class PromoResult:
    """Outcome of :func:`evaluate`; ``total`` is the total saving in minor units.

    ``line_discounts`` has every input line key (0 when undiscounted); ``line_reasons``
    lists, per affected line, the names of the promotions that discounted or consumed it.
    """

    applied: tuple[Applied, ...]
    line_discounts: Mapping[str, int]
    line_reasons: Mapping[str, tuple[str, ...]]
    total: int


def is_active(promotion: Promotion, ctx: PromoContext) -> bool:
    """Whether a promotion's window contains ``ctx.now`` and its coupon (if any) was entered."""
    if promotion.coupon is not None and promotion.coupon.casefold() not in {
        c.casefold() for c in ctx.coupons
    }:
        return False
    return promotion.window._contains(ctx.now, ctx.now.astimezone(ctx.tz))


# ------------------------------------------------------------------- allocation


def allocate(amount: int, weights: Mapping[str, int]) -> dict[str, int]:
    """Split ``amount`` over keys proportionally to ``weights`` (largest remainder).

    Shares are integers summing exactly to ``amount``; leftover units go to the largest
    remainders, ties to the smallest key. Keys with zero share are omitted. When
    ``amount`` does not exceed the total weight, no share exceeds its weight.
    """
    if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
        raise InputError(f"amount to allocate must be a non-negative integer, got {amount!r}")
    if any(isinstance(w, bool) or not isinstance(w, int) or w < 0 for w in weights.values()):
        raise InputError("allocation weights must be non-negative integers")
    total_weight = sum(weights.values())
    if amount == 0:
        return {}
    if total_weight == 0:
        raise InputError(f"cannot allocate {amount} over zero weight")
    keys = sorted(weights)
    shares: dict[str, int] = {}
    remainders: list[tuple[int, str]] = []
    given = 0
    for key in keys:
        share, rest = divmod(amount * weights[key], total_weight)
        shares[key] = share
        given += share
        remainders.append((-rest, key))
    remainders.sort()
    for _, key in remainders[: amount - given]:
        shares[key] += 1
    return {key: share for key, share in shares.items() if share}


# ------------------------------------------------------------------- evaluation

_Units: TypeAlias = tuple[tuple[int, int], ...]  # (local line, units)
# A deal: exact saving, net gain over the unit offers of its units, units consumed,
# allocation weights (local line, minor units).
_Deal: TypeAlias = tuple[Decimal, Decimal, _Units, _Units]


@dataclass
class _Acc:
    """Accumulated outcome of one item-level promotion."""

    exact: Decimal = _ZERO
    weights: dict[int, int] = field(default_factory=dict)
    lines: set[int] = field(default_factory=set)

    def add(self, line: int, saving: Decimal, weight: int) -> None:
        self.exact += saving
        if weight:
            self.weights[line] = self.weights.get(line, 0) + weight
        self.lines.add(line)


def _chunks(order: Sequence[int], state: Sequence[int], size: int) -> list[_Units]:
    """Cut the available units, in ``order``, into consecutive groups of ``size``."""
    groups: list[_Units] = []
    current: list[tuple[int, int]] = []
    need = size
    for line in order:
        avail = state[line]
        while avail:
            if need == size and avail >= size:
                whole = avail // size
                groups.extend([((line, size),)] * whole)
                avail -= whole * size
                continue
            take = min(avail, need)
            current.append((line, take))
            avail -= take
            need -= take
            if not need:
                groups.append(tuple(current))
                current = []
                need = size
    return groups


def _tail(group: _Units, units: int) -> _Units:
    """The last ``units`` units of a group (its cheapest, as groups run price-descending)."""
    out: list[tuple[int, int]] = []
    for line, count in reversed(group):
        take = min(count, units)
        out.append((line, take))
        units -= take
        if not units:
            break
    return tuple(out)


class _Component:
    """A group of deal promotions competing for the same counted lines."""

    def __init__(
        self,
        promos: list[MultiBuy | BuyXGetY],
        eligible: list[tuple[list[int], list[int]]],
        price: list[int],
        count: list[int],
        value: list[Decimal],
    ) -> None:
        lines = sorted({i for buy, get in eligible for i in (*buy, *get)})
        local = {g: n for n, g in enumerate(lines)}
        self.lines = lines
        self.price = [price[g] for g in lines]
        self.value = [value[g] for g in lines]
        self.state = tuple(count[g] for g in lines)
        contest = [0] * len(lines)
        for buy, get in eligible:
            for g in set(buy) | set(get):
                contest[local[g]] += 1
        pr, val = self.price, self.value

        def desc(n: int) -> tuple[int, Decimal, int, int]:
            return (-pr[n], val[n], contest[n], n)

        self.gens: list[Callable[[Sequence[int]], list[_Deal]]] = []
        for promo, (buy, get) in zip(promos, eligible, strict=True):
            buy_l = [local[g] for g in buy]
            get_l = [local[g] for g in get]
            if isinstance(promo, MultiBuy):
                self.gens.append(self._multi_buy(promo, sorted(buy_l, key=desc)))
            elif promo.buy_target == promo.get_target:
                self.gens.append(self._bxgy_same(promo, sorted(buy_l, key=desc)))
            else:
                get_set = set(get_l)
                buy_order = sorted(buy_l, key=lambda n: (n in get_set, val[n], pr[n], contest[n], n))
                self.gens.append(self._bxgy_split(promo, buy_order, sorted(get_l, key=desc), set(buy_l)))
        self.promos = promos

    def _deal(self, saving: Decimal, units: _Units, weights: _Units) -> _Deal:
        value = self.value
        return (saving, saving - sum((value[n] * c for n, c in units), _ZERO), units, weights)

    def _multi_buy(self, promo: MultiBuy, order: list[int]) -> Callable[[Sequence[int]], list[_Deal]]:
        price = self.price

        def gen(state: Sequence[int]) -> list[_Deal]:
            deals: list[_Deal] = []
            for group in _chunks(order, state, promo.buy):
                if promo.pay is not None:
                    saving = sum(price[n] * c for n, c in _tail(group, promo.buy - promo.pay))
                else:
                    saving = sum(price[n] * c for n, c in group) - (promo.price or 0)
                    if saving <= 0:
                        break
                deals.append(self._deal(Decimal(saving), group, tuple((n, price[n] * c) for n, c in group)))
            return deals

        return gen

    def _bxgy_same(self, promo: BuyXGetY, order: list[int]) -> Callable[[Sequence[int]], list[_Deal]]:
        price = self.price
        rate = promo.percent / _HUNDRED

        def gen(state: Sequence[int]) -> list[_Deal]:
            deals: list[_Deal] = []
            for group in _chunks(order, state, promo.buy + promo.get):
                weights = tuple((n, price[n] * c) for n, c in _tail(group, promo.get))
                deals.append(self._deal(rate * sum(w for _, w in weights), group, weights))
            return deals

        return gen

    def _bxgy_split(
        self, promo: BuyXGetY, buy_order: list[int], get_order: list[int], buy_set: set[int]
    ) -> Callable[[Sequence[int]], list[_Deal]]:
        price = self.price
        rate = promo.percent / _HUNDRED

        def gen(state: Sequence[int]) -> list[_Deal]:
            left = list(state)
            buy_avail = sum(left[n] for n in buy_order)
            deals: list[_Deal] = []
            while buy_avail >= promo.buy:
                spare = buy_avail - promo.buy  # buy-eligible units that may serve as gets
                need = promo.get
                gets: list[tuple[int, int]] = []
                for n in get_order:
                    take = min(left[n], need)
                    if n in buy_set:
                        take = min(take, spare)
                        spare -= take
                        buy_avail -= take
                    if take > 0:
                        gets.append((n, take))
                        left[n] -= take
                        need -= take
                        if not need:
                            break
                if need:
                    break
                need = promo.buy
                buys: list[tuple[int, int]] = []
                for n in buy_order:
                    take = min(left[n], need)
                    if take:
                        buys.append((n, take))
                        left[n] -= take
                        need -= take
                        if not need:
                            break
                buy_avail -= promo.buy
                weights = tuple((n, price[n] * c) for n, c in gets)
                deals.append(self._deal(rate * sum(w for _, w in weights), (*buys, *gets), weights))
            return deals

        return gen

    def _net(self, deals: list[_Deal]) -> tuple[int, Decimal]:
        """Best deal count by net gain over leaving the units to unit offers (ties: more deals)."""
        best_d, best, acc = 0, _ZERO, _ZERO
        for d, deal in enumerate(deals, 1):
            acc += deal[1]
            if acc >= best:
                best_d, best = d, acc
        return best_d, best

    def solve(self) -> list[tuple[MultiBuy | BuyXGetY, list[_Deal]]]:
        """Choose deals for every promotion; returns them in search order."""
        alone = [self._net(deals) for deals in (gen(self.state) for gen in self.gens)]
        order = sorted(range(len(self.promos)), key=lambda i: (-alone[i][1], self.promos[i].id))
        gens = [self.gens[i] for i in order]
        tree = 1
        for i in order:
            tree *= alone[i][0] + 1
        counts = self._search(gens) if len(gens) > 1 and tree <= SEARCH_LIMIT else None
        state = list(self.state)
        chosen: list[tuple[MultiBuy | BuyXGetY, list[_Deal]]] = []
        for k, gen in enumerate(gens):
            deals = gen(state)
            take = counts[k] if counts is not None else self._net(deals)[0]
            for deal in deals[:take]:
                for n, c in deal[2]:
                    state[n] -= c
            chosen.append((self.promos[order[k]], deals[:take]))
        return chosen

    def _search(self, gens: list[Callable[[Sequence[int]], list[_Deal]]]) -> list[int]:
        """Exhaustive search over deal counts, memoised on (promotion, remaining units)."""
        memo: dict[tuple[int, tuple[int, ...]], tuple[Decimal, tuple[int, ...]]] = {}
        last = len(gens)

        def best(k: int, state: tuple[int, ...]) -> tuple[Decimal, tuple[int, ...]]:
            if k == last:
                return _ZERO, ()
            key = (k, state)
            hit = memo.get(key)
            if hit is not None:
                return hit
            current = list(state)
            acc = _ZERO
            sub_net, sub_plan = best(k + 1, state)
            result = (sub_net, (0, *sub_plan))
            for d, (_, net, units, _) in enumerate(gens[k](state), 1):
                acc += net
                for n, c in units:
                    current[n] -= c
                sub_net, sub_plan = best(k + 1, tuple(current))
                if acc + sub_net >= result[0]:
                    result = (acc + sub_net, (d, *sub_plan))
            memo[key] = result
            return result

        return list(best(0, self.state)[1])


def _unit_saving(promo: PercentOff | AmountOff, line: PromoLine, price: int) -> Decimal:
    """Exact saving of a unit offer on one unit (or one weighed line)."""
    if isinstance(promo, PercentOff):
        return promo.percent * price / _HUNDRED
    if line.weighed:
        return Decimal(min(round_minor(promo.amount * line.quantity), line.amount))
    return Decimal(min(promo.amount, price))


def _find(parent: list[int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def evaluate(lines: Sequence[PromoLine], promotions: Sequence[Promotion], ctx: PromoContext) -> PromoResult:
    """Apply the best-for-customer combination of active promotions to a cart."""
    ordered = sorted(lines, key=lambda ln: ln.key)
    for a, b in pairwise(ordered):
        if a.key == b.key:
            raise InputError(f"duplicate line key {a.key!r}")
    promos = sorted(promotions, key=lambda p: p.id)
    for p, q in pairwise(promos):
        if p.id == q.id:
            raise InputError(f"duplicate promotion id {p.id!r}")
    local_now = ctx.now.astimezone(ctx.tz)
    coupons = {c.casefold() for c in ctx.coupons}
    active = [
        p
        for p in promos
        if (p.coupon is None or p.coupon.casefold() in coupons) and p.window._contains(ctx.now, local_now)
    ]

    size = len(ordered)
    price = [0] * size
    count = [0] * size
    promotable: list[int] = []
    for i, ln in enumerate(ordered):
        if not ln.eligible or ln.amount <= 0 or ln.quantity <= 0:
            continue
        if ln.weighed:
            price[i], count[i] = ln.amount, 1
        elif ln.unit_price > 0:
            price[i], count[i] = ln.unit_price, int(ln.quantity)
        else:
            continue
        promotable.append(i)
    counted = [i for i in promotable if not ordered[i].weighed]

    cache: dict[tuple[Target, bool], list[int]] = {}

    def matching(target: Target, counted_only: bool) -> list[int]:
        hit = cache.get((target, counted_only))
        if hit is None:
            pool = counted if counted_only else promotable
            if target.everything:
                hit = pool
            else:
                skus, depts = target.skus, target.departments
                hit = [i for i in pool if ordered[i].sku in skus or ordered[i].department in depts]
            cache[target, counted_only] = hit
        return hit

    # Unit offers: best per-unit saving per line.
    value = [_ZERO] * size
    offer: list[PercentOff | AmountOff | None] = [None] * size
    deal_promos: list[MultiBuy | BuyXGetY] = []
    deal_lines: list[tuple[list[int], list[int]]] = []
    thresholds: list[SpendThreshold] = []
    for p in active:
        if isinstance(p, PercentOff | AmountOff):
            for i in matching(p.target, False):
                saving = _unit_saving(p, ordered[i], price[i])
                if saving > value[i]:
                    value[i], offer[i] = saving, p
        elif isinstance(p, MultiBuy):
            buy = matching(p.target, True)
            if sum(count[i] for i in buy) >= p.buy:
                deal_promos.append(p)
                deal_lines.append((buy, []))
        elif isinstance(p, BuyXGetY):
            buy = matching(p.buy_target, True)
            get = matching(p.get_target, True)
            if sum(count[i] for i in set(buy) | set(get)) >= p.buy + p.get and get:
                deal_promos.append(p)
                deal_lines.append((buy, get))
        else:
            thresholds.append(p)

    # Competing groups of deal promotions (union-find over shared lines).
    parent = list(range(len(deal_promos)))
    first_owner: dict[int, int] = {}
    for k, (buy, get) in enumerate(deal_lines):
        for i in (*buy, *get):
            owner = first_owner.setdefault(i, k)
            ra, rb = _find(parent, owner), _find(parent, k)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for k in range(len(deal_promos)):
        groups.setdefault(_find(parent, k), []).append(k)

    accs: dict[str, _Acc] = {}
    by_id: dict[str, Promotion] = {}
    remaining = list(count)
    for members in groups.values():
        comp = _Component(
            [deal_promos[k] for k in members], [deal_lines[k] for k in members], price, count, value
        )
        for promo, deals in comp.solve():
            if not deals:
                continue
            acc = accs.setdefault(promo.id, _Acc())
            by_id[promo.id] = promo
            for saving, _, units, weights in deals:
                acc.exact += saving
                for n, c in units:
                    remaining[comp.lines[n]] -= c
                    acc.lines.add(comp.lines[n])
                for n, w in weights:
                    g = comp.lines[n]
                    acc.weights[g] = acc.weights.get(g, 0) + w

    for i in promotable:
        unit_offer = offer[i]
        if unit_offer is None or not remaining[i]:
            continue
        acc = accs.setdefault(unit_offer.id, _Acc())
        by_id[unit_offer.id] = unit_offer
        saving = value[i] * remaining[i]
        weight = price[i] * remaining[i] if isinstance(unit_offer, PercentOff) else int(saving)
        acc.add(i, saving, weight)

    discounts = [0] * size
    reasons: list[list[str]] = [[] for _ in range(size)]
    applied: list[Applied] = []

    def record(promo: Promotion, amount: int, weights: dict[int, int], touched: set[int]) -> None:
        shares = allocate(amount, {ordered[i].key: w for i, w in weights.items()})
        for i in sorted(touched | {i for i in weights if ordered[i].key in shares}):
            discounts[i] += shares.get(ordered[i].key, 0)
            reasons[i].append(promo.name)
        applied.append(Applied(promo.id, promo.name, amount, MappingProxyType(shares)))

    for promo_id in sorted(accs):
        acc = accs[promo_id]
        amount = round_minor(acc.exact)
        if amount > 0:
            record(by_id[promo_id], amount, acc.weights, acc.lines)

    # Cart level: the single best spend threshold on what is left.
    best: tuple[int, SpendThreshold, dict[int, int]] | None = None
    for t in thresholds:
        base = {i: ordered[i].amount - discounts[i] for i in matching(t.target, False)}
        base = {i: a for i, a in base.items() if a > 0}
        subtotal = sum(base.values())
        if subtotal <= 0 or subtotal < t.threshold:
            continue
        if t.amount is not None:
            cut = min(t.amount, subtotal)
        else:
            cut = min(round_minor((t.percent or _ZERO) * subtotal / _HUNDRED), subtotal)
        if cut > 0 and (best is None or cut > best[0]):
            best = (cut, t, base)
    if best is not None:
        record(best[1], best[0], best[2], set())

    return PromoResult(
        applied=tuple(applied),
        line_discounts=MappingProxyType({ln.key: discounts[i] for i, ln in enumerate(ordered)}),
        line_reasons=MappingProxyType(
            {ln.key: tuple(reasons[i]) for i, ln in enumerate(ordered) if reasons[i]}
        ),
        total=sum(a.amount for a in applied),
    )


# ------------------------------------------------------------------ JSON form

_KIND_OF: dict[type, str] = {
    PercentOff: "percent_off",
    AmountOff: "amount_off",
    MultiBuy: "multi_buy",
    BuyXGetY: "buy_x_get_y",
    SpendThreshold: "spend_threshold",
}
_COMMON_KEYS = frozenset({"id", "name", "kind", "window", "coupon"})
# kind -> (required keys, optional keys)
_KEYS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "percent_off": (frozenset({"target", "percent"}), frozenset()),
    "amount_off": (frozenset({"target", "amount"}), frozenset()),
    "multi_buy": (frozenset({"target", "buy"}), frozenset({"pay", "price"})),
    "buy_x_get_y": (frozenset({"buy_target", "buy", "get_target", "get"}), frozenset({"percent"})),
    "spend_threshold": (frozenset({"threshold"}), frozenset({"amount", "percent", "target"})),
}
_WINDOW_KEYS = frozenset({"start", "end", "weekdays", "daily_start", "daily_end"})
_TARGET_KEYS = frozenset({"skus", "departments"})


def _keys(d: Mapping[str, Any], allowed: frozenset[str], what: str) -> None:
    if not isinstance(d, Mapping):
        raise InputError(f"{what} must be an object, got {type(d).__name__}")
    unknown = sorted(str(k) for k in d if k not in allowed)
    if unknown:
        raise InputError(f"{what}: unknown key(s) {', '.join(unknown)}")


def _text(value: object, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{what} must be a non-empty string, got {value!r}")
    return value


def _whole(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{what} must be an integer, got {value!r}")
    return value


def _money(value: object, what: str, currency: Currency) -> int:
    if not isinstance(value, str):
        raise InputError(f'{what} must be a major-unit string like "5.00", got {value!r}')
    try:
        return currency.to_minor(value)
    except InputError as exc:
        raise InputError(f"{what}: {exc}") from None


def _decimal(value: object, what: str) -> Decimal:
    if not isinstance(value, str):
        raise InputError(f'{what} must be a string like "20", got {value!r}')
    try:
        result = Decimal(value.strip())
    except InvalidOperation:
        raise InputError(f"{what}: {value!r} is not a number") from None
    if not result.is_finite():
        raise InputError(f"{what}: {value!r} is not a finite number")
    return result


def _names(value: object, what: str) -> frozenset[str]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
        raise InputError(f"{what} must be a list of non-empty strings, got {value!r}")
    return frozenset(value)


def _target_from(value: object, what: str) -> Target:
    if not isinstance(value, Mapping):
        raise InputError(f"{what} must be an object, got {type(value).__name__}")
    _keys(value, _TARGET_KEYS, what)
    return Target(
        skus=_names(value.get("skus", []), f"{what}.skus"),
        departments=_names(value.get("departments", []), f"{what}.departments"),
    )


def _instant(value: object, what: str) -> datetime:
    if not isinstance(value, str):
        raise InputError(f"{what} must be an ISO 8601 string, got {value!r}")
    try:
        result = datetime.fromisoformat(value)
    except ValueError:
        raise InputError(f"{what}: {value!r} is not an ISO 8601 datetime") from None
    if not _aware(result):
        raise InputError(f"{what}: {value!r} has no UTC offset")
    return result


def _clock(value: object, what: str) -> time:
    if not isinstance(value, str):
        raise InputError(f'{what} must be a time string like "17:30", got {value!r}')
    try:
        result = time.fromisoformat(value)
    except ValueError:
        raise InputError(f"{what}: {value!r} is not a time like 17:30") from None
    if result.tzinfo is not None:
        raise InputError(f"{what}: {value!r} must be a local time without offset")
    return result


def _window_from(value: object, what: str) -> Window:
    if not isinstance(value, Mapping):
        raise InputError(f"{what} must be an object, got {type(value).__name__}")
    _keys(value, _WINDOW_KEYS, what)
    days = value.get("weekdays", [])
    if not isinstance(days, list | tuple) or not all(d in WEEKDAY_NAMES for d in days):
        raise InputError(f"{what}.weekdays must be a list of {'/'.join(WEEKDAY_NAMES)}, got {days!r}")

    def opt(key: str, parse: Callable[[object, str], Any]) -> Any:
        raw = value.get(key)
        return None if raw is None else parse(raw, f"{what}.{key}")

    return Window(
        start=opt("start", _instant),
        end=opt("end", _instant),
        weekdays=frozenset(WEEKDAY_NAMES.index(d) for d in days),
        daily_start=opt("daily_start", _clock),
        daily_end=opt("daily_end", _clock),
    )


def promotion_from_dict(d: Mapping[str, Any], currency: Currency) -> Promotion:
    """Build a promotion from its JSON form (catalog import, MQTT sync); strict.

    Amounts are major-unit strings ("5.00"), percents strings ("20"), counts integers,
    datetimes ISO 8601 with offset, daily times "HH:MM", weekdays "mon".."sun".
    Unknown keys and bad values raise :class:`InputError`.
    """
    if not isinstance(d, Mapping):
        raise InputError(f"promotion must be an object, got {type(d).__name__}")
    raw_id = d.get("id")
    what = f"promotion {raw_id!r}" if isinstance(raw_id, str) else "promotion"
    pid = _text(raw_id, f"{what}: id")
    kind = d.get("kind")
    if kind not in _KEYS:
        raise InputError(f"{what}: kind must be one of {', '.join(_KEYS)}, got {kind!r}")
    required, optional = _KEYS[kind]
    _keys(d, _COMMON_KEYS | required | optional, what)
    missing = sorted(k for k in ("name", *required) if k not in d)
    if missing:
        raise InputError(f"{what}: missing key(s) {', '.join(missing)}")

    def get(key: str, parse: Callable[[object, str], Any]) -> Any:
        raw = d.get(key)
        return None if raw is None else parse(raw, f"{what}: {key}")

    def money(raw: object, where: str) -> int:
        return _money(raw, where, currency)

    common: dict[str, Any] = {"id": pid, "name": _text(d.get("name"), f"{what}: name")}
    window = get("window", _window_from)
    if window is not None:
        common["window"] = window
    common["coupon"] = get("coupon", _text)
    if kind in ("percent_off", "amount_off", "multi_buy") and d.get("target") is None:
        raise InputError(f"{what}: target must be an object")
    if kind == "percent_off":
        return PercentOff(**common, target=get("target", _target_from), percent=get("percent", _decimal))
    if kind == "amount_off":
        return AmountOff(**common, target=get("target", _target_from), amount=get("amount", money))
    if kind == "multi_buy":
        return MultiBuy(
            **common,
            target=get("target", _target_from),
            buy=get("buy", _whole),
            pay=get("pay", _whole),
            price=get("price", money),
        )
    if kind == "buy_x_get_y":
        for key in ("buy_target", "get_target"):
            if d.get(key) is None:
                raise InputError(f"{what}: {key} must be an object")
        percent = get("percent", _decimal)
        return BuyXGetY(
            **common,
            buy_target=get("buy_target", _target_from),
            buy=get("buy", _whole),
            get_target=get("get_target", _target_from),
            get=get("get", _whole),
            percent=Decimal(100) if percent is None else percent,
        )
    target = get("target", _target_from)
    return SpendThreshold(
        **common,
        threshold=get("threshold", money),
        amount=get("amount", money),
        percent=get("percent", _decimal),
        target=Target() if target is None else target,
    )


def _decimal_text(value: Decimal) -> str:
    return format(value.normalize(), "f")


def _target_to(target: Target) -> dict[str, Any]:
    return {"skus": sorted(target.skus), "departments": sorted(target.departments)}


def _window_to(window: Window) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if window.start is not None:
        out["start"] = window.start.isoformat()
    if window.end is not None:
        out["end"] = window.end.isoformat()
    if window.weekdays:
        out["weekdays"] = [WEEKDAY_NAMES[d] for d in sorted(window.weekdays)]
    if window.daily_start is not None:
        out["daily_start"] = window.daily_start.isoformat()
    if window.daily_end is not None:
        out["daily_end"] = window.daily_end.isoformat()
    return out


def promotion_to_dict(p: Promotion, currency: Currency) -> dict[str, Any]:
    """The JSON form of a promotion; :func:`promotion_from_dict` reads it back unchanged."""
    out: dict[str, Any] = {"id": p.id, "name": p.name, "kind": _KIND_OF[type(p)]}
    if isinstance(p, PercentOff):
        out.update(target=_target_to(p.target), percent=_decimal_text(p.percent))
    elif isinstance(p, AmountOff):
        out.update(target=_target_to(p.target), amount=currency.plain(p.amount))
    elif isinstance(p, MultiBuy):
        out.update(target=_target_to(p.target), buy=p.buy)
        if p.pay is not None:
            out["pay"] = p.pay
        if p.price is not None:
            out["price"] = currency.plain(p.price)
    elif isinstance(p, BuyXGetY):
        out.update(
            buy_target=_target_to(p.buy_target),
            buy=p.buy,
            get_target=_target_to(p.get_target),
            get=p.get,
            percent=_decimal_text(p.percent),
        )
    else:
        out["threshold"] = currency.plain(p.threshold)
        if p.amount is not None:
            out["amount"] = currency.plain(p.amount)
        if p.percent is not None:
            out["percent"] = _decimal_text(p.percent)
        out["target"] = _target_to(p.target)
    if p.window != _ALWAYS:
        out["window"] = _window_to(p.window)
    if p.coupon is not None:
        out["coupon"] = p.coupon
    return out
