"""The ledger: a durable SQLite journal with sales, stock and a transactional outbox.

Everything a sale changes (sale rows, stock levels and moves, the journal entry
and the outbox events sync will publish) is written in one ``BEGIN IMMEDIATE``
transaction, with WAL and ``synchronous=FULL``: after a power cut the sale is
either wholly there or wholly absent.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from appliance.canonical import canonical_json
from appliance.errors import LedgerCorrupt, LedgerError, LedgerTooNew, StorageFull
from appliance.ids import uuid7
from appliance.ledger.journal import JournalEntry, entry_hash, genesis_hash
from appliance.ledger.schema import APPLICATION_ID, LATEST_VERSION, MIGRATIONS

log = logging.getLogger(__name__)

_SYNC_MODES = {"FULL", "EXTRA"}


def qty_to_milli(qty: Decimal) -> int:
    """Quantities (units or kg) are stored as integer thousandths."""
    return int((qty * 1000).to_integral_value())


def milli_to_qty(milli: int) -> Decimal:
    """Integer thousandths back to a Decimal quantity, normalised (2.000 -> 2)."""
    value = Decimal(milli).scaleb(-3)
    return value.quantize(Decimal(1)) if value == value.to_integral_value() else value.normalize()


@dataclass(frozen=True)
class OutboxEvent:
    """An event waiting in (or published from) the outbox."""

    seq: int
    id: str
    type: str
    time: str
    subject: str | None
    data: str
    journal_seq: int | None
    published_at: str | None
    acked_at: str | None


@dataclass(frozen=True)
class CommittedSale:
    """What the ledger assigned when a sale was committed."""

    sale_id: str
    number: int
    journal: JournalEntry
    events: tuple[int, ...]


@dataclass(frozen=True)
class NewEvent:
    """An outbox event to write inside a transaction."""

    type: str
    data: Mapping[str, Any]
    subject: str | None = None


def _translate(exc: sqlite3.Error, what: str) -> LedgerError:
    code = getattr(exc, "sqlite_errorcode", None)
    if code == sqlite3.SQLITE_FULL:
        return StorageFull(f"{what}: the disk is full; nothing was written")
    if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return LedgerCorrupt(f"{what}: the database file is damaged or not a database ({exc})")
    if code == sqlite3.SQLITE_CONSTRAINT_TRIGGER or "append-only" in str(exc):
        return LedgerError(f"{what}: refused by the ledger ({exc})")
    return LedgerError(f"{what}: {exc}")


class Tx:
    """Writes inside one ledger transaction. Obtained from :meth:`Ledger.transaction`."""

    def __init__(self, ledger: Ledger, conn: sqlite3.Connection) -> None:
        self._ledger = ledger
        self.conn = conn
        head = conn.execute("SELECT seq, hash FROM journal ORDER BY seq DESC LIMIT 1").fetchone()
        self._seq, self._hash = (int(head[0]), str(head[1])) if head else (0, ledger.genesis)
        self.entries: list[JournalEntry] = []

    def journal(
        self,
        type_: str,
        payload: Mapping[str, Any],
        *,
        time: str,
        actor: str | None = None,
        approver: str | None = None,
        ref_seq: int | None = None,
    ) -> JournalEntry:
        """Append one entry to the hash chain."""
        for name, value in (("type", type_), ("actor", actor), ("approver", approver)):
            if value is not None and (not value.isprintable() or len(value) > 128):
                raise LedgerError(f"journal {name} {value!r} must be printable text of at most 128 chars")
        text = canonical_json(payload)
        seq = self._seq + 1
        digest = entry_hash(self._hash, seq, time, type_, actor, approver, ref_seq, text)
        self.conn.execute(
            "INSERT INTO journal(seq, time, type, actor, approver, ref_seq, payload, prev_hash, hash) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (seq, time, type_, actor, approver, ref_seq, text, self._hash, digest),
        )
        entry = JournalEntry(seq, time, type_, actor, approver, ref_seq, text, self._hash, digest)
        self._seq, self._hash = seq, digest
        self.entries.append(entry)
        return entry

    def emit(self, event: NewEvent, *, time: str, journal_seq: int | None) -> int:
        """Put one event in the outbox; returns its device sequence number."""
        row = self.conn.execute("SELECT value FROM counters WHERE name = 'outbox_seq'").fetchone()
        seq = int(row[0]) + 1
        self.conn.execute(
            "INSERT INTO outbox(seq, id, type, time, subject, data, journal_seq) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (seq, uuid7(), event.type, time, event.subject, canonical_json(event.data), journal_seq),
        )
        return seq

    def move_stock(
        self, sku: str, delta: Decimal, *, reason: str, journal_seq: int, sale_id: str | None = None
    ) -> Decimal:
        """Change the local stock level of a SKU; returns the resulting level."""
        delta_milli = qty_to_milli(delta)
        row = self.conn.execute(
            "INSERT INTO stock(sku, level_milli) VALUES (?, ?) "
            "ON CONFLICT(sku) DO UPDATE SET level_milli = level_milli + excluded.level_milli "
            "RETURNING level_milli",
            (sku, delta_milli),
        ).fetchone()
        level = int(row[0])
        self.conn.execute(
            "INSERT INTO stock_moves(sku, delta_milli, level_milli, reason, sale_id, journal_seq) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (sku, delta_milli, level, reason, sale_id, journal_seq),
        )
        return milli_to_qty(level)

    def write_sale(self, doc: Mapping[str, Any]) -> CommittedSale:
        """Write a completed sale inside this transaction (see :meth:`Ledger.commit_sale`)."""
        conn = self.conn
        number = conn.execute("SELECT COALESCE(MAX(number), 0) + 1 FROM sales").fetchone()[0]
        record = dict(doc)
        record["number"] = number
        record["store"] = self._ledger.store_id
        record["device"] = self._ledger.device_id
        time = str(record["completed_at"])
        entry = self.journal(
            "sale.completed", record, time=time, actor=record.get("cashier"), approver=record.get("approver")
        )
        lines = record["lines"]
        conn.execute(
            "INSERT INTO sales(id, number, journal_seq, cashier, started_at, completed_at, duration_ms, "
            "currency, subtotal, discount, tax, total, rounding, change, line_count, shift_id, customer_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                record["id"], number, entry.seq, record.get("cashier"), record.get("started_at"), time,
                record.get("duration_ms"), record["currency"], record["subtotal"], record["discount"],
                record["tax"], record["total"], record["rounding"], record["change"], len(lines),
                record.get("shift_id"), record.get("customer_id"),
            ),
        )  # fmt: skip
        conn.executemany(
            "INSERT INTO sale_lines(sale_id, line_no, sku, name, qty, unit_price, amount, discount, tax, "
            "total, tax_class, voided) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    record["id"], ln["line"], ln["sku"], ln["name"], ln["qty"], ln["unit_price"],
                    ln["amount"], ln["discount"], ln["tax"], ln["total"], ln["tax_class"], int(ln["voided"]),
                )
                for ln in lines
            ],
        )  # fmt: skip
        conn.executemany(
            "INSERT INTO sale_tenders(sale_id, idx, kind, amount, reference) VALUES (?, ?, ?, ?, ?)",
            [(record["id"], i, t["kind"], t["amount"], t.get("reference")) for i, t in enumerate(record["tenders"], 1)],
        )
        for t in record["tenders"]:
            if t["kind"] in ("store_credit", "gift_card"):  # redeemed in the same transaction as the sale
                from appliance.stored_value import move

                move(self, t["kind"], str(t.get("reference") or ""), -int(t["amount"]), time=time, reason="sale",
                     ref=str(record["id"]), journal_seq=entry.seq, currency=str(record["currency"]))  # fmt: skip
        moves: dict[str, Decimal] = {}
        for ln in lines:
            if not ln["voided"]:
                moves[ln["sku"]] = moves.get(ln["sku"], Decimal(0)) - Decimal(ln["qty"])
        stock = []
        for sku, delta in moves.items():
            level = self.move_stock(sku, delta, reason="sale", journal_seq=entry.seq, sale_id=record["id"])
            stock.append({"sku": sku, "delta": str(delta), "level": str(level)})
        seqs = (
            self.emit(NewEvent("tillbox.sale.completed", record, subject=record["id"]), time=time,
                      journal_seq=entry.seq),
            self.emit(NewEvent("tillbox.stock.moved", {"reason": "sale", "sale_id": record["id"], "moves": stock}),
                      time=time, journal_seq=entry.seq),
            self.emit(NewEvent("tillbox.ledger.head", {"seq": entry.seq, "hash": entry.hash}), time=time,
                      journal_seq=entry.seq),
        )  # fmt: skip
        return CommittedSale(str(record["id"]), int(number), entry, seqs)

    def set_counter(self, name: str, value: int) -> None:
        """Store a named counter (Z numbers, sequences of later features)."""
        self.conn.execute(
            "INSERT INTO counters(name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            (name, value),
        )


class Ledger:
    """One device's ledger database. Not thread-safe: use it from one thread (the loop)."""

    def __init__(
        self,
        path: Path,
        *,
        store_id: str,
        device_id: str,
        synchronous: str = "FULL",
        wal_autocheckpoint: int = 1000,
        create: bool = True,
    ) -> None:
        if synchronous not in _SYNC_MODES:
            raise LedgerError(f"synchronous must be one of {sorted(_SYNC_MODES)}, not {synchronous!r}")
        self.path = Path(path)
        self.store_id = store_id
        self.device_id = device_id
        self.genesis = genesis_hash(store_id, device_id)
        if not create and not self.path.exists():
            raise LedgerError(f"no ledger at {self.path}")
        try:
            self.conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise _translate(exc, f"cannot open {self.path}") from exc
        try:
            self._configure(synchronous, wal_autocheckpoint)
            self._migrate()
            self._check_identity()
        except BaseException:
            self.conn.close()
            raise

    # -- opening ---------------------------------------------------------------------------------

    def _configure(self, synchronous: str, wal_autocheckpoint: int) -> None:
        try:
            self.conn.execute("PRAGMA busy_timeout = 5000")
            mode = self.conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise LedgerCorrupt(f"{self.path} is not a tillbox ledger: {exc}") from exc
        if str(mode).lower() != "wal":
            raise LedgerError(f"{self.path}: cannot switch to WAL mode (got {mode})")
        self.conn.execute(f"PRAGMA synchronous = {synchronous}")
        self.conn.execute("PRAGMA foreign_keys = ON")
        self.conn.execute("PRAGMA secure_delete = ON")  # erased personal data does not linger in free pages
        self.conn.execute(f"PRAGMA wal_autocheckpoint = {int(wal_autocheckpoint)}")

    def _migrate(self) -> None:
        app_id = self.conn.execute("PRAGMA application_id").fetchone()[0]
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if app_id == 0 and version == 0:
            tables = self.conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if tables:
                raise LedgerCorrupt(f"{self.path} is a SQLite database of another program, not a tillbox ledger")
        elif app_id != APPLICATION_ID:
            raise LedgerCorrupt(f"{self.path} is not a tillbox ledger (application_id {app_id:#x})")
        if version > LATEST_VERSION:
            raise LedgerTooNew(
                f"{self.path} has schema version {version}, newer than this tillbox understands "
                f"({LATEST_VERSION}); upgrade tillbox instead of downgrading the ledger"
            )
        for target in range(version + 1, LATEST_VERSION + 1):
            try:
                self.conn.execute("BEGIN IMMEDIATE")
                MIGRATIONS[target - 1](self.conn)
                if target == 1:
                    self.conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                    self.conn.executemany(
                        "INSERT INTO meta(key, value) VALUES (?, ?)",
                        [
                            ("store_id", self.store_id),
                            ("device_id", self.device_id),
                            ("genesis", self.genesis),
                        ],
                    )
                self.conn.execute(f"PRAGMA user_version = {target}")
                self.conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self.conn.execute("ROLLBACK")
                raise _translate(exc, f"migrating {self.path} to version {target}") from exc
            log.info("ledger %s migrated to schema version %d", self.path, target)

    def _check_identity(self) -> None:
        meta = self.meta()
        owner = (meta.get("store_id"), meta.get("device_id"))
        if owner != (self.store_id, self.device_id):
            raise LedgerCorrupt(
                f"{self.path} belongs to store {owner[0]!r} device {owner[1]!r}, "
                f"not {self.store_id!r} {self.device_id!r}"
            )

    # -- reading ---------------------------------------------------------------------------------

    def meta(self) -> dict[str, str]:
        """The ledger's identity rows."""
        return {str(k): str(v) for k, v in self.conn.execute("SELECT key, value FROM meta")}

    @property
    def schema_version(self) -> int:
        return int(self.conn.execute("PRAGMA user_version").fetchone()[0])

    def head(self) -> tuple[int, str]:
        """Sequence and hash of the newest journal entry (0 and the genesis when empty)."""
        row = self.conn.execute("SELECT seq, hash FROM journal ORDER BY seq DESC LIMIT 1").fetchone()
        return (int(row[0]), str(row[1])) if row else (0, self.genesis)

    def entry(self, seq: int) -> JournalEntry | None:
        """One journal entry by sequence."""
        row = self.conn.execute(
            "SELECT seq, time, type, actor, approver, ref_seq, payload, prev_hash, hash FROM journal WHERE seq = ?",
            (seq,),
        ).fetchone()
        return JournalEntry(*row) if row else None

    def stock_level(self, sku: str) -> Decimal:
        """Local stock level of a SKU (0 when never moved)."""
        row = self.conn.execute("SELECT level_milli FROM stock WHERE sku = ?", (sku,)).fetchone()
        return milli_to_qty(int(row[0])) if row else Decimal(0)

    def sale_count(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM sales").fetchone()[0])

    def counter(self, name: str) -> int:
        row = self.conn.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def outbox(self, *, after: int = 0, limit: int = 100, unacked_only: bool = True) -> list[OutboxEvent]:
        """Outbox events in sequence order."""
        where = "seq > ?" + (" AND acked_at IS NULL" if unacked_only else "")
        rows = self.conn.execute(
            "SELECT seq, id, type, time, subject, data, journal_seq, published_at, acked_at FROM outbox "
            f"WHERE {where} ORDER BY seq LIMIT ?",
            (after, limit),
        ).fetchall()
        return [OutboxEvent(*row) for row in rows]

    # -- writing ---------------------------------------------------------------------------------

    @contextmanager
    def transaction(self, what: str = "ledger write") -> Iterator[Tx]:
        """One durable write transaction; rolled back whole on any error."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise _translate(exc, what) from exc
        try:
            yield Tx(self, self.conn)
            self.conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise _translate(exc, what) from exc
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise

    def append(
        self,
        type_: str,
        payload: Mapping[str, Any],
        *,
        time: str,
        actor: str | None = None,
        approver: str | None = None,
        ref_seq: int | None = None,
        events: Sequence[NewEvent] = (),
    ) -> JournalEntry:
        """Append one journal entry (and its outbox events) in its own transaction."""
        with self.transaction(f"recording {type_}") as tx:
            entry = tx.journal(type_, payload, time=time, actor=actor, approver=approver, ref_seq=ref_seq)
            for event in events:
                tx.emit(event, time=time, journal_seq=entry.seq)
        return entry

    def commit_sale(self, doc: Mapping[str, Any]) -> CommittedSale:
        """Record a completed sale: rows, stock, journal entry and events, in one transaction.

        ``doc`` is the sale document from :meth:`appliance.sale.Sale.complete`; the
        ledger assigns the receipt number.
        """
        with self.transaction("committing sale") as tx:
            return tx.write_sale(doc)

    def mark_published(self, seqs: Sequence[int], time: str) -> None:
        """Record the broker's PUBACK for events."""
        with self.transaction("marking events published"):
            self.conn.executemany(
                "UPDATE outbox SET published_at = ? WHERE seq = ? AND published_at IS NULL",
                [(time, s) for s in seqs],
            )

    def mark_acked(self, upto_seq: int, time: str) -> int:
        """Record the shop's end-to-end ack of every event up to ``upto_seq``; returns how many."""
        with self.transaction("marking events acknowledged"):
            cur = self.conn.execute(
                "UPDATE outbox SET acked_at = ?, published_at = COALESCE(published_at, ?) "
                "WHERE seq <= ? AND acked_at IS NULL",
                (time, time, upto_seq),
            )
        return int(cur.rowcount)

    def prune_outbox(self, acked_before: str) -> int:
        """Delete acknowledged events acked before an instant (retention); returns how many."""
        with self.transaction("pruning outbox"):
            cur = self.conn.execute("DELETE FROM outbox WHERE acked_at IS NOT NULL AND acked_at < ?", (acked_before,))
        return int(cur.rowcount)

    def close(self) -> None:
        """Close the database; idempotent."""
        try:
            self.conn.close()
        except sqlite3.Error:  # pragma: no cover - closing a closed connection is harmless
            log.debug("ledger close failed", exc_info=True)

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
