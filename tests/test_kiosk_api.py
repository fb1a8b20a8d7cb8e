"""The kiosk API against a real daemon on a loopback port: sessions, roles, approvals, bad input, live updates."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance.clock import FrozenClock
from appliance.config import Config, parse_config
from appliance.daemon import Daemon
from kiosk_ui.testing import DaemonThread, demo_config, demo_prepare, leftover_threads

WATER, PEN, MILK, WINE = "4006381333931", "4006381000130", "4012345678901", "4006040014003"


class Api:
    """A tiny client: ``api.post(path, json, token)`` returning (status, body)."""

    def __init__(self, running: DaemonThread) -> None:
        self.running = running
        self.http = httpx.Client(base_url=running.url + "/api/v1", timeout=10)

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def call(self, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        res = self.http.request(method, path, json=body, headers=headers)
        return res.status_code, res.json() if res.content else None

    def get(self, path: str, token: str | None = None) -> tuple[int, Any]:
        return self.call("GET", path, token=token)

    def post(self, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
        return self.call("POST", path, {} if body is None else body, token)

    def login(self, staff: str, pin: str) -> str:
        status, body = self.post("/session/pin", {"staff_id": staff, "pin": pin})
        assert status == 200, body
        return str(body["token"])

    def device(self, kind: str = "self_checkout") -> str:
        key = self.running.daemon.key
        assert key is not None
        status, body = self.post("/session/device", {"key": key.value, "kind": kind})
        assert status == 200, body
        return str(body["token"])

    def head(self) -> int:
        """The journal's last sequence number (read on the daemon's loop)."""
        return self.running.call(lambda: self.running.daemon.t.ledger.head()[0])


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(datetime(2026, 3, 2, 9, 30, tzinfo=UTC))


def _start(tmp_path: Path, clock: FrozenClock, config: Config | None = None, *, shift: bool = True) -> DaemonThread:
    daemon = Daemon(config or demo_config(), tmp_path, clock=clock, fast_hash=True,
                    prepare=demo_prepare(shift=shift), health_interval=0.2)  # fmt: skip
    return DaemonThread(daemon).start()


@pytest.fixture
def running(tmp_path: Path, clock: FrozenClock) -> Iterator[DaemonThread]:
    before = {t.ident for t in threading.enumerate()}
    r = _start(tmp_path, clock)
    try:
        yield r
    finally:
        r.stop()
    left = leftover_threads(before)
    assert not left, f"threads left behind: {left}"


@pytest.fixture
def api(running: DaemonThread) -> Iterator[Api]:
    with Api(running) as client:
        yield client


# -- public endpoints and documents ----------------------------------------------------------------


def test_health_openapi_and_pages(api: Api, running: DaemonThread) -> None:
    status, health = api.get("/health")
    assert status == 200 and health["status"] == "ok"
    assert set(health["devices"]) >= {"scanner", "printer", "drawer", "display"}
    status, doc = api.get("/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    assert "/api/v1/cart/items" in doc["paths"] and "/api/v1/health" in doc["paths"]
    for page in ("/cashier", "/self-checkout", "/customer-display", "/technician", "/"):
        res = httpx.get(running.url + page)
        assert res.status_code == 200 and res.text.startswith("<!doctype html>")
        assert "default-src 'self'" in res.headers["content-security-policy"]
        assert "access-control-allow-origin" not in res.headers
    res = httpx.get(running.url + "/static/common.js")
    assert res.status_code == 200 and "export async function api" in res.text
    status, ui = api.get("/ui")
    assert ui["languages"] == ["en", "de"] and ui["currency"] == "EUR" and ui["exponent"] == 2


def test_no_cors_and_foreign_hosts_refused(running: DaemonThread) -> None:
    res = httpx.options(running.url + "/api/v1/cart", headers={"Origin": "http://evil.example",
                                                              "Access-Control-Request-Method": "POST"})  # fmt: skip
    assert "access-control-allow-origin" not in res.headers
    res = httpx.get(running.url + "/api/v1/health", headers={"Host": "evil.example"})
    assert res.status_code == 400  # DNS rebinding: only local host names are served


# -- sessions --------------------------------------------------------------------------------------


def test_login_logout_and_lockout_messages(api: Api) -> None:
    status, body = api.post("/session/pin", {"staff_id": "ann", "pin": "0000"})
    assert status == 401 and body["error"]["code"] == "login_failed"
    token = api.login("ann", "1234")
    status, me = api.get("/session", token)
    assert status == 200 and me["staff"] == {"id": "ann", "name": "Ann Cashier", "role": "cashier"}
    assert api.call("DELETE", "/session", token=token)[0] == 200
    status, body = api.get("/session", token)
    assert status == 401 and body["error"]["code"] == "unauthenticated"


def test_sessions_expire_after_idle_minutes(api: Api, clock: FrozenClock) -> None:
    token = api.login("ann", "1234")
    clock.advance(14 * 60)
    assert api.get("/cart", token)[0] == 200  # used: the idle time starts again
    clock.advance(14 * 60)
    assert api.get("/cart", token)[0] == 200
    clock.advance(15 * 60 + 1)
    status, body = api.post("/cart/items", {"code": WATER}, token)
    assert status == 401 and "expired" in body["error"]["message"]


def test_device_sessions_need_the_kiosk_key(api: Api, running: DaemonThread, tmp_path: Path) -> None:
    status, _ = api.post("/session/device", {"key": "x" * 43, "kind": "self_checkout"})
    assert status == 401
    key_file = tmp_path / "kiosk.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert key_file.read_text().strip() == running.daemon.key.value  # type: ignore[union-attr]
    lane = api.device("self_checkout")
    assert api.get("/session", lane)[1]["staff"]["role"] == "self_checkout"


# -- the auth matrix -------------------------------------------------------------------------------

#: A valid body for every mutating endpoint; the path's {no}, {sale_id} and {device} are filled in.
BODIES: dict[tuple[str, str], Any] = {
    ("DELETE", "/api/v1/session"): None,
    ("POST", "/api/v1/approvals"): {"action": "void_line", "staff_id": "sam", "pin": "9999"},
    ("POST", "/api/v1/cart/items"): {"code": WATER},
    ("PATCH", "/api/v1/cart/lines/{no}"): {"quantity": "2"},
    ("POST", "/api/v1/cart/lines/{no}/void"): {"reason": "test"},
    ("POST", "/api/v1/cart/lines/{no}/discount"): {"percent": "10", "reason": "test"},
    ("POST", "/api/v1/cart/lines/{no}/price"): {"price": 50, "reason": "test"},
    ("POST", "/api/v1/cart/discount"): {"percent": "5", "reason": "test"},
    ("POST", "/api/v1/cart/coupons"): {"code": "PEN"},
    ("POST", "/api/v1/cart/customer"): {"customer_id": None},
    ("POST", "/api/v1/cart/approve"): {"approval": "a" * 32},
    ("POST", "/api/v1/cart/attendant"): None,
    ("POST", "/api/v1/cart/suspend"): None,
    ("POST", "/api/v1/cart/cancel"): {"reason": "test"},
    ("POST", "/api/v1/cart/payments"): {"kind": "cash", "amount": 10000},
    ("POST", "/api/v1/suspended/{sale_id}/resume"): None,
    ("POST", "/api/v1/receipts/last/print"): None,
    ("POST", "/api/v1/receipts/reprint"): {"reference": "TB-till-1-000001"},
    ("POST", "/api/v1/customers"): {"name": "Eve Example", "email": "eve@example.org"},
    ("POST", "/api/v1/shift/open"): {"float": 5000},
    ("POST", "/api/v1/shift/cash"): {"kind": "paid_in", "amount": 100, "reason": "test"},
    ("POST", "/api/v1/shift/no-sale"): {"reason": "test"},
    ("POST", "/api/v1/shift/close"): {"counted_total": 10000},
    ("POST", "/api/v1/returns"): {"reference": "TB-till-1-000001", "lines": [{"line": 1}]},
    ("POST", "/api/v1/exchanges"): {"reference": "TB-till-1-000001", "lines": [{"line": 1}]},
    ("POST", "/api/v1/tech/test/{device}"): None,
    ("POST", "/api/v1/sim/{device}"): {"value": WATER},
    ("POST", "/api/v1/orders/{order_id}/picks"): {"lines": [{"line": 1, "picked": "1"}]},
    ("POST", "/api/v1/orders/{order_id}/ready"): {"short": False},
    ("POST", "/api/v1/orders/{order_id}/pack"): {"short": False},
    ("POST", "/api/v1/orders/{order_id}/slip"): None,
    ("POST", "/api/v1/orders/{order_id}/ship"): {"tracking": "T1"},
    ("POST", "/api/v1/orders/{order_id}/cancel"): {"reason": "test"},
    ("POST", "/api/v1/orders/{order_id}/handover"): {"check": "id"},
    ("POST", "/api/v1/customers/identify"): {"token": "eve@example.org"},
    ("POST", "/api/v1/cart/payments/stored-value"): {"account": "GC-AAAA-BBBB"},
    ("POST", "/api/v1/cart/payments/points"): {},
    ("POST", "/api/v1/sales/{sale_id}/loyalty-discount"): {"points": 10},
    ("DELETE", "/api/v1/sales/{sale_id}/loyalty-discount"): None,
    ("POST", "/api/v1/cart/gift-cards"): {"amount": 1000},
    ("POST", "/api/v1/customers/identify/badge"): {"timeout": 1},
    ("POST", "/api/v1/customers/register"): {"name": "Eve Example", "email": "eve@example.org"},
    ("POST", "/api/v1/customers/{customer_id}/consent"): {"consent": True},
    ("POST", "/api/v1/customers/{customer_id}/erase"): {},
}
LOGIN = {"/api/v1/session/pin", "/api/v1/session/badge", "/api/v1/session/device"}
#: Endpoints any session (even the customer display) may call: logging out and feeding demo simulators.
ANY_SESSION = {("DELETE", "/api/v1/session"), ("POST", "/api/v1/sim/{device}")}


def _mutating(running: DaemonThread) -> list[tuple[str, str]]:
    doc = httpx.get(running.url + "/api/v1/openapi.json").json()
    found = [(m.upper(), p) for p, ops in doc["paths"].items() for m in ops if m in ("post", "patch", "delete", "put")]
    return [(m, p) for m, p in found if p not in LOGIN]


def _fill(path: str, device: str = "printer") -> str:
    return path.removeprefix("/api/v1").replace("{no}", "1").replace("{sale_id}", "nope").replace("{device}", device)


def test_every_mutating_endpoint_is_listed(running: DaemonThread) -> None:
    assert set(_mutating(running)) == set(BODIES)


def test_mutating_endpoints_refuse_missing_bad_and_expired_sessions(api: Api, running: DaemonThread,
                                                                    clock: FrozenClock) -> None:  # fmt: skip
    expired = api.login("ann", "1234")
    clock.advance(16 * 60)
    head = api.head()
    for method, path in _mutating(running):
        body = BODIES[(method, path)]
        for token in (None, "not-a-session-token", expired):
            status, err = api.call(method, _fill(path), body, token)
            assert status == 401, (method, path, token, err)
            assert err["error"]["code"] == "unauthenticated"
    assert api.head() == head, "a refused request recorded something"


#: Reading endpoints that need no session.
PUBLIC_READS = {"/api/v1/health", "/api/v1/ui"}


def test_reading_endpoints_refuse_missing_and_bad_sessions(api: Api, running: DaemonThread) -> None:
    doc = httpx.get(running.url + "/api/v1/openapi.json").json()
    reads = [p for p, ops in doc["paths"].items() if "get" in ops and p not in PUBLIC_READS]
    assert "/api/v1/customers/{customer_id}/history" in reads
    for path in reads:
        filled = re.sub(r"\{[a-z_]+\}", "x1", path).removeprefix("/api/v1")
        for token in (None, "not-a-session-token"):
            status, err = api.get(filled, token)
            assert status == 401 and err["error"]["code"] == "unauthenticated", (path, token, err)


def test_roles_without_permission_are_refused(api: Api, running: DaemonThread) -> None:
    cashier = api.login("ann", "1234")
    head = api.head()
    # a cashier needs a supervisor for these: the answer names the action to approve
    for path, action in [("/api/v1/shift/cash", "cash_in_out"), ("/api/v1/shift/no-sale", "no_sale"),
                         ("/api/v1/shift/close", "close_shift")]:  # fmt: skip
        status, err = api.call("POST", _fill(path), BODIES[("POST", path)], cashier)
        assert status == 403 and err["error"] == {**err["error"], "code": "approval_required", "action": action}
    assert api.head() == head
    assert api.post("/cart/items", {"code": WATER}, cashier)[0] == 200  # a line exists for the line endpoints
    display = api.device("display")
    lane = api.device("self_checkout")
    tech = api.login("tom", "4321")
    head = api.head()
    refused: dict[str, set[tuple[str, str]]] = {"display": set(), "technician": set(), "lane": set(),
                                                "cashier": set()}  # fmt: skip
    for method, path in _mutating(running):
        body = BODIES[(method, path)]
        if (method, path) in ANY_SESSION:
            continue
        status, err = api.call(method, _fill(path), body, display)
        assert status == 403, (method, path, err)  # the customer display is read-only
        refused["display"].add((method, path))
        if not path.startswith("/api/v1/tech/") and path not in ("/api/v1/approvals", "/api/v1/shift/no-sale"):
            status, err = api.call(method, _fill(path), body, tech)
            assert status == 403, ("technician", method, path, err)
    for method, path in [("POST", "/api/v1/tech/test/{device}")]:
        for who in (cashier, lane):
            status, err = api.call(method, _fill(path), None, who)
            assert status == 403 and err["error"]["code"] == "forbidden"
    staff_only = ["/api/v1/cart/suspend", "/api/v1/customers", "/api/v1/shift/open", "/api/v1/shift/cash",
                  "/api/v1/shift/no-sale", "/api/v1/shift/close", "/api/v1/returns", "/api/v1/exchanges",
                  "/api/v1/receipts/reprint", "/api/v1/cart/customer"]  # fmt: skip
    for path in staff_only:
        status, err = api.call("POST", _fill(path), BODIES[("POST", path)], lane)
        assert status == 403, (path, err)
    for path, action in [("/api/v1/cart/cancel", "void_sale"), ("/api/v1/cart/lines/1/price", "price_override")]:
        status, err = api.call("POST", _fill(path), BODIES.get(("POST", path.replace("/1/", "/{no}/")), {}), cashier)
        assert status == 403 and err["error"] == {**err["error"], "code": "approval_required", "action": action}
    assert api.head() == head, "a refused request recorded something"


# -- selling ---------------------------------------------------------------------------------------


def test_cashier_sale_with_coupon_split_tender_and_receipt(api: Api, running: DaemonThread) -> None:
    token = api.login("ann", "1234")
    for code in (WATER, PEN, MILK):
        status, cart = api.post("/cart/items", {"code": code}, token)
        assert status == 200, cart
    assert [ln["name"] for ln in cart["lines"]] == ["Sparkling Water 1.5l", "Ballpoint Pen", "Whole Milk 1l"]
    assert cart["lines"][2]["promotions"] == ["20% off dairy"]
    status, cart = api.post("/cart/coupons", {"code": "pen"}, token)
    assert status == 200 and cart["coupon_applied"] is True
    assert cart["total"]["minor"] == 79 + 92  # the pen is free, milk 20% off
    assert cart["total"]["text"] == "1,71\xa0€"  # de_DE formatting by Babel
    status, res = api.post("/cart/payments", {"kind": "card", "amount": 100}, token)
    assert status == 200 and res["receipt"] is None and res["cart"]["due"]["minor"] == 71
    status, res = api.post("/cart/payments", {"kind": "cash", "amount": 500}, token)
    assert status == 200, res
    receipt = res["receipt"]
    assert receipt["change"]["minor"] == 429 and receipt["reference"] == "TB-till-1-000001"
    assert receipt["qr"].startswith("data:image/svg+xml;base64,")
    assert res["cart"]["state"] == "empty"
    printed = running.daemon.devices.sim["printer"].text()
    assert "Ballpoint Pen" in printed and "TB-till-1-000001" in printed
    assert running.daemon.devices.sim["drawer"].pulses, "cash payment opens the drawer"
    doc = running.call(lambda: running.daemon.t.returns.find_sale("TB-till-1-000001"))
    assert [t["kind"] for t in doc["tenders"]] == ["card", "cash"] and doc["cashier"] == "ann"


def test_approvals_are_single_use_bound_and_expire(api: Api, clock: FrozenClock) -> None:
    cashier = api.login("ann", "1234")
    other = api.login("ann", "1234")
    api.post("/cart/items", {"code": WATER}, cashier)
    api.post("/cart/items", {"code": PEN}, cashier)
    status, err = api.post("/cart/lines/1/discount", {"percent": "50", "reason": "damaged"}, cashier)
    assert status == 403 and err["error"]["action"] == "discount_above_limit"
    status, err = api.post("/approvals", {"action": "discount_above_limit", "staff_id": "sam", "pin": "1111"}, cashier)
    assert status == 403 and err["error"]["code"] == "denied"
    status, ok = api.post("/approvals", {"action": "discount_above_limit", "staff_id": "sam", "pin": "9999"}, cashier)
    assert status == 200 and ok["approver"] == "sam"
    token = ok["approval"]
    assert api.post("/cart/lines/1/discount", {"percent": "50", "reason": "x", "approval": token}, other)[0] == 403
    status, cart = api.post("/cart/lines/1/discount", {"percent": "50", "reason": "dented", "approval": token}, cashier)
    assert status == 200 and cart["lines"][0]["discount"]["minor"] == 40
    status, err = api.post("/cart/lines/2/discount", {"percent": "50", "reason": "x", "approval": token}, cashier)
    assert status == 403 and "already used" in err["error"]["message"]
    _, ok = api.post("/approvals", {"action": "discount_above_limit", "staff_id": "sam", "pin": "9999"}, cashier)
    clock.advance(61)
    status, err = api.post("/cart/lines/2/discount", {"percent": "50", "reason": "x", "approval": ok["approval"]},
                           cashier)  # fmt: skip
    assert status == 403 and "expired" in err["error"]["message"]


def test_bad_requests_get_clear_4xx_and_record_nothing(api: Api, running: DaemonThread) -> None:
    token = api.login("ann", "1234")
    api.post("/cart/items", {"code": WATER}, token)
    head = api.head()
    cases: list[tuple[str, str, Any, int, str]] = [
        ("POST", "/cart/items", {"code": "999"}, 404, "not_found"),
        ("POST", "/cart/items", {"code": "4006381333932"}, 422, "bad_barcode"),
        ("POST", "/cart/items", {"code": WATER, "extra": 1}, 422, "invalid_request"),
        ("POST", "/cart/items", {"code": WATER, "quantity": "1e9"}, 422, "invalid_request"),
        ("POST", "/cart/items", {"code": WATER, "quantity": "0.5"}, 422, "invalid_input"),
        ("POST", "/cart/items", {"code": WATER, "quantity": "0"}, 422, "invalid_input"),
        ("POST", "/cart/items", {}, 422, "invalid_input"),
        ("POST", "/cart/items", [1, 2], 422, "invalid_request"),
        ("POST", "/cart/payments", {"kind": "cash", "amount": 1.5}, 422, "invalid_request"),
        ("POST", "/cart/payments", {"kind": "cheque"}, 422, "invalid_request"),
        ("POST", "/cart/payments", {"kind": "card", "amount": 10**8}, 422, "invalid_input"),
        ("PATCH", "/cart/lines/7", {"quantity": "2"}, 422, "invalid_input"),
        ("PATCH", "/cart/lines/0", {"quantity": "2"}, 422, "invalid_request"),
        ("POST", "/cart/lines/1/discount", {"percent": "500"}, 422, "invalid_input"),
        ("POST", "/cart/lines/1/discount", {"percent": "5.555"}, 422, "invalid_request"),
        ("POST", "/shift/open", {"float": 100}, 409, "conflict"),
        ("POST", "/receipts/reprint", {"reference": "TB-till-1-999999"}, 404, "not_found"),
        ("GET", "/nope", None, 404, "no_such_path"),
        ("PUT", "/cart", None, 405, "method_not_allowed"),
    ]
    for method, path, body, want, code in cases:
        status, err = api.call(method, path, body, token)
        assert (status, err["error"]["code"]) == (want, code), (method, path, body, err)
        assert err["error"]["message"] and "\n" not in err["error"]["message"]
    res = api.http.post(
        "/cart/items",
        content=b"{" + b" " * 70_000 + b"}",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    assert res.status_code == 413
    res = api.http.post(
        "/cart/items",
        content=b"not json",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    assert res.status_code == 422
    assert api.head() == head
    assert api.get("/health")[1]["status"] == "ok"


# -- live updates ----------------------------------------------------------------------------------


def _ws(running: DaemonThread, **headers: str) -> Any:
    from websockets.sync.client import connect

    return connect(f"ws://127.0.0.1:{running.port}/api/v1/ws", additional_headers=headers, open_timeout=5)


def test_websocket_pushes_scans_without_polling(api: Api, running: DaemonThread) -> None:
    token = api.login("ann", "1234")
    with _ws(running) as ws:
        ws.send(json.dumps({"token": token}))
        hello = json.loads(ws.recv(5))
        assert hello["type"] == "hello" and hello["cart"]["state"] == "empty" and hello["health"]["status"] == "ok"
        running.call(lambda: running.daemon.sim_feed("scanner", PEN))
        msg = json.loads(ws.recv(5))
        while msg["type"] != "cart":
            msg = json.loads(ws.recv(5))
        assert msg["event"] == "added" and msg["cart"]["lines"][0]["name"] == "Ballpoint Pen"
        running.call(lambda: running.daemon.sim_feed("scanner", "12345"))
        msg = json.loads(ws.recv(5))
        assert msg["type"] == "notice" and msg["level"] == "error" and "12345" in msg["message"]


def test_websocket_needs_a_session_and_a_local_origin(running: DaemonThread) -> None:
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    with _ws(running) as ws:
        ws.send(json.dumps({"token": "nope"}))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
    with pytest.raises(InvalidStatus):
        _ws(running, Origin="http://evil.example")


def test_scans_need_someone_logged_in(api: Api, running: DaemonThread) -> None:
    display = api.device("display")
    with _ws(running) as ws:
        ws.send(json.dumps({"token": display}))
        json.loads(ws.recv(5))
        running.call(lambda: running.daemon.sim_feed("scanner", WATER))
        msg = json.loads(ws.recv(5))
        assert msg["type"] == "notice" and msg["code"] == "login_required"
    assert api.get("/cart", display)[1]["lines"] == []


# -- self-checkout ---------------------------------------------------------------------------------


def test_lane_age_check_needs_an_attendant_and_takes_cards_only(api: Api, running: DaemonThread) -> None:
    lane = api.device("self_checkout")
    status, cart = api.post("/cart/items", {"code": WINE}, lane)
    assert status == 200 and cart["needs_approval"] == ["sell_age_restricted"]
    alerts = running.call(lambda: [a["code"] for a in running.daemon._alert_list()])
    assert "lane.attendant" in alerts
    status, err = api.post("/cart/payments", {"kind": "card"}, lane)
    assert status == 403 and err["error"]["action"] == "sell_age_restricted"
    status, err = api.post("/cart/lines/1/void", {}, lane)
    assert status == 403 and err["error"]["action"] == "void_line"
    _, ok = api.post("/approvals", {"action": "sell_age_restricted", "staff_id": "sam", "pin": "9999"}, lane)
    status, cart = api.post("/cart/approve", {"approval": ok["approval"]}, lane)
    assert status == 200 and cart["needs_approval"] == []
    assert "lane.attendant" not in running.call(lambda: [a["code"] for a in running.daemon._alert_list()])
    status, err = api.post("/cart/payments", {"kind": "cash"}, lane)
    assert status == 403 and "cards only" in err["error"]["message"]
    status, res = api.post("/cart/payments", {"kind": "card", "print": False}, lane)
    assert status == 200 and res["receipt"]["total"]["minor"] == 699
    assert "Red Wine" not in running.daemon.devices.sim["printer"].text()  # the shopper has not chosen paper yet
    assert api.post("/receipts/last/print", None, lane)[0] == 200
    assert "Red Wine" in running.daemon.devices.sim["printer"].text()
    assert api.post("/receipts/last/print", None, lane)[0] == 409  # no second original
    doc = running.call(lambda: running.daemon.t.returns.find_sale("TB-till-1-000001"))
    assert doc["cashier"] == "self-checkout" and doc["approver"] == "sam"


def test_weighed_items_come_from_the_scale(api: Api, running: DaemonThread) -> None:
    if "scale" not in running.daemon.devices.sim:
        pytest.skip("no pseudo-terminals for the simulated scale")
    lane = api.device("self_checkout")
    status, produce = api.get("/catalog/produce", lane)
    assert status == 200 and {p["name"] for p in produce} >= {"Bananas", "Tomatoes"}
    status, err = api.post("/cart/items", {"sku": "2001"}, lane)
    assert status == 422 and "scale" in err["error"]["message"]
    running.daemon.devices.sim["scale"].place(__import__("decimal").Decimal("1.250"))
    status, cart = api.post("/cart/items", {"sku": "2001"}, lane)
    assert status == 200, cart
    assert cart["lines"][0]["qty"] == "1.25" and cart["lines"][0]["total"]["minor"] == 211  # 1.69/kg


# -- shifts, returns, technician -------------------------------------------------------------------


def test_shift_close_and_refund(api: Api, running: DaemonThread) -> None:
    cashier = api.login("ann", "1234")
    sup = api.login("sam", "9999")
    api.post("/cart/items", {"code": MILK}, cashier)
    api.post("/cart/payments", {"kind": "cash", "amount": 1000}, cashier)
    status, sale = api.get("/sales/TB-till-1-000001", sup)
    assert status == 200 and sale["lines"][0]["name"] == "Whole Milk 1l"
    status, res = api.post("/returns", {"reference": "TB-till-1-000001", "lines": [{"line": 1}]}, sup)
    assert status == 200, res
    assert res["return"]["total"]["minor"] == 92 and "RETURN" in res["receipt"]["text"]
    status, err = api.post("/returns", {"reference": "TB-till-1-000001", "lines": [{"line": 1}]}, sup)
    assert status == 409 and "not yet refunded" in err["error"]["message"]
    status, x = api.get("/reports/x", cashier)
    assert status == 200 and x["report"]["cash"]["expected"] == 10_000 + 92 - 92
    status, z = api.post("/shift/close", {"counted": [{"denomination": 5000, "count": 2}]}, sup)
    assert status == 200 and z["report"]["z_number"] == 1 and z["report"]["cash"]["over_short"] == 0
    assert api.get("/shift", cashier)[1] is None
    status, err = api.post("/cart/items", {"code": MILK}, cashier)
    assert status == 200  # the cart takes items, but nothing can be paid without a shift
    status, err = api.post("/cart/payments", {"kind": "cash"}, cashier)
    assert status == 409 and "no shift is open" in err["error"]["message"]


def test_technician_pages(tmp_path: Path, clock: FrozenClock) -> None:
    from appliance.demo import DEMO_DEVICES

    text = DEMO_DEVICES + '[sync]\nusername = "till"\npassword_file = "mqtt.pw"\n'
    config = parse_config(text, environ={})
    with _start(tmp_path, clock, config) as running, Api(running) as api:
        tech = api.login("tom", "4321")
        status, devices = api.get("/tech/devices", tech)
        assert status == 200 and {d["name"] for d in devices} >= {"printer", "drawer", "scanner", "display"}
        assert all(d["health"] == "ok" for d in devices)
        status, res = api.post("/tech/test/printer", None, tech)
        assert status == 200 and res["ok"] is True
        assert "printer test" in running.daemon.devices.sim["printer"].text()
        status, res = api.post("/tech/test/display", None, tech)
        assert status == 200 and res["ok"] is True
        assert running.daemon.devices.sim["display"].lines[0].startswith("1234567890")
        status, res = api.post("/tech/test/scale", None, tech)
        assert status == 200 and res["ok"] is True
        status, res = api.post("/tech/test/terminal", None, tech)
        assert status == 200 and res["ok"] is True
        head = api.head()
        status, res = api.post("/tech/test/drawer", None, tech)
        assert status == 200 and len(running.daemon.devices.sim["drawer"].pulses) == 1
        assert api.head() == head + 1  # the drawer opening is journaled
        status, sync = api.get("/tech/sync", tech)
        assert status == 200 and sync["enabled"] is False and sync["backlog"]["size"] > 0
        status, config_doc = api.get("/tech/config", tech)
        assert config_doc["sync"]["username"] == "********" and config_doc["sync"]["password_file"] == "********"
        assert config_doc["store"]["id"] == "demo"
        status, versions = api.get("/tech/versions", tech)
        assert versions["ledger_schema"] >= 1 and versions["tillbox"]
        status, logs = api.get("/tech/logs?limit=50", tech)
        assert status == 200 and isinstance(logs, list)


def test_bad_provisioning_is_an_alert_and_shown_to_technicians(tmp_path: Path, clock: FrozenClock) -> None:
    from appliance.alerts import active_alerts
    from appliance.provision import ERROR_FILE

    tmp_path.mkdir(exist_ok=True)
    (tmp_path / ERROR_FILE).write_text("tillbox-provision.toml: enrollment token already used\n")
    running = _start(tmp_path, clock)
    try:
        with Api(running) as api:
            alerts = running.call(lambda: [a.code for a in active_alerts(running.daemon.t.ledger)])
            assert "provisioning" in alerts
            token = api.login("tom", "4321")
            status, versions = api.get("/tech/versions", token)
            assert status == 200
            assert versions["provisioning"] == {
                "identity": None,
                "error": "tillbox-provision.toml: enrollment token already used",
            }
    finally:
        running.stop()
