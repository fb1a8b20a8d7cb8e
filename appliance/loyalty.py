"""Loyalty points: earned on completed sales under configured rules, redeemed through the hub as a tender or a discount.

A customer's points are keyed by customer id (the id the customer lookup gives; the hub
also takes a loyalty card number linked to one). The shop's hub holds the balances, like
gift cards (docs/accounts.md): a redemption asks the hub first (``req/loyalty-move``,
request id = movement id, asked again with the same id when no answer came); when the shop
cannot be reached the till redeems at most ``offline_limit_per_customer`` points for one
customer and ``offline_limit_per_till`` in all (not yet acknowledged by the shop). Points
earned by a sale are recorded in the sale's transaction and reach the hub as a
``tillbox.loyalty.moved`` event, and taken back (``clawback``) in the transaction of a return
of the goods that earned them (:meth:`Loyalty.claw_back`, :func:`points_kept`). A
redemption is written down before the hub is asked, like a gift card's
(:class:`appliance.stored_value.Holds`). A till without a shop keeps the balances itself.

Points redeemed as a discount (:meth:`Loyalty.plan_discount`, :meth:`Loyalty.discount`) take the
same path as a tender (hold, hub, offline limits) but lower the price, so the tax base, instead
of paying it: the sale spreads them over its lines (:class:`appliance.sale.PointsDiscount`).

Earning (:func:`points_earned`) is pure: the gross totals of the sale's lines, without
voided lines, gift cards and the excluded departments and tax classes, less what points
paid, times ``points_per_unit`` per whole currency unit, rounded down. A points discount already
lowered the lines' totals, so nothing is earned on it either.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

from appliance.clock import Clock, SystemClock, iso_utc
from appliance.errors import DeviceUnavailable, InputError, NotFound, SaleError, TenderError, TillboxError
from appliance.ids import uuid7
from appliance.ledger import Ledger, NewEvent, Tx
from appliance.money import Currency
from appliance.sale import PointsDiscount, Sale
from appliance.stored_value import (
    GIFT_CARD_DEPARTMENT,
    Hold,
    Holds,
    Limits,
    Remote,
    RoomTexts,
    ask,
    offline_room,
    record,
    sale_tender,
)
from appliance.tenders import Tender, TenderKind

_POINTS_ROOM = RoomTexts(
    none="the shop cannot be reached and this till redeems no points offline",
    account="the shop cannot be reached: at most {left} more points can be redeemed for this customer offline "
            "(limit {limit})",
    till="the shop cannot be reached: this till can redeem at most {left} more points offline (limit {limit})",
    known="the customer had {left} points when last seen and the shop cannot be reached to check",
)  # fmt: skip

if TYPE_CHECKING:
    from appliance.config import Config

log = logging.getLogger(__name__)

BOOK: Final = "loyalty"
EVENT: Final = "tillbox.loyalty.moved"
_KIND: Final = str(TenderKind.LOYALTY)


@dataclass(frozen=True)
class Rules:
    """How points are earned and what they are worth."""

    enabled: bool = False
    points_per_unit: Decimal = Decimal(1)
    point_value: int = 1
    min_redeem: int = 1
    excluded_departments: frozenset[str] = frozenset()
    excluded_tax_classes: frozenset[str] = frozenset()
    excluded_skus: frozenset[str] = frozenset()

    @classmethod
    def from_config(cls, config: Config) -> Rules:
        lo = config.loyalty
        return cls(enabled=lo.enabled, points_per_unit=lo.points_per_unit, point_value=lo.point_value,
                   min_redeem=lo.min_redeem_points, excluded_departments=frozenset(lo.excluded_departments),
                   excluded_tax_classes=frozenset(lo.excluded_tax_classes),
                   excluded_skus=frozenset({config.stored_value.gift_card_sku}))  # fmt: skip


def eligible(line: Mapping[str, Any], rules: Rules) -> bool:
    """Whether a sale line earns points."""
    return not (line.get("voided") or line.get("department") in rules.excluded_departments
                or line.get("department") == GIFT_CARD_DEPARTMENT or line.get("tax_class") in rules.excluded_tax_classes
                or line.get("sku") in rules.excluded_skus)  # fmt: skip


def points_earned(doc: Mapping[str, Any], rules: Rules, currency: Currency) -> int:
    """Points a completed sale document earns its customer (0 without one or with loyalty off)."""
    return points_kept(doc, {}, rules, currency)


def points_kept(doc: Mapping[str, Any], refunded: Mapping[int, int], rules: Rules, currency: Currency) -> int:
    """Points a sale still earns once ``refunded`` (amount per line number) of its lines came back.

    The eligible amount left is the eligible lines' totals less what was refunded of them,
    less the share of it that points paid (points paid the eligible goods pro rata), and it
    earns like :func:`points_earned`: ``points_per_unit`` per whole currency unit, rounded
    down once. Nothing refunded gives exactly :func:`points_earned`; everything refunded, 0.
    """
    if not rules.enabled or not doc.get("customer_id"):
        return 0
    lines = [ln for ln in doc.get("lines", []) if eligible(ln, rules)]
    whole = sum(int(ln["total"]) for ln in lines)
    base = whole - sum(int(t["amount"]) for t in doc.get("tenders", []) if t.get("kind") == _KIND)
    if base <= 0 or whole <= 0:
        return 0
    back = sum(min(max(int(refunded.get(int(ln["line"]), 0)), 0), int(ln["total"])) for ln in lines
               if ln.get("line") is not None)  # fmt: skip
    num, den = rules.points_per_unit.as_integer_ratio()  # exact: floor(ppu * base * (whole - back) / whole / 10^e)
    return max(int(num * base * (whole - back)) // int(den * whole * 10**currency.exponent), 0)


@dataclass(frozen=True)
class Points:
    """A customer's points; ``source`` is "shop" when the hub just said it, "till" for the last known."""

    customer: str
    points: int
    known_at: str | None = None
    source: str = "till"


@dataclass(frozen=True)
class PointsRedemption:
    """Points being redeemed: the movement id is the request id and the tender's id."""

    move_id: str
    customer: str
    points: int
    partial: bool
    sale_id: str
    staff: str | None = None


def points_move(tx: Tx, customer: str, delta: int, *, time: str, op: str, reason: str, ref: str, journal_seq: int,
                mode: str = "local", move_id: str | None = None, balance: int | None = None, actor: str | None = None,
                reverses: str | None = None, authority: bool = False) -> int | None:  # fmt: skip
    """Record a change of a customer's points in this transaction; returns the points the till knows after it.

    Points of a customer the till knows nothing of stay unknown (a credit is not the whole
    balance), unless the till is the ``authority`` (it has no shop). A local redemption needs
    the points; a claw-back is a fact and may take the balance below zero.
    """
    conn = tx.conn
    row = conn.execute("SELECT points FROM loyalty_points WHERE customer = ?", (customer,)).fetchone()
    if mode == "local" and op == "redeem" and delta < 0 and (row is None or int(row[0]) + delta < 0):
        raise TenderError(f"customer {customer} has only {0 if row is None else int(row[0])} points")
    if mode == "online" and balance is not None:
        known: int | None = balance
    elif row is not None:
        known = int(row[0]) + delta
    else:
        known = delta if authority else None
    if known is not None:
        conn.execute(
            "INSERT INTO loyalty_points(customer, points, known_at, updated_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(customer) DO UPDATE SET points = excluded.points, updated_at = excluded.updated_at, "
            "known_at = COALESCE(excluded.known_at, known_at)",
            (customer, known, time if mode == "online" else None, time),
        )
    mid = move_id or uuid7()
    data: dict[str, Any] = {"move_id": mid, "op": op, "customer": customer, "delta": delta, "balance": known,
                            "reason": reason, "ref": ref, "mode": mode, "staff": actor}  # fmt: skip
    if reverses is not None:
        data["reverses"] = reverses
    record(tx, NewEvent(EVENT, data, subject=customer), move_id=mid, book=BOOK, kind=_KIND, account=customer, op=op,
           delta=delta, mode=mode, reason=reason, ref=ref, actor=actor, time=time, journal_seq=journal_seq)  # fmt: skip
    return known


class Loyalty:
    """Loyalty points at one till: balances, redemption as a tender, earning on sales, reversals."""

    def __init__(self, ledger: Ledger, currency: Currency, rules: Rules | None = None, *, limits: Limits | None = None,
                 timeout: float | None = None, retries: int = 1, remote: Remote | None = None,
                 clock: Clock | None = None) -> None:  # fmt: skip
        self.ledger = ledger
        self.currency = currency
        self.rules = rules or Rules()
        self.limits = limits or Limits(per_account=500, per_till=2000)
        self.timeout = timeout
        self.retries = retries
        self.remote = remote  # set when sync runs: the hub is the authority
        self.clock = clock or SystemClock()
        self.holds = Holds(ledger, BOOK, self._reverse_hold)

    @classmethod
    def from_config(cls, ledger: Ledger, config: Config, clock: Clock | None = None) -> Loyalty:
        lo, sv = config.loyalty, config.stored_value
        return cls(ledger, config.currency, Rules.from_config(config),
                   limits=Limits(lo.offline_limit_per_customer, lo.offline_limit_per_till),
                   timeout=float(sv.request_timeout), retries=sv.retries, clock=clock)  # fmt: skip

    def _require(self) -> None:
        if not self.rules.enabled:
            raise SaleError("loyalty points are not enabled on this till")

    # -- balances --------------------------------------------------------------------------------

    def get(self, customer: str) -> Points:
        """The points this till last knew for a customer; :class:`NotFound` when it knows none."""
        row = self.ledger.conn.execute("SELECT points, known_at FROM loyalty_points WHERE customer = ?",
                                       (customer,)).fetchone()  # fmt: skip
        if row is None:
            raise NotFound(f"no loyalty points known for customer {customer}")
        return Points(customer, int(row[0]), row[1])

    def ask_balance(self, customer: str) -> dict[str, Any] | None:
        """The hub's answer (any thread); None when the shop cannot be reached."""
        return ask(self.remote, "loyalty-balance", {"customer": customer}, request_id=uuid7(), timeout=self.timeout,
                   retries=0)  # fmt: skip

    def remember(self, answer: Mapping[str, Any]) -> Points:
        """Keep the hub's answer as the points this till knows (a cache, not a movement)."""
        time = iso_utc(self.clock.now())
        customer, points = str(answer["customer"]), int(answer["points"])
        with self.ledger.transaction("remembering loyalty points") as tx:
            tx.conn.execute(
                "INSERT INTO loyalty_points(customer, points, known_at, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(customer) DO UPDATE SET points = excluded.points, known_at = excluded.known_at, "
                "updated_at = excluded.updated_at",
                (customer, points, time, time),
            )
        return Points(customer, points, time, "shop")

    def check(self, customer: str) -> Points:
        """Points from the shop when it answers, else the last known (blocks while asking)."""
        who = _customer(customer)
        return self.settle(who, self.ask_balance(who))

    def settle(self, customer: str, answer: Mapping[str, Any] | None) -> Points:
        """The points given the shop's answer to :meth:`ask_balance` (None: it could not be reached)."""
        if answer is not None:
            return self.remember(answer)
        try:
            return self.get(customer)
        except NotFound:
            if self.remote is None:
                return Points(customer, 0)
            raise DeviceUnavailable(f"the shop cannot be reached and this till knows no points of {customer}") from None

    # -- redeeming -------------------------------------------------------------------------------

    def plan(self, sale: Sale, points: int | None = None, customer: str | None = None) -> PointsRedemption:
        """Check a redemption against the sale and the rules; give it its movement id.

        With a shop, it is written down first as a pending authorisation (see
        :class:`appliance.stored_value.Holds`).
        """
        self._require()
        who = _customer(customer or sale.customer_id or "")
        if sale.state != "open":
            raise SaleError(f"sale is {sale.state}")
        due = sale.totals().due
        if due <= 0:
            raise TenderError("the sale is already paid")
        value = self.rules.point_value
        most = due // value
        if points is not None and points <= 0:
            raise TenderError("points to redeem must be positive")
        if points is not None and points > most:
            raise TenderError(f"{points} points pay {self.currency.plain(points * value)}, more than the "
                              f"{self.currency.plain(due)} due")  # fmt: skip
        return self._hold(sale, who, most if points is None else points, partial=points is None)

    def _hold(self, sale: Sale, who: str, want: int, *, partial: bool) -> PointsRedemption:
        """A redemption of ``want`` points with its movement id; written down first when there is a shop."""
        if want < self.rules.min_redeem:
            raise TenderError(f"at least {self.rules.min_redeem} points are redeemed at once")
        r = PointsRedemption(uuid7(), who, want, partial, sale.id, sale.cashier)
        if self.remote is not None:
            self.holds.open(Hold(r.move_id, BOOK, _KIND, who, want, None, sale.id, sale.cashier),
                            time=iso_utc(self.clock.now()))  # fmt: skip
        return r

    def ask(self, r: PointsRedemption) -> dict[str, Any] | None:
        """Ask the hub to redeem (any thread); None when it cannot be reached. Declines are raised."""
        body = {"op": "redeem", "customer": r.customer, "points": r.points, "partial": r.partial, "ref": r.sale_id,
                "staff": r.staff}  # fmt: skip
        return self.holds.ask(self.remote, "loyalty-move", body, move_id=r.move_id, timeout=self.timeout,
                              retries=self.retries)  # fmt: skip

    def tender(self, sale: Sale, r: PointsRedemption, answer: Mapping[str, Any] | None) -> Tender:
        """Put the points on the sale: as the hub answered, else offline within limits, else from local points."""
        value = self.rules.point_value
        if answer is not None:
            taken = -int(answer["delta"])
            detail = {"move": r.move_id, "mode": "online", "points": str(taken), "balance": str(int(answer["balance"]))}
            try:
                if taken < self.rules.min_redeem:
                    raise TenderError(f"customer {r.customer} has too few points ({int(answer['balance']) + taken})")
                return sale.pay_electronic(TenderKind.LOYALTY, taken * value, r.customer, detail)
            except TillboxError:  # the hub took them but the sale cannot: give them back
                self._release(r, applied=True)
                raise
        try:
            return self._without_shop(sale, r)
        except TillboxError:  # a request that went unanswered may still have reached the hub
            self._release(r, applied=False)
            raise

    def _without_shop(self, sale: Sale, r: PointsRedemption) -> Tender:
        taken, mode = self._take_without_shop(sale, r)
        detail = {"move": r.move_id, "mode": mode, "points": str(taken)}
        return sale.pay_electronic(TenderKind.LOYALTY, taken * self.rules.point_value, r.customer, detail)

    def _take_without_shop(self, sale: Sale, r: PointsRedemption) -> tuple[int, str]:
        """Points that may be taken without the shop (its offline limits, or the till's own points) and the mode."""
        pending = [(str(t.reference), int(t.detail.get("points", "0")), t.detail.get("mode"))
                   for t in sale.tenders if t.kind is TenderKind.LOYALTY]  # fmt: skip
        if sale.points_discount is not None:  # a points discount counts like a points tender
            d = sale.points_discount
            pending.append((d.customer, d.points, d.mode))
        on_sale = sum(points for who, points, _ in pending if who == r.customer)
        try:
            known: int | None = self.get(r.customer).points
        except NotFound:
            known = None
        if self.remote is None:
            available = (known or 0) - on_sale
            taken = min(r.points, available) if r.partial else r.points
            if taken <= 0 or taken > available or taken < self.rules.min_redeem:
                raise TenderError(f"customer {r.customer} has only {max(available, 0)} points")
            mode = "local"
        else:
            offline = sum(points for _, points, mode in pending if mode == "offline")
            room, why = self.room(r.customer, pending=offline, pending_customer=on_sale, known=known)
            taken = min(r.points, room) if r.partial else r.points
            if taken <= 0 or taken > room or taken < self.rules.min_redeem:
                raise TenderError(why)
            mode = "offline"
        return taken, mode

    def pay(self, sale: Sale, points: int | None = None, customer: str | None = None) -> Tender:
        """Plan, ask the hub and tender in one call (blocks while the shop is asked)."""
        r = self.plan(sale, points, customer)
        return self.tender(sale, r, self.ask(r))

    # -- redeeming as a discount -----------------------------------------------------------------

    def plan_discount(self, sale: Sale, points: int | None = None, customer: str | None = None) -> PointsRedemption:
        """Check a points discount against the sale and the rules; written down first like a tender (:meth:`plan`).

        ``points`` None takes as many as the sale's lines cost (whole points). Points come off
        after every other discount and never take the sale below zero; gift cards are left alone.
        """
        self._require()
        who = _customer(customer or sale.customer_id or "")
        if sale.state != "open":
            raise SaleError(f"sale is {sale.state}")
        if sale.tenders:
            raise SaleError("payment has started; points come off the price before it")
        if sale.points_discount is not None:
            raise SaleError("the sale already has a points discount; remove it first")
        if points is not None and points <= 0:
            raise InputError("points to redeem must be positive")
        value, pool = self.rules.point_value, sale.points_pool()
        most = pool // value
        if most <= 0:
            raise SaleError(f"nothing in the sale for points to take off (one point is worth "
                            f"{self.currency.plain(value)})")  # fmt: skip
        if points is not None and points > most:
            raise TenderError(f"{points} points take {self.currency.plain(points * value)} off, more than the "
                              f"{self.currency.plain(pool)} the sale costs; at most {most} points")  # fmt: skip
        return self._hold(sale, who, most if points is None else points, partial=points is None)

    def discount(self, sale: Sale, r: PointsRedemption, answer: Mapping[str, Any] | None) -> PointsDiscount:
        """Take the points off the sale's price: as the hub answered, else offline within limits, else locally.

        Like :meth:`tender`: points the sale cannot use are given back (the hold is reversed).
        """
        if answer is not None:
            taken = -int(answer["delta"])
            try:
                if taken < self.rules.min_redeem:
                    raise TenderError(f"customer {r.customer} has too few points ({int(answer['balance']) + taken})")
                return self._take_off(sale, r, taken, "online", int(answer["balance"]))
            except TillboxError:  # the hub took them but the sale cannot: give them back
                self._release(r, applied=True)
                raise
        try:
            taken, mode = self._take_without_shop(sale, r)
            return self._take_off(sale, r, taken, mode, None)
        except TillboxError:  # a request that went unanswered may still have reached the hub
            self._release(r, applied=False)
            raise

    def _take_off(self, sale: Sale, r: PointsRedemption, taken: int, mode: str, balance: int | None
                  ) -> PointsDiscount:  # fmt: skip
        d = PointsDiscount(r.customer, taken, self.rules.point_value, r.move_id, mode, balance, r.staff)
        sale.set_points_discount(d, self.clock.now())
        return d

    def take_off(self, sale: Sale, points: int | None = None, customer: str | None = None) -> PointsDiscount:
        """Plan, ask the hub and take the points off the price in one call (blocks while the shop is asked)."""
        r = self.plan_discount(sale, points, customer)
        return self.discount(sale, r, self.ask(r))

    def remove_discount(self, sale: Sale, *, actor: str | None) -> PointsDiscount:
        """Take a points discount off an unpaid sale and give its points back (as a voided points tender is)."""
        d = sale.points_discount
        if d is None:
            raise SaleError("the sale has no points discount")
        sale.set_points_discount(None, self.clock.now())
        self._release(PointsRedemption(d.move, d.customer, d.points, False, sale.id, actor),
                      applied=d.mode in ("online", "offline"))  # fmt: skip
        return d

    def room(self, customer: str, *, pending: int = 0, pending_customer: int = 0, known: int | None = None
             ) -> tuple[int, str]:  # fmt: skip
        """Points that may still be redeemed offline for ``customer`` here, and the one-line reason of the limit."""
        return offline_room(self.ledger.conn, self.limits, BOOK, customer, _POINTS_ROOM, say=str, pending=pending,
                            pending_account=pending_customer, known=known)  # fmt: skip

    def _release(self, r: PointsRedemption, *, applied: bool) -> None:
        """Give back points the sale does not take: its pending hold, or a redemption the hub ``applied``."""
        if not applied and self.holds.state(self.ledger.conn, r.move_id) is None:
            return  # never asked of the shop
        time = iso_utc(self.clock.now())
        with self.ledger.transaction("reversing a points payment") as tx:
            state = self.holds.state(tx.conn, r.move_id)
            if state not in (None, "pending") or (state is None and not applied):
                return  # settled already, or never asked of the shop
            entry = tx.journal("loyalty.reversed", {"sale_id": r.sale_id, "move": r.move_id}, time=time, actor=r.staff)
            points_move(tx, r.customer, 0, time=time, op="reverse", reason="void", ref=r.sale_id,
                        journal_seq=entry.seq, actor=r.staff, reverses=r.move_id)  # fmt: skip
            self.holds.settle(tx, r.move_id, "reversed", time=time, journal_seq=entry.seq)

    def _reverse_hold(self, tx: Tx, hold: Hold, reason: str, time: str, journal_seq: int) -> str:
        rid = uuid7()
        points_move(tx, hold.account, 0, time=time, op="reverse", reason=reason, ref=hold.sale_id,
                    journal_seq=journal_seq, move_id=rid, actor=hold.actor, reverses=hold.move_id)  # fmt: skip
        return rid

    # -- in the sale's transaction ---------------------------------------------------------------

    def precheck(self, tx: Tx, doc: Mapping[str, Any]) -> None:
        """Before a sale commits: its offline point tenders and points discount still fit the limits."""
        offline = [(str(t["reference"]), int(t["detail"]["points"])) for t in doc.get("tenders", [])
                   if t["kind"] == _KIND and (t.get("detail") or {}).get("mode") == "offline"]  # fmt: skip
        d = doc.get("points_discount")
        if d and d.get("mode") == "offline" and int(d["points"]) > 0:
            offline.append((str(d["customer"]), int(d["held"])))
        total = sum(points for _, points in offline)
        for customer in sorted({who for who, _ in offline}):
            mine = sum(points for who, points in offline if who == customer)
            room, why = self.room(customer, pending=total - mine)
            if mine > room:
                raise TenderError(why)

    def record_sale(self, tx: Tx, doc: Mapping[str, Any], journal_seq: int) -> int:
        """Record the sale's point tenders and the points it earns (same transaction); returns the points earned."""
        time, sale_id, actor = str(doc["completed_at"]), str(doc["id"]), doc.get("cashier")
        for t in doc.get("tenders", []):
            if t["kind"] != _KIND:
                continue
            detail = sale_tender(tx.conn, journal_seq, _KIND, str(t["reference"]), sale_id, BOOK)
            points = int(detail.get("points") or 0)
            if points <= 0:
                raise TenderError(f"the points payment of {t['reference']} names no points")
            points_move(tx, str(t["reference"]), -points, time=time, op="redeem", reason="sale", ref=sale_id,
                        journal_seq=journal_seq, mode=detail.get("mode", "local"), move_id=detail.get("move"),
                        balance=int(detail["balance"]) if "balance" in detail else None, actor=actor)  # fmt: skip
        self._record_discount(tx, doc, journal_seq)
        earned = points_earned(doc, self.rules, self.currency)
        if earned > 0:
            points_move(tx, str(doc["customer_id"]), earned, time=time, op="earn", reason="sale", ref=sale_id,
                        journal_seq=journal_seq, actor=actor, authority=self.remote is None)  # fmt: skip
        return earned

    def _record_discount(self, tx: Tx, doc: Mapping[str, Any], journal_seq: int) -> None:
        """Record the points a sale's points discount took: all that were taken, then those it did not use back."""
        d = doc.get("points_discount")
        if not d or int(d["points"]) <= 0:
            return  # none applied: its hold is reversed by :meth:`settle_sale`
        time, sale_id, actor = str(doc["completed_at"]), str(doc["id"]), doc.get("cashier")
        customer, held, used = str(d["customer"]), int(d["held"]), int(d["points"])
        points_move(tx, customer, -held, time=time, op="redeem", reason="discount", ref=sale_id,
                    journal_seq=journal_seq, mode=str(d["mode"]), move_id=str(d["move"]),
                    balance=None if d.get("balance") is None else int(d["balance"]), actor=actor)  # fmt: skip
        if held > used:  # the sale came to cost less than the points taken: the rest go back
            points_move(tx, customer, held - used, time=time, op="refund", reason="discount", ref=sale_id,
                        journal_seq=journal_seq, actor=actor, authority=self.remote is None)  # fmt: skip

    def claw_back(self, tx: Tx, ret: Mapping[str, Any], original: Mapping[str, Any], refunded: Mapping[int, int],
                  journal_seq: int) -> int:  # fmt: skip
        """Take back, in a return's transaction, the points its lines had earned; returns how many.

        ``refunded`` is what has been refunded of each original line so far, this return ``ret``
        included (here and, as the shop said, at other tills). The points taken back are what
        the sale kept before this return less what it keeps after it (:func:`points_kept`), so
        partial returns add up to what the whole sale earned and the customer keeps exactly
        what the goods kept would have earned. Recorded at the till (``clawback``, mode
        ``local``) and emitted, never refused: points already spent take the balance below
        zero, and the hub raises ``loyalty.negative``.
        """
        before = dict(refunded)
        for ln in ret.get("lines", []):
            if ln.get("line") is not None:
                before[int(ln["line"])] = before.get(int(ln["line"]), 0) - int(ln["amount"])
        points = points_kept(original, before, self.rules, self.currency) - \
            points_kept(original, refunded, self.rules, self.currency)  # fmt: skip
        if points <= 0:
            return 0
        points_move(tx, str(original["customer_id"]), -points, time=str(ret["completed_at"]), op="clawback",
                    reason="return", ref=str(ret["id"]), journal_seq=journal_seq, actor=ret.get("cashier"),
                    authority=self.remote is None)  # fmt: skip
        return points

    def reverse(self, sale: Sale, *, actor: str | None) -> list[str]:
        """Give back the points a voided sale took at the hub: its tenders and any other pending hold.

        Recorded and emitted, never waited for; returns the reversal movement ids.
        """
        tenders = [t for t in sale.tenders if t.kind is TenderKind.LOYALTY and t.detail.get("mode") in
                   ("online", "offline")]  # fmt: skip
        if not tenders and not self.holds.pending(self.ledger.conn, sale.id):
            return []
        time = iso_utc(self.clock.now())
        ids = []
        with self.ledger.transaction("reversing points payments") as tx:
            if tenders:
                entry = tx.journal("loyalty.reversed", {"sale_id": sale.id, "tenders": [t.to_doc() for t in tenders]},
                                   time=time, actor=actor)  # fmt: skip
                for t in tenders:
                    rid = uuid7()
                    points_move(tx, str(t.reference), 0, time=time, op="reverse", reason="void", ref=sale.id,
                                journal_seq=entry.seq, move_id=rid, actor=actor, reverses=t.detail["move"])  # fmt: skip
                    self.holds.settle(tx, t.detail["move"], "reversed", time=time, journal_seq=entry.seq)
                    ids.append(rid)
            ids += self.holds.finish(tx, sale.id, (), time=time, actor=actor, reason="void")
        return ids

    def settle_sale(self, tx: Tx, doc: Mapping[str, Any], journal_seq: int) -> list[str]:
        """In a completing sale's transaction: its point tenders' holds are consumed, any other is reversed."""
        used = {str((t.get("detail") or {}).get("move")) for t in doc.get("tenders", []) if t["kind"] == _KIND}
        d = doc.get("points_discount")
        if d and int(d["points"]) > 0:
            used.add(str(d["move"]))
        return self.holds.finish(tx, str(doc["id"]), used, time=str(doc["completed_at"]), actor=doc.get("cashier"),
                                 reason="void", journal_seq=journal_seq)  # fmt: skip

    def recover(self) -> list[str]:
        """At start-up: give back the points taken for sales lost before they completed (tenders and discounts)."""
        return self.holds.recover(time=iso_utc(self.clock.now()))

    def return_points(self, return_id: str) -> tuple[int, int]:
        """Points a committed return gave back to and took back from the customer: (given, taken)."""
        row = self.ledger.conn.execute(
            "SELECT COALESCE(SUM(CASE WHEN op = 'refund' THEN delta END), 0), "
            "COALESCE(SUM(CASE WHEN op = 'clawback' THEN -delta END), 0) FROM account_moves "
            "WHERE book = ? AND ref = ?", (BOOK, return_id)).fetchone()  # fmt: skip
        return int(row[0]), int(row[1])


def refund_points(tx: Tx, refund: Mapping[str, Any], *, time: str, ref: str, journal_seq: int, actor: str | None
                  ) -> None:  # fmt: skip
    """Credit back the points of a return refunded onto the customer's loyalty account."""
    points = int(refund.get("points") or 0)
    if points > 0:
        points_move(tx, str(refund["reference"]), points, time=time, op="refund", reason="return", ref=ref,
                    journal_seq=journal_seq, actor=actor)  # fmt: skip


def discount_points_back(original: Mapping[str, Any], before: Mapping[int, Decimal], after: Mapping[int, Decimal]
                         ) -> int:  # fmt: skip
    """Points of a sale's points discount to give back when its refunded quantities go from ``before`` to ``after``.

    Each line's share of the discount comes back with its units like the line's price
    (cumulative, rounded down, the last unit takes the rest); the points follow the discount
    refunded so far in proportion, rounded down once, so partial returns give back exactly
    the points the sale used once everything came back.
    """
    d = original.get("points_discount") or {}
    points, amount = int(d.get("points") or 0), int(d.get("amount") or 0)
    if points <= 0 or amount <= 0:
        return 0

    def refunded(done: Mapping[int, Decimal]) -> int:
        total = 0
        for ln in original.get("lines", []):
            share, sold = int(ln.get("points_discount") or 0), Decimal(ln["qty"])
            qty = min(done.get(int(ln["line"]), Decimal(0)), sold)
            if share > 0 and qty > 0:
                total += share if qty >= sold else int(share * qty / sold)
        return total

    return max(points * refunded(after) // amount - points * refunded(before) // amount, 0)


def points_for_refund(tender: Mapping[str, Any], part: int) -> int:
    """Points to give back for ``part`` of a points tender (in proportion, rounded down)."""
    detail = tender.get("detail") or {}
    points, amount = int(detail.get("points") or 0), int(tender["amount"])
    if points <= 0 or amount <= 0:
        return 0
    return points * part // amount


def _customer(value: str) -> str:
    text = value.strip()
    if not text or len(text) > 64 or not text.isprintable() or " " in text:
        raise InputError("attach a customer (or give a loyalty card) to use points")
    return text
