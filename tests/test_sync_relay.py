"""The outbox relay against a real Mosquitto: CloudEvents out, ordered, acked, retired."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.alerts import active_alerts
from appliance.clock import FrozenClock
from appliance.config import Config
from appliance.demo import seed
from appliance.till import Till, open_ledger, scripted_sale
from drivers.payment import SimulatedTerminal
from sync.hub import Hub
from sync.link import LinkSettings
from sync.schemas import validate
from sync.service import ALERT_BACKLOG, SyncOptions, SyncService, settings_from_config
from sync.testing import Collector, Mosquitto, wait_until
from tests.conftest import open_shift

FAST = SyncOptions(window=50, ack_timeout=5.0, health_interval=0.05, poll_interval=0.005, reconcile_interval=None)
CODES = ["4006381333931", "5901234123457"]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "broker") as b:
        yield b


@pytest.fixture
def till_dir(tmp_path: Path, config: Config) -> Path:
    d = tmp_path / "till"
    with open_ledger(config, d) as led:
        till = Till(config, led, fast_hash=True)
        seed(till, d)
        open_shift(till)
    return d


def fast_link(config: Config, data_dir: Path, url: str, **kw: Any) -> LinkSettings:
    return dataclasses.replace(settings_from_config(config, data_dir, (url,)), backoff_initial=0.05,
                               backoff_cap=0.2, **kw)  # fmt: skip


def service(config: Config, data_dir: Path, url: str, **kw: Any) -> SyncService:
    kw.setdefault("options", FAST)
    return SyncService.from_config(config, data_dir, link=fast_link(config, data_dir, url), **kw)


def sell(config: Config, data_dir: Path, n: int, clock: FrozenClock | None = None) -> list[tuple[str, tuple[int, ...]]]:
    with open_ledger(config, data_dir) as led:
        till = Till(config, led, clock=clock, terminal=SimulatedTerminal(), fast_hash=True)
        out = []
        for _ in range(n):
            done = scripted_sale(till, CODES, [("cash", None)], cashier="t")
            out.append((done.committed.sale_id, done.committed.events))
        return out


def test_a_sale_reaches_a_subscriber_as_a_valid_cloudevent(broker: Mosquitto, till_dir: Path, config: Config) -> None:
    sub = Collector(broker.url, ["tillbox/v1/demo/till-1/evt/#"])
    try:
        with service(config, till_dir, broker.url):
            [(sale_id, seqs)] = sell(config, till_dir, 1)
            got = sub.wait(seqs[-1])
    finally:
        sub.close()
    everything = [json.loads(p) for _, p in got]
    assert [e["sequence"] for e in everything] == list(range(1, seqs[-1] + 1))  # in order, from 1
    for event in everything:
        validate("cloudevent", event)
    events = [e for e in everything if e["sequence"] in seqs]
    assert [e["type"] for e in events] == ["tillbox.sale.completed", "tillbox.stock.moved", "tillbox.ledger.head"]
    assert [t.rsplit("/", 1)[1] for t, _ in got if json.loads(_)["sequence"] in seqs] == [
        "sale.completed",
        "stock.moved",
        "ledger.head",
    ]
    sale = events[0]
    assert sale["type"] == "tillbox.sale.completed"
    assert sale["sequence"] == seqs[0]
    assert [e["sequence"] for e in events] == list(seqs)
    assert sale["source"] == "/tillbox/demo/till-1" and sale["store"] == "demo"
    assert sale["data"]["id"] == sale_id and sale["subject"] == sale_id
    assert sale["datacontenttype"] == "application/json" and sale["specversion"] == "1.0"
    with open_ledger(config, till_dir) as led:
        ids = {e.seq: e.id for e in led.outbox(unacked_only=False)}
    assert sale["id"] == ids[seqs[0]]


def test_broker_down_for_500_sales_then_all_arrive_once_and_are_retired(
    till_dir: Path, config: Config, tmp_path: Path
) -> None:
    broker = Mosquitto(tmp_path / "pbroker", persistence=True).start()
    hub = Hub(tmp_path / "hub", LinkSettings.from_urls([broker.url], "hub", backoff_initial=0.05, backoff_cap=0.2))
    svc = service(config, till_dir, broker.url)
    try:
        hub.start()
        svc.start()
        first = sell(config, till_dir, 2)[-1][1][-1]
        assert wait_until(lambda: hub.contiguous("demo", "till-1") == first)
        broker.stop()
        sold = sell(config, till_dir, 500)
        assert not svc.link.connected
        broker.start()
        last = sold[-1][1][-1]
        assert wait_until(lambda: hub.contiguous("demo", "till-1") == last, timeout=15)
        assert wait_until(lambda: svc.relay.acked == last)
    finally:
        svc.close()
        hub.close()
        broker.stop()
    assert hub.sale_count("demo") == 502
    numbers = [n for (n,) in hub.query("SELECT number FROM sales ORDER BY rowid")]
    assert numbers == list(range(1, 503))  # applied in order, every one once
    assert hub.query("SELECT count(*) FROM events WHERE type = 'tillbox.sale.completed'") == [(502,)]
    with open_ledger(config, till_dir) as led:
        assert led.outbox(limit=10) == []  # everything acknowledged
        assert all(e.published_at for e in led.outbox(unacked_only=False, limit=2000))
    dupes = hub.query("SELECT count(*) FROM (SELECT source, seq FROM events GROUP BY source, seq HAVING count(*) > 1)")
    assert dupes == [(0,)]


def test_will_birth_and_clean_offline_carry_the_session(broker: Mosquitto, till_dir: Path, config: Config) -> None:
    sub = Collector(broker.url, ["tillbox/v1/demo/till-1/status/#", "tillbox/v1/demo/till-1/state/#"])
    try:
        with service(config, till_dir, broker.url):
            online = sub.wait(1, topic_part="/status/")
        offline = sub.wait(2, topic_part="/status/")
        with service(config, till_dir, broker.url):
            again = sub.wait(3, topic_part="/status/")
        state = sub.wait(1, topic_part="/state/")
    finally:
        sub.close()
    first, second = json.loads(online[0][1]), json.loads(offline[1][1])
    assert first == {"online": True, "session": first["session"]} and first["session"] >= 1
    assert second == {"online": False, "session": first["session"]}
    assert json.loads(again[2][1]) == {"online": True, "session": first["session"] + 1}
    doc = json.loads(state[0][1])
    validate("state", doc)
    assert doc["versions"]["schema"] >= 3


def test_will_is_published_when_the_till_vanishes(broker: Mosquitto, till_dir: Path, config: Config) -> None:
    svc = SyncService.from_config(config, till_dir, link=fast_link(config, till_dir, broker.url, keepalive=5),
                                  options=FAST)  # fmt: skip
    sub = Collector(broker.url, ["tillbox/v1/demo/till-1/status/#"])
    try:
        svc.start()
        assert sub.wait(1)
        # Cut the socket without DISCONNECT: the broker must publish the Will.
        svc.call(lambda: svc.link._client.socket().close()).result(5)  # type: ignore[union-attr]
        got = sub.wait(2, timeout=10)
    finally:
        svc.close()
        sub.close()
    assert json.loads(got[1][1]) == {"online": False, "session": json.loads(got[0][1])["session"]}


def test_backlog_alert_raised_when_old_and_cleared_when_drained(
    broker: Mosquitto, till_dir: Path, config: Config, tmp_path: Path
) -> None:
    clock = FrozenClock()
    options = dataclasses.replace(FAST, backlog_alert_after=60)
    hub = Hub(tmp_path / "hub", LinkSettings.from_urls([broker.url], "hub", backoff_initial=0.05))
    with open_ledger(config, till_dir) as led:
        till = Till(config, led, clock=clock, terminal=SimulatedTerminal(), fast_hash=True)
        scripted_sale(till, CODES, [("cash", None)], cashier="t")
    clock.advance(120)
    svc = service(config, till_dir, "mqtt://127.0.0.1:1", clock=clock, options=options)
    try:
        size, age = svc.check_backlog()
        assert size >= 3 and age >= 120
        with open_ledger(config, till_dir) as led:
            assert [a.code for a in active_alerts(led)] == [ALERT_BACKLOG]
        svc.close()
        hub.start()
        assert wait_until(lambda: hub.link.connected)
        svc = service(config, till_dir, broker.url, clock=clock, options=options)
        svc.start()

        def drained() -> bool:
            clock.advance(FAST.ack_timeout)  # the frozen clock: let the relay resend what the hub missed
            return svc.relay.backlog()[0] == 0

        assert wait_until(drained, interval=0.1)
        # clearing the alert is itself an event: the backlog is empty once that one is acked too
        assert wait_until(lambda: drained() and svc.call(svc.check_backlog).result(5) == (0, 0), interval=0.1)
    finally:
        svc.close()
        hub.close()
    with open_ledger(config, till_dir) as led:
        assert active_alerts(led) == []


def test_prune_keeps_unacked_and_recent_events(till_dir: Path, config: Config) -> None:
    clock = FrozenClock()
    (_, one), (_, two) = sell(config, till_dir, 2, clock)
    svc = service(config, till_dir, "mqtt://127.0.0.1:1", clock=clock)
    try:
        assert svc.relay.on_ack(one[-1]) == one[-1]  # up to the first sale acknowledged now
        clock.advance(29 * 86400)
        assert svc.prune() == 0  # within retention
        clock.advance(2 * 86400)
        assert svc.prune() == one[-1]
        assert [e.seq for e in svc.ledger.outbox(unacked_only=False)] == list(two)
        with pytest.raises(ValueError, match=f"only written {two[-1]}"):
            svc.relay.on_ack(99)
    finally:
        svc.close()
