"""Customer records: contact details and marketing consent, attachable to sales, erasable.

Personal data lives only in the mutable ``customers`` table; the journal and sales
refer to a customer by an opaque id. Erasure removes the personal data and keeps
the sales, which are then anonymous.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from appliance.clock import iso_utc
from appliance.errors import InputError, NotFound
from appliance.ids import uuid7
from appliance.ledger import Ledger, NewEvent
from appliance.staff import Action, Approval

_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_PHONE = re.compile(r"\+?[0-9 ()/-]{5,20}")


@dataclass(frozen=True)
class Customer:
    """A customer as stored; fields are None once erased."""

    id: str
    name: str | None
    email: str | None
    phone: str | None
    consent: bool
    consent_at: str | None
    erased: bool = False


class Customers:
    """Create, find, update consent and erase customers."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def add(self, name: str, *, email: str | None = None, phone: str | None = None, consent: bool = False,
            now: datetime, actor: str | None = None, customer_id: str | None = None) -> Customer:  # fmt: skip
        """Create a customer (``customer_id`` given when the record comes from the shop)."""
        name = name.strip()
        if not name or len(name) > 120 or not name.isprintable():
            raise InputError("a customer needs a name of 1-120 printable characters")
        if email is not None and not _EMAIL.fullmatch(email.strip()):
            raise InputError(f"{email!r} is not an email address")
        if phone is not None and not _PHONE.fullmatch(phone.strip()):
            raise InputError(f"{phone!r} is not a phone number")
        cid = customer_id or uuid7()
        time = iso_utc(now)
        with self.ledger.transaction("adding customer") as tx:
            tx.conn.execute(
                "INSERT INTO customers(id, name, email, phone, consent, consent_at, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (cid, name, email and email.strip().lower(), phone and phone.strip(), int(consent),
                 time if consent else None, time),
            )  # fmt: skip
            entry = tx.journal("customer.added", {"id": cid, "consent": consent}, time=time, actor=actor)
            tx.emit(NewEvent("tillbox.customer.added", {"id": cid, "consent": consent}), time=time,
                    journal_seq=entry.seq)  # fmt: skip
        return self.get(cid)

    def get(self, customer_id: str) -> Customer:
        row = self.ledger.conn.execute(
            "SELECT id, name, email, phone, consent, consent_at, erased_at FROM customers WHERE id = ?", (customer_id,)
        ).fetchone()
        if row is None:
            raise NotFound(f"no customer {customer_id}")
        return Customer(row[0], row[1], row[2], row[3], bool(row[4]), row[5], row[6] is not None)

    def find(self, text: str) -> list[Customer]:
        """Customers whose email or phone equals ``text``, or whose name contains it."""
        text = text.strip()
        rows = self.ledger.conn.execute(
            "SELECT id FROM customers WHERE erased_at IS NULL AND (email = ? OR phone = ? OR name LIKE ?) "
            "ORDER BY name LIMIT 20",
            (text.lower(), text, f"%{text}%"),
        ).fetchall()
        return [self.get(r[0]) for r in rows]

    def set_consent(self, customer_id: str, consent: bool, now: datetime, actor: str | None = None) -> Customer:
        """Record a change of marketing consent with its time."""
        self.get(customer_id)
        time = iso_utc(now)
        with self.ledger.transaction("recording consent") as tx:
            tx.conn.execute("UPDATE customers SET consent = ?, consent_at = ? WHERE id = ?",
                            (int(consent), time, customer_id))  # fmt: skip
            tx.journal("customer.consent", {"id": customer_id, "consent": consent}, time=time, actor=actor)
        return self.get(customer_id)

    def erase(self, customer_id: str, approval: Approval, now: datetime) -> None:
        """Erase a customer's personal data on request; their sales stay, anonymous."""
        approval.check(Action.ERASE_CUSTOMER, now)
        customer = self.get(customer_id)
        if customer.erased:
            raise InputError(f"customer {customer_id} is already erased")
        time = iso_utc(now)
        with self.ledger.transaction("erasing customer") as tx:
            tx.conn.execute(
                "UPDATE customers SET name = NULL, email = NULL, phone = NULL, consent = 0, consent_at = NULL, "
                "erased_at = ? WHERE id = ?",
                (time, customer_id),
            )
            entry = tx.journal("customer.erased", {"id": customer_id}, time=time, actor=approval.actor,
                               approver=approval.approver)  # fmt: skip
            tx.emit(NewEvent("tillbox.customer.erased", {"id": customer_id}), time=time, journal_seq=entry.seq)
