"""Shifts and cash: float, paid-in/out, safe drops, no-sale opens, X and Z reports.

Reports are computed from the journal entries of the shift, so a Z report always
equals the sum of what was journaled. A Z report is itself a journal entry
(``shift.closed``) and takes the next Z number in the same transaction: Z numbers
never repeat or skip.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from appliance.clock import iso_utc
from appliance.errors import InputError, SaleError
from appliance.ledger import Ledger, NewEvent
from appliance.money import Currency
from appliance.staff import Action, Approval

CashKind = Literal["paid_in", "paid_out", "safe_drop"]
CASH_KINDS: tuple[CashKind, ...] = ("paid_in", "paid_out", "safe_drop")


@dataclass(frozen=True)
class Shift:
    """An open or closed shift."""

    id: int
    opened_at: str
    opened_by: str
    float: int
    open_seq: int
    closed_at: str | None = None
    z_number: int | None = None


def _shift(row: Any) -> Shift:
    return Shift(int(row[0]), str(row[1]), str(row[2]), int(row[3]), int(row[4]), row[5], row[6])


class Shifts:
    """Shift lifecycle on one till."""

    def __init__(self, ledger: Ledger, currency: Currency) -> None:
        self.ledger = ledger
        self.currency = currency

    def current(self) -> Shift | None:
        row = self.ledger.conn.execute(
            "SELECT id, opened_at, opened_by, float, open_seq, closed_at, z_number FROM shifts WHERE closed_at IS NULL"
        ).fetchone()
        return _shift(row) if row else None

    def require_open(self) -> Shift:
        shift = self.current()
        if shift is None:
            raise SaleError("no shift is open; open one first (tillbox shift open --float AMOUNT)")
        return shift

    def open(self, float_amount: int, approval: Approval, now: datetime) -> Shift:
        """Open a shift with a counted float."""
        approval.check(Action.OPEN_SHIFT, now)
        if float_amount < 0:
            raise InputError("the float cannot be negative")
        if self.current() is not None:
            raise SaleError("a shift is already open; close it with a Z report first")
        time = iso_utc(now)
        with self.ledger.transaction("opening shift") as tx:
            shift_id = tx.conn.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM shifts").fetchone()[0]
            data = {"shift_id": shift_id, "float": float_amount, "currency": self.currency.code}
            entry = tx.journal("shift.opened", data, time=time, actor=approval.actor, approver=approval.approver)
            tx.emit(NewEvent("tillbox.shift.opened", {**data, "by": approval.actor}), time=time,
                    journal_seq=entry.seq)  # fmt: skip
            tx.conn.execute(
                "INSERT INTO shifts(id, opened_at, opened_by, float, open_seq) VALUES (?, ?, ?, ?, ?)",
                (shift_id, time, approval.actor, float_amount, entry.seq),
            )
        shift = self.current()
        assert shift is not None
        return shift

    def cash(self, kind: CashKind, amount: int, reason: str, approval: Approval, now: datetime) -> None:
        """Record a paid-in, paid-out or safe drop, with its reason."""
        approval.check(Action.CASH_IN_OUT, now)
        shift = self.require_open()
        if kind not in CASH_KINDS:
            raise InputError(f"cash movement must be one of {', '.join(CASH_KINDS)}")
        if amount <= 0:
            raise InputError("a cash movement amount must be positive")
        if not reason.strip():
            raise InputError("a cash movement needs a reason")
        data = {"shift_id": shift.id, "kind": kind, "amount": amount, "reason": reason.strip()}
        time = iso_utc(now)
        self.ledger.append(
            "cash.moved", data, time=time, actor=approval.actor, approver=approval.approver,
            events=[NewEvent("tillbox.cash.moved", data), NewEvent("tillbox.drawer.opened",
                                                                   {"reason": kind, "by": approval.actor})],
        )  # fmt: skip

    def no_sale(self, reason: str, approval: Approval, now: datetime) -> None:
        """Record a drawer opened without a sale."""
        approval.check(Action.NO_SALE, now)
        shift = self.require_open()
        if not reason.strip():
            raise InputError("opening the drawer without a sale needs a reason")
        data = {"shift_id": shift.id, "reason": reason.strip(), "by": approval.actor}
        self.ledger.append("drawer.opened", data, time=iso_utc(now), actor=approval.actor,
                           approver=approval.approver, events=[NewEvent("tillbox.drawer.opened", data)])  # fmt: skip

    # -- reports ---------------------------------------------------------------------------------

    def report(self, shift: Shift | None = None, *, counted: Mapping[int, int] | int | None = None) -> dict[str, Any]:
        """The X report of a shift (default: the open one), built from its journal entries."""
        shift = shift or self.require_open()
        end = self.ledger.conn.execute("SELECT close_seq FROM shifts WHERE id = ?", (shift.id,)).fetchone()
        last = end[0] if end and end[0] is not None else self.ledger.head()[0]
        rows = self.ledger.conn.execute(
            "SELECT type, payload FROM journal WHERE seq > ? AND seq <= ? AND type IN "
            "('sale.completed', 'return.completed', 'sale.voided', 'cash.moved', 'drawer.opened') ORDER BY seq",
            (shift.open_seq, last),
        )
        return build_report(shift, ((str(t), json.loads(p)) for t, p in rows), counted, self.currency)

    def close(self, approval: Approval, now: datetime, *, counted: Mapping[int, int] | int | None = None
              ) -> dict[str, Any]:  # fmt: skip
        """Close the open shift with a Z report; returns the report (with its ``z_number``)."""
        approval.check(Action.CLOSE_SHIFT, now)
        shift = self.require_open()
        time = iso_utc(now)
        with self.ledger.transaction("closing shift") as tx:
            z_number = tx.conn.execute("SELECT COALESCE(MAX(z_number), 0) + 1 FROM shifts").fetchone()[0]
            report = self.report(shift, counted=counted)
            report.update({"kind": "Z", "z_number": z_number, "closed_at": time, "closed_by": approval.actor})
            entry = tx.journal("shift.closed", report, time=time, actor=approval.actor, approver=approval.approver)
            tx.emit(NewEvent("tillbox.shift.closed", report), time=time, journal_seq=entry.seq)
            tx.conn.execute(
                "UPDATE shifts SET closed_at = ?, closed_by = ?, z_number = ?, close_seq = ? WHERE id = ?",
                (time, approval.actor, z_number, entry.seq, shift.id),
            )
        return report


def parse_count(currency: Currency, items: list[str]) -> dict[int, int]:
    """``["20.00=3", "0.50=4"]`` -> {2000: 3, 50: 4}: a cash count by denomination."""
    counts: dict[int, int] = {}
    for item in items:
        denom, sep, n = item.partition("=")
        if not sep or not n.strip().isdigit():
            raise InputError(f"cash count {item!r} must look like DENOMINATION=COUNT, e.g. 20.00=3")
        value = currency.to_minor(denom)
        if value <= 0:
            raise InputError(f"denomination {denom} must be positive")
        counts[value] = counts.get(value, 0) + int(n)
    return counts


def build_report(
    shift: Shift,
    entries: Any,
    counted: Mapping[int, int] | int | None,
    currency: Currency,
) -> dict[str, Any]:
    """Aggregate journal entries of a shift into an X report."""
    sales = returns = voided_sales = voided_lines = overrides = no_sales = 0
    sales_total = returns_total = discounts = voided_lines_amount = voided_sales_total = 0
    net = tax_total = points_discounts = 0
    durations: list[int] = []
    taxes: dict[str, dict[str, Any]] = {}
    tenders: dict[str, int] = {}
    cash_moves = dict.fromkeys(CASH_KINDS, 0)
    cashiers: dict[str, dict[str, int]] = {}
    cash_in_drawer = shift.float

    def add_taxes(rates: list[dict[str, Any]], sign: int) -> None:
        for r in rates:
            slot = taxes.setdefault(r["code"], {"code": r["code"], "name": r["name"], "percent": r["percent"],
                                                "taxable": 0, "tax": 0})  # fmt: skip
            slot["taxable"] += sign * r["taxable"]
            slot["tax"] += sign * r["tax"]

    for type_, doc in entries:
        if type_ == "sale.completed":
            sales += 1
            sales_total += doc["total"]
            discounts += doc["discount"]
            points_discounts += (doc.get("points_discount") or {}).get("amount", 0)
            net += doc["net"]
            tax_total += doc["tax"]
            add_taxes(doc["taxes"], 1)
            for t in doc["tenders"]:
                tenders[t["kind"]] = tenders.get(t["kind"], 0) + t["amount"]
                if t["kind"] == "cash":
                    cash_in_drawer += t["amount"]
            for ln in doc["lines"]:
                if ln["voided"]:
                    voided_lines += 1
                    voided_lines_amount += ln["amount"]
                if "override" in ln:
                    overrides += 1
            who = cashiers.setdefault(doc.get("cashier") or "?", {"sales": 0, "total": 0})
            who["sales"] += 1
            who["total"] += doc["total"]
            if doc.get("duration_ms") is not None:
                durations.append(doc["duration_ms"])
        elif type_ == "return.completed":
            returns += 1
            returns_total += doc["total"]
            net -= doc["net"]
            tax_total -= doc["tax"]
            add_taxes(doc["taxes"], -1)
            for t in doc["refunds"]:
                tenders[t["kind"]] = tenders.get(t["kind"], 0) - t["amount"]
                if t["kind"] == "cash":
                    cash_in_drawer -= t["amount"]
            for t in doc.get("tenders", []):  # an exchange's extra payment
                tenders[t["kind"]] = tenders.get(t["kind"], 0) + t["amount"]
                if t["kind"] == "cash":
                    cash_in_drawer += t["amount"]
        elif type_ == "sale.voided":
            voided_sales += 1
            voided_sales_total += doc["total"]
        elif type_ == "cash.moved":
            cash_moves[doc["kind"]] += doc["amount"]
            cash_in_drawer += doc["amount"] if doc["kind"] == "paid_in" else -doc["amount"]
        elif type_ == "drawer.opened":
            no_sales += 1
    counted_total: int | None
    by_denomination: dict[str, int] | None = None
    if counted is None:
        counted_total = None
    elif isinstance(counted, int):
        counted_total = counted
    else:
        counted_total = sum(d * n for d, n in counted.items())
        by_denomination = {currency.plain(d): n for d, n in sorted(counted.items(), reverse=True)}
    return {
        "kind": "X",
        "shift_id": shift.id,
        "currency": currency.code,
        "opened_at": shift.opened_at,
        "opened_by": shift.opened_by,
        "float": shift.float,
        "sales": {"count": sales, "total": sales_total},
        "returns": {"count": returns, "total": returns_total},
        "net_sales": sales_total - returns_total,
        "discounts": discounts,
        "points_discounts": points_discounts,
        "net": net,
        "tax": tax_total,
        "taxes": [taxes[k] for k in sorted(taxes)],
        "tenders": dict(sorted(tenders.items())),
        "cash": {
            **cash_moves,
            "expected": cash_in_drawer,
            "counted": counted_total,
            "by_denomination": by_denomination,
            "over_short": None if counted_total is None else counted_total - cash_in_drawer,
        },
        "voids": {
            "lines": voided_lines,
            "lines_amount": voided_lines_amount,
            "sales": voided_sales,
            "sales_total": voided_sales_total,
        },
        "overrides": overrides,
        "no_sales": no_sales,
        "cashiers": dict(sorted(cashiers.items())),
        "average_duration_ms": sum(durations) // len(durations) if durations else None,
    }
