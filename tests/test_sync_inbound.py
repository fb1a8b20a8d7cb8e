"""Inbound messages: validated, versioned, all-or-nothing; bad ones dead-lettered with an alert."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.alerts import active_alerts
from appliance.catalog import Catalog
from appliance.clock import FrozenClock
from appliance.config import Config
from appliance.demo import seed
from appliance.ledger import Ledger
from appliance.till import Till, open_ledger
from sync.inbound import ALERT_REJECTED, Inbound, InboundPolicy, availability, doc_version

T = "tillbox/v1/demo/"
ITEM = {"sku": "1001", "name": "Sparkling Water 1.5l", "price": 79, "barcodes": ["4006381333931"],
        "tax_class": "reduced"}  # fmt: skip


@pytest.fixture
def led(tmp_path: Path, config: Config) -> Iterator[Ledger]:
    with open_ledger(config, tmp_path) as ledger:
        seed(Till(config, ledger, fast_hash=True), tmp_path)
        yield ledger


@pytest.fixture
def inbound(led: Ledger, config: Config) -> Inbound:
    policy = InboundPolicy(currency=config.currency, tax_classes=tuple(config.tax.classes), max_bytes=4096)
    return Inbound(led, policy, clock=FrozenClock())


def js(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def snapshot(version: int, *items: dict[str, Any]) -> bytes:
    return js({"version": version, "currency": "EUR", "items": list(items) or [ITEM]})


def dead(led: Ledger) -> list[tuple[str, str]]:
    return [(str(t), str(r)) for t, r in led.conn.execute("SELECT topic, reason FROM dead_letters ORDER BY id")]


def prices(led: Ledger) -> dict[str, int]:
    return {str(s): int(p) for s, p in led.conn.execute("SELECT sku, price FROM items WHERE active = 1")}


def alerted(led: Ledger) -> bool:
    return ALERT_REJECTED in [a.code for a in active_alerts(led)]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "not valid JSON"),
        (b"x" * 5000, "more than the limit"),
        (js({"version": "2", "currency": "EUR", "items": [ITEM]}), "version"),  # wrongly typed
        (js({"version": 2, "currency": "EUR", "items": [{**ITEM, "price": "0.79"}]}), "price"),
        (js({"version": 2, "currency": "EUR", "items": [{**ITEM, "price": 0.5}]}), "price"),  # floats never
        (js({"version": 2, "currency": "EUR", "items": [ITEM], "extra": 1}), "extra"),
        (js([1, 2]), "not of type 'object'"),
    ],
)
def test_bad_snapshots_are_dead_lettered_and_alerted(
    inbound: Inbound, led: Ledger, payload: bytes, reason: str
) -> None:
    before = prices(led)
    assert inbound.handle(T + "catalog/snapshot", payload) is False
    [(topic, why)] = dead(led)
    assert topic == T + "catalog/snapshot" and reason in why
    assert prices(led) == before and doc_version(led, "catalog") == 0
    assert alerted(led)


def test_a_snapshot_with_one_bad_row_applies_nothing(inbound: Inbound, led: Ledger) -> None:
    before = prices(led)
    bad = {**ITEM, "sku": "2002", "barcodes": ["5901234123457"], "tax_class": "luxury"}
    assert not inbound.handle(T + "catalog/snapshot", snapshot(1, {**ITEM, "price": 1}, bad))
    assert "unknown tax_class 'luxury'" in dead(led)[0][1]
    assert prices(led) == before


def test_snapshot_then_delta_then_out_of_order(inbound: Inbound, led: Ledger) -> None:
    assert inbound.handle(T + "catalog/snapshot", snapshot(3))
    assert prices(led) == {"1001": 79}
    assert inbound.handle(T + "catalog/snapshot", snapshot(3))  # the retained copy again: ignored quietly
    delta = {"version": 4, "base_version": 3, "currency": "EUR", "prices": [{"sku": "1001", "price": 85}]}
    assert inbound.handle(T + "catalog/delta", js(delta))
    assert prices(led) == {"1001": 85} and doc_version(led, "catalog") == 4
    assert dead(led) == [] and not alerted(led)
    assert not inbound.handle(T + "catalog/snapshot", snapshot(2))  # older than what we have
    assert "out of order" in dead(led)[0][1] and alerted(led)
    assert prices(led) == {"1001": 85}


def test_a_delta_on_an_unknown_base_asks_for_a_snapshot(inbound: Inbound, led: Ledger) -> None:
    assert inbound.handle(T + "catalog/snapshot", snapshot(1))
    delta = {"version": 6, "base_version": 5, "currency": "EUR", "prices": [{"sku": "1001", "price": 1}]}
    assert not inbound.handle(T + "catalog/delta", js(delta))
    assert prices(led) == {"1001": 79}
    [event] = [e for e in led.outbox(limit=1000) if e.type == "tillbox.catalog.snapshot_requested"]
    assert json.loads(event.data)["have_version"] == 1
    assert "snapshot requested" in dead(led)[0][1]
    assert not alerted(led)  # missing a delta while offline is normal


def test_a_delta_with_an_unknown_sku_applies_nothing(inbound: Inbound, led: Ledger) -> None:
    assert inbound.handle(T + "catalog/snapshot", snapshot(1))
    delta = {"version": 2, "base_version": 1, "currency": "EUR",
             "prices": [{"sku": "1001", "price": 5}, {"sku": "nope", "price": 6}]}  # fmt: skip
    assert not inbound.handle(T + "catalog/delta", js(delta))
    assert prices(led) == {"1001": 79} and doc_version(led, "catalog") == 1


def test_stock_levels_are_versioned(inbound: Inbound, led: Ledger) -> None:
    def level(version: int, qty: str, sku: str = "1001") -> bytes:
        return js({"sku": sku, "version": version, "levels": {"store": qty, "online": "1"}, "reserved": "0"})

    assert inbound.handle(T + "stock/1001", level(5, "12"))
    assert not inbound.handle(T + "stock/1001", level(3, "99"))  # out of order
    assert not inbound.handle(T + "stock/1001", level(6, "1", sku="1002"))  # wrong topic
    assert not inbound.handle(T + "stock/1001", level(7, "1.5kg"))  # not a quantity
    seen = availability(led, "1001")
    assert seen is not None and seen.version == 5 and seen.levels == {"store": Decimal(12), "online": Decimal(1)}
    assert len(dead(led)) == 3


def test_invalid_promotions_change_nothing(inbound: Inbound, led: Ledger) -> None:
    before = led.conn.execute("SELECT id, body FROM promotions ORDER BY id").fetchall()
    bad = {"version": 1, "promotions": [{"id": "x", "kind": "percent_off", "percent": "ten"}]}
    assert not inbound.handle(T + "promotions/snapshot", js(bad))
    assert led.conn.execute("SELECT id, body FROM promotions ORDER BY id").fetchall() == before
    assert inbound.handle(T + "promotions/snapshot", js({"version": 2, "promotions": []}))
    assert led.conn.execute("SELECT count(*) FROM promotions").fetchone()[0] == 0
    assert Catalog(led.conn).promotions(Config.defaults().currency) == []


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.binary(max_size=300) | st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
).map(js))  # fmt: skip
def test_random_payloads_never_change_the_catalog(inbound: Inbound, led: Ledger, payload: bytes) -> None:
    before = prices(led)
    for topic in ("catalog/snapshot", "catalog/delta", "stock/1001", "promotions/snapshot", "orders/a"):
        inbound.handle(T + topic, payload)
    assert prices(led) == before
