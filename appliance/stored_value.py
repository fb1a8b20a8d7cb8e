"""Store credit and gift cards, kept in the ledger and moved only inside ledger transactions.

Credit is issued by a return (refund policy ``store_credit``) and redeemed as a tender of
a sale; both happen in the same transaction as the return or sale that moves it, so a
balance can never drift from the journal. Every movement is journaled and emitted as a
``tillbox.stored_value.moved`` event, so the shop can honour the same balance in every
channel (the hub keeps the central balance).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from appliance.errors import NotFound, TenderError
from appliance.ledger import Ledger, NewEvent, Tx
from appliance.tenders import TenderKind

KINDS = (TenderKind.STORE_CREDIT, TenderKind.GIFT_CARD)
_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: read aloud and typed by hand


def new_account(kind: TenderKind) -> str:
    """A fresh account code, e.g. ``SC-7KQ2-M9XD`` for store credit."""
    prefix = "SC" if kind is TenderKind.STORE_CREDIT else "GC"
    body = "".join(secrets.choice(_ALPHABET) for _ in range(8))
    return f"{prefix}-{body[:4]}-{body[4:]}"


@dataclass(frozen=True)
class Balance:
    account: str
    kind: str
    balance: int
    currency: str


class StoredValue:
    """Reads balances; the writes happen through :func:`move` inside a ledger transaction."""

    def __init__(self, ledger: Ledger, currency: str) -> None:
        self.ledger = ledger
        self.currency = currency

    def get(self, account: str) -> Balance:
        row = self.ledger.conn.execute(
            "SELECT account, kind, balance, currency FROM stored_value WHERE account = ?", (account.strip().upper(),)
        ).fetchone()
        if row is None:
            raise NotFound(f"no store credit or gift card {account}")
        return Balance(str(row[0]), str(row[1]), int(row[2]), str(row[3]))

    def balance(self, account: str) -> int:
        return self.get(account).balance


def move(tx: Tx, kind: str, account: str, delta: int, *, time: str, reason: str, ref: str, journal_seq: int,
         currency: str) -> int:  # fmt: skip
    """Credit (delta > 0) or debit an account in this transaction; returns the new balance.

    Debits need an existing account of that kind with enough balance; a first credit opens it.
    """
    conn = tx.conn
    account = account.strip().upper()
    row = conn.execute("SELECT kind, balance, currency FROM stored_value WHERE account = ?", (account,)).fetchone()
    if row is None:
        if delta <= 0:
            raise TenderError(f"no {kind.replace('_', ' ')} account {account}")
        conn.execute(
            "INSERT INTO stored_value(account, kind, balance, currency, updated_at) VALUES (?, ?, ?, ?, ?)",
            (account, kind, delta, currency, time),
        )
        balance = delta
    else:
        if row[0] != kind:
            raise TenderError(f"{account} is a {row[0].replace('_', ' ')}, not a {kind.replace('_', ' ')}")
        if row[2] != currency:
            raise TenderError(f"{account} holds {row[2]}, not {currency}")
        balance = int(row[1]) + delta
        if balance < 0:
            raise TenderError(f"{account} has only {row[1]} minor units left")
        conn.execute("UPDATE stored_value SET balance = ?, updated_at = ? WHERE account = ?", (balance, time, account))
    data: dict[str, Any] = {"account": account, "kind": kind, "delta": delta, "balance": balance,
                            "currency": currency, "reason": reason, "ref": ref}  # fmt: skip
    tx.emit(NewEvent("tillbox.stored_value.moved", data, subject=account), time=time, journal_seq=journal_seq)
    return balance
