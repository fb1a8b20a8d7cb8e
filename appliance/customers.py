"""Customer records: the shop's customer record on the till, kept locally only with consent.

The shop (the hub) keeps the one customer record. A till identifies a customer by a
token (:func:`classify`): phone, email, loyalty card number, badge, customer id, or the
QR code of the shop's app (``TBC1:<customer id>:<secret>``, see :func:`qr_token`). It
asks the shop through :attr:`Customers.remote` (``customer-lookup``); a customer who
consented is cached in the ``customers`` table with the time of the answer
(``cached_at``), refreshed on every online use and dropped ``cache_days`` after it.
A customer who did not consent is held in memory only while served. Offline, only the
cache answers. A customer created at the till is published to the shop as a
``tillbox.customer.created`` outbox event. The customer's purchase history (every till,
online) is the shop's: :meth:`Customers.history` asks for it (``customer-history``) and
keeps nothing.

Personal data never goes into the journal or sales, which refer to a customer by an
opaque id. Erasure (here, or at the shop through the ``customers/revoked`` document)
removes the personal data from the table and redacts this customer's outbox events.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import secrets
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Final, Literal

from appliance.canonical import canonical_json
from appliance.clock import iso_utc
from appliance.errors import DeviceUnavailable, InputError, NotFound
from appliance.ids import uuid7
from appliance.ledger import Ledger, NewEvent
from appliance.staff import Action, Approval

log = logging.getLogger(__name__)

#: Prefix of the QR code the shop's app shows: ``TBC1:<customer id>:<26 base32 characters>``.
QR_PREFIX: Final = "TBC1:"
#: The generic request (sync/rpc.py) that asks the shop for a customer.
LOOKUP: Final = "customer-lookup"
#: The generic request that asks the shop for a customer's purchase history (never kept on the till).
HISTORY: Final = "customer-history"
#: Purchases per history page: the default and the most one request may ask.
HISTORY_LIMIT: Final = 20
HISTORY_MAX: Final = 50
#: Outbox events that carry personal data and are redacted on erasure.
PERSONAL_EVENTS: Final = ("tillbox.customer.created", "tillbox.customer.updated")
#: A customer without consent is held in memory this long after their last use.
HOLD_SECONDS: Final = 4 * 3600
HOLD_MAX: Final = 500
MAX_MATCHES: Final = 10

TokenKind = Literal["id", "qr", "email", "key"]
#: ``SyncService.request``: (name, body) -> result; raises NotFound, DeviceUnavailable, ...
RemoteRequest = Callable[[str, Mapping[str, Any]], dict[str, Any]]

_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_PHONE = re.compile(r"\+?[0-9 ()/.-]{5,20}")
_UUID = re.compile(r"[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SECRET = re.compile(r"[A-Z2-7]{26}")
_IDENT = re.compile(r"[A-Z0-9._-]{1,64}")
_CURSOR = re.compile(r"[A-Za-z0-9_-]{1,400}")
_COLUMNS = "id, name, email, phone, consent, consent_at, erased_at, card, badge, cached_at, version, origin"


@dataclass(frozen=True)
class Customer:
    """A customer as this till knows them; personal fields are None once erased."""

    id: str
    name: str | None
    email: str | None
    phone: str | None
    consent: bool
    consent_at: str | None
    erased: bool = False
    card: str | None = None
    badge: str | None = None
    #: When the shop last confirmed the record (None: not kept on this till).
    cached_at: str | None = None
    #: The shop's version of the record (None: created here and not looked up since).
    version: int | None = None
    origin: str | None = None

    @property
    def cached(self) -> bool:
        """Whether the record is kept on this till (only with consent)."""
        return self.cached_at is not None and not self.erased


@dataclass(frozen=True)
class Purchase:
    """One purchase of a customer as the shop recorded it: a till's sale or an online order."""

    channel: str  #: ``store`` (a till) or ``online``
    store: str
    device: str  #: the till, or ``online``
    reference: str  #: what a return finds it by: the receipt reference or the order id
    sale_id: str
    time: str
    total: int | None  #: minor units of ``currency`` (None: an order without prices)
    currency: str | None
    refunded: int  #: refunded so far, at any till
    returnable: bool  #: a till of this store can take a return of it (something is left to return)


@dataclass(frozen=True)
class History:
    """A page of a customer's purchases, newest first; ``next`` asks for the page before it."""

    customer: str
    purchases: tuple[Purchase, ...]
    next: str | None


def purchase(doc: Mapping[str, Any]) -> Purchase:
    """A purchase from the shop's answer (schema ``customer-history-result``)."""
    return Purchase(
        channel=str(doc["channel"]), store=str(doc["store"]), device=str(doc["device"]),
        reference=str(doc["reference"]), sale_id=str(doc["sale_id"]), time=str(doc["time"]),
        total=None if doc["total"] is None else int(doc["total"]), currency=doc["currency"],
        refunded=int(doc["refunded"]), returnable=bool(doc["returnable"]),
    )  # fmt: skip


# -- tokens -------------------------------------------------------------------------------------


def phone_key(text: str) -> str | None:
    """A phone number reduced to its digits (with a leading ``+`` kept) for matching; None if not a phone."""
    text = text.strip()
    if not _PHONE.fullmatch(text):
        return None
    digits = re.sub(r"[^0-9]", "", text)
    return ("+" if text.startswith("+") else "") + digits if len(digits) >= 5 else None


def ident(text: str) -> str:
    """A loyalty card number or badge id as stored and matched: no spaces, upper case."""
    value = re.sub(r"\s", "", text).upper()
    if not _IDENT.fullmatch(value):
        raise InputError(f"{text!r} is not a card or badge number (letters, digits, '.', '_', '-'; at most 64)")
    return value


def qr_token(customer_id: str, secret: str) -> str:
    """The QR code text of the shop's app for a customer."""
    return f"{QR_PREFIX}{customer_id}:{secret}"


def new_qr_secret() -> str:
    """A fresh 130-bit secret for :func:`qr_token` (26 base32 characters)."""
    return base64.b32encode(secrets.token_bytes(16)).decode("ascii").rstrip("=")


def qr_sha256(token: str) -> str:
    """Hex SHA-256 of a canonical QR token: what the shop stores and tills cache to check it offline."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def qr_customer(token: str) -> str:
    """The customer id in a canonical QR token."""
    return token[len(QR_PREFIX) :].rsplit(":", 1)[0]


def classify(token: str) -> tuple[TokenKind, str]:
    """What a typed or scanned token is, and its canonical value.

    ``qr`` (the app's QR code), ``id`` (a UUID customer id), ``email``, or ``key``: a
    phone number, loyalty card number, badge id or other customer id, matched against all.
    """
    text = token.strip()
    if not text or len(text) > 200 or not text.isprintable():
        raise InputError("a customer is identified by 1-200 printable characters")
    if text[: len(QR_PREFIX)].upper() == QR_PREFIX:
        parts = text[len(QR_PREFIX) :].split(":")
        if len(parts) != 2 or not _ID.fullmatch(parts[0]) or not _SECRET.fullmatch(parts[1].upper()):
            raise InputError("that is not a customer QR code of the shop's app")
        return "qr", qr_token(parts[0], parts[1].upper())
    if _UUID.fullmatch(text):
        return "id", text.lower()
    if "@" in text:
        if not _EMAIL.fullmatch(text):
            raise InputError(f"{text!r} is not an email address")
        return "email", text.lower()
    return "key", text


def match_sql(kind: TokenKind, value: str) -> tuple[str, tuple[str, ...]]:
    """WHERE clause and arguments matching a classified token on a customers table (till and hub)."""
    if kind == "id":
        return "id = ?", (value,)
    if kind == "qr":
        return "id = ? AND qr_sha256 = ?", (qr_customer(value), qr_sha256(value))
    if kind == "email":
        return "email = ?", (value,)
    clauses, args = ["id = ?"], [value]
    key = phone_key(value)
    if key is not None:
        clauses.append("phone_key = ?")
        args.append(key)
    normal = re.sub(r"\s", "", value).upper()
    if _IDENT.fullmatch(normal):
        clauses += ["card = ?", "badge = ?"]
        args += [normal, normal]
    return "(" + " OR ".join(clauses) + ")", tuple(args)


def describe(kind: TokenKind) -> str:
    return {"id": "that customer id", "qr": "that QR code", "email": "that email address",
            "key": "that phone, card or badge number"}[kind]  # fmt: skip


def record(c: Customer) -> dict[str, Any]:
    """A customer as a record for the shop (``tillbox.customer.created`` data); None fields left out."""
    out: dict[str, Any] = {"id": c.id, "name": c.name, "consent": c.consent}
    for key in ("email", "phone", "card", "badge", "consent_at"):
        value = getattr(c, key)
        if value is not None:
            out[key] = value
    return out


def from_record(rec: Mapping[str, Any], *, cached_at: str | None = None, origin: str = "shop") -> Customer:
    """A customer from the shop's record (schema ``customer-lookup-result``)."""
    return Customer(
        id=str(rec["id"]), name=str(rec["name"]), email=rec.get("email"), phone=rec.get("phone"),
        consent=bool(rec["consent"]), consent_at=rec.get("consent_at"), card=rec.get("card"), badge=rec.get("badge"),
        cached_at=cached_at, version=int(rec["version"]) if rec.get("version") is not None else None, origin=origin,
    )  # fmt: skip


def check_id(customer_id: str) -> str:
    """A customer id as the contract allows it (1-64 letters, digits, '.', '_', '-'); raises InputError."""
    if not _ID.fullmatch(customer_id):
        raise InputError(f"{customer_id!r} is not a customer id")
    return customer_id


def check_contact(name: str, email: str | None, phone: str | None) -> tuple[str, str | None, str | None]:
    """A customer's name, email and phone checked and normalised (email lower case); raises InputError."""
    name = name.strip()
    if not name or len(name) > 120 or not name.isprintable():
        raise InputError("a customer needs a name of 1-120 printable characters")
    if email is not None and (not _EMAIL.fullmatch(email.strip()) or len(email.strip()) > 254):
        raise InputError(f"{email!r} is not an email address")
    if phone is not None and phone_key(phone) is None:
        raise InputError(f"{phone!r} is not a phone number")
    return name, email and email.strip().lower(), phone and phone.strip()


# -- storage (any connection, inside the caller's transaction) ----------------------------------


def _row(conn: sqlite3.Connection, customer_id: str) -> Customer | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM customers WHERE id = ?", (customer_id,)).fetchone()
    return None if row is None else _from_row(row)


def _from_row(row: Sequence[Any]) -> Customer:
    return Customer(row[0], row[1], row[2], row[3], bool(row[4]), row[5], row[6] is not None, row[7], row[8], row[9],
                    row[10], row[11])  # fmt: skip


def _store(conn: sqlite3.Connection, c: Customer, *, created_at: str, qr: str | None = None) -> None:
    """Insert or refresh a consenting customer's row (never over an erased one)."""
    conn.execute(
        "INSERT INTO customers(id, name, email, phone, phone_key, card, badge, consent, consent_at, created_at, "
        "origin, cached_at, version, qr_sha256) VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT(id) DO UPDATE SET name = excluded.name, email = excluded.email, phone = excluded.phone, "
        "phone_key = excluded.phone_key, card = excluded.card, badge = excluded.badge, consent = 1, "
        "consent_at = excluded.consent_at, cached_at = excluded.cached_at, "
        "version = COALESCE(excluded.version, version), qr_sha256 = COALESCE(excluded.qr_sha256, qr_sha256) "
        "WHERE erased_at IS NULL",
        (c.id, c.name, c.email, c.phone, c.phone and phone_key(c.phone), c.card, c.badge, c.consent_at, created_at,
         c.origin or "shop", c.cached_at, c.version, qr),
    )  # fmt: skip


def _redact(conn: sqlite3.Connection, customer_ids: Iterable[str], *, acked_only: bool) -> int:
    """Replace the data of customer outbox events by ``{"id", "redacted": true}``; returns how many."""
    done = 0
    marks = ",".join("?" * len(PERSONAL_EVENTS))
    for cid in customer_ids:
        cur = conn.execute(
            f"UPDATE outbox SET data = ? WHERE type IN ({marks}) AND json_extract(data, '$.id') = ? "
            "AND json_extract(data, '$.redacted') IS NULL" + (" AND acked_at IS NOT NULL" if acked_only else ""),
            (canonical_json({"id": cid, "redacted": True}), *PERSONAL_EVENTS, cid),
        )
        done += cur.rowcount
    return done


def _forget(conn: sqlite3.Connection, customer_id: str, time: str, *, erased: bool) -> None:
    """Drop a customer's personal data: an erased tombstone, or (consent withdrawn) no row at all."""
    if erased:
        conn.execute(
            "INSERT INTO customers(id, consent, created_at, erased_at) VALUES (?, 0, ?, ?) ON CONFLICT(id) DO UPDATE "
            "SET name = NULL, email = NULL, phone = NULL, phone_key = NULL, card = NULL, badge = NULL, "
            "qr_sha256 = NULL, consent = 0, consent_at = NULL, cached_at = NULL, erased_at = excluded.erased_at",
            (customer_id, time, time),
        )
    else:
        conn.execute("DELETE FROM customers WHERE id = ? AND erased_at IS NULL", (customer_id,))
    _redact(conn, [customer_id], acked_only=not erased)


def apply_revoked(conn: sqlite3.Connection, entries: Sequence[Mapping[str, Any]], time: str) -> int:
    """Apply the shop's ``customers-revoked`` entries: drop what the till holds of each; returns how many.

    An ``erased`` customer leaves a tombstone and has every outbox event redacted; a
    ``withdrawn`` consent drops the cached row unless it was refreshed at a later version. A
    customer ``merged`` into another record is dropped like a withdrawn consent (the person
    still exists, as ``merged_into``; the shop maps the old id in sales and loyalty events).
    """
    local = {str(r[0]): (r[1], r[2] is not None)
             for r in conn.execute("SELECT id, version, erased_at FROM customers")}  # fmt: skip
    marks = ",".join("?" * len(PERSONAL_EVENTS))
    pending = {str(r[0]) for r in conn.execute(
        f"SELECT DISTINCT json_extract(data, '$.id') FROM outbox WHERE type IN ({marks}) "
        "AND json_extract(data, '$.redacted') IS NULL", PERSONAL_EVENTS) if r[0] is not None}  # fmt: skip
    dropped = 0
    for entry in entries:
        cid, erased = str(entry["id"]), entry["reason"] == "erased"
        have = local.get(cid)
        if have is not None and not have[1] and (have[0] or 0) <= int(entry["version"]):
            _forget(conn, cid, time, erased=erased)
            dropped += 1
        elif erased and cid in pending:
            _redact(conn, [cid], acked_only=False)
    return dropped


# -- the till's customers -----------------------------------------------------------------------


class Customers:
    """Identify, create, cache, update consent and erase customers on one till."""

    def __init__(self, ledger: Ledger, *, cache_days: int = 30) -> None:
        self.ledger = ledger
        self.cache_days = cache_days
        #: Set when sync runs (``SyncService.request``): customers are then looked up at the shop.
        self.remote: RemoteRequest | None = None
        self._held: dict[str, tuple[Customer, datetime]] = {}

    # -- create ----------------------------------------------------------------------------------

    def add(self, name: str, *, email: str | None = None, phone: str | None = None, consent: bool = False,
            now: datetime, actor: str | None = None, customer_id: str | None = None, card: str | None = None,
            badge: str | None = None) -> Customer:  # fmt: skip
        """Create a customer and publish them to the shop; kept on this till only with ``consent``."""
        name, email, phone = check_contact(name, email, phone)
        card, badge = card and ident(card), badge and ident(badge)
        cid = check_id(customer_id) if customer_id else uuid7()
        time = iso_utc(now)
        customer = Customer(cid, name, email, phone, consent, time if consent else None, card=card, badge=badge,
                            cached_at=time if consent else None, origin="till")  # fmt: skip
        with self.ledger.transaction("adding customer") as tx:
            if _row(tx.conn, cid) is not None:
                raise InputError(f"customer {cid} already exists")
            if consent:
                _store(tx.conn, customer, created_at=time)
            entry = tx.journal("customer.added", {"id": cid, "consent": consent}, time=time, actor=actor)
            tx.emit(NewEvent("tillbox.customer.created", record(customer), subject=cid), time=time,
                    journal_seq=entry.seq)  # fmt: skip
        if not consent:
            self._hold(customer, now)
        return customer

    # -- find ------------------------------------------------------------------------------------

    def get(self, customer_id: str) -> Customer:
        """A customer this till knows: cached, erased, or held while being served."""
        row = _row(self.ledger.conn, customer_id)
        if row is not None and (row.erased or row.cached):
            return row
        held = self._held.get(customer_id)
        if held is not None:
            return held[0]
        if row is not None:
            return row
        raise NotFound(f"no customer {customer_id} on this till")

    def find(self, text: str, *, now: datetime | None = None) -> list[Customer]:
        """Cached customers whose email, phone, card or badge equals ``text``, or whose name contains it."""
        text = text.strip()
        key, normal = phone_key(text), re.sub(r"\s", "", text).upper()
        rows = self.ledger.conn.execute(
            f"SELECT {_COLUMNS} FROM customers WHERE erased_at IS NULL AND cached_at IS NOT NULL AND cached_at >= ? "
            "AND (email = ? OR phone = ? OR phone_key = ? OR card = ? OR badge = ? OR name LIKE ?) "
            "ORDER BY name LIMIT 20",
            (self._cutoff(now), text.lower(), text, key, normal, normal, f"%{text}%"),
        ).fetchall()  # fmt: skip
        return [_from_row(r) for r in rows]

    def _cutoff(self, now: datetime | None) -> str:
        return "" if now is None else iso_utc(now - timedelta(days=self.cache_days))

    def cached(self, token: str, *, now: datetime, origin: str | None = None) -> list[Customer]:
        """Customers matching ``token`` in this till's cache (what an offline till can find)."""
        kind, value = classify(token)
        where, args = match_sql(kind, value)
        sql = (f"SELECT {_COLUMNS} FROM customers WHERE erased_at IS NULL AND cached_at >= ? AND {where}"
               + (" AND origin = ?" if origin else "") + f" ORDER BY name, id LIMIT {MAX_MATCHES}")  # fmt: skip
        rows = self.ledger.conn.execute(sql, (self._cutoff(now), *args, *((origin,) if origin else ())))
        return [_from_row(r) for r in rows.fetchall()]

    def identify(self, token: str, *, now: datetime) -> Customer:
        """The one customer a token names: asked at the shop when it can be, else from the cache.

        Raises :class:`NotFound` when nobody matches (saying whether the shop was asked),
        and :class:`InputError` when several customers match (use another identifier).
        """
        found = self.lookup(token, now=now)
        if len(found) > 1:
            raise InputError(f"{len(found)} customers match; identify the customer another way")
        return found[0]

    def lookup(self, token: str, *, now: datetime) -> list[Customer]:
        """Every customer a token names (at most 10); :meth:`ask_shop`, then :meth:`settle`."""
        return self.settle(token, self.ask_shop(token), now=now)

    def ask_shop(self, token: str) -> list[dict[str, Any]] | None:
        """The shop's records for a token, ``[]`` if it has none, None if it cannot be asked.

        Only waits on the network and touches no database, so it may run in an executor.
        """
        classify(token)
        if self.remote is None:
            return None
        try:
            result = self.remote(LOOKUP, {"token": token.strip()})
        except NotFound:
            return []
        except DeviceUnavailable as exc:
            log.info("customer lookup at the shop failed, using this till's cache: %s", exc)
            return None
        return [dict(r) for r in result["customers"]]

    def settle(self, token: str, answer: Sequence[Mapping[str, Any]] | None, *, now: datetime) -> list[Customer]:
        """Apply the shop's answer (None: not asked): cache consenting customers, hold the others."""
        kind, _value = classify(token)
        if answer is None:
            found = self.cached(token, now=now)
            if not found:
                raise NotFound(f"no customer with {describe(kind)} is cached on this till, and the shop "
                               "is not reachable")  # fmt: skip
            return found
        if not answer:
            mine = self.cached(token, now=now, origin="till")  # created here, not at the shop yet
            if not mine:
                raise NotFound(f"the shop has no customer with {describe(kind)}")
            return mine
        return [self.remember(rec, now=now) for rec in answer]

    def remember(self, rec: Mapping[str, Any], *, now: datetime) -> Customer:
        """Keep a record the shop sent: cached (and refreshed) with consent, else held in memory only."""
        time = iso_utc(now)
        local = _row(self.ledger.conn, str(rec["id"]))
        if local is not None and local.erased:
            raise NotFound(f"customer {rec['id']} was erased on this till")
        if rec["consent"]:
            customer = from_record(rec, cached_at=time, origin=(local.origin or "shop") if local else "shop")
            with self.ledger.transaction("caching a customer") as tx:
                _store(tx.conn, customer, created_at=time, qr=rec.get("qr_sha256"))
            self._held.pop(customer.id, None)
            return customer
        customer = from_record(rec)
        if local is not None:
            with self.ledger.transaction("dropping a customer without consent") as tx:
                _forget(tx.conn, customer.id, time, erased=False)
        self._hold(customer, now)
        return customer

    def _hold(self, customer: Customer, now: datetime) -> None:
        self._hold_prune(now)
        self._held.pop(customer.id, None)
        self._held[customer.id] = (customer, now)
        while len(self._held) > HOLD_MAX:
            del self._held[next(iter(self._held))]

    # -- purchase history (the shop's; never kept here) -------------------------------------------

    def history(self, customer_id: str, limit: int = HISTORY_LIMIT, *, before: str | None = None) -> History:
        """The customer's purchases at every till and online, newest first, as the shop knows them.

        Only waits on the network (it may run in an executor). ``before`` is the ``next`` of
        an earlier page. Raises :class:`DeviceUnavailable` when the shop cannot be asked
        (nothing is kept on the till to answer from), :class:`NotFound` when the shop has no
        such customer (unknown or erased) and :class:`InputError` for bad arguments.
        """
        check_id(customer_id)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= HISTORY_MAX:
            raise InputError(f"ask for 1 to {HISTORY_MAX} purchases, not {limit!r}")
        if before is not None and not _CURSOR.fullmatch(before):
            raise InputError("that is not a purchase history cursor")
        if self.remote is None:
            raise DeviceUnavailable("purchase history is kept by the shop, and this till is not connected to it")
        body: dict[str, Any] = {"customer": customer_id, "limit": limit}
        if before is not None:
            body["before"] = before
        try:
            result = self.remote(HISTORY, body)
        except NotFound:
            raise NotFound(f"the shop has no customer {customer_id} (unknown or erased)") from None
        except DeviceUnavailable as exc:
            raise DeviceUnavailable(f"purchase history needs the shop: {exc}") from exc
        return History(str(result["customer"]), tuple(purchase(p) for p in result["purchases"]), result.get("next"))

    # -- change ----------------------------------------------------------------------------------

    def set_consent(self, customer_id: str, consent: bool, now: datetime, actor: str | None = None) -> Customer:
        """Record a change of consent (published to the shop); without it the record leaves this till."""
        customer = self.get(customer_id)
        if customer.erased:
            raise InputError(f"customer {customer_id} is erased")
        time = iso_utc(now)
        changed = replace(customer, consent=consent, consent_at=time, cached_at=time if consent else None,
                          origin=customer.origin or "shop")  # fmt: skip
        with self.ledger.transaction("recording consent") as tx:
            if consent:
                _store(tx.conn, changed, created_at=time)
            else:
                _forget(tx.conn, customer_id, time, erased=False)
            entry = tx.journal("customer.consent", {"id": customer_id, "consent": consent}, time=time, actor=actor)
            tx.emit(NewEvent("tillbox.customer.updated", {"id": customer_id, "consent": consent, "consent_at": time},
                             subject=customer_id), time=time, journal_seq=entry.seq)  # fmt: skip
        if consent:
            self._held.pop(customer_id, None)
        else:
            self._hold(changed, now)
        return changed

    def erase(self, customer_id: str, approval: Approval, now: datetime) -> None:
        """Erase a customer's personal data on request, here and at the shop; their sales stay, anonymous."""
        approval.check(Action.ERASE_CUSTOMER, now)
        customer = self.get(customer_id)
        if customer.erased:
            raise InputError(f"customer {customer_id} is already erased")
        time = iso_utc(now)
        with self.ledger.transaction("erasing customer") as tx:
            _forget(tx.conn, customer_id, time, erased=True)
            entry = tx.journal("customer.erased", {"id": customer_id}, time=time, actor=approval.actor,
                               approver=approval.approver)  # fmt: skip
            tx.emit(NewEvent("tillbox.customer.erased", {"id": customer_id}, subject=customer_id), time=time,
                    journal_seq=entry.seq)  # fmt: skip
        self._held.pop(customer_id, None)

    def purge(self, now: datetime) -> int:
        """Drop cached records older than ``cache_days`` and redact customer events the shop has acknowledged.

        A record created here stays until the shop has acknowledged it. Returns the records dropped.
        """
        cutoff = iso_utc(now - timedelta(days=self.cache_days))
        with self.ledger.transaction("purging cached customers") as tx:
            cur = tx.conn.execute(
                "DELETE FROM customers WHERE erased_at IS NULL AND (cached_at IS NULL OR cached_at < ?) "
                "AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.acked_at IS NULL "
                "AND o.type = 'tillbox.customer.created' AND json_extract(o.data, '$.id') = customers.id)",
                (cutoff,),
            )
            dropped = cur.rowcount
            marks = ",".join("?" * len(PERSONAL_EVENTS))
            ids = [str(r[0]) for r in tx.conn.execute(
                f"SELECT DISTINCT json_extract(data, '$.id') FROM outbox WHERE type IN ({marks}) "
                "AND acked_at IS NOT NULL AND json_extract(data, '$.redacted') IS NULL", PERSONAL_EVENTS)]  # fmt: skip
            _redact(tx.conn, ids, acked_only=True)
        self._hold_prune(now)
        return dropped

    def _hold_prune(self, now: datetime) -> None:
        cutoff = now - timedelta(seconds=HOLD_SECONDS)
        for cid, (_c, at) in list(self._held.items()):
            if at < cutoff:
                del self._held[cid]
