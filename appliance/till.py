"""The till service: config, catalog, sale engine, payment and ledger wired together.

The sale engine is pure; this layer does the lookups and the writes. Everything
here runs on one thread (the daemon's event loop); blocking device calls belong
to the drivers, which hand results back.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from appliance.barcode import Scan, parse_scan
from appliance.catalog import Catalog, Item
from appliance.clock import Clock, SystemClock, iso_utc
from appliance.config import Config
from appliance.customers import Customers
from appliance.errors import InputError, PaymentDeclined, SaleError, TenderError, TillboxError
from appliance.ledger import CommittedSale, Ledger, NewEvent, Tx
from appliance.receipt import Receipt, StoreInfo, return_receipt, sale_receipt
from appliance.returns import ReturnPlan, Returns, write_return
from appliance.sale import Line, PointsDiscount, Sale, SalePolicy, ScanInfo
from appliance.shifts import Shifts
from appliance.staff import Action, Approval, LockoutPolicy, StaffStore
from appliance.tenders import PaymentTerminal, Tender, TenderKind

log = logging.getLogger(__name__)


def open_ledger(config: Config, data_dir: Path) -> Ledger:
    """Open (creating if needed) the ledger configured for this device."""
    data_dir.mkdir(parents=True, exist_ok=True)
    return Ledger(
        config.ledger_path(data_dir),
        store_id=config.store.id,
        device_id=config.store.device_id,
        synchronous=config.ledger.synchronous,
        wal_autocheckpoint=config.ledger.wal_autocheckpoint,
    )


@dataclass(frozen=True)
class Completed:
    """A committed sale: its ledger record and its document."""

    committed: CommittedSale
    doc: dict[str, Any]


class Till:
    """One till: rings sales through the engine and commits them to the ledger."""

    def __init__(
        self,
        config: Config,
        ledger: Ledger,
        *,
        clock: Clock | None = None,
        terminal: PaymentTerminal | None = None,
        fast_hash: bool = False,
    ) -> None:
        self.config = config
        self.ledger = ledger
        self.clock = clock or SystemClock()
        self.terminal = terminal
        self.catalog = Catalog(ledger.conn)
        self.currency = config.currency
        self.layouts = config.barcode_layouts()
        self.tz = ZoneInfo(config.store.timezone)
        self._policy: SalePolicy | None = None
        st = config.staff
        self.staff = StaffStore(
            ledger,
            policy=LockoutPolicy(
                free_attempts=st.free_attempts,
                first_lock=timedelta(seconds=st.first_lock_seconds),
                max_lock=timedelta(minutes=st.max_lock_minutes),
                approval_ttl=timedelta(seconds=st.approval_seconds),
            ),
            fast_hash=fast_hash,
        )
        self.shifts = Shifts(ledger, self.currency)
        self.customers = Customers(ledger)
        self.returns = Returns(ledger, self.currency, config.tax_policy(), store_device=config.store.device_id)
        from appliance.loyalty import Loyalty
        from appliance.stored_value import StoredValue

        # gift cards, store credit, loyalty; their ``remote`` is set when sync runs (docs/accounts.md)
        self.stored_value = StoredValue.from_config(ledger, config, clock=self.clock)
        self.loyalty = Loyalty.from_config(ledger, config, clock=self.clock)
        store = config.store
        self.store_info = StoreInfo(
            name=store.name, address=store.address, tax_id=store.tax_id, timezone=store.timezone,
            url_template=config.receipt.url_template, footer=config.receipt.footer,
        )  # fmt: skip

    def policy(self) -> SalePolicy:
        """The pricing policy; rebuilt after :meth:`reload_promotions`."""
        if self._policy is None:
            s = self.config.sale
            self._policy = SalePolicy(
                currency=self.currency,
                tax=self.config.tax_policy(),
                tz=self.tz,
                promotions=tuple(self.catalog.promotions(self.currency)),
                cash_rounding=self.config.currency_settings.cash_rounding,
                rounding_mode=self.config.currency_settings.rounding_mode,
                max_quantity=s.max_quantity,
                max_weight_kg=s.max_weight_kg,
                max_line_amount=s.max_line_amount,
                max_sale_amount=s.max_sale_amount,
            )
        return self._policy

    def reload_promotions(self) -> None:
        """Pick up promotions changed in the database (by import or sync)."""
        self._policy = None

    def new_sale(self, cashier: str | None) -> Sale:
        return Sale(policy=self.policy(), cashier=cashier)

    def parse(self, code: str) -> Scan:
        """Parse scanner input with the configured variable-measure layouts."""
        return parse_scan(code, today=self.clock.now().astimezone(self.tz).date(), layouts=self.layouts)

    def scan(self, sale: Sale, code: str, *, quantity: Decimal | None = None, allow_expired: bool = False) -> Item:
        """Scan a barcode into a sale; raises :class:`NotFound` for unknown codes."""
        scan = self.parse(code)
        item = self.catalog.lookup(scan)
        if scan.expired and not allow_expired:
            raise SaleError(f"{item.name}: batch {scan.batch or '?'} expired on {scan.expiry}; it must not be sold")
        info = ScanInfo(
            code=scan.raw,
            expiry=scan.expiry.isoformat() if scan.expiry else None,
            batch=scan.batch,
            expired=scan.expired,
        )
        qty = quantity
        if scan.weight_kg is not None:
            if quantity is not None:
                raise InputError("the label carries a weight; do not enter a quantity")
            if not item.weighed:
                raise InputError(f"{item.name} is sold by the unit, but its label carries a weight")
            qty = scan.weight_kg
        fixed = scan.embedded_price
        if fixed is not None and item.weighed and qty is None:
            qty = None  # price-embedded scale label: the price is the line amount
        sale.add_item(item, self.clock.now(), quantity=qty, fixed_amount=fixed, scan=info)
        return item

    def add_sku(self, sale: Sale, sku: str, *, quantity: Decimal | None = None) -> Item:
        item = self.catalog.by_sku(sku)
        sale.add_item(item, self.clock.now(), quantity=quantity)
        return item

    def pay_card(self, sale: Sale, amount: int | None = None) -> Tender:
        """Charge the card terminal for ``amount`` (default: all that is due)."""
        if self.terminal is None:
            raise SaleError("no payment terminal is configured")
        due = sale.totals().due
        if due <= 0:
            raise TenderError("the sale is already paid")
        amount = due if amount is None else amount
        result = self.terminal.authorize(amount, self.currency.code, sale.id)
        if not result.approved:
            raise PaymentDeclined(f"card declined: {result.message or 'no reason given'}")
        detail = {k: v for k, v in (("approval_code", result.approval_code), ("scheme", result.scheme)) if v}
        return sale.pay_electronic(TenderKind.CARD, result.amount, result.reference, detail)

    def pay_stored_value(self, sale: Sale, account: str, amount: int | None = None) -> Tender:
        """Pay with store credit or a gift card: through the hub, offline within limits, or from the local balance."""
        return self.stored_value.pay(sale, account, amount)

    def pay_points(self, sale: Sale, points: int | None = None) -> Tender:
        """Pay with the loyalty points of the sale's customer (default: as many as the due amount takes)."""
        return self.loyalty.pay(sale, points)

    def take_points_off(self, sale: Sale, points: int | None = None) -> PointsDiscount:
        """Redeem the customer's points as a discount on the sale (default: as many as its lines take)."""
        return self.loyalty.take_off(sale, points)

    def sell_gift_card(self, sale: Sale, amount: int, account: str | None = None) -> Line:
        """Add a gift card (new, or a top-up of ``account``) to the sale; it is credited when the sale completes."""
        return self.stored_value.card_line(sale, amount, account)

    def write_sale(self, tx: Tx, doc: dict[str, Any]) -> CommittedSale:
        """Write a completed sale in ``tx`` with its account movements (gift cards, points) checked and recorded."""
        self.stored_value.precheck(tx, doc)
        self.loyalty.precheck(tx, doc)
        committed = tx.write_sale(doc)
        self.stored_value.activate(tx, doc, committed.journal.seq)
        self.loyalty.record_sale(tx, doc, committed.journal.seq)
        self.stored_value.settle_sale(tx, doc, committed.journal.seq)  # pending authorisations: docs/accounts.md
        self.loyalty.settle_sale(tx, doc, committed.journal.seq)
        return committed

    def recover_accounts(self) -> list[str]:
        """At start-up: give back what the shop took for sales lost before they completed (docs/accounts.md)."""
        return self.stored_value.recover() + self.loyalty.recover()

    def _write_return(self, tx: Tx, doc: dict[str, Any], plan: ReturnPlan) -> int:
        """Write a return in ``tx`` and take back the loyalty points its lines had earned."""
        number = write_return(tx, doc)
        if plan.original is not None:
            refunded = {no: amount for no, (_, amount, _) in self.returns.refunded(plan.original["id"]).items()}
            self.loyalty.claw_back(tx, doc, plan.original, refunded, self._return_seq(doc["id"]))
        return number

    def complete(self, sale: Sale) -> Completed:
        """Complete and durably commit a sale (one transaction); needs an open shift."""
        shift = self.shifts.require_open()
        sale.shift_id = shift.id
        doc = sale.complete(self.clock.now())
        try:
            with self.ledger.transaction("committing sale") as tx:
                committed = self.write_sale(tx, doc)
        except TillboxError:
            sale.state, sale.completed_at = "open", None  # nothing was written: the sale can be fixed and retried
            raise
        doc = {**doc, "number": committed.number, "store": self.ledger.store_id, "device": self.ledger.device_id}
        log.debug("sale %d committed at journal %d", committed.number, committed.journal.seq)
        return Completed(committed, doc)

    def receipt(self, done: Completed, *, copy: int = 0) -> Receipt:
        """The receipt model of a committed sale."""
        entry = done.committed.journal
        return sale_receipt(done.doc, self.currency, self.store_info, journal_seq=entry.seq,
                            journal_hash=entry.hash, copy=copy)  # fmt: skip

    def reprint(self, reference: str, *, actor: str | None) -> Receipt:
        """A copy of a sale's receipt, marked COPY and counted in the journal."""
        doc = self.returns.find_sale(reference)
        if doc.get("device") != self.ledger.device_id:
            raise InputError("only receipts of this till can be reprinted here")
        row = self.ledger.conn.execute("SELECT journal_seq FROM sales WHERE id = ?", (doc["id"],)).fetchone()
        entry = self.ledger.entry(int(row[0]))
        assert entry is not None
        copies = self.ledger.conn.execute(
            "SELECT count(*) FROM journal WHERE type = 'receipt.reprinted' AND ref_seq = ?", (entry.seq,)
        ).fetchone()[0]
        self.ledger.append("receipt.reprinted", {"sale_id": doc["id"], "copy": copies + 1},
                           time=iso_utc(self.clock.now()), actor=actor, ref_seq=entry.seq)  # fmt: skip
        return sale_receipt(doc, self.currency, self.store_info, journal_seq=entry.seq, journal_hash=entry.hash,
                            copy=copies + 1)  # fmt: skip

    def refund(self, plan: ReturnPlan, approval: Approval, *, card_present: bool = False
               ) -> tuple[dict[str, Any], Receipt]:  # fmt: skip
        """Refund a priced return and commit it; receipted returns of another staff need REFUND rights.

        ``card_present``: the customer presents the card an online order was paid with.
        """
        now = self.clock.now()
        approval.check(Action.REFUND if plan.original is not None else Action.RETURN_NO_RECEIPT, now)
        shift = self.shifts.require_open()
        self._check_return_window(plan, now)
        refunds = self.returns.refund_tenders(plan, self.config.returns.refund_to, self.terminal,
                                              card_present=card_present)  # fmt: skip
        doc = self.returns.document(plan, refunds, approval, now, shift_id=shift.id)
        try:
            with self.ledger.transaction("committing return") as tx:
                number = self._write_return(tx, doc, plan)
        except TillboxError:
            self._undo_card_refunds(refunds)
            raise
        doc["number"] = number
        entry = self.ledger.entry(self._return_seq(doc["id"]))
        assert entry is not None
        given, taken = self.loyalty.return_points(doc["id"])
        return doc, return_receipt(doc, self.currency, self.store_info, journal_seq=entry.seq,
                                   journal_hash=entry.hash, points_given=given, points_taken=taken)  # fmt: skip

    def exchange(self, plan: ReturnPlan, sale: Sale, approval: Approval) -> tuple[dict[str, Any], Completed]:
        """A return and a new sale in one transaction; the return's value pays the new sale first.

        If the new sale costs more, the customer pays the rest with normal tenders before
        calling this; if it costs less, the difference is refunded.
        """
        now = self.clock.now()
        approval.check(Action.REFUND, now)
        shift = self.shifts.require_open()
        self._check_return_window(plan, now)
        credit = plan.total
        due = sale.totals().due
        applied = min(credit, due)
        if due - applied > 0:
            raise SaleError(f"{self.currency.plain(due - applied)} still to pay for the exchange")
        if applied > 0:
            sale.pay_electronic(TenderKind.EXCHANGE, applied, plan.id)
        refunds = self.returns.refund_tenders(plan, "cash" if plan.original is None else
                                              self.config.returns.refund_to, self.terminal,
                                              amount=credit - applied)  # fmt: skip
        sale.shift_id = shift.id
        sale_doc = sale.complete(now)
        ret = self.returns.document(plan, refunds, approval, now, shift_id=shift.id, exchange_sale_id=sale.id)
        ret["refunds"].insert(0, {"kind": "exchange", "amount": applied, "reference": sale.id})
        try:
            with self.ledger.transaction("committing exchange") as tx:
                ret["number"] = self._write_return(tx, ret, plan)
                committed = self.write_sale(tx, sale_doc)
        except TillboxError:
            self._undo_card_refunds(refunds)
            sale.state = "open"
            raise
        doc = {**sale_doc, "number": committed.number, "store": self.ledger.store_id, "device": self.ledger.device_id}
        return ret, Completed(committed, doc)

    def _check_return_window(self, plan: ReturnPlan, now: datetime) -> None:
        if plan.original is None:
            limit = self.config.returns.no_receipt_limit
            if plan.total > limit:
                raise SaleError(f"a return without receipt is limited to {self.currency.plain(limit)}")
            return
        sold = plan.original.get("completed_at")
        if sold and now - datetime.fromisoformat(sold) > timedelta(days=self.config.returns.max_days):
            raise SaleError(f"the sale is older than the {self.config.returns.max_days}-day return period")

    def _return_seq(self, return_id: str) -> int:
        row = self.ledger.conn.execute("SELECT journal_seq FROM returns WHERE id = ?", (return_id,)).fetchone()
        return int(row[0])

    def _undo_card_refunds(self, refunds: list[dict[str, Any]]) -> None:
        for r in refunds:
            if r["kind"] == "card" and self.terminal is not None and r.get("reference"):
                self.terminal.reverse(r["reference"])

    def cancel(self, sale: Sale, *, actor: str | None, reason: str, approver: str | None = None) -> None:
        """Abandon a sale: reverse card payments, then journal the void."""
        for tender in sale.tenders:
            if tender.kind is TenderKind.CARD and self.terminal is not None and tender.reference:
                result = self.terminal.reverse(tender.reference)
                if not result.approved:
                    raise PaymentDeclined(
                        f"the terminal refused to reverse card payment {tender.reference}: {result.message}; "
                        "the sale stays open"
                    )
        sale.cancel()
        doc = {**sale.to_doc(), "reason": reason}
        time = iso_utc(self.clock.now())
        self.ledger.append(
            "sale.voided", doc, time=time, actor=actor, approver=approver,
            events=[NewEvent("tillbox.sale.voided", doc, subject=sale.id)],
        )  # fmt: skip
        self.stored_value.reverse(sale, actor=actor)  # what the hub took is given back (docs/accounts.md)
        self.loyalty.reverse(sale, actor=actor)

    def suspend(self, sale: Sale) -> None:
        """Park a sale durably; it can be resumed on this till after a restart."""
        state = sale.suspend()
        time = iso_utc(self.clock.now())
        with self.ledger.transaction("suspending sale") as tx:
            tx.journal("sale.suspended", state, time=time, actor=sale.cashier)
            tx.conn.execute(
                "INSERT INTO suspended(id, cashier, time, body) VALUES (?, ?, ?, ?)",
                (sale.id, sale.cashier, time, tx.entries[-1].payload),
            )
            for holds in (self.stored_value.holds, self.loyalty.holds):  # unpaid: nothing stays taken at the shop
                holds.finish(tx, sale.id, (), time=time, actor=sale.cashier, reason="void")
        sale.state = "cancelled"

    def suspended(self) -> list[tuple[str, str | None, str]]:
        """Parked sales: (id, cashier, time)."""
        rows = self.ledger.conn.execute("SELECT id, cashier, time FROM suspended ORDER BY time").fetchall()
        return [(str(r[0]), r[1], str(r[2])) for r in rows]

    def resume(self, sale_id: str, *, cashier: str | None) -> Sale:
        """Bring a parked sale back, repriced with today's promotions."""
        import json

        row = self.ledger.conn.execute("SELECT body FROM suspended WHERE id = ?", (sale_id,)).fetchone()
        if row is None:
            raise InputError(f"no suspended sale {sale_id}")
        sale = Sale.resume(json.loads(row[0]), self.policy(), self.clock.now())
        time = iso_utc(self.clock.now())
        with self.ledger.transaction("resuming sale") as tx:
            tx.journal("sale.resumed", {"id": sale_id}, time=time, actor=cashier)
            tx.conn.execute("DELETE FROM suspended WHERE id = ?", (sale_id,))
        if cashier:
            sale.cashier = cashier
        return sale


def scripted_sale(
    till: Till, codes: Sequence[str], payments: Sequence[tuple[str, int | None]], *, cashier: str | None
) -> Completed:
    """Ring a whole sale from scanned codes and payments, as ``tillbox sale`` does."""
    sale = till.new_sale(cashier)
    for code in codes:
        till.scan(sale, code)
    try:
        for kind, amount in payments:
            if kind == "cash":
                sale.pay_cash(sale.cash_due() if amount is None else amount)
            elif kind == "card":
                till.pay_card(sale, amount)
            else:
                raise InputError(f"unknown tender {kind!r}; use cash or card")
        return till.complete(sale)
    except TillboxError as exc:
        if sale.tenders and sale.state == "open":
            till.cancel(sale, actor=cashier, reason=f"scripted sale failed: {exc}")
        raise
