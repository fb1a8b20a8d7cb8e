"""The hub's side of pickup and ship-from-store orders (docs/orders.md).

The shop places an order with :meth:`sync.hub.Hub.place_order`; the hub keeps it in its
``orders`` table and publishes it, retained, on ``tillbox/v1/{store}/orders/{id}``.
Tills report what staff did as ``tillbox.order.*`` events. The hub applies each one, in
the device's sequence order, with the till's own state machine
(:func:`appliance.orders.advance`), records the device's sequence in the document's
``applied`` map, bumps the version and republishes the document, so every till and the
shop's website see the new state. The stock levels of the order's SKUs are republished
too: open orders count as ``reserved``.

The hub is the arbiter when tills disagree. A transition the state machine forbids is
refused (the document still records the device's sequence, so the till drops its local
view of it) and raises ``orders.conflict``; an expiry or cancellation repeated by a second
till is a harmless duplicate. A hand-over or shipment is accepted even after the order
expired or was cancelled (the goods are gone) and raises the alert so the shop can sort
out the payment.
"""

from __future__ import annotations

import copy
import json
import logging
import sqlite3
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

from appliance.errors import InputError, NotFound, TillboxError
from appliance.orders import ACTION_STATUS, EVENT_PREFIX, OPEN_STATUSES, advance, code_hash, open_quantities
from sync.contract import sku_segment, store_topic
from sync.schemas import validate

if TYPE_CHECKING:
    from sync.hub import Hub, _Batch

log = logging.getLogger(__name__)

ALERT_CONFLICT: Final = "orders.conflict"
#: The ``device`` the hub's own changes (the shop cancelling an order) are recorded under.
SHOP: Final = "shop"
#: Fields of a previous version that a re-placed order keeps unless the shop sets them again.
_KEPT: Final = ("applied", "history", "hold_until", "tracking", "carrier", "sale_id", "note", "kind", "payment",
                "pickup_code_sha256", "customer", "ship_to", "customer_id")  # fmt: skip


def reserved(db: sqlite3.Connection, store: str, sku: str) -> Decimal:
    """Units of ``sku`` held in ``store`` by open orders (placed, picking, ready, packed)."""
    marks = ", ".join("?" * len(OPEN_STATUSES))
    rows = db.execute(
        f"SELECT body FROM orders WHERE store = ? AND status IN ({marks})", (store, *sorted(OPEN_STATUSES))
    )
    total = Decimal(0)
    for (body,) in rows.fetchall():
        total += open_quantities(json.loads(body)).get(sku, Decimal(0))
    return total


class HubOrders:
    """The orders of a :class:`~sync.hub.Hub`; its methods run on the hub thread unless they say otherwise."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    # -- placing ---------------------------------------------------------------------------------

    def prepare(
        self,
        store: str,
        doc: dict[str, Any],
        *,
        kind: str | None = None,
        customer: str | None = None,
        customer_id: str | None = None,
        pickup_code: str | None = None,
        payment: str | None = None,
        hold_until: str | None = None,
        ship_to: Mapping[str, Any] | None = None,
        carrier: str | None = None,
    ) -> None:
        """Complete a placed order's document: the new fields, and what a previous version had.

        ``pickup_code`` is published only as ``pickup_code_sha256``. Picks of lines that are
        unchanged (same SKU and quantity at the same position) are kept. ``customer_id`` links
        the order to the shop's customer record (their purchase history); an erased customer
        cannot be named.
        """
        if customer_id is not None and self.hub.customers.erased_on_thread(customer_id):
            raise InputError(f"customer {customer_id} is erased")
        row = self.hub.db.execute("SELECT body FROM orders WHERE store = ? AND id = ?", (store, doc["id"])).fetchone()
        previous: dict[str, Any] = json.loads(row[0]) if row else {}
        for key in _KEPT:
            if key in previous and key not in doc:
                doc[key] = copy.deepcopy(previous[key])
        old_lines = previous.get("lines", [])
        for i, line in enumerate(doc["lines"]):
            old = old_lines[i] if i < len(old_lines) else {}
            same = (old.get("sku"), Decimal(str(old.get("qty", -1)))) == (line["sku"], Decimal(str(line["qty"])))
            if same and "picked" in old and "picked" not in line:
                line["picked"] = old["picked"]
        given = {"kind": kind, "customer": customer, "customer_id": customer_id, "payment": payment,
                 "hold_until": hold_until, "ship_to": dict(ship_to) if ship_to is not None else None,
                 "carrier": carrier}  # fmt: skip
        doc.update({k: v for k, v in given.items() if v is not None})
        if pickup_code is not None:
            doc["pickup_code_sha256"] = code_hash(str(doc["id"]), pickup_code)

    # -- device events ---------------------------------------------------------------------------

    def apply(self, store: str, device: str, seq: int, type_: str, data: Mapping[str, Any], batch: _Batch) -> None:
        """Apply one ``tillbox.order.*`` event of a device (inside the ingest transaction); never raises."""
        action = type_.removeprefix(EVENT_PREFIX)
        order_id = str(data.get("id", ""))[:64]
        row = self.hub.db.execute("SELECT version, body FROM orders WHERE store = ? AND id = ?",
                                  (store, order_id)).fetchone()  # fmt: skip
        if row is None:
            message = f"{device} reported {action} of order {order_id!r}, which the shop does not know"
            self.hub._alert(ALERT_CONFLICT, store, order_id or "?", message)
            return
        doc = json.loads(row[1])
        before = str(doc.get("status"))
        try:
            new = advance(doc, action, data, device=device, seq=seq, time=self.hub._now(), late=True)
            validate("pickup-order", {**new, "version": int(row[0]) + 1})
        except (TillboxError, KeyError, TypeError, ValueError) as exc:
            if not (action in ("expired", "cancelled") and before == ACTION_STATUS.get(action)):
                self.hub._alert(ALERT_CONFLICT, store, order_id,
                                f"{action} of order {order_id} by {device} refused: {exc}")  # fmt: skip
            new = copy.deepcopy(doc)  # refused, but seen: the till drops its local view of it
            applied = dict(new.get("applied") or {})
            applied[device] = max(int(applied.get(device, 0)), seq)
            new["applied"] = applied
        else:
            if before in ("expired", "cancelled") and new["status"] != before:
                self.hub._alert(ALERT_CONFLICT, store, order_id,
                                f"order {order_id} was {new['status']} by {device} after it was {before}")  # fmt: skip
        self._store(store, order_id, int(row[0]) + 1, new)
        batch.orders.add((store, order_id))
        batch.stock.update((store, str(ln["sku"])) for ln in new["lines"])

    def _store(self, store: str, order_id: str, version: int, doc: dict[str, Any]) -> None:
        doc["version"] = version
        doc["time"] = doc.get("time") or self.hub._now()
        self.hub.db.execute("UPDATE orders SET version = ?, status = ?, body = ? WHERE store = ? AND id = ?",
                            (version, doc["status"], json.dumps(doc), store, order_id))  # fmt: skip
        self.hub.customers.record_order(store, doc)  # purchase history: docs/customers.md

    def publish(self, store: str, order_id: str) -> None:
        """Publish an order's current document (retained)."""
        row = self.hub.db.execute("SELECT body FROM orders WHERE store = ? AND id = ?", (store, order_id)).fetchone()
        if row is not None:
            self.hub.link.publish(store_topic(store, "orders", sku_segment(order_id)), str(row[0]).encode(),
                                  retain=True)  # fmt: skip

    # -- the shop's own changes (any thread) -----------------------------------------------------

    def cancel(self, store: str, order_id: str, reason: str) -> int:
        """The shop cancels an open order (the customer cancelled online); returns the new version."""

        def run() -> int:
            row = self.hub.db.execute("SELECT version, body FROM orders WHERE store = ? AND id = ?",
                                      (store, order_id)).fetchone()  # fmt: skip
            if row is None:
                raise NotFound(f"no order {order_id} in store {store}")
            new = advance(json.loads(row[1]), "cancelled", {"staff": None, "reason": reason}, device=SHOP, seq=None,
                          time=self.hub._now())  # fmt: skip
            version = int(row[0]) + 1
            self._store(store, order_id, version, new)
            self.publish(store, order_id)
            for sku in sorted({str(ln["sku"]) for ln in new["lines"]}):
                self.hub._publish_stock(store, sku)
            return version

        return self.hub._sync(run)

    def get(self, store: str, order_id: str) -> dict[str, Any]:
        """The hub's current document of an order; :class:`NotFound` when there is none."""
        rows = self.hub.query("SELECT body FROM orders WHERE store = ? AND id = ?", (store, order_id))
        if not rows:
            raise NotFound(f"no order {order_id} in store {store}")
        doc: dict[str, Any] = json.loads(rows[0][0])
        return doc

    def statuses(self, store: str, ids: Sequence[str]) -> dict[str, str]:
        """The status of each of ``ids`` the hub knows (any thread)."""
        if not ids:
            raise InputError("no order ids")
        marks = ", ".join("?" * len(ids))
        rows = self.hub.query(f"SELECT id, status FROM orders WHERE store = ? AND id IN ({marks})", (store, *ids))
        return {str(i): str(s) for i, s in rows}
