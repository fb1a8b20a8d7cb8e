"""Versioned schema migrations for the ledger database.

The schema version lives in ``PRAGMA user_version`` and the file is tagged with
``PRAGMA application_id`` so a foreign SQLite file is recognised. Each migration
runs in the caller's transaction; tables are created with sqlite-utils, while
triggers (which sqlite-utils does not model) are plain SQL.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import sqlite_utils

#: "TILL" in ASCII: marks a SQLite file as a tillbox ledger.
APPLICATION_ID = 0x54494C4C

_APPEND_ONLY = ("journal", "sales", "sale_lines", "sale_tenders", "stock_moves")


def _append_only(conn: sqlite3.Connection, table: str) -> None:
    """Triggers that refuse UPDATE and DELETE on a table."""
    for op in ("update", "delete"):
        conn.execute(
            f"CREATE TRIGGER {table}_no_{op} BEFORE {op.upper()} ON {table} "
            f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
        )


def _v1(conn: sqlite3.Connection) -> None:
    """Journal, sales, catalog, stock and outbox."""
    db = sqlite_utils.Database(conn)
    db.table("meta").create({"key": str, "value": str}, pk="key", not_null={"value"})
    db.table("counters").create({"name": str, "value": int}, pk="name", not_null={"value"})
    db.table("journal").create(
        {
            "seq": int,
            "time": str,
            "type": str,
            "actor": str,
            "approver": str,
            "ref_seq": int,
            "payload": str,
            "prev_hash": str,
            "hash": str,
        },
        pk="seq",
        not_null={"time", "type", "payload", "prev_hash", "hash"},
        foreign_keys=[("ref_seq", "journal", "seq")],
    )
    db.table("journal").create_index(["type"])
    db.table("items").create(
        {
            "sku": str,
            "name": str,
            "price": int,
            "unit": str,
            "tax_class": str,
            "department": str,
            "age_restricted": int,
            "active": int,
        },
        pk="sku",
        not_null={"name", "price", "unit", "tax_class", "department", "age_restricted", "active"},
        defaults={"unit": "each", "department": "", "age_restricted": 0, "active": 1},
    )
    db.table("barcodes").create(
        {"key": str, "sku": str, "code": str},
        pk="key",
        not_null={"sku", "code"},
        foreign_keys=[("sku", "items", "sku")],
    )
    db.table("barcodes").create_index(["sku"])
    db.table("suspended").create(
        {"id": str, "cashier": str, "time": str, "body": str}, pk="id", not_null={"time", "body"}
    )
    db.table("promotions").create({"id": str, "body": str}, pk="id", not_null={"body"})
    db.table("stock").create({"sku": str, "level_milli": int}, pk="sku", not_null={"level_milli"})
    db.table("sales").create(
        {
            "id": str,
            "number": int,
            "journal_seq": int,
            "cashier": str,
            "started_at": str,
            "completed_at": str,
            "duration_ms": int,
            "currency": str,
            "subtotal": int,
            "discount": int,
            "tax": int,
            "total": int,
            "rounding": int,
            "change": int,
            "line_count": int,
        },
        pk="id",
        not_null={"number", "journal_seq", "completed_at", "currency", "total"},
        foreign_keys=[("journal_seq", "journal", "seq")],
    )
    db.table("sales").create_index(["number"], unique=True)
    db.table("sales").create_index(["journal_seq"], unique=True)
    db.table("sale_lines").create(
        {
            "sale_id": str,
            "line_no": int,
            "sku": str,
            "name": str,
            "qty": str,
            "unit_price": int,
            "amount": int,
            "discount": int,
            "tax": int,
            "total": int,
            "tax_class": str,
            "voided": int,
        },
        pk=("sale_id", "line_no"),
        not_null={"sku", "qty", "unit_price", "amount", "discount", "tax", "total", "voided"},
        foreign_keys=[("sale_id", "sales", "id")],
    )
    db.table("sale_tenders").create(
        {"sale_id": str, "idx": int, "kind": str, "amount": int, "reference": str},
        pk=("sale_id", "idx"),
        not_null={"kind", "amount"},
        foreign_keys=[("sale_id", "sales", "id")],
    )
    db.table("stock_moves").create(
        {
            "id": int,
            "sku": str,
            "delta_milli": int,
            "level_milli": int,
            "reason": str,
            "sale_id": str,
            "journal_seq": int,
        },
        pk="id",
        not_null={"sku", "delta_milli", "level_milli", "reason", "journal_seq"},
        foreign_keys=[("sale_id", "sales", "id"), ("journal_seq", "journal", "seq")],
    )
    db.table("stock_moves").create_index(["sale_id"])
    db.table("outbox").create(
        {
            "seq": int,
            "id": str,
            "type": str,
            "time": str,
            "subject": str,
            "data": str,
            "journal_seq": int,
            "published_at": str,
            "acked_at": str,
        },
        pk="seq",
        not_null={"id", "type", "time", "data"},
        foreign_keys=[("journal_seq", "journal", "seq")],
    )
    db.table("outbox").create_index(["id"], unique=True)
    db.table("outbox").create_index(["journal_seq"])
    for table in _APPEND_ONLY:
        _append_only(conn, table)
    conn.execute(
        "CREATE TRIGGER journal_gapless BEFORE INSERT ON journal "
        "WHEN NEW.seq IS NOT (SELECT COALESCE(MAX(seq), 0) + 1 FROM journal) "
        "BEGIN SELECT RAISE(ABORT, 'journal sequence must be gapless'); END"
    )
    conn.execute(
        "CREATE TRIGGER outbox_gapless BEFORE INSERT ON outbox "
        "WHEN NEW.seq IS NOT (SELECT value + 1 FROM counters WHERE name = 'outbox_seq') "
        "BEGIN SELECT RAISE(ABORT, 'outbox sequence must be gapless'); END"
    )
    conn.execute(
        "CREATE TRIGGER outbox_count AFTER INSERT ON outbox "
        "BEGIN UPDATE counters SET value = NEW.seq WHERE name = 'outbox_seq'; END"
    )
    conn.execute(
        "CREATE TRIGGER outbox_immutable BEFORE UPDATE OF seq, id, type, time, subject, data, journal_seq "
        "ON outbox BEGIN SELECT RAISE(ABORT, 'outbox events are immutable'); END"
    )
    conn.execute(
        "CREATE TRIGGER outbox_keep_unacked BEFORE DELETE ON outbox WHEN OLD.acked_at IS NULL "
        "BEGIN SELECT RAISE(ABORT, 'an unacknowledged event cannot be deleted'); END"
    )
    conn.execute("INSERT INTO counters(name, value) VALUES ('outbox_seq', 0)")


def _v2(conn: sqlite3.Connection) -> None:
    """Alerts, dead letters; staff, shifts, customers, returns and refunds."""
    db = sqlite_utils.Database(conn)
    db.table("staff").create(
        {
            "id": str,
            "name": str,
            "role": str,
            "pin_hash": str,
            "badge_hash": str,
            "active": int,
            "failures": int,
            "locked_until": str,
        },
        pk="id",
        not_null={"name", "role", "active", "failures"},
        defaults={"active": 1, "failures": 0},
    )
    db.table("staff").create_index(["badge_hash"], unique=True)
    db.table("shifts").create(
        {
            "id": int,
            "opened_at": str,
            "opened_by": str,
            "float": int,
            "open_seq": int,
            "closed_at": str,
            "closed_by": str,
            "z_number": int,
            "close_seq": int,
        },
        pk="id",
        not_null={"opened_at", "opened_by", "float", "open_seq"},
        foreign_keys=[("open_seq", "journal", "seq"), ("close_seq", "journal", "seq")],
    )
    db.table("shifts").create_index(["z_number"], unique=True)
    conn.execute(
        "CREATE TRIGGER shifts_closed_final BEFORE UPDATE ON shifts WHEN OLD.closed_at IS NOT NULL "
        "BEGIN SELECT RAISE(ABORT, 'a closed shift cannot change'); END"
    )
    conn.execute("CREATE UNIQUE INDEX shifts_one_open ON shifts((closed_at IS NULL)) WHERE closed_at IS NULL")
    db.table("customers").create(
        {
            "id": str,
            "name": str,
            "email": str,
            "phone": str,
            "consent": int,
            "consent_at": str,
            "created_at": str,
            "erased_at": str,
        },
        pk="id",
        not_null={"consent", "created_at"},
        defaults={"consent": 0},
    )
    db.table("customers").create_index(["email"])
    db.table("customers").create_index(["phone"])
    db.table("sales").add_column("shift_id", int)
    db.table("sales").add_column("customer_id", str)
    db.table("returns").create(
        {
            "id": str,
            "number": int,
            "journal_seq": int,
            "original_sale_id": str,
            "shift_id": int,
            "cashier": str,
            "approver": str,
            "completed_at": str,
            "total": int,
            "tax": int,
        },
        pk="id",
        not_null={"number", "journal_seq", "completed_at", "total", "tax"},
        foreign_keys=[("journal_seq", "journal", "seq")],
    )
    db.table("returns").create_index(["number"], unique=True)
    db.table("refunds").create(
        {
            "return_id": str,
            "sale_id": str,
            "line_no": int,
            "qty": str,
            "amount": int,
            "tax": int,
            "disposition": str,
        },
        pk=("return_id", "sale_id", "line_no"),
        not_null={"qty", "amount", "tax", "disposition"},
        foreign_keys=[("return_id", "returns", "id")],
    )
    db.table("refunds").create_index(["sale_id", "line_no"])
    db.table("remote_sales").create(
        {"id": str, "source": str, "reference": str, "received_at": str, "body": str},
        pk="id",
        not_null={"source", "received_at", "body"},
    )
    db.table("remote_sales").create_index(["reference"])
    db.table("stock_damaged").create({"sku": str, "level_milli": int}, pk="sku", not_null={"level_milli"})
    for table in ("returns", "refunds"):
        _append_only(conn, table)
    db.table("alerts").create(
        {"code": str, "severity": str, "message": str, "raised_at": str, "journal_seq": int},
        pk="code",
        not_null={"severity", "message", "raised_at"},
    )
    db.table("dead_letters").create(
        {"id": int, "received_at": str, "topic": str, "reason": str, "payload": bytes},
        pk="id",
        not_null={"received_at", "topic", "reason"},
    )


def _v3(conn: sqlite3.Connection) -> None:
    """Sync: versioned documents from the shop, remote stock levels and pickup orders."""
    db = sqlite_utils.Database(conn)
    db.table("sync_docs").create(
        {"name": str, "version": int, "body": str, "updated_at": str},
        pk="name",
        not_null={"version", "updated_at"},
    )
    db.table("remote_stock").create(
        {"sku": str, "version": int, "body": str, "updated_at": str},
        pk="sku",
        not_null={"version", "body", "updated_at"},
    )
    db.table("pickup_orders").create(
        {"id": str, "version": int, "status": str, "body": str, "updated_at": str},
        pk="id",
        not_null={"version", "status", "body", "updated_at"},
    )


#: Migration n brings the schema from version n-1 to n. Append, never edit.
def _v4(conn: sqlite3.Connection) -> None:
    """Stored value: store credit and gift card balances, moved only by journaled entries."""
    db = sqlite_utils.Database(conn)
    db.table("stored_value").create(
        {"account": str, "kind": str, "balance": int, "currency": str, "updated_at": str},
        pk="account",
        not_null={"kind", "balance", "currency", "updated_at"},
    )
    conn.execute(
        "CREATE TRIGGER stored_value_not_negative BEFORE UPDATE OF balance ON stored_value WHEN NEW.balance < 0 "
        "BEGIN SELECT RAISE(ABORT, 'stored value balance cannot go below zero'); END"
    )


def _v5_orders(conn: sqlite3.Connection) -> None:
    """Pickup and ship-from-store orders: every action this till took on an order (append-only)."""
    db = sqlite_utils.Database(conn)
    db.table("order_actions").create(
        {
            "id": int,
            "order_id": str,
            "action": str,
            "event_seq": int,
            "staff": str,
            "time": str,
            "data": str,
            "journal_seq": int,
        },
        pk="id",
        not_null={"order_id", "action", "time", "data", "journal_seq"},
        foreign_keys=[("journal_seq", "journal", "seq")],
    )
    db.table("order_actions").create_index(["order_id"])
    db.table("pickup_orders").create_index(["status"])
    _append_only(conn, "order_actions")


def _v6_accounts(conn: sqlite3.Connection) -> None:
    """Gift cards, store credit and loyalty with the shop's hub as authority (docs/accounts.md).

    ``account_moves`` (append-only) holds every movement this till made, with the id the hub
    applies it under once; ``stored_value`` and ``loyalty_points`` become the last balances this
    till knows (its own movements and the shop's answers), so a balance may be negative.
    ``account_auths`` holds each redemption written down before the hub is asked (``pending``),
    settled once: ``consumed`` by its sale, ``reversed``, or ``refused`` by the hub.
    """
    db = sqlite_utils.Database(conn)
    db.table("account_moves").create(
        {
            "id": str,
            "book": str,
            "kind": str,
            "account": str,
            "op": str,
            "delta": int,
            "mode": str,
            "reason": str,
            "ref": str,
            "actor": str,
            "time": str,
            "journal_seq": int,
            "event_seq": int,
        },
        pk="id",
        not_null={"book", "kind", "account", "op", "delta", "mode", "time", "journal_seq"},
        foreign_keys=[("journal_seq", "journal", "seq")],
    )
    db.table("account_moves").create_index(["book", "account"])
    db.table("account_moves").create_index(["mode"])
    _append_only(conn, "account_moves")
    db.table("loyalty_points").create(
        {"customer": str, "points": int, "known_at": str, "updated_at": str},
        pk="customer",
        not_null={"points", "updated_at"},
    )
    db.table("stored_value").add_column("known_at", str)
    conn.execute("DROP TRIGGER stored_value_not_negative")
    db.table("account_auths").create(
        {
            "id": str,
            "book": str,
            "kind": str,
            "account": str,
            "amount": int,
            "currency": str,
            "sale_id": str,
            "actor": str,
            "created_at": str,
            "state": str,
            "settled_at": str,
            "journal_seq": int,
        },
        pk="id",
        not_null={"book", "account", "amount", "sale_id", "created_at", "state"},
        foreign_keys=[("journal_seq", "journal", "seq")],
    )
    db.table("account_auths").create_index(["state", "sale_id"])
    conn.execute(
        "CREATE TRIGGER account_auths_new_pending BEFORE INSERT ON account_auths WHEN NEW.state != 'pending' "
        "BEGIN SELECT RAISE(ABORT, 'account_auths: an authorisation starts pending'); END"
    )
    conn.execute(
        "CREATE TRIGGER account_auths_settled_once BEFORE UPDATE ON account_auths "
        "WHEN OLD.state != 'pending' OR NEW.state NOT IN ('consumed', 'reversed', 'refused') "
        "OR NEW.id IS NOT OLD.id OR NEW.book IS NOT OLD.book OR NEW.account IS NOT OLD.account "
        "OR NEW.amount IS NOT OLD.amount OR NEW.sale_id IS NOT OLD.sale_id "
        "BEGIN SELECT RAISE(ABORT, 'account_auths: a pending authorisation is settled once'); END"
    )
    conn.execute(
        "CREATE TRIGGER account_auths_no_delete BEFORE DELETE ON account_auths "
        "BEGIN SELECT RAISE(ABORT, 'account_auths is append-only'); END"
    )


def _v7_customers(conn: sqlite3.Connection) -> None:
    """Customers from the shop: identifiers, cache age and version; customer events can be redacted.

    Only ``tillbox.customer.created``/``updated`` outbox events may be changed, and only to their
    redacted form (``{"id", "redacted": true}``), so an erasure leaves no personal data on the till.
    """
    db = sqlite_utils.Database(conn)
    customers = db.table("customers")
    for column in ("card", "badge", "phone_key", "qr_sha256", "origin", "cached_at"):
        customers.add_column(column, str)
    customers.add_column("version", int)
    for column in ("card", "badge", "phone_key"):
        customers.create_index([column])
    conn.execute("UPDATE customers SET origin = 'till', cached_at = created_at WHERE erased_at IS NULL AND consent = 1")
    conn.execute("DROP TRIGGER outbox_immutable")
    conn.execute(
        "CREATE TRIGGER outbox_immutable BEFORE UPDATE OF seq, id, type, time, subject, journal_seq "
        "ON outbox BEGIN SELECT RAISE(ABORT, 'outbox events are immutable'); END"
    )
    conn.execute(
        "CREATE TRIGGER outbox_data_immutable BEFORE UPDATE OF data ON outbox "
        "WHEN OLD.type NOT IN ('tillbox.customer.created', 'tillbox.customer.updated') "
        "OR json_extract(NEW.data, '$.redacted') IS NOT 1 "
        "OR json_extract(NEW.data, '$.id') IS NOT json_extract(OLD.data, '$.id') "
        "BEGIN SELECT RAISE(ABORT, 'outbox events are immutable'); END"
    )


MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (
    _v1,
    _v2,
    _v3,
    _v4,
    _v5_orders,
    _v6_accounts,
    _v7_customers,
)
LATEST_VERSION = len(MIGRATIONS)
