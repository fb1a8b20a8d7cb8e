"""Promotions engine: pure, deterministic, best-for-customer discounts for a cart.

Called on every cart change, so it does no I/O and keeps no state.

Promotion kinds
---------------
* :class:`PercentOff` / :class:`AmountOff` - per-unit discounts ("unit offers") on a
  :class:`Target` (SKU set and/or departments); weighed lines take them per kg.
* :class:`MultiBuy` - "3 for 2" (``buy``/``pay``: the cheapest ``buy - pay`` units of
  each group are free) or "2 for 5.00" (``buy``/``price``, only where it saves).
  The saving is allocated over the whole group.
* :class:`BuyXGetY` - buy ``buy`` units of ``buy_target``, get ``get`` units of
  ``get_target`` at ``percent`` off. With equal targets the discounted units are the
  cheapest of each deal (equal or lesser value); with different targets, the dearest
  get units. The saving is allocated to the discounted units.
* :class:`SpendThreshold` - amount or percent off the (targeted) lines once their
  subtotal after item-level promotions reaches ``threshold``.

Any kind may carry a :class:`Window` and a coupon code (matched case-insensitively), and
name the sales channels it runs in (``channels``; none: every channel). A till evaluates
with ``PromoContext.channel == "store"``, so an online-only promotion never applies there.
Weighed lines (and counted lines with a fractional quantity) take unit offers per kg
(or unit of measure) but never count as units for multi-buy or buy-X-get-Y.
Ineligible lines (e.g. price overrides) and lines with a non-positive amount, price or
quantity take no promotion and do not count towards thresholds.

Resolution algorithm
--------------------
L lines, P active promotions. Lines are sorted by key and promotions by id first and
no result depends on set or dict ordering, so input order never matters.

1. *Unit offers*: each line gets its best per-unit offer ``v`` (largest exact saving,
   ties to the smallest id). Unit offers never interact, so every unit that no deal
   takes simply takes ``v``. O(P*L).
2. *Deal promotions* (multi-buy, BXGY) work on unit classes - counted lines with the
   same SKU, department and price, whose units are interchangeable - and are split
   into competing groups: promotions connected through shared classes (union-find).
   Each group is solved on its own.
3. In a group, a promotion's *generator* cuts deals greedily from the units left, in a
   fixed class order: dearest first and, if unit offers compete, smallest ``v`` first
   (the "solo" orders); for the search also least contested first and cheapest first.
   A deal's net gain is its saving minus the ``v`` of the units it takes.
   Promotions are ordered by standalone net gain (ties by id) and served greedily,
   each taking its best solo generator and deal count. If that gives every promotion
   its standalone best, it is kept. Otherwise a depth-first search, memoised on
   (position, units left in the classes later promotions can touch), picks for each
   promotion in turn a generator and a deal count 0..max to maximise the total net
   gain, and replaces the greedy plan if strictly better. Equal totals keep the first
   choice found (first generator, more deals), so the outcome is deterministic.
   Cost control: :meth:`_Component._cost_bound` estimates the generator calls (per
   position, the distinct states it can see times its generators); the search runs
   over every generator if that is <= :data:`SEARCH_LIMIT`, else over the dearest-first
   generators if that is, else not at all; a hard budget of 4 * SEARCH_LIMIT calls
   stops a misjudged search (the greedy plan stands). A generator call is
   O(C_g + D) (classes in the group, deals), so a group costs O(SEARCH_LIMIT * (C_g + D))
   at most and O(k * (C_g + D)) for k promotions without search.
   The result is optimal for competing promotions over one class (one SKU at one
   price) within the limit; otherwise it is a deterministic heuristic which, with deal
   promotions only, never does worse than the best single promotion.
4. Savings are compared exactly (``int``/``Decimal``) and rounded half-up once per
   promotion.
5. Cart level: among active :class:`SpendThreshold` promotions the single one saving
   most on the amounts left after item-level discounts applies (ties to the smallest
   id); thresholds do not stack, so tiers are simply separate promotions.
6. Each saving is allocated to lines with :func:`allocate` (proportional, largest
   remainder, ties by line key). A unit feeds at most one item-level promotion and no
   share exceeds the amount it is proportional to, so no line goes negative.

Total cost is O(P*L + L log L) plus the groups: about 50k bytecodes for a 50-line cart
with ~20 promotions (8 unit offers, 8 deal promotions, 2 thresholds), some 0.3-0.5 ms
on one desktop-class core.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, tzinfo
from decimal import Decimal, InvalidOperation
from itertools import pairwise
from operator import attrgetter
from types import MappingProxyType
from typing import Any, TypeAlias

from appliance.errors import InputError
from appliance.money import Currency, round_minor

#: Search size bound per competing group: largest tree searched over every unit order,
#: and most positions a deal-count-only search may expand before going greedy.
SEARCH_LIMIT = 32

_BY_KEY = attrgetter("key")
_BY_ID = attrgetter("id")
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
            raise InputError(f"window start {self.start.isoformat()} is not before end {self.end.isoformat()}")
        if not isinstance(self.weekdays, frozenset) or any(
            isinstance(d, bool) or not isinstance(d, int) or not 0 <= d <= 6 for d in self.weekdays
        ):
            raise InputError(f"window weekdays must be a frozenset of 0..6 (Monday = 0), got {self.weekdays!r}")
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
    """Fields shared by every promotion kind (window, coupon and channels are keyword-only)."""

    id: str
    name: str
    window: Window = field(default=_ALWAYS, kw_only=True)
    coupon: str | None = field(default=None, kw_only=True)
    #: Sales channels the promotion runs in ("store", "online", ...); empty: every channel.
    channels: frozenset[str] = field(default=frozenset(), kw_only=True)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id.strip():
            raise InputError(f"promotion id must be a non-empty string, got {self.id!r}")
        if not isinstance(self.name, str) or not self.name.strip():
            raise InputError(f"promotion {self.id!r}: name must be a non-empty string")
        if not isinstance(self.window, Window):
            raise InputError(f"promotion {self.id!r}: window must be a Window")
        if self.coupon is not None and (not isinstance(self.coupon, str) or not self.coupon.strip()):
            raise InputError(f"promotion {self.id!r}: coupon must be a non-empty string or None")
        _check_names(self.channels, f"promotion {self.id!r}: channels")

    def runs_in(self, channel: str) -> bool:
        """Whether the promotion runs in a sales channel (it runs in every one when none are named)."""
        return not self.channels or channel in self.channels

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

    Eligible counted lines need ``amount == unit_price * quantity``. Weighed lines carry
    kg in ``quantity`` and their rounded amount; a counted line with a fractional
    quantity (metres of cloth) is treated like one. Ineligible lines (price overrides,
    label prices) are not checked: they take nothing.
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
        counted = self.eligible and not self.weighed and self.quantity == self.quantity.to_integral_value()
        if counted and self.amount != self.unit_price * int(self.quantity):
            raise InputError(f"{what}: amount {self.amount} is not unit_price {self.unit_price} x {self.quantity}")


@dataclass(frozen=True)
class PromoContext:
    """When and where the cart is evaluated: an aware ``now``, the store zone, entered coupons, the channel."""

    now: datetime
    tz: tzinfo
    coupons: frozenset[str] = frozenset()
    channel: str = "store"

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
    """Whether a promotion runs in ``ctx.channel``, its window contains ``ctx.now`` and its coupon was entered."""
    if not promotion.runs_in(ctx.channel):
        return False
    if promotion.coupon is not None and promotion.coupon.casefold() not in {c.casefold() for c in ctx.coupons}:
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
    if amount == 0:
        return {}
    keys = sorted(k for k, w in weights.items() if w)
    if not keys:
        raise InputError(f"cannot allocate {amount} over zero weight")
    shares = _shares(amount, {n: weights[k] for n, k in enumerate(keys)})
    return {keys[n]: share for n, share in shares.items() if share}


def _shares(amount: int, weights: Mapping[int, int]) -> dict[int, int]:
    """:func:`allocate` over positive weights keyed by sortable ints, without checks."""
    if len(weights) == 1:
        return dict.fromkeys(weights, amount)
    total = sum(weights.values())
    shares: dict[int, int] = {}
    remainders: list[tuple[int, int]] = []
    given = 0
    for key in sorted(weights):
        share, rest = divmod(amount * weights[key], total)
        shares[key] = share
        given += share
        remainders.append((-rest, key))
    if given < amount:
        remainders.sort()
        for _, key in remainders[: amount - given]:
            shares[key] += 1
    return shares


# ------------------------------------------------------------------- evaluation

_Num: TypeAlias = Decimal | int
_Units: TypeAlias = tuple[tuple[int, int], ...]  # (local class, units)
# A deal: exact saving, net gain over the unit offers of the units it takes, units
# taken, and the discounted units its saving is allocated over.
_Deal: TypeAlias = tuple[_Num, _Num, _Units, _Units]
_Gen: TypeAlias = Callable[[Sequence[int]], list[_Deal]]
# Search result: net gain, and per search position (deals offered, deals taken).
_Plan: TypeAlias = tuple[_Num, tuple[tuple[list[_Deal], int], ...]]


@dataclass
class _Acc:
    """Accumulated outcome of one item-level promotion."""

    exact: _Num = 0
    weights: dict[int, int] = field(default_factory=dict)
    lines: set[int] = field(default_factory=set)


class _Component:
    """A group of deal promotions competing for the same unit classes.

    Classes are renumbered locally (0..C_g-1); a state is the tuple of units left per class.
    """

    def __init__(
        self,
        promos: list[MultiBuy | BuyXGetY],
        eligible: list[tuple[list[int], list[int]]],
        price: list[int],
        count: list[int],
        value: list[_Num],
    ) -> None:
        seen: set[int] = set()
        for buy, get in eligible:
            seen.update(buy)
            seen.update(get)
        lines = sorted(seen)  # global class ids
        local = dict(zip(lines, range(len(lines)), strict=True))
        self.promos = promos
        self.lines = lines
        self.price = pr = list(map(price.__getitem__, lines))
        self.value = val = list(map(value.__getitem__, lines))
        self.state = tuple(map(count.__getitem__, lines))
        self.valued = any(val)
        self.pools: list[tuple[list[int], list[int]]] = []
        self.reach: list[set[int]] = []
        contest = [0] * len(lines)
        for buy, get in eligible:
            buy_l = list(map(local.__getitem__, buy))
            get_l = list(map(local.__getitem__, get))
            self.pools.append((buy_l, get_l))
            reach = {*buy_l, *get_l}
            self.reach.append(reach)
            for n in reach:
                contest[n] += 1
        # Unit orders deals may be cut in: dearest first; with unit offers around, smallest
        # unit-offer value first ("solo" orders); with rivals also least contested first
        # and cheapest first. Rival orders are built only when a search needs them.
        self.solo_keys: list[Callable[[int], tuple[Any, ...]]] = [lambda n: (-pr[n], val[n], contest[n], n)]
        if self.valued:
            self.solo_keys.append(lambda n: (val[n], -pr[n], contest[n], n))
        self.contest = contest
        self.gens: list[list[_Gen]] = []
        for i in range(len(promos)):
            self.gens.append(self._generators(i, self.solo_keys, []))
        self._every: list[list[_Gen]] | None = None

    def every_generator(self) -> list[list[_Gen]]:
        """Per promotion, its solo generators followed by the rival-order ones."""
        if self._every is None:
            pr, val, contest = self.price, self.value, self.contest
            rival_keys: list[Callable[[int], tuple[Any, ...]]] = [
                lambda n: (contest[n], -pr[n], val[n], n),
                lambda n: (pr[n], val[n], contest[n], n),
            ]
            self._every = [gens + self._generators(i, rival_keys, self.solo_keys) for i, gens in enumerate(self.gens)]
        return self._every

    def _generators(
        self, i: int, keys: list[Callable[[int], tuple[Any, ...]]], done: list[Callable[[int], tuple[Any, ...]]]
    ) -> list[_Gen]:
        """Generators of promotion ``i`` for the unit orders ``keys`` not already given by ``done``."""
        promo = self.promos[i]
        buy_l, get_l = self.pools[i]
        pr, val, contest = self.price, self.value, self.contest
        if len(buy_l) == 1 and len(get_l) <= 1:  # one class: every order is the same
            if done:
                return []
            if isinstance(promo, MultiBuy) or promo.buy_target == promo.get_target:
                return [self._grouped(promo, buy_l, True)]
            return [self._split(promo, buy_l, get_l, set(buy_l))]
        if isinstance(promo, MultiBuy) or promo.buy_target == promo.get_target:
            old = [sorted(buy_l, key=key) for key in done]
            orders: list[list[int]] = []
            for key in keys:
                order = sorted(buy_l, key=key)
                if order not in orders and order not in old:
                    orders.append(order)
            return [self._grouped(promo, order, not done and k == 0) for k, order in enumerate(orders)]
        buy_set, get_set = set(buy_l), set(get_l)

        def get_order(key: Callable[[int], tuple[Any, ...]]) -> list[int]:
            # As the key says, but units that cannot be bought first on ties.
            ties = {n: (*key(n)[:-1], n in buy_set, n) for n in get_l}
            return sorted(get_l, key=ties.__getitem__)

        old = [get_order(key) for key in done]
        get_orders: list[list[int]] = []
        for key in keys:
            order = get_order(key)
            if order not in get_orders and order not in old:
                get_orders.append(order)
        # Buys: smallest unit-offer value plus (if it could be a get) get value first;
        # or smallest unit-offer value first.
        rate = promo.percent / _HUNDRED
        buy_orders: list[list[int]] = []
        for rank in (
            {n: (val[n] + (rate * pr[n] if n in get_set else 0), pr[n], contest[n], n) for n in buy_l},
            {n: (val[n], n in get_set, pr[n], contest[n], n) for n in buy_l},
        ):
            order = sorted(buy_l, key=rank.__getitem__)
            if order not in buy_orders:
                buy_orders.append(order)
        return [self._split(promo, b, g, buy_set) for g in get_orders for b in buy_orders]

    def _cost(self, units: _Units) -> _Num:
        """Unit-offer value of some units: what a deal taking them gives up."""
        value = self.value
        cost: _Num = 0
        for n, c in units:
            cost += value[n] * c
        return cost

    def _grouped(self, promo: MultiBuy | BuyXGetY, order: list[int], dearest_first: bool) -> _Gen:
        """Deals made of consecutive groups of the units available, in ``order``.

        Multi-buy: ``buy`` units, the cheapest ``buy - pay`` free or the group at ``price``;
        the saving is allocated over the whole group. BXGY with equal targets: ``buy + get``
        units, the cheapest ``get`` discounted and carrying the saving.
        """
        price, valued, cost = self.price, self.valued, self._cost
        whole_group = isinstance(promo, MultiBuy)
        if isinstance(promo, MultiBuy):
            size, rate = promo.buy, None
            tail = 0 if promo.pay is None else promo.buy - promo.pay
            bundle = promo.price or 0
        else:
            size, tail, bundle = promo.buy + promo.get, promo.get, 0
            rate = None if promo.percent == _HUNDRED else promo.percent / _HUNDRED

        def cheapest_last_first(units: _Units) -> Sequence[tuple[int, int]]:
            if dearest_first:  # groups already run price-descending
                return units[::-1]
            ranked = sorted(range(len(units)), key=lambda j: (price[units[j][0]], -j))
            return [units[j] for j in ranked]

        def gen(state: Sequence[int]) -> list[_Deal]:
            deals: list[_Deal] = []
            group: list[tuple[int, int]] = []
            need = size
            for n in order:
                avail = state[n]
                while avail:
                    if need == size and avail >= size:
                        units: _Units = ((n, size),)  # whole groups from one class
                        whole = avail // size
                        avail -= whole * size
                    else:
                        take = min(avail, need)
                        group.append((n, take))
                        avail -= take
                        need -= take
                        if need:
                            continue
                        units, whole, group, need = tuple(group), 1, [], size
                    if not tail:
                        cheap = units
                    elif len(units) == 1:
                        cheap = ((units[0][0], tail),)
                    else:  # the cheapest ``tail`` units (on equal prices, the later ones)
                        left = tail
                        parts: list[tuple[int, int]] = []
                        for m, c in cheapest_last_first(units):
                            c = min(c, left)
                            parts.append((m, c))
                            left -= c
                            if not left:
                                break
                        cheap = tuple(parts)
                    amount = 0
                    for m, c in cheap:
                        amount += price[m] * c
                    saving: _Num = amount - bundle if rate is None else rate * amount
                    if saving <= 0:  # an unprofitable "N for price" group ends the deals
                        return deals
                    net = saving - cost(units) if valued else saving
                    deals.extend([(saving, net, units, units if whole_group else cheap)] * whole)
            return deals

        return gen

    def _split(self, promo: BuyXGetY, buy_order: list[int], get_order: list[int], buy_set: set[int]) -> _Gen:
        """BXGY with different targets: the dearest get units, the least useful buy units."""
        price, valued, cost = self.price, self.valued, self._cost
        rate = None if promo.percent == _HUNDRED else promo.percent / _HUNDRED

        def gen(state: Sequence[int]) -> list[_Deal]:
            left = list(state)
            buy_avail = 0
            for n in buy_order:
                buy_avail += left[n]
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
                amount = 0
                for n, c in gets:
                    amount += price[n] * c
                saving: _Num = amount if rate is None else rate * amount
                units = (*buys, *gets)
                deals.append((saving, saving - cost(units) if valued else saving, units, tuple(gets)))
            return deals

        return gen

    @staticmethod
    def _net(deals: list[_Deal]) -> tuple[int, _Num]:
        """Best deal count by net gain over leaving the units to unit offers (ties: more deals)."""
        best_d = 0
        best: _Num = 0
        acc: _Num = 0
        for d, deal in enumerate(deals, 1):
            acc += deal[1]
            if acc >= best:
                best_d, best = d, acc
        return best_d, best

    def _best_variant(self, gens: list[_Gen], state: Sequence[int]) -> tuple[list[_Deal], int, _Num, _Gen]:
        """Deals from the generator with the best net gain, its best deal count, gain, generator."""
        best: tuple[list[_Deal], int, _Num, _Gen] | None = None
        for gen in gens:
            deals = gen(state)
            take, net = self._net(deals)
            if best is None or net > best[2]:
                best = (deals, take, net, gen)
        assert best is not None
        return best

    def solve(self) -> list[tuple[MultiBuy | BuyXGetY, list[_Deal]]]:
        """Choose the deals of every promotion of the group.

        Promotions are ordered by standalone net gain (then id) and first served greedily.
        When that leaves every promotion its standalone best there is nothing to search;
        otherwise the search runs if :meth:`_cost_bound` admits it (every generator,
        else the dearest-first ones only) and the greedy plan stands if not.
        """
        alone = [self._best_variant(gens, self.state) for gens in self.gens]
        if len(alone) == 1:
            deals, take, _, _ = alone[0]
            return [(self.promos[0], deals[:take])]
        order = sorted(range(len(self.promos)), key=lambda i: (-alone[i][2], self.promos[i].id))
        plan, net = self._greedy(order, alone)
        if net < sum(a[2] for a in alone):
            seen: set[int] = set()
            visible: list[tuple[int, ...]] = []  # classes the promotions from position k on can touch
            for i in reversed(order):
                seen.update(self.reach[i])
                visible.append(tuple(sorted(seen)))
            visible.reverse()
            sizes = [len(alone[i][0]) for i in order]
            every = self.every_generator()
            for variants in ([every[i] for i in order], [self.gens[i][:1] for i in order]):
                if self._cost_bound(variants, sizes, visible) <= SEARCH_LIMIT:
                    try:
                        found = self._search(variants, visible)
                    except _SearchLimitError:
                        break
                    if found[0] > net:
                        plan = found[1]
                    break
        return [(self.promos[i], deals[:take]) for i, (deals, take) in zip(order, plan, strict=True)]

    def _greedy(
        self, order: list[int], alone: list[tuple[list[_Deal], int, _Num, _Gen]]
    ) -> tuple[tuple[tuple[list[_Deal], int], ...], _Num]:
        """Each promotion in turn takes its best solo generator and deal count; plan and net gain."""
        state = list(self.state)
        plan: list[tuple[list[_Deal], int]] = []
        total: _Num = 0
        touched: set[int] = set()
        for i in order:
            # A promotion whose classes nobody took from yet faces its standalone situation.
            deals, take, net, _ = self._best_variant(self.gens[i], state) if touched & self.reach[i] else alone[i]
            for _, _, units, _ in deals[:take]:
                for n, c in units:
                    state[n] -= c
                    touched.add(n)
            plan.append((deals, take))
            total += net
        return tuple(plan), total

    def _cost_bound(self, variants: list[list[_Gen]], deals: list[int], visible: list[tuple[int, ...]]) -> int:
        """Estimated generator calls of :meth:`_search`.

        Per position: the distinct states it can see (bounded by the choices made before
        it) times its generators.
        """
        cost, paths = 0, 1
        for k, gens in enumerate(variants):
            space = 1
            for n in visible[k]:
                space *= self.state[n] + 1
                if space > SEARCH_LIMIT:
                    break
            cost += min(paths, space) * len(gens)
            if cost > SEARCH_LIMIT:
                break
            paths *= len(gens) * (deals[k] + 1)
        return cost

    def _search(self, variants: list[list[_Gen]], visible: list[tuple[int, ...]]) -> _Plan:
        """Exhaustive search over generators and deal counts, memoised on (position, visible units).

        Gives up with :class:`_SearchLimitError` after ``4 * SEARCH_LIMIT`` generator calls,
        should the estimate that admitted it be off.
        """
        last = len(variants) - 1
        memo: dict[tuple[int, tuple[int, ...]], _Plan] = {}
        budget = 4 * SEARCH_LIMIT

        def best(k: int, state: tuple[int, ...]) -> _Plan:
            key = (k, tuple([state[n] for n in visible[k]]))
            hit = memo.get(key)
            if hit is not None:
                return hit
            nonlocal budget
            budget -= len(variants[k])
            if budget < 0:
                raise _SearchLimitError
            if k == last:
                deals, take, net, _ = self._best_variant(variants[k], state)
                result: _Plan = (net, ((deals, take),))
            else:
                sub_net, sub_plan = best(k + 1, state)
                result = (sub_net, (([], 0), *sub_plan))
                for gen in variants[k]:
                    deals = gen(state)
                    current = list(state)
                    acc: _Num = 0
                    for d, (_, net, units, _) in enumerate(deals, 1):
                        acc += net
                        for n, c in units:
                            current[n] -= c
                        sub_net, sub_plan = best(k + 1, tuple(current))
                        if acc + sub_net > result[0] or (acc + sub_net == result[0] and gen is variants[k][0]):
                            result = (acc + sub_net, ((deals, d), *sub_plan))
            memo[key] = result
            return result

        return best(0, self.state)


class _SearchLimitError(Exception):
    """Internal: a search ran out of budget; the caller falls back to greedy."""


def _find(parent: list[int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


class _Cart:
    """Promotable lines of a cart, sorted by key, with target lookups."""

    def __init__(self, ordered: list[PromoLine]) -> None:
        size = len(ordered)
        self.price = price = [0] * size  # per unit; a weighed line is one unit of its amount
        self.count = count = [0] * size
        promotable: list[int] = []
        by_sku: dict[str, list[int]] = {}
        by_dept: dict[str, list[int]] = {}
        self.promotable, self.by_sku, self.by_dept = promotable, by_sku, by_dept
        # Weighed, or measured in fractions: never counted as units.
        self.weighed = [ln.weighed or ln.quantity != ln.quantity.to_integral_value() for ln in ordered]
        for i, ln in enumerate(ordered):
            if not ln.eligible or ln.amount <= 0 or ln.quantity <= 0:
                continue
            if self.weighed[i]:
                price[i], count[i] = ln.amount, 1
            elif ln.unit_price > 0:
                price[i], count[i] = ln.unit_price, int(ln.quantity)
            else:
                continue
            promotable.append(i)
            got = by_sku.get(ln.sku)
            if got is None:
                by_sku[ln.sku] = [i]
            else:
                got.append(i)
            got = by_dept.get(ln.department)
            if got is None:
                by_dept[ln.department] = [i]
            else:
                got.append(i)
        self._cache: dict[tuple[int, bool], list[int]] = {}  # by id(): targets outlive the call

    def matching(self, target: Target, counted_only: bool) -> list[int]:
        """Promotable line indices matched by ``target``, ascending (optionally no weighed lines)."""
        hit = self._cache.get((id(target), counted_only))
        if hit is None:
            if target.everything:
                hit = self.promotable
            else:
                found: list[int] = []
                for index, names in ((self.by_sku, target.skus), (self.by_dept, target.departments)):
                    if names:
                        for name in index.keys() & names:
                            found.extend(index[name])
                hit = sorted(set(found) if target.skus and target.departments else found)
            if counted_only:
                hit = [i for i in hit if not self.weighed[i]]
            self._cache[id(target), counted_only] = hit
        return hit


_Solved = list[tuple[MultiBuy | BuyXGetY, list[_Deal]]]
_SOLVE_CACHE: dict[tuple[Any, ...], tuple[tuple[Promotion, ...], _Solved]] = {}
_SOLVE_CACHE_SIZE = 512


def _solve(
    promos: list[MultiBuy | BuyXGetY],
    eligible: list[tuple[list[int], list[int]]],
    price: list[int],
    count: list[int],
    value: list[_Num],
) -> tuple[list[int], _Solved]:
    """Solve one group of competing deals, memoised on the group's local shape.

    A scan usually touches one group; the others come back unchanged and are not solved
    again. The result is a pure function of the key (promotions, local class layout,
    prices, counts, unit-offer values), so reusing it changes nothing but the time.
    """
    seen: set[int] = set()
    for buy, get in eligible:
        seen.update(buy)
        seen.update(get)
    lines = sorted(seen)
    local = {g: n for n, g in enumerate(lines)}
    key = (
        tuple(map(id, promos)),
        tuple((tuple(local[b] for b in buy), tuple(local[g] for g in get)) for buy, get in eligible),
        tuple(price[g] for g in lines),
        tuple(count[g] for g in lines),
        tuple(value[g] for g in lines),
    )
    hit = _SOLVE_CACHE.get(key)
    if hit is None:
        # The promotions are kept in the entry, so the ids in its key stay theirs.
        hit = (tuple(promos), _Component(promos, eligible, price, count, value).solve())
        if len(_SOLVE_CACHE) >= _SOLVE_CACHE_SIZE:
            del _SOLVE_CACHE[next(iter(_SOLVE_CACHE))]
        _SOLVE_CACHE[key] = hit
    return lines, hit[1]


def evaluate(lines: Sequence[PromoLine], promotions: Sequence[Promotion], ctx: PromoContext) -> PromoResult:
    """Apply the best-for-customer combination of active promotions to a cart."""
    ordered = sorted(lines, key=_BY_KEY)
    for a, b in pairwise(ordered):
        if a.key == b.key:
            raise InputError(f"duplicate line key {a.key!r}")
    promos = sorted(promotions, key=_BY_ID)
    for p, q in pairwise(promos):
        if p.id == q.id:
            raise InputError(f"duplicate promotion id {p.id!r}")
    local_now = ctx.now.astimezone(ctx.tz)
    coupons = {c.casefold() for c in ctx.coupons}
    cart = _Cart(ordered)
    size = len(ordered)
    price, count = cart.price, cart.count

    # Unit offers: the best per-unit saving of every line; deal promotions that can apply.
    value: list[_Num] = [0] * size
    offer: list[PercentOff | AmountOff | None] = [None] * size
    deal_promos: list[MultiBuy | BuyXGetY] = []
    deal_lines: list[tuple[list[int], list[int]]] = []
    thresholds: list[SpendThreshold] = []
    for p in promos:
        if p.coupon is not None and p.coupon.casefold() not in coupons:
            continue
        if p.channels and ctx.channel not in p.channels:
            continue
        if p.window is not _ALWAYS and not p.window._contains(ctx.now, local_now):
            continue
        if isinstance(p, PercentOff):
            rate = p.percent / _HUNDRED
            for i in cart.matching(p.target, False):
                off = rate * price[i]
                if off > value[i]:
                    value[i], offer[i] = off, p
        elif isinstance(p, AmountOff):
            for i in cart.matching(p.target, False):
                if cart.weighed[i]:
                    cut = min(round_minor(p.amount * ordered[i].quantity), price[i])
                else:
                    cut = min(p.amount, price[i])
                if cut > value[i]:
                    value[i], offer[i] = cut, p
        elif isinstance(p, MultiBuy):
            buy = cart.matching(p.target, True)
            if sum(count[i] for i in buy) >= p.buy:
                deal_promos.append(p)
                deal_lines.append((buy, []))
        elif isinstance(p, BuyXGetY):
            buy = cart.matching(p.buy_target, True)
            get = cart.matching(p.get_target, True)
            if get and sum(count[i] for i in set(buy) | set(get)) >= p.buy + p.get:
                deal_promos.append(p)
                deal_lines.append((buy, get))
        else:
            thresholds.append(p)

    # Counted lines with the same SKU, department and price hold identical units: one class.
    class_ids: dict[tuple[str, str, int], int] = {}
    members: list[list[int]] = []
    c_price: list[int] = []
    c_count: list[int] = []
    c_value: list[_Num] = []
    line_class = [-1] * size
    if deal_promos:
        for i in cart.promotable:
            if not cart.weighed[i]:
                ln = ordered[i]
                signature = (ln.sku, ln.department, price[i])
                c = class_ids.get(signature, -1)
                if c < 0:
                    c = class_ids[signature] = len(members)
                    members.append([i])
                    c_price.append(price[i])
                    c_count.append(count[i])
                    c_value.append(value[i])
                else:
                    members[c].append(i)
                    c_count[c] += count[i]
                line_class[i] = c
    deal_classes = [
        (sorted({line_class[i] for i in buy}), sorted({line_class[i] for i in get})) for buy, get in deal_lines
    ]

    # Competing groups of deal promotions (union-find over shared classes).
    parent = list(range(len(deal_promos)))
    first_owner: dict[int, int] = {}
    for k, (buy, get) in enumerate(deal_classes):
        for c in (*buy, *get):
            owner = first_owner.setdefault(c, k)
            if owner != k:
                ra, rb = _find(parent, owner), _find(parent, k)
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for k in range(len(deal_promos)):
        groups.setdefault(_find(parent, k), []).append(k)

    accs: dict[str, _Acc] = {}
    by_id: dict[str, Promotion] = {}
    remaining = list(count)
    cursor = [0] * len(members)  # first member line of each class with units left

    def take(c: int, units: int) -> list[tuple[int, int]]:
        """Hand out ``units`` of class ``c`` from its lines, in key order."""
        out: list[tuple[int, int]] = []
        lines_of = members[c]
        while units:
            i = lines_of[cursor[c]]
            got = min(remaining[i], units)
            if got:
                out.append((i, got))
                remaining[i] -= got
                units -= got
            if not remaining[i]:
                cursor[c] += 1
        return out

    for group in groups.values():
        group_lines, solved = _solve(
            [deal_promos[k] for k in group], [deal_classes[k] for k in group], c_price, c_count, c_value
        )
        for promo, deals in solved:
            if not deals:
                continue
            acc = accs[promo.id] = _Acc()
            by_id[promo.id] = promo
            for saving, _, units, hit in deals:
                acc.exact += saving
                taken: dict[int, list[tuple[int, int]]] = {}
                for n, c in units:
                    got = take(group_lines[n], c)
                    taken.setdefault(n, []).extend(got)
                    acc.lines.update(i for i, _ in got)
                for n, c in hit:  # discounted units are some of those just taken
                    for i, got_units in taken[n]:
                        share = min(got_units, c)
                        acc.weights[i] = acc.weights.get(i, 0) + price[i] * share
                        c -= share
                        if not c:
                            break

    # Units no deal took get their line's best unit offer.
    for i in cart.promotable:
        unit_offer = offer[i]
        if unit_offer is None or not remaining[i]:
            continue
        found = accs.get(unit_offer.id)
        if found is None:
            found = accs[unit_offer.id] = _Acc()
            by_id[unit_offer.id] = unit_offer
        saving = value[i] * remaining[i]
        found.exact += saving
        found.weights[i] = price[i] * remaining[i] if isinstance(saving, Decimal) else saving
        found.lines.add(i)

    keys = [ln.key for ln in ordered]
    discounts = [0] * size
    reasons: list[list[str]] = [[] for _ in range(size)]
    applied: list[Applied] = []

    def record(promo: Promotion, amount: int, weights: dict[int, int], touched: set[int]) -> None:
        shares = _shares(amount, weights)
        for i, share in shares.items():
            if share:
                discounts[i] += share
                touched.add(i)
        for i in touched:
            reasons[i].append(promo.name)
        allocations = {keys[i]: share for i, share in shares.items() if share}  # in key order
        applied.append(Applied(promo.id, promo.name, amount, MappingProxyType(allocations)))

    for promo_id in sorted(accs):
        acc = accs[promo_id]
        amount = round_minor(acc.exact) if isinstance(acc.exact, Decimal) else acc.exact
        if amount > 0:
            record(by_id[promo_id], amount, acc.weights, acc.lines)

    # Cart level: the single best spend threshold on what is left.
    best: tuple[int, SpendThreshold, dict[int, int]] | None = None
    left = [ln.amount - cut for ln, cut in zip(ordered, discounts, strict=True)] if thresholds else []
    for t in thresholds:
        base: dict[int, int] = {}
        for i in cart.matching(t.target, False):
            if left[i] > 0:
                base[i] = left[i]
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
        line_discounts=MappingProxyType(dict(zip(keys, discounts, strict=True))),
        line_reasons=MappingProxyType({keys[i]: tuple(why) for i, why in enumerate(reasons) if why}),
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
_COMMON_KEYS = frozenset({"id", "name", "kind", "window", "coupon", "channels"})
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
    channels = get("channels", _names)
    if channels:
        common["channels"] = channels
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
    if p.channels:
        out["channels"] = sorted(p.channels)
    return out
