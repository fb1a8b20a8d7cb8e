"""Power-cut safety: a child process commits sales and is SIGKILLed at random moments.

Afterwards every sale it reported as committed is present, no partial sale exists,
the chain verifies, and the outbox holds exactly one event set per sale.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import time
from multiprocessing.connection import Connection
from pathlib import Path

import pytest

from appliance.config import Config
from appliance.ledger import verify
from appliance.till import Till, open_ledger, scripted_sale
from tests.conftest import open_shift

KILLS = 120
CODES = ["4006381333931", "5901234123457", "4006381333931", "4000417025005", "9780201379624"]


def _sell_forever(data_dir: str, conn: Connection) -> None:
    """Child: ring sales until killed, reporting each id after its commit returned."""
    config = Config.defaults()
    ledger = open_ledger(config, Path(data_dir))
    till = Till(config, ledger)
    conn.send("ready")
    while True:
        done = scripted_sale(till, CODES, [("cash", None)], cashier="crash")
        conn.send(done.committed.sale_id)


@pytest.mark.slow
def test_sigkill_never_loses_or_splits_a_sale(tmp_path: Path) -> None:
    from appliance.demo import seed

    config = Config.defaults()
    with open_ledger(config, tmp_path) as led:
        till = Till(config, led)
        seed(till, tmp_path)
        open_shift(till)
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["appliance.till", "appliance.config", "appliance.ledger", __name__])
    rng = random.Random(20261126)
    reported: set[str] = set()
    busy_kills = 0
    for _ in range(KILLS):
        committed = 0
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_sell_forever, args=(str(tmp_path), child))
        proc.start()
        child.close()
        if rng.random() < 0.1:
            time.sleep(rng.uniform(0, 0.02))  # sometimes while the ledger is still opening
        else:
            assert parent.poll(30), "child never became ready"
            assert parent.recv() == "ready"
            for _ in range(rng.randint(0, 3)):  # let it commit a few sales, then kill mid-way through the next
                assert parent.poll(30), "child stopped committing"
                reported.add(parent.recv())
                committed += 1
            time.sleep(rng.uniform(0, 0.03))
        os.kill(proc.pid or 0, signal.SIGKILL)
        proc.join()
        while parent.poll():
            try:
                message = parent.recv()
            except EOFError:
                break
            if message != "ready":
                reported.add(message)
                committed += 1
        parent.close()
        busy_kills += committed > 0
    assert busy_kills >= KILLS // 2  # most kills landed among commits, not only during start-up

    with open_ledger(config, tmp_path) as led:
        report = verify(led)
        assert report.ok, report.errors
        c = led.conn
        present = {r[0] for r in c.execute("SELECT id FROM sales")}
        assert reported <= present
        assert c.execute("SELECT count(*) FROM journal WHERE type = 'sale.completed'").fetchone()[0] == len(present)
        for sale_id, jseq, line_count in c.execute("SELECT id, journal_seq, line_count FROM sales"):
            lines = c.execute("SELECT count(*) FROM sale_lines WHERE sale_id = ?", (sale_id,)).fetchone()[0]
            tenders = c.execute("SELECT count(*) FROM sale_tenders WHERE sale_id = ?", (sale_id,)).fetchone()[0]
            moves = c.execute("SELECT count(*) FROM stock_moves WHERE sale_id = ?", (sale_id,)).fetchone()[0]
            events = [r[0] for r in c.execute("SELECT type FROM outbox WHERE journal_seq = ? ORDER BY seq", (jseq,))]
            assert (lines, tenders, moves) == (line_count, 1, 4)
            assert events == ["tillbox.sale.completed", "tillbox.stock.moved", "tillbox.ledger.head"]
        assert c.execute("SELECT count(*) FROM outbox").fetchone()[0] == 3 * len(present) + 1  # + shift opened
        seqs = [r[0] for r in c.execute("SELECT seq FROM outbox ORDER BY seq")]
        assert seqs == list(range(1, len(seqs) + 1))
        assert led.stock_level("1001") == -2 * len(present)
