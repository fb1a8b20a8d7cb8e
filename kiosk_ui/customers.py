"""Kiosk API for customers: identify, register, consent, erase, purchase history (``/api/v1/customers/...``).

Identifying asks the shop's customer record (``Customers.ask_shop``) in an executor, so
the loop never waits on the network, and applies the answer on the loop (the ledger is
only written there). Offline, only customers cached on this till (with consent) are found.
The purchase history is the shop's (``Customers.history``, asked in an executor): offline
there is none. Every endpoint needs a staff session that may sell; erasure needs the
``erase_customer`` action (a manager, or a manager's approval token).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Query
from fastapi import Path as PathParam
from pydantic import Field, StringConstraints

from appliance.customers import HISTORY_LIMIT, HISTORY_MAX, Customer, History, Purchase, check_id
from appliance.errors import DeviceUnavailable, TillboxError
from appliance.money import Currency
from appliance.staff import Action
from kiosk_ui.app import S
from kiosk_ui.models import Strict, Text, Token

if TYPE_CHECKING:
    from appliance.daemon import Daemon
    from kiosk_ui.auth import Session

CustomerToken = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")]
Email = Annotated[str, StringConstraints(max_length=254)]
Short = Annotated[str, StringConstraints(max_length=64)]
CustomerId = Annotated[str, PathParam(min_length=1, max_length=64)]
Limit = Annotated[int, Query(ge=1, le=HISTORY_MAX, description="purchases per page")]
Cursor = Annotated[str | None, Query(min_length=1, max_length=400, pattern=r"^[A-Za-z0-9_-]+$",
                                     description="the next of the previous page")]  # fmt: skip


class IdentifyIn(Strict):
    token: CustomerToken = Field(description="phone, email, loyalty card, badge number, customer id or app QR code")
    attach: bool = Field(False, description="attach the customer to the open sale (if any) when exactly one matches")


class BadgeIdentifyIn(Strict):
    attach: bool = False
    timeout: int = Field(20, ge=1, le=60, description="seconds to wait for the customer's badge")


class RegisterIn(Strict):
    name: Text
    email: Email | None = None
    phone: Annotated[str, StringConstraints(max_length=40)] | None = None
    card: Short | None = None
    badge: Short | None = None
    consent: bool = Field(False, description="the customer agrees that the shop's tills keep their record")
    attach: bool = False


class ConsentIn(Strict):
    consent: bool


class EraseIn(Strict):
    approval: Token | None = None


def customer_view(c: Customer) -> dict[str, Any]:
    """A customer as the cashier screen shows them."""
    return {"id": c.id, "name": c.name, "email": c.email, "phone": c.phone, "card": c.card, "consent": c.consent,
            "cached": c.cached, "erased": c.erased}  # fmt: skip


def purchase_view(daemon: Daemon, p: Purchase) -> dict[str, Any]:
    """A purchase as the customer panel lists it: when, where, reference, total, and whether it can be returned."""

    def amount(minor: int | None) -> dict[str, Any] | None:
        if minor is None or p.currency is None:
            return None
        if p.currency == daemon.t.currency.code:
            return daemon.fmt.amount(minor)
        return {"minor": minor, "text": Currency.of(p.currency).format(minor, daemon.fmt.locale)}

    return {"channel": p.channel, "where": "online" if p.channel == "online" else f"{p.store} · {p.device}",
            "store": p.store, "device": p.device, "reference": p.reference, "sale_id": p.sale_id, "time": p.time,
            "date": daemon.fmt.when(p.time), "total": amount(p.total), "currency": p.currency,
            "refunded": amount(p.refunded) if p.refunded else None, "returnable": p.returnable}  # fmt: skip


def history_view(daemon: Daemon, h: History) -> dict[str, Any]:
    return {"customer": h.customer, "purchases": [purchase_view(daemon, p) for p in h.purchases], "next": h.next,
            "available": True, "message": None}  # fmt: skip


def _seller(daemon: Daemon, session: Session) -> None:
    daemon.authorize(session, Action.SELL, staff_only=True, approvable=False)


def _has_open_sale(daemon: Daemon) -> bool:
    sale = daemon.sale
    return sale is not None and sale.state == "open" and bool(sale.lines)


async def identify(daemon: Daemon, session: Session, token: str, *, attach: bool) -> dict[str, Any]:
    """Identify a customer (the shop first, the cache offline); attach them to the open sale if asked.

    ``source`` says who answered: ``shop`` or ``cache`` (this till, the shop unreachable).
    """
    _seller(daemon, session)
    customers = daemon.t.customers
    answer = await daemon._io(customers.ask_shop, token)
    found = customers.settle(token, answer, now=daemon.clock.now())
    out: dict[str, Any] = {"customers": [customer_view(c) for c in found],
                           "source": "cache" if answer is None else "shop"}  # fmt: skip
    if len(found) == 1:
        out["customer"] = customer_view(found[0])
        if attach and _has_open_sale(daemon):
            out["cart"] = daemon.attach_customer(session, found[0].id)
    return out


async def scanned(daemon: Daemon, session: Session, code: str) -> None:
    """A customer's app QR code was scanned: identify them and attach them to the open sale, if any."""
    try:
        out = await identify(daemon, session, code, attach=True)
    except TillboxError as exc:
        daemon.hub.publish("notice", level="error", code="customer", message=f"customer QR code: {exc}")
        return
    name = out["customer"]["name"] if "customer" in out else f"{len(out['customers'])} customers"
    daemon.hub.publish("notice", level="info", message=f"customer: {name}")


def create_router(daemon: Daemon) -> APIRouter:
    """The customer endpoints of ``daemon``, under ``/api/v1/customers``."""
    api = APIRouter(prefix="/api/v1/customers")

    @api.post("/identify", summary="Identify a customer at the shop by phone, email, card, badge, id or app QR code")
    async def identify_customer(body: IdentifyIn, s: S) -> dict[str, Any]:
        return await identify(daemon, s, body.token, attach=body.attach)

    @api.post("/identify/badge", summary="Identify a customer by the next badge read")
    async def identify_badge(body: BadgeIdentifyIn, s: S) -> dict[str, Any]:
        _seller(daemon, s)
        token = await daemon.wait_badge(body.timeout)
        return await identify(daemon, s, token, attach=body.attach)

    @api.post("/register", summary="Register a customer: published to the shop, kept here only with consent")
    async def register(body: RegisterIn, s: S) -> dict[str, Any]:
        _seller(daemon, s)
        c = daemon.t.customers.add(body.name, email=body.email or None, phone=body.phone or None,
                                   card=body.card or None, badge=body.badge or None, consent=body.consent,
                                   now=daemon.clock.now(), actor=s.actor)  # fmt: skip
        out: dict[str, Any] = {"customer": customer_view(c)}
        if body.attach and _has_open_sale(daemon):
            out["cart"] = daemon.attach_customer(s, c.id)
        return out

    @api.post("/{customer_id}/consent", summary="Record the customer's consent, or its withdrawal")
    async def consent(customer_id: CustomerId, body: ConsentIn, s: S) -> dict[str, Any]:
        _seller(daemon, s)
        c = daemon.t.customers.set_consent(check_id(customer_id), body.consent, daemon.clock.now(), s.actor)
        return {"customer": customer_view(c)}

    @api.get("/{customer_id}/history", summary="The customer's purchases at every till and online, newest first")
    async def history(customer_id: CustomerId, s: S, limit: Limit = HISTORY_LIMIT,
                      before: Cursor = None) -> dict[str, Any]:  # fmt: skip
        _seller(daemon, s)
        ask = functools.partial(daemon.t.customers.history, check_id(customer_id), limit, before=before)
        try:
            found = await daemon._io(ask)
        except DeviceUnavailable as exc:  # offline is a normal state of a till, not a failure of this API
            return {"customer": customer_id, "purchases": [], "next": None, "available": False, "message": str(exc)}
        return history_view(daemon, found)

    @api.post("/{customer_id}/erase", summary="Erase a customer's personal data here and at the shop")
    async def erase(customer_id: CustomerId, body: EraseIn, s: S) -> dict[str, Any]:
        approval = daemon.authorize(s, Action.ERASE_CUSTOMER, body.approval, staff_only=True)
        daemon.t.customers.erase(check_id(customer_id), approval, daemon.clock.now())
        if daemon.sale is not None and daemon.sale.customer_id == customer_id and daemon.sale.state == "open":
            daemon.sale.customer_id = None
        return {"erased": customer_id}

    return api
