"""Reconciliation: does the shop's view of this till match the till's own ledger?

The till asks through its outbox (``tillbox.reconcile.requested`` carrying the
journal head), so the hub answers exactly when it has processed every earlier
event: both sides then compare the same cut. The hub replies on
``.../res/reconcile`` with its sale count, the sum of stock moves per SKU it
received from this till, and its contiguous sequence. Any difference raises the
``sync.reconcile_mismatch`` alert; a clean comparison clears it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Final

from appliance.alerts import clear_alert, raise_alert
from appliance.canonical import canonical_json
from appliance.ledger import Ledger, NewEvent
from appliance.ledger.store import milli_to_qty, qty_to_milli

ALERT: Final = "sync.reconcile_mismatch"
REQUEST_TYPE: Final = "tillbox.reconcile.requested"


def request(ledger: Ledger, *, time: str) -> int:
    """Queue a reconciliation request behind every event so far; returns its outbox sequence."""
    head, _ = ledger.head()
    with ledger.transaction("requesting reconciliation") as tx:
        return tx.emit(NewEvent(REQUEST_TYPE, {"journal_seq": head, "time": time}), time=time, journal_seq=None)


def local_view(ledger: Ledger, journal_seq: int) -> tuple[int, dict[str, Decimal]]:
    """Sales and net stock moves per SKU recorded up to a journal sequence."""
    sales = ledger.conn.execute("SELECT count(*) FROM sales WHERE journal_seq <= ?", (journal_seq,)).fetchone()[0]
    rows = ledger.conn.execute(
        "SELECT sku, SUM(delta_milli) FROM stock_moves WHERE journal_seq <= ? GROUP BY sku", (journal_seq,)
    )
    return int(sales), {str(sku): milli_to_qty(int(m)) for sku, m in rows if int(m) != 0}


def compare(ledger: Ledger, response: Mapping[str, Any], *, acked: int) -> list[str] | None:
    """Differences between the hub's reply and the ledger; None when the request is unknown (pruned)."""
    row = ledger.conn.execute(
        "SELECT data FROM outbox WHERE seq = ? AND type = ?", (int(response["request_seq"]), REQUEST_TYPE)
    ).fetchone()
    if row is None:
        return None
    journal_seq = int(json.loads(row[0])["journal_seq"])
    sales, stock = local_view(ledger, journal_seq)
    problems: list[str] = []
    if int(response["sales"]) != sales:
        problems.append(f"the shop has {response['sales']} sales from this till, the till {sales}")
    theirs = {str(k): Decimal(str(v)) for k, v in response["stock"].items()}
    theirs = {k: v for k, v in theirs.items() if v != 0}
    for sku in sorted(set(stock) | set(theirs)):
        mine, hub = stock.get(sku, Decimal(0)), theirs.get(sku, Decimal(0))
        if qty_to_milli(mine) != qty_to_milli(hub):
            problems.append(f"stock moves of {sku}: shop {hub}, till {mine}")
    if int(response["contiguous"]) < acked:
        problems.append(f"the shop holds events up to {response['contiguous']}, but acknowledged {acked}")
    return problems


def settle(ledger: Ledger, response: Mapping[str, Any], *, acked: int, time: str) -> list[str] | None:
    """Compare, record the result, and raise or clear the alert; returns the problems."""
    problems = compare(ledger, response, acked=acked)
    if problems is None:
        return None
    with ledger.transaction("recording reconciliation") as tx:
        tx.conn.execute(
            "INSERT INTO sync_docs(name, version, body, updated_at) VALUES ('reconcile', ?, ?, ?) "
            "ON CONFLICT(name) DO UPDATE SET version = excluded.version, body = excluded.body, "
            "updated_at = excluded.updated_at",
            (int(response["request_seq"]), canonical_json({"problems": problems}), time),
        )
    if problems:
        shown = "; ".join(problems[:3]) + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else "")
        raise_alert(ledger, ALERT, f"the shop's records disagree with the till: {shown}", time=time)
    else:
        clear_alert(ledger, ALERT, time=time, note=f"reconciled at request {response['request_seq']}")
    return problems
