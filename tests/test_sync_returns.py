"""Returns of sales the till does not have: other tills' sales and online orders, asked from the hub."""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from appliance.clock import iso_utc
from appliance.config import Config, parse_config
from appliance.demo import seed
from appliance.errors import DeviceUnavailable, InputError, NotFound, SaleError
from appliance.ledger import Ledger
from appliance.returns import ReturnRequest
from appliance.staff import Action, Approval
from appliance.till import Completed, Till, open_ledger
from drivers.payment import Outcome, SimulatedTerminal
from sync.hub import ALERT_OVER_REFUNDED, Hub
from sync.inbound import ALERT_REJECTED
from sync.link import LinkSettings, message_properties
from sync.service import SyncOptions, SyncService, settings_from_config
from sync.testing import Mosquitto, wait_until
from tests.conftest import open_shift

FAST = SyncOptions(window=50, ack_timeout=5.0, health_interval=0.05, poll_interval=0.005, reconcile_interval=None,
                   lookup_timeout=2.0)  # fmt: skip
JUICE_PAID = {"sku": "1002", "qty": "2", "name": "Orange Juice 1l", "total": 398, "tax": 26,
              "tax_rates": {"reduced": 26}, "tax_class": "reduced"}  # fmt: skip


@dataclasses.dataclass
class Store:
    broker: Mosquitto
    hub: Hub
    configs: list[Config]
    tills: list[Till]
    services: list[SyncService]

    def connect(self, i: int, options: SyncOptions = FAST) -> SyncService:
        """Start till ``i``'s sync service and let its returns ask the shop."""
        config, till = self.configs[i], self.tills[i]
        link = dataclasses.replace(settings_from_config(config, till.ledger.path.parent, (self.broker.url,)),
                                   backoff_initial=0.05)  # fmt: skip
        svc = SyncService.from_config(config, till.ledger.path.parent, link=link, options=options).start()
        self.services.append(svc)
        till.returns.lookup = svc.lookup_sale
        assert wait_until(lambda: svc.link.connected)
        return svc


def _approval(till: Till) -> Approval:
    return Approval(Action.REFUND, "sue", None, till.clock.now() + timedelta(minutes=1))


def _sell(till: Till, sku: str, qty: int) -> Completed:
    sale = till.new_sale("ann")
    till.add_sku(sale, sku, quantity=Decimal(qty))
    sale.pay_cash(sale.cash_due())
    return till.complete(sale)


def _refund(till: Till, reference: str, line: int, qty: int) -> dict[str, Any]:
    original = till.returns.find_sale(reference)
    plan = till.returns.plan_receipted(original, [ReturnRequest(Decimal(qty), line=line)])
    doc, _ = till.refund(plan, _approval(till))
    return doc


def _dead_letters(ledger: Ledger) -> list[str]:
    return [str(r[0]) for r in ledger.conn.execute("SELECT reason FROM dead_letters ORDER BY id")]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    configs = [parse_config(f'[store]\ndevice_id = "till-{i}"\n', environ={}) for i in (1, 2, 3)]
    tills = []
    for config in configs:
        d = tmp_path / config.store.device_id
        till = Till(config, open_ledger(config, d), fast_hash=True)
        seed(till, d)
        open_shift(till)
        tills.append(till)
    services: list[SyncService] = []
    with Mosquitto(tmp_path / "broker") as broker:
        hub = Hub(tmp_path / "hub", LinkSettings.from_urls([broker.url], "hub", backoff_initial=0.05)).start()
        try:
            assert wait_until(lambda: hub.link.connected)
            yield Store(broker, hub, configs, tills, services)
        finally:
            for svc in services:
                svc.close()
            hub.close()
            for till in tills:
                till.ledger.close()


def test_a_sale_on_one_till_is_returned_at_another_and_never_refunded_twice(store: Store) -> None:
    one, two, three = store.tills
    s1, s2, s3 = store.connect(0), store.connect(1), store.connect(2)
    done = _sell(one, "1002", 2)  # two juices at 1.99
    assert wait_until(lambda: store.hub.sale_count("demo") == 1)
    reference = "TB-till-1-000001"

    first = _refund(two, reference, 1, 1)
    assert (first["original_sale_id"], first["original_device"]) == (done.committed.sale_id, "till-1")
    assert (first["total"], first["tax"], first["refunds"][0]["kind"]) == (199, 13, "cash")
    stored = two.ledger.conn.execute("SELECT source, reference FROM remote_sales").fetchall()
    assert stored == [("till-1", reference)]
    assert wait_until(lambda: store.hub.contiguous("demo", "till-2") == s2.relay.last_seq())

    # A third till is told that till 2 refunded one juice: only one is left to refund there.
    original = three.returns.find_sale(reference)
    assert original["refunded_elsewhere"] == [{"line": 1, "qty": "1", "amount": 199, "tax": 13}]
    with pytest.raises(SaleError, match="only 1 of 2 not yet refunded"):
        three.returns.plan_receipted(original, [ReturnRequest(Decimal(2), line=1)])
    last = _refund(three, reference, 1, 1)
    assert (last["total"], last["tax"]) == (199, 13)  # the remainder: refunds add up to what was paid
    assert wait_until(lambda: store.hub.contiguous("demo", "till-3") == s3.relay.last_seq())
    with pytest.raises(SaleError, match="only 0 of 2"):
        _refund(two, reference, 1, 1)  # till 2 asks again and learns of till 3's refund
    assert store.hub.alerts() == []

    # Till 1 has the sale itself and does not ask; the hub flags the line refunded beyond what was sold.
    _refund(one, reference, 1, 1)
    assert wait_until(lambda: store.hub.alerts() != [])
    [(code, subject, message)] = store.hub.alerts("demo")
    assert code == ALERT_OVER_REFUNDED and subject == f"{done.committed.sale_id}/1"
    assert "3 refunded but 2 sold" in message and "till-1, till-2, till-3" in message
    assert s1.relay.last_seq() > 0


def test_an_online_order_is_returned_at_a_till(store: Store) -> None:
    till = store.tills[0]
    store.connect(0)
    store.hub.place_order("demo", "web-7", [JUICE_PAID], status="collected", currency="EUR",
                          paid_at=iso_utc(till.clock.now() - timedelta(days=2)))  # fmt: skip
    store.hub.place_order("demo", "web-8", {"1002": Decimal(1)})  # not paid: nothing to refund
    doc = _refund(till, "web-7", 1, 1)
    assert (doc["original_sale_id"], doc["original_device"], doc["total"], doc["tax"]) == ("web-7", "online", 199, 13)
    # no card at the counter: the online payment becomes store credit, never cash
    [credit] = doc["refunds"]
    assert (credit["kind"], credit["amount"], credit["original_reference"]) == ("store_credit", 199, "web-7")
    assert till.stored_value.get(credit["reference"]).balance == 199
    assert doc["taxes"][0]["tax"] == 13
    assert till.ledger.conn.execute("SELECT source, reference FROM remote_sales").fetchall() == [("online", "web-7")]
    with pytest.raises(SaleError, match=r"^receipt web-8 cannot be returned: order web-8 has no paid prices"):
        till.returns.find_sale("web-8")
    # paid but never collected: the goods are still in the store, the shop refunds it
    store.hub.place_order("demo", "web-9", [JUICE_PAID], status="expired", currency="EUR",
                          paid_at=iso_utc(till.clock.now()))  # fmt: skip
    with pytest.raises(SaleError, match=r"^receipt web-9 cannot be returned: order web-9 was expired"):
        till.returns.find_sale("web-9")


def test_an_online_order_is_refunded_to_the_card_presented_at_the_terminal(store: Store) -> None:
    till = store.tills[1]
    till.terminal = terminal = SimulatedTerminal()
    store.connect(1)
    store.hub.place_order("demo", "web-10", [JUICE_PAID], status="collected", currency="EUR",
                          paid_at=iso_utc(till.clock.now()))  # fmt: skip
    original = till.returns.find_sale("web-10")
    plan = till.returns.plan_receipted(original, [ReturnRequest(Decimal(2), line=1)])
    stock = till.ledger.stock_level("1002")
    doc, _ = till.refund(plan, _approval(till), card_present=True)
    [card] = doc["refunds"]
    assert (card["kind"], card["amount"], card["original_reference"]) == ("card", 398, "web-10")
    assert till.ledger.stock_level("1002") == stock + 2  # the goods come back into this store
    # a declined card refund falls back to store credit, not to cash
    store.hub.place_order("demo", "web-11", [JUICE_PAID], status="collected", currency="EUR",
                          paid_at=iso_utc(till.clock.now()))  # fmt: skip
    terminal.script(Outcome(False, "declined"))
    plan = till.returns.plan_receipted(till.returns.find_sale("web-11"), [ReturnRequest(Decimal(1), line=1)])
    doc, _ = till.refund(plan, _approval(till), card_present=True)
    assert [(r["kind"], r["amount"]) for r in doc["refunds"]] == [("store_credit", 199)]


def test_an_unknown_reference_is_a_clear_not_found(store: Store) -> None:
    till = store.tills[1]
    store.connect(1)
    with pytest.raises(NotFound, match=r"^no sale found for receipt TB-till-9-000042, on this till or at the shop$"):
        till.returns.find_sale("TB-till-9-000042")
    with pytest.raises(NotFound, match="on this till or at the shop"):
        till.returns.find_sale("0195a3e2-6a00-7abc-8def-0123456789ab")
    with pytest.raises(NotFound, match=r"^no sale found for receipt TB-till-2-000005$"):
        till.returns.find_sale("TB-till-2-000005")  # this till's own numbering: not asked
    assert _dead_letters(till.ledger) == []


def test_when_the_shop_is_down_the_error_says_so(store: Store) -> None:
    one, two = store.tills[0], store.tills[1]
    svc = store.connect(1, dataclasses.replace(FAST, lookup_timeout=0.3))
    _sell(one, "1002", 1)
    store.connect(0)
    assert wait_until(lambda: store.hub.sale_count("demo") == 1)
    store.hub.close()  # a clean stop publishes the hub's offline status
    assert wait_until(lambda: svc.hub_online is False)
    with pytest.raises(DeviceUnavailable, match=r"^sale TB-till-1-000001 is not on this till and the shop is not "
                                                r"reachable: its hub is offline$"):  # fmt: skip
        two.returns.find_sale("TB-till-1-000001")
    # A shop that says nothing about its hub and does not answer: the till gives up after its timeout.
    svc.hub_online = None
    with pytest.raises(DeviceUnavailable, match=r"the shop did not answer within 0\.3 s"):
        two.returns.find_sale("TB-till-1-000001")
    store.broker.stop()
    assert wait_until(lambda: not svc.link.connected)
    with pytest.raises(DeviceUnavailable, match="this till is offline"):
        two.returns.find_sale("TB-till-1-000001")


def test_a_sale_fetched_earlier_is_used_while_the_shop_is_unreachable(store: Store) -> None:
    one, two = store.tills[0], store.tills[1]
    svc = store.connect(1)
    _sell(one, "1002", 2)
    store.connect(0)
    assert wait_until(lambda: store.hub.sale_count("demo") == 1)
    assert two.returns.find_sale("TB-till-1-000001")["number"] == 1
    store.broker.stop()
    assert wait_until(lambda: not svc.link.connected)
    assert _refund(two, "TB-till-1-000001", 1, 2)["total"] == 398


class _FakeShop:
    """Answers every sale lookup with ``answer(request)`` (a shop that gets the contract wrong)."""

    def __init__(self, url: str, answer: Any) -> None:
        host, port = url.removeprefix("mqtt://").split(":")
        self.answer = answer
        self.seen = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fake-shop",
                                  protocol=MQTTProtocolVersion.MQTTv5)  # fmt: skip
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_connect = lambda c, *a: c.subscribe("tillbox/v1/+/+/req/sale", 1)
        self.client.connect(host, int(port))
        self.client.loop_start()
        assert subscribed.wait(5)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        props = message_properties(CorrelationData=msg.properties.CorrelationData)  # type: ignore[union-attr]
        client.publish(msg.properties.ResponseTopic, json.dumps(self.answer(json.loads(msg.payload))),  # type: ignore[union-attr]
                       qos=1, properties=props)  # fmt: skip
        self.seen.set()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _sale(**changes: Any) -> dict[str, Any]:
    line = {**JUICE_PAID, "line": 1, "unit": "each", "voided": False}
    return {"id": "x", "number": 1, "device": "till-1", "currency": "EUR", "completed_at": "2026-03-01T10:00:00Z",
            "tenders": [], "total": 398, "lines": [line], **changes}  # fmt: skip


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ({"found": True}, "sale-lookup-response"),  # found, but no sale
        ({"reference": "TB-till-1-000002", "found": False}, "to a lookup of"),
        ({"found": True, "sale": _sale(total=0.5)}, "sale/total"),  # floats never
        ({"found": True, "sale": _sale(number=2)}, "does not match receipt"),
        ({"found": True, "sale": _sale(currency="USD")}, "in USD"),
        ({"found": True, "sale": _sale(), "refunded": [{"line": 2, "qty": "1", "amount": 1, "tax": 0}]}, "line 2"),
    ],
    ids=["found-without-sale", "wrong-reference", "float-money", "other-sale", "other-currency", "bad-refunds"],
)
def test_an_invalid_answer_is_dead_lettered_and_nothing_is_stored(
    tmp_path: Path, answer: dict[str, Any], reason: str
) -> None:
    config = parse_config('[store]\ndevice_id = "till-2"\n', environ={})
    with open_ledger(config, tmp_path / "till") as ledger, Mosquitto(tmp_path / "broker") as broker:
        till = Till(config, ledger, fast_hash=True)
        shop = _FakeShop(broker.url, lambda request: {"reference": request["reference"], **answer})
        link = dataclasses.replace(settings_from_config(config, tmp_path / "till", (broker.url,)), backoff_initial=0.05)
        try:
            with SyncService.from_config(config, tmp_path / "till", link=link, options=FAST) as svc:
                assert wait_until(lambda: svc.link.connected)
                till.returns.lookup = svc.lookup_sale
                with pytest.raises(InputError, match="answer about TB-till-1-000001 was invalid") as err:
                    till.returns.find_sale("TB-till-1-000001")
                assert not isinstance(err.value, NotFound)
        finally:
            shop.close()
        [why] = _dead_letters(ledger)
        assert reason in why
        assert ledger.conn.execute("SELECT count(*) FROM remote_sales").fetchone()[0] == 0
        assert ALERT_REJECTED in [str(r[0]) for r in ledger.conn.execute("SELECT code FROM alerts")]


def test_the_hub_answers_only_on_the_asking_devices_res_topic(store: Store) -> None:
    spy = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="spy", protocol=MQTTProtocolVersion.MQTTv5)
    got: list[str] = []
    spy.on_message = lambda c, u, m: got.append(m.topic)
    host, port = store.broker.url.removeprefix("mqtt://").split(":")
    spy.connect(host, int(port))
    spy.subscribe("tillbox/v1/demo/+/cmd/#", 1)
    spy.loop_start()
    try:
        props = message_properties(ResponseTopic="tillbox/v1/demo/till-2/cmd/open_drawer", CorrelationData=b"x")
        spy.publish("tillbox/v1/demo/till-1/req/sale", json.dumps({"reference": "web-1"}), qos=1, properties=props)
        assert wait_until(lambda: store.hub.query("SELECT count(*) FROM rejected")[0][0] == 1)
    finally:
        spy.disconnect()
        spy.loop_stop()
    [(topic, reason)] = store.hub.query("SELECT topic, reason FROM rejected")
    assert topic == "tillbox/v1/demo/till-1/req/sale" and "device's own res/" in reason
    assert got == []
