"""Sale lookups for returns: a till asks the shop for a sale it does not have.

A receipted return must find the original sale whether it was rung up on this
till, on another till of the store, or ordered online. The till asks the shop on
``tillbox/v1/{store}/{device}/req/sale`` (MQTT 5 ResponseTopic on its own ``res``
topic and CorrelationData); the shop answers with the sale as the till needs it
(``sale-lookup-response``). The answer is validated, checked against the request
and stored in the ledger's ``remote_sales`` table, where
:meth:`appliance.returns.Returns.find_sale` finds it.

The answer also says how much of each line other devices have already refunded;
the till keeps that in the stored body as ``refunded_elsewhere`` so the same line
is not refunded twice in two tills.

Both ends are here: :func:`returnable_order` (the hub turns a paid online order
into a returnable sale) and :func:`store_answer` (the till checks and stores).
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Final

from appliance.canonical import canonical_json
from appliance.errors import InputError
from appliance.ledger import Ledger
from appliance.returns import parse_reference, sale_reference
from sync.inbound import Rejected

#: The ``device`` of sales that come from the online shop.
ONLINE: Final = "online"


def returnable_order(order: Mapping[str, Any], store: str) -> dict[str, Any]:
    """An online order (a ``pickup-order`` document) as a sale a till can take a return against.

    Raises :class:`InputError` when it cannot be returned (cancelled, expired uncollected, or
    without paid lines): goods that never left the store are refunded by the shop, not at a till.
    """
    if order["status"] in ("cancelled", "expired"):
        raise InputError(f"order {order['id']} was {order['status']}")
    if "currency" not in order or any("total" not in ln for ln in order["lines"]):
        raise InputError(f"order {order['id']} has no paid prices to refund")
    lines = []
    for no, ln in enumerate(order["lines"], 1):
        qty = Decimal(ln["qty"])
        if qty <= 0:
            raise InputError(f"order {order['id']} line {no} has quantity {qty}")
        total = int(ln["total"])
        unit_price = int(ln["unit_price"]) if "unit_price" in ln else int((total / qty).to_integral_value())
        lines.append({
            "line": no, "sku": ln["sku"], "name": ln.get("name", ln["sku"]), "qty": ln["qty"],
            "unit": ln.get("unit", "each"), "unit_price": unit_price,
            "amount": total, "discount": 0, "total": total, "tax": int(ln.get("tax", 0)),
            "tax_rates": dict(ln.get("tax_rates", {})), "tax_class": ln.get("tax_class", "standard"),
            "voided": False,
        })  # fmt: skip
    total = sum(ln["total"] for ln in lines)
    return {
        "id": order["id"], "number": None, "store": store, "device": ONLINE, "channel": "online",
        "currency": order["currency"], "completed_at": order.get("paid_at") or order["time"],
        "lines": lines, "tenders": [{"kind": "online", "amount": total, "reference": order["id"]}],
        "total": total, "tax": sum(ln["tax"] for ln in lines), "order_status": order["status"],
    }  # fmt: skip


def stored_reference(sale: Mapping[str, Any]) -> str:
    """The reference a stored sale is found by: the receipt reference, or the order id."""
    device, number = sale.get("device"), sale.get("number")
    if isinstance(device, str) and device != ONLINE and isinstance(number, int):
        return sale_reference(device, number)
    return str(sale["id"])


def _check(answer: Mapping[str, Any], *, reference: str, currency: str, store: str) -> dict[str, Any]:
    if answer["reference"] != reference:
        raise Rejected(f"answer for {answer['reference']!r} to a lookup of {reference!r}")
    sale: dict[str, Any] = dict(answer["sale"])
    if sale["currency"] != currency:
        raise Rejected(f"sale {sale['id']} is in {sale['currency']}, this till refunds in {currency}")
    if sale.get("store", store) != store:
        raise Rejected(f"sale {sale['id']} belongs to store {sale['store']}, not {store}")
    parsed = parse_reference(reference)
    if parsed is not None and (sale.get("device"), sale.get("number")) != parsed:
        raise Rejected(f"sale {sale.get('device')} #{sale.get('number')} does not match receipt {reference}")
    numbers = [ln["line"] for ln in sale["lines"]]
    if len(set(numbers)) != len(numbers):
        raise Rejected(f"sale {sale['id']} lists a line twice")
    by_no = {ln["line"]: Decimal(ln["qty"]) for ln in sale["lines"]}
    for done in answer.get("refunded", []):
        if done["line"] not in by_no or Decimal(done["qty"]) > by_no[done["line"]]:
            raise Rejected(f"refunds reported for line {done['line']} of sale {sale['id']} do not fit the sale")
    sale["refunded_elsewhere"] = list(answer.get("refunded", []))
    return sale


def store_answer(
    ledger: Ledger, answer: Mapping[str, Any], *, reference: str, currency: str, store: str, now: str
) -> dict[str, Any]:
    """Check a found sale against the request and store it in ``remote_sales``; returns the stored body.

    ``answer`` has passed the ``sale-lookup-response`` schema. Raises :class:`Rejected`
    (nothing is written) when it does not answer the request or does not fit this till.
    """
    sale = _check(answer, reference=reference, currency=currency, store=store)
    try:
        body = canonical_json(sale)
    except TypeError as exc:
        raise Rejected(f"sale {sale['id']}: {exc}") from None
    source = str(sale.get("device") or ONLINE)
    with ledger.transaction("storing a sale from the shop") as tx:
        tx.conn.execute(
            "INSERT INTO remote_sales(id, source, reference, received_at, body) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET source = excluded.source, reference = excluded.reference, "
            "received_at = excluded.received_at, body = excluded.body",
            (sale["id"], source, stored_reference(sale), now, body),
        )
    return sale
