"""Inbound messages from the shop: validated, versioned, applied atomically, or dead-lettered.

Every payload is size-checked, parsed (no floats) and validated against its JSON
Schema before anything is written; each document is then applied in one ledger
transaction. A message that fails is stored in ``dead_letters`` with the reason,
and the ``sync.inbound_rejected`` alert is raised. Versioned documents (catalog,
promotions, stock levels, orders, desired config) with the current version are
ignored as duplicates (retained messages arrive again on every reconnect); older
versions are rejected as out of order. A catalog delta whose ``base_version`` is
not the till's catalog version is not applied and asks the shop for a snapshot.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

from appliance.alerts import raise_alert
from appliance.barcode import DEFAULT_LAYOUTS, VariableMeasureLayout
from appliance.canonical import canonical_json
from appliance.catalog_import import validate_rows, write_rows
from appliance.clock import Clock, iso_utc
from appliance.errors import ConfigError, InputError, TillboxError
from appliance.ledger import Ledger, NewEvent
from appliance.ledger.store import milli_to_qty, qty_to_milli
from appliance.money import Currency
from sync.contract import PREFIX, sku_from_segment
from sync.schemas import validate

log = logging.getLogger(__name__)

ALERT_REJECTED: Final = "sync.inbound_rejected"
#: Dead letters keep at most this much of a rejected payload.
KEEP_BYTES: Final = 65536
#: Config keys the shop may never set remotely (the ledger's identity, location and currency).
#: ``update.keys_dir`` and ``update.install_root`` decide which bundles the till trusts and what it runs.
PROTECTED_KEYS: Final = (
    "store.id",
    "store.device_id",
    "ledger.path",
    "currency.code",
    "update.keys_dir",
    "update.install_root",
)


class Rejected(InputError):
    """An inbound message was not applied; ``alert`` says whether someone must look at it."""

    def __init__(self, message: str, *, alert: bool = True) -> None:
        super().__init__(message)
        self.alert = alert


@dataclass(frozen=True)
class Availability:
    """What the shop says about one SKU: levels per channel and units reserved for pickup."""

    sku: str
    version: int
    levels: dict[str, Decimal]
    reserved: Decimal

    def warn(self, qty: Decimal, channel: str = "store") -> bool:
        """True when selling ``qty`` would eat into units reserved for online orders."""
        return self.levels.get(channel, Decimal(0)) - qty < self.reserved


def availability(ledger: Ledger, sku: str) -> Availability | None:
    """The latest stock level of a SKU received from the shop, or None."""
    row = ledger.conn.execute("SELECT version, body FROM remote_stock WHERE sku = ?", (sku,)).fetchone()
    if row is None:
        return None
    body = json.loads(row[1], parse_float=Decimal)
    levels = {k: Decimal(v) for k, v in body["levels"].items()}
    return Availability(sku, int(row[0]), levels, Decimal(body["reserved"]))


def doc_version(ledger: Ledger, name: str) -> int:
    """The version of a synced document (catalog, promotions, config); 0 when none yet."""
    row = ledger.conn.execute("SELECT version FROM sync_docs WHERE name = ?", (name,)).fetchone()
    return int(row[0]) if row else 0


def _config_problems(values: Mapping[str, Any]) -> list[str]:
    """Check desired config values against the config schema; returns the problems."""
    from appliance.config import InvalidConfigError, parse_config, toml_value

    problems = [f"{key} cannot be set remotely" for key in values if key in PROTECTED_KEYS]
    if problems:
        return problems
    try:
        text = "\n".join(f"{key} = {toml_value(v)}" for key, v in values.items())
        parse_config(text, source="desired config", environ={})
    except InvalidConfigError as exc:
        return list(exc.problems)
    except (ConfigError, TypeError, ValueError) as exc:
        return [str(exc)]
    return []


@dataclass(frozen=True)
class InboundPolicy:
    """What inbound catalog rows must satisfy (from the till's config)."""

    currency: Currency
    tax_classes: Collection[str]
    layouts: Sequence[VariableMeasureLayout] = DEFAULT_LAYOUTS
    max_price: int = 10_000_000
    max_bytes: int = 8_388_608


class Inbound:
    """Applies the shop's store-wide documents and desired config to one till's ledger."""

    def __init__(
        self,
        ledger: Ledger,
        policy: InboundPolicy,
        *,
        clock: Clock,
        on_change: Callable[[str], None] = lambda kind: None,
        report_config: Callable[[dict[str, Any]], None] = lambda doc: None,
        on_offer: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.ledger = ledger
        self.on_offer = on_offer  # update offers go here (appliance/update_fetch.py); None: not subscribed
        self.policy = policy
        self.clock = clock
        self.on_change = on_change
        self.report_config = report_config
        store, device = ledger.store_id, ledger.device_id
        self._store_prefix = f"{PREFIX}/{store}/"
        self._device_prefix = f"{PREFIX}/{store}/{device}/"
        self.rejected = 0

    # -- entry point -----------------------------------------------------------------------------

    def topics(self) -> list[str]:
        """Subscriptions for the documents handled here."""
        s, d = self._store_prefix, self._device_prefix
        return [
            f"{s}catalog/+",
            f"{s}promotions/+",
            f"{s}stock/+",
            f"{s}orders/+",
            f"{d}cfg/desired",
            f"{s}customers/revoked",
            *([f"{s}update/offer"] if self.on_offer is not None else []),
        ]

    def parse(self, topic: str, payload: bytes, schema: str) -> dict[str, Any]:
        """Size check, JSON (decimals, no floats) and schema; raises :class:`Rejected`."""
        if len(payload) > self.policy.max_bytes:
            raise Rejected(f"{len(payload)} bytes is more than the limit of {self.policy.max_bytes}")
        try:
            obj = json.loads(payload, parse_float=Decimal)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise Rejected(f"not valid JSON: {exc}") from None
        try:
            validate(schema, obj)
        except InputError as exc:
            raise Rejected(str(exc)) from None
        assert isinstance(obj, dict)
        return obj

    def handle(self, topic: str, payload: bytes) -> bool:
        """Apply one message; returns False when it was rejected (and dead-lettered)."""
        if not payload:
            return True  # a cleared retained message
        try:
            self._dispatch(topic, payload)
        except Rejected as exc:
            self.reject(topic, payload, str(exc), alert=exc.alert)
            return False
        except TillboxError as exc:
            self.reject(topic, payload, str(exc))
            return False
        return True

    def _dispatch(self, topic: str, payload: bytes) -> None:
        if topic == f"{self._device_prefix}cfg/desired":
            self.config(self.parse(topic, payload, "config-desired"))
            return
        rest = topic.removeprefix(self._store_prefix)
        kind, _, name = rest.partition("/")
        if topic == rest or "/" in name:
            raise Rejected(f"unexpected topic {topic}")
        if kind == "catalog" and name == "snapshot":
            self.catalog_snapshot(self.parse(topic, payload, "catalog-snapshot"))
        elif kind == "catalog" and name == "delta":
            self.catalog_delta(self.parse(topic, payload, "catalog-delta"))
        elif kind == "promotions" and name == "snapshot":
            self.promotions(self.parse(topic, payload, "promotions-snapshot"))
        elif kind == "stock":
            self.stock(sku_from_segment(name), self.parse(topic, payload, "stock-level"))
        elif kind == "orders":
            self.order(name, self.parse(topic, payload, "pickup-order"))
        elif kind == "customers" and name == "revoked":
            self.customers_revoked(self.parse(topic, payload, "customers-revoked"))
        elif kind == "update" and name == "offer" and self.on_offer is not None:
            self.update_offer(self.parse(topic, payload, "update-offer"))
        else:
            raise Rejected(f"unexpected topic {topic}")

    def reject(self, topic: str, payload: bytes, reason: str, *, alert: bool = True) -> None:
        """Store a dead letter (and raise the alert)."""
        self.rejected += 1
        now = iso_utc(self.clock.now())
        log.warning("inbound message on %s rejected: %s", topic, reason)
        with self.ledger.transaction("storing a dead letter") as tx:
            tx.conn.execute(
                "INSERT INTO dead_letters(received_at, topic, reason, payload) VALUES (?, ?, ?, ?)",
                (now, topic[:512], reason[:1000], payload[:KEEP_BYTES]),
            )
        if alert:
            raise_alert(self.ledger, ALERT_REJECTED, f"inbound message rejected on {topic[:200]}", time=now)

    # -- versions --------------------------------------------------------------------------------

    @staticmethod
    def _check_version(what: str, have: int, got: int) -> bool:
        """True to apply; False for a duplicate; raises for an older version."""
        if got == have:
            return False
        if got < have:
            raise Rejected(f"{what} version {got} is older than the applied version {have} (out of order)")
        return True

    def _set_doc(self, conn: Any, name: str, version: int, body: str | None, now: str) -> None:
        conn.execute(
            "INSERT INTO sync_docs(name, version, body, updated_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(name) DO UPDATE SET version = excluded.version, body = excluded.body, "
            "updated_at = excluded.updated_at",
            (name, version, body, now),
        )

    # -- documents -------------------------------------------------------------------------------

    def _rows(self, items: list[dict[str, Any]], currency: str) -> list[Any]:
        cur = self.policy.currency
        if currency != cur.code:
            raise Rejected(f"catalog is in {currency}, this till sells in {cur.code}")
        raw = [
            {
                "sku": it["sku"], "name": it["name"], "price": str(cur.to_decimal(it["price"])),
                "barcode": it["barcodes"], "tax_class": it["tax_class"], "unit": it.get("unit", "each"),
                "department": it.get("department", ""), "age_restricted": it.get("age_restricted", False),
                "active": it.get("active", True),
            }
            for it in items
        ]  # fmt: skip
        p = self.policy
        return validate_rows(raw, currency=cur, tax_classes=p.tax_classes, layouts=p.layouts, max_price=p.max_price)

    def catalog_snapshot(self, doc: dict[str, Any]) -> None:
        version = int(doc["version"])
        if not self._check_version("catalog snapshot", doc_version(self.ledger, "catalog"), version):
            return
        rows = self._rows(doc["items"], doc["currency"])
        now = iso_utc(self.clock.now())
        keep = {r.sku for r in rows}
        with self.ledger.transaction("applying catalog snapshot") as tx:
            existing = [str(r[0]) for r in tx.conn.execute("SELECT sku FROM items WHERE active = 1")]
            write_rows(tx.conn, rows)
            gone = [(sku,) for sku in existing if sku not in keep]
            tx.conn.executemany("UPDATE items SET active = 0 WHERE sku = ?", gone)
            self._set_doc(tx.conn, "catalog", version, None, now)
            tx.journal("catalog.synced", {"kind": "snapshot", "version": version, "items": len(rows),
                                          "deactivated": len(gone)}, time=now)  # fmt: skip
        log.info("catalog snapshot %d applied: %d items", version, len(rows))
        self.on_change("catalog")

    def catalog_delta(self, doc: dict[str, Any]) -> None:
        version, base = int(doc["version"]), int(doc["base_version"])
        have = doc_version(self.ledger, "catalog")
        if version <= base:
            raise Rejected(f"catalog delta version {version} is not after its base {base}")
        if not self._check_version("catalog delta", have, version):
            return
        if base != have:
            self.request_snapshot(have, version)
            raise Rejected(f"catalog delta from base {base}, but this till has version {have}; snapshot requested",
                           alert=False)  # fmt: skip
        rows = self._rows(doc.get("upsert", []), doc["currency"])
        prices = doc.get("prices", [])
        now = iso_utc(self.clock.now())
        with self.ledger.transaction("applying catalog delta") as tx:
            write_rows(tx.conn, rows)
            for p in prices:
                cur = tx.conn.execute("UPDATE items SET price = ? WHERE sku = ?", (p["price"], p["sku"]))
                if cur.rowcount != 1:
                    raise Rejected(f"price for unknown sku {p['sku']}")
            tx.conn.executemany("UPDATE items SET active = 0 WHERE sku = ?", [(s,) for s in doc.get("deactivate", [])])
            self._set_doc(tx.conn, "catalog", version, None, now)
            tx.journal("catalog.synced", {"kind": "delta", "version": version, "base_version": base,
                                          "upserted": len(rows), "prices": len(prices),
                                          "deactivated": len(doc.get("deactivate", []))}, time=now)  # fmt: skip
        self.on_change("catalog")

    def request_snapshot(self, have: int, wanted: int) -> None:
        """Ask the shop for a catalog snapshot (an outbox event, so it is durable and ordered)."""
        now = iso_utc(self.clock.now())
        data = {"have_version": have, "wanted_version": wanted, "reason": "delta base unknown"}
        with self.ledger.transaction("requesting a catalog snapshot") as tx:
            tx.emit(NewEvent("tillbox.catalog.snapshot_requested", data), time=now, journal_seq=None)

    def promotions(self, doc: dict[str, Any]) -> None:
        from appliance.promotions import promotion_from_dict, promotion_to_dict

        version = int(doc["version"])
        if not self._check_version("promotions", doc_version(self.ledger, "promotions"), version):
            return
        cur = self.policy.currency
        try:
            promos = [promotion_from_dict(p, cur) for p in doc["promotions"]]
        except (TillboxError, ValueError, KeyError, TypeError) as exc:
            raise Rejected(f"invalid promotion: {exc}") from None
        ids = [p.id for p in promos]
        if len(set(ids)) != len(ids):
            raise Rejected("a promotion id appears twice")
        now = iso_utc(self.clock.now())
        with self.ledger.transaction("applying promotions") as tx:
            tx.conn.execute("DELETE FROM promotions")
            tx.conn.executemany(
                "INSERT INTO promotions(id, body) VALUES (?, ?)",
                [(p.id, canonical_json(promotion_to_dict(p, cur))) for p in promos],
            )
            self._set_doc(tx.conn, "promotions", version, None, now)
            tx.journal("promotions.synced", {"version": version, "ids": ids}, time=now)
        self.on_change("promotions")

    def stock(self, sku: str, doc: dict[str, Any]) -> None:
        if doc["sku"] != sku:
            raise Rejected(f"stock level for {doc['sku']!r} published on the topic of {sku!r}")
        row = self.ledger.conn.execute("SELECT version FROM remote_stock WHERE sku = ?", (sku,)).fetchone()
        if not self._check_version(f"stock level of {sku}", int(row[0]) if row else 0, int(doc["version"])):
            return
        body = {"levels": {k: str(milli_to_qty(qty_to_milli(Decimal(v)))) for k, v in doc["levels"].items()},
                "reserved": doc["reserved"]}  # fmt: skip
        with self.ledger.transaction("storing a stock level") as tx:
            tx.conn.execute(
                "INSERT INTO remote_stock(sku, version, body, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(sku) DO UPDATE SET version = excluded.version, body = excluded.body, "
                "updated_at = excluded.updated_at",
                (sku, int(doc["version"]), canonical_json(body), iso_utc(self.clock.now())),
            )
        self.on_change("stock")

    def order(self, order_id: str, doc: dict[str, Any]) -> None:
        if doc["id"] != order_id:
            raise Rejected(f"order {doc['id']!r} published on the topic of {order_id!r}")
        row = self.ledger.conn.execute("SELECT version FROM pickup_orders WHERE id = ?", (order_id,)).fetchone()
        if not self._check_version(f"order {order_id}", int(row[0]) if row else 0, int(doc["version"])):
            return
        with self.ledger.transaction("storing a pickup order") as tx:
            tx.conn.execute(
                "INSERT INTO pickup_orders(id, version, status, body, updated_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET version = excluded.version, status = excluded.status, "
                "body = excluded.body, updated_at = excluded.updated_at",
                (order_id, int(doc["version"]), doc["status"], canonical_json(doc), iso_utc(self.clock.now())),
            )
        self.on_change("orders")

    def customers_revoked(self, doc: dict[str, Any]) -> None:
        """Drop what this till holds of customers erased, or whose consent was withdrawn, at the shop."""
        from appliance.customers import apply_revoked

        version = int(doc["version"])
        if not self._check_version("customer revocations", doc_version(self.ledger, "customers-revoked"), version):
            return
        now = iso_utc(self.clock.now())
        with self.ledger.transaction("applying customer revocations") as tx:
            dropped = apply_revoked(tx.conn, doc["revoked"], now)
            self._set_doc(tx.conn, "customers-revoked", version, None, now)
            if dropped:
                tx.journal("customers.revoked", {"version": version, "dropped": dropped}, time=now)
        self.on_change("customers")

    def update_offer(self, doc: dict[str, Any]) -> None:
        """Record the shop's update offer and hand it to the fetcher, also when it is the known version.

        The fetcher decides (offers for other tills, releases running, fetched or refused are ignored
        there); the retained copy that comes with every reconnect retries a download that gave up.
        """
        assert self.on_offer is not None
        version = int(doc["version"])
        if self._check_version("update offer", doc_version(self.ledger, "update-offer"), version):
            now = iso_utc(self.clock.now())
            with self.ledger.transaction("storing an update offer") as tx:
                self._set_doc(tx.conn, "update-offer", version, canonical_json(doc), now)
        self.on_offer(doc)

    def config(self, doc: dict[str, Any]) -> None:
        version = int(doc["version"])
        if not self._check_version("desired config", doc_version(self.ledger, "config"), version):
            return
        now = iso_utc(self.clock.now())
        problems = _config_problems(doc["values"])
        if problems:
            self.report_config({"version": version, "status": "rejected", "errors": problems, "time": now})
            raise Rejected("desired config rejected: " + "; ".join(problems))
        with self.ledger.transaction("storing desired config") as tx:
            self._set_doc(tx.conn, "config", version, canonical_json(doc["values"]), now)
            tx.journal("config.desired", {"version": version, "values": doc["values"]}, time=now)
        self.report_config({"version": version, "status": "accepted", "values": doc["values"], "time": now})
        self.on_change("config")
