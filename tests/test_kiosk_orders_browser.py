"""The pickup queue page (/orders) in real Chromium against a whole daemon with simulated devices."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.config import parse_config
from appliance.daemon import Daemon
from appliance.demo import DEMO_DEVICES
from appliance.ledger import verify
from appliance.orders import code_hash
from kiosk_ui.testing import CHROMIUM, DaemonThread, chromium_page, demo_prepare
from sync.inbound import Inbound, InboundPolicy

WATER = {"sku": "1001", "qty": "2", "name": "Sparkling Water 1.5l", "total": 150, "tax": 10, "tax_class": "reduced"}
PEN = {"sku": "1009", "qty": "1", "name": "Ballpoint Pen", "total": 99, "tax": 16, "tax_class": "standard"}
ADDRESS = {"name": "Erika Mustermann", "lines": ["Hauptstr. 5"], "postcode": "10115", "city": "Berlin",
           "country": "DE"}  # fmt: skip

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM} (apt install chromium)")


@pytest.fixture
def page() -> Iterator[Any]:
    with chromium_page() as pg:
        yield pg


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as pw_expect

    return pw_expect(locator)


def _order(order_id: str, customer: str, **fields: Any) -> dict[str, Any]:
    return {"id": order_id, "version": 1, "status": "placed", "time": "2026-03-02T08:00:00.000Z", "customer": customer,
            "currency": "EUR", "lines": [dict(WATER), dict(PEN)], **fields}  # fmt: skip


def _deliver(daemon: Daemon, *docs: dict[str, Any]) -> None:
    """The shop's orders arrive as the sync service stores them (schema-checked, into pickup_orders)."""
    till = daemon.t
    inbound = Inbound(till.ledger, InboundPolicy(currency=till.currency, tax_classes=tuple(till.config.tax.classes)),
                      clock=till.clock)  # fmt: skip
    for doc in docs:
        assert inbound.handle(f"tillbox/v1/demo/orders/{doc['id']}", json.dumps(doc).encode())


def test_the_pickup_queue_picks_hands_over_takes_payment_and_ships(page: Any, tmp_path: Path) -> None:
    daemon = Daemon(parse_config(DEMO_DEVICES, environ={}), tmp_path / "data", fast_hash=True,
                    prepare=demo_prepare(shift=True), health_interval=0.5)  # fmt: skip
    with DaemonThread(daemon) as running:
        running.call(lambda: _deliver(daemon,
            _order("web-1", "Erika Mustermann", pickup_code_sha256=code_hash("web-1", "4711")),
            _order("web-2", "Max Power", payment="at_pickup"),
            _order("web-3", "Erika Mustermann", kind="ship", ship_to=ADDRESS, carrier="DHL")))  # fmt: skip
        page.goto(running.url + "/cashier")
        page.click("#orders-link")  # the cashier screen links the queue
        page.wait_for_url("**/orders")
        page.fill("#staff-id", "ann")
        page.fill("#pin", "1234")
        page.click("#login-form button[type=submit]")
        page.wait_for_selector("#queue:not(.hidden)")
        page.wait_for_selector("#conn.ok")
        expect(page.locator("#orders tbody tr")).to_have_count(3)

        # Search by name, pick, mark ready.
        page.fill("#search", "erika")
        page.click("#search-form button[type=submit]")
        expect(page.locator("#orders tbody tr")).to_have_count(2)
        page.click('#orders tr[data-order="web-1"]')
        expect(page.locator("#detail-title")).to_contain_text("web-1")
        page.click('button[data-pick="1"]')
        expect(page.locator('#lines tr[data-line="1"] td:nth-child(4)')).to_have_text("2")
        expect(page.locator('#orders tr[data-order="web-1"] td:nth-child(4)')).to_have_text("picking")
        page.click('button[data-pick="2"]')
        expect(page.locator('#lines tr[data-line="2"] td:nth-child(4)')).to_have_text("1")
        page.click("#b-ready")
        expect(page.locator("#detail-status")).to_have_text("ready")

        # A wrong code is refused; the customer's QR code, scanned, opens the order and hands it over.
        page.fill("#handover-code", "0000")
        page.click("#b-handover-code")
        expect(page.locator("#notice")).to_have_text("wrong pickup code for order web-1; 4 attempt(s) left")
        expect(page.locator("#detail-status")).to_have_text("ready")
        page.fill("#search", "")
        page.click("#search-form button[type=submit]")
        running.call(lambda: daemon.sim_feed("scanner", "TBO:web-1:4711"))
        expect(page.locator("#handover-code")).to_have_value("TBO:web-1:4711")
        page.click("#b-handover-code")
        expect(page.locator("#detail-status")).to_have_text("collected")
        expect(page.locator("#notice")).to_have_text("Order web-1 handed over.")
        expect(page.locator('#orders tr[data-order="web-1"]')).to_have_count(0)  # gone from the open queue

        # An order paid at pickup: ID check, cash, change.
        page.click('#orders tr[data-order="web-2"]')
        page.click('button[data-pick="1"]')
        expect(page.locator('#lines tr[data-line="1"] td:nth-child(4)')).to_have_text("2")
        page.fill('input[data-qty="2"]', "1")
        page.click('button[data-set="2"]')
        expect(page.locator('#lines tr[data-line="2"] td:nth-child(4)')).to_have_text("1")
        page.click("#b-ready")
        expect(page.locator("#actions .due")).to_contain_text("2,49")
        page.select_option("#payment", "cash")
        page.fill("#tendered", "5")
        page.click("#b-handover-id")
        expect(page.locator("#detail-status")).to_have_text("collected")
        expect(page.locator("#notice")).to_contain_text("Change: 2,51")

        # Ship from store: pick, pack, print the slip, ship with tracking.
        page.click('#orders tr[data-order="web-3"]')
        page.click('button[data-pick="1"]')
        expect(page.locator('#lines tr[data-line="1"] td:nth-child(4)')).to_have_text("2")
        page.click('button[data-pick="2"]')
        expect(page.locator('#lines tr[data-line="2"] td:nth-child(4)')).to_have_text("1")
        page.click("#b-pack")
        expect(page.locator("#detail-status")).to_have_text("packed")
        page.click("#b-slip")
        expect(page.locator("#slip-text")).to_contain_text("PACKING SLIP")
        expect(page.locator("#slip-text")).to_contain_text("10115 Berlin")
        page.click("dialog button")
        page.fill("#tracking", "00340434161234567890")
        page.click("#b-ship")
        expect(page.locator("#detail-status")).to_have_text("shipped")
        expect(page.locator("#detail-facts")).to_contain_text("00340434161234567890")
        page.screenshot(path=str(tmp_path / "orders.png"))
        assert (tmp_path / "orders.png").stat().st_size > 5_000

        def ledger_state() -> tuple[list[tuple[str, str]], int, bool]:
            ledger = daemon.t.ledger
            rows = ledger.conn.execute("SELECT type, actor FROM journal WHERE type LIKE 'order.%' ORDER BY seq")
            return [(str(a), str(b)) for a, b in rows], ledger.sale_count(), verify(ledger).ok

        journal, sales, ok = running.call(ledger_state)
        assert ok and sales == 1
        assert ("order.code_refused", "ann") in journal and ("order.collected", "ann") in journal
        assert ("order.shipped", "ann") in journal and ("order.slip_printed", "ann") in journal
        printed = daemon.devices.sim["printer"].text()
        assert "PACKING SLIP" in printed and "Ref TB-till-1-000001" in printed


def test_the_staff_session_goes_along_between_the_till_and_the_queue(page: Any, tmp_path: Path) -> None:
    daemon = Daemon(parse_config(DEMO_DEVICES, environ={}), tmp_path / "data", fast_hash=True,
                    prepare=demo_prepare(shift=True), health_interval=0.5)  # fmt: skip
    with DaemonThread(daemon) as running:
        page.goto(running.url + "/cashier")
        page.fill("#staff-id", "ann")
        page.fill("#pin", "1234")
        page.click("#login-form button[type=submit]")
        page.wait_for_selector("#till:not(.hidden)")
        page.click("#orders-link")
        page.wait_for_url("**/orders")
        page.wait_for_selector("#queue:not(.hidden)")  # no second login
        expect(page.locator("#who")).to_contain_text("Ann")
        assert page.evaluate("sessionStorage.getItem('tillbox-handover')") is None  # taken out once used
        page.click("#back-link")
        page.wait_for_url("**/cashier")
        page.wait_for_selector("#till:not(.hidden)")
        expect(page.locator("#who")).to_contain_text("Ann")
        # a plain visit (no hand-over) still asks for a login
        page.goto(running.url + "/orders")
        page.wait_for_selector("#login:not(.hidden)")
