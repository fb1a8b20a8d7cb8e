"""Omnichannel benchmark: how long a price change published by the shop takes to reach every till.

``omni.price_propagation`` runs a real Mosquitto, the reference hub and two tills, each
with its sync service at the production timings (``[sync]`` defaults). The hub publishes
one price delta after another (``Hub.change_prices``); for each, the time from the call
to the new price being in a till's catalog (what the next scan sells at) is measured at
both tills. Reported: p50, p99 and max of the time until *both* tills have it, and the
mean per till. Target: p99 < 1 s (the issue asks for "within seconds"; the test's bound
is 5 s). Run it alone with ``python -m bench.omni``; ``python -m bench sync`` includes it.
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from appliance.config import parse_config
from appliance.till import open_ledger
from bench.data import ean13
from sync.hub import Hub
from sync.link import LinkSettings
from sync.service import SyncService
from sync.testing import Mosquitto

ITEMS = [{"sku": f"{1000 + i}", "name": f"Item {i}", "price": 100 + i, "barcodes": [ean13(f"4{i:011d}")],
          "tax_class": "standard"} for i in range(200)]  # fmt: skip
POLL = 0.001


def _wait(conns: list[sqlite3.Connection], sku: str, price: int, started: float, timeout: float = 10.0) -> list[float]:
    """Seconds from ``started`` until each till's catalog has ``price`` for ``sku``."""
    seen: list[float | None] = [None] * len(conns)
    deadline = started + timeout
    while None in seen:
        now = time.perf_counter()
        if now > deadline:
            raise TimeoutError(f"price of {sku} did not reach every till within {timeout:g} s")
        for i, conn in enumerate(conns):
            if seen[i] is None and conn.execute("SELECT price FROM items WHERE sku = ?", (sku,)).fetchone() == (price,):
                seen[i] = now - started
        time.sleep(POLL)
    return [s for s in seen if s is not None]


def price_propagation(root: Path, changes: int) -> dict[str, Any]:
    configs = [parse_config(f'[store]\ndevice_id = "till-{i}"\n', environ={}) for i in (1, 2)]
    dirs = [root / f"till-{i}" for i in (1, 2)]
    for config, d in zip(configs, dirs, strict=True):
        open_ledger(config, d).close()
    both: list[float] = []
    per_till: list[list[float]] = [[], []]
    with Mosquitto(root / "broker") as broker:
        hub = Hub(root / "hub", LinkSettings.from_urls([broker.url], "hub")).start()
        tills = list(zip(configs, dirs, strict=True))
        services = [SyncService.from_config(c, d, brokers=(broker.url,)).start() for c, d in tills]
        conns = [sqlite3.connect(f"file:{c.ledger_path(d)}?mode=ro", uri=True) for c, d in tills]
        try:
            while not (hub.link.connected and all(s.link.connected for s in services)):
                time.sleep(0.01)
            hub.publish_catalog("demo", ITEMS, currency="EUR")
            _wait(conns, "1000", 100, time.perf_counter())
            for n in range(changes):
                sku, price = f"{1000 + n % len(ITEMS)}", 500 + n
                started = time.perf_counter()
                hub.change_prices("demo", {sku: price})
                seen = _wait(conns, sku, price, started)
                both.append(max(seen))
                for i, took in enumerate(seen):
                    per_till[i].append(took)
                time.sleep(0.02)
        finally:
            for conn in conns:
                conn.close()
            for s in services:
                s.close()
            hub.close()
    both.sort()
    p50, p99 = both[len(both) // 2] * 1000, both[min(len(both) - 1, int(len(both) * 0.99))] * 1000
    return {"name": "omni.price_propagation", "tills": 2, "changes": changes, "catalog_items": len(ITEMS),
            "p50_ms": round(p50, 1), "p99_ms": round(p99, 1), "max_ms": round(both[-1] * 1000, 1),
            "till_1_mean_ms": round(sum(per_till[0]) / changes * 1000, 1),
            "till_2_mean_ms": round(sum(per_till[1]) / changes * 1000, 1),
            "target": "p99 < 1000 ms until both tills sell at the new price", "ok": p99 < 1000}  # fmt: skip


def run(quick: bool) -> list[dict[str, Any]]:
    """The omnichannel benchmark; ``quick`` uses fewer price changes."""
    with tempfile.TemporaryDirectory(prefix="tillbox-bench-omni-") as tmp:
        return [price_propagation(Path(tmp), 20 if quick else 200)]


if __name__ == "__main__":
    for result in run(quick=False):
        print(json.dumps(result))
