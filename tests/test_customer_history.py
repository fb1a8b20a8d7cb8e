# ruff: noqa: F811  (the shop fixture imported from test_omni_accounts is requested by name)
"""One customer, one purchase history: the hub records sales of every till and online orders; tills ask for it.

A real Mosquitto, the reference hub and two tills (the fixture of tests/test_omni_accounts.py), then the
kiosk endpoint and the cashier screen's Purchases list in a real Chromium.
"""

from __future__ import annotations

import contextlib
import sqlite3
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from appliance.clock import iso_utc
from appliance.customers import HISTORY, Customers, History
from appliance.errors import DeviceUnavailable, InputError, NotFound
from appliance.orders import Orders
from appliance.returns import ReturnRequest, sale_reference
from appliance.staff import Action, Approval
from appliance.till import Completed
from kiosk_ui.testing import CHROMIUM, DaemonThread
from sync.hub import Hub
from sync.link import LinkSettings
from sync.schemas import validate
from sync.testing import Mosquitto, wait_until
from tests.test_omni_accounts import Shop, _basket, _finish, shop  # noqa: F401  (fixture)

STORE = "demo"
JUICE = {"sku": "1002", "qty": "2", "name": "Orange Juice 1l", "unit_price": 199, "total": 398, "tax": 26,
         "tax_rates": {"reduced": 26}, "tax_class": "reduced"}  # fmt: skip


def now() -> datetime:
    return datetime.now(UTC)


def _connect(shop: Shop, *which: int) -> None:
    """Start the tills' sync; their customers, returns, gift cards and points then ask the hub."""
    for i in which or (0, 1):
        svc = shop.connect(i)
        shop.tills[i].customers.remote = svc.request
        shop.tills[i].returns.lookup = svc.lookup_sale


def _buy(shop: Shop, i: int, customer: str | None, units: int = 2) -> Completed:
    """A sale at till ``i`` (batteries, paid cash), with ``customer`` attached; waits until the hub has it."""
    done = _finish(shop.tills[i], _basket(shop.tills[i], units, customer=customer))
    assert wait_until(lambda: shop.settled(i))
    return done


def _order(hub: Hub, order_id: str, customer: str | None, **details: Any) -> None:
    """An online order paid now, for ``customer``."""
    hub.place_order(STORE, order_id, [JUICE], currency="EUR", paid_at=iso_utc(now()), customer="Hana H.",
                    customer_id=customer, **details)  # fmt: skip


def _rows(history: History) -> list[tuple[str, str, str]]:
    return [(p.channel, p.device, p.reference) for p in history.purchases]


def _has_order(orders: Orders, order_id: str) -> bool:
    try:
        orders.get(order_id)
    except NotFound:
        return False
    return True


def _customer_rows(hub: Hub, customer: str) -> int:
    return int(hub.query("SELECT count(*) FROM customer_purchases WHERE customer = ?", (customer,))[0][0])


# -- across tills and the web shop ------------------------------------------------------------------


def test_purchases_at_two_tills_and_online_are_one_history_newest_first(shop: Shop) -> None:
    _connect(shop)
    a, b = shop.tills
    hana = shop.hub.customers.create("Hana History", email="hana@example.org", consent=True)["id"]
    _buy(shop, 0, None)  # someone else: not hers
    at_a = _buy(shop, 0, hana, units=2)
    at_b = _buy(shop, 1, hana, units=1)
    _order(shop.hub, "web-7", hana)
    _order(shop.hub, "web-8", hana)
    shop.hub.orders.cancel(STORE, "web-8", "changed her mind")  # refunded by the shop: not a purchase
    _order(shop.hub, "web-9", None)  # a guest order
    shop.hub.place_order(STORE, "web-10", [JUICE], currency="EUR", customer_id=hana, payment="at_pickup")  # unpaid

    history = b.customers.history(hana)
    assert history.customer == hana and history.next is None
    assert _rows(history) == [("online", "online", "web-7"),
                              ("store", "till-2", sale_reference("till-2", at_b.committed.number)),
                              ("store", "till-1", sale_reference("till-1", at_a.committed.number))]  # fmt: skip
    online, second, first = history.purchases
    assert (first.sale_id, first.total, first.currency) == (at_a.committed.sale_id, at_a.doc["total"], "EUR")
    assert (second.sale_id, second.total) == (at_b.committed.sale_id, at_b.doc["total"])
    assert (online.sale_id, online.total, online.store) == ("web-7", 398, STORE)
    assert all(p.returnable and p.refunded == 0 for p in history.purchases)
    assert first.time < second.time < online.time
    assert _rows(a.customers.history(hana)) == _rows(history)  # the same record at every till

    # pages: the newest two, then the rest
    page = b.customers.history(hana, limit=2)
    assert _rows(page) == _rows(history)[:2] and page.next is not None
    rest = b.customers.history(hana, limit=2, before=page.next)
    assert _rows(rest) == _rows(history)[2:] and rest.next is None

    # withdrawn consent does not touch the shop's own record of what she bought
    shop.hub.customers.set_consent(hana, False)
    assert _rows(b.customers.history(hana)) == _rows(history)

    # an order to be paid at pickup is not a purchase while it waits there
    assert all(p.reference != "web-10" for p in history.purchases)

    with pytest.raises(NotFound, match="the shop has no customer nobody-1"):
        b.customers.history("nobody-1")
    for bad in (0, 51):
        with pytest.raises(InputError, match="1 to 50"):
            b.customers.history(hana, limit=bad)
    with pytest.raises(InputError, match="not a customer id"):
        b.customers.history("no such id")
    with pytest.raises(InputError, match="cursor"):
        b.customers.history(hana, before="not/a/cursor")
    with pytest.raises(InputError, match="cursor"):  # well formed, but not one the shop made
        b.customers.history(hana, before="bm9wZQ")
    assert b.customers.history(hana, limit=1).purchases[0].reference == "web-7"

    # idempotent like every generic request: the same id gets the first answer
    rid = str(uuid.uuid4())
    asked = shop.services[1].request(HISTORY, {"customer": hana, "limit": 1}, request_id=rid)
    _buy(shop, 1, hana, units=1)
    assert shop.services[1].request(HISTORY, {"customer": hana, "limit": 1}, request_id=rid) == asked
    assert b.customers.history(hana, limit=1).purchases[0].device == "till-2"


def test_a_return_at_till_b_of_the_till_a_sale_starts_from_the_history_reference(shop: Shop) -> None:
    _connect(shop)
    b = shop.tills[1]
    ida = shop.hub.customers.create("Ida Return", phone="0171 5550199")["id"]
    at_a = _buy(shop, 0, ida, units=2)
    [purchase] = b.customers.history(ida).purchases
    assert purchase.device == "till-1" and purchase.returnable

    original = b.returns.find_sale(purchase.reference)  # asked at the shop: till B does not have the sale
    assert original["id"] == at_a.committed.sale_id
    plan = b.returns.plan_receipted(original, [ReturnRequest(Decimal(1), line=1)])
    b.refund(plan, Approval(Action.REFUND, "sue", None, now() + timedelta(minutes=1)))
    assert wait_until(lambda: shop.settled(1))
    [partly] = b.customers.history(ida).purchases
    assert (partly.refunded, partly.returnable) == (at_a.doc["total"] // 2, True)  # one of two is left

    original = b.returns.find_sale(purchase.reference)
    b.refund(b.returns.plan_receipted(original, [ReturnRequest(Decimal(1), line=1)]),
             Approval(Action.REFUND, "sue", None, now() + timedelta(minutes=1)))  # fmt: skip
    assert wait_until(lambda: shop.settled(1))
    [done] = b.customers.history(ida).purchases
    assert (done.refunded, done.returnable) == (at_a.doc["total"], False)

    # erased at a till: the shop drops her history too
    assert b.customers.identify("0171 5550199", now=now()).id == ida
    b.customers.erase(ida, Approval(Action.ERASE_CUSTOMER, "max", None, now() + timedelta(minutes=1)), now())
    assert wait_until(lambda: shop.hub.customers.erased(ida))
    assert _customer_rows(shop.hub, ida) == 0
    with pytest.raises(NotFound, match="unknown or erased"):
        b.customers.history(ida)


def test_an_order_paid_at_pickup_is_in_the_history_as_the_tills_sale_of_it(shop: Shop) -> None:
    _connect(shop)
    orders = Orders(shop.tills[0])
    uma = shop.hub.customers.create("Uma Pickup", email="uma@example.org")["id"]
    shop.hub.place_order(STORE, "web-61", [JUICE], currency="EUR", customer_id=uma, payment="at_pickup")
    assert wait_until(lambda: _has_order(orders, "web-61"))
    assert shop.tills[1].customers.history(uma).purchases == ()  # not paid yet
    orders.pick("web-61", {1: Decimal(2)}, staff="ann")
    orders.ready("web-61", staff="ann")
    sale = orders.sale_for("web-61", cashier="ann")
    sale.pay_cash(sale.cash_due())
    handed = orders.hand_over("web-61", "id", staff="ann", sale=sale)
    assert handed.completed is not None
    assert wait_until(lambda: shop.settled(0) and shop.hub.orders.get(STORE, "web-61")["status"] == "collected")
    [bought] = shop.tills[1].customers.history(uma).purchases
    receipt = sale_reference("till-1", handed.completed.committed.number)
    assert (bought.channel, bought.device, bought.reference) == ("online", "till-1", receipt)  # returned by receipt
    assert (bought.sale_id, bought.total, bought.returnable) == (handed.completed.committed.sale_id, 398, True)


def test_erasure_removes_the_history_and_a_sale_that_comes_later_does_not_bring_it_back(shop: Shop) -> None:
    _connect(shop, 0)  # till B sells offline
    a, b = shop.tills
    zoe = shop.hub.customers.create("Zoe Gone", email="zoe@example.org", consent=True)["id"]
    offline = _finish(b, _basket(b, 1, customer=zoe))
    _buy(shop, 0, zoe)
    _order(shop.hub, "web-21", zoe)
    _order(shop.hub, "web-23", zoe, kind="ship", ship_to={"name": "Zoe Gone", "lines": ["Hauptstr. 5"],
                                                          "city": "Berlin", "country": "DE"})  # fmt: skip
    assert len(a.customers.history(zoe).purchases) == 3
    assert shop.hub.query("SELECT count(*) FROM answers WHERE name = 'customer-history'") == [(1,)]

    shop.hub.customers.erase(zoe)
    with pytest.raises(NotFound, match="unknown or erased"):
        a.customers.history(zoe)
    assert _customer_rows(shop.hub, zoe) == 0
    assert shop.hub.query("SELECT count(*) FROM answers WHERE name = 'customer-history' AND "
                          "json_extract(body, '$.ok')") == [(0,)]  # fmt: skip
    order = shop.hub.orders.get(STORE, "web-21")  # the order stays, without her id and name, republished
    assert "customer_id" not in order and order["version"] == 2 and order["status"] == "placed"
    assert "customer" not in order
    shipped = shop.hub.orders.get(STORE, "web-23")
    assert shipped["ship_to"] == {"name": "(erased)", "lines": ["(erased)"], "city": "(erased)", "country": "ZZ"}
    validate("pickup-order", shipped)  # still a valid document for the tills
    with pytest.raises(InputError, match="erased"):
        _order(shop.hub, "web-22", zoe)

    _connect(shop, 1)  # till B comes online with the sale it made before the erasure
    assert wait_until(lambda: shop.settled(1))
    assert shop.hub.sale_count(STORE) == 2  # the sales stay
    assert _customer_rows(shop.hub, zoe) == 0
    sale_events = shop.hub.query("SELECT body FROM events WHERE type = 'tillbox.sale.completed'")
    assert len(sale_events) == 2 and not any(zoe in str(body) for (body,) in sale_events)
    found = shop.hub.call(lambda: shop.hub._returnable(STORE, offline.committed.sale_id)).result(5)
    assert found["id"] == offline.committed.sale_id and "customer_id" not in found  # still returnable


def test_an_old_hub_database_upgrades_in_place(shop: Shop) -> None:
    _connect(shop)
    b = shop.tills[1]
    max_ = shop.hub.customers.create("Max Old", email="max@example.org")["id"]
    at_a = _buy(shop, 0, max_)
    _order(shop.hub, "web-31", max_)
    shop.hub.close()
    assert wait_until(lambda: not any(s.hub_online for s in shop.services))
    # a database of a hub from before purchase histories (and before sale lookups)
    with contextlib.closing(sqlite3.connect(shop.hub.path)) as db:
        db.execute("DROP TABLE customer_purchases")
        db.execute("ALTER TABLE sales DROP COLUMN event_id")
        db.commit()
    link = LinkSettings.from_urls([shop.broker.url], "hub", backoff_initial=0.05, backoff_cap=0.2)
    shop.hub = Hub(shop.hub.data_dir, link).start()
    assert wait_until(lambda: shop.hub.link.connected and all(s.hub_online for s in shop.services))
    assert _rows(b.customers.history(max_)) == [
        ("online", "online", "web-31"),
        ("store", "till-1", sale_reference("till-1", at_a.committed.number)),
    ]
    assert _customer_rows(shop.hub, max_) == 2
    _buy(shop, 1, max_)  # and it goes on recording
    assert [p.device for p in b.customers.history(max_).purchases] == ["till-2", "online", "till-1"]


def test_without_the_shop_there_is_no_history_on_the_till(tmp_path: Path) -> None:
    from appliance.config import parse_config
    from appliance.till import open_ledger

    config = parse_config("", environ={})
    with open_ledger(config, tmp_path) as ledger:
        customers = Customers(ledger)
        with pytest.raises(DeviceUnavailable, match="not connected"):
            customers.history("c-1")

        def offline(name: str, body: Any) -> dict[str, Any]:
            raise DeviceUnavailable("the shop is not reachable: this till is offline")

        customers.remote = offline
        with pytest.raises(DeviceUnavailable, match=r"purchase history needs the shop: .* offline"):
            customers.history("c-1")
        tables = [r[0] for r in ledger.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        assert not any("purchase" in t or "history" in t for t in tables)


# -- the kiosk: endpoint and cashier screen ---------------------------------------------------------

WATER = "4006381333931"


@contextlib.contextmanager
def _store(tmp_path: Path) -> Iterator[tuple[Hub, DaemonThread]]:
    """A hub and a daemon (the demo till-1 of store demo) syncing with it over a real Mosquitto."""
    from appliance.daemon import Daemon
    from kiosk_ui.testing import demo_config, demo_prepare

    with Mosquitto(tmp_path / "broker") as broker:
        hub = Hub(tmp_path / "hub", LinkSettings.from_urls([broker.url], "hub", backoff_initial=0.05)).start()
        try:
            daemon = Daemon(demo_config(), tmp_path / "data", fast_hash=True, prepare=demo_prepare(),
                            brokers=(broker.url,), health_interval=0.5)  # fmt: skip
            with DaemonThread(daemon) as running:
                assert wait_until(lambda: daemon.sync is not None and daemon.sync.link.connected)
                yield hub, running
        finally:
            hub.close()


def _sell_to(api: Any, token: str, email: str) -> str:
    """Sell a bottle of water to the customer with ``email`` at the daemon; the receipt reference."""
    assert api.post("/cart/items", {"code": WATER}, token)[0] == 200
    status, found = api.post("/customers/identify", {"token": email, "attach": True}, token)
    assert status == 200 and found["cart"]["customer"] is not None, found
    status, paid = api.post("/cart/payments", {"kind": "cash", "amount": 1000}, token)
    assert status == 200 and paid["receipt"] is not None, paid
    return str(paid["receipt"]["reference"])


def test_the_history_endpoint(tmp_path: Path) -> None:
    from tests.test_kiosk_api import Api

    with _store(tmp_path) as (hub, running), Api(running) as api:
        kim = hub.customers.create("Kim Kunde", email="kim@example.org")["id"]
        _order(hub, "web-41", kim)
        token = api.login("ann", "1234")
        reference = _sell_to(api, token, "kim@example.org")
        assert wait_until(lambda: _customer_rows(hub, kim) == 2)
        path = f"/customers/{kim}/history"

        for who in (None, "not-a-session-token"):
            status, err = api.get(path, who)
            assert status == 401 and err["error"]["code"] == "unauthenticated"
        assert api.get(path, api.device("display"))[0] == 403
        status, res = api.get(path, token)
        assert status == 200, res
        assert [(p["where"], p["reference"], p["returnable"]) for p in res["purchases"]] == [
            ("demo · till-1", reference, True), ("online", "web-41", True)]  # fmt: skip
        assert res["purchases"][0]["total"] == {"minor": 79, "text": "0,79\xa0€"} and res["next"] is None
        assert res["purchases"][1]["total"]["minor"] == 398 and res["purchases"][0]["date"]

        status, first = api.get(path + "?limit=1", token)
        assert status == 200 and [p["reference"] for p in first["purchases"]] == [reference]
        status, rest = api.get(f"{path}?limit=1&before={first['next']}", token)
        assert status == 200 and [p["reference"] for p in rest["purchases"]] == ["web-41"] and rest["next"] is None

        for bad in ("?limit=0", "?limit=51", "?limit=x", "?before=", "?before=a%2Fb", "?before=" + "a" * 401):
            status, err = api.get(path + bad, token)
            assert status == 422, (bad, err)
        assert api.get("/customers/no%20such%20id/history", token)[0] == 422
        assert api.get("/customers/" + "x" * 65 + "/history", token)[0] == 422
        status, err = api.get("/customers/nobody-1/history", token)
        assert status == 404 and "unknown or erased" in err["error"]["message"]

        hub.close()  # the shop is gone: the till has nothing to answer from
        assert wait_until(lambda: running.daemon.sync is not None and running.daemon.sync.hub_online is False)
        status, offline = api.get(path, token)  # offline is normal for a till: an answer that says so
        assert status == 200 and offline["available"] is False and offline["purchases"] == [], offline
        assert "purchase history needs the shop" in offline["message"]


@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM}")
def test_the_cashier_sees_the_purchases_and_returns_one_from_the_list(tmp_path: Path) -> None:
    from playwright.sync_api import expect

    from kiosk_ui.testing import chromium_page, log_in
    from tests.test_kiosk_api import Api

    with _store(tmp_path) as (hub, running), Api(running) as api:
        lea = hub.customers.create("Lea Leser", email="lea@example.org")["id"]
        reference = _sell_to(api, api.login("ann", "1234"), "lea@example.org")
        _order(hub, "web-51", lea)
        assert wait_until(lambda: _customer_rows(hub, lea) == 2)
        with chromium_page() as page:
            log_in(page, running.url)
            page.fill("#customer-token", "lea@example.org")
            page.press("#customer-token", "Enter")
            rows = page.locator("#customer-history .purchase")
            expect(rows).to_have_count(2)
            expect(page.locator("#customer-history h3")).to_have_text("Purchases · Lea Leser")
            expect(rows.nth(0)).to_contain_text("online · web-51 · 3,98")  # ordered after the sale
            expect(rows.nth(1)).to_contain_text(f"demo · till-1 · {reference} · 0,79")

            rows.nth(1).locator("button:has-text('Return')").click()
            dialog = page.locator("dialog[open]")
            expect(dialog.locator("input[aria-label='Receipt reference']")).to_have_value(reference)
            expect(dialog).to_contain_text("Sale 1")  # the sale was looked up: its lines can be picked
            expect(dialog.locator("input[aria-label='Return Sparkling Water 1.5l']")).to_have_count(1)
