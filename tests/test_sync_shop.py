"""Two tills and the reference hub on one broker: prices, stock, config, commands, reconciliation."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from appliance.alerts import active_alerts
from appliance.catalog import Catalog
from appliance.config import Config, parse_config
from appliance.demo import seed
from appliance.till import Till, open_ledger, scripted_sale
from sync.hub import Hub
from sync.inbound import availability, doc_version
from sync.link import LinkSettings
from sync.reconcile import ALERT as RECONCILE_ALERT
from sync.service import SyncOptions, SyncService, settings_from_config
from sync.testing import Collector, Mosquitto, wait_until
from tests.conftest import open_shift

FAST = SyncOptions(window=50, ack_timeout=5.0, health_interval=0.05, poll_interval=0.005, reconcile_interval=None)
ITEMS = [
    {"sku": "1001", "name": "Sparkling Water 1.5l", "price": 79, "barcodes": ["4006381333931"],
     "tax_class": "reduced", "department": "drinks"},
    {"sku": "1002", "name": "Orange Juice 1l", "price": 199, "barcodes": ["5901234123457"], "tax_class": "reduced"},
]  # fmt: skip


@dataclasses.dataclass
class Shop:
    broker: Mosquitto
    hub: Hub
    configs: list[Config]
    dirs: list[Path]
    services: list[SyncService]

    def till(self, i: int) -> Till:
        return Till(self.configs[i], open_ledger(self.configs[i], self.dirs[i]), fast_hash=True)


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[Shop]:
    configs = [parse_config(f'[store]\ndevice_id = "till-{i}"\n', environ={}) for i in (1, 2)]
    dirs = [tmp_path / f"till-{i}" for i in (1, 2)]
    for config, d in zip(configs, dirs, strict=True):
        with open_ledger(config, d) as led:
            till = Till(config, led, fast_hash=True)
            seed(till, d)
            open_shift(till)
    with Mosquitto(tmp_path / "broker") as broker:
        hub = Hub(tmp_path / "hub", LinkSettings.from_urls([broker.url], "hub", backoff_initial=0.05)).start()
        services = []
        try:
            for config, d in zip(configs, dirs, strict=True):
                link = dataclasses.replace(settings_from_config(config, d, (broker.url,)), backoff_initial=0.05)
                services.append(SyncService.from_config(config, d, link=link, options=FAST).start())
            assert wait_until(lambda: all(s.link.connected for s in services) and hub.link.connected)
            yield Shop(broker, hub, configs, dirs, services)
        finally:
            for s in services:
                s.close()
            hub.close()


def _price(svc: SyncService, sku: str) -> int:
    return svc.call(lambda: Catalog(svc.ledger.conn).by_sku(sku).price).result(5)


def test_a_price_change_reaches_both_tills(shop: Shop) -> None:
    v1 = shop.hub.publish_catalog("demo", ITEMS, currency="EUR")
    assert wait_until(lambda: all(doc_version(s.ledger, "catalog") == v1 for s in shop.services))
    v2 = shop.hub.change_prices("demo", {"1001": 89})
    assert wait_until(lambda: all(doc_version(s.ledger, "catalog") == v2 for s in shop.services))
    assert [_price(s, "1001") for s in shop.services] == [89, 89]
    assert [_price(s, "1002") for s in shop.services] == [199, 199]
    active = shop.services[0].ledger.conn.execute("SELECT count(*) FROM items WHERE active = 1").fetchone()[0]
    assert active == 2  # the snapshot is the whole catalog: other demo items were deactivated


def test_a_sale_on_one_till_updates_the_stock_the_other_till_shows(shop: Shop) -> None:
    shop.hub.set_stock("demo", "store", "1001", Decimal(10))
    shop.hub.place_order("demo", "web-1", {"1001": Decimal(2)})
    other = shop.services[1]
    assert wait_until(lambda: (a := availability(other.ledger, "1001")) is not None and a.reserved == 2)
    till = shop.till(0)
    with till.ledger:
        scripted_sale(till, ["4006381333931"] * 3, [("cash", None)], cashier="t")
    assert wait_until(lambda: availability(other.ledger, "1001").levels["store"] == 7)  # type: ignore[union-attr]
    seen = availability(other.ledger, "1001")
    assert seen is not None and seen.reserved == 2
    assert not seen.warn(Decimal(5)) and seen.warn(Decimal(6))  # the 6th would eat into the online reservation
    assert other.ledger.conn.execute("SELECT status FROM pickup_orders WHERE id = 'web-1'").fetchone() == ("placed",)


def test_commands_use_response_topic_and_correlation(shop: Shop) -> None:
    svc = shop.services[0]
    svc._commands["open_drawer"] = lambda args: {"opened": True, "reason": args.get("reason", "")}
    reply = shop.hub.command("demo", "till-1", "open_drawer", {"reason": "change"}).result(5)
    assert reply == {"ok": True, "command": "open_drawer", "result": {"opened": True, "reason": "change"}}
    missing = shop.hub.command("demo", "till-2", "reprint", {"number": 1}).result(5)
    assert missing["ok"] is False and "not available" in missing["error"]
    state = shop.hub.command("demo", "till-2", "refresh").result(5)
    assert state["ok"] and state["result"]["state"]["health"]["sync"] == "ok"


def test_desired_config_is_validated_and_reported(shop: Shop) -> None:
    sub = Collector(shop.broker.url, ["tillbox/v1/demo/till-1/cfg/reported"])
    try:
        good = shop.hub.desire_config("demo", "till-1", {"sync.backlog_alert_minutes": 30})
        first = sub.wait(1)
        bad = shop.hub.desire_config("demo", "till-1", {"sync.keepalive": 1, "store.device_id": "till-9"})
        second = sub.wait(2)
    finally:
        sub.close()
    assert json.loads(first[0][1])["status"] == "accepted" and json.loads(first[0][1])["version"] == good
    rejected = json.loads(second[1][1])
    assert rejected["status"] == "rejected" and rejected["version"] == bad
    assert any("store.device_id" in e for e in rejected["errors"])
    svc = shop.services[0]
    assert doc_version(svc.ledger, "config") == good  # the bad one was not applied
    assert "sync.inbound_rejected" in [a.code for a in active_alerts(svc.ledger)]


def test_reconciliation_agrees_then_flags_a_disagreement(shop: Shop) -> None:
    svc = shop.services[0]
    till = shop.till(0)
    with till.ledger:
        for _ in range(3):
            scripted_sale(till, ["4006381333931", "5901234123457"], [("cash", None)], cashier="t")
    assert shop.hub.command("demo", "till-1", "reconcile").result(5)["ok"]
    assert wait_until(lambda: len(svc.reconcile_results) == 1)
    assert svc.reconcile_results[0] == []
    # The hub loses track of one sale's stock: the next reconciliation must notice.
    shop.hub.call(lambda: shop.hub.db.execute("UPDATE tally SET delta_milli = delta_milli + 1000 WHERE sku = '1001'"))
    assert shop.hub.command("demo", "till-1", "reconcile").result(5)["ok"]
    assert wait_until(lambda: len(svc.reconcile_results) == 2)
    assert svc.reconcile_results[1] == ["stock moves of 1001: shop -2, till -3"]
    assert RECONCILE_ALERT in [a.code for a in active_alerts(svc.ledger)]
