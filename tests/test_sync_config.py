"""Remote config applied at start-up (merged over the file, validated as a whole), and the daemon's sync wiring."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance.canonical import canonical_json
from appliance.clock import FrozenClock
from appliance.config import Config, InvalidConfigError, load_config, merge_config, parse_config
from appliance.daemon import Daemon
from appliance.demo import demo_config, seed
from appliance.ledger import Ledger
from appliance.till import Till, open_ledger
from kiosk_ui.testing import DaemonThread, demo_prepare
from sync.desired import apply_desired
from sync.hub import Hub
from sync.inbound import Inbound, InboundPolicy
from sync.link import LinkSettings
from sync.service import SyncOptions, SyncService, settings_from_config
from sync.testing import Collector, Mosquitto, wait_until
from tests.conftest import open_shift

ROOT = Path(__file__).resolve().parent.parent
NOW = "2026-03-02T09:30:00.000Z"


def _store(ledger: Ledger, version: int, values: dict[str, Any]) -> None:
    """Put a desired config into ``sync_docs`` as :class:`Inbound` would after accepting it."""
    ledger.conn.execute(
        "INSERT INTO sync_docs(name, version, body, updated_at) VALUES ('config', ?, ?, ?) ON CONFLICT(name) "
        "DO UPDATE SET version = excluded.version, body = excluded.body",
        (version, canonical_json(values), NOW),
    )


def _journal(ledger: Ledger) -> list[dict[str, Any]]:
    rows = ledger.conn.execute("SELECT payload FROM journal WHERE type = 'config.applied' ORDER BY seq")
    return [json.loads(r[0]) for r in rows]


@pytest.fixture
def led(tmp_path: Path, config: Config) -> Iterator[Ledger]:
    with open_ledger(config, tmp_path) as ledger:
        yield ledger


@pytest.mark.parametrize("source", ["defaults", "example"])
def test_merging_nothing_gives_the_same_config(source: str) -> None:
    config = Config.defaults() if source == "defaults" else load_config(ROOT / "docs" / "tillbox.example.toml",
                                                                        environ={})  # fmt: skip
    assert merge_config(config, {}, environ={}) == config


def test_merged_values_are_parsed_like_a_file() -> None:
    base = parse_config('[currency]\ncode = "JPY"\n[sync]\nkeepalive = 90\n', environ={})
    merged = merge_config(base, {"sync.backlog_alert_minutes": 30, "returns.no_receipt_limit": "2500"}, environ={})
    assert (merged.sync.backlog_alert_minutes, merged.sync.keepalive) == (30, 90)  # the file's values stay
    assert merged.returns.no_receipt_limit == 2500  # money in the file's currency (yen: no minor units)
    with pytest.raises(InvalidConfigError) as err:
        merge_config(base, {"sync.keepalive": 1, "sync.nope": 2, "sync.keepalive.deeper": 3}, environ={})
    assert err.value.problems == ("sync.keepalive.deeper: not a key of a table",)
    with pytest.raises(InvalidConfigError, match="out of range"):
        merge_config(base, {"sync.keepalive": 1}, environ={})


def test_stored_desired_config_is_applied_and_journaled_once(led: Ledger, config: Config) -> None:
    assert apply_desired(config, led, time=NOW).status == "none"
    _store(led, 4, {"sync.backlog_alert_minutes": 30, "staff.session_minutes": 5})
    applied = apply_desired(config, led, time=NOW)
    assert applied.status == "applied" and applied.version == 4
    assert (applied.config.sync.backlog_alert_minutes, applied.config.staff.session_minutes) == (30, 5)
    values = {"sync.backlog_alert_minutes": 30, "staff.session_minutes": 5}
    assert applied.report(NOW) == {"version": 4, "status": "applied", "time": NOW, "values": values}
    apply_desired(config, led, time=NOW)  # the next start applies it again without a new journal entry
    assert [e["version"] for e in _journal(led)] == [4]


def test_protected_keys_stay_refused_and_an_invalid_merge_applies_nothing(led: Ledger, config: Config) -> None:
    _store(led, 5, {"store.device_id": "till-9", "currency.code": "USD", "sync.keepalive": 120})
    applied = apply_desired(config, led, time=NOW)
    assert applied.status == "applied" and applied.config.sync.keepalive == 120
    assert applied.config.store.device_id == config.store.device_id and applied.config.currency_settings.code == "EUR"
    assert set(applied.errors) == {"store.device_id cannot be set remotely", "currency.code cannot be set remotely"}
    # Valid on its own, invalid with the file's settings: a client certificate without its key.
    _store(led, 6, {"sync.tls_cert_file": "till.pem"})
    rejected = apply_desired(config, led, time=NOW)
    assert rejected.status == "rejected" and rejected.config == config
    assert rejected.report(NOW)["errors"] == [  # type: ignore[index]
        "sync.tls_key_file: tls_cert_file and tls_key_file must be given together"
    ]
    assert [(e["version"], e["status"]) for e in _journal(led)] == [(5, "applied"), (6, "rejected")]


def test_the_daemon_applies_remote_config_and_returns_other_tills_sales(tmp_path: Path) -> None:
    """One daemon start: the stored desired config is in force and reported; a sale of till 1 is refunded."""
    base = demo_config()
    config = dataclasses.replace(base, store=dataclasses.replace(base.store, device_id="till-2"),
                                 sync=dataclasses.replace(base.sync, client_id="tillbox-demo-till-2"))  # fmt: skip
    data = tmp_path / "till-2"
    with open_ledger(config, data) as ledger:  # accepted from the shop during an earlier run
        policy = InboundPolicy(currency=config.currency, tax_classes=tuple(config.tax.classes))
        Inbound(ledger, policy, clock=FrozenClock()).config(
            {"version": 7, "values": {"sync.backlog_alert_minutes": 30, "staff.session_minutes": 5}}
        )
    one = parse_config('[store]\ndevice_id = "till-1"\n', environ={})
    with Mosquitto(tmp_path / "broker") as broker, open_ledger(one, tmp_path / "till-1") as ledger:
        till = Till(one, ledger, fast_hash=True)
        seed(till, tmp_path / "till-1")
        open_shift(till)
        sale = till.new_sale("ann")
        till.add_sku(sale, "1002", quantity=Decimal(2))
        sale.pay_cash(sale.cash_due())
        till.complete(sale)
        reported = Collector(broker.url, ["tillbox/v1/demo/till-2/cfg/reported"])
        hub = Hub(tmp_path / "hub", LinkSettings.from_urls([broker.url], "hub", backoff_initial=0.05)).start()
        link = dataclasses.replace(settings_from_config(one, tmp_path / "till-1", (broker.url,)), backoff_initial=0.05)
        options = SyncOptions(ack_timeout=5.0, health_interval=0.05, poll_interval=0.005, reconcile_interval=None)
        try:
            assert wait_until(lambda: hub.link.connected)
            with SyncService.from_config(one, tmp_path / "till-1", link=link, options=options):
                assert wait_until(lambda: hub.sale_count("demo") == 1)
            daemon = Daemon(config, data, fast_hash=True, brokers=(broker.url,), prepare=demo_prepare())
            with DaemonThread(daemon) as running:
                assert daemon.config.sync.backlog_alert_minutes == 30 and daemon.sessions.idle_seconds == 300
                [(_, body)] = reported.wait(1)
                assert json.loads(body)["status"] == "applied" and json.loads(body)["version"] == 7
                assert wait_until(lambda: daemon.sync is not None and daemon.sync.hub_online is True)
                _refund_through_the_api(running)
        finally:
            reported.close()
            hub.close()


def _refund_through_the_api(running: DaemonThread) -> None:
    with httpx.Client(base_url=running.url + "/api/v1", timeout=10) as http:
        token = http.post("/session/pin", json={"staff_id": "sam", "pin": "9999"}).json()["token"]
        auth = {"Authorization": f"Bearer {token}"}
        found = http.get("/sales/TB-till-1-000001", headers=auth)
        assert found.status_code == 200, found.text
        assert found.json()["device"] == "till-1" and found.json()["lines"][0]["qty"] == "2"
        body = {"reference": "TB-till-1-000001", "lines": [{"line": 1, "qty": "1"}]}
        done = http.post("/returns", json=body, headers=auth)
        assert done.status_code == 200, done.text
        assert done.json()["return"]["total"]["minor"] == 199
        again = http.post("/returns", json={**body, "lines": [{"line": 1, "qty": "2"}]}, headers=auth)
        assert again.status_code == 409 and "only 1 of 2 not yet refunded" in again.json()["error"]["message"]
        missing = http.get("/sales/TB-till-7-000001", headers=auth)
        assert missing.status_code == 404 and "on this till or at the shop" in missing.json()["error"]["message"]


def test_an_accepted_remote_config_restarts_the_daemon_once_the_till_is_idle(tmp_path: Path) -> None:
    """Not in the middle of a sale: the restart waits until the open sale is cancelled, then happens once."""
    config = demo_config()
    with Mosquitto(tmp_path / "broker") as broker:
        hub = Hub(tmp_path / "hub", LinkSettings.from_urls([broker.url], "hub", backoff_initial=0.05)).start()
        try:
            assert wait_until(lambda: hub.link.connected)
            daemon = Daemon(config, tmp_path / "till", fast_hash=True, brokers=(broker.url,), prepare=demo_prepare())
            restarts: list[str] = []
            daemon.restart = restarts.append
            with DaemonThread(daemon) as running, httpx.Client(base_url=running.url + "/api/v1", timeout=10) as http:
                assert wait_until(lambda: daemon.sync is not None and daemon.sync.link.connected)
                token = http.post("/session/pin", json={"staff_id": "sam", "pin": "9999"}).json()["token"]
                auth = {"Authorization": f"Bearer {token}"}
                assert http.post("/cart/items", json={"code": "4006381333931"}, headers=auth).status_code == 200
                version = hub.desire_config("demo", config.store.device_id, {"staff.session_minutes": 5})
                assert wait_until(lambda: daemon.config_waiting == version)
                assert restarts == []  # a sale is open
                cancelled = http.post("/cart/cancel", json={"reason": "customer left"}, headers=auth)
                assert cancelled.status_code == 200, cancelled.text
                assert wait_until(lambda: restarts == [f"configuration version {version} from the shop"])
                assert daemon.config_waiting is None and daemon.restart is None  # once
            again = Daemon(config, tmp_path / "till", fast_hash=True, brokers=(broker.url,), prepare=demo_prepare())
            with DaemonThread(again):
                assert again.sessions.idle_seconds == 300  # in force after the restart
        finally:
            hub.close()
