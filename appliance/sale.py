"""The sale engine: a cart priced with promotions and tax, paid with tenders.

Pure logic with no I/O. Time is passed in. Every change recomputes the prices
in a fixed pipeline:

1. base amount per line (unit price x quantity, or the price embedded in a label);
2. promotions (best for the customer, see :mod:`appliance.promotions`);
3. manual line discounts, then a cart discount spread over the lines;
4. loyalty points redeemed as a discount (:class:`PointsDiscount`), spread over the lines
   like the cart discount and capped at what they cost;
5. tax per line on the final amounts (see :mod:`appliance.tax`).

A sale records its cashier and its duration from first scan to completion.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from decimal import Decimal
from typing import Any, Literal

from appliance.catalog import Item
from appliance.clock import iso_utc
from appliance.errors import InputError, SaleError, TenderError
from appliance.ids import uuid7
from appliance.money import Currency, cash_round, round_minor
from appliance.promotions import PromoContext, PromoLine, PromoResult, Promotion, allocate, evaluate
from appliance.tax import LineTax, TaxableLine, TaxPolicy, TaxResult, compute_tax
from appliance.tenders import Tender, TenderKind

_HUNDRED = Decimal(100)
#: Department of gift card lines (``appliance.stored_value.GIFT_CARD_DEPARTMENT``): points take nothing off them.
_GIFT_CARD = "gift_card"


@dataclass(frozen=True)
class SalePolicy:
    """Everything pricing needs that comes from configuration and the catalog."""

    currency: Currency
    tax: TaxPolicy
    tz: tzinfo
    promotions: tuple[Promotion, ...] = ()
    cash_rounding: int = 1
    rounding_mode: str = "half_up"
    max_quantity: int = 999
    max_weight_kg: Decimal = Decimal(50)
    max_line_amount: int = 1_000_000
    max_sale_amount: int = 10_000_000


@dataclass(frozen=True)
class Discount:
    """A manual discount: a percentage or an amount, with who gave it and why."""

    percent: Decimal | None = None
    amount: int | None = None
    reason: str = ""
    actor: str | None = None
    approver: str | None = None

    def __post_init__(self) -> None:
        if (self.percent is None) == (self.amount is None):
            raise InputError("a discount is either a percent or an amount")
        if self.percent is not None and not Decimal(0) < self.percent <= _HUNDRED:
            raise InputError(f"discount percent {self.percent} must be above 0 and at most 100")
        if self.amount is not None and self.amount <= 0:
            raise InputError("discount amount must be positive")

    def of(self, amount: int, mode: str) -> int:
        """The discount on ``amount``, never more than it."""
        if self.percent is not None:
            return min(amount, round_minor(Decimal(amount) * self.percent / _HUNDRED, mode))
        return min(amount, self.amount or 0)

    def to_doc(self) -> dict[str, Any]:
        return {
            "percent": None if self.percent is None else str(self.percent),
            "amount": self.amount,
            "reason": self.reason,
            "actor": self.actor,
            "approver": self.approver,
        }


@dataclass(frozen=True)
class PointsDiscount:
    """Loyalty points redeemed as a discount on the sale (secured by :mod:`appliance.loyalty`).

    ``points`` were taken under movement ``move`` (``mode`` online, offline or local), each worth
    ``value`` minor units. The sale applies as many whole points as its lines' amounts take;
    the points it does not apply go back to the customer when it completes.
    """

    customer: str
    points: int
    value: int
    move: str
    mode: str = "local"
    balance: int | None = None
    actor: str | None = None

    def __post_init__(self) -> None:
        if self.points <= 0 or self.value <= 0:
            raise InputError("a points discount needs a positive number of points of positive value")


@dataclass(frozen=True)
class Override:
    """A price override, recorded with its reason."""

    price: int
    original: int
    reason: str
    actor: str | None = None
    approver: str | None = None


@dataclass(frozen=True)
class ScanInfo:
    """What the scan of a line carried (GS1 data), kept for the receipt and audits."""

    code: str
    expiry: str | None = None
    batch: str | None = None
    expired: bool = False


@dataclass
class Line:
    """One cart line and its computed amounts (minor units)."""

    no: int
    item: Item
    quantity: Decimal
    unit_price: int
    fixed_amount: int | None = None
    override: Override | None = None
    discount: Discount | None = None
    scan: ScanInfo | None = None
    voided: bool = False
    void_reason: str = ""
    # computed by the pricing pipeline
    base: int = 0
    promo_discount: int = 0
    promo_reasons: tuple[str, ...] = ()
    manual_discount: int = 0
    cart_discount: int = 0
    points_discount: int = 0
    net: int = 0
    tax: int = 0
    total: int = 0
    line_tax: LineTax | None = field(default=None, repr=False)
    key: str = field(init=False, repr=False)
    _promo_line: PromoLine | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.key = str(self.no)

    @property
    def tax_rates(self) -> dict[str, int]:
        """Tax per rate code on this line (rates with zero tax left out)."""
        lt = self.line_tax
        return {code: amount for code, amount in sorted(lt.by_rate.items()) if amount} if lt else {}

    def promo_line(self) -> PromoLine:
        """The line as the promotions engine sees it, rebuilt only when its inputs changed."""
        eligible = self.override is None and self.discount is None and self.fixed_amount is None
        cached = self._promo_line
        if (
            cached is None
            or cached.quantity != self.quantity
            or cached.unit_price != self.unit_price
            or cached.amount != self.base
            or cached.eligible != eligible
        ):
            cached = self._promo_line = PromoLine(
                key=self.key,
                sku=self.item.sku,
                department=self.item.department,
                unit_price=self.unit_price,
                quantity=self.quantity,
                amount=self.base,
                weighed=self.item.weighed,
                eligible=eligible,
            )
        return cached

    @property
    def discount_total(self) -> int:
        """Every discount on the line, the share of a points discount included."""
        return self.promo_discount + self.manual_discount + self.cart_discount + self.points_discount

    @property
    def amount(self) -> int:
        """The line amount after all discounts, as priced (gross if prices include tax)."""
        return self.base - self.discount_total


@dataclass(frozen=True)
class Totals:
    """Sale totals in minor units."""

    subtotal: int
    discount: int
    net: int
    tax: int
    total: int
    paid: int
    due: int
    lines: int
    items: Decimal
    points_discount: int = 0


@dataclass
class Sale:
    """A sale being rung up."""

    policy: SalePolicy
    cashier: str | None = None
    id: str = field(default_factory=uuid7)
    shift_id: int | None = None
    customer_id: str | None = None
    approver: str | None = None
    lines: list[Line] = field(default_factory=list)
    cart_discount: Discount | None = None
    points_discount: PointsDiscount | None = None
    coupons: set[str] = field(default_factory=set)
    tenders: list[Tender] = field(default_factory=list)
    started_at: datetime | None = None
    completed_at: datetime | None = None
    rounding: int = 0
    state: Literal["open", "completed", "cancelled"] = "open"
    #: Points of :attr:`points_discount` the sale applies now (fewer than taken when its lines cost less).
    points_applied: int = field(default=0, init=False)
    _tax: TaxResult | None = field(default=None, repr=False)
    _promo: PromoResult | None = field(default=None, repr=False)
    _priced_at: datetime | None = field(default=None, repr=False)

    # -- cart ------------------------------------------------------------------------------------

    def _open(self) -> None:
        if self.state != "open":
            raise SaleError(f"sale is {self.state}; start a new sale")
        if self.tenders:
            raise SaleError("payment has started; void the tenders before changing the cart")

    def _line(self, no: int) -> Line:
        for line in self.lines:
            if line.no == no:
                if line.voided:
                    raise SaleError(f"line {no} is already voided")
                return line
        raise InputError(f"there is no line {no}")

    def _check_quantity(self, item: Item, quantity: Decimal) -> None:
        if not isinstance(quantity, Decimal) or not quantity.is_finite():
            raise InputError(f"quantity {quantity!r} is not a number")
        if quantity <= 0:
            raise InputError(f"quantity {quantity} must be positive")
        if item.weighed:
            if quantity > self.policy.max_weight_kg:
                raise InputError(f"weight {quantity} kg is above the limit of {self.policy.max_weight_kg} kg")
            if quantity.as_tuple().exponent < -3:  # type: ignore[operator]
                raise InputError(f"weight {quantity} kg has more than gram precision")
        else:
            if quantity != quantity.to_integral_value():
                raise InputError(f"{item.name} is sold by the unit; quantity {quantity} must be whole")
            if quantity > self.policy.max_quantity:
                raise InputError(f"quantity {quantity} is above the limit of {self.policy.max_quantity}")

    def add_item(
        self,
        item: Item,
        now: datetime,
        *,
        quantity: Decimal | None = None,
        fixed_amount: int | None = None,
        scan: ScanInfo | None = None,
    ) -> Line:
        """Add an item; ``quantity`` is units, or kg for a weighed item.

        ``fixed_amount`` is a price embedded in a scale label: the line costs exactly that.
        """
        self._open()
        if not item.active:
            raise SaleError(f"{item.name} ({item.sku}) is not for sale (inactive)")
        if item.weighed and quantity is None and fixed_amount is None:
            raise InputError(f"{item.name} is sold by weight; weigh it or scan its scale label")
        qty = Decimal(1) if quantity is None else quantity
        self._check_quantity(item, qty)
        if fixed_amount is not None and not 0 <= fixed_amount <= self.policy.max_line_amount:
            raise InputError(f"label price {self.policy.currency.plain(fixed_amount)} is out of range")
        line = Line(
            no=len(self.lines) + 1,
            item=item,
            quantity=qty,
            unit_price=item.price,
            fixed_amount=fixed_amount,
            scan=scan,
        )
        self._apply_change(now, lambda: self.lines.append(line), undo=lambda: self.lines.remove(line))
        if self.started_at is None:
            self.started_at = now
        return line

    def set_quantity(self, no: int, quantity: Decimal, now: datetime) -> Line:
        """Change a line's quantity (or weight)."""
        self._open()
        line = self._line(no)
        if line.fixed_amount is not None:
            raise SaleError("a scale-label line has a fixed price; void it and scan again")
        self._check_quantity(line.item, quantity)
        old = line.quantity
        self._apply_change(now, lambda: setattr(line, "quantity", quantity),
                           undo=lambda: setattr(line, "quantity", old))  # fmt: skip
        return line

    def void_line(self, no: int, now: datetime, *, reason: str = "") -> Line:
        """Void a line: it stays on the record, struck out, and is not charged."""
        self._open()
        line = self._line(no)
        line.voided = True
        line.void_reason = reason
        self._reprice(now)
        return line

    def override_price(
        self, no: int, price: int, now: datetime, *, reason: str, actor: str | None = None,
        approver: str | None = None,
    ) -> Line:  # fmt: skip
        """Set a line's unit price by hand; a reason is required and recorded."""
        self._open()
        line = self._line(no)
        if not reason.strip():
            raise InputError("a price override needs a reason")
        if not 0 <= price <= self.policy.max_line_amount:
            raise InputError(f"price {self.policy.currency.plain(price)} is out of range")
        before = (line.unit_price, line.override, line.fixed_amount)
        override = Override(price, line.item.price, reason.strip(), actor, approver)

        def apply() -> None:
            line.unit_price, line.override, line.fixed_amount = price, override, None

        def undo() -> None:
            line.unit_price, line.override, line.fixed_amount = before

        self._apply_change(now, apply, undo)
        return line

    def discount_line(self, no: int, discount: Discount, now: datetime) -> Line:
        """Give a manual discount on one line (replaces an earlier one)."""
        self._open()
        line = self._line(no)
        old = line.discount
        self._apply_change(now, lambda: setattr(line, "discount", discount),
                           undo=lambda: setattr(line, "discount", old))  # fmt: skip
        return line

    def discount_cart(self, discount: Discount | None, now: datetime) -> None:
        """Give (or with ``None`` remove) a discount on the whole cart."""
        self._open()
        old = self.cart_discount
        self._apply_change(now, lambda: setattr(self, "cart_discount", discount),
                           undo=lambda: setattr(self, "cart_discount", old))  # fmt: skip

    def set_points_discount(self, discount: PointsDiscount | None, now: datetime) -> None:
        """Take loyalty points off the price (or with ``None`` remove them); before any payment."""
        self._open()
        if discount is not None and self.points_discount is not None:
            raise SaleError("the sale already has a points discount; remove it first")
        if discount is not None and not any(not ln.voided for ln in self.lines):
            raise SaleError("nothing to take points off: the cart is empty")
        old = self.points_discount
        self._apply_change(now, lambda: setattr(self, "points_discount", discount),
                           undo=lambda: setattr(self, "points_discount", old))  # fmt: skip

    def points_pool(self) -> int:
        """What a points discount can take off now: the lines' amounts after every other discount, gift cards aside."""
        return sum(self._points_weights().values())

    def _points_weights(self) -> dict[str, int]:
        amounts = {ln.key: ln.amount + ln.points_discount for ln in self.lines
                   if not ln.voided and ln.item.department != _GIFT_CARD}  # fmt: skip
        return {key: amount for key, amount in amounts.items() if amount > 0}

    def add_coupon(self, code: str, now: datetime) -> None:
        """Enter a coupon code; promotions tied to it apply from now on."""
        self._open()
        code = code.strip().upper()
        if not code or len(code) > 64 or not code.isprintable():
            raise InputError("coupon code must be 1-64 printable characters")
        self.coupons.add(code)
        self._reprice(now)

    def _apply_change(self, now: datetime, apply: Any, undo: Any) -> None:
        """Apply a change, reprice, and roll the change back if the sale would break a limit."""
        apply()
        try:
            self._reprice(now)
            for line in self.lines:
                if line.base > self.policy.max_line_amount:
                    raise InputError(
                        f"line {line.no} would exceed the line limit of "
                        f"{self.policy.currency.plain(self.policy.max_line_amount)}"
                    )
            if self.totals().total > self.policy.max_sale_amount:
                raise InputError(
                    f"sale total would exceed the limit of {self.policy.currency.plain(self.policy.max_sale_amount)}"
                )
        except BaseException:
            undo()
            self._reprice(now)
            raise

    # -- pricing ---------------------------------------------------------------------------------

    def _reprice(self, now: datetime) -> None:
        mode = self.policy.rounding_mode
        active = [ln for ln in self.lines if not ln.voided]
        for line in self.lines:
            line.promo_discount = line.manual_discount = line.cart_discount = line.points_discount = 0
            line.promo_reasons = ()
            if line.fixed_amount is not None:
                line.base = line.fixed_amount
            elif line.item.weighed:
                line.base = round_minor(line.quantity * line.unit_price, mode)
            else:  # counted items have whole quantities: exact integer math
                line.base = int(line.quantity) * line.unit_price
        promo_lines = [ln.promo_line() for ln in active]
        ctx = PromoContext(now=now, tz=self.policy.tz, coupons=frozenset(self.coupons))
        promo = evaluate(promo_lines, self.policy.promotions, ctx)
        discounts, reasons = promo.line_discounts, promo.line_reasons
        for ln in active:
            ln.promo_discount = discounts.get(ln.key, 0)
            ln.promo_reasons = tuple(reasons.get(ln.key, ()))
            if ln.discount is not None:
                ln.manual_discount = ln.discount.of(ln.base - ln.promo_discount, mode)
        if self.cart_discount is not None and active:
            pool = sum(ln.amount for ln in active)
            total_off = self.cart_discount.of(pool, mode)
            shares = allocate(total_off, {ln.key: ln.amount for ln in active})
            for ln in active:
                ln.cart_discount = shares.get(ln.key, 0)
        self.points_applied = 0
        points = self.points_discount
        if points is not None:  # after every other discount; whole points, never more than the lines cost
            weights = self._points_weights()
            self.points_applied = min(points.points, sum(weights.values()) // points.value)
            shares = allocate(self.points_applied * points.value, weights)
            for ln in active:
                ln.points_discount = shares.get(ln.key, 0)
        taxed = compute_tax(
            [TaxableLine(ln.key, ln.item.tax_class, ln.amount, ln.quantity, ln.item.weighed) for ln in active],
            self.policy.tax,
        )
        by_key = taxed.lines
        for ln in self.lines:
            lt = None if ln.voided else by_key.get(ln.key)
            ln.line_tax = lt
            ln.net, ln.tax, ln.total = (lt.net, lt.tax, lt.gross) if lt else (0, 0, 0)
        self._tax, self._promo, self._priced_at = taxed, promo, now

    @property
    def tax(self) -> TaxResult:
        if self._tax is None:
            self._tax = compute_tax([], self.policy.tax)
        return self._tax

    @property
    def promotions(self) -> PromoResult | None:
        return self._promo

    def totals(self) -> Totals:
        """Totals now; ``due`` is what is still to pay (before cash rounding)."""
        active = [ln for ln in self.lines if not ln.voided]
        tax = self.tax
        paid = sum(t.amount for t in self.tenders)
        return Totals(
            subtotal=sum(ln.base for ln in active),
            discount=sum(ln.discount_total for ln in active),
            net=tax.total_net,
            tax=tax.total_tax,
            total=tax.total_gross,
            paid=paid,
            due=tax.total_gross + self.rounding - paid,
            lines=len(active),
            items=sum((ln.quantity if not ln.item.weighed else Decimal(1) for ln in active), Decimal(0)),
            points_discount=sum(ln.points_discount for ln in active),
        )

    # -- payment ---------------------------------------------------------------------------------

    def _payable(self) -> int:
        if self.state != "open":
            raise SaleError(f"sale is {self.state}")
        if not any(not ln.voided for ln in self.lines):
            raise SaleError("nothing to pay: the cart is empty")
        return self.totals().due

    def cash_due(self) -> int:
        """What a customer paying the rest in cash owes, after cash rounding."""
        due = self._payable()
        return cash_round(due, self.policy.cash_rounding)

    def pay_cash(self, tendered: int) -> Tender:
        """Take cash. Over-payment gives change; cash rounding applies when cash settles the sale."""
        due = self._payable()
        if tendered <= 0:
            raise TenderError("cash tendered must be positive")
        if due <= 0:
            raise TenderError("the sale is already paid")
        rounded = cash_round(due, self.policy.cash_rounding)
        if tendered >= rounded:
            self.rounding += rounded - due
            tender = Tender(TenderKind.CASH, amount=rounded, tendered=tendered, change=tendered - rounded)
        else:
            tender = Tender(TenderKind.CASH, amount=tendered, tendered=tendered)
        self.tenders.append(tender)
        return tender

    def pay_electronic(self, kind: TenderKind, amount: int, reference: str, detail: dict[str, str] | None = None
                       ) -> Tender:  # fmt: skip
        """Record an approved card, gift card or store credit payment."""
        if kind is TenderKind.CASH:
            raise TenderError("use pay_cash for cash")
        due = self._payable()
        if amount <= 0:
            raise TenderError(f"{kind} amount must be positive")
        if amount > due:
            raise TenderError(
                f"{kind} amount {self.policy.currency.plain(amount)} is more than the "
                f"{self.policy.currency.plain(due)} due; no cash back on {kind}"
            )
        if not reference:
            raise TenderError(f"a {kind} payment needs the approval reference")
        tender = Tender(kind, amount=amount, reference=reference, detail=dict(detail or {}))
        self.tenders.append(tender)
        return tender

    def complete(self, now: datetime) -> dict[str, Any]:
        """Finish the sale and return its document for the ledger.

        Raises :class:`TenderError` unless the tenders cover the total.
        """
        due = self._payable()
        if due > 0:
            raise TenderError(f"tenders do not cover the total: {self.policy.currency.plain(due)} still due")
        self._reprice(self._priced_at or now)
        self.completed_at = now
        self.state = "completed"
        return self.to_doc()

    def cancel(self) -> None:
        """Abandon the sale (the caller journals it and reverses electronic tenders)."""
        if self.state != "open":
            raise SaleError(f"sale is {self.state}")
        self.state = "cancelled"

    # -- documents -------------------------------------------------------------------------------

    def to_doc(self) -> dict[str, Any]:
        """The sale as a canonical-JSON-ready document (ints and strings only)."""
        totals = self.totals()
        start = self.started_at
        end = self.completed_at
        duration = int((end - start).total_seconds() * 1000) if start and end else None
        change = sum(t.change for t in self.tenders)
        doc: dict[str, Any] = {
            "id": self.id,
            "cashier": self.cashier,
            "approver": self.approver,
            "shift_id": self.shift_id,
            "customer_id": self.customer_id,
            "state": self.state,
            "started_at": iso_utc(start) if start else None,
            "completed_at": iso_utc(end) if end else None,
            "duration_ms": duration,
            "currency": self.policy.currency.code,
            "prices_include_tax": self.policy.tax.prices_include_tax,
            "lines": [_line_doc(ln) for ln in self.lines],
            "coupons": sorted(self.coupons),
            "cart_discount": self.cart_discount.to_doc() if self.cart_discount else None,
            "promotions": [
                {"id": a.promo_id, "name": a.name, "amount": a.amount}
                for a in (self._promo.applied if self._promo else ())
            ],
            "taxes": [
                {
                    "code": r.code,
                    "name": r.name,
                    "percent": str(r.percent),
                    "taxable": r.taxable,
                    "tax": r.tax,
                }
                for r in self.tax.rates
            ],
            "subtotal": totals.subtotal,
            "discount": totals.discount,
            "net": totals.net,
            "tax": totals.tax,
            "total": totals.total,
            "rounding": self.rounding,
            "tenders": [t.to_doc() for t in self.tenders],
            "change": change,
        }
        points = self.points_discount
        if points is not None:  # ``discount`` includes it; lines carry their share as ``points_discount``
            doc["points_discount"] = {
                "customer": points.customer, "points": self.points_applied, "held": points.points,
                "value": points.value, "amount": totals.points_discount, "move": points.move, "mode": points.mode,
            }  # fmt: skip
            if points.balance is not None:
                doc["points_discount"]["balance"] = points.balance
            for ln, line_doc in zip(self.lines, doc["lines"], strict=True):
                line_doc["points_discount"] = ln.points_discount
        return doc

    def suspend(self) -> dict[str, Any]:
        """Park an unpaid sale; the returned state resumes it with :meth:`resume`.

        A points discount is not parked: the till gives its points back (``Till.suspend``).
        """
        self._open()
        return {
            "id": self.id,
            "cashier": self.cashier,
            "customer_id": self.customer_id,
            "started_at": iso_utc(self.started_at) if self.started_at else None,
            "coupons": sorted(self.coupons),
            "cart_discount": self.cart_discount.to_doc() if self.cart_discount else None,
            "lines": [_line_state(ln) for ln in self.lines],
        }

    @classmethod
    def resume(cls, state: dict[str, Any], policy: SalePolicy, now: datetime) -> Sale:
        """Rebuild a suspended sale, repriced at ``now`` with the current promotions."""
        sale = cls(policy=policy, cashier=state.get("cashier"), id=state["id"], customer_id=state.get("customer_id"))
        started = state.get("started_at")
        sale.started_at = datetime.fromisoformat(started) if started else None
        sale.coupons = set(state.get("coupons", []))
        sale.cart_discount = _discount_from(state.get("cart_discount"))
        for raw in state["lines"]:
            item = Item(**{**raw["item"], "barcodes": tuple(raw["item"]["barcodes"])})
            override = raw.get("override")
            scan = raw.get("scan")
            sale.lines.append(
                Line(
                    no=raw["no"],
                    item=item,
                    quantity=Decimal(raw["qty"]),
                    unit_price=raw["unit_price"],
                    fixed_amount=raw.get("fixed_amount"),
                    override=Override(**override) if override else None,
                    discount=_discount_from(raw.get("discount")),
                    scan=ScanInfo(**scan) if scan else None,
                    voided=raw.get("voided", False),
                    void_reason=raw.get("void_reason", ""),
                )
            )
        sale._reprice(now)
        return sale


def _discount_from(doc: dict[str, Any] | None) -> Discount | None:
    if not doc:
        return None
    pct = doc.get("percent")
    return Discount(
        percent=None if pct is None else Decimal(pct),
        amount=doc.get("amount"),
        reason=doc.get("reason", ""),
        actor=doc.get("actor"),
        approver=doc.get("approver"),
    )


def _qty_text(qty: Decimal) -> str:
    return str(qty.normalize()) if qty != qty.to_integral_value() else str(int(qty))


def _line_doc(ln: Line) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "line": ln.no,
        "sku": ln.item.sku,
        "name": ln.item.name,
        "qty": _qty_text(ln.quantity),
        "unit": ln.item.unit,
        "unit_price": ln.unit_price,
        "amount": ln.base,
        "discount": ln.discount_total,
        "promotions": list(ln.promo_reasons),
        "net": ln.net,
        "tax": ln.tax,
        "tax_rates": ln.tax_rates,
        "total": ln.total,
        "tax_class": ln.item.tax_class,
        "department": ln.item.department,
        "voided": ln.voided,
    }
    if ln.voided:
        doc["void_reason"] = ln.void_reason
    if ln.override:
        o = ln.override
        doc["override"] = {"price": o.price, "original": o.original, "reason": o.reason, "actor": o.actor,
                           "approver": o.approver}  # fmt: skip
    if ln.discount:
        doc["manual_discount"] = ln.discount.to_doc()
    if ln.scan:
        doc["scan"] = {"code": ln.scan.code, "expiry": ln.scan.expiry, "batch": ln.scan.batch}
    return doc


def _line_state(ln: Line) -> dict[str, Any]:
    item = ln.item
    return {
        "no": ln.no,
        "item": {"sku": item.sku, "name": item.name, "price": item.price, "tax_class": item.tax_class,
                 "unit": item.unit, "department": item.department, "barcodes": list(item.barcodes),
                 "age_restricted": item.age_restricted, "active": item.active},
        "qty": str(ln.quantity),
        "unit_price": ln.unit_price,
        "fixed_amount": ln.fixed_amount,
        "override": None if ln.override is None else {
            "price": ln.override.price, "original": ln.override.original, "reason": ln.override.reason,
            "actor": ln.override.actor, "approver": ln.override.approver},
        "discount": ln.discount.to_doc() if ln.discount else None,
        "scan": None if ln.scan is None else {"code": ln.scan.code, "expiry": ln.scan.expiry,
                                              "batch": ln.scan.batch, "expired": ln.scan.expired},
        "voided": ln.voided,
        "void_reason": ln.void_reason,
    }  # fmt: skip


__all__ = [
    "Discount",
    "Line",
    "Override",
    "PointsDiscount",
    "Sale",
    "SalePolicy",
    "ScanInfo",
    "Totals",
]
