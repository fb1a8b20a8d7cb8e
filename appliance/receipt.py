"""The receipt document model, and its plain-text rendering.

A :class:`Receipt` is built from a committed sale or return document. It carries
the journal sequence and a short prefix of the entry's hash, so a paper receipt
cannot silently diverge from the ledger, and the reference printed as a barcode
or QR code that finds the sale again for a return. The printer driver renders
the same model to ESC/POS.

Loyalty points redeemed as a discount print as their own line after the goods
("Points redeemed: 250 pts  -2.50"); each item shows only its other discounts, and
"Discounts" sums both. A return receipt notes the points given back and taken back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from appliance.money import Currency
from appliance.returns import sale_reference

HASH_PREFIX = 8


@dataclass(frozen=True)
class ReceiptLine:
    """One printed line with its detail."""

    name: str
    qty: str
    unit: str
    unit_price: int
    amount: int
    discount: int = 0
    reasons: tuple[str, ...] = ()
    voided: bool = False
    note: str = ""


@dataclass(frozen=True)
class ReceiptTax:
    name: str
    percent: str
    taxable: int
    tax: int


@dataclass(frozen=True)
class ReceiptTender:
    label: str
    amount: int
    reference: str | None = None


@dataclass(frozen=True)
class Receipt:
    """Everything a receipt shows, independent of paper width or printer."""

    title: str
    store_name: str
    address: tuple[str, ...]
    tax_id: str
    currency: Currency
    number: int
    reference: str
    staff: str
    time: str
    lines: tuple[ReceiptLine, ...]
    subtotal: int
    discount: int
    net: int
    tax: int
    total: int
    prices_include_tax: bool
    taxes: tuple[ReceiptTax, ...]
    tenders: tuple[ReceiptTender, ...]
    change: int
    rounding: int
    journal_seq: int
    hash_prefix: str
    copy: int = 0
    digital_url: str | None = None
    footer: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class StoreInfo:
    """Receipt header and footer, from config."""

    name: str
    address: Sequence[str] = ()
    tax_id: str = ""
    timezone: str = "UTC"
    url_template: str = ""
    footer: Sequence[str] = ()


def _local(iso: str | None, tz: str) -> str:
    if not iso:
        return ""
    return datetime.fromisoformat(iso).astimezone(ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M")


def _digital_url(template: str, doc: Mapping[str, Any], reference: str) -> str | None:
    if not template:
        return None
    return template.format(store=doc.get("store", ""), device=doc.get("device", ""), id=doc["id"],
                           number=doc.get("number", ""), reference=reference)  # fmt: skip


def _line_note(ln: Mapping[str, Any], currency: Currency) -> str:
    notes = []
    if "override" in ln:
        o = ln["override"]
        notes.append(f"price {currency.plain(o['original'])} -> {currency.plain(o['price'])}: {o['reason']}")
    manual = ln.get("manual_discount")
    if manual and manual.get("reason"):
        what = f"{manual['percent']}%" if manual.get("percent") else currency.plain(manual["amount"])
        notes.append(f"{what} off: {manual['reason']}")
    return "; ".join(notes)


def _tender_ref(tender: Mapping[str, Any]) -> str | None:
    """The tender's reference, with the card scheme and approval code a card receipt must show."""
    detail = tender.get("detail") or {}
    parts = [detail.get("scheme", ""), tender.get("reference") or "", detail.get("approval_code", "")]
    if parts[2]:
        parts[2] = f"auth {parts[2]}"
    text = " ".join(p for p in parts if p)
    return text or None


def _points_line(doc: Mapping[str, Any]) -> tuple[ReceiptLine, ...]:
    """The line of a points discount (its share is left out of the items' own discounts)."""
    points = doc.get("points_discount") or {}
    if int(points.get("points") or 0) <= 0:
        return ()
    return (ReceiptLine(name=f"Points redeemed: {points['points']} pts", qty="1", unit="each", unit_price=0,
                        amount=-int(points["amount"])),)  # fmt: skip


def sale_receipt(doc: Mapping[str, Any], currency: Currency, store: StoreInfo, *, journal_seq: int,
                 journal_hash: str, copy: int = 0) -> Receipt:  # fmt: skip
    """Build the receipt of a committed sale document."""
    reference = sale_reference(str(doc.get("device", "")), int(doc["number"]))
    lines = tuple(
        ReceiptLine(
            name=ln["name"], qty=ln["qty"], unit=ln["unit"], unit_price=ln["unit_price"], amount=ln["amount"],
            discount=ln["discount"] - int(ln.get("points_discount") or 0), reasons=tuple(ln.get("promotions", ())),
            voided=ln["voided"], note=_line_note(ln, currency),
        )
        for ln in doc["lines"]
    ) + _points_line(doc)  # fmt: skip
    tenders = tuple(
        ReceiptTender(t["kind"].replace("_", " ").title(), t.get("tendered") or t["amount"], _tender_ref(t))
        for t in doc["tenders"]
    )
    return Receipt(
        title="RECEIPT",
        store_name=store.name, address=tuple(store.address), tax_id=store.tax_id, currency=currency,
        number=int(doc["number"]), reference=reference, staff=str(doc.get("cashier") or ""),
        time=_local(doc.get("completed_at"), store.timezone), lines=lines, subtotal=doc["subtotal"],
        discount=doc["discount"], net=doc["net"], tax=doc["tax"], total=doc["total"],
        prices_include_tax=bool(doc.get("prices_include_tax", True)),
        taxes=tuple(ReceiptTax(r["name"], r["percent"], r["taxable"], r["tax"]) for r in doc["taxes"]),
        tenders=tenders, change=doc["change"], rounding=doc.get("rounding", 0), journal_seq=journal_seq,
        hash_prefix=journal_hash[:HASH_PREFIX], copy=copy,
        digital_url=_digital_url(store.url_template, doc, reference), footer=tuple(store.footer),
    )  # fmt: skip


def return_receipt(doc: Mapping[str, Any], currency: Currency, store: StoreInfo, *, journal_seq: int,
                   journal_hash: str, copy: int = 0, points_given: int | None = None, points_taken: int = 0
                   ) -> Receipt:  # fmt: skip
    """Build the receipt of a committed return (amounts shown as refunds).

    ``points_given`` and ``points_taken`` are the loyalty points the return gave back (a points
    tender refunded, a points discount's share) and took back (what the goods had earned, see
    ``Loyalty.claw_back``); ``points_given`` defaults to what the document itself names.
    """
    lines = tuple(
        ReceiptLine(name=ln["name"], qty=ln["qty"], unit=ln["unit"], unit_price=0, amount=-ln["amount"],
                    note="returned to stock" if ln["disposition"] == "restock" else "damaged")
        for ln in doc["lines"]
    )  # fmt: skip
    tenders = tuple(ReceiptTender(f"Refund {t['kind']}", -t["amount"], t.get("reference")) for t in doc["refunds"])
    tenders += tuple(ReceiptTender(t["kind"].title(), t["amount"], t.get("reference")) for t in doc["tenders"])
    original = doc.get("original_number")
    device = str(doc.get("original_device") or "")
    note: tuple[str, ...] = (f"Return of receipt {sale_reference(device, int(original))}",) if original else ()
    if points_given is None:
        points_given = sum(int(r.get("points") or 0) for r in doc["refunds"] if r["kind"] == "loyalty") + \
            int((doc.get("points_back") or {}).get("points") or 0)  # fmt: skip
    if points_given > 0:
        note += (f"Points given back: {points_given} pts",)
    if points_taken > 0:
        note += (f"Points taken back: {points_taken} pts",)
    return Receipt(
        title="RETURN", store_name=store.name, address=tuple(store.address), tax_id=store.tax_id, currency=currency,
        number=int(doc["number"]), reference=f"RT-{doc['number']:06d}", staff=str(doc.get("cashier") or ""),
        time=_local(doc.get("completed_at"), store.timezone), lines=lines, subtotal=-doc["total"], discount=0,
        net=-doc["net"], tax=-doc["tax"], total=-doc["total"], prices_include_tax=True,
        taxes=tuple(ReceiptTax(r["name"], r["percent"], -r["taxable"], -r["tax"]) for r in doc["taxes"]),
        tenders=tenders, change=0, rounding=0, journal_seq=journal_seq, hash_prefix=journal_hash[:HASH_PREFIX],
        copy=copy, footer=note + tuple(store.footer),
    )  # fmt: skip


def _row(left: str, right: str, width: int) -> str:
    space = width - len(right) - 1
    return f"{left[:space]:<{space}} {right}"


def render_text(receipt: Receipt, width: int = 42) -> str:
    """Render a receipt as fixed-width text (the CLI, the demo, and text printers)."""
    money = receipt.currency.plain
    out = [receipt.store_name.center(width).rstrip()]
    out += [a.center(width).rstrip() for a in receipt.address]
    if receipt.tax_id:
        out.append(f"Tax ID {receipt.tax_id}".center(width).rstrip())
    if receipt.copy:
        out.append(f"*** COPY {receipt.copy} ***".center(width).rstrip())
    if receipt.title != "RECEIPT":
        out.append(receipt.title.center(width).rstrip())
    out.append("-" * width)
    for ln in receipt.lines:
        name = ln.name + (" (VOID)" if ln.voided else "")
        if ln.voided:
            out.append(_row(name, money(0), width))
            continue
        if ln.qty != "1" or ln.unit == "kg":
            unit = "kg" if ln.unit == "kg" else "x"
            out.append(name[:width])
            price = f" {money(ln.unit_price)}" if ln.unit_price else ""
            out.append(_row(f"  {ln.qty} {unit}{price}", money(ln.amount), width))
        else:
            out.append(_row(name, money(ln.amount), width))
        out.extend(f"  * {reason}"[:width] for reason in ln.reasons)
        if ln.discount:
            out.append(_row("  discount", "-" + money(ln.discount), width))
        if ln.note:
            out.append(f"  {ln.note}"[:width])
    out.append("-" * width)
    if receipt.discount:
        out.append(_row("Subtotal", money(receipt.subtotal), width))
        out.append(_row("Discounts", "-" + money(receipt.discount), width))
    if not receipt.prices_include_tax:
        out.append(_row("Net", money(receipt.net), width))
        out.append(_row("Tax", money(receipt.tax), width))
    out.append(_row(f"TOTAL {receipt.currency.code}", money(receipt.total), width))
    if receipt.rounding:
        out.append(_row("Cash rounding", money(receipt.rounding), width))
    for t in receipt.tenders:
        out.append(_row(f"{t.label} {t.reference or ''}".rstrip(), money(t.amount), width))
    if receipt.change:
        out.append(_row("Change", money(receipt.change), width))
    out.append("-" * width)
    out.extend(_row(f"{r.name} {r.percent}% of {money(r.taxable)}", money(r.tax), width) for r in receipt.taxes)
    out.append("")
    out.append(f"{receipt.title.title()} {receipt.number}  {receipt.time}  {receipt.staff}".rstrip())
    out.append(f"Ref {receipt.reference}  J{receipt.journal_seq}:{receipt.hash_prefix}")
    if receipt.digital_url:
        out.append(receipt.digital_url[:width])
    out.extend(receipt.footer)
    return "\n".join(out) + "\n"
