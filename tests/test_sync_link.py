"""The MQTT link: back-off, ordered broker list, reconnect after the broker comes back."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from appliance.clock import FrozenClock
from appliance.errors import ConfigError
from sync.backoff import Backoff
from sync.link import Broker, LinkSettings, MqttLink
from sync.testing import Mosquitto, free_port


def test_backoff_doubles_to_the_cap_and_resets() -> None:
    b = Backoff(1, 8)
    assert [b.next_delay() for _ in range(6)] == [1, 2, 4, 8, 8, 8]
    b.reset()
    assert b.next_delay() == 1
    jittered = Backoff(1, 8, jitter=0.5, rand=lambda: 1.0)
    assert jittered.next_delay() == 0.5
    with pytest.raises(ValueError):
        Backoff(2, 1)


def test_broker_urls() -> None:
    assert Broker.parse("mqtts://shop.example:9999") == Broker("shop.example", 9999, True)
    assert Broker.parse("mqtt://10.0.0.2") == Broker("10.0.0.2", 1883, False)
    with pytest.raises(ConfigError):
        Broker.parse("http://x")


class _Owner:
    """A minimal owner that steps a link on a thread, like the sync service does."""

    def __init__(self, settings: LinkSettings, clock: FrozenClock | None = None) -> None:
        self.sessions = 0
        self.connects: list[int] = []
        self.messages: list[mqtt.MQTTMessage] = []
        self.link = MqttLink(
            settings, next_session=self._session, will=lambda s: ("t/status", json.dumps({"s": s}).encode()),
            on_connect=self.connects.append, on_disconnect=lambda: None, on_message=self.messages.append,
            on_published=lambda mid: None, clock=clock,
        )  # fmt: skip

    def _session(self) -> int:
        self.sessions += 1
        return self.sessions

    def step_until(self, predicate: object, steps: int = 500) -> bool:
        for _ in range(steps):
            if callable(predicate) and predicate():
                return True
            self.link.step(0.01)
        return False


def test_the_broker_list_is_tried_in_order(tmp_path: Path) -> None:
    dead = f"mqtt://127.0.0.1:{free_port()}"
    with Mosquitto(tmp_path / "b") as broker:
        owner = _Owner(LinkSettings.from_urls([dead, broker.url], "c1", backoff_initial=0.01))
        try:
            assert owner.step_until(lambda: owner.link.connected)
            assert owner.link.broker == Broker.parse(broker.url)
            assert owner.connects == [2]  # the first attempt (dead broker) used session 1
        finally:
            owner.link.close()


def test_backoff_waits_on_the_clock_and_resets_after_success(tmp_path: Path) -> None:
    clock = FrozenClock()
    port = free_port()
    owner = _Owner(LinkSettings.from_urls([f"mqtt://127.0.0.1:{port}"], "c2", backoff_initial=1, backoff_cap=4),
                   clock)  # fmt: skip
    for _ in range(3):
        owner.link.step(0)
    assert owner.sessions == 1  # the clock did not move: no second attempt yet
    for advance in (1, 2, 4, 4):
        clock.advance(advance)
        owner.link.step(0)
    assert owner.sessions == 5 and owner.link.backoff.failures == 5
    with Mosquitto(tmp_path / "b", port=port):
        clock.advance(4)
        assert owner.step_until(lambda: owner.link.connected)
        assert owner.link.backoff.failures == 0
        owner.link.close()
    assert threading.active_count() >= 1
