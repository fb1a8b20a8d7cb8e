"""Returns and exchanges.

A receipted return refunds lines of an original sale (from this till, another till
of the store, or an online order delivered by sync) at the price actually paid:
discounts are pro-rated with cumulative floor division, so the refunds of a line
add up to exactly what was paid for it and never more. The ``refunds`` table
(append-only) is checked inside the writing transaction, so a line can never be
refunded twice. A no-receipt return needs a supervisor's approval and a reason.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_FLOOR, Decimal
from typing import Any, Literal

from appliance.catalog import Catalog
from appliance.clock import iso_utc
from appliance.errors import DeviceUnavailable, InputError, NotFound, SaleError
from appliance.ids import uuid7
from appliance.ledger import Ledger, NewEvent, Tx
from appliance.money import Currency
from appliance.staff import Action, Approval
from appliance.tax import TaxPolicy
from appliance.tenders import PaymentTerminal, TenderKind

Disposition = Literal["restock", "damaged"]
RefundPolicy = Literal["original", "cash", "store_credit"]
#: The tender of an online order's payment (sync/lookup.py), refunded by :meth:`Returns._online_refund`.
ONLINE_TENDER = "online"

#: Reason codes a no-receipt return must give.
NO_RECEIPT_REASONS = ("gift", "lost_receipt", "wrong_item", "defective", "other")

#: Asks the shop for a sale this till does not have and stores it in ``remote_sales``
#: (see ``sync.service.SyncService.lookup_sale``); raises NotFound or DeviceUnavailable.
SaleLookup = Callable[[str], Mapping[str, Any]]


def sale_reference(device: str, number: int) -> str:
    """The text in a receipt's barcode/QR: finds the sale from any till of the store."""
    return f"TB-{device}-{number:06d}"


def parse_reference(text: str) -> tuple[str, int] | None:
    """(device, number) of a receipt reference, or None when it is not one."""
    if not text.startswith("TB-"):
        return None
    device, _, number = text[3:].rpartition("-")
    if not device or not number.isdigit():
        return None
    return device, int(number)


@dataclass(frozen=True)
class ReturnRequest:
    """One line to return: the original line number (receipted) or a SKU (no receipt)."""

    qty: Decimal
    line: int | None = None
    sku: str | None = None
    disposition: Disposition = "restock"


@dataclass
class ReturnPlan:
    """A priced return, ready to be refunded and committed."""

    original: dict[str, Any] | None
    lines: list[dict[str, Any]]
    reason: str
    id: str = field(default_factory=uuid7)
    #: Points of the original's points discount given back with these lines (appliance.loyalty).
    points_back: int = 0

    @property
    def total(self) -> int:
        return sum(int(ln["amount"]) for ln in self.lines)

    @property
    def tax(self) -> int:
        return sum(int(ln["tax"]) for ln in self.lines)


def _cum(total: int, done: Decimal, qty: Decimal) -> int:
    """Cumulative share of ``total`` for ``done`` of ``qty`` units, rounded down."""
    return int((Decimal(total) * done / qty).to_integral_value(rounding=ROUND_FLOOR))


class Returns:
    """Finds original sales, prices returns and writes them."""

    def __init__(self, ledger: Ledger, currency: Currency, tax: TaxPolicy, *, store_device: str) -> None:
        self.ledger = ledger
        self.currency = currency
        self.tax = tax
        self.device = store_device
        self.lookup: SaleLookup | None = None  # set when sync runs: sales of other tills and online orders

    # -- finding the original --------------------------------------------------------------------

    def find_sale(self, reference: str) -> dict[str, Any]:
        """An original sale by receipt reference, sale id, or local receipt number.

        A sale that is not this till's is asked from the shop through :attr:`lookup`
        (fresh, so refunds made at other tills count); when the shop cannot be
        reached, a copy received earlier is used, else :class:`DeviceUnavailable`.
        """
        conn = self.ledger.conn
        ref = reference.strip()
        parsed = parse_reference(ref)
        row = None
        if (parsed and parsed[0] == self.device) or ref.isdigit():
            number = parsed[1] if parsed else int(ref)
            row = conn.execute(
                "SELECT j.payload FROM sales s JOIN journal j ON j.seq = s.journal_seq WHERE s.number = ?", (number,)
            ).fetchone()
        elif parsed is None:
            row = conn.execute(
                "SELECT j.payload FROM sales s JOIN journal j ON j.seq = s.journal_seq WHERE s.id = ?", (ref,)
            ).fetchone()
        if row is None:  # another till of the store, or an online order, as delivered by sync
            key = sale_reference(*parsed) if parsed else ref
            if self.lookup is not None and not (parsed and parsed[0] == self.device):
                try:
                    self.lookup(key)
                except NotFound:
                    raise NotFound(f"no sale found for receipt {ref}, on this till or at the shop") from None
                except DeviceUnavailable as exc:
                    if self._remote_row(key) is None:
                        raise DeviceUnavailable(f"sale {ref} is not on this till and {exc}") from None
            row = self._remote_row(key)
        if row is None:
            raise NotFound(f"no sale found for receipt {ref}")
        doc: dict[str, Any] = json.loads(row[0])
        return doc

    def _remote_row(self, key: str) -> Any:
        return self.ledger.conn.execute(
            "SELECT body FROM remote_sales WHERE id = ? OR reference = ? ORDER BY received_at DESC", (key, key)
        ).fetchone()

    def refunded(self, sale_id: str) -> dict[int, tuple[Decimal, int, int]]:
        """Per original line: quantity, amount and tax already refunded (here, and at other tills as the shop said)."""
        out: dict[int, tuple[Decimal, int, int]] = {}
        rows = list(self.ledger.conn.execute("SELECT line_no, qty, amount, tax FROM refunds WHERE sale_id = ?",
                                             (sale_id,)))  # fmt: skip
        rows += [(r["line"], r["qty"], r["amount"], r["tax"]) for r in _refunded_elsewhere(self.ledger.conn, sale_id)]
        for line_no, qty, amount, tax in rows:
            q, a, t = out.get(int(line_no), (Decimal(0), 0, 0))
            out[int(line_no)] = (q + Decimal(qty), a + int(amount), t + int(tax))
        return out

    # -- pricing ---------------------------------------------------------------------------------

    def plan_receipted(self, original: Mapping[str, Any], requests: Sequence[ReturnRequest], reason: str = ""
                       ) -> ReturnPlan:  # fmt: skip
        """Price a return against its original sale."""
        if not requests:
            raise InputError("choose at least one line to return")
        done = self.refunded(original["id"])
        by_no = {ln["line"]: ln for ln in original["lines"]}
        lines = []
        seen: set[int] = set()
        for req in requests:
            if req.line is None or req.line not in by_no:
                raise NotFound(f"sale {original.get('number', original['id'])} has no line {req.line}")
            if req.line in seen:
                raise InputError(f"line {req.line} is listed twice")
            seen.add(req.line)
            ln = by_no[req.line]
            if ln["voided"]:
                raise SaleError(f"line {req.line} was voided; there is nothing to refund")
            if ln.get("department") == "gift_card":  # appliance.stored_value.GIFT_CARD_DEPARTMENT
                raise SaleError(f"line {req.line} is a gift card; its value stays on the card")
            sold = Decimal(ln["qty"])
            qty_done, amount_done, tax_done = done.get(req.line, (Decimal(0), 0, 0))
            if req.qty <= 0:
                raise InputError("a return quantity must be positive")
            if qty_done + req.qty > sold:
                left = sold - qty_done
                raise SaleError(
                    f"line {req.line} ({ln['name']}): {req.qty} to return but only {left} of {sold} not yet refunded"
                )
            amount = _cum(ln["total"], qty_done + req.qty, sold) - amount_done
            tax = _cum(ln["tax"], qty_done + req.qty, sold) - tax_done
            if qty_done + req.qty == sold:  # the last units take the remainder: refunds sum exactly to paid
                amount, tax = ln["total"] - amount_done, ln["tax"] - tax_done
            rates = ln.get("tax_rates") or {}
            rate_tax = _split(tax, rates)
            lines.append({
                "line": req.line, "sku": ln["sku"], "name": ln["name"], "qty": str(req.qty), "unit": ln["unit"],
                "amount": amount, "tax": tax, "net": amount - tax, "tax_rates": rate_tax, "tax_class": ln["tax_class"],
                "disposition": req.disposition,
            })  # fmt: skip
        return ReturnPlan(dict(original), lines, reason, points_back=_points_back(original, done, lines))

    def plan_no_receipt(self, catalog: Catalog, requests: Sequence[ReturnRequest], reason: str,
                        approval: Approval, now: datetime) -> ReturnPlan:  # fmt: skip
        """Price a return without a receipt at today's catalog price (needs approval and a reason code)."""
        approval.check(Action.RETURN_NO_RECEIPT, now)
        if reason not in NO_RECEIPT_REASONS:
            raise InputError(f"a no-receipt return needs a reason code: {', '.join(NO_RECEIPT_REASONS)}")
        from appliance.tax import TaxableLine, compute_tax

        lines = []
        for i, req in enumerate(requests, 1):
            if req.sku is None:
                raise InputError("a no-receipt return names items by SKU or barcode")
            item = catalog.by_sku(req.sku)
            if req.qty <= 0 or (not item.weighed and req.qty != req.qty.to_integral_value()):
                raise InputError(f"bad return quantity {req.qty} for {item.name}")
            amount = int((req.qty * item.price).to_integral_value())
            taxed = compute_tax([TaxableLine(str(i), item.tax_class, amount, req.qty, item.weighed)], self.tax)
            lt = taxed.lines[str(i)]
            gross = lt.gross
            lines.append({
                "line": None, "sku": item.sku, "name": item.name, "qty": str(req.qty), "unit": item.unit,
                "amount": gross, "tax": lt.tax, "net": lt.net,
                "tax_rates": {k: v for k, v in sorted(lt.by_rate.items()) if v}, "tax_class": item.tax_class,
                "disposition": req.disposition,
            })  # fmt: skip
        return ReturnPlan(None, lines, reason)

    # -- refunding -------------------------------------------------------------------------------

    def refund_tenders(self, plan: ReturnPlan, policy: RefundPolicy, terminal: PaymentTerminal | None,
                       *, amount: int | None = None, card_present: bool = False) -> list[dict[str, Any]]:  # fmt: skip
        """Pay ``amount`` (default: the plan's total) back, to the original tenders where possible.

        Card refunds go through the terminal; what cannot go back to a card goes to cash. What
        was paid online (an online order) goes back to the customer's card through the terminal
        when ``card_present``, and otherwise to new store credit, never to cash.
        """
        due = plan.total if amount is None else amount
        refunds: list[dict[str, Any]] = []
        if due <= 0:
            return refunds
        if policy == "store_credit":
            from appliance.stored_value import new_account

            account = new_account(TenderKind.STORE_CREDIT)
            return [{"kind": "store_credit", "amount": due, "reference": account}]
        if policy == "original" and plan.original is not None:
            prior = self._card_refunded(plan.original["id"])
            for t in plan.original["tenders"]:
                kind = t["kind"]
                if due <= 0 or kind not in (TenderKind.CARD, TenderKind.STORE_CREDIT, TenderKind.GIFT_CARD,
                                            TenderKind.LOYALTY, ONLINE_TENDER):  # fmt: skip
                    continue
                room = t["amount"] - prior.get(t.get("reference") or "", 0)
                part = min(room, due)
                if part <= 0:
                    continue
                if kind == ONLINE_TENDER:
                    refunds.append(self._online_refund(t, part, terminal if card_present else None))
                    due -= part
                    continue
                if kind == TenderKind.LOYALTY:  # back onto the customer's points (else cash, below)
                    from appliance.loyalty import points_for_refund

                    points = points_for_refund(t, part)
                    if points > 0:
                        refunds.append({"kind": kind, "amount": part, "reference": t.get("reference"),
                                        "original_reference": t.get("reference"), "points": points})  # fmt: skip
                        due -= part
                    continue
                if kind != TenderKind.CARD:  # back onto the same store credit or gift card account
                    refunds.append({"kind": kind, "amount": part, "reference": t.get("reference"),
                                    "original_reference": t.get("reference")})  # fmt: skip
                    due -= part
                    continue
                if terminal is None:
                    continue
                result = terminal.refund(part, self.currency.code, t.get("reference") or plan.id)
                if not result.approved:
                    continue  # falls back to cash below
                refunds.append({"kind": "card", "amount": part, "reference": result.reference,
                                "original_reference": t.get("reference")})  # fmt: skip
                due -= part
        if due > 0:
            refunds.append({"kind": "cash", "amount": due, "reference": None})
        return refunds

    def _online_refund(self, tender: Mapping[str, Any], amount: int, terminal: PaymentTerminal | None
                       ) -> dict[str, Any]:  # fmt: skip
        """An online payment goes back to the card presented at the terminal, else to new store credit."""
        original = tender.get("reference")
        if terminal is not None:
            result = terminal.refund(amount, self.currency.code, original or "online")
            if result.approved:
                return {"kind": "card", "amount": amount, "reference": result.reference, "original_reference": original}
        from appliance.stored_value import new_account

        return {"kind": "store_credit", "amount": amount, "reference": new_account(TenderKind.STORE_CREDIT),
                "original_reference": original}  # fmt: skip

    def _card_refunded(self, sale_id: str) -> dict[str, int]:
        out: dict[str, int] = {}
        rows = self.ledger.conn.execute(
            "SELECT j.payload FROM returns r JOIN journal j ON j.seq = r.journal_seq WHERE r.original_sale_id = ?",
            (sale_id,),
        )
        for (payload,) in rows:
            for t in json.loads(payload)["refunds"]:
                if t.get("original_reference"):  # back onto an original tender (card, account, online payment)
                    out[t["original_reference"]] = out.get(t["original_reference"], 0) + t["amount"]
        return out

    # -- writing ---------------------------------------------------------------------------------

    def document(self, plan: ReturnPlan, refunds: list[dict[str, Any]], approval: Approval, now: datetime,
                 *, shift_id: int | None, tenders: Sequence[dict[str, Any]] = (), exchange_sale_id: str | None = None
                 ) -> dict[str, Any]:  # fmt: skip
        """The return.completed journal payload."""
        taxes: dict[str, dict[str, Any]] = {}
        for ln in plan.lines:
            for code, amount in ln["tax_rates"].items():
                rate = self.tax.rates.get(code)
                slot = taxes.setdefault(
                    code,
                    {
                        "code": code,
                        "name": rate.name if rate else code,
                        "percent": str(rate.percent) if rate else "?",
                        "taxable": 0,
                        "tax": 0,
                    },
                )
                slot["taxable"] += ln["net"]
                slot["tax"] += amount
        original = plan.original
        doc: dict[str, Any] = {
            "id": plan.id,
            "original_sale_id": original["id"] if original else None,
            "original_number": original.get("number") if original else None,
            "original_device": original.get("device") if original else None,
            "receipted": original is not None,
            "reason": plan.reason,
            "cashier": approval.actor,
            "approver": approval.approver,
            "shift_id": shift_id,
            "completed_at": iso_utc(now),
            "currency": self.currency.code,
            "lines": plan.lines,
            "taxes": [taxes[k] for k in sorted(taxes)],
            "total": plan.total,
            "tax": plan.tax,
            "net": plan.total - plan.tax,
            "refunds": refunds,
            "tenders": list(tenders),
            "exchange_sale_id": exchange_sale_id,
        }  # fmt: skip
        if plan.points_back > 0 and original is not None:  # a points discount's share: back onto the customer
            doc["points_back"] = {"customer": original["points_discount"]["customer"], "points": plan.points_back}
        return doc


def _points_back(original: Mapping[str, Any], done: Mapping[int, tuple[Decimal, int, int]],
                 lines: Sequence[Mapping[str, Any]]) -> int:  # fmt: skip
    """Points of the original's points discount that come back with ``lines`` (0 without one)."""
    if not original.get("points_discount"):
        return 0
    from appliance.loyalty import discount_points_back

    before = {no: qty for no, (qty, _, _) in done.items()}
    after = dict(before)
    for ln in lines:
        after[int(ln["line"])] = after.get(int(ln["line"]), Decimal(0)) + Decimal(ln["qty"])
    return discount_points_back(original, before, after)


def _split(tax: int, rates: Mapping[str, int]) -> dict[str, int]:
    """Spread a refunded tax amount over the rates of the original line."""
    from appliance.promotions import allocate

    if not rates:
        return {}
    shares = allocate(abs(tax), {k: abs(v) for k, v in rates.items()})
    sign = -1 if tax < 0 else 1
    return {k: sign * shares.get(k, 0) for k in sorted(rates)}


def write_return(tx: Tx, doc: dict[str, Any]) -> int:
    """Write a return inside a ledger transaction; refuses any line already refunded. Returns its number."""
    conn = tx.conn
    original = doc["original_sale_id"]
    if original is not None:
        for ln in doc["lines"]:
            done = conn.execute(
                "SELECT qty FROM refunds WHERE sale_id = ? AND line_no = ?", (original, ln["line"])
            ).fetchall()
            already = sum((Decimal(q) for (q,) in done), Decimal(0))
            limit = _sold_qty(conn, original, ln["line"])
            if limit is not None and Decimal(ln["qty"]) + already > limit:
                raise SaleError(f"line {ln['line']} of sale {doc['original_number']} is already refunded")
    number = conn.execute("SELECT COALESCE(MAX(number), 0) + 1 FROM returns").fetchone()[0]
    doc = {**doc, "number": number}
    time = doc["completed_at"]
    entry = tx.journal("return.completed", doc, time=time, actor=doc["cashier"], approver=doc["approver"])
    conn.execute(
        "INSERT INTO returns(id, number, journal_seq, original_sale_id, shift_id, cashier, approver, completed_at, "
        "total, tax) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (doc["id"], number, entry.seq, original, doc["shift_id"], doc["cashier"], doc["approver"], time,
         doc["total"], doc["tax"]),
    )  # fmt: skip
    moves = []
    for i, ln in enumerate(doc["lines"], 1):
        conn.execute(
            "INSERT INTO refunds(return_id, sale_id, line_no, qty, amount, tax, disposition) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (doc["id"], original or doc["id"], ln["line"] if ln["line"] is not None else -i, ln["qty"], ln["amount"],
             ln["tax"], ln["disposition"]),
        )  # fmt: skip
        qty = Decimal(ln["qty"])
        if ln["disposition"] == "restock":
            level = tx.move_stock(ln["sku"], qty, reason="return", journal_seq=entry.seq)
            moves.append({"sku": ln["sku"], "delta": str(qty), "level": str(level)})
        else:
            conn.execute(
                "INSERT INTO stock_damaged(sku, level_milli) VALUES (?, ?) "
                "ON CONFLICT(sku) DO UPDATE SET level_milli = level_milli + excluded.level_milli",
                (ln["sku"], int(qty * 1000)),
            )
    for r in doc["refunds"]:
        if r["kind"] in ("store_credit", "gift_card"):  # credited in the same transaction as the return
            from appliance.stored_value import move

            move(tx, r["kind"], str(r["reference"]), int(r["amount"]), time=time, reason="return", ref=doc["id"],
                 journal_seq=entry.seq, currency=doc["currency"], actor=doc["cashier"],
                 op="refund" if r.get("original_reference") == r["reference"] else "issue")  # fmt: skip
        elif r["kind"] == "loyalty":
            from appliance.loyalty import refund_points

            refund_points(tx, r, time=time, ref=doc["id"], journal_seq=entry.seq, actor=doc["cashier"])
    if doc.get("points_back"):  # the returned lines' share of a points discount
        from appliance.loyalty import refund_points

        back = doc["points_back"]
        refund_points(tx, {"reference": back["customer"], "points": back["points"]}, time=time, ref=doc["id"],
                      journal_seq=entry.seq, actor=doc["cashier"])  # fmt: skip
    tx.emit(NewEvent("tillbox.return.completed", doc, subject=doc["id"]), time=time, journal_seq=entry.seq)
    if moves:
        tx.emit(NewEvent("tillbox.stock.moved", {"reason": "return", "return_id": doc["id"], "moves": moves}),
                time=time, journal_seq=entry.seq)  # fmt: skip
    return int(number)


def _sold_qty(conn: Any, sale_id: str, line_no: int) -> Decimal | None:
    row = conn.execute("SELECT qty FROM sale_lines WHERE sale_id = ? AND line_no = ?", (sale_id, line_no)).fetchone()
    if row is not None:
        return Decimal(row[0])
    remote = conn.execute("SELECT body FROM remote_sales WHERE id = ?", (sale_id,)).fetchone()
    if remote is None:
        return None
    elsewhere = sum((Decimal(r["qty"]) for r in _refunded_elsewhere(conn, sale_id) if r["line"] == line_no),
                    Decimal(0))  # fmt: skip
    for ln in json.loads(remote[0])["lines"]:
        if ln["line"] == line_no:
            return Decimal(ln["qty"]) - elsewhere
    return None


def _refunded_elsewhere(conn: Any, sale_id: str) -> list[dict[str, Any]]:
    """Refunds of a sale made at other tills, as the shop reported them with the sale."""
    row = conn.execute("SELECT body FROM remote_sales WHERE id = ?", (sale_id,)).fetchone()
    return list(json.loads(row[0]).get("refunded_elsewhere", [])) if row is not None else []
