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
  ``erase`` and ``app_token`` (the QR code of the shop's app).

An erasure also redacts the customer's events and stored lookup answers in ``hub.db``.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final

from appliance.canonical import canonical_json
from appliance.clock import iso_utc
from appliance.customers import (
    LOOKUP,
    MAX_MATCHES,
    PERSONAL_EVENTS,
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
    created_at TEXT NOT NULL, updated_at TEXT NOT NULL, erased_at TEXT);
CREATE INDEX IF NOT EXISTS customers_by_email ON customers(email);
CREATE INDEX IF NOT EXISTS customers_by_phone ON customers(phone_key);
CREATE INDEX IF NOT EXISTS customers_by_card ON customers(card);
CREATE INDEX IF NOT EXISTS customers_by_badge ON customers(badge);
CREATE TABLE IF NOT EXISTS customer_revocations(
    id TEXT PRIMARY KEY, version INTEGER NOT NULL, reason TEXT NOT NULL, at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS customer_stores(store TEXT PRIMARY KEY);
"""


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


class HubCustomers:
    """The customer record of a :class:`~sync.hub.Hub` (created by it; call the shop methods from any thread)."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.db: sqlite3.Connection = hub.db
        self.db.executescript(_SCHEMA)
        hub.serve(LOOKUP, self._lookup)

    # -- on the hub thread -----------------------------------------------------------------------

    def _now(self) -> str:
        return iso_utc(self.hub.clock.now())

    def _version(self) -> int:
        return self.hub._counter("customers", bump=True)

    def _row(self, customer_id: str) -> tuple[Any, ...] | None:
        row = self.db.execute(f"SELECT {_COLUMNS}, erased_at FROM customers WHERE id = ?", (customer_id,)).fetchone()
        return None if row is None else tuple(row)

    def _lookup(self, store: str, device: str, request: Mapping[str, Any]) -> dict[str, Any]:
        """``customer-lookup``: the customers a token names (at most 10); NotFound when none."""
        self.db.execute("INSERT OR IGNORE INTO customer_stores(store) VALUES (?)", (store,))
        kind, value = classify(str(request["token"]))
        where, args = match_sql(kind, value)
        rows = self.db.execute(
            f"SELECT {_COLUMNS} FROM customers WHERE erased_at IS NULL AND {where} ORDER BY name, id "
            f"LIMIT {MAX_MATCHES}", args
        ).fetchall()  # fmt: skip
        if not rows:
            raise NotFound(f"no customer with {describe(kind)}")
        return {"customers": [_record(tuple(r)) for r in rows]}

    def resolve(self, token: str) -> str:
        """The id of the one customer a token names, for other hub handlers (loyalty) on the hub thread.

        Raises :class:`NotFound` when nobody matches and :class:`InputError` when several do.
        """
        kind, value = classify(token)
        where, args = match_sql(kind, value)
        rows = self.db.execute(f"SELECT id FROM customers WHERE erased_at IS NULL AND {where} LIMIT 2", args).fetchall()
        if not rows:
            raise NotFound(f"no customer with {describe(kind)}")
        if len(rows) > 1:
            raise InputError(f"several customers have {describe(kind)}")
        return str(rows[0][0])

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
        log.info("customer %s erased", cid)
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
                f"SELECT id FROM customers WHERE {column} = ? AND id != ? AND erased_at IS NULL ORDER BY id LIMIT 1",
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
            "SELECT id, version, reason, at FROM customer_revocations WHERE at >= ? ORDER BY version", (cutoff,)
        )
        entries = [{"id": r[0], "version": int(r[1]), "reason": r[2], "at": r[3]} for r in rows]
        doc = {"version": self.hub._counter("customers-revoked", bump=True), "time": self._now(), "revoked": entries}
        validate("customers-revoked", doc)
        known = self.db.execute(
            "SELECT store FROM devices UNION SELECT store FROM docs UNION SELECT store FROM customer_stores ORDER BY 1"
        )
        stores = [str(r[0]) for r in known]
        body = json.dumps(doc).encode()
        for store in stores:
            self.hub.link.publish(revoked_topic(store), body, retain=True)

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
            row = self._row(customer_id)
            if row is None or row[10] is not None:
                raise NotFound(f"no customer {customer_id}")
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

    def app_token(self, customer_id: str) -> str:
        """A new QR code for the shop's app (``TBC1:<id>:<secret>``); the previous one stops working."""
        token = qr_token(customer_id, new_qr_secret())

        def run() -> None:
            row = self._row(customer_id)
            if row is None or row[10] is not None:
                raise NotFound(f"no customer {customer_id}")
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
        """The shop's record of a customer (None when unknown or erased); any thread."""
        rows = self.hub.query(f"SELECT {_COLUMNS} FROM customers WHERE id = ? AND erased_at IS NULL", (customer_id,))
        return _record(rows[0]) if rows else None

    def erased(self, customer_id: str) -> bool:
        """Whether the shop has erased the customer; any thread."""
        rows = self.hub.query("SELECT erased_at FROM customers WHERE id = ?", (customer_id,))
        return bool(rows) and rows[0][0] is not None
