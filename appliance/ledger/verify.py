"""``tillbox ledger verify``: prove the journal and the sales tables are intact.

Checks, in order, stopping the chain walk at the first bad entry:

1. ``PRAGMA quick_check`` (the file itself);
2. the journal: sequences 1..n without gaps, each ``prev_hash`` equal to the hash
   before it (starting from the device's genesis), and each hash recomputed;
3. sales against the journal: every sale row matches its ``sale.completed`` entry
   field by field (header, lines, tenders), and every such entry has its sale row.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from appliance.ledger.journal import entry_hash
from appliance.ledger.store import Ledger

_HEADER = ("number", "cashier", "completed_at", "currency", "subtotal", "discount", "tax", "total", "rounding",
           "change")  # fmt: skip
_LINE = ("sku", "name", "qty", "unit_price", "amount", "discount", "tax", "total", "tax_class")


@dataclass
class VerifyReport:
    """Outcome of a verification run."""

    entries: int = 0
    sales: int = 0
    errors: list[str] = field(default_factory=list)
    first_bad_seq: int | None = None

    @property
    def ok(self) -> bool:
        return not self.errors


def verify(ledger: Ledger, *, quick_check: bool = True, max_errors: int = 20) -> VerifyReport:
    """Verify a ledger; never raises for damage, it reports it."""
    report = VerifyReport()
    conn = ledger.conn
    if quick_check:
        try:
            result = [str(r[0]) for r in conn.execute("PRAGMA quick_check")]
        except sqlite3.DatabaseError as exc:
            report.errors.append(f"database file is damaged: {exc}")
            return report
        if result != ["ok"]:
            report.errors.append("database file is damaged: " + "; ".join(result[:3]))
            return report
    _verify_chain(ledger, report)
    _verify_sales(conn, report, max_errors)
    return report


def _verify_chain(ledger: Ledger, report: VerifyReport) -> None:
    prev = ledger.genesis
    expected = 1
    rows = ledger.conn.execute(
        "SELECT seq, time, type, actor, approver, ref_seq, payload, prev_hash, hash FROM journal ORDER BY seq"
    )
    for seq, time, type_, actor, approver, ref_seq, payload, prev_hash, digest in rows:
        problem = None
        if seq != expected:
            problem = f"journal entry {expected} is missing (next entry found is {seq})"
            report.first_bad_seq = expected
        elif prev_hash != prev:
            problem = f"journal entry {seq} ({type_}) does not chain to entry {seq - 1}: reordered or replaced"
        elif entry_hash(prev, seq, time, type_, actor, approver, ref_seq, payload) != digest:
            problem = f"journal entry {seq} ({type_}) was altered: its hash does not match its content"
        if problem:
            report.errors.append(problem)
            if report.first_bad_seq is None:
                report.first_bad_seq = seq
            return
        prev = digest
        expected += 1
        report.entries += 1


def _verify_sales(conn: sqlite3.Connection, report: VerifyReport, max_errors: int) -> None:
    def fail(message: str) -> bool:
        report.errors.append(message)
        return len(report.errors) >= max_errors

    lines_cur = conn.execute(
        "SELECT sale_id, line_no, sku, name, qty, unit_price, amount, discount, tax, total, tax_class, voided "
        "FROM sale_lines ORDER BY sale_id, line_no"
    )
    tenders_cur = conn.cursor().execute(
        "SELECT sale_id, idx, kind, amount, reference FROM sale_tenders ORDER BY sale_id, idx"
    )
    pending_line = next(lines_cur, None)
    pending_tender = next(tenders_cur, None)
    sales = conn.cursor().execute(
        "SELECT s.id, s.number, s.journal_seq, s.cashier, s.completed_at, s.currency, s.subtotal, s.discount, "
        "s.tax, s.total, s.rounding, s.change, s.line_count, j.type, j.payload "
        "FROM sales s LEFT JOIN journal j ON j.seq = s.journal_seq ORDER BY s.id"
    )
    for row in sales:
        sale_id, number, jseq = row[0], row[1], row[2]
        header = dict(zip(_HEADER, (row[1], row[3], row[4], *row[5:12]), strict=True))
        lines: list[tuple[Any, ...]] = []
        while pending_line is not None and pending_line[0] <= sale_id:
            if pending_line[0] == sale_id:
                lines.append(pending_line[1:])
            elif fail(f"sale line {pending_line[1]} belongs to unknown sale {pending_line[0]}"):
                return
            pending_line = next(lines_cur, None)
        tenders: list[tuple[Any, ...]] = []
        while pending_tender is not None and pending_tender[0] <= sale_id:
            if pending_tender[0] == sale_id:
                tenders.append(pending_tender[1:])
            pending_tender = next(tenders_cur, None)
        report.sales += 1
        if row[13] != "sale.completed":
            if fail(f"sale {number} points at journal entry {jseq}, which is not its sale.completed entry"):
                return
            continue
        doc = json.loads(row[14])
        bad = _compare(doc, sale_id, header, row[12], lines, tenders)
        if bad and fail(f"sale {number} (journal entry {jseq}) disagrees with the journal: {bad}"):
            return
    _verify_returns(conn, report, fail)
    journal_sales = conn.execute("SELECT count(*) FROM journal WHERE type = 'sale.completed'").fetchone()[0]
    if journal_sales != report.sales:
        missing = conn.execute(
            "SELECT j.seq FROM journal j LEFT JOIN sales s ON s.journal_seq = j.seq "
            "WHERE j.type = 'sale.completed' AND s.id IS NULL ORDER BY j.seq LIMIT 1"
        ).fetchone()
        where = f"; first is journal entry {missing[0]}" if missing else ""
        fail(f"{journal_sales} sales in the journal but {report.sales} sale rows{where}")


def _compare(
    doc: dict[str, Any],
    sale_id: str,
    header: dict[str, Any],
    line_count: int,
    lines: list[tuple[Any, ...]],
    tenders: list[tuple[Any, ...]],
) -> str | None:
    if doc.get("id") != sale_id:
        return f"id {sale_id} vs {doc.get('id')}"
    for key, value in header.items():
        if doc.get(key) != value:
            return f"{key} is {value!r} in the sales table but {doc.get(key)!r} in the journal"
    doc_lines = doc.get("lines", [])
    if line_count != len(doc_lines) or len(lines) != len(doc_lines):
        return f"{len(lines)} line rows, journal has {len(doc_lines)}"
    for row, ln in zip(lines, doc_lines, strict=True):
        expected = (ln["line"], *(ln[k] for k in _LINE), int(ln["voided"]))
        if tuple(row) != expected:
            return f"line {ln['line']} differs"
    doc_tenders = doc.get("tenders", [])
    expected_t = [(i, t["kind"], t["amount"], t.get("reference")) for i, t in enumerate(doc_tenders, 1)]
    if [tuple(t) for t in tenders] != expected_t:
        return "tenders differ"
    return None


def _verify_returns(conn: sqlite3.Connection, report: VerifyReport, fail: Any) -> None:
    rows = conn.execute(
        "SELECT r.id, r.number, r.journal_seq, r.total, r.tax, r.original_sale_id, j.type, j.payload "
        "FROM returns r LEFT JOIN journal j ON j.seq = r.journal_seq ORDER BY r.number"
    )
    for rid, number, jseq, total, tax, original, type_, payload in rows:
        if type_ != "return.completed":
            fail(f"return {number} points at journal entry {jseq}, which is not its return.completed entry")
            return
        doc = json.loads(payload)
        fields = {"id": rid, "number": number, "total": total, "tax": tax, "original_sale_id": original}
        bad = next((k for k, v in fields.items() if doc.get(k) != v), None)
        refunded = conn.execute("SELECT count(*), COALESCE(SUM(amount), 0) FROM refunds WHERE return_id = ?", (rid,))
        count, amount = refunded.fetchone()
        if bad is None and (count, amount) != (len(doc["lines"]), doc["total"]):
            bad = "refund rows"
        if bad and fail(f"return {number} (journal entry {jseq}) disagrees with the journal: {bad}"):
            return
    journal_returns = conn.execute("SELECT count(*) FROM journal WHERE type = 'return.completed'").fetchone()[0]
    rows_count = conn.execute("SELECT count(*) FROM returns").fetchone()[0]
    if journal_returns != rows_count:
        fail(f"{journal_returns} returns in the journal but {rows_count} return rows")
