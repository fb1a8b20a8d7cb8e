"""TLS with client certificates and username/password, against a real Mosquitto; refusals back off, not crash."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from appliance.alerts import active_alerts
from appliance.config import Config, parse_config
from appliance.demo import seed
from appliance.till import Till, open_ledger, scripted_sale
from sync.hub import Hub
from sync.link import LinkSettings
from sync.service import ALERT_REFUSED, SyncOptions, SyncService, settings_from_config
from sync.testing import Mosquitto, Pki, make_pki, wait_until, write_password_file
from tests.conftest import open_shift

FAST = SyncOptions(window=50, ack_timeout=5.0, health_interval=0.05, poll_interval=0.005, reconcile_interval=None)
WATER = "4006381333931"
Start = Callable[[Config], SyncService]


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "till" / "pki", now=datetime.now(UTC))


def _till(data: Path, sync: str) -> Config:
    config = parse_config(f'[store]\ndevice_id = "till-1"\n[sync]\nenabled = true\n{sync}', environ={})
    with open_ledger(config, data) as ledger:
        till = Till(config, ledger, fast_hash=True)
        seed(till, data)
        open_shift(till)
    return config


def _sell(config: Config, data: Path) -> None:
    with open_ledger(config, data) as ledger:
        scripted_sale(Till(config, ledger, fast_hash=True), [WATER], [("cash", None)], cashier="ann")


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    started: list[SyncService] = []

    def run(config: Config) -> SyncService:
        data = tmp_path / "till"
        link = dataclasses.replace(settings_from_config(config, data), backoff_initial=0.05, backoff_cap=0.4)
        svc = SyncService.from_config(config, data, link=link, options=FAST).start()
        started.append(svc)
        return svc

    yield run
    for s in started:
        s.close()


def _state(svc: SyncService) -> dict[str, Any]:
    return svc.call(svc.state).result(5)


def test_the_till_connects_over_tls_with_its_client_certificate(tmp_path: Path, pki: Pki, start: Start) -> None:
    pki.client("demo/till-1", file_stem="till")
    hub_cert, hub_key = pki.client("tillbox-hub")
    with Mosquitto(tmp_path / "broker", tls=pki.broker_tls()) as broker:
        files = 'tls_ca_file = "pki/ca.pem"\ntls_cert_file = "pki/till.pem"\ntls_key_file = "pki/till.key"\n'
        config = _till(tmp_path / "till", f'brokers = ["{broker.url}"]\n{files}')
        hub_link = LinkSettings.from_urls([broker.url], "hub", tls_ca_file=str(pki.ca_file),
                                          tls_cert_file=str(hub_cert), tls_key_file=str(hub_key))  # fmt: skip
        with Hub(tmp_path / "hub", hub_link) as hub:
            svc = start(config)
            assert wait_until(lambda: svc.link.connected and hub.link.connected)
            _sell(config, tmp_path / "till")
            assert wait_until(lambda: hub.sale_count("demo") == 1)
            assert wait_until(lambda: svc.relay.acked == svc.relay.last_seq())
        link = _state(svc)["link"]
        assert link == {"connected": True, "broker": broker.url, "last_error": None, "refused": False,
                        "failures": 0, "retry_in_s": 0}  # fmt: skip


@pytest.mark.parametrize("wrong", ["client certificate from another CA", "server not trusted by the till"])
def test_a_certificate_problem_is_refused_with_a_clear_state_and_back_off(
    tmp_path: Path, pki: Pki, start: Start, wrong: str
) -> None:
    other = make_pki(tmp_path / "till" / "other", now=datetime.now(UTC), name="someone else's CA")
    if wrong.startswith("client"):
        other.client("demo/till-1", file_stem="till")
        files = 'tls_ca_file = "pki/ca.pem"\ntls_cert_file = "other/till.pem"\ntls_key_file = "other/till.key"\n'
        expected = "unknown ca|client certificate"
    else:
        pki.client("demo/till-1", file_stem="till")
        files = 'tls_ca_file = "other/ca.pem"\ntls_cert_file = "pki/till.pem"\ntls_key_file = "pki/till.key"\n'
        expected = "certificate verify failed"
    with Mosquitto(tmp_path / "broker", tls=pki.broker_tls()) as broker:
        config = _till(tmp_path / "till", f'brokers = ["{broker.url}"]\n{files}')
        svc = start(config)
        assert wait_until(lambda: svc.link.backoff.failures >= 3)
        state = _state(svc)
        assert state["health"]["sync"] == "unavailable"
        link = state["link"]
        assert link["connected"] is False and link["refused"] is True
        assert re.search(expected, link["last_error"]) and broker.url in link["last_error"]
        assert wait_until(lambda: ALERT_REFUSED in [a.code for a in active_alerts(svc.ledger)])
        assert svc._thread is not None and svc._thread.is_alive()  # still trying, with back-off
        assert svc.link.backoff.failures < 40  # 0.05 s doubling to 0.4 s: not a tight loop


def test_username_and_password(tmp_path: Path, start: Start) -> None:
    passwords = write_password_file(tmp_path / "passwd", {"demo/till-1": "s3cret-till", "hub": "s3cret-hub"})
    with Mosquitto(tmp_path / "broker", password_file=passwords) as broker:
        (tmp_path / "till").mkdir()
        (tmp_path / "till" / "mqtt.pw").write_text("s3cret-till\n")
        (tmp_path / "till" / "wrong.pw").write_text("guess\n")
        config = _till(tmp_path / "till", f'brokers = ["{broker.url}"]\nusername = "demo/till-1"\n'
                                          'password_file = "wrong.pw"\n')  # fmt: skip
        refused = start(config)
        assert wait_until(lambda: refused.link.backoff.failures >= 2)
        state = _state(refused)
        assert state["health"]["sync"] == "unavailable"
        assert "not authorized" in state["link"]["last_error"].lower()
        assert wait_until(lambda: ALERT_REFUSED in [a.code for a in active_alerts(refused.ledger)])
        refused.close()

        good = dataclasses.replace(config, sync=dataclasses.replace(config.sync, password_file="mqtt.pw"))
        hub_link = LinkSettings.from_urls([broker.url], "hub", username="hub", password="s3cret-hub")
        with Hub(tmp_path / "hub", hub_link) as hub:
            svc = start(good)
            assert wait_until(lambda: svc.link.connected and hub.link.connected)
            _sell(good, tmp_path / "till")
            assert wait_until(lambda: hub.sale_count("demo") == 1)
            assert wait_until(lambda: ALERT_REFUSED not in [a.code for a in active_alerts(svc.ledger)])
