"""Pickup and ship-from-store orders across a real Mosquitto, the reference hub and two tills."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from appliance.clock import FrozenClock, iso_utc
from appliance.config import Config, parse_config
from appliance.demo import seed
from appliance.errors import InputError
from appliance.orders import Orders
from appliance.till import Till, open_ledger
from drivers.printer import ReceiptPrinter, SimulatedPrinter
from sync.hub import Hub
from sync.hub_orders import ALERT_CONFLICT
from sync.inbound import availability
from sync.link import LinkSettings
from sync.service import SyncOptions, SyncService, settings_from_config
from sync.testing import Mosquitto, wait_until
from tests.conftest import open_shift

FAST = SyncOptions(window=50, ack_timeout=5.0, health_interval=0.05, poll_interval=0.005, reconcile_interval=None)
START = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
WATER = {"sku": "1001", "qty": "2", "name": "Sparkling Water 1.5l", "total": 150, "tax": 10, "tax_class": "reduced"}
PEN = {"sku": "1009", "qty": "1", "name": "Ballpoint Pen", "total": 99, "tax": 16, "tax_class": "standard"}
ADDRESS = {"name": "Erika Mustermann", "lines": ["Hauptstr. 5"], "postcode": "10115", "city": "Berlin",
           "country": "DE"}  # fmt: skip


@dataclasses.dataclass
class Store:
    broker: Mosquitto
    hub: Hub
    configs: list[Config]
    tills: list[Till]
    orders: list[Orders]
    services: list[SyncService | None]
    clock: FrozenClock

    def connect(self, i: int) -> SyncService:
        d = self.tills[i].ledger.path.parent
        link = dataclasses.replace(settings_from_config(self.configs[i], d, (self.broker.url,)), backoff_initial=0.05)
        svc = SyncService.from_config(self.configs[i], d, link=link, options=FAST).start()
        self.services[i] = svc
        assert wait_until(lambda: svc.link.connected)
        return svc

    def status(self, order_id: str) -> str:
        return str(self.hub.orders.get("demo", order_id)["status"])

    def settled(self, i: int) -> bool:
        """The hub holds every event till ``i`` wrote."""
        svc = self.services[i]
        assert svc is not None
        return self.hub.contiguous("demo", self.configs[i].store.device_id) == svc.relay.last_seq()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    clock = FrozenClock(START)
    configs = [parse_config(f'[store]\ndevice_id = "till-{i}"\n', environ={}) for i in (1, 2)]
    tills = []
    for config in configs:
        d = tmp_path / config.store.device_id
        till = Till(config, open_ledger(config, d), clock=clock, fast_hash=True)
        seed(till, d)
        open_shift(till)
        tills.append(till)
    with Mosquitto(tmp_path / "broker") as broker:
        hub = Hub(tmp_path / "hub", LinkSettings.from_urls([broker.url], "hub", backoff_initial=0.05)).start()
        shop = Store(broker, hub, configs, tills, [Orders(t) for t in tills], [None, None], clock)
        try:
            assert wait_until(lambda: hub.link.connected)
            shop.connect(0)
            shop.connect(1)
            yield shop
        finally:
            for svc in shop.services:
                if svc is not None:
                    svc.close()
            hub.close()
            for till in tills:
                till.ledger.close()


def _place(store: Store, order_id: str, **details: Any) -> None:
    store.hub.place_order("demo", order_id, [WATER, PEN], currency="EUR", paid_at=iso_utc(START - timedelta(hours=2)),
                          customer="Erika Mustermann", **details)  # fmt: skip


def _seen(orders: Orders, order_id: str, status: str) -> bool:
    try:
        return orders.get(order_id).status == status and orders.get(order_id).pending == 0
    except InputError:
        return False


def test_an_online_order_is_picked_up_at_till_a_with_its_stock_reserved_and_visible_at_till_b(store: Store) -> None:
    hub, (a, b) = store.hub, store.orders
    hub.set_stock("demo", "store", "1001", Decimal(10))
    _place(store, "web-1", pickup_code="4711")
    # Till B sees the reservation twice over: the order itself, and the shop's stock level.
    assert wait_until(lambda: _seen(b, "web-1", "placed") and b.reserved("1001").shop == 2)
    assert wait_until(lambda: _seen(a, "web-1", "placed"))
    seen = b.reserved("1001")
    assert [str(x) for x in (seen.here, seen.shop, seen.shop_level, seen.free)] == ["2", "2", "10", "8"]
    availability_b = availability(store.tills[1].ledger, "1001")
    assert availability_b is not None and availability_b.warn(Decimal(9))  # selling 9 would eat into the order

    a.pick("web-1", {1: Decimal(2)}, staff="ann")
    assert wait_until(lambda: _seen(b, "web-1", "picking"))
    assert [str(ln.picked) for ln in b.get("web-1").lines] == ["2", "0"]  # the partial pick shows at till B
    a.pick("web-1", {2: Decimal(1)}, staff="ann")
    ready = a.ready("web-1", staff="ann")
    assert wait_until(lambda: store.status("web-1") == "ready")  # the shop can tell the customer
    assert hub.orders.get("demo", "web-1")["hold_until"] == ready.hold_until == iso_utc(START + timedelta(days=7))
    assert wait_until(lambda: _seen(b, "web-1", "ready"))

    done = a.hand_over("web-1", "code", "TBO:web-1:4711", staff="ann")
    assert done.order.status == "collected" and store.tills[0].ledger.stock_level("1001") == -2
    assert wait_until(lambda: store.status("web-1") == "collected" and hub.stock_level("demo", "1001") == 8)
    assert wait_until(lambda: _seen(b, "web-1", "collected") and b.reserved("1001").shop == 0)
    after = b.reserved("1001")
    assert [str(x) for x in (after.here, after.shop, after.shop_level, after.free)] == ["0", "0", "8", "8"]
    history = hub.orders.get("demo", "web-1")["history"]
    assert [(h["action"], h["device"], h["staff"]) for h in history] == [
        ("picked", "till-1", "ann"), ("picked", "till-1", "ann"), ("ready", "till-1", "ann"),
        ("collected", "till-1", "ann")]  # fmt: skip
    assert hub.alerts() == []


def test_a_wrong_pickup_code_is_refused_at_the_other_till_and_nothing_moves(store: Store) -> None:
    hub, (a, b) = store.hub, store.orders
    hub.set_stock("demo", "store", "1009", Decimal(5))
    _place(store, "web-2", pickup_code="C0DE-77")
    assert wait_until(lambda: _seen(a, "web-2", "placed"))
    a.pick("web-2", {1: Decimal(2), 2: Decimal(1)}, staff="ann")
    a.ready("web-2", staff="ann")
    assert wait_until(lambda: _seen(b, "web-2", "ready"))
    with pytest.raises(InputError, match=r"^wrong pickup code for order web-2; 4 attempt\(s\) left$"):
        b.hand_over("web-2", "code", "C0DE-78", staff="ann")
    assert wait_until(lambda: store.settled(1))
    assert store.status("web-2") == "ready" and hub.stock_level("demo", "1009") == 5
    assert b.get("web-2").status == "ready" and store.tills[1].ledger.stock_level("1009") == 0
    b.hand_over("web-2", "code", "C0DE-77", staff="ann")
    assert wait_until(lambda: store.status("web-2") == "collected" and hub.stock_level("demo", "1009") == 4)
    assert wait_until(lambda: _seen(a, "web-2", "collected"))
    assert hub.alerts() == []


def test_ship_from_store_end_to_end(store: Store) -> None:
    hub, (a, b) = store.hub, store.orders
    hub.set_stock("demo", "store", "1001", Decimal(6))
    _place(store, "web-3", kind="ship", ship_to=ADDRESS, carrier="DHL Paket")
    assert wait_until(lambda: _seen(a, "web-3", "placed"))
    a.pick("web-3", {1: Decimal(2), 2: Decimal(1)}, staff="ann")
    a.pack("web-3", staff="ann")
    paper = SimulatedPrinter()
    ReceiptPrinter(paper).print_receipt(a.slip("web-3", staff="ann"))
    label = paper.text()
    assert "PACKING SLIP" in label and "Erika Mustermann" in label and "10115 Berlin" in label
    assert "[CODE128 web-3]" in label
    a.ship("web-3", "00340434161234567890", staff="ann", carrier="DHL")
    assert wait_until(lambda: store.status("web-3") == "shipped" and hub.stock_level("demo", "1001") == 4)
    doc = hub.orders.get("demo", "web-3")
    assert (doc["tracking"], doc["carrier"]) == ("00340434161234567890", "DHL")
    assert wait_until(lambda: _seen(b, "web-3", "shipped") and b.reserved("1001").shop == 0)
    assert b.get("web-3").tracking == "00340434161234567890"
    assert hub.alerts() == []


def test_an_uncollected_order_expires_and_its_stock_is_free_again(store: Store) -> None:
    hub, (a, b) = store.hub, store.orders
    hub.set_stock("demo", "store", "1001", Decimal(3))
    _place(store, "web-4", pickup_code="1")
    assert wait_until(lambda: _seen(a, "web-4", "placed"))
    a.pick("web-4", {1: Decimal(2), 2: Decimal(1)}, staff="ann")
    a.ready("web-4", staff="ann")
    assert wait_until(lambda: _seen(b, "web-4", "ready") and b.reserved("1001").shop == 2)
    assert b.reserved("1001").free == 1
    store.clock.advance(6 * 86400)
    assert a.expire_due() == [] and b.expire_due() == []
    store.clock.advance(2 * 86400)
    expired = a.expire_due() + b.expire_due()  # both tills may expire it: the second is a harmless duplicate
    assert "web-4" in expired
    assert wait_until(lambda: store.status("web-4") == "expired")
    assert wait_until(lambda: _seen(b, "web-4", "expired") and b.reserved("1001").shop == 0)
    assert b.reserved("1001").free == 3 and hub.stock_level("demo", "1001") == 3  # nothing left the store
    assert wait_until(lambda: store.settled(0) and store.settled(1))
    assert hub.alerts() == []


def test_a_hand_over_while_offline_after_the_shop_cancelled_is_kept_and_flagged(store: Store) -> None:
    hub, (a, _) = store.hub, store.orders
    hub.set_stock("demo", "store", "1001", Decimal(5))
    _place(store, "web-5", pickup_code="9")
    assert wait_until(lambda: _seen(a, "web-5", "placed"))
    a.pick("web-5", {1: Decimal(2), 2: Decimal(1)}, staff="ann")
    a.ready("web-5", staff="ann")
    assert wait_until(lambda: store.status("web-5") == "ready" and store.settled(0))
    offline = store.services[0]
    assert offline is not None
    offline.close()  # till A goes offline
    hub.orders.cancel("demo", "web-5", "customer cancelled online")
    a.hand_over("web-5", "id", staff="ann")  # A does not know yet: the customer leaves with the goods
    assert a.get("web-5").status == "collected"
    store.connect(0)
    assert wait_until(lambda: store.status("web-5") == "collected" and hub.stock_level("demo", "1001") == 3)
    [(code, subject, message)] = hub.alerts("demo")
    assert (code, subject) == (ALERT_CONFLICT, "web-5")
    assert message == "order web-5 was collected by till-1 after it was cancelled"
    assert wait_until(lambda: _seen(a, "web-5", "collected"))
