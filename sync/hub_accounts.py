"""The hub as the authority for gift cards, store credit and loyalty points, in every channel and store.

Balances live in the hub's database (``acct_balances``); every movement is a row of
``acct_moves`` under its id, so each movement is applied once, whether it arrives as a
till's request (``req/stored-value-move``, ``req/loyalty-move``: the request id is the
movement id), as a till's event (``tillbox.stored_value.moved``, ``tillbox.loyalty.moved``)
or through the online channel (:class:`Accounts` methods, for the web shop and tests).

Requests are strict: a redemption beyond the balance is declined, an unknown account is
not found. Events are facts that already happened at a till and are always applied: an
offline redemption, or a claw-back of points a returned sale had earned, that overdraws an
account is booked and raises the hub alert ``stored_value.negative`` (``loyalty.negative``
for points). A reversal undoes one movement once, on the account of that movement; a
reversal that arrives before its movement cancels it, so the movement never applies. See
docs/accounts.md.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Final, TypeVar

from appliance.errors import InputError, NotFound, SaleError, TenderError
from appliance.money import Currency

if TYPE_CHECKING:
    from sync.hub import Hub

log = logging.getLogger(__name__)

T = TypeVar("T")

STORED_VALUE: Final = "stored_value"
LOYALTY: Final = "loyalty"
ALERT_NEGATIVE: Final = "stored_value.negative"
ALERT_NEGATIVE_POINTS: Final = "loyalty.negative"
ALERT_CONFLICT: Final = "accounts.conflict"
#: The events the hub applies here (see :meth:`Accounts.apply_event`).
EVENTS: Final = ("tillbox.stored_value.moved", "tillbox.loyalty.moved")
#: Channel of movements made through the hub's own methods (the web shop).
ONLINE: Final = "online"

_CREDITS: Final = frozenset({"issue", "top_up", "refund", "earn"})
#: The pair of movements that carries a merged customer's points to the kept one (never reversed).
MERGE_OPS: Final = ("merge_out", "merge_in")
_ALPHABET: Final = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS acct_balances(
    book TEXT NOT NULL, account TEXT NOT NULL, kind TEXT NOT NULL, currency TEXT NOT NULL, balance INTEGER NOT NULL,
    created_at TEXT NOT NULL, updated_at TEXT NOT NULL, PRIMARY KEY(book, account));
CREATE TABLE IF NOT EXISTS acct_moves(
    id TEXT PRIMARY KEY, book TEXT NOT NULL, account TEXT NOT NULL, op TEXT NOT NULL, delta INTEGER NOT NULL,
    balance INTEGER NOT NULL, mode TEXT NOT NULL, channel TEXT NOT NULL, store TEXT, device TEXT, ref TEXT,
    reverses TEXT, staff TEXT, time TEXT NOT NULL, recorded_at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS acct_moves_by_account ON acct_moves(book, account);
CREATE INDEX IF NOT EXISTS acct_moves_by_reverses ON acct_moves(reverses);
CREATE TABLE IF NOT EXISTS loyalty_cards(card TEXT PRIMARY KEY, customer TEXT NOT NULL);
"""


@dataclass(frozen=True)
class Movement:
    """One movement as the hub receives it; ``amount`` is a magnitude, ``delta`` an event's signed change."""

    id: str
    book: str
    op: str
    account: str
    currency: str
    kind: str
    amount: int | None = None
    delta: int | None = None
    partial: bool = False
    ref: str | None = None
    reverses: str | None = None
    staff: str | None = None
    time: str = ""
    mode: str = "online"
    channel: str = ONLINE
    store: str | None = None
    device: str | None = None


def _kind_of(account: str) -> str:
    return "store_credit" if account.startswith("SC-") else "gift_card"


def _new_code(prefix: str) -> str:
    import secrets

    body = "".join(secrets.choice(_ALPHABET) for _ in range(8))
    return f"{prefix}-{body[:4]}-{body[4:]}"


def _move_id(value: str | None) -> str:
    return str(uuid.UUID(value)) if value is not None else str(uuid.uuid4())


class Accounts:
    """Gift card, store credit and loyalty balances of a :class:`~sync.hub.Hub`; reach it as ``hub.accounts``."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        hub.db.executescript(_SCHEMA)
        hub.serve("stored-value-balance", self._sv_balance)
        hub.serve("stored-value-move", self._sv_move)
        hub.serve("loyalty-balance", self._loyalty_balance)
        hub.serve("loyalty-move", self._loyalty_move)

    # -- the core: apply one movement (hub thread, inside the caller's transaction) ---------------

    def _apply(self, m: Movement, *, strict: bool) -> dict[str, Any]:
        """Apply ``m`` once; strict (a request) refuses what an event must accept."""
        db = self.hub.db
        seen = db.execute("SELECT book, account, op FROM acct_moves WHERE id = ?", (m.id,)).fetchone()
        if seen is not None:
            if (seen[0], self._current(str(seen[0]), str(seen[1]))) != (m.book, m.account):
                if strict:
                    raise InputError(f"movement {m.id} was already used for another account")
                self._conflict(m, f"movement {m.id} arrived for {m.account} but was applied to {seen[1]}")
            elif seen[2] == "cancelled":
                if strict:
                    raise SaleError(f"movement {m.id} was cancelled before it arrived")
                log.info("movement %s arrived after its reversal: not applied", m.id)
            return self._result(m.id)
        row = db.execute("SELECT kind, currency, balance FROM acct_balances WHERE book = ? AND account = ?",
                         (m.book, m.account)).fetchone()  # fmt: skip
        if m.op == "reverse":
            delta = self._reversal(m, strict)
        elif m.delta is not None and not strict:
            delta = m.delta
        else:
            assert m.amount is not None
            delta = m.amount if m.op in _CREDITS else -m.amount
        if row is None:
            if strict and m.op not in ("issue", "earn"):
                raise NotFound(self._unknown(m))
            kind, currency, balance = m.kind, m.currency, 0
            now = self.hub._now()
            db.execute(
                "INSERT INTO acct_balances(book, account, kind, currency, balance, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, 0, ?, ?)",
                (m.book, m.account, kind, currency, now, now),
            )
        else:
            kind, currency, balance = str(row[0]), str(row[1]), int(row[2])
            if strict and m.op == "issue":
                raise SaleError(f"{m.account} already exists; top it up instead")
            if (kind, currency) != (m.kind, m.currency) and m.book == STORED_VALUE and m.op != "reverse":
                problem = f"{m.account} is a {kind.replace('_', ' ')} in {currency}, not {m.kind} in {m.currency}"
                if strict:
                    raise InputError(problem)
                self._conflict(m, problem)
                delta = 0
        if strict and m.op == "redeem" and balance + delta < 0:
            if m.partial and balance > 0:
                delta = -balance
            else:
                raise TenderError(f"{m.account} has only {self._amount(m.book, balance, currency)}")
        new = balance + delta
        db.execute("UPDATE acct_balances SET balance = ?, updated_at = ? WHERE book = ? AND account = ?",
                   (new, self.hub._now(), m.book, m.account))  # fmt: skip
        self._record(m, m.id, m.op, delta, new)
        if delta < 0 and new < 0:
            self._overdrawn(m, new, currency)
        return self._result(m.id)

    def _reversal(self, m: Movement, strict: bool) -> int:
        """The change that undoes ``m.reverses``; 0 when it was undone already or never came (it is then cancelled)."""
        db = self.hub.db
        target = db.execute("SELECT book, account, op, delta FROM acct_moves WHERE id = ?", (m.reverses,)).fetchone()
        if target is None:
            if strict:
                raise NotFound(f"no movement {m.reverses} to reverse")
            balance = db.execute("SELECT balance FROM acct_balances WHERE book = ? AND account = ?",
                                 (m.book, m.account)).fetchone()  # fmt: skip
            assert m.reverses is not None
            self._record(m, m.reverses, "cancelled", 0, int(balance[0]) if balance else 0)
            return 0
        if (str(target[0]), self._current(str(target[0]), str(target[1]))) != (m.book, m.account) or \
                target[2] in ("reverse", "cancelled", *MERGE_OPS):  # fmt: skip
            raise InputError(f"movement {m.reverses} cannot be reversed on {m.account}")
        done = db.execute("SELECT 1 FROM acct_moves WHERE reverses = ? AND op = 'reverse'", (m.reverses,)).fetchone()
        if done is not None:
            if strict:
                raise SaleError(f"movement {m.reverses} was reversed already")
            return 0
        return -int(target[3])

    def _record(self, m: Movement, move_id: str, op: str, delta: int, balance: int) -> None:
        self.hub.db.execute(
            "INSERT INTO acct_moves(id, book, account, op, delta, balance, mode, channel, store, device, ref, "
            "reverses, staff, time, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (move_id, m.book, m.account, op, delta, balance, m.mode, m.channel, m.store, m.device, m.ref,
             m.reverses if op == "reverse" else None, m.staff, m.time or self.hub._now(), self.hub._now()),
        )  # fmt: skip

    def _result(self, move_id: str) -> dict[str, Any]:
        row = self.hub.db.execute(
            "SELECT m.book, m.account, m.op, m.delta, m.balance, b.kind, b.currency FROM acct_moves m "
            "LEFT JOIN acct_balances b ON b.book = m.book AND b.account = m.account WHERE m.id = ?",
            (move_id,),
        ).fetchone()
        book, account, op, delta, balance, kind, currency = row
        op = "reverse" if op == "cancelled" else str(op)
        if book == LOYALTY:
            return {"move_id": move_id, "op": op, "customer": account, "delta": int(delta), "balance": int(balance)}
        return {"move_id": move_id, "op": op, "account": account, "kind": kind or _kind_of(account),
                "delta": int(delta), "balance": int(balance), "currency": currency}  # fmt: skip

    def _unknown(self, m: Movement) -> str:
        return f"no customer {m.account} in the loyalty scheme" if m.book == LOYALTY else \
            f"no gift card or store credit {m.account}"  # fmt: skip

    def _amount(self, book: str, value: int, currency: str) -> str:
        if book == LOYALTY:
            return f"{value} points"
        try:
            return f"{Currency.of(currency).plain(value)} {currency}"
        except InputError:
            return f"{value} minor units of {currency}"

    def _where(self, m: Movement) -> str:
        return f"{m.store}/{m.device}" if m.device else m.channel

    def _overdrawn(self, m: Movement, balance: int, currency: str) -> None:
        """Raise the alert for an account a till's movement took below zero, naming the offline debits."""
        rows = self.hub.db.execute(
            "SELECT store, device, channel, -delta FROM acct_moves WHERE book = ? AND account = ? AND delta < 0 "
            "AND mode = 'offline' ORDER BY rowid DESC LIMIT 10",
            (m.book, m.account),
        ).fetchall()
        offline = ", ".join(f"{self._amount(m.book, int(a), currency)} at {where}"
                            for where, a in sorted((f"{s}/{d}" if d else c, a) for s, d, c, a in rows))  # fmt: skip
        what = "points" if m.book == LOYALTY else m.kind.replace("_", " ")
        message = (f"{what} {m.account} is overdrawn: balance {self._amount(m.book, balance, currency)} after "
                   f"{m.mode} {m.op} at {self._where(m)}")  # fmt: skip
        if offline:
            message += f"; offline redemptions: {offline}"
        code = ALERT_NEGATIVE_POINTS if m.book == LOYALTY else ALERT_NEGATIVE
        self.hub._alert(code, m.store or ONLINE, m.account, message)

    def _conflict(self, m: Movement, problem: str) -> None:
        self.hub._alert(ALERT_CONFLICT, m.store or ONLINE, m.id, f"{problem} (from {self._where(m)})")

    def _has(self, book: str, account: str) -> bool:
        row = self.hub.db.execute("SELECT 1 FROM acct_balances WHERE book = ? AND account = ?", (book, account))
        return row.fetchone() is not None

    def _customer(self, value: str) -> str:
        """The customer id behind a loyalty card number (or the value itself); a merged customer's is the kept one."""
        row = self.hub.db.execute("SELECT customer FROM loyalty_cards WHERE card = ?", (value,)).fetchone()
        return self.hub.customers.canonical(str(row[0]) if row else value)

    def _current(self, book: str, account: str) -> str:
        """The account a past movement's account is now: for points, a merged customer's is the kept one."""
        return self.hub.customers.canonical(account) if book == LOYALTY else account

    def merge_points(self, duplicate: str, keep: str, *, ref: str, staff: str | None) -> int:
        """Move a merged customer's points and loyalty cards to the kept one (hub thread, caller's transaction).

        The balance travels as a pair of movements, ``merge_out`` on the duplicate and ``merge_in``
        on the kept customer, both with ``ref``; returns the points moved (none: no movements).
        """
        db = self.hub.db
        db.execute("UPDATE loyalty_cards SET customer = ? WHERE customer = ?", (keep, duplicate))
        row = db.execute("SELECT balance FROM acct_balances WHERE book = ? AND account = ?",
                         (LOYALTY, duplicate)).fetchone()  # fmt: skip
        points = int(row[0]) if row else 0
        if points:
            out = Movement(id=_move_id(None), book=LOYALTY, op="merge_out", account=duplicate, currency="",
                           kind=LOYALTY, delta=-points, ref=ref, staff=staff, time=self.hub._now())  # fmt: skip
            self._apply(out, strict=False)
            self._apply(replace(out, id=_move_id(None), op="merge_in", account=keep, delta=points), strict=False)
        return points

    # -- requests from tills (hub thread, inside the request's transaction) ----------------------

    def _sv_balance(self, store: str, device: str, request: Mapping[str, Any]) -> dict[str, Any]:
        return self._balance_row(str(request["account"]))

    def _balance_row(self, account: str) -> dict[str, Any]:
        row = self.hub.db.execute(
            "SELECT kind, balance, currency FROM acct_balances WHERE book = ? AND account = ?", (STORED_VALUE, account)
        ).fetchone()
        if row is None:
            raise NotFound(f"no gift card or store credit {account}")
        return {"account": account, "kind": row[0], "balance": int(row[1]), "currency": row[2]}

    def _sv_move(self, store: str, device: str, request: Mapping[str, Any]) -> dict[str, Any]:
        account = str(request["account"])
        m = Movement(
            id=str(request["id"]).lower(), book=STORED_VALUE, op=str(request["op"]), account=account,
            currency=str(request["currency"]), kind=str(request.get("kind") or self._known_kind(account)),
            amount=request.get("amount"), partial=bool(request.get("partial", False)), ref=request.get("ref"),
            reverses=request.get("reverses"), staff=request.get("staff"), time=str(request.get("time") or ""),
            mode="online", channel="store", store=store, device=device,
        )  # fmt: skip
        return self._apply(m, strict=True)

    def _known_kind(self, account: str) -> str:
        row = self.hub.db.execute("SELECT kind FROM acct_balances WHERE book = ? AND account = ?",
                                  (STORED_VALUE, account)).fetchone()  # fmt: skip
        return str(row[0]) if row else _kind_of(account)

    def _loyalty_balance(self, store: str, device: str, request: Mapping[str, Any]) -> dict[str, Any]:
        return self._points_row(self._customer(str(request["customer"])))

    def _points_row(self, customer: str) -> dict[str, Any]:
        row = self.hub.db.execute("SELECT balance FROM acct_balances WHERE book = ? AND account = ?",
                                  (LOYALTY, customer)).fetchone()  # fmt: skip
        return {"customer": customer, "points": int(row[0]) if row else 0}

    def _loyalty_move(self, store: str, device: str, request: Mapping[str, Any]) -> dict[str, Any]:
        m = Movement(
            id=str(request["id"]).lower(), book=LOYALTY, op=str(request["op"]),
            account=self._customer(str(request["customer"])), currency="", kind=LOYALTY,
            amount=request.get("points"), partial=bool(request.get("partial", False)), ref=request.get("ref"),
            reverses=request.get("reverses"), staff=request.get("staff"), time=str(request.get("time") or ""),
            mode="online", channel="store", store=store, device=device,
        )  # fmt: skip
        if m.op == "redeem" and not self._has(LOYALTY, m.account):
            raise TenderError(f"customer {m.account} has no points")
        return self._apply(m, strict=True)

    # -- events from tills (hub thread, inside the ingest transaction) ---------------------------

    def apply_event(self, store: str, device: str, type_: str, data: Mapping[str, Any], event_id: str) -> None:
        """Apply a till's ``tillbox.stored_value.moved`` or ``tillbox.loyalty.moved`` once (by its move_id)."""
        move_id = str(data.get("move_id") or event_id).lower()
        if type_ == "tillbox.loyalty.moved":
            m = Movement(id=move_id, book=LOYALTY, op=str(data.get("op") or "earn"),
                         account=self._customer(str(data["customer"])), currency="", kind=LOYALTY,
                         delta=int(data["delta"]))  # fmt: skip
        else:
            delta = int(data["delta"])
            op = str(data.get("op") or ("redeem" if delta < 0 else "refund"))
            m = Movement(id=move_id, book=STORED_VALUE, op=op, account=str(data["account"]).upper(),
                         currency=str(data["currency"]), kind=str(data["kind"]), delta=delta)  # fmt: skip
        m = replace(m, ref=data.get("ref"), reverses=data.get("reverses"), staff=data.get("staff"),
                    time=str(data.get("time") or self.hub._now()), mode=str(data.get("mode") or "local"),
                    channel="store", store=store, device=device)  # fmt: skip
        if m.op == "reverse" and not m.reverses:
            self._conflict(m, f"reversal {m.id} names no movement to reverse")
            return
        try:
            self._apply(m, strict=False)
        except InputError as exc:  # a reversal of something else: kept for the record, nothing applied
            self._conflict(m, str(exc))

    # -- the online channel (any thread; each call is one transaction on the hub thread) ---------

    def _online(self, fn: Callable[[], T]) -> T:
        return self.hub.write(fn)

    def _sv(self, op: str, account: str, currency: str, amount: int | None, *, kind: str | None = None,
            move_id: str | None, **kw: Any) -> dict[str, Any]:  # fmt: skip
        if amount is not None and amount <= 0:
            raise InputError("an amount must be positive")
        account = account.strip().upper()
        m = Movement(id=_move_id(move_id), book=STORED_VALUE, op=op, account=account, currency=currency,
                     kind=kind or _kind_of(account), amount=amount, **kw)  # fmt: skip
        return self._online(lambda: self._apply(m, strict=True))

    def issue_gift_card(self, amount: int, currency: str, *, account: str | None = None, kind: str = "gift_card",
                        move_id: str | None = None, staff: str | None = None, ref: str | None = None
                        ) -> dict[str, Any]:  # fmt: skip
        """Sell a new gift card (or open store credit) online; a code is made when none is given."""
        if kind not in ("gift_card", "store_credit"):
            raise InputError(f"unknown account kind {kind!r}")
        code = account or _new_code("SC" if kind == "store_credit" else "GC")
        return self._sv("issue", code, currency, amount, kind=kind, move_id=move_id, staff=staff, ref=ref)

    def top_up(self, account: str, amount: int, currency: str, *, move_id: str | None = None,
               ref: str | None = None) -> dict[str, Any]:  # fmt: skip
        """Add value to an existing gift card online."""
        return self._sv("top_up", account, currency, amount, kind=self._kind(account), move_id=move_id, ref=ref)

    def redeem(self, account: str, amount: int, currency: str, *, ref: str | None = None, partial: bool = False,
               move_id: str | None = None) -> dict[str, Any]:  # fmt: skip
        """Pay with a gift card or store credit online; :class:`TenderError` when the balance is short."""
        return self._sv("redeem", account, currency, amount, kind=self._kind(account), move_id=move_id, ref=ref,
                        partial=partial)  # fmt: skip

    def reverse(self, reverses: str, *, move_id: str | None = None, ref: str | None = None) -> dict[str, Any]:
        """Undo one earlier movement (of any channel), once."""
        target = self.hub.query("SELECT book, account FROM acct_moves WHERE id = ?", (reverses.lower(),))
        if not target:
            raise NotFound(f"no movement {reverses} to reverse")
        book, account = str(target[0][0]), str(target[0][1])
        if book == LOYALTY:
            m = Movement(id=_move_id(move_id), book=LOYALTY, op="reverse", account=account, currency="",
                         kind=LOYALTY, reverses=reverses.lower(), ref=ref)  # fmt: skip
            return self._online(lambda: self._apply(replace(m, account=self._current(LOYALTY, account)), strict=True))
        return self._sv("reverse", account, self.balance(account)["currency"], None, kind=self._kind(account),
                        move_id=move_id, reverses=reverses.lower(), ref=ref)  # fmt: skip

    def _kind(self, account: str) -> str:
        rows = self.hub.query("SELECT kind FROM acct_balances WHERE book = ? AND account = ?",
                              (STORED_VALUE, account.strip().upper()))  # fmt: skip
        return str(rows[0][0]) if rows else _kind_of(account.strip().upper())

    def balance(self, account: str) -> dict[str, Any]:
        """``{"account", "kind", "balance", "currency"}``; :class:`NotFound` for an unknown account."""
        return self.hub._sync(lambda: self._balance_row(account.strip().upper()))

    def earn_points(self, customer: str, points: int, *, ref: str | None = None, move_id: str | None = None
                    ) -> dict[str, Any]:  # fmt: skip
        """Credit points earned online (an order of the web shop)."""
        return self._points("earn", customer, points, ref=ref, move_id=move_id)

    def redeem_points(self, customer: str, points: int, *, ref: str | None = None, partial: bool = False,
                      move_id: str | None = None) -> dict[str, Any]:  # fmt: skip
        """Spend points online; :class:`TenderError` when the customer has fewer."""
        return self._points("redeem", customer, points, ref=ref, move_id=move_id, partial=partial)

    def claw_back_points(self, customer: str, points: int, *, ref: str | None = None, move_id: str | None = None
                         ) -> dict[str, Any]:  # fmt: skip
        """Take back points an order returned online had earned; may overdraw (alert ``loyalty.negative``)."""
        return self._points("clawback", customer, points, ref=ref, move_id=move_id)

    def _points(self, op: str, customer: str, points: int, *, move_id: str | None, **kw: Any) -> dict[str, Any]:
        if points <= 0:
            raise InputError("points must be positive")

        def run() -> dict[str, Any]:
            account = self._customer(customer)
            if op == "redeem" and not self._has(LOYALTY, account):
                raise TenderError(f"customer {account} has no points")
            m = Movement(id=_move_id(move_id), book=LOYALTY, op=op, account=account, currency="", kind=LOYALTY,
                         amount=points, **kw)  # fmt: skip
            return self._apply(m, strict=True)

        return self._online(run)

    def points(self, customer: str) -> dict[str, Any]:
        """``{"customer", "points"}`` (0 for a customer who never earned any)."""
        return self.hub._sync(lambda: self._points_row(self._customer(customer)))

    def link_card(self, card: str, customer: str) -> None:
        """Let a loyalty card number stand for a customer id in requests and events."""
        if not card.strip() or not customer.strip():
            raise InputError("a loyalty card and a customer are needed")

        def run() -> None:
            self.hub.db.execute(
                "INSERT INTO loyalty_cards(card, customer) VALUES (?, ?) "
                "ON CONFLICT(card) DO UPDATE SET customer = excluded.customer",
                (card.strip(), customer.strip()),
            )

        self._online(run)

    def moves(self, account: str, book: str = STORED_VALUE) -> list[dict[str, Any]]:
        """Every movement of an account, oldest first (for reports and tests)."""
        rows = self.hub.query(
            "SELECT id, op, delta, balance, mode, channel, store, device, ref, reverses FROM acct_moves "
            "WHERE book = ? AND account = ? ORDER BY rowid",
            (book, account if book == LOYALTY else account.strip().upper()),
        )
        keys = ("id", "op", "delta", "balance", "mode", "channel", "store", "device", "ref", "reverses")
        return [dict(zip(keys, r, strict=True)) for r in rows]
