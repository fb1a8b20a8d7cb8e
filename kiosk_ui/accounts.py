"""Kiosk API for gift cards, store credit and loyalty points (docs/accounts.md).

- ``GET /api/v1/accounts/stored-value/{account}``: balance of a gift card or store credit;
- ``GET /api/v1/accounts/loyalty/{customer}``: a customer's points;
- ``POST /api/v1/cart/payments/stored-value``: pay the open sale with a gift card or store credit;
- ``POST /api/v1/cart/payments/points``: pay with the attached customer's points;
- ``POST /api/v1/sales/{sale_id}/loyalty-discount``: take the customer's points off the open sale's
  price (a discount: the tax base goes down), ``DELETE`` to take them off again (they go back);
- ``POST /api/v1/cart/gift-cards``: sell a gift card (or top one up) in the open sale.

The shop is asked in an executor (the loop never waits on the network, and the cart is
marked busy meanwhile); what it answered is applied on the loop. A fully paid sale is
committed and printed like a cash or card payment. Every endpoint needs a staff session
that may sell.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from fastapi import APIRouter, Query
from fastapi import Path as PathParam
from pydantic import Field, StringConstraints

from appliance.errors import NotFound, SaleError
from appliance.staff import Action
from appliance.tenders import Tender
from kiosk_ui.app import S
from kiosk_ui.models import Minor, Strict

if TYPE_CHECKING:
    from appliance.daemon import Daemon
    from appliance.sale import Sale
    from kiosk_ui.auth import Session

R = TypeVar("R")
AccountCode = Annotated[str, StringConstraints(min_length=4, max_length=32, pattern=r"^[A-Za-z0-9][A-Za-z0-9-]{3,31}$")]
Points = Annotated[int, Field(ge=1, le=1_000_000_000)]


class StoredValuePayIn(Strict):
    account: AccountCode = Field(description="gift card or store credit number, e.g. GC-7KQ2-M9XD")
    amount: Minor | None = Field(None, description="minor units; default: all that is due, or what the card has")
    print: bool = True


class PointsPayIn(Strict):
    points: Points | None = Field(None, description="points to redeem; default: as many as the due amount takes")
    print: bool = True


class PointsDiscountIn(Strict):
    points: Points | None = Field(None, description="points to take off the price; null: as many as the sale takes")


class GiftCardIn(Strict):
    amount: Minor
    account: AccountCode | None = Field(None, description="a card to top up; empty for a new card (a code is made)")


def _seller(daemon: Daemon, session: Session) -> None:
    daemon.authorize(session, Action.SELL, staff_only=True, approvable=False)


def _tender_view(daemon: Daemon, tender: Tender) -> dict[str, Any]:
    view: dict[str, Any] = {"kind": str(tender.kind), "amount": daemon.fmt.amount(tender.amount),
                            "reference": tender.reference, "mode": tender.detail.get("mode", "local")}  # fmt: skip
    if "points" in tender.detail:
        view["points"] = int(tender.detail["points"])
    return view


def points_discount_view(daemon: Daemon, sale: Sale | None) -> dict[str, Any] | None:
    """The open sale's points discount for the screens; ``capped`` when the sale takes fewer points than were taken."""
    d = None if sale is None or sale.state != "open" else sale.points_discount
    if sale is None or d is None:
        return None
    used = sale.points_applied
    view: dict[str, Any] = {"customer": d.customer, "points": used, "held": d.points, "mode": d.mode,
                            "amount": daemon.fmt.amount(used * d.value), "capped": used < d.points}  # fmt: skip
    if used < d.points:
        view["message"] = (f"the sale now takes only {used} of the {d.points} points; the other {d.points - used} "
                           "go back to the customer when it is paid")  # fmt: skip
    return view


def _open_sale_named(daemon: Daemon, session: Session, sale_id: str) -> Sale:
    sale = daemon._current(session)
    if sale.id != sale_id.strip().lower():
        raise NotFound(f"sale {sale_id[:64]} is not the open sale of this till")
    return sale


async def _pay(daemon: Daemon, session: Session, what: str, plan: Callable[[Sale], R], ask: Callable[[R], Any],
               tender: Callable[[Sale, R, Any], Tender], print_receipt: bool) -> dict[str, Any]:  # fmt: skip
    """Plan on the loop, ask the shop in an executor, tender on the loop; complete the sale when paid."""
    from kiosk_ui.auth import ApprovalRequired

    _seller(daemon, session)
    sale = daemon._current(session)
    if daemon.needs:
        raise ApprovalRequired(daemon.needs[0])
    r = plan(sale)
    daemon.busy = what
    daemon.hub.publish("payment", state="waiting", amount=None)
    try:
        answer = await daemon._io(ask, r)
    finally:
        daemon.busy = None
    paid = tender(sale, r, answer)
    daemon.hub.publish("payment", state="approved", amount=daemon.fmt.amount(paid.amount))
    out: dict[str, Any] = {"tender": _tender_view(daemon, paid)}
    t = sale.totals()
    if t.due > 0:
        daemon._show_total(t.total, paid=t.paid)
        return {**out, "cart": daemon._changed("paid"), "receipt": None}
    receipt = await daemon._complete(session, sale, print_receipt)
    return {**out, "cart": daemon.cart(), "receipt": receipt}


def create_router(daemon: Daemon) -> APIRouter:
    """The gift card, store credit and loyalty endpoints of ``daemon``."""
    api = APIRouter(prefix="/api/v1")

    @api.get("/accounts/stored-value/{account}", summary="Balance of a gift card or store credit (the shop's, "
             "else the last this till knows)")  # fmt: skip
    async def balance(account: Annotated[str, PathParam(min_length=1, max_length=40)], s: S) -> dict[str, Any]:
        _seller(daemon, s)
        wallet = daemon.t.stored_value
        from appliance.stored_value import normalise

        code = normalise(account)
        b = wallet.settle(code, await daemon._io(wallet.ask_balance, code))
        return {"account": b.account, "kind": b.kind, "balance": daemon.fmt.amount(b.balance), "currency": b.currency,
                "source": b.source, "known_at": daemon.fmt.when(b.known_at) if b.known_at else None}  # fmt: skip

    @api.get("/accounts/loyalty/{customer}", summary="A customer's loyalty points (the shop's, else the last known)")
    async def points(customer: Annotated[str, PathParam(min_length=1, max_length=64)], s: S,
                     value: Annotated[bool, Query(description="also give what the points pay")] = True
                     ) -> dict[str, Any]:  # fmt: skip
        _seller(daemon, s)
        loyalty = daemon.t.loyalty
        who = customer.strip()
        p = loyalty.settle(who, await daemon._io(loyalty.ask_balance, who))
        out: dict[str, Any] = {"customer": p.customer, "points": p.points, "source": p.source}
        if value:
            out["value"] = daemon.fmt.amount(max(p.points, 0) * loyalty.rules.point_value)
        return out

    @api.post("/cart/payments/stored-value", summary="Pay with a gift card or store credit; a paid sale is committed")
    async def pay_stored_value(body: StoredValuePayIn, s: S) -> dict[str, Any]:
        wallet = daemon.t.stored_value
        return await _pay(daemon, s, "gift card", lambda sale: wallet.plan(sale, body.account, body.amount), wallet.ask,
                          wallet.tender, body.print)  # fmt: skip

    @api.post("/cart/payments/points", summary="Pay with the attached customer's loyalty points")
    async def pay_points(body: PointsPayIn, s: S) -> dict[str, Any]:
        loyalty = daemon.t.loyalty
        return await _pay(daemon, s, "points", lambda sale: loyalty.plan(sale, body.points), loyalty.ask,
                          loyalty.tender, body.print)  # fmt: skip

    @api.post("/sales/{sale_id}/loyalty-discount", summary="Take the attached customer's points off the open "
              "sale's price (a discount, before payment)")  # fmt: skip
    async def take_points_off(sale_id: Annotated[str, PathParam(min_length=1, max_length=64)], body: PointsDiscountIn,
                              s: S) -> dict[str, Any]:  # fmt: skip
        _seller(daemon, s)
        loyalty = daemon.t.loyalty
        sale = _open_sale_named(daemon, s, sale_id)
        r = loyalty.plan_discount(sale, body.points)
        daemon.busy = "points"
        try:
            answer = await daemon._io(loyalty.ask, r)
        finally:
            daemon.busy = None
        loyalty.discount(sale, r, answer)
        daemon._show_total(sale.totals().total)
        return {"points_discount": points_discount_view(daemon, sale), "cart": daemon._changed("points")}

    @api.delete("/sales/{sale_id}/loyalty-discount", summary="Take the points discount off the open sale; its "
                "points go back to the customer")  # fmt: skip
    async def remove_points_discount(sale_id: Annotated[str, PathParam(min_length=1, max_length=64)], s: S
                                     ) -> dict[str, Any]:  # fmt: skip
        _seller(daemon, s)
        sale = _open_sale_named(daemon, s, sale_id)
        d = daemon.t.loyalty.remove_discount(sale, actor=s.actor)
        daemon._show_total(sale.totals().total)
        return {"points_discount": None, "released": d.points, "cart": daemon._changed("points")}

    @api.post("/cart/gift-cards", summary="Sell a gift card, or top one up; it is credited when the sale completes")
    async def sell_gift_card(body: GiftCardIn, s: S) -> dict[str, Any]:
        _seller(daemon, s)
        wallet = daemon.t.stored_value
        if daemon.busy:
            raise SaleError(f"{daemon.busy} payment in progress; wait for it")
        if body.account is not None:  # learn the card first, so the line is a top-up of what the shop knows
            from appliance.stored_value import normalise

            code = normalise(body.account)
            try:
                answer = await daemon._io(wallet.ask_balance, code)
            except NotFound:
                answer = None
            if answer is not None:
                wallet.remember(answer)
        sale = daemon._open_sale(s)
        line = wallet.card_line(sale, body.amount, body.account)
        view = daemon._changed("gift_card", line=line.no)
        return {"cart": view, "account": line.scan.code if line.scan else None}

    return api
