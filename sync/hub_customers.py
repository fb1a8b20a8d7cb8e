"""The shop's customer record on the reference hub: lookups, till events, consent and erasure.

One record per customer, shop-wide (table ``customers`` in ``hub.db``), versioned by a
shop-wide counter. The hub:

- answers ``customer-lookup`` requests (sync/rpc.py) by exact identifier only: phone,
  email, loyalty card, badge, customer id or the app's QR code. There is no name
  search, so a till cannot list the shop's customers;
- applies ``tillbox.customer.created``/``updated``/``erased`` events from tills, and raises
  ``customers.duplicate`` when a till creates a customer whose email, phone or card
  another customer already has (the shop merges them);
- publishes the retained ``tillbox/v1/{store}/customers/revoked`` document after every
  erasure or withdrawn consent, so every till drops what it holds of the customer;
- offers the shop's side: :meth:`HubCustomers.create`, ``update``, ``set_consent``,
  ``erase``, ``merge`` and ``app_token`` (the QR code of the shop's app).

A merged duplicate stays as a tombstone naming the kept customer (``merged_into``); every
customer id the hub receives later (lookups, sales, orders, loyalty) is mapped to the kept one.

The hub also keeps each customer's purchase history (table ``customer_purchases``): every
sale a till reports with a ``customer_id`` and every online order that names one and is
paid, collected or shipped. Tills ask for it with ``customer-history``; it is the shop's
record, so withdrawn consent does not change it.

An erasure also redacts the customer's events and stored answers in ``hub.db``, and drops
the customer from their purchases: the sales and orders stay, without the customer id.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import logging
import sqlite3
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

from appliance.canonical import canonical_json
from appliance.clock import iso_utc
from appliance.customers import (
    HISTORY,
    HISTORY_LIMIT,
    LOOKUP,
    MAX_MATCHES,
    PERSONAL_EVENTS,
    TokenKind,
    check_contact,
    check_id,
    classify,
    describe,
    ident,
    match_sql,
    new_qr_secret,
    phone_key,
    qr_sha256,
    qr_token,
)
from appliance.errors import InputError, NotFound
from appliance.ids import uuid7
from appliance.returns import sale_reference
from sync.contract import PREFIX
from sync.schemas import validate

if TYPE_CHECKING:
    from sync.hub import Hub

log = logging.getLogger(__name__)

#: Revocations stay in the retained document this long (a till's cache never outlives it).
REVOKED_DAYS: Final = 90
ALERT_DUPLICATE: Final = "customers.duplicate"
_FIELDS: Final = ("name", "email", "phone", "card", "badge")
_COLUMNS: Final = "id, version, name, email, phone, card, badge, consent, consent_at, qr_sha256"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS customers(
    id TEXT PRIMARY KEY, version INTEGER NOT NULL, name TEXT, email TEXT, phone TEXT, phone_key TEXT, card TEXT,
    badge TEXT, consent INTEGER NOT NULL DEFAULT 0, consent_at TEXT, qr_sha256 TEXT, origin TEXT NOT NULL,
    created_at TEXT NOT NULL, updated_at TEXT NOT NULL, erased_at TEXT, merged_into TEXT);
CREATE INDEX IF NOT EXISTS customers_by_email ON customers(email);
CREATE INDEX IF NOT EXISTS customers_by_phone ON customers(phone_key);
CREATE INDEX IF NOT EXISTS customers_by_card ON customers(card);
CREATE INDEX IF NOT EXISTS customers_by_badge ON customers(badge);
CREATE TABLE IF NOT EXISTS customer_revocations(
    id TEXT PRIMARY KEY, version INTEGER NOT NULL, reason TEXT NOT NULL, at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS customer_stores(store TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS customer_purchases(
    customer TEXT NOT NULL, channel TEXT NOT NULL, store TEXT NOT NULL, device TEXT NOT NULL, reference TEXT NOT NULL,
    sale_id TEXT NOT NULL, order_id TEXT, time TEXT NOT NULL, total INTEGER, currency TEXT,
    PRIMARY KEY(store, sale_id));
CREATE INDEX IF NOT EXISTS customer_purchases_by_customer ON customer_purchases(customer, time, store, sale_id);
CREATE INDEX IF NOT EXISTS customer_purchases_by_order ON customer_purchases(store, order_id);
CREATE TABLE IF NOT EXISTS customer_merges(
    id TEXT PRIMARY KEY, keep TEXT NOT NULL, duplicate TEXT NOT NULL UNIQUE, actor TEXT, at TEXT NOT NULL,
    points INTEGER NOT NULL, purchases INTEGER NOT NULL);
"""
#: Order statuses that make an order a purchase whatever its payment; cancelled and expired never do.
_BOUGHT: Final = ("collected", "shipped")
_PURCHASE_COLUMNS: Final = "channel, store, device, reference, sale_id, time, total, currency"


#: What an erased customer's order says instead of their address (``ship_to`` is required of ship orders).
ERASED_ADDRESS: Final = {"name": "(erased)", "lines": ["(erased)"], "city": "(erased)", "country": "ZZ"}


def revoked_topic(store: str) -> str:
    """The retained ``customers-revoked`` document of a store."""
    return f"{PREFIX}/{store}/customers/revoked"


def _record(row: tuple[Any, ...]) -> dict[str, Any]:
    """A ``customers`` row (in :data:`_COLUMNS` order) as a customer record; null fields left out."""
    out: dict[str, Any] = {"id": row[0], "version": int(row[1]), "name": row[2], "consent": bool(row[7])}
    for key, value in zip(("email", "phone", "card", "badge"), row[3:7], strict=True):
        if value is not None:
            out[key] = value
    if row[8] is not None:
        out["consent_at"] = row[8]
    if row[9] is not None:
        out["qr_sha256"] = row[9]
    return out


def _instant(text: str) -> str:
    """An RFC 3339 time as the hub sorts purchases by (UTC, milliseconds); unparsable text as it is."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return text
    return iso_utc(moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC))


def cursor(time: str, store: str, sale_id: str) -> str:
    """The opaque ``next`` of a history page: the last purchase's sort key."""
    raw = json.dumps([time, store, sale_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _uncursor(text: str) -> tuple[str, str, str]:
    try:
        key = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (ValueError, binascii.Error):
        raise InputError("that is not a purchase history cursor") from None
    if not (isinstance(key, list) and len(key) == 3 and all(isinstance(k, str) for k in key)):
        raise InputError("that is not a purchase history cursor")
    return key[0], key[1], key[2]


class HubCustomers:
    """The customer record of a :class:`~sync.hub.Hub` (created by it; call the shop methods from any thread)."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.db: sqlite3.Connection = hub.db
        upgrade = self.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'customer_purchases'").fetchone() is None
        columns = {str(r[1]) for r in self.db.execute("PRAGMA table_info(customers)")}
        if columns and "merged_into" not in columns:  # a database from before merges
            self.db.execute("ALTER TABLE customers ADD COLUMN merged_into TEXT")
        self.db.executescript(_SCHEMA)
        if upgrade:  # a new database, or one from before purchase histories: record what it holds
            self._backfill()
        hub.serve(LOOKUP, self._lookup)
        hub.serve(HISTORY, self._history)

    # -- on the hub thread -----------------------------------------------------------------------

    def _now(self) -> str:
        return iso_utc(self.hub.clock.now())

    def _version(self) -> int:
        return self.hub._counter("customers", bump=True)

    def _row(self, customer_id: str) -> tuple[Any, ...] | None:
        row = self.db.execute(f"SELECT {_COLUMNS}, erased_at FROM customers WHERE id = ?", (customer_id,)).fetchone()
        return None if row is None else tuple(row)

    def _merged_into(self, customer_id: str) -> str | None:
        """The customer a live (not erased) merged duplicate was merged into; None for any other id."""
        row = self.db.execute("SELECT merged_into FROM customers WHERE id = ? AND erased_at IS NULL",
                              (customer_id,)).fetchone()  # fmt: skip
        return None if row is None or row[0] is None else str(row[0])

    def _live(self, customer_id: str) -> tuple[Any, ...]:
        """A customer's row for the shop's changes; NotFound when unknown or erased, InputError when merged."""
        row = self._row(customer_id)
        if row is None:
            raise NotFound(f"no customer {customer_id}")
        if row[10] is not None:
            raise NotFound(f"customer {customer_id} is erased")
        merged = self._merged_into(customer_id)
        if merged is not None:
            raise InputError(f"customer {customer_id} was merged into {merged}")
        return row

    def _lookup(self, store: str, device: str, request: Mapping[str, Any]) -> dict[str, Any]:
        """``customer-lookup``: the customers a token names (at most 10); NotFound when none."""
        self.db.execute("INSERT OR IGNORE INTO customer_stores(store) VALUES (?)", (store,))
        kind, value = classify(str(request["token"]))
        ids = self._matches(kind, value)
        marks = ",".join("?" * len(ids))
        rows = self.db.execute(
            f"SELECT {_COLUMNS} FROM customers WHERE erased_at IS NULL AND id IN ({marks}) ORDER BY name, id "
            f"LIMIT {MAX_MATCHES}", ids
        ).fetchall()  # fmt: skip
        if not rows:
            raise NotFound(f"no customer with {describe(kind)}")
        return {"customers": [_record(tuple(r)) for r in rows]}

    def _matches(self, kind: TokenKind, value: str) -> list[str]:
        """The ids of the live customers a classified token names; a merged customer's id names the kept one."""
        where, args = match_sql(kind, value)
        rows = self.db.execute(f"SELECT id, merged_into FROM customers WHERE erased_at IS NULL AND {where}", args)
        found = [self.canonical(str(r[1])) if r[1] is not None else str(r[0]) for r in rows.fetchall()]
        return sorted(set(found))

    def canonical(self, customer_id: str) -> str:
        """The id a customer id stands for now: the kept customer's after a merge, else itself (hub thread)."""
        cid = customer_id
        for _ in range(16):  # merges are flattened; the bound only guards against a damaged database
            row = self.db.execute("SELECT merged_into FROM customers WHERE id = ?", (cid,)).fetchone()
            if row is None or row[0] is None:
                break
            cid = str(row[0])
        return cid

    def resolve(self, token: str) -> str:
        """The id of the one customer a token names, for other hub handlers (loyalty) on the hub thread.

        Raises :class:`NotFound` when nobody matches and :class:`InputError` when several do.
        """
        kind, value = classify(token)
        ids = [i for i in self._matches(kind, value) if not self.erased_on_thread(i)]
        if not ids:
            raise NotFound(f"no customer with {describe(kind)}")
        if len(ids) > 1:
            raise InputError(f"several customers have {describe(kind)}")
        return ids[0]

    def apply(self, store: str, device: str, type_: str, data: Mapping[str, Any]) -> None:
        """Apply a till's customer event (inside the hub's ingest transaction); a bad one is rejected, not fatal."""
        self.db.execute("SAVEPOINT customer_event")
        try:
            publish = self._apply(store, device, type_, data)
        except (InputError, KeyError, TypeError, ValueError, sqlite3.IntegrityError) as exc:
            self.db.execute("ROLLBACK TO customer_event")
            self.hub._reject(f"evt {type_} from {store}/{device}", f"customer event not applied: {exc!r}"[:500])
            publish = False
        self.db.execute("RELEASE customer_event")
        if publish:
            self.hub.call(self._publish_revoked)  # runs after the ingest transaction has committed

    def _apply(self, store: str, device: str, type_: str, data: Mapping[str, Any]) -> bool:
        """Apply one event; True when the revoked document must be republished."""
        cid = str(data["id"])
        merged = self._merged_into(cid)
        if merged is not None:  # a till still holds the old id: the person is the kept customer now
            if type_ == "tillbox.customer.erased":
                return self._erase(self.canonical(cid))
            kept = self._row(self.canonical(cid))
            at = data.get("consent_at")
            if type_ == "tillbox.customer.updated" and "consent" in data and isinstance(at, str) and kept is not None \
                    and kept[10] is None and (kept[8] is None or _instant(at) > _instant(str(kept[8]))):  # fmt: skip
                return self._change(str(kept[0]), {"consent": data["consent"], "consent_at": at})
            return False  # the rest of what a till says of the old id is the kept record's business now
        if type_ == "tillbox.customer.erased":
            return self._erase(cid)
        row = self._row(cid)
        if data.get("redacted"):  # erased on the till before it reached the shop: its erasure follows
            if row is None:
                self._tombstone(cid, "till")
            return False
        if row is not None and row[10] is not None:
            return False  # erased: never brought back
        if row is None and type_ == "tillbox.customer.created":
            fields = {k: data.get(k) for k in _FIELDS}
            if not isinstance(fields["name"], str):
                raise InputError("a created customer needs a name")
            self._insert(cid, fields, consent=bool(data.get("consent")), consent_at=data.get("consent_at"),
                         origin=device)  # fmt: skip
            self._duplicates(store, device, cid)
            return False
        if row is None:
            raise NotFound(f"no customer {cid} to update")
        return self._change(cid, data)

    def _insert(self, cid: str, fields: Mapping[str, Any], *, consent: bool, consent_at: str | None,
                origin: str) -> None:  # fmt: skip
        now = self._now()
        phone = fields.get("phone")
        self.db.execute(
            "INSERT INTO customers(id, version, name, email, phone, phone_key, card, badge, consent, consent_at, "
            "origin, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (cid, self._version(), fields["name"], fields.get("email"), phone, phone and phone_key(phone),
             fields.get("card"), fields.get("badge"), int(consent), consent_at, origin, now, now),
        )  # fmt: skip

    def _change(self, cid: str, data: Mapping[str, Any]) -> bool:
        """Update the given fields; True when consent was withdrawn (a revocation was recorded)."""
        row = self._row(cid)
        if row is None:
            raise NotFound(f"no customer {cid}")
        sets = {k: data[k] for k in _FIELDS if k in data}
        if "phone" in sets:
            sets["phone_key"] = sets["phone"] and phone_key(sets["phone"])
        withdrawn = "consent" in data and bool(row[7]) and not data["consent"]
        if "consent" in data:
            sets["consent"] = int(bool(data["consent"]))
            sets["consent_at"] = data.get("consent_at") or self._now()
        version = self._version()
        sets.update(version=version, updated_at=self._now())
        self.db.execute(f"UPDATE customers SET {', '.join(f'{k} = ?' for k in sets)} WHERE id = ?",
                        (*sets.values(), cid))  # fmt: skip
        if withdrawn:
            self._revoke(cid, version, "withdrawn")
        return withdrawn

    def _tombstone(self, cid: str, origin: str) -> int:
        now, version = self._now(), self._version()
        self.db.execute(
            "INSERT INTO customers(id, version, consent, origin, created_at, updated_at, erased_at) "
            "VALUES (?, ?, 0, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET version = excluded.version, name = NULL, "
            "email = NULL, phone = NULL, phone_key = NULL, card = NULL, badge = NULL, consent = 0, consent_at = NULL, "
            "qr_sha256 = NULL, updated_at = excluded.updated_at, erased_at = excluded.erased_at",
            (cid, version, origin, now, now, now),
        )
        return version

    def _erase(self, cid: str) -> bool:
        """Erase a customer; False when already erased (by the shop or another till)."""
        row = self._row(cid)
        if row is not None and row[10] is not None:
            return False
        version = self._tombstone(cid, "shop")
        self._revoke(cid, version, "erased")
        marks = ",".join("?" * len(PERSONAL_EVENTS))
        self.db.execute(
            f"UPDATE events SET body = json_set(body, '$.data', json(?)) WHERE type IN ({marks}) "
            "AND json_extract(body, '$.data.id') = ?",
            (canonical_json({"id": cid, "redacted": True}), *PERSONAL_EVENTS, cid),
        )
        self.db.execute(
            "DELETE FROM answers WHERE name = ? AND EXISTS (SELECT 1 FROM json_each(answers.body, "
            "'$.result.customers') WHERE json_extract(value, '$.id') = ?)",
            (LOOKUP, cid),
        )
        self._unlink(cid)
        log.info("customer %s erased", cid)
        for (merged,) in self.db.execute("SELECT id FROM customers WHERE merged_into = ? AND erased_at IS NULL",
                                         (cid,)).fetchall():  # fmt: skip
            self._erase(str(merged))  # the same person under an older id
        return True

    def _revoke(self, cid: str, version: int, reason: str) -> None:
        self.db.execute(
            "INSERT INTO customer_revocations(id, version, reason, at) VALUES (?, ?, ?, ?) ON CONFLICT(id) DO UPDATE "
            "SET version = excluded.version, reason = excluded.reason, at = excluded.at",
            (cid, version, reason, self._now()),
        )

    def _duplicates(self, store: str, device: str, cid: str) -> None:
        """Flag another customer with the same email, phone or card as a newly created one."""
        row = self.db.execute("SELECT email, phone_key, card FROM customers WHERE id = ?", (cid,)).fetchone()
        for column, value in zip(("email", "phone_key", "card"), row, strict=True):
            if value is None:
                continue
            other = self.db.execute(
                f"SELECT id FROM customers WHERE {column} = ? AND id != ? AND erased_at IS NULL "
                "AND merged_into IS NULL ORDER BY id LIMIT 1",
                (value, cid),
            ).fetchone()
            if other is not None:
                what = {"phone_key": "phone"}.get(column, column)
                self.hub._alert(ALERT_DUPLICATE, store, cid, f"customer {cid} created at {device} has the same "
                                f"{what} as customer {other[0]}: merge them at the shop")  # fmt: skip

    def _publish_revoked(self) -> None:
        """Publish the retained ``customers/revoked`` document to every store the hub knows."""
        cutoff = iso_utc(self.hub.clock.now() - timedelta(days=REVOKED_DAYS))
        rows = self.db.execute(
            "SELECT r.id, r.version, r.reason, r.at, c.merged_into FROM customer_revocations r "
            "LEFT JOIN customers c ON c.id = r.id WHERE r.at >= ? ORDER BY r.version", (cutoff,)
        )  # fmt: skip
        entries: list[dict[str, Any]] = []
        for r in rows:
            entries.append({"id": r[0], "version": int(r[1]), "reason": r[2], "at": r[3]})
            if r[2] == "merged" and r[4] is not None:
                entries[-1]["merged_into"] = r[4]
        doc = {"version": self.hub._counter("customers-revoked", bump=True), "time": self._now(), "revoked": entries}
        validate("customers-revoked", doc)
        known = self.db.execute(
            "SELECT store FROM devices UNION SELECT store FROM docs UNION SELECT store FROM customer_stores ORDER BY 1"
        )
        stores = [str(r[0]) for r in known]
        body = json.dumps(doc).encode()
        for store in stores:
            self.hub.link.publish(revoked_topic(store), body, retain=True)

    # -- purchase history (on the hub thread) ----------------------------------------------------

    def erased_on_thread(self, cid: str) -> bool:
        """Whether the shop has erased the customer (on the hub thread)."""
        row = self.db.execute("SELECT erased_at FROM customers WHERE id = ?", (cid,)).fetchone()
        return row is not None and row[0] is not None

    def record_sale(self, store: str, device: str, data: Mapping[str, Any], event_id: str) -> None:
        """Record a till's sale in its customer's history (inside the ingest transaction).

        A sale of a customer the shop has erased (the till sold offline) keeps no trace of the id.
        """
        cid = data.get("customer_id")
        if not isinstance(cid, str) or not cid:
            return
        cid = self.canonical(cid)  # a sale made with a merged customer's old id is the kept customer's
        if self.erased_on_thread(cid):
            self.db.execute("UPDATE events SET body = json_remove(body, '$.data.customer_id') WHERE id = ?",
                            (event_id,))  # fmt: skip
            return
        self.db.execute(
            f"INSERT INTO customer_purchases(customer, {_PURCHASE_COLUMNS}) VALUES (?, 'store', ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(store, sale_id) DO UPDATE SET customer = excluded.customer",
            (cid, store, device, sale_reference(device, int(data["number"])), str(data["id"]),
             _instant(str(data["completed_at"])), int(data["total"]), str(data["currency"])),
        )  # fmt: skip

    def record_order(self, store: str, doc: Mapping[str, Any]) -> None:
        """Keep an online order's place in its customer's history up to date (call after every change).

        An order is a purchase once it is paid online (and not cancelled or expired), collected or
        shipped. One paid at pickup is the till's sale of it, found by its receipt reference.
        """
        order_id = str(doc["id"])
        cid = doc.get("customer_id")
        status = str(doc.get("status"))
        paid = doc.get("payment", "paid") == "paid" and bool(doc.get("paid_at"))
        bought = status in _BOUGHT or (paid and status not in ("cancelled", "expired"))
        self.db.execute("DELETE FROM customer_purchases WHERE store = ? AND order_id = ?", (store, order_id))
        cid = self.canonical(cid) if isinstance(cid, str) else cid
        if not isinstance(cid, str) or not bought or self.erased_on_thread(cid):
            return
        total: int | None
        currency: str | None
        sale = None
        if doc.get("payment") == "at_pickup" and doc.get("sale_id"):
            sale = self.db.execute("SELECT device, number, id, time, total, currency FROM sales WHERE store = ? "
                                   "AND id = ?", (store, str(doc["sale_id"]))).fetchone()  # fmt: skip
        if sale is not None:
            device, reference, sale_id = str(sale[0]), sale_reference(str(sale[0]), int(sale[1])), str(sale[2])
            time, total, currency = str(sale[3]), int(sale[4]), str(sale[5])
        else:
            done = [h["time"] for h in doc.get("history") or () if h.get("status") in _BOUGHT]
            time = str(doc.get("paid_at") or (done[-1] if done else doc.get("time") or self._now()))
            lines = doc["lines"]
            priced = bool(doc.get("currency")) and all("total" in ln for ln in lines)
            device, reference, sale_id = "online", order_id, order_id
            total = sum(int(ln["total"]) for ln in lines) if priced else None
            currency = str(doc["currency"]) if priced else None
        self.db.execute(
            f"INSERT INTO customer_purchases(customer, order_id, {_PURCHASE_COLUMNS}) "
            "VALUES (?, ?, 'online', ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(store, sale_id) DO UPDATE SET "
            "customer = excluded.customer, channel = excluded.channel, order_id = excluded.order_id",
            (cid, order_id, store, device, reference, sale_id, _instant(time), total, currency),
        )

    def _backfill(self) -> None:
        """Record the purchases of a database from before purchase histories (its sales and orders)."""
        rows = self.db.execute(
            "SELECT e.store, e.device, e.body, e.id FROM events e JOIN sales s ON s.store = e.store "
            "AND s.device = e.device AND s.id = json_extract(e.body, '$.data.id') "
            "WHERE e.type = 'tillbox.sale.completed' AND json_extract(e.body, '$.data.customer_id') IS NOT NULL"
        ).fetchall()
        for store, device, body, event_id in rows:
            self.record_sale(str(store), str(device), json.loads(body)["data"], str(event_id))
        for store, body in self.db.execute("SELECT store, body FROM orders WHERE "
                                           "json_extract(body, '$.customer_id') IS NOT NULL").fetchall():  # fmt: skip
            self.record_order(str(store), json.loads(body))
        if rows:
            log.info("purchase history: %d past sales recorded", len(rows))

    def _history(self, store: str, device: str, request: Mapping[str, Any]) -> dict[str, Any]:
        """``customer-history``: a customer's purchases, newest first; NotFound when unknown or erased."""
        cid = self.canonical(str(request["customer"]))
        row = self._row(cid)
        if row is None or row[10] is not None:
            raise NotFound(f"no customer {request['customer']}")
        limit = int(request.get("limit", HISTORY_LIMIT))
        where, args = "customer = ?", [cid]
        if "before" in request:
            where += " AND (time, store, sale_id) < (?, ?, ?)"
            args += _uncursor(str(request["before"]))
        rows = self.db.execute(
            f"SELECT {_PURCHASE_COLUMNS} FROM customer_purchases WHERE {where} "
            "ORDER BY time DESC, store DESC, sale_id DESC LIMIT ?", (*args, limit + 1)
        ).fetchall()  # fmt: skip
        out: dict[str, Any] = {"customer": cid, "purchases": [self._purchase(store, r) for r in rows[:limit]]}
        if len(rows) > limit:
            last = rows[limit - 1]
            out["next"] = cursor(str(last[5]), str(last[1]), str(last[4]))
        return out

    def _purchase(self, asking: str, row: tuple[Any, ...]) -> dict[str, Any]:
        channel, store, device, reference, sale_id, time, total, currency = row
        refunded = self.db.execute("SELECT coalesce(sum(amount), 0) FROM refunds WHERE store = ? AND sale_id = ?",
                                   (store, sale_id)).fetchone()[0]  # fmt: skip
        return {"channel": channel, "store": store, "device": device, "reference": reference, "sale_id": sale_id,
                "time": time, "total": total, "currency": currency, "refunded": int(refunded),
                "returnable": store == asking and self._left_to_return(store, str(reference))}  # fmt: skip

    def _left_to_return(self, store: str, reference: str) -> bool:
        """Whether a till of ``store`` can take a return of the sale: it is returnable and not all refunded."""
        try:
            sale = self.hub._returnable(store, reference)
        except InputError:
            return False
        done = {d["line"]: Decimal(d["qty"]) for d in self.hub._refunded(store, str(sale["id"]))}
        return any(not ln.get("voided") and Decimal(str(ln["qty"])) > done.get(int(ln["line"]), Decimal(0))
                   for ln in sale["lines"])  # fmt: skip

    def _unlink(self, cid: str) -> None:
        """Take an erased customer out of their purchases: the sales and orders stay, the id and personal data go."""
        self.db.execute("DELETE FROM customer_purchases WHERE customer = ?", (cid,))
        self.db.execute(
            "UPDATE events SET body = json_remove(body, '$.data.customer_id') WHERE type = 'tillbox.sale.completed' "
            "AND json_extract(body, '$.data.customer_id') = ?", (cid,)
        )  # fmt: skip
        self.db.execute("DELETE FROM answers WHERE name = ? AND json_extract(body, '$.result.customer') = ?",
                        (HISTORY, cid))  # fmt: skip
        orders = self.db.execute(
            "SELECT store, id, version, body FROM orders WHERE json_extract(body, '$.customer_id') = ?", (cid,)
        ).fetchall()
        for store, order_id, version, body in orders:
            doc = json.loads(body)
            del doc["customer_id"]
            # Their name, address and note go too; a ship order keeps an address that says so (the
            # contract requires one), and can no longer be shipped to them.
            doc.pop("customer", None)
            doc.pop("note", None)
            if "ship_to" in doc:
                doc["ship_to"] = dict(ERASED_ADDRESS)
            self.hub.orders._store(str(store), str(order_id), int(version) + 1, doc)
            self.hub.call(functools.partial(self.hub.orders.publish, str(store), str(order_id)))  # after commit

    # -- the shop's side (any thread) ------------------------------------------------------------

    def _write(self, fn: Any) -> Any:
        """Run ``fn`` on the hub thread in one transaction."""
        return self.hub.write(fn)

    def create(self, name: str, *, email: str | None = None, phone: str | None = None, card: str | None = None,
               badge: str | None = None, consent: bool = False,
               customer_id: str | None = None) -> dict[str, Any]:  # fmt: skip
        """Register a customer at the shop (e.g. online); returns the record."""
        name, email, phone = check_contact(name, email, phone)
        fields = {"name": name, "email": email, "phone": phone, "card": card and ident(card),
                  "badge": badge and ident(badge)}  # fmt: skip
        cid = check_id(customer_id) if customer_id else uuid7()

        def run() -> dict[str, Any]:
            if self._row(cid) is not None:
                raise InputError(f"customer {cid} already exists")
            self._insert(cid, fields, consent=consent, consent_at=self._now() if consent else None, origin="shop")
            return self.get_on_thread(cid)

        result: dict[str, Any] = self._write(run)
        return result

    def update(self, customer_id: str, **fields: str | None) -> dict[str, Any]:
        """Change a customer's name, email, phone, card or badge; returns the record."""
        unknown = sorted(set(fields) - set(_FIELDS))
        if unknown:
            raise InputError(f"unknown customer field(s) {', '.join(unknown)}")
        current = self.get(customer_id)
        if current is None:
            merged = self.merged_into(customer_id)
            if merged is not None:
                raise InputError(f"customer {customer_id} was merged into {merged}")
            raise NotFound(f"no customer {customer_id}")
        name, email, phone = check_contact(str(fields.get("name", current["name"])), fields.get("email"),
                                           fields.get("phone"))  # fmt: skip
        clean: dict[str, Any] = {"name": name} if "name" in fields else {}
        clean.update({k: v for k, v in (("email", email), ("phone", phone)) if k in fields})
        clean.update({k: fields[k] and ident(str(fields[k])) for k in ("card", "badge") if k in fields})
        return self._apply_change(customer_id, clean)

    def set_consent(self, customer_id: str, consent: bool) -> dict[str, Any]:
        """Record the customer's consent; withdrawing it makes every till drop their cached record."""
        return self._apply_change(customer_id, {"consent": consent})

    def _apply_change(self, customer_id: str, data: Mapping[str, Any]) -> dict[str, Any]:
        def run() -> tuple[dict[str, Any], bool]:
            self._live(customer_id)
            withdrawn = self._change(customer_id, data)
            return self.get_on_thread(customer_id), withdrawn

        result, withdrawn = self._write(run)
        if withdrawn:
            self.hub._sync(self._publish_revoked)
        return dict(result)

    def erase(self, customer_id: str) -> None:
        """Erase a customer at the shop's request; every till drops what it holds of them."""

        def run() -> None:
            if self._row(customer_id) is None:
                raise NotFound(f"no customer {customer_id}")
            if not self._erase(customer_id):
                raise InputError(f"customer {customer_id} is already erased")

        self._write(run)
        self.hub._sync(self._publish_revoked)

    def merge(self, keep_id: str, duplicate_id: str, *, actor: str | None = None) -> dict[str, Any]:
        """Merge a duplicate record into the kept one; returns the kept record (docs/customers.md).

        The kept record takes the duplicate's contact fields it lacks and the later consent
        decision; the duplicate's points, loyalty cards and purchases move to it; the
        duplicate stays a tombstone naming it, and every till drops its cached copy.
        """
        if keep_id == duplicate_id:
            raise InputError("a customer cannot be merged into themselves")

        def run() -> dict[str, Any]:
            keep, dup = self._live(keep_id), self._live(duplicate_id)
            return self._merge(keep, dup, actor)

        result: dict[str, Any] = self._write(run)
        self.hub._sync(self._publish_revoked)
        return result

    def _merge(self, keep: tuple[Any, ...], dup: tuple[Any, ...], actor: str | None) -> dict[str, Any]:
        """Merge ``dup`` into ``keep`` (rows as :meth:`_row` reads them; hub thread, caller's transaction)."""
        keep_id, dup_id = str(keep[0]), str(dup[0])
        merge_id, now = uuid7(), self._now()
        sets: dict[str, Any] = {}
        for i, key in enumerate(("email", "phone", "card", "badge"), start=3):
            if keep[i] is None and dup[i] is not None:
                sets[key] = dup[i]
        if "phone" in sets:
            sets["phone_key"] = phone_key(str(sets["phone"]))
        # Consent: the more recent decision (consent_at) wins, the kept record's on a tie or when neither has one.
        if dup[8] is not None and (keep[8] is None or _instant(str(dup[8])) > _instant(str(keep[8]))):
            sets.update(consent=int(bool(dup[7])), consent_at=dup[8])
        withdrawn = bool(keep[7]) and "consent" in sets and not sets["consent"]
        # The duplicate first: its contact fields must not match anyone once the kept record has them.
        tomb = self._version()
        self.db.execute(
            "UPDATE customers SET version = ?, name = NULL, email = NULL, phone = NULL, phone_key = NULL, card = NULL, "
            "badge = NULL, consent = 0, consent_at = NULL, updated_at = ?, merged_into = ? WHERE id = ?",
            (tomb, now, keep_id, dup_id),
        )  # the QR hash stays: the app's old code still names the customer
        self.db.execute("UPDATE customers SET merged_into = ? WHERE merged_into = ?", (keep_id, dup_id))
        self._revoke(dup_id, tomb, "merged")
        version = self._version()
        sets.update(version=version, updated_at=now)
        self.db.execute(f"UPDATE customers SET {', '.join(f'{k} = ?' for k in sets)} WHERE id = ?",
                        (*sets.values(), keep_id))  # fmt: skip
        if withdrawn:
            self._revoke(keep_id, version, "withdrawn")
        purchases = self.db.execute("UPDATE customer_purchases SET customer = ? WHERE customer = ?",
                                    (keep_id, dup_id)).rowcount  # fmt: skip
        self.db.execute(
            "DELETE FROM answers WHERE name = ? AND EXISTS (SELECT 1 FROM json_each(answers.body, "
            "'$.result.customers') WHERE json_extract(value, '$.id') = ?)",
            (LOOKUP, dup_id),
        )
        self.db.execute("DELETE FROM answers WHERE name = ? AND json_extract(body, '$.result.customer') = ?",
                        (HISTORY, dup_id))  # fmt: skip
        points = self.hub.accounts.merge_points(dup_id, keep_id, ref=merge_id, staff=actor)
        self.db.execute(  # the alert that asked for this merge, whichever of the two was created second
            "DELETE FROM alerts WHERE code = ? AND ((subject = ? AND instr(message, ?) > 0) "
            "OR (subject = ? AND instr(message, ?) > 0))",
            (ALERT_DUPLICATE, dup_id, f" as customer {keep_id}:", keep_id, f" as customer {dup_id}:"),
        )
        self.db.execute(
            "INSERT INTO customer_merges(id, keep, duplicate, actor, at, points, purchases) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (merge_id, keep_id, dup_id, actor, now, points, purchases),
        )
        log.info("customer %s merged into %s (%d points, %d purchases)", dup_id, keep_id, points, purchases)
        return self.get_on_thread(keep_id)

    def app_token(self, customer_id: str) -> str:
        """A new QR code for the shop's app (``TBC1:<id>:<secret>``); the previous one stops working."""
        token = qr_token(customer_id, new_qr_secret())

        def run() -> None:
            self._live(customer_id)
            self.db.execute("UPDATE customers SET qr_sha256 = ?, version = ?, updated_at = ? WHERE id = ?",
                            (qr_sha256(token), self._version(), self._now(), customer_id))  # fmt: skip

        self._write(run)
        return token

    def get_on_thread(self, customer_id: str) -> dict[str, Any]:
        row = self._row(customer_id)
        if row is None:
            raise NotFound(f"no customer {customer_id}")
        return _record(row[:10])

    def get(self, customer_id: str) -> dict[str, Any] | None:
        """The shop's record of a customer (None when unknown, erased or merged); any thread."""
        rows = self.hub.query(f"SELECT {_COLUMNS} FROM customers WHERE id = ? AND erased_at IS NULL "
                              "AND merged_into IS NULL", (customer_id,))  # fmt: skip
        return _record(rows[0]) if rows else None

    def merged_into(self, customer_id: str) -> str | None:
        """The customer a merged duplicate now is (None when not merged); any thread."""
        rows = self.hub.query("SELECT merged_into FROM customers WHERE id = ?", (customer_id,))
        return str(rows[0][0]) if rows and rows[0][0] is not None else None

    def erased(self, customer_id: str) -> bool:
        """Whether the shop has erased the customer; any thread."""
        rows = self.hub.query("SELECT erased_at FROM customers WHERE id = ?", (customer_id,))
        return bool(rows) and rows[0][0] is not None
