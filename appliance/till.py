"""The till service: config, catalog, sale engine, payment and ledger wired together.

The sale engine is pure; this layer does the lookups and the writes. Everything
here runs on one thread (the daemon's event loop); blocking device calls belong
to the drivers, which hand results back.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from appliance.barcode import Scan, parse_scan
from appliance.catalog import Catalog, Item
from appliance.clock import Clock, SystemClock, iso_utc
from appliance.config import Config
from appliance.errors import InputError, PaymentDeclined, SaleError, TillboxError
from appliance.ledger import CommittedSale, Ledger, NewEvent
from appliance.sale import Sale, SalePolicy, ScanInfo
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

    def scan(
        self, sale: Sale, code: str, *, quantity: Decimal | None = None, allow_expired: bool = False
    ) -> Item:
        """Scan a barcode into a sale; raises :class:`NotFound` for unknown codes."""
        scan = self.parse(code)
        item = self.catalog.lookup(scan)
        if scan.expired and not allow_expired:
            raise SaleError(
                f"{item.name}: batch {scan.batch or '?'} expired on {scan.expiry}; it must not be sold"
            )
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
        amount = due if amount is None else amount
        result = self.terminal.authorize(amount, self.currency.code, sale.id)
        if not result.approved:
            raise PaymentDeclined(f"card declined: {result.message or 'no reason given'}")
        detail = {k: v for k, v in (("approval_code", result.approval_code), ("scheme", result.scheme)) if v}
        return sale.pay_electronic(TenderKind.CARD, result.amount, result.reference, detail)

    def complete(self, sale: Sale) -> Completed:
        """Complete and durably commit a sale (one transaction)."""
        doc = sale.complete(self.clock.now())
        committed = self.ledger.commit_sale(doc)
        doc = {
            **doc,
            "number": committed.number,
            "store": self.ledger.store_id,
            "device": self.ledger.device_id,
        }
        log.debug("sale %d committed at journal %d", committed.number, committed.journal.seq)
        return Completed(committed, doc)

    def cancel(self, sale: Sale, *, actor: str | None, reason: str) -> None:
        """Abandon a sale: reverse card payments, then journal the void."""
        for tender in sale.tenders:
            if tender.kind is TenderKind.CARD and self.terminal is not None and tender.reference:
                self.terminal.reverse(tender.reference)
        sale.cancel()
        doc = {**sale.to_doc(), "reason": reason}
        time = iso_utc(self.clock.now())
        self.ledger.append(
            "sale.voided", doc, time=time, actor=actor,
            events=[NewEvent("tillbox.sale.voided", doc, subject=sale.id)],
        )  # fmt: skip

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
