"""The ledger: durability settings, append-only journal, hash chain, outbox, bad files."""

from __future__ import annotations

import json
import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest

from appliance.errors import LedgerCorrupt, LedgerError, LedgerTooNew, StorageFull
from appliance.ledger import Ledger, NewEvent, genesis_hash, verify
from appliance.ledger.schema import APPLICATION_ID, LATEST_VERSION
from appliance.till import Till, scripted_sale

T = "2026-03-02T09:30:00.000Z"


def _sale(till: Till, *codes: str) -> int:
    return scripted_sale(till, codes or ("4006381333931",), [("cash", None)], cashier="ann").committed.number


def _raw(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA foreign_keys = OFF")
    return conn


def _drop_guards(conn: sqlite3.Connection) -> None:
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        conn.execute(f"DROP TRIGGER {name}")


def test_new_ledger_is_durable_and_tagged(ledger: Ledger) -> None:
    c = ledger.conn
    assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert c.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert c.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert c.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert ledger.schema_version == LATEST_VERSION
    assert ledger.head() == (0, genesis_hash("demo", "till-1"))


def test_genesis_depends_on_device() -> None:
    assert genesis_hash("s", "a") != genesis_hash("s", "b")
    assert genesis_hash("s", "a") != genesis_hash("t", "a")


def test_journal_entries_chain(ledger: Ledger) -> None:
    first = ledger.append("note", {"text": "hello"}, time=T, actor="ann")
    second = ledger.append("note", {"text": "again"}, time=T)
    assert (first.seq, second.seq) == (1, 2)
    assert first.prev_hash == ledger.genesis
    assert second.prev_hash == first.hash
    assert ledger.head() == (2, second.hash)
    assert verify(ledger).ok


def test_journal_is_append_only(ledger: Ledger) -> None:
    ledger.append("note", {"n": 1}, time=T)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        ledger.conn.execute("UPDATE journal SET payload = '{}' WHERE seq = 1")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        ledger.conn.execute("DELETE FROM journal")
    with pytest.raises(sqlite3.IntegrityError, match="gapless"):
        ledger.conn.execute(
            "INSERT INTO journal(seq, time, type, payload, prev_hash, hash) VALUES (5, 't', 'x', '{}', 'a', 'b')"
        )
    assert verify(ledger).ok


def test_payload_is_canonical_and_float_free(ledger: Ledger) -> None:
    entry = ledger.append("note", {"b": 1, "a": "ü"}, time=T)
    assert entry.payload == '{"a":"ü","b":1}'
    with pytest.raises(TypeError, match="float"):
        ledger.append("note", {"price": 1.99}, time=T)
    assert ledger.head()[0] == 1  # the refused entry left nothing behind


def test_correction_references_original(ledger: Ledger) -> None:
    original = ledger.append("price.set", {"sku": "1", "price": 100}, time=T)
    fix = ledger.append("price.corrected", {"sku": "1", "price": 110}, time=T, ref_seq=original.seq)
    assert fix.ref_seq == original.seq
    with pytest.raises(LedgerError):
        ledger.append("bad.ref", {}, time=T, ref_seq=99)
    assert verify(ledger).ok


def test_sale_writes_rows_stock_journal_and_events_together(demo_till: Till) -> None:
    led = demo_till.ledger
    before = led.stock_level("1001")
    done = scripted_sale(
        demo_till, ["4006381333931", "4006381333931", "5901234123457"], [("card", None)], cashier="ann"
    )
    assert done.committed.number == 1
    assert led.stock_level("1001") == before - 2
    events = [e for e in led.outbox(limit=10) if e.type != "tillbox.shift.opened"]
    assert [e.type for e in events] == [
        "tillbox.sale.completed",
        "tillbox.stock.moved",
        "tillbox.ledger.head",
    ]
    assert [e.seq for e in events] == [2, 3, 4]  # 1 is the shift opening
    sale_event = json.loads(events[0].data)
    assert sale_event["id"] == done.committed.sale_id
    assert sale_event["total"] == done.doc["total"]
    head = json.loads(events[2].data)
    assert head == {"seq": done.committed.journal.seq, "hash": done.committed.journal.hash}
    assert verify(led).ok


def test_weighed_item_stock_moves_in_kg(demo_till: Till) -> None:
    sale = demo_till.new_sale("ann")
    demo_till.scan(sale, "4011", quantity=Decimal("0.734"))
    sale.pay_cash(sale.cash_due())
    demo_till.complete(sale)
    assert demo_till.ledger.stock_level("2001") == Decimal("-0.734")


def test_failed_sale_commit_leaves_nothing(demo_till: Till) -> None:
    led = demo_till.ledger
    sale = demo_till.new_sale("ann")
    demo_till.scan(sale, "4006381333931")
    sale.pay_cash(500)
    doc = sale.complete(demo_till.clock.now())
    doc["lines"][0]["sku"] = None  # violates NOT NULL half-way through the transaction
    with pytest.raises(LedgerError):
        led.commit_sale(doc)
    assert led.sale_count() == 0
    assert led.head()[0] == 2  # only the catalog import and the shift opening
    assert [e.type for e in led.outbox()] == ["tillbox.shift.opened"]
    assert led.stock_level("1001") == 0


def test_outbox_ack_and_retention(demo_till: Till) -> None:
    led = demo_till.ledger
    _sale(demo_till)
    _sale(demo_till)
    assert len(led.outbox()) == 7  # shift opened + 2 sales of 3 events
    led.mark_published([1, 2], T)
    with pytest.raises(sqlite3.IntegrityError, match="unacknowledged"):
        led.conn.execute("DELETE FROM outbox WHERE seq = 1")
    with pytest.raises(sqlite3.IntegrityError, match="immutable"):
        led.conn.execute("UPDATE outbox SET data = '{}' WHERE seq = 1")
    assert led.mark_acked(4, T) == 4
    assert [e.seq for e in led.outbox()] == [5, 6, 7]
    assert led.prune_outbox("2026-03-02T09:00:00.000Z") == 0  # acked after the cut-off: kept
    assert led.prune_outbox("2026-03-03T00:00:00.000Z") == 4
    assert [e.seq for e in led.outbox(unacked_only=False)] == [5, 6, 7]
    _sale(demo_till)
    assert [e.seq for e in led.outbox()] == [5, 6, 7, 8, 9, 10]  # the sequence never restarts


def test_emit_inside_transaction_is_gap_free(ledger: Ledger) -> None:
    with ledger.transaction() as tx:
        entry = tx.journal("x", {}, time=T)
        assert tx.emit(NewEvent("t", {}), time=T, journal_seq=entry.seq) == 1
        assert tx.emit(NewEvent("t", {}), time=T, journal_seq=entry.seq) == 2

    def aborted() -> None:
        with ledger.transaction() as tx:
            tx.emit(NewEvent("t", {}), time=T, journal_seq=None)
            raise RuntimeError("abort")

    with pytest.raises(RuntimeError):
        aborted()
    with ledger.transaction() as tx:
        assert tx.emit(NewEvent("t", {}), time=T, journal_seq=None) == 3


def test_verify_names_altered_entry(demo_till: Till, tmp_path: Path) -> None:
    for _ in range(3):
        _sale(demo_till)
    path = demo_till.ledger.path
    conn = _raw(path)
    _drop_guards(conn)
    conn.execute("UPDATE journal SET payload = replace(payload, '\"cashier\":\"ann\"', '\"cashier\":\"bob\"') "
                 "WHERE seq = 3")  # fmt: skip
    conn.close()
    report = verify(demo_till.ledger)
    assert not report.ok
    assert report.first_bad_seq == 3
    assert "journal entry 3" in report.errors[0] and "altered" in report.errors[0]


def test_verify_names_deleted_entry(demo_till: Till) -> None:
    for _ in range(3):
        _sale(demo_till)
    conn = _raw(demo_till.ledger.path)
    _drop_guards(conn)
    conn.execute("DELETE FROM journal WHERE seq = 2")
    conn.close()
    report = verify(demo_till.ledger)
    assert report.first_bad_seq == 2
    assert "entry 2 is missing" in report.errors[0]


def test_verify_detects_reordering(demo_till: Till) -> None:
    for _ in range(3):
        _sale(demo_till)
    conn = _raw(demo_till.ledger.path)
    _drop_guards(conn)
    rows = conn.execute("SELECT seq, payload, hash, prev_hash FROM journal WHERE seq IN (2, 3)").fetchall()
    conn.execute("UPDATE journal SET seq = -1 WHERE seq = 2")
    conn.execute("UPDATE journal SET seq = 2 WHERE seq = 3")
    conn.execute("UPDATE journal SET seq = 3 WHERE seq = -1")
    conn.close()
    assert len(rows) == 2
    report = verify(demo_till.ledger)
    assert report.first_bad_seq == 2


def test_verify_detects_sale_rows_disagreeing_with_journal(demo_till: Till) -> None:
    _sale(demo_till)
    _sale(demo_till)
    conn = _raw(demo_till.ledger.path)
    _drop_guards(conn)
    conn.execute("UPDATE sales SET total = total - 1 WHERE number = 2")
    conn.close()
    report = verify(demo_till.ledger)
    assert not report.ok
    assert "sale 2" in report.errors[0] and "total" in report.errors[0]


def test_verify_detects_missing_sale_row(demo_till: Till) -> None:
    _sale(demo_till)
    conn = _raw(demo_till.ledger.path)
    _drop_guards(conn)
    conn.execute("DELETE FROM sale_tenders")
    conn.execute("DELETE FROM sale_lines")
    conn.execute("DELETE FROM stock_moves")
    conn.execute("DELETE FROM sales")
    conn.close()
    report = verify(demo_till.ledger)
    assert "1 sales in the journal but 0 sale rows; first is journal entry 3" in report.errors[0]


def test_verify_detects_altered_line(demo_till: Till) -> None:
    _sale(demo_till, "4006381333931", "5901234123457")
    conn = _raw(demo_till.ledger.path)
    _drop_guards(conn)
    conn.execute("UPDATE sale_lines SET qty = '2' WHERE line_no = 2")
    conn.close()
    assert "line 2 differs" in verify(demo_till.ledger).errors[0]


def test_foreign_sqlite_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE songs(title TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(LedgerCorrupt, match="another program"):
        Ledger(path, store_id="demo", device_id="till-1")
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA application_id = 1234")
    conn.commit()
    conn.close()
    with pytest.raises(LedgerCorrupt, match="not a tillbox ledger"):
        Ledger(path, store_id="demo", device_id="till-1")


def test_garbage_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    path.write_bytes(b"this is not a database at all" * 200)
    with pytest.raises(LedgerCorrupt):
        Ledger(path, store_id="demo", device_id="till-1")
    assert path.read_bytes().startswith(b"this is not")  # untouched


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    Ledger(path, store_id="demo", device_id="till-1").close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {LATEST_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(LedgerTooNew, match="newer than this tillbox"):
        Ledger(path, store_id="demo", device_id="till-1")


def test_ledger_of_another_device_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    Ledger(path, store_id="demo", device_id="till-1").close()
    with pytest.raises(LedgerCorrupt, match="belongs to store 'demo' device 'till-1'"):
        Ledger(path, store_id="demo", device_id="till-2")


def test_reopen_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with Ledger(path, store_id="s", device_id="d") as led:
        led.append("note", {"n": 1}, time=T)
        head = led.head()
    with Ledger(path, store_id="s", device_id="d") as led:
        assert led.head() == head
        assert verify(led).ok


def test_full_disk_is_a_clear_error_and_loses_nothing(demo_till: Till) -> None:
    led = demo_till.ledger
    _sale(demo_till)
    head = led.head()
    pages = led.conn.execute("PRAGMA page_count").fetchone()[0]
    led.conn.execute(f"PRAGMA max_page_count = {pages}")
    big = {"blob": "x" * 200_000}
    with pytest.raises(StorageFull, match="disk is full"):
        led.append("note", big, time=T)
    assert led.head() == head
    led.conn.execute("PRAGMA max_page_count = 1073741823")
    _sale(demo_till)
    assert led.sale_count() == 2
    assert verify(led).ok


def test_old_schema_is_migrated_in_place(tmp_path: Path) -> None:
    from appliance.ledger import schema

    path = tmp_path / "ledger.db"
    conn = sqlite3.connect(path, isolation_level=None)  # a file as tillbox 0.1 (schema 1) left it
    conn.execute("BEGIN")
    schema.MIGRATIONS[0](conn)
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", [("store_id", "s"), ("device_id", "d")])
    conn.execute("PRAGMA user_version = 1")
    conn.execute("COMMIT")
    conn.close()
    with Ledger(path, store_id="s", device_id="d") as led:
        assert led.schema_version == schema.LATEST_VERSION
        assert led.conn.execute("SELECT count(*) FROM alerts").fetchone()[0] == 0
        led.append("note", {"n": 1}, time=T)
        assert verify(led).ok
