"""The relay process is SIGKILLed while publishing, again and again; nothing is lost or counted twice."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from appliance.config import Config
from appliance.demo import seed
from appliance.till import Till, open_ledger, scripted_sale
from sync.hub import Hub
from sync.link import LinkSettings
from sync.testing import Mosquitto, wait_until
from tests.conftest import open_shift

KILLS = 8
CODES = ["4006381333931", "5901234123457"]
ROOT = Path(__file__).resolve().parent.parent


def _relay(data_dir: Path, url: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "sync", "relay", "--data-dir", str(data_dir), "--broker", url],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def test_relay_sigkilled_while_publishing_delivers_everything_once(tmp_path: Path, config: Config) -> None:
    data = tmp_path / "till"
    rng = random.Random(5)
    with Mosquitto(tmp_path / "broker") as broker, open_ledger(config, data) as led:
        till = Till(config, led, fast_hash=True)
        seed(till, data)
        open_shift(till)
        for _ in range(50):
            scripted_sale(till, CODES, [("cash", None)], cashier="t")
        hub = Hub(tmp_path / "hub", LinkSettings.from_urls([broker.url], "hub", backoff_initial=0.05)).start()
        try:
            progress = [0]
            for _ in range(KILLS):
                proc = _relay(data, broker.url)
                for _ in range(rng.randrange(3, 15)):  # sales keep coming while the relay runs
                    scripted_sale(till, CODES, [("cash", None)], cashier="t")
                assert wait_until(lambda: hub.contiguous("demo", "till-1") > progress[-1], timeout=30)
                time.sleep(rng.uniform(0.0, 0.05))
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                assert proc.stderr is not None
                proc.stderr.close()
                progress.append(hub.contiguous("demo", "till-1"))
            assert progress == sorted(progress) and progress[-1] > progress[1]
            last = led.counter("outbox_seq")
            proc = _relay(data, broker.url)
            try:
                # generous: on a loaded machine the new relay takes a while to start and catch up
                caught_up = wait_until(lambda: hub.contiguous("demo", "till-1") == last, timeout=60)
                assert caught_up, (
                    f"hub holds {hub.contiguous('demo', 'till-1')} of {last}; "
                    f"devices {hub.query('SELECT * FROM devices')}; gaps {hub.query('SELECT * FROM gaps')}"
                )
                assert wait_until(lambda: not led.outbox(limit=1), timeout=20)  # the hub's ack retired everything
            finally:
                proc.send_signal(signal.SIGTERM)
                _, err = proc.communicate(timeout=10)
            assert proc.returncode == 0, err.decode()
            assert b"Traceback" not in err
            sales = led.sale_count()
            assert hub.sale_count("demo") == sales
            assert hub.query("SELECT count(*), count(DISTINCT id) FROM events") == [(last, last)]
            status = hub.query("SELECT count(*) FROM rejected")
            assert status == [(0,)]
        finally:
            hub.close()
