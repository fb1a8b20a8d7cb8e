"""Kiosk API for the pickup queue (``/api/v1/orders/...``) and its page (``/orders``).

Pickup and ship-from-store orders from the shop (appliance/orders.py): list and search
them (order number, name or scanned QR code), record picks, mark them ready or packed,
hand them over after the pickup code or an ID check (taking the payment first when the
order is paid at pickup), print the packing slip and mark them shipped. Every endpoint
needs a staff session that may sell; cancelling needs ``void_sale`` (a supervisor, or a
supervisor's approval token). Each change is announced on the live WebSocket as
``{"type": "orders", "id", "status"}``; a scanned order QR code goes to the operator's
screen as ``order.scanned``.
"""

from __future__ import annotations

import contextlib
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, Response
from pydantic import Field, StringConstraints

from appliance.errors import DeviceUnavailable, InputError, SaleError, TillboxError
from appliance.orders import Order, Orders, parse_order_qr
from appliance.staff import Action
from appliance.tenders import TenderKind
from kiosk_ui.app import STATIC, S
from kiosk_ui.models import Code, MinorOrZero, Quantity, Strict, Text, Token

if TYPE_CHECKING:
    from appliance.daemon import Daemon
    from kiosk_ui.auth import Session

OrderId = Annotated[str, PathParam(min_length=1, max_length=64)]
Sku = Annotated[str, PathParam(min_length=1, max_length=64)]
Short = Annotated[str, StringConstraints(max_length=64, pattern=r"^[^\x00-\x1f\x7f]*$")]
Tracking = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f]+$")]


class PickIn(Strict):
    line: int = Field(ge=1, le=500)
    picked: Quantity


class PicksIn(Strict):
    lines: list[PickIn] = Field(min_length=1, max_length=500)


class ReadyIn(Strict):
    short: bool = Field(False, description="hand over / ship what was picked although lines are short")


class HandOverIn(Strict):
    check: Literal["code", "id"] = Field(description="code: the pickup code or QR was given; id: staff checked the ID")
    code: Code | None = None
    payment: Literal["cash", "card"] | None = Field(None, description="for an order paid at pickup")
    tendered: MinorOrZero | None = Field(None, description="cash handed over (default: exactly what is due)")
    print: bool = True


class ShipIn(Strict):
    tracking: Tracking
    carrier: Short | None = None


class CancelIn(Strict):
    reason: Text
    approval: Token | None = None


def _orders(daemon: Daemon) -> Orders:
    if daemon.orders is None:
        raise DeviceUnavailable("the daemon is starting")
    orders: Orders = daemon.orders
    return orders


def _seller(daemon: Daemon, session: Session) -> None:
    daemon.authorize(session, Action.SELL, staff_only=True, approvable=False)


def order_view(daemon: Daemon, order: Order, *, detail: bool = False, cashier: str | None = None) -> dict[str, Any]:
    """An order for the pickup queue: the document's facts with amounts, quantities and times formatted."""
    fmt = daemon.fmt
    out = order.to_dict()
    out["total_text"] = None if order.total is None else fmt.money(order.total)
    out["time_text"] = fmt.when(order.time)
    out["hold_until_text"] = fmt.when(order.hold_until)
    out["picked_lines"] = sum(1 for ln in order.lines if not ln.short)
    for doc, ln in zip(out["lines"], order.lines, strict=True):
        doc["qty_text"] = fmt.qty(ln.qty, ln.unit)
        doc["picked_text"] = fmt.qty(ln.picked, ln.unit)
        doc["total_text"] = None if ln.total is None else fmt.money(ln.total)
    if not detail:
        del out["history"]
        return out
    orders = _orders(daemon)
    out["code_failures"] = orders.code_failures(order.id)
    out["code_attempts"] = orders.policy.code_attempts
    out["id_check"] = orders.policy.id_check
    for h in out["history"]:
        h["time_text"] = fmt.when(h.get("time"))
    if order.payment == "at_pickup" and order.status == "ready":
        try:
            sale = orders.sale_for(order.id, cashier=cashier or "")
            out["due"] = fmt.amount(sale.totals().total)
            out["cash_due"] = fmt.amount(sale.cash_due())
        except TillboxError as exc:
            out["due_error"] = str(exc)
    return out


def scanned(daemon: Daemon, session: Session, code: str) -> None:
    """An order's QR code was scanned: the operator's pickup queue opens that order."""
    parsed = parse_order_qr(code)
    try:
        if parsed is None:
            raise InputError("that is not an order's QR code")
        order = _orders(daemon).get(parsed[0])
    except TillboxError as exc:
        daemon.hub.publish("notice", to=session.token, level="error", code="order", message=f"order QR code: {exc}")
        return
    daemon.hub.publish("order.scanned", to=session.token, id=order.id, status=order.status, code=code)


def create_router(daemon: Daemon) -> APIRouter:
    """The order endpoints of ``daemon`` under ``/api/v1/orders``, and the ``/orders`` page."""
    api = APIRouter()

    def changed(order: Order) -> dict[str, Any]:
        return changed_view(daemon, order)

    @api.get("/orders", include_in_schema=False)
    async def page() -> Response:
        return FileResponse(STATIC / "orders.html")

    @api.get("/api/v1/orders", summary="The pickup queue: open orders (or all), searchable")
    async def queue(
        s: S,
        q: Annotated[str, Query(max_length=120, description="order number, customer name or scanned QR code")] = "",
        everything: Annotated[bool, Query(alias="all", description="closed orders too")] = False,
        kind: Annotated[Literal["pickup", "ship"] | None, Query()] = None,
    ) -> dict[str, Any]:
        _seller(daemon, s)
        found = _orders(daemon).search(text=q, open_only=not everything, kind=kind)
        return {"orders": [order_view(daemon, o) for o in found]}

    @api.get("/api/v1/orders/stock/{sku}", summary="Units of a SKU held for open orders, here and at the shop")
    async def reserved(sku: Sku, s: S) -> dict[str, Any]:
        _seller(daemon, s)
        return _orders(daemon).reserved(sku).to_dict()

    @api.get("/api/v1/orders/{order_id}", summary="One order with its lines, picks, history and what is due")
    async def one(order_id: OrderId, s: S) -> dict[str, Any]:
        _seller(daemon, s)
        return order_view(daemon, _orders(daemon).get(order_id), detail=True, cashier=s.actor)

    @api.post("/api/v1/orders/{order_id}/picks", summary="Record picked quantities per line")
    async def picks(order_id: OrderId, body: PicksIn, s: S) -> dict[str, Any]:
        _seller(daemon, s)
        given = {p.line: Decimal(p.picked) for p in body.lines}
        return changed(_orders(daemon).pick(order_id, given, staff=s.actor))

    @api.post("/api/v1/orders/{order_id}/ready", summary="Mark a pickup order ready: the shop tells the customer")
    async def ready(order_id: OrderId, body: ReadyIn, s: S) -> dict[str, Any]:
        _seller(daemon, s)
        return changed(_orders(daemon).ready(order_id, staff=s.actor, short=body.short))

    @api.post("/api/v1/orders/{order_id}/pack", summary="Mark a ship-from-store order packed")
    async def pack(order_id: OrderId, body: ReadyIn, s: S) -> dict[str, Any]:
        _seller(daemon, s)
        return changed(_orders(daemon).pack(order_id, staff=s.actor, short=body.short))

    @api.post("/api/v1/orders/{order_id}/slip", summary="Print the packing slip and label on the receipt printer")
    async def slip(order_id: OrderId, s: S) -> dict[str, Any]:
        from kiosk_ui.views import receipt_view

        _seller(daemon, s)
        receipt = _orders(daemon).slip(order_id, staff=s.actor)
        out: dict[str, Any] = {"slip": receipt_view(receipt, daemon.fmt), "printed": True}
        try:
            await daemon._print(receipt)
        except DeviceUnavailable as exc:
            out.update(printed=False, error=str(exc))
        return out

    @api.post("/api/v1/orders/{order_id}/ship", summary="Mark a packed order shipped with its tracking reference")
    async def ship(order_id: OrderId, body: ShipIn, s: S) -> dict[str, Any]:
        _seller(daemon, s)
        return changed(_orders(daemon).ship(order_id, body.tracking, staff=s.actor, carrier=body.carrier or None))

    @api.post("/api/v1/orders/{order_id}/cancel", summary="Cancel an open order (needs void_sale)")
    async def cancel(order_id: OrderId, body: CancelIn, s: S) -> dict[str, Any]:
        daemon.precheck(s, Action.VOID_SALE, staff_only=True)
        orders = _orders(daemon)
        orders.get(order_id)  # an unknown order is refused before an approval is spent
        granted = daemon.authorize(s, Action.VOID_SALE, body.approval, staff_only=True)
        return changed(orders.cancel(order_id, body.reason, staff=s.actor, approver=granted.approver))

    @api.post("/api/v1/orders/{order_id}/handover", summary="Hand a ready order over after the code or an ID check")
    async def handover(order_id: OrderId, body: HandOverIn, s: S) -> dict[str, Any]:
        _seller(daemon, s)
        return await hand_over(daemon, s, order_id, body)

    return api


async def hand_over(daemon: Daemon, s: Session, order_id: str, body: HandOverIn) -> dict[str, Any]:
    """Check, take the payment of an order paid at pickup (committed with the hand-over), print, open the drawer."""
    from kiosk_ui.views import receipt_view

    orders = _orders(daemon)
    order = orders.verify(order_id, body.check, body.code, staff=s.actor)
    if order.payment != "at_pickup":
        if body.payment is not None:
            raise InputError(f"order {order.id} is paid already; take no payment")
        return {"order": changed_view(daemon, orders.hand_over(order_id, body.check, body.code, staff=s.actor).order),
                "receipt": None}  # fmt: skip
    if body.payment is None:
        raise InputError(f"order {order.id} is to be paid at pickup: take cash or card")
    if daemon.busy:
        raise SaleError(f"{daemon.busy} payment in progress; wait for the terminal")
    sale = orders.sale_for(order_id, cashier=s.actor)
    if body.payment == "cash":
        due = sale.cash_due()
        tendered = due if body.tendered is None else body.tendered
        if tendered < due:
            raise InputError(f"{daemon.fmt.money(due)} is due; {daemon.fmt.money(tendered)} is not enough")
        sale.pay_cash(tendered)
    else:
        daemon.busy = "card"
        try:
            await daemon._io(daemon.t.pay_card, sale)
        finally:
            daemon.busy = None
    try:
        done = orders.hand_over(order_id, body.check, body.code, staff=s.actor, sale=sale)
    except TillboxError:
        if any(t.kind is TenderKind.CARD for t in sale.tenders) and sale.state == "open":
            daemon.t.cancel(sale, actor=s.actor, reason=f"order {order_id} was not handed over")
        raise
    assert done.completed is not None
    receipt = daemon.t.receipt(done.completed)
    daemon.last, daemon.last_receipt = done.completed, receipt
    view = receipt_view(receipt, daemon.fmt)
    if body.payment == "cash":
        with contextlib.suppress(TillboxError):
            await daemon._kick_drawer("order", s.actor)
    if body.print:
        with contextlib.suppress(TillboxError):
            await daemon._print(receipt)
    return {"order": changed_view(daemon, done.order), "receipt": view}


def changed_view(daemon: Daemon, order: Order) -> dict[str, Any]:
    """Announce a changed order on the live connection and return its view."""
    daemon.hub.publish("orders", id=order.id, status=order.status)
    return order_view(daemon, order, detail=True)
