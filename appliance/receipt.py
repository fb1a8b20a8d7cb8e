"""Plain-text receipts (the CLI and the printer simulator's text view)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from appliance.money import Currency


def _row(left: str, right: str, width: int) -> str:
    space = width - len(right) - 1
    return f"{left[:space]:<{space}} {right}"


def render_text(
    doc: Mapping[str, Any],
    currency: Currency,
    *,
    store_name: str,
    address: Sequence[str] = (),
    tax_id: str = "",
    width: int = 42,
) -> str:
    """Render a committed sale document as a fixed-width text receipt."""
    money = currency.plain
    out = [store_name.center(width).rstrip()]
    out += [a.center(width).rstrip() for a in address]
    if tax_id:
        out.append(f"Tax ID {tax_id}".center(width).rstrip())
    out.append("-" * width)
    for ln in doc["lines"]:
        name = ln["name"] + (" (VOID)" if ln["voided"] else "")
        qty = ln["qty"]
        if ln["voided"]:
            out.append(_row(name, money(0), width))
            continue
        if qty != "1" or ln["unit"] == "kg":
            unit = "kg" if ln["unit"] == "kg" else "x"
            out.append(name[:width])
            out.append(_row(f"  {qty} {unit} @ {money(ln['unit_price'])}", money(ln["amount"]), width))
        else:
            out.append(_row(name, money(ln["amount"]), width))
        for reason in ln.get("promotions", []):
            out.append(f"  * {reason}"[:width])
        if ln["discount"]:
            out.append(_row("  discount", "-" + money(ln["discount"]), width))
        if "override" in ln:
            out.append(f"  price override: {ln['override']['reason']}"[:width])
    out.append("-" * width)
    if doc["discount"]:
        out.append(_row("Subtotal", money(doc["subtotal"]), width))
        out.append(_row("Discounts", "-" + money(doc["discount"]), width))
    if not doc.get("prices_include_tax", True):
        out.append(_row("Net", money(doc["net"]), width))
        out.append(_row("Tax", money(doc["tax"]), width))
    out.append(_row(f"TOTAL {currency.code}", money(doc["total"]), width))
    if doc.get("rounding"):
        out.append(_row("Cash rounding", money(doc["rounding"]), width))
    for t in doc["tenders"]:
        label = t["kind"].replace("_", " ").title()
        if t["kind"] == "cash":
            out.append(_row(label, money(t["tendered"]), width))
        else:
            out.append(_row(f"{label} {t.get('reference') or ''}".rstrip(), money(t["amount"]), width))
    if doc.get("change"):
        out.append(_row("Change", money(doc["change"]), width))
    out.append("-" * width)
    for r in doc.get("taxes", []):
        out.append(_row(f"{r['name']} {r['percent']}% of {money(r['taxable'])}", money(r["tax"]), width))
    out.append("")
    number = doc.get("number")
    if number is not None:
        out.append(f"Receipt {doc.get('device', '')}-{number:06d}")
    out.append(f"{doc.get('completed_at') or ''}  {doc.get('cashier') or ''}".rstrip())
    return "\n".join(out) + "\n"
