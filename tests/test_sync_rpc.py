"""Generic requests to the shop (sync/rpc.py) over a real Mosquitto: answers, errors, idempotency by id."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from appliance.config import parse_config
from appliance.errors import DeviceUnavailable, InputError, NotFound, SaleError, TenderError, TillboxError
from appliance.till import open_ledger
from sync import rpc
from sync.hub import Hub
from sync.link import LinkSettings, message_properties
from sync.service import SyncOptions, SyncService, settings_from_config
from sync.testing import Mosquitto, wait_until

FAST = SyncOptions(window=50, ack_timeout=5.0, health_interval=0.05, poll_interval=0.005, reconcile_interval=None,
                   lookup_timeout=2.0)  # fmt: skip


@dataclasses.dataclass
class Shop:
    broker: Mosquitto
    hub: Hub
    service: SyncService


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[Shop]:
    config = parse_config('[store]\ndevice_id = "till-1"\n', environ={})
    open_ledger(config, tmp_path / "till").close()
    with Mosquitto(tmp_path / "broker") as broker:
        hub = Hub(tmp_path / "hub", LinkSettings.from_urls([broker.url], "hub", backoff_initial=0.05)).start()
        link = dataclasses.replace(settings_from_config(config, tmp_path / "till", (broker.url,)), backoff_initial=0.05)
        service = SyncService.from_config(config, tmp_path / "till", link=link, options=FAST).start()
        try:
            assert wait_until(lambda: hub.link.connected and service.link.connected)
            yield Shop(broker, hub, service)
        finally:
            service.close()
            hub.close()


def test_stock_in_other_stores_is_answered_and_a_repeated_id_gets_the_first_answer(shop: Shop) -> None:
    shop.hub.set_stock("demo", "store", "1002", Decimal(5))
    shop.hub.set_stock("north", "store", "1002", Decimal("2.5"))
    shop.hub.set_stock("north", "web", "1002", Decimal(1))
    rid = str(uuid.uuid4())
    first = shop.service.request("stock-query", {"skus": ["1002", "nope"]}, request_id=rid)
    north = {"1002": {"levels": {"store": "2.5", "web": "1"}, "reserved": "0"}}
    assert first == {"stores": {"demo": {"1002": {"levels": {"store": "5"}, "reserved": "0"}}, "north": north}}

    shop.hub.set_stock("demo", "store", "1002", Decimal(9))
    assert shop.service.request("stock-query", {"skus": ["1002", "nope"]}, request_id=rid) == first
    fresh = shop.service.request("stock-query", {"skus": ["1002"]})
    assert fresh["stores"]["demo"]["1002"]["levels"] == {"store": "9"}
    assert shop.hub.query("SELECT count(*) FROM answers WHERE name = 'stock-query'") == [(2,)]


@pytest.mark.parametrize(
    ("raised", "expected"),
    [(NotFound("no such card"), NotFound), (TenderError("card blocked"), TenderError),
     (SaleError("order cancelled"), SaleError), (InputError("bad"), InputError)],
)  # fmt: skip
def test_an_error_answer_raises_the_matching_error_on_the_till(
    shop: Shop, raised: TillboxError, expected: type[TillboxError]
) -> None:
    def refuse(store: str, device: str, request: Any) -> dict[str, Any]:
        shop.hub.db.execute("INSERT INTO alerts(code, store, subject, message, raised_at) VALUES ('x', ?, ?, 'm', 't')",
                            (store, device))  # fmt: skip
        raise raised

    shop.hub._services["stock-query"] = refuse
    with pytest.raises(expected, match=str(raised)):
        shop.service.request("stock-query", {"skus": ["1002"]})
    assert shop.hub.query("SELECT count(*) FROM alerts") == [(0,)]  # the handler's writes were rolled back


@pytest.mark.allow_error_logs
def test_a_handler_bug_is_answered_as_a_failure_and_the_hub_keeps_serving(shop: Shop) -> None:
    calls: list[int] = []

    def broken(store: str, device: str, request: Any) -> dict[str, Any]:
        calls.append(1)
        raise KeyError("oops")

    good = shop.hub._services["stock-query"]
    shop.hub._services["stock-query"] = broken
    rid = str(uuid.uuid4())
    with pytest.raises(TillboxError, match="could not answer: KeyError"):
        shop.service.request("stock-query", {"skus": ["1002"]}, request_id=rid)
    shop.hub._services["stock-query"] = good
    # a failure is not remembered: the retry with the same id is served
    assert shop.service.request("stock-query", {"skus": ["1002"]}, request_id=rid) == {"stores": {}}
    assert calls == [1]


def test_garbage_requests_are_rejected_and_an_unserved_name_is_refused(shop: Shop) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    client.connect("127.0.0.1", shop.broker.port)
    client.loop_start()
    try:
        base = "tillbox/v1/demo/till-1"
        props = message_properties(ResponseTopic=f"{base}/res/rpc", CorrelationData=b"1")
        client.publish(f"{base}/req/stock-query", b"\xff{not json", qos=1, properties=props).wait_for_publish(5)
        client.publish(f"{base}/req/stock-query", b'{"id": "x", "skus": []}', qos=1,
                       properties=props).wait_for_publish(5)  # fmt: skip
        client.publish(f"{base}/req/launch-rockets", b"{}", qos=1, properties=props).wait_for_publish(5)
        elsewhere = message_properties(ResponseTopic="tillbox/v1/demo/till-2/res/rpc", CorrelationData=b"2")
        body = b'{"id": "' + str(uuid.uuid4()).encode() + b'", "skus": ["1"]}'
        client.publish(f"{base}/req/stock-query", body, qos=1, properties=elsewhere).wait_for_publish(5)
    finally:
        client.loop_stop()
        client.disconnect()
    assert wait_until(lambda: len(shop.hub.query("SELECT reason FROM rejected")) == 4)
    reasons = " | ".join(r[0] for r in shop.hub.query("SELECT reason FROM rejected ORDER BY rowid"))
    assert "unknown request 'launch-rockets'" in reasons and "own res/" in reasons
    assert shop.service.request("stock-query", {"skus": ["1"]}) == {"stores": {}}


def test_requests_fail_fast_offline_and_invalid_requests_never_leave_the_till(shop: Shop) -> None:
    with pytest.raises(InputError, match="stock-query-request"):
        shop.service.request("stock-query", {"skus": []})
    with pytest.raises(ValueError):
        shop.service.request("stock-query", {"skus": ["1"]}, request_id="not-a-uuid")
    shop.hub.close()
    assert wait_until(lambda: shop.service.hub_online is False)
    with pytest.raises(DeviceUnavailable, match="hub is offline"):
        shop.service.request("stock-query", {"skus": ["1"]})


def test_error_codes_round_trip() -> None:
    for exc in (NotFound("a"), TenderError("b"), SaleError("c"), InputError("d"), TillboxError("e")):
        answer = rpc.failed(str(uuid.uuid4()), exc, "2026-03-02T09:30:00Z")
        back = rpc.error_from(answer["code"], answer["error"])
        assert type(back) is type(exc) and str(back) == str(exc)
