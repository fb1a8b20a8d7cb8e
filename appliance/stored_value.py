"""Gift cards and store credit: the shop's hub holds the balances; a till redeems through it, or offline within limits.

Every movement has an id (a UUID) under which the hub applies it once, whether the till
asked the hub first or reports it later as a ``tillbox.stored_value.moved`` event
(docs/accounts.md):

- online (:attr:`StoredValue.remote` set and the shop answers): a redemption is asked of
  the hub first (``req/stored-value-move``, request id = movement id, asked again with the
  same id when no answer came, so nothing is charged twice); the tender then records it
  in the sale's ledger transaction;
- offline (the shop cannot be reached): the till takes at most ``offline_limit_per_card``
  from one account and ``offline_limit_per_till`` in all (offline redemptions the shop has
  not yet acknowledged), records the redemption as offline and emits it; the hub applies
  it when it arrives and raises ``stored_value.negative`` if the account went below zero;
- a till without a shop (no remote) keeps the balances itself (mode ``local``);
- credits (store credit issued by a return, a gift card sold or topped up in a sale, a
  voided redemption given back) are recorded at the till and reach the hub as events.

The ``stored_value`` table holds the last balance this till knows of each account (its own
movements and the shop's answers); ``account_moves`` holds every movement it made.

A redemption is written down as a pending authorisation (``account_auths``, :class:`Holds`)
before the hub is asked, and settled once: consumed in its sale's transaction, or reversed
(recorded and emitted) when the sale is voided, completes without it, or was lost because
the till stopped before it completed (:meth:`Holds.recover`, at the daemon's start).
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import sqlite3
import threading
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

from appliance.catalog import Item
from appliance.clock import Clock, SystemClock, iso_utc
from appliance.errors import ConfigError, DeviceUnavailable, InputError, NotFound, SaleError, TenderError, TillboxError
from appliance.ids import uuid7
from appliance.ledger import Ledger, NewEvent, Tx
from appliance.money import Currency
from appliance.sale import Line, Sale, ScanInfo
from appliance.tenders import Tender, TenderKind

if TYPE_CHECKING:
    from appliance.config import Config

log = logging.getLogger(__name__)

BOOK: Final = "stored_value"
KINDS = (TenderKind.STORE_CREDIT, TenderKind.GIFT_CARD)
#: Department of gift card lines: they earn no points and are not refunded like goods.
GIFT_CARD_DEPARTMENT: Final = "gift_card"
EVENT: Final = "tillbox.stored_value.moved"
_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: read aloud and typed by hand
_ACCOUNT = re.compile(r"[A-Z0-9][A-Z0-9-]{3,31}")


class Remote(Protocol):
    """Asks the shop (``sync.service.SyncService.request``); raises DeviceUnavailable when it cannot."""

    def __call__(self, name: str, body: Mapping[str, Any], *, request_id: str | None = None,
                 timeout: float | None = None) -> dict[str, Any]: ...  # fmt: skip


def new_account(kind: TenderKind) -> str:
    """A fresh account code, e.g. ``SC-7KQ2-M9XD`` for store credit."""
    prefix = "SC" if kind is TenderKind.STORE_CREDIT else "GC"
    body = "".join(secrets.choice(_ALPHABET) for _ in range(8))
    return f"{prefix}-{body[:4]}-{body[4:]}"


def normalise(account: str) -> str:
    """An account code as stored (upper case); :class:`InputError` when it cannot be one."""
    code = account.strip().upper()
    if not _ACCOUNT.fullmatch(code):
        raise InputError(f"{account.strip()[:40]!r} is not a gift card or store credit number")
    return code


def kind_of(account: str) -> str | None:
    """The kind an account code names by its prefix (GC-, SC-), if any."""
    if account.startswith("GC-"):
        return str(TenderKind.GIFT_CARD)
    if account.startswith("SC-"):
        return str(TenderKind.STORE_CREDIT)
    return None


@dataclass(frozen=True)
class Limits:
    """What a till may redeem while the shop cannot be reached (not yet acknowledged by it)."""

    per_account: int
    per_till: int


@dataclass(frozen=True)
class Balance:
    """A balance; ``source`` is "shop" when the hub just said it, "till" for the last one this till knows."""

    account: str
    kind: str
    balance: int
    currency: str
    known_at: str | None = None
    source: str = "till"


@dataclass(frozen=True)
class Redemption:
    """A redemption being asked: its movement id is the request id and the tender's id."""

    move_id: str
    account: str
    amount: int
    partial: bool
    sale_id: str
    currency: str
    staff: str | None = None


# -- movements, shared with appliance.loyalty ---------------------------------------------------------


@dataclass(frozen=True)
class Hold:
    """A redemption written down before the hub was asked (a pending ``account_auths`` row)."""

    move_id: str
    book: str
    kind: str | None
    account: str
    amount: int
    currency: str | None
    sale_id: str
    actor: str | None


#: Records the reversal of a hold in a transaction: (tx, hold, reason, time, journal_seq) -> reversal id.
Reverser = Callable[[Tx, Hold, str, str, int], str]


class Holds:
    """The pending authorisations of one book: written before the hub is asked, each settled once.

    ``pending`` -> ``consumed`` (by its sale, in the sale's transaction), ``reversed`` (a reversal
    movement was recorded and emitted: the hub undoes the redemption if it applied it, and
    cancels it if it never did) or ``refused`` (the hub said no, so it took nothing). Only
    :meth:`refused` may be called from another thread.
    """

    def __init__(self, ledger: Ledger, book: str, reverse: Reverser) -> None:
        self.ledger = ledger
        self.book = book
        self._reverse = reverse
        self._refused: set[str] = set()
        self._lock = threading.Lock()

    def open(self, hold: Hold, *, time: str) -> None:
        """Write a hold down in its own small transaction, before the shop is asked."""
        with self.ledger.transaction("recording a pending authorisation") as tx:
            self._drop_refused(tx, time)
            tx.conn.execute(
                "INSERT INTO account_auths(id, book, kind, account, amount, currency, sale_id, actor, created_at, "
                "state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending')",
                (hold.move_id, self.book, hold.kind, hold.account, hold.amount, hold.currency, hold.sale_id,
                 hold.actor, time),
            )  # fmt: skip

    def refused(self, move_id: str) -> None:
        """Note (any thread) that the shop refused a movement: it took nothing, so nothing is given back."""
        with self._lock:
            self._refused.add(move_id)

    def ask(self, remote: Remote | None, name: str, body: Mapping[str, Any], *, move_id: str,
            timeout: float | None, retries: int) -> dict[str, Any] | None:  # fmt: skip
        """:func:`ask` the shop for a held movement (any thread); a refusal is noted (:meth:`refused`) and raised."""
        try:
            return ask(remote, name, body, request_id=move_id, timeout=timeout, retries=retries)
        except TillboxError:  # the shop answered no: it took nothing
            self.refused(move_id)
            raise

    def state(self, conn: sqlite3.Connection, move_id: str) -> str | None:
        row = conn.execute("SELECT state FROM account_auths WHERE id = ?", (move_id,)).fetchone()
        return None if row is None else str(row[0])

    def pending(self, conn: sqlite3.Connection, sale_id: str | None = None) -> list[Hold]:
        """Pending holds of this book (of one sale), oldest first."""
        sql = ("SELECT id, book, kind, account, amount, currency, sale_id, actor FROM account_auths "
               "WHERE state = 'pending' AND book = ?")  # fmt: skip
        args: tuple[str, ...] = (self.book,)
        if sale_id is not None:
            sql, args = sql + " AND sale_id = ?", (self.book, sale_id)
        rows = conn.execute(sql + " ORDER BY created_at, rowid", args).fetchall()
        return [Hold(str(r[0]), str(r[1]), r[2], str(r[3]), int(r[4]), r[5], str(r[6]), r[7]) for r in rows]

    def settle(self, tx: Tx, move_id: str, state: str, *, time: str, journal_seq: int | None) -> bool:
        """Settle a pending hold in ``tx``; False when there is none (never made, or settled already)."""
        cur = tx.conn.execute(
            "UPDATE account_auths SET state = ?, settled_at = ?, journal_seq = ? WHERE id = ? AND state = 'pending'",
            (state, time, journal_seq, move_id),
        )
        return cur.rowcount == 1

    def _drop_refused(self, tx: Tx, time: str) -> None:
        with self._lock:
            ids, self._refused = self._refused, set()
        for move_id in sorted(ids):
            self.settle(tx, move_id, "refused", time=time, journal_seq=None)

    def finish(self, tx: Tx, sale_id: str, used: Collection[str], *, time: str, actor: str | None, reason: str,
               journal_seq: int | None = None) -> list[str]:  # fmt: skip
        """Settle the holds of a sale that ends in ``tx``: ``used`` ones are consumed, the rest reversed.

        ``journal_seq`` is the sale's entry (for consumed holds). Returns the reversal ids.
        """
        self._drop_refused(tx, time)
        left = []
        for hold in self.pending(tx.conn, sale_id):
            if hold.move_id in used:
                self.settle(tx, hold.move_id, "consumed", time=time, journal_seq=journal_seq)
            else:
                left.append(hold)
        return self._give_back(tx, sale_id, left, time=time, actor=actor, reason=reason)

    def _give_back(self, tx: Tx, sale_id: str, holds: list[Hold], *, time: str, actor: str | None, reason: str
                   ) -> list[str]:  # fmt: skip
        if not holds:
            return []
        payload = {"sale_id": sale_id, "reason": reason,
                   "holds": [{"move": h.move_id, "account": h.account, "amount": h.amount} for h in holds]}  # fmt: skip
        entry = tx.journal(f"{self.book}.reversed", payload, time=time, actor=actor)
        ids = []
        for hold in holds:
            ids.append(self._reverse(tx, hold, reason, time, entry.seq))
            self.settle(tx, hold.move_id, "reversed", time=time, journal_seq=entry.seq)
        return ids

    def recover(self, *, time: str) -> list[str]:
        """At start-up: reverse every pending hold whose sale neither completed nor is parked; returns reversal ids.

        Nothing of a sale survives a restart but a completed or a parked (resumable) one, so any
        other hold belongs to a sale that was lost. A hold of a completed sale that recorded its
        movement is marked consumed. One transaction per sale; a sale that cannot be settled is
        logged and tried again at the next start.
        """
        conn = self.ledger.conn
        by_sale: dict[str, list[Hold]] = {}
        for hold in self.pending(conn):
            by_sale.setdefault(hold.sale_id, []).append(hold)
        ids: list[str] = []
        for sale_id, holds in by_sale.items():
            if conn.execute("SELECT 1 FROM suspended WHERE id = ?", (sale_id,)).fetchone() is not None:
                continue
            try:
                with self.ledger.transaction("reversing what a lost sale took") as tx:
                    lost: list[Hold] = []
                    for hold in holds:
                        row = conn.execute("SELECT m.journal_seq FROM account_moves m JOIN sales s ON s.id = ? "
                                           "WHERE m.id = ?", (sale_id, hold.move_id)).fetchone()  # fmt: skip
                        if row is not None:
                            self.settle(tx, hold.move_id, "consumed", time=time, journal_seq=int(row[0]))
                        else:
                            lost.append(hold)
                    done = self._give_back(tx, sale_id, lost, time=time, actor=lost[0].actor if lost else None,
                                           reason="lost")  # fmt: skip
            except TillboxError as exc:
                log.warning("cannot give back what sale %s took at the shop yet (%s); trying at the next start",
                            sale_id, exc)  # fmt: skip
                continue
            ids += done
        if ids:
            log.info("gave back %d %s redemption(s) of sales lost before they completed", len(ids), self.book)
        return ids


@dataclass(frozen=True)
class RoomTexts:
    """The reasons :func:`offline_room` gives; ``{left}``, ``{limit}`` and ``{account}`` are filled in."""

    none: str
    account: str
    till: str
    known: str


_MONEY_ROOM = RoomTexts(
    none="the shop cannot be reached and this till takes no gift cards or store credit offline",
    account="the shop cannot be reached: at most {left} more can be taken from {account} offline (limit {limit} per "
            "card)",
    till="the shop cannot be reached: this till can take at most {left} more from gift cards and store credit "
         "offline (limit {limit})",
    known="{account} had {left} left when last seen and the shop cannot be reached to check",
)  # fmt: skip


def offline_room(conn: sqlite3.Connection, limits: Limits, book: str, account: str, texts: RoomTexts, *,
                 say: Callable[[int], str], pending: int, pending_account: int, known: int | None
                 ) -> tuple[int, str]:  # fmt: skip
    """What may still be redeemed offline from ``account``, and why no more: the tightest of the
    per-account and per-till limits (less what the shop has not yet acknowledged and what the open
    sale already takes) and the last balance the till knows."""
    if limits.per_account <= 0 or limits.per_till <= 0:
        return 0, texts.none
    mine = limits.per_account - outstanding(conn, book, account) - pending_account
    till = limits.per_till - outstanding(conn, book) - pending
    options = [
        (mine, texts.account.format(left=say(max(mine, 0)), limit=say(limits.per_account), account=account)),
        (till, texts.till.format(left=say(max(till, 0)), limit=say(limits.per_till), account=account)),
    ]
    if known is not None:
        left = known - pending_account
        options.append((left, texts.known.format(left=say(max(left, 0)), limit="", account=account)))
    value, why = min(options, key=lambda o: o[0])
    return max(value, 0), why


def outstanding(conn: sqlite3.Connection, book: str, account: str | None = None) -> int:
    """What this till took offline that the shop has not yet acknowledged (a positive amount)."""
    sql = ("SELECT COALESCE(SUM(-m.delta), 0) FROM account_moves m JOIN outbox o ON o.seq = m.event_seq "
           "WHERE m.book = ? AND m.mode = 'offline' AND m.delta < 0 AND o.acked_at IS NULL")  # fmt: skip
    args: tuple[str, ...] = (book,)
    if account is not None:
        sql += " AND m.account = ?"
        args = (book, account)
    return int(conn.execute(sql, args).fetchone()[0])


def record(tx: Tx, event: NewEvent, *, move_id: str, book: str, kind: str, account: str, op: str, delta: int,
           mode: str, reason: str, ref: str, actor: str | None, time: str, journal_seq: int) -> int:  # fmt: skip
    """Emit a movement's event and keep it in ``account_moves``; returns the event's outbox sequence."""
    seq = tx.emit(event, time=time, journal_seq=journal_seq)
    tx.conn.execute(
        "INSERT INTO account_moves(id, book, kind, account, op, delta, mode, reason, ref, actor, time, journal_seq, "
        "event_seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (move_id, book, kind, account, op, delta, mode, reason, ref, actor, time, journal_seq, seq),
    )
    return seq


def ask(remote: Remote | None, name: str, body: Mapping[str, Any], *, request_id: str, timeout: float | None,
        retries: int) -> dict[str, Any] | None:  # fmt: skip
    """Ask the shop, again with the same id when no answer came; None when it cannot be reached.

    Safe from any thread (it only talks to ``remote``). The shop's refusals (declined, not
    found) are raised; an unanswered request stays ambiguous, which is why the caller keeps
    the same id for whatever it does next.
    """
    if remote is None:
        return None
    for attempt in range(retries + 1):
        try:
            return remote(name, body, request_id=request_id, timeout=timeout)
        except DeviceUnavailable as exc:
            if attempt == retries:
                log.info("%s %s: the shop did not answer (%s); going on offline", name, request_id, exc)
    return None


def sale_tender(conn: sqlite3.Connection, journal_seq: int, kind: str, reference: str, ref: str, book: str
                ) -> dict[str, str]:  # fmt: skip
    """The detail of the sale's next tender of ``kind`` on ``reference``, from the sale's journal entry."""
    row = conn.execute("SELECT payload FROM journal WHERE seq = ?", (journal_seq,)).fetchone()
    tenders = [t for t in json.loads(row[0]).get("tenders", [])
               if t.get("kind") == kind and str(t.get("reference") or "").upper() == reference.upper()]  # fmt: skip
    done = conn.execute("SELECT count(*) FROM account_moves WHERE book = ? AND ref = ? AND account = ? AND delta < 0",
                        (book, ref, reference)).fetchone()[0]  # fmt: skip
    detail = tenders[int(done)].get("detail", {}) if int(done) < len(tenders) else {}
    return {str(k): str(v) for k, v in detail.items()}


# -- stored value movements -----------------------------------------------------------------------------


def move(tx: Tx, kind: str, account: str, delta: int, *, time: str, reason: str, ref: str, journal_seq: int,
         currency: str, op: str | None = None, mode: str | None = None, move_id: str | None = None,
         balance: int | None = None, actor: str | None = None, reverses: str | None = None) -> int | None:  # fmt: skip
    """Record a credit (delta > 0) or debit of an account in this transaction; returns the balance the till knows.

    The ledger calls it for each gift card or store credit tender of a sale: how the tender
    was taken (online, offline, local) is read from the tender's detail in the sale's
    journal entry. In ``local`` mode (no shop) a debit needs enough local balance; an
    ``online`` one sets the balance the hub answered; an ``offline`` one was checked
    against the limits when tendered and again before the sale commits.
    """
    conn = tx.conn
    account = account.strip().upper()
    if reason == "sale" and delta < 0 and mode is None:
        detail = sale_tender(conn, journal_seq, kind, account, ref, BOOK)
        mode, move_id = detail.get("mode"), detail.get("move")
        balance = int(detail["balance"]) if "balance" in detail else None
        actor = actor or _journal_actor(conn, journal_seq)
    mode = mode or "local"
    row = conn.execute("SELECT kind, balance, currency FROM stored_value WHERE account = ?", (account,)).fetchone()
    if row is not None and mode != "online":  # online, the hub has checked and taken it already
        if row[0] != kind:
            raise TenderError(f"{account} is a {row[0].replace('_', ' ')}, not a {kind.replace('_', ' ')}")
        if row[2] != currency:
            raise TenderError(f"{account} holds {row[2]}, not {currency}")
    if mode == "local" and delta < 0:
        if row is None:
            raise TenderError(f"no {kind.replace('_', ' ')} account {account}")
        if int(row[1]) + delta < 0:
            raise TenderError(f"{account} has only {row[1]} minor units left")
    if op is None:
        op = "redeem" if delta < 0 else "issue" if row is None else "refund" if reason == "return" else "top_up"
    if mode == "online" and balance is not None:
        known: int | None = balance
    elif row is not None:
        known = int(row[1]) + delta
    else:  # an account the till never saw: only a new one's balance is known
        known = delta if op == "issue" and delta > 0 else None
    if known is not None:
        shop_time = time if mode == "online" else None
        conn.execute(
            "INSERT INTO stored_value(account, kind, balance, currency, updated_at, known_at) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(account) DO UPDATE SET kind = excluded.kind, "
            "balance = excluded.balance, currency = excluded.currency, updated_at = excluded.updated_at, "
            "known_at = COALESCE(excluded.known_at, known_at)",
            (account, kind, known, currency, time, shop_time),
        )
    mid = move_id or uuid7()
    data: dict[str, Any] = {"move_id": mid, "op": op, "account": account, "kind": kind, "delta": delta,
                            "balance": known, "currency": currency, "reason": reason, "ref": ref, "mode": mode,
                            "staff": actor}  # fmt: skip
    if reverses is not None:
        data["reverses"] = reverses
    record(tx, NewEvent(EVENT, data, subject=account), move_id=mid, book=BOOK, kind=kind, account=account, op=op,
           delta=delta, mode=mode, reason=reason, ref=ref, actor=actor, time=time, journal_seq=journal_seq)  # fmt: skip
    return known


def _journal_actor(conn: sqlite3.Connection, seq: int) -> str | None:
    row = conn.execute("SELECT actor FROM journal WHERE seq = ?", (seq,)).fetchone()
    return None if row is None or row[0] is None else str(row[0])


class StoredValue:
    """Gift cards and store credit at one till: balances, redemptions, gift card lines, reversals.

    The sale engine's state and the ledger are touched only by :meth:`plan`, :meth:`tender`,
    :meth:`card_line` and their callers on the till's thread; :meth:`ask` and
    :meth:`ask_balance` only talk to the shop and may run in an executor.
    """

    def __init__(self, ledger: Ledger, currency: str, *, limits: Limits | None = None, timeout: float | None = None,
                 retries: int = 1, remote: Remote | None = None, gift_card_sku: str = "GIFTCARD",
                 gift_card_tax_class: str = "exempt", max_gift_card: int = 50_000, clock: Clock | None = None
                 ) -> None:  # fmt: skip
        self.ledger = ledger
        self.clock = clock or SystemClock()
        self.currency = currency
        self.limits = limits or Limits(per_account=5_000, per_till=20_000)
        self.timeout = timeout
        self.retries = retries
        self.remote = remote  # set when sync runs: the hub is the authority
        self.gift_card_sku = gift_card_sku
        self.gift_card_tax_class = gift_card_tax_class
        self.max_gift_card = max_gift_card
        self.holds = Holds(ledger, BOOK, self._reverse_hold)

    @classmethod
    def from_config(cls, ledger: Ledger, config: Config, clock: Clock | None = None) -> StoredValue:
        """A service configured from ``[stored_value]``."""
        s = config.stored_value
        return cls(ledger, config.currency.code, limits=Limits(s.offline_limit_per_card, s.offline_limit_per_till),
                   timeout=float(s.request_timeout), retries=s.retries, gift_card_sku=s.gift_card_sku,
                   gift_card_tax_class=s.gift_card_tax_class, max_gift_card=s.max_gift_card,
                   clock=clock)  # fmt: skip

    def _plain(self, amount: int) -> str:
        return Currency.of(self.currency).plain(amount)

    # -- balances --------------------------------------------------------------------------------

    def get(self, account: str) -> Balance:
        """The last balance this till knows; :class:`NotFound` when it never saw the account."""
        row = self.ledger.conn.execute(
            "SELECT account, kind, balance, currency, known_at FROM stored_value WHERE account = ?",
            (account.strip().upper(),),
        ).fetchone()
        if row is None:
            raise NotFound(f"no store credit or gift card {account}")
        return Balance(str(row[0]), str(row[1]), int(row[2]), str(row[3]), row[4])

    def balance(self, account: str) -> int:
        return self.get(account).balance

    def ask_balance(self, account: str) -> dict[str, Any] | None:
        """The hub's answer for an account (any thread); None when the shop cannot be reached."""
        return ask(self.remote, "stored-value-balance", {"account": normalise(account)}, request_id=uuid7(),
                   timeout=self.timeout, retries=0)  # fmt: skip

    def remember(self, answer: Mapping[str, Any]) -> Balance:
        """Keep the hub's answer as the balance this till knows (a cache; not a movement)."""
        time = iso_utc(self.clock.now())
        with self.ledger.transaction("remembering a balance") as tx:
            tx.conn.execute(
                "INSERT INTO stored_value(account, kind, balance, currency, updated_at, known_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(account) DO UPDATE SET kind = excluded.kind, "
                "balance = excluded.balance, currency = excluded.currency, updated_at = excluded.updated_at, "
                "known_at = excluded.known_at",
                (answer["account"], answer["kind"], int(answer["balance"]), answer["currency"], time, time),
            )
        return Balance(str(answer["account"]), str(answer["kind"]), int(answer["balance"]), str(answer["currency"]),
                       time, "shop")  # fmt: skip

    def check(self, account: str) -> Balance:
        """The balance from the shop when it answers, else the last one this till knows (blocks while asking)."""
        code = normalise(account)
        return self.settle(code, self.ask_balance(code))

    def settle(self, account: str, answer: Mapping[str, Any] | None) -> Balance:
        """The balance given the shop's answer to :meth:`ask_balance` (None: it could not be reached)."""
        if answer is not None:
            return self.remember(answer)
        try:
            return self.get(account)
        except NotFound:
            if self.remote is None:
                raise
            raise DeviceUnavailable(f"the shop cannot be reached and this till has no balance for {account}") from None

    # -- redeeming -------------------------------------------------------------------------------

    def plan(self, sale: Sale, account: str, amount: int | None = None) -> Redemption:
        """Check a redemption against the sale and give it its movement id.

        With a shop, the redemption is written down first as a pending authorisation (one small
        transaction), so a redemption the hub accepts for a sale that is then lost is given back.
        """
        code = normalise(account)
        due = sale.totals().due
        if sale.state != "open":
            raise SaleError(f"sale is {sale.state}")
        if due <= 0:
            raise TenderError("the sale is already paid")
        if amount is not None and amount <= 0:
            raise TenderError("a gift card or store credit payment must be positive")
        if amount is not None and amount > due:
            raise TenderError(f"{self._plain(amount)} is more than the {self._plain(due)} due")
        r = Redemption(uuid7(), code, due if amount is None else amount, amount is None, sale.id, self.currency,
                       sale.cashier)  # fmt: skip
        if self.remote is not None:
            try:
                kind: str | None = self.get(code).kind
            except NotFound:
                kind = kind_of(code)
            self.holds.open(Hold(r.move_id, BOOK, kind, code, r.amount, r.currency, sale.id, sale.cashier),
                            time=iso_utc(self.clock.now()))  # fmt: skip
        return r

    def ask(self, r: Redemption) -> dict[str, Any] | None:
        """Ask the hub to redeem (any thread); None when it cannot be reached. Declines are raised."""
        body = {"op": "redeem", "account": r.account, "amount": r.amount, "currency": r.currency,
                "partial": r.partial, "ref": r.sale_id, "staff": r.staff}  # fmt: skip
        return self.holds.ask(self.remote, "stored-value-move", body, move_id=r.move_id, timeout=self.timeout,
                              retries=self.retries)  # fmt: skip

    def tender(self, sale: Sale, r: Redemption, answer: Mapping[str, Any] | None) -> Tender:
        """Put the redemption on the sale: as the hub answered, else offline within limits, else from local balance."""
        if answer is not None:
            taken = -int(answer["delta"])
            detail = {"move": r.move_id, "mode": "online", "balance": str(int(answer["balance"]))}
            try:
                if taken <= 0:
                    raise TenderError(f"{r.account} has no balance left")
                return sale.pay_electronic(TenderKind(str(answer["kind"])), taken, r.account, detail)
            except TillboxError:  # the hub took it but the sale cannot: give it back
                self._release(r, str(answer["kind"]), applied=True)
                raise
        try:
            return self._local(sale, r) if self.remote is None else self._offline(sale, r)
        except TillboxError:  # a request that went unanswered may still have reached the hub
            self._release(r, None, applied=False)
            raise

    def pay(self, sale: Sale, account: str, amount: int | None = None) -> Tender:
        """Plan, ask the hub and tender in one call (blocks while the shop is asked)."""
        r = self.plan(sale, account, amount)
        return self.tender(sale, r, self.ask(r))

    def _release(self, r: Redemption, kind: str | None, *, applied: bool) -> None:
        """Give back a redemption the sale does not take: its pending hold, or one the hub ``applied``."""
        if not applied and self.holds.state(self.ledger.conn, r.move_id) is None:
            return  # never asked of the shop
        time = iso_utc(self.clock.now())
        with self.ledger.transaction("reversing a gift card payment") as tx:
            state = self.holds.state(tx.conn, r.move_id)
            if state not in (None, "pending") or (state is None and not applied):
                return  # settled already, or never asked of the shop
            entry = tx.journal("stored_value.reversed", {"sale_id": r.sale_id, "move": r.move_id}, time=time,
                               actor=r.staff)  # fmt: skip
            self._give_back(tx, kind, r.account, r.move_id, ref=r.sale_id, reason="void", time=time,
                            journal_seq=entry.seq, actor=r.staff)  # fmt: skip
            self.holds.settle(tx, r.move_id, "reversed", time=time, journal_seq=entry.seq)

    def _give_back(self, tx: Tx, kind: str | None, account: str, move_id: str, *, ref: str, reason: str, time: str,
                   journal_seq: int, actor: str | None) -> str:  # fmt: skip
        """Record and emit the reversal of ``move_id`` (delta 0: the till never booked it); returns its id."""
        row = tx.conn.execute("SELECT kind, currency FROM stored_value WHERE account = ?", (account,)).fetchone()
        if row is not None:  # as this till knows the account, so the reversal is never refused here
            kind, currency = str(row[0]), str(row[1])
        else:
            kind, currency = kind or kind_of(account) or str(TenderKind.GIFT_CARD), self.currency
        rid = uuid7()
        move(tx, kind, account, 0, time=time, reason=reason, ref=ref, journal_seq=journal_seq, currency=currency,
             op="reverse", mode="local", move_id=rid, actor=actor, reverses=move_id)  # fmt: skip
        return rid

    def _reverse_hold(self, tx: Tx, hold: Hold, reason: str, time: str, journal_seq: int) -> str:
        return self._give_back(tx, hold.kind, hold.account, hold.move_id, ref=hold.sale_id, reason=reason, time=time,
                               journal_seq=journal_seq, actor=hold.actor)  # fmt: skip

    def _local(self, sale: Sale, r: Redemption) -> Tender:
        balance = self.get(r.account)
        if balance.currency != self.currency:
            raise TenderError(f"{balance.account} holds {balance.currency}, not {self.currency}")
        already = sum(t.amount for t in sale.tenders if t.reference == balance.account)
        available = balance.balance - already
        if available <= 0:
            raise TenderError(f"{balance.account} has no balance left")
        amount = min(r.amount, available) if r.partial else r.amount
        if amount > available:
            raise TenderError(f"{balance.account} has only {self._plain(available)}")
        return sale.pay_electronic(TenderKind(balance.kind), amount, balance.account,
                                   {"move": r.move_id, "mode": "local"})  # fmt: skip

    def _offline(self, sale: Sale, r: Redemption) -> Tender:
        known: Balance | None
        try:
            known = self.get(r.account)
        except NotFound:
            known = None
        kind = known.kind if known else kind_of(r.account)
        if kind is None:
            raise TenderError(f"the shop cannot be reached to check {r.account}; take another payment")
        if known is not None and known.currency != self.currency:
            raise TenderError(f"{r.account} holds {known.currency}, not {self.currency}")
        pending = [t for t in sale.tenders if t.detail.get("mode") == "offline"]
        on_card = sum(t.amount for t in pending if t.reference == r.account)
        room = self.room(r.account, pending=sum(t.amount for t in pending), pending_account=on_card,
                         known=None if known is None else known.balance)  # fmt: skip
        amount = min(r.amount, room[0]) if r.partial else r.amount
        if amount <= 0 or amount > room[0]:
            raise TenderError(room[1])
        return sale.pay_electronic(TenderKind(kind), amount, r.account, {"move": r.move_id, "mode": "offline"})

    def room(self, account: str, *, pending: int = 0, pending_account: int = 0, known: int | None = None
             ) -> tuple[int, str]:  # fmt: skip
        """What may still be taken offline from ``account`` here, and the one-line reason of that limit."""
        return offline_room(self.ledger.conn, self.limits, BOOK, account, _MONEY_ROOM, say=self._plain,
                            pending=pending, pending_account=pending_account, known=known)  # fmt: skip

    def precheck(self, tx: Tx, doc: Mapping[str, Any]) -> None:
        """Before a sale commits: its offline tenders still fit the limits (other sales may have used them)."""
        offline = [t for t in doc.get("tenders", []) if t["kind"] in KINDS
                   and (t.get("detail") or {}).get("mode") == "offline"]  # fmt: skip
        if not offline:
            return
        total = sum(int(t["amount"]) for t in offline)
        for account in sorted({str(t["reference"]) for t in offline}):
            mine = sum(int(t["amount"]) for t in offline if t["reference"] == account)
            value, why = self.room(account, pending=total - mine)
            if mine > value:
                raise TenderError(why)

    # -- gift cards sold in a sale ---------------------------------------------------------------

    def card_line(self, sale: Sale, amount: int, account: str | None = None) -> Line:
        """Add a gift card line: a new card (a code is made) or a top-up of ``account``.

        The line is not taxed (``gift_card_tax_class``), takes no promotions, and its value is
        credited to the card when the sale completes (:meth:`activate`), never before.
        """
        if not 0 < amount <= self.max_gift_card:
            raise InputError(f"a gift card is sold for {self._plain(1)} to {self._plain(self.max_gift_card)}")
        if self.gift_card_tax_class not in sale.policy.tax.classes:
            raise ConfigError(f"[stored_value] gift_card_tax_class {self.gift_card_tax_class!r} is not a tax class")
        code = normalise(account) if account else new_account(TenderKind.GIFT_CARD)
        try:
            known: Balance | None = self.get(code)
        except NotFound:
            known = None
        if (known.kind if known else kind_of(code)) == TenderKind.STORE_CREDIT:
            raise InputError(f"{code} is store credit; only gift cards are sold and topped up")
        if any(ln.scan is not None and ln.scan.code == code and not ln.voided and ln.item.sku == self.gift_card_sku
               for ln in sale.lines):  # fmt: skip
            raise InputError(f"{code} is already in this sale")
        name = f"Gift card {code}" if known is None and account is None else f"Gift card top-up {code}"
        item = Item(sku=self.gift_card_sku, name=name, price=amount, tax_class=self.gift_card_tax_class,
                    department=GIFT_CARD_DEPARTMENT)  # fmt: skip
        return sale.add_item(item, self.clock.now(), fixed_amount=amount, scan=ScanInfo(code=code))

    def activate(self, tx: Tx, doc: Mapping[str, Any], journal_seq: int) -> list[str]:
        """Credit the gift cards sold in a committed sale (same transaction); returns their codes."""
        done = []
        for ln in doc.get("lines", []):
            scan = ln.get("scan") or {}
            if ln["sku"] != self.gift_card_sku or ln["voided"] or not scan.get("code") or int(ln["total"]) <= 0:
                continue
            move(tx, str(TenderKind.GIFT_CARD), str(scan["code"]), int(ln["total"]), time=str(doc["completed_at"]),
                 reason="sale", ref=str(doc["id"]), journal_seq=journal_seq, currency=str(doc["currency"]),
                 actor=doc.get("cashier"))  # fmt: skip
            done.append(str(scan["code"]))
        return done

    # -- voided sales ----------------------------------------------------------------------------

    def reverse(self, sale: Sale, *, actor: str | None) -> list[str]:
        """Give back what a voided sale took at the hub: one reversal per tender and per other pending hold.

        Recorded and emitted, never waited for: the hub undoes each redemption once when the
        reversal arrives, and one that reaches it after its reversal is never applied.
        Returns the reversal movement ids.
        """
        tenders = [t for t in sale.tenders if t.kind in KINDS and t.detail.get("mode") in ("online", "offline")]
        if not tenders and not self.holds.pending(self.ledger.conn, sale.id):
            return []
        time = iso_utc(self.clock.now())
        ids = []
        with self.ledger.transaction("reversing gift card payments") as tx:
            if tenders:
                payload = {"sale_id": sale.id, "tenders": [t.to_doc() for t in tenders]}
                entry = tx.journal("stored_value.reversed", payload, time=time, actor=actor)
                for t in tenders:  # delta 0: the till never booked the redemption; the hub undoes what it applied
                    rid = self._give_back(tx, str(t.kind), str(t.reference), t.detail["move"], ref=sale.id,
                                          reason="void", time=time, journal_seq=entry.seq, actor=actor)  # fmt: skip
                    ids.append(rid)
                    self.holds.settle(tx, t.detail["move"], "reversed", time=time, journal_seq=entry.seq)
            ids += self.holds.finish(tx, sale.id, (), time=time, actor=actor, reason="void")
        return ids

    def settle_sale(self, tx: Tx, doc: Mapping[str, Any], journal_seq: int) -> list[str]:
        """In a completing sale's transaction: its tenders' holds are consumed, any other is reversed."""
        used = {str((t.get("detail") or {}).get("move")) for t in doc.get("tenders", []) if t["kind"] in KINDS}
        return self.holds.finish(tx, str(doc["id"]), used, time=str(doc["completed_at"]), actor=doc.get("cashier"),
                                 reason="void", journal_seq=journal_seq)  # fmt: skip

    def recover(self) -> list[str]:
        """At start-up: give back the redemptions of sales lost before they completed (see :meth:`Holds.recover`)."""
        return self.holds.recover(time=iso_utc(self.clock.now()))
