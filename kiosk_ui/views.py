"""What the screens see: sales, receipts and reports as JSON, money and dates formatted with Babel.

Amounts travel as integer minor units *and* as text formatted for the configured
locale (``[currency] locale``), so the browser never does money arithmetic or
formatting of its own. Quantities are decimal strings.
"""

from __future__ import annotations

import base64
import io
from datetime import datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from babel.dates import format_datetime
from babel.numbers import format_currency, format_decimal

from appliance.money import Currency
from appliance.receipt import Receipt, render_text
from appliance.sale import Line, Sale


class Formatter:
    """Money, quantities and times for one locale, currency and time zone."""

    def __init__(self, currency: Currency, locale: str, timezone: str) -> None:
        self.currency = currency
        self.locale = locale
        self.tz = ZoneInfo(timezone)
        self._money: dict[int, str] = {}

    def money(self, minor: int) -> str:
        """Babel's locale format; memoised, since a cart view formats the same amounts on every change."""
        text = self._money.get(minor)
        if text is None:
            if len(self._money) >= 10_000:
                self._money.clear()
            text = self._money[minor] = str(
                format_currency(self.currency.to_decimal(minor), self.currency.code, locale=self.locale)
            )
        return text

    def qty(self, value: Decimal, unit: str) -> str:
        text = str(format_decimal(value.normalize(), locale=self.locale))
        return f"{text} kg" if unit == "kg" else text

    def when(self, moment: datetime | str | None) -> str:
        if moment is None:
            return ""
        if isinstance(moment, str):
            moment = datetime.fromisoformat(moment.replace("Z", "+00:00"))
        return str(format_datetime(moment.astimezone(self.tz), "short", locale=self.locale))

    def amount(self, minor: int) -> dict[str, Any]:
        return {"minor": minor, "text": self.money(minor)}


def _line(ln: Line, fmt: Formatter) -> dict[str, Any]:
    unit = ln.item.unit
    return {
        "no": ln.no,
        "sku": ln.item.sku,
        "name": ln.item.name,
        "qty": str(ln.quantity.normalize()) if unit == "kg" else str(int(ln.quantity)),
        "qty_text": fmt.qty(ln.quantity, unit),
        "unit": unit,
        "unit_price": fmt.amount(ln.unit_price),
        "amount": fmt.amount(ln.base),
        "discount": fmt.amount(ln.discount_total),
        "total": fmt.amount(ln.total if not ln.voided else 0),
        "promotions": list(ln.promo_reasons),
        "voided": ln.voided,
        "age_restricted": ln.item.age_restricted,
        "override": ln.override is not None,
        "manual_discount": ln.discount is not None,
    }


def sale_view(sale: Sale | None, fmt: Formatter, *, needs: list[str] | None = None,
              busy: str | None = None, customer: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """The open sale as the screens show it; an empty cart when ``sale`` is None."""
    if sale is None:
        zero = fmt.amount(0)
        return {"id": None, "state": "empty", "lines": [], "subtotal": zero, "discount": zero, "tax": zero,
                "total": zero, "paid": zero, "due": zero, "cash_due": zero, "items": "0", "tenders": [],
                "promotions": [], "coupons": [], "customer": None, "needs_approval": [], "busy": None,
                "cashier": None}  # fmt: skip
    t = sale.totals()
    try:
        cash_due = sale.cash_due() if t.due > 0 else 0
    except Exception:  # an empty cart has nothing due
        cash_due = 0
    promos = sale.promotions
    return {
        "id": sale.id,
        "state": sale.state if sale.lines else "empty",
        "cashier": sale.cashier,
        "lines": [_line(ln, fmt) for ln in sale.lines],
        "subtotal": fmt.amount(t.subtotal),
        "discount": fmt.amount(t.discount),
        "tax": fmt.amount(t.tax),
        "total": fmt.amount(t.total),
        "paid": fmt.amount(t.paid),
        "due": fmt.amount(max(t.due, 0)),
        "cash_due": fmt.amount(max(cash_due, 0)),
        "items": str(t.items.normalize()),
        "tenders": [
            {
                "kind": str(tn.kind),
                "amount": fmt.amount(tn.amount),
                "tendered": fmt.amount(tn.tendered),
                "change": fmt.amount(tn.change),
            }
            for tn in sale.tenders
        ],
        "promotions": [{"name": a.name, "amount": fmt.amount(a.amount)} for a in (promos.applied if promos else ())],
        "coupons": sorted(sale.coupons),
        "customer": customer,
        "needs_approval": list(needs or []),
        "busy": busy,
    }


def quick_cash(due: int, currency: Currency) -> list[int]:
    """Quick-cash amounts for ``due``: exact, then the next round notes above it (up to four)."""
    if due <= 0:
        return []
    scale = currency.scale
    options = [due]
    for step in (1, 5, 10, 20, 50, 100, 200):
        amount = -(-due // (step * scale)) * step * scale
        if amount not in options:
            options.append(amount)
        if len(options) >= 4:
            break
    return options


def qr_data_uri(text: str) -> str:
    """An SVG QR code of ``text`` as a data: URI (for an <img>)."""
    import qrcode  # type: ignore[import-untyped]
    import qrcode.image.svg  # type: ignore[import-untyped]

    img = qrcode.make(text, image_factory=qrcode.image.svg.SvgPathImage, box_size=10, border=2)
    buf = io.BytesIO()
    img.save(buf)
    return "data:image/svg+xml;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def receipt_view(receipt: Receipt, fmt: Formatter) -> dict[str, Any]:
    """A receipt for the screen: its text, reference, QR code and the change given."""
    link = receipt.digital_url or receipt.reference
    return {
        "number": receipt.number,
        "reference": receipt.reference,
        "title": receipt.title,
        "total": fmt.amount(receipt.total),
        "change": fmt.amount(receipt.change),
        "text": render_text(receipt),
        "digital_url": receipt.digital_url,
        "qr": qr_data_uri(link),
        "time": receipt.time,
    }


def mask_secrets(value: Any, key: str = "") -> Any:
    """A config document with secret values replaced by ``"********"`` (keys naming passwords,
    secrets, tokens or keys, and user info in URLs)."""
    lowered = key.lower()
    if isinstance(value, dict):
        return {k: mask_secrets(v, k) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mask_secrets(v, key) for v in value]
    if value not in ("", None) and any(w in lowered for w in ("password", "secret", "token", "key_file", "username")):
        return "********"
    if isinstance(value, str) and "://" in value and "@" in value.split("://", 1)[1].split("/", 1)[0]:
        scheme, rest = value.split("://", 1)
        return f"{scheme}://********@{rest.split('@', 1)[1]}"
    return value
