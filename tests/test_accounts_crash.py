"""A till killed (SIGKILL) after the hub took a redemption, before the sale completed: the restart gives it back.

The child process redeems store credit and loyalty points online against a real hub over
a real Mosquitto, for a sale it never completes, and is killed. The pending authorisations
it wrote before asking survive in the ledger; the daemon's next start reverses them, its
sync delivers the reversals, and the hub's balances are whole again (docs/accounts.md).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import select
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

from appliance.config import Config, parse_config
from appliance.demo import DEMO_DEVICES
from appliance.till import Till, open_ledger
from sync.hub import Hub
from sync.link import LinkSettings
from sync.testing import Mosquitto, wait_until

ROOT = Path(__file__).resolve().parent.parent
CONFIG = DEMO_DEVICES + "[loyalty]\nenabled = true\n[stored_value]\nrequest_timeout = 2\n"
CREDIT = "12345678"  # store credit whose number does not name its kind: only the hub knows it
CUSTOMER = "0195a3e2-6a00-7abc-8def-00000000dead"
BATTERIES = "1010"  # 4.99


def _config() -> Config:
    return parse_config(CONFIG, environ={})


def _child(data_dir: str, url: str) -> None:
    """Redeem online for a sale, report the movement ids, then wait to be killed before completing it."""
    from sync.service import SyncOptions, SyncService, settings_from_config

    config = _config()
    data = Path(data_dir)
    till = Till(config, open_ledger(config, data), fast_hash=True)
    link = dataclasses.replace(settings_from_config(config, data, (url,)), backoff_initial=0.05, backoff_cap=0.2)
    svc = SyncService.from_config(config, data, link=link, options=SyncOptions(health_interval=0.05)).start()
    till.stored_value.remote = till.loyalty.remote = svc.request
    if not wait_until(lambda: svc.link.connected):
        raise SystemExit("the child could not reach the broker")
    sale = till.new_sale("ann")
    till.add_sku(sale, BATTERIES, quantity=Decimal(4))  # 19.96
    sale.customer_id = CUSTOMER
    credit = till.pay_stored_value(sale, CREDIT, 1_000)
    points = till.pay_points(sale, 300)
    modes = [credit.detail["mode"], points.detail["mode"]]
    sys.stdout.write(json.dumps({"credit": credit.detail["move"], "points": points.detail["move"], "modes": modes}))
    sys.stdout.write("\n")
    sys.stdout.flush()
    time.sleep(60)  # the power is cut here


def _balances(hub: Hub) -> tuple[int, int]:
    return int(hub.accounts.balance(CREDIT)["balance"]), int(hub.accounts.points(CUSTOMER)["points"])


def test_a_redemption_of_a_sale_killed_before_it_completed_is_given_back_at_restart(tmp_path: Path) -> None:
    from appliance.daemon import Daemon
    from appliance.demo import seed

    data = tmp_path / "till"
    config = _config()
    with open_ledger(config, data) as led:
        seed(Till(config, led, fast_hash=True), data)
    with Mosquitto(tmp_path / "broker") as broker:
        hub = Hub(tmp_path / "hub", LinkSettings.from_urls([broker.url], "hub", backoff_initial=0.05)).start()
        try:
            assert wait_until(lambda: hub.link.connected)
            hub.accounts.issue_gift_card(2_000, "EUR", account=CREDIT, kind="store_credit")
            hub.accounts.earn_points(CUSTOMER, 500)

            with (tmp_path / "child.log").open("wb") as log:
                child = subprocess.Popen([sys.executable, "-m", "tests.test_accounts_crash", str(data), broker.url],
                                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                                         stdout=subprocess.PIPE, stderr=log)  # fmt: skip
            try:
                assert child.stdout is not None
                ready, _, _ = select.select([child.stdout], [], [], 30)
                line = child.stdout.readline() if ready else b""
                assert line, "the child never redeemed: " + (tmp_path / "child.log").read_text()
                taken = json.loads(line)
                assert taken["modes"] == ["online", "online"]
                assert hub.accounts.balance(CREDIT)["balance"] == 1_000  # the hub took it for the open sale
                assert hub.accounts.points(CUSTOMER)["points"] == 200
            finally:
                child.send_signal(signal.SIGKILL)
                child.wait()
                if child.stdout is not None:
                    child.stdout.close()

            with open_ledger(config, data) as led:  # the intent was durable before the hub was asked
                rows = dict(led.conn.execute("SELECT id, state FROM account_auths"))
                assert rows == {taken["credit"]: "pending", taken["points"]: "pending"}
                assert led.sale_count() == 0

            async def restart() -> dict[str, str]:
                """The daemon's start-up, as after the power came back; its sync delivers the reversals."""
                daemon = Daemon(config, data, fast_hash=True, brokers=(broker.url,), health_interval=0.2)
                await daemon.start()
                try:
                    assert await asyncio.to_thread(wait_until, lambda: _balances(hub) == (2_000, 500), 15), \
                        _balances(hub)  # fmt: skip
                    rows = daemon.t.ledger.conn.execute("SELECT id, state FROM account_auths").fetchall()
                    return {str(i): str(st) for i, st in rows}
                finally:
                    await daemon.stop()

            states = asyncio.run(restart())
            assert states == {taken["credit"]: "reversed", taken["points"]: "reversed"}
            credit_moves = [(m["op"], m["delta"], m["mode"]) for m in hub.accounts.moves(CREDIT)]
            assert credit_moves == [("issue", 2_000, "online"), ("redeem", -1_000, "online"),
                                    ("reverse", 1_000, "local")]  # fmt: skip
            [undo] = [m for m in hub.accounts.moves(CUSTOMER, "loyalty") if m["op"] == "reverse"]
            assert (undo["reverses"], undo["delta"], undo["device"]) == (taken["points"], 300, "till-1")
            assert hub.alerts() == []
        finally:
            hub.close()


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2])
