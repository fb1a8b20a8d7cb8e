"""Sync benchmarks against a local Mosquitto: backlog drain rate and sale-to-subscriber latency.

``run(quick)`` returns one dict per benchmark with its measurements, the target
and whether it was met:

- ``sync.drain``: publish a backlog of 100,000 outbox events (QoS 1) through the
  relay, compared with a bare paho publish loop over the same payloads in the same
  run; target >= 3,000 events/s and >= half the bare rate.
- ``sync.latency``: sale committed (commit returned) to event received by a
  subscriber, with the relay running; target p99 < 50 ms.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from appliance.config import Config
from appliance.ledger import NewEvent
from appliance.till import Till, open_ledger, scripted_sale
from sync.link import Broker
from sync.service import SyncOptions, SyncService, settings_from_config
from sync.testing import Collector, Mosquitto

WINDOW = 100
_DATA = {"reason": "sale", "sale_id": "0195a3e2-6a00-7abc-8def-0123456789ab",
         "moves": [{"sku": f"{1000 + i}", "delta": "-1", "level": "11"} for i in range(8)]}  # fmt: skip


def _fill(config: Config, data_dir: Path, n: int) -> list[bytes]:
    """Put ``n`` events in a fresh ledger's outbox; returns their envelopes (for the bare loop)."""
    from sync.contract import envelope

    with open_ledger(config, data_dir) as led:
        for start in range(0, n, 10_000):
            with led.transaction("bench fill") as tx:
                for _ in range(min(10_000, n - start)):
                    tx.emit(NewEvent("tillbox.stock.moved", _DATA), time="2026-03-02T09:30:00.000Z", journal_seq=None)
        return [envelope(e, store="demo", device="till-1") for e in led.outbox(limit=n)]


def _bare(url: str, payloads: list[bytes]) -> float:
    """Events/s of a plain paho QoS 1 publish loop with the same window."""
    broker = Broker.parse(url)
    done = [0]
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="bench-bare",
                         protocol=MQTTProtocolVersion.MQTTv5)  # fmt: skip
    client.max_inflight_messages_set(WINDOW)
    client.max_queued_messages_set(0)

    def on_publish(*args: object) -> None:
        done[0] += 1

    client.on_publish = on_publish
    client.connect(broker.host, broker.port)
    while not client.is_connected():
        client.loop(0.01)
    start = time.perf_counter()
    sent = 0
    while done[0] < len(payloads):
        while sent < len(payloads) and sent - done[0] < WINDOW:
            client.publish("tillbox/v1/demo/bare/evt/stock.moved", payloads[sent], qos=1)
            sent += 1
        client.loop(0.01)
    elapsed = time.perf_counter() - start
    client.disconnect()
    return len(payloads) / elapsed


def _service(config: Config, data_dir: Path, url: str) -> SyncService:
    link = dataclasses.replace(settings_from_config(config, data_dir, (url,)), inflight=WINDOW)
    options = SyncOptions(window=WINDOW, health_interval=3600, poll_interval=0.005, reconcile_interval=None,
                          prune_interval=1e9)  # fmt: skip
    return SyncService.from_config(config, data_dir, link=link, options=options)


def drain(root: Path, n: int) -> dict[str, Any]:
    config = Config.defaults()
    data_dir = root / "drain"
    payloads = _fill(config, data_dir, n)
    with Mosquitto(root / "broker-drain") as broker:
        bare = _bare(broker.url, payloads)
        svc = _service(config, data_dir, broker.url)
        try:
            svc.start()
            while not svc.link.connected:
                time.sleep(0.001)
            start = time.perf_counter()
            while svc.relay.cursor < n or svc.relay.inflight:
                time.sleep(0.002)
            elapsed = time.perf_counter() - start
        finally:
            svc.close()
    rate = n / elapsed
    ok = rate >= 3000 and rate >= bare / 2
    return {"name": "sync.drain", "events": n, "seconds": round(elapsed, 3), "events_per_s": round(rate),
            "bare_paho_per_s": round(bare), "ratio": round(rate / bare, 2),
            "target": ">= 3000 events/s and >= 0.5 x bare paho", "ok": ok}  # fmt: skip


def latency(root: Path, sales: int) -> dict[str, Any]:
    from appliance.demo import seed

    config = Config.defaults()
    data_dir = root / "latency"
    with Mosquitto(root / "broker-latency") as broker, open_ledger(config, data_dir) as led:
        till = Till(config, led, fast_hash=True)
        seed(till, data_dir)
        sub = Collector(broker.url, ["tillbox/v1/demo/till-1/evt/sale.completed"])
        svc = _service(config, data_dir, broker.url).start()
        samples: list[float] = []
        try:
            while not svc.link.connected:
                time.sleep(0.001)
            _open_shift(till)
            for i in range(sales):
                done = scripted_sale(till, ["4006381333931"], [("cash", None)], cashier="bench")
                committed = time.monotonic()
                sub.wait(i + 1, timeout=5)
                for _topic, payload, received, _retained in sub.messages[i:]:
                    if json.loads(payload)["data"]["id"] == done.committed.sale_id:
                        samples.append(received - committed)
                time.sleep(0.005)
        finally:
            svc.close()
            sub.close()
    samples.sort()
    p50 = samples[len(samples) // 2] * 1000
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))] * 1000
    return {"name": "sync.latency", "samples": len(samples), "p50_ms": round(p50, 2), "p99_ms": round(p99, 2),
            "target": "p99 < 50 ms", "ok": len(samples) == sales and p99 < 50}  # fmt: skip


def _open_shift(till: Till) -> None:
    from datetime import timedelta

    from appliance.staff import Action, Approval

    now = till.clock.now()
    till.shifts.open(10_000, Approval(Action.OPEN_SHIFT, "bench", None, now + timedelta(minutes=1)), now)


def run(quick: bool) -> list[dict[str, Any]]:
    """The sync benchmarks and :mod:`bench.omni`; ``quick`` uses small sizes for a smoke run."""
    with tempfile.TemporaryDirectory(prefix="tillbox-bench-sync-") as tmp:
        root = Path(tmp)
        results = [drain(root, 5_000 if quick else 100_000), latency(root, 30 if quick else 300)]
    from bench import omni  # a price change reaching two tills (bench/omni.py)

    return [*results, *omni.run(quick)]


if __name__ == "__main__":
    for result in run(quick=False):
        print(json.dumps(result))
