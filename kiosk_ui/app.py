"""The kiosk API (``/api/v1``, OpenAPI at ``/api/v1/openapi.json``) and the four screens.

Every handler is ``async`` and runs on the daemon's loop: the daemon's state is never
touched from a worker thread. Errors are JSON ``{"error": {"code", "message"}}`` with a
4xx status; a request that is refused records nothing. Mutating endpoints need a bearer
session (``Authorization: Bearer TOKEN``) whose role allows the action, or a supervisor's
approval token for it. There is no CORS: the screens are served from the same origin.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, FastAPI, Query, Request, WebSocket
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocketDisconnect

from appliance import __version__
from appliance.errors import (
    BarcodeError,
    ConfigError,
    DeviceMisconfigured,
    DeviceUnavailable,
    InputError,
    LedgerError,
    NotFound,
    PaymentDeclined,
    SaleError,
    TillboxError,
)
from appliance.staff import AuthError
from kiosk_ui import models as m
from kiosk_ui.auth import ApprovalRequired, Forbidden, Session, Unauthenticated

if TYPE_CHECKING:
    from appliance.daemon import Daemon

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
PAGES = {"cashier": "cashier.html", "self-checkout": "self-checkout.html",
         "customer-display": "customer-display.html", "technician": "technician.html"}  # fmt: skip
MAX_BODY = 64 * 1024
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")  # fmt: skip


class LoginFailed(TillboxError):
    """Wrong PIN or unknown badge at login (HTTP 401)."""


def error_status(exc: TillboxError) -> tuple[int, str]:
    """HTTP status and error code of an appliance error."""
    table: list[tuple[type[TillboxError], int, str]] = [
        (LoginFailed, 401, "login_failed"), (Unauthenticated, 401, "unauthenticated"),
        (ApprovalRequired, 403, "approval_required"), (Forbidden, 403, "forbidden"), (AuthError, 403, "denied"),
        (NotFound, 404, "not_found"), (BarcodeError, 422, "bad_barcode"), (InputError, 422, "invalid_input"),
        (PaymentDeclined, 402, "declined"), (SaleError, 409, "conflict"), (ConfigError, 409, "config"),
        (DeviceUnavailable, 503, "device_unavailable"), (DeviceMisconfigured, 503, "device_misconfigured"),
        (LedgerError, 503, "ledger"),
    ]  # fmt: skip
    for cls, status, code in table:
        if isinstance(exc, cls):
            return status, code
    return 400, "refused"


def _error(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": {"code": code, "message": message, **extra}}, status_code=status, headers=headers)


bearer = HTTPBearer(auto_error=False, description="session token from /api/v1/session/*")


async def current_session(
    request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Session:
    """The caller's live session (401 without one)."""
    daemon: Daemon = request.app.state.daemon
    return daemon.sessions.get(creds.credentials if creds else None)


S = Annotated[Session, Depends(current_session)]


class Guard:
    """Pure ASGI middleware: request size limit, security headers, WebSocket origin check."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            headers = dict(scope["headers"])
            origin = headers.get(b"origin", b"").decode("latin-1")
            host = headers.get(b"host", b"").decode("latin-1")
            if origin and urlsplit(origin).netloc != host:
                await send({"type": "websocket.close", "code": 4403})
                return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and (not value.isdigit() or int(value) > MAX_BODY):
                await _error(413, "too_large", f"request bodies are limited to {MAX_BODY} bytes")(scope, receive, send)
                return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
                            (b"x-frame-options", b"DENY"), (b"referrer-policy", b"no-referrer"),
                            (b"cache-control", b"no-store")]  # fmt: skip
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(daemon: Daemon) -> FastAPI:
    """The ASGI app of ``daemon``."""
    app = FastAPI(title="tillbox kiosk API", version=__version__, openapi_url="/api/v1/openapi.json",
                  docs_url=None, redoc_url=None,
                  description="Local API of the tillbox till: sessions, cart, payments, shifts, returns, "
                              "technician tools. Amounts are integer minor units.")  # fmt: skip
    app.state.daemon = daemon
    api = APIRouter(prefix="/api/v1")

    @app.exception_handler(TillboxError)
    async def tillbox_error(request: Request, exc: TillboxError) -> JSONResponse:
        status, code = error_status(exc)
        extra: dict[str, Any] = {"action": str(exc.action)} if isinstance(exc, ApprovalRequired) else {}
        if status >= 500:
            log.warning("%s %s: %s", request.method, request.url.path, exc)
        return _error(status, code, str(exc), **extra)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = f"{where}: {first.get('msg', 'invalid')}" if where else str(first.get("msg", "invalid request"))
        details = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))} for e in errors[:10]]
        return _error(422, "invalid_request", message, details=details)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "no_such_path", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return _error(500, "internal", "internal error; see the technician log")

    # -- public --------------------------------------------------------------------------------

    @api.get("/health", summary="Daemon and device health (no session needed)")
    async def health() -> dict[str, Any]:
        return daemon.health()

    @api.get("/ui", summary="Screen settings: languages, locale, currency, store, idle promotions")
    async def ui() -> dict[str, Any]:
        c = daemon.config
        return {"languages": list(c.ui.languages), "default_language": c.ui.default_language,
                "locale": c.currency_settings.locale, "currency": c.currency.code, "exponent": c.currency.exponent,
                "store": c.store.name,
                "device": c.store.device_id, "lane_cash": daemon.devices.cash_acceptor,
                "scale": daemon.devices.scale is not None, "simulated": bool(daemon.devices.sim),
                "promotions": daemon.promotions() if daemon.ready else []}  # fmt: skip

    # -- sessions ------------------------------------------------------------------------------

    def opened(s: Session) -> dict[str, Any]:
        return {"token": s.token, **s.public(), "idle_minutes": daemon.config.staff.session_minutes}

    @api.post("/session/pin", summary="Staff login by id and PIN")
    async def login_pin(body: m.PinLogin) -> dict[str, Any]:
        try:
            return opened(daemon.login_pin(body.staff_id, body.pin))
        except AuthError as exc:
            raise LoginFailed(str(exc)) from None

    @api.post("/session/badge", summary="Staff login by badge: waits for the next badge read")
    async def login_badge(body: m.BadgeLogin) -> dict[str, Any]:
        try:
            return opened(await daemon.login_badge(body.timeout))
        except AuthError as exc:
            raise LoginFailed(str(exc)) from None

    @api.post("/session/device", summary="Device session of a kiosk screen, by the kiosk key")
    async def login_device(body: m.DeviceLogin) -> dict[str, Any]:
        return opened(daemon.login_device(body.key, body.kind))

    @api.get("/session", summary="The caller's own session")
    async def whoami(s: S) -> dict[str, Any]:
        return s.public()

    @api.delete("/session", summary="Log out")
    async def logout(s: S) -> dict[str, Any]:
        daemon.logout(s)
        return {"ok": True}

    @api.post("/approvals", summary="A supervisor approves one action (PIN or badge); returns an approval token")
    async def approve(body: m.ApprovalIn, s: S) -> dict[str, Any]:
        token, approval = await daemon.request_approval(s, body.action, staff_id=body.staff_id, pin=body.pin,
                                                        badge=body.badge, timeout=body.timeout)  # fmt: skip
        return {"approval": token, "action": str(approval.action), "approver": approval.approver,
                "expires_in": daemon.config.staff.approval_seconds}  # fmt: skip

    # -- cart ----------------------------------------------------------------------------------

    @api.get("/cart", summary="The open sale")
    async def cart(s: S) -> dict[str, Any]:
        return daemon.cart()

    @api.post("/cart/items", summary="Scan a code or add a SKU (weighed items are weighed on the scale)")
    async def add_item(body: m.AddItem, s: S) -> dict[str, Any]:
        return await daemon.add_item(s, code=body.code, sku=body.sku, quantity=m.decimal_or_none(body.quantity))

    @api.patch("/cart/lines/{no}", summary="Change a line's quantity or weight")
    async def set_quantity(no: Annotated[int, PathParam(ge=1, le=9999)], body: m.SetQuantity, s: S) -> dict[str, Any]:
        from decimal import Decimal

        return daemon.set_quantity(s, no, Decimal(body.quantity))

    @api.post("/cart/lines/{no}/void", summary="Void a line")
    async def void_line(no: Annotated[int, PathParam(ge=1, le=9999)], body: m.VoidLine, s: S) -> dict[str, Any]:
        return daemon.void_line(s, no, body.reason, body.approval)

    @api.post("/cart/lines/{no}/discount", summary="Discount one line (percent or amount)")
    async def discount_line(no: Annotated[int, PathParam(ge=1, le=9999)], body: m.DiscountIn, s: S) -> dict[str, Any]:
        return daemon.discount_line(s, no, m.decimal_or_none(body.percent), body.amount, body.reason, body.approval)

    @api.post("/cart/lines/{no}/price", summary="Override a line's unit price")
    async def override(no: Annotated[int, PathParam(ge=1, le=9999)], body: m.PriceIn, s: S) -> dict[str, Any]:
        return daemon.override_price(s, no, body.price, body.reason, body.approval)

    @api.post("/cart/discount", summary="Discount the whole cart")
    async def discount_cart(body: m.DiscountIn, s: S) -> dict[str, Any]:
        return daemon.discount_cart(s, m.decimal_or_none(body.percent), body.amount, body.reason, body.approval)

    @api.post("/cart/coupons", summary="Enter a coupon code")
    async def coupon(body: m.CouponIn, s: S) -> dict[str, Any]:
        return daemon.add_coupon(s, body.code)

    @api.post("/cart/customer", summary="Attach (or with null, detach) a customer")
    async def attach(body: m.CustomerRef, s: S) -> dict[str, Any]:
        return daemon.attach_customer(s, body.customer_id)

    @api.post("/cart/approve", summary="Clear the sale's pending intervention (age check) with an approval")
    async def approve_cart(body: m.ApprovalUse, s: S) -> dict[str, Any]:
        return daemon.approve_interventions(s, body.approval)

    @api.post("/cart/attendant", summary="Call an attendant to the lane")
    async def attendant(s: S) -> dict[str, Any]:
        daemon._seller(s)
        daemon.call_attendant("help requested")
        return {"ok": True}

    @api.post("/cart/suspend", summary="Park the sale")
    async def suspend(s: S) -> dict[str, Any]:
        return daemon.suspend(s)

    @api.post("/cart/cancel", summary="Void the whole sale")
    async def cancel(body: m.CancelIn, s: S) -> dict[str, Any]:
        return daemon.cancel(s, body.reason, body.approval)

    @api.post("/cart/payments", summary="Pay cash or card; a fully paid sale is committed and printed")
    async def pay(body: m.PaymentIn, s: S) -> dict[str, Any]:
        return await daemon.pay(s, body.kind, body.amount, print_receipt=body.print)

    @api.get("/suspended", summary="Parked sales")
    async def suspended(s: S) -> list[dict[str, Any]]:
        return daemon.suspended(s)

    @api.post("/suspended/{sale_id}/resume", summary="Bring a parked sale back")
    async def resume(sale_id: Annotated[str, PathParam(min_length=1, max_length=64)], s: S) -> dict[str, Any]:
        return daemon.resume(s, sale_id)

    # -- receipts ------------------------------------------------------------------------------

    @api.post("/receipts/last/print", summary="Print the receipt of the sale just completed")
    async def print_last(s: S) -> dict[str, Any]:
        return await daemon.print_last(s)

    @api.post("/receipts/reprint", summary="Reprint a receipt as a COPY (journaled)")
    async def reprint(body: m.ReprintIn, s: S) -> dict[str, Any]:
        return await daemon.reprint(s, body.reference)

    # -- catalog, scale, customers -------------------------------------------------------------

    @api.get("/catalog/search", summary="Search items by name or SKU")
    async def search(q: Annotated[str, Query(min_length=1, max_length=64)], s: S) -> list[dict[str, Any]]:
        return daemon.search(s, q)

    @api.get("/catalog/produce", summary="Items sold by weight, for lookup without a barcode")
    async def produce(s: S) -> list[dict[str, Any]]:
        return daemon.produce(s)

    @api.get("/scale", summary="A stable weight from the scale")
    async def scale(s: S) -> dict[str, Any]:
        daemon._seller(s)
        weight = await daemon.weigh()
        return {"kg": str(weight), "text": daemon.fmt.qty(weight, "kg")}

    @api.get("/customers", summary="Find customers by name, email or phone")
    async def customers(q: Annotated[str, Query(min_length=1, max_length=120)], s: S) -> list[dict[str, Any]]:
        return daemon.find_customers(s, q)

    @api.post("/customers", summary="Add a customer")
    async def add_customer(body: m.CustomerIn, s: S) -> dict[str, Any]:
        return daemon.add_customer(s, body.name, body.email, body.phone, body.consent)

    # -- shift ---------------------------------------------------------------------------------

    @api.get("/shift", summary="The open shift, or null")
    async def shift(s: S) -> dict[str, Any] | None:
        return daemon.shift()

    @api.post("/shift/open", summary="Open a shift with a counted float")
    async def open_shift(body: m.ShiftOpen, s: S) -> dict[str, Any] | None:
        return daemon.open_shift(s, body.float)

    @api.post("/shift/cash", summary="Paid-in, paid-out or safe drop")
    async def cash(body: m.CashMove, s: S) -> dict[str, Any]:
        await daemon.cash_move(s, body.kind, body.amount, body.reason, body.approval)
        return {"ok": True}

    @api.post("/shift/no-sale", summary="Open the drawer without a sale")
    async def no_sale(body: m.NoSale, s: S) -> dict[str, Any]:
        await daemon.no_sale(s, body.reason, body.approval)
        return {"ok": True}

    @api.get("/reports/x", summary="X report of the open shift")
    async def x_report(s: S) -> dict[str, Any]:
        return daemon.x_report(s)

    @api.post("/shift/close", summary="Z report: close the shift with the cash count")
    async def close_shift(body: m.ShiftClose, s: S) -> dict[str, Any]:
        counted: dict[int, int] | int | None = body.counted_total
        if body.counted is not None:
            counted = {}
            for c in body.counted:
                counted[c.denomination] = counted.get(c.denomination, 0) + c.count
        return daemon.close_shift(s, counted, body.approval)

    # -- returns -------------------------------------------------------------------------------

    @api.get("/sales/{reference}", summary="A past sale, for a return")
    async def find_sale(reference: Annotated[str, PathParam(min_length=1, max_length=64)], s: S) -> dict[str, Any]:
        return await daemon.find_sale(s, reference)

    @api.post("/returns", summary="Refund lines of a sale, or items without a receipt")
    async def refund(body: m.ReturnIn, s: S) -> dict[str, Any]:
        return await daemon.refund(s, body.reference, [ln.model_dump() for ln in body.lines], body.reason,
                                   body.approval, card_present=body.card_present)  # fmt: skip

    @api.post("/exchanges", summary="Exchange: return lines of a sale against the open sale")
    async def exchange(body: m.ExchangeIn, s: S) -> dict[str, Any]:
        return await daemon.exchange(s, body.reference, [ln.model_dump() for ln in body.lines], body.reason,
                                     body.approval)  # fmt: skip

    # -- technician ----------------------------------------------------------------------------

    @api.get("/tech/devices", summary="Devices with health and last error")
    async def tech_devices(s: S) -> list[dict[str, Any]]:
        return daemon.tech_devices(s)

    @api.post(
        "/tech/test/{device}",
        summary="Self-test: print, drawer kick, display pattern, scale, terminal, or read one scan",
    )
    async def tech_test(device: Annotated[str, PathParam(pattern="^(printer|drawer|display|scanner|scale|terminal)$")],
                        s: S) -> dict[str, Any]:  # fmt: skip
        return await daemon.tech_test(s, device)

    @api.get("/tech/sync", summary="Network and MQTT status with the outbox backlog")
    async def tech_sync(s: S) -> dict[str, Any]:
        return await daemon.sync_status(s)

    @api.get("/tech/versions", summary="Versions of tillbox and its parts")
    async def tech_versions(s: S) -> dict[str, Any]:
        return daemon.versions(s)

    @api.get("/tech/logs", summary="Recent log messages")
    async def tech_logs(s: S, limit: Annotated[int, Query(ge=1, le=500)] = 200) -> list[dict[str, str]]:
        return daemon.log_view(s, limit)

    @api.get("/tech/config", summary="The effective configuration, secrets masked")
    async def tech_config(s: S) -> dict[str, Any]:
        return daemon.config_view(s)

    # -- simulated devices ---------------------------------------------------------------------

    @api.post("/sim/{device}", summary="Feed a simulated device (demo mode only): scan, badge, or scale kg")
    async def sim(device: Annotated[str, PathParam(pattern="^(scanner|badge|scale)$")], body: m.SimInput,
                  s: S) -> dict[str, Any]:  # fmt: skip
        if not daemon.devices.sim:
            raise Forbidden("devices are not simulated")
        if device == "scale":
            from decimal import Decimal, InvalidOperation

            try:
                kg = Decimal(body.value)
            except InvalidOperation:
                raise InputError(f"{body.value!r} is not a weight in kg") from None
            if not kg.is_finite() or not Decimal(0) <= kg <= Decimal(100):
                raise InputError("a simulated weight is 0 to 100 kg")
        daemon.sim_feed(device, body.value)
        return {"ok": True}

    app.include_router(api)
    from kiosk_ui.accounts import create_router as account_routes

    app.include_router(account_routes(daemon))  # gift cards, store credit, loyalty
    from kiosk_ui.customers import create_router as customer_routes

    app.include_router(customer_routes(daemon))
    from kiosk_ui.orders import create_router as order_routes

    app.include_router(order_routes(daemon))

    # -- live updates --------------------------------------------------------------------------

    @app.websocket("/api/v1/ws")
    async def live(ws: WebSocket) -> None:
        await ws.accept()
        try:
            first = json.loads(await asyncio.wait_for(ws.receive_text(), 10))
            token = first.get("token") if isinstance(first, dict) else None
            s = daemon.sessions.get(token if isinstance(token, str) else None)
        except TimeoutError:  # a slow start is not a bad session: the screen connects again
            with contextlib.suppress(Exception):
                await ws.close(code=4408)
            return
        except (ValueError, Unauthenticated, WebSocketDisconnect, KeyError):
            with contextlib.suppress(Exception):
                await ws.close(code=4401)
            return
        q = daemon.hub.subscribe(s.token)
        hello = {"type": "hello", "session": s.public(), "cart": daemon.cart(), "health": daemon.health(),
                 "alerts": daemon._alerts, "shift": daemon.shift(), "promotions": daemon.promotions()}  # fmt: skip
        receiver = asyncio.create_task(_drain(ws))
        try:
            await ws.send_text(json.dumps(hello, default=str))
            while True:
                getter = asyncio.create_task(q.get())
                done, _ = await asyncio.wait({getter, receiver}, timeout=5, return_when=asyncio.FIRST_COMPLETED)
                if receiver in done:
                    getter.cancel()
                    return
                if getter in done:
                    text = getter.result()
                    await ws.send_text(text)
                    if text.startswith('{"type": "session.expired"'):
                        await ws.close(code=4401)
                        return
                else:
                    getter.cancel()
                    try:
                        daemon.sessions.peek(s.token)
                    except Unauthenticated:
                        await ws.close(code=4401)
                        return
        except (WebSocketDisconnect, RuntimeError, OSError):
            return
        finally:
            daemon.hub.unsubscribe(q)
            receiver.cancel()

    # -- screens -------------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return FileResponse(STATIC / "index.html")

    def page(name: str) -> Any:
        async def handler() -> Response:
            return FileResponse(STATIC / PAGES[name])

        return handler

    for route in PAGES:
        app.add_api_route(f"/{route}", page(route), methods=["GET"], include_in_schema=False)
    app.add_api_route("/favicon.ico", lambda: RedirectResponse("/static/img/icon.svg"), include_in_schema=False)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    host = daemon.config.ui.listen_host
    hosts = ["*"] if host in ("0.0.0.0", "::") else ["127.0.0.1", "localhost", "[::1]", host]  # noqa: S104
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=hosts)
    app.add_middleware(Guard)
    return app


async def _drain(ws: WebSocket) -> None:
    """Read (and ignore) client messages until the client goes away."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
