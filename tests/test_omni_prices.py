"""Prices and promotions from the shop at two tills on a real Mosquitto: propagation time, channels, stale catalog."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from appliance.alerts import active_alerts
from appliance.catalog import Catalog
from appliance.config import Config, parse_config
from appliance.demo import seed
from appliance.errors import InputError
from appliance.money import Currency
from appliance.promotions import PromoContext, PromoLine, evaluate, promotion_from_dict, promotion_to_dict
from appliance.till import Till, open_ledger
from sync.hub import Hub
from sync.inbound import doc_version
from sync.link import LinkSettings
from sync.service import ALERT_CATALOG, SyncOptions, SyncService, settings_from_config
from sync.testing import Mosquitto, wait_until

WATER, JUICE = "4006381333931", "5901234123457"
ITEMS = [
    {"sku": "1001", "name": "Sparkling Water 1.5l", "price": 79, "barcodes": [WATER], "tax_class": "reduced"},
    {"sku": "1002", "name": "Orange Juice 1l", "price": 199, "barcodes": [JUICE], "tax_class": "reduced"},
]  # fmt: skip
HOUR = 3600.0


class ShiftedClock:
    """The system clock, with wall time that a test can move forward (monotonic time stays real)."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def monotonic(self) -> float:
        return time.monotonic()


@dataclasses.dataclass
class Shop:
    tmp: Path
    broker: Mosquitto
    hub: Hub
    configs: list[Config]
    dirs: list[Path]
    tills: list[Till]
    services: list[SyncService]
    clock: ShiftedClock

    def start_hub(self) -> Hub:
        self.hub = Hub(self.tmp / "hub", LinkSettings.from_urls([self.broker.url], "hub", backoff_initial=0.05))
        return self.hub.start()


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[Shop]:
    configs = [parse_config(f'[store]\ndevice_id = "till-{i}"\n', environ={}) for i in (1, 2)]
    dirs = [tmp_path / f"till-{i}" for i in (1, 2)]
    clock = ShiftedClock()
    options = SyncOptions(window=50, ack_timeout=5.0, health_interval=0.02, poll_interval=0.005,
                          reconcile_interval=None, catalog_max_age=HOUR)  # fmt: skip
    with Mosquitto(tmp_path / "broker") as broker:
        hub = Hub(tmp_path / "hub", LinkSettings.from_urls([broker.url], "hub", backoff_initial=0.05)).start()
        shop = Shop(tmp_path, broker, hub, configs, dirs, [], [], clock)
        try:
            for config, d in zip(configs, dirs, strict=True):
                shop.tills.append(Till(config, open_ledger(config, d), fast_hash=True))
                seed(shop.tills[-1], d)
                link = dataclasses.replace(settings_from_config(config, d, (broker.url,)), backoff_initial=0.05)
                shop.services.append(SyncService.from_config(config, d, link=link, options=options,
                                                             clock=clock).start())  # fmt: skip
            assert wait_until(lambda: all(s.link.connected for s in shop.services) and hub.link.connected)
            yield shop
        finally:
            for s in shop.services:
                s.close()
            for t in shop.tills:
                t.ledger.close()
            shop.hub.close()


def _price(till: Till, code: str) -> int:
    sale = till.new_sale("ann")
    till.scan(sale, code)
    return sale.lines[0].unit_price


def _alerts(svc: SyncService) -> set[str]:
    return {a.code for a in active_alerts(svc.ledger)}


def test_a_price_change_is_seen_at_both_tills_within_seconds(shop: Shop) -> None:
    v1 = shop.hub.publish_catalog("demo", ITEMS, currency="EUR")
    assert wait_until(lambda: all(doc_version(s.ledger, "catalog") == v1 for s in shop.services))
    assert [_price(t, WATER) for t in shop.tills] == [79, 79]
    started = time.monotonic()
    v2 = shop.hub.change_prices("demo", {"1001": 89})
    seen: dict[int, float] = {}

    def applied() -> bool:
        for i, t in enumerate(shop.tills):
            if i not in seen and Catalog(t.ledger.conn).by_sku("1001").price == 89:
                seen[i] = time.monotonic() - started
        return len(seen) == 2

    # "within seconds" is a benchmark (bench/omni.py, docs/performance.md), not a timed test: this
    # only waits long enough for a loaded machine
    assert wait_until(applied, timeout=30.0), seen
    assert [doc_version(s.ledger, "catalog") for s in shop.services] == [v2, v2]
    assert [_price(t, WATER) for t in shop.tills] == [89, 89]  # the next scan at either till sells at the new price
    assert [_price(t, JUICE) for t in shop.tills] == [199, 199]


PROMOTIONS: list[dict[str, Any]] = [
    {"id": "web-water", "name": "Web: 20% off water", "kind": "percent_off", "target": {"skus": ["1001"]},
     "percent": "20", "channels": ["online"]},
    {"id": "juice-10", "name": "10 cents off juice", "kind": "amount_off", "target": {"skus": ["1002"]},
     "amount": "0.10"},
    {"id": "both-juice", "name": "Juice 3 for 2 everywhere", "kind": "multi_buy", "target": {"skus": ["1002"]},
     "buy": 3, "pay": 2, "channels": ["online", "store"]},
]  # fmt: skip


def test_an_online_only_promotion_does_not_run_in_store_while_the_others_do(shop: Shop) -> None:
    v = shop.hub.publish_promotions("demo", PROMOTIONS)
    assert wait_until(lambda: all(doc_version(s.ledger, "promotions") == v for s in shop.services))
    for till in shop.tills:
        till.reload_promotions()
        assert {p.id: sorted(p.channels) for p in till.policy().promotions} == {
            "web-water": ["online"], "juice-10": [], "both-juice": ["online", "store"]}  # fmt: skip
        sale = till.new_sale("ann")
        till.scan(sale, WATER)
        till.scan(sale, JUICE)
        water, juice = sale.lines
        assert (water.promo_discount, water.promo_reasons) == (0, ())  # the web-only offer stays online
        assert juice.promo_discount == 10 and juice.promo_reasons == ("10 cents off juice",)
        for _ in range(2):
            till.scan(sale, JUICE)
        assert sum(ln.promo_discount for ln in sale.lines[1:]) == 199  # 3 for 2 runs in store as well


def test_the_engine_applies_a_promotion_only_in_its_channels() -> None:
    eur = Currency.of("EUR")
    web = promotion_from_dict(PROMOTIONS[0], eur)
    assert web.runs_in("online") and not web.runs_in("store")
    assert promotion_from_dict(PROMOTIONS[1], eur).runs_in("store")
    assert promotion_to_dict(web, eur)["channels"] == ["online"]
    assert "channels" not in promotion_to_dict(promotion_from_dict(PROMOTIONS[1], eur), eur)
    with pytest.raises(InputError, match="channels"):
        promotion_from_dict({**PROMOTIONS[1], "channels": "store"}, eur)
    line = PromoLine(key="1", sku="1001", department="", quantity=Decimal(1), unit_price=100, amount=100)
    at = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
    assert evaluate([line], [web], PromoContext(now=at, tz=UTC)).total == 0
    assert evaluate([line], [web], PromoContext(now=at, tz=UTC, channel="online")).total == 20


def test_the_stale_catalog_alert_is_raised_and_cleared(shop: Shop) -> None:
    svc = shop.services[0]
    time.sleep(0.1)
    assert svc.call(svc.check_catalog).result(5) is None  # no catalog from the shop yet: nothing to be stale
    assert ALERT_CATALOG not in _alerts(svc)
    v = shop.hub.publish_catalog("demo", ITEMS, currency="EUR")
    assert wait_until(lambda: doc_version(svc.ledger, "catalog") == v)

    shop.hub.close()  # the shop goes away: nobody confirms the catalog any more
    assert wait_until(lambda: svc.hub_online is False)
    shop.clock.offset = timedelta(minutes=50)
    time.sleep(0.2)
    assert ALERT_CATALOG not in _alerts(svc)  # 50 minutes is within the hour allowed
    shop.clock.offset = timedelta(hours=2)
    assert wait_until(lambda: ALERT_CATALOG in _alerts(svc))
    (alert,) = [a for a in active_alerts(svc.ledger) if a.code == ALERT_CATALOG]
    assert f"version {v}" in alert.message and "1 h" in alert.message
    assert svc.call(svc.state).result(5)["health"]["catalog"] == "degraded"

    shop.start_hub()  # back: the retained catalog is still the current one
    assert wait_until(lambda: ALERT_CATALOG not in _alerts(svc))
    assert "catalog" not in svc.call(svc.state).result(5)["health"]

    # connected, but the shop's newer catalog cannot be applied here: not current either
    shop.hub.publish_catalog("demo", ITEMS, currency="USD")
    assert wait_until(lambda: svc.ledger.conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0] > 0)
    shop.clock.offset = timedelta(hours=4)
    assert wait_until(lambda: ALERT_CATALOG in _alerts(svc))
    good = shop.hub.publish_catalog("demo", ITEMS, currency="EUR")
    assert wait_until(lambda: doc_version(svc.ledger, "catalog") == good)
    assert wait_until(lambda: ALERT_CATALOG not in _alerts(svc))
