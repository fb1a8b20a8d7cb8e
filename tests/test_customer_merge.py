# ruff: noqa: F811  (the shop fixture imported from test_omni_accounts is requested by name)
"""Merging duplicate customers at the hub: record, points, cards, history, lookups, tills' caches, later sales.

A real Mosquitto, the reference hub and two tills (the fixture of tests/test_omni_accounts.py).
"""

from __future__ import annotations

import sqlite3
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from appliance.customers import HISTORY, LOOKUP
from appliance.errors import InputError, NotFound
from appliance.staff import Action, Approval
from sync.hub import Hub
from sync.hub_accounts import LOYALTY
from sync.hub_customers import ALERT_DUPLICATE
from sync.link import LinkSettings
from sync.testing import wait_until
from tests.test_customer_history import _buy, _connect, _order, _rows
from tests.test_omni_accounts import Shop, _basket, _finish, shop  # noqa: F401  (fixture)


def now() -> datetime:
    return datetime.now(UTC)


def _cached(shop: Shop, i: int, customer_id: str) -> bool:
    """Whether till ``i`` keeps a row of the customer (read on a fresh connection)."""
    with sqlite3.connect(shop.tills[i].ledger.path) as conn:
        row = conn.execute("SELECT 1 FROM customers WHERE id = ?", (customer_id,)).fetchone()
    conn.close()
    return row is not None


def _balance(hub: Hub, customer: str) -> int:
    """The hub's own points balance of an account (no mapping of merged ids)."""
    rows = hub.query("SELECT balance FROM acct_balances WHERE book = ? AND account = ?", (LOYALTY, customer))
    return int(rows[0][0]) if rows else 0


def _revoked(shop: Shop) -> dict[str, tuple[str, str | None]]:
    """The hub's revocations by customer id: (reason, merged_into)."""
    rows = shop.hub.query("SELECT r.id, r.reason, c.merged_into FROM customer_revocations r "
                          "LEFT JOIN customers c ON c.id = r.id")  # fmt: skip
    return {str(r[0]): (str(r[1]), r[2]) for r in rows}


def _answers_naming(hub: Hub, customer: str) -> int:
    """How many stored ``customer-history`` / ``customer-lookup`` answers mention the customer id."""
    rows = hub.query("SELECT count(*) FROM answers WHERE name IN (?, ?) AND instr(body, ?) > 0",
                     (HISTORY, LOOKUP, customer))  # fmt: skip
    return int(rows[0][0])


# -- the record -------------------------------------------------------------------------------------


def test_contact_fields_are_merged_without_overwriting_and_the_later_consent_wins(shop: Shop) -> None:
    hub = shop.hub.customers
    keep = hub.create("Kim Kept", email="kim@example.org")
    dup = hub.create("Kim K.", email="kim.k@example.org", phone="0171 5550111", card="2000 0000 0099 1",
                     badge="0a0b0c0d", consent=True)  # fmt: skip
    merged = hub.merge(keep["id"], dup["id"], actor="max")

    assert merged["id"] == keep["id"] and merged["name"] == "Kim Kept"
    assert merged["email"] == "kim@example.org"  # its own, not the duplicate's
    assert (merged["phone"], merged["card"], merged["badge"]) == ("0171 5550111", "2000000000991", "0A0B0C0D")
    assert merged["consent"] is True and merged["consent_at"] == dup["consent_at"]  # the only decision made
    assert merged["version"] > max(keep["version"], dup["version"])
    assert hub.get(keep["id"]) == merged
    assert hub.get(dup["id"]) is None and hub.merged_into(dup["id"]) == keep["id"]
    # the tombstone keeps no personal data, and says where the customer went
    tomb = shop.hub.query("SELECT name, email, phone, card, badge, consent, erased_at, merged_into FROM customers "
                          "WHERE id = ?", (dup["id"],))  # fmt: skip
    assert tomb == [(None, None, None, None, None, 0, None, keep["id"])]
    [audit] = shop.hub.query("SELECT keep, duplicate, actor, at FROM customer_merges")
    assert audit[:3] == (keep["id"], dup["id"], "max") and audit[3]

    # the more recent decision wins: the kept customer withdrew after the duplicate consented
    ann = hub.create("Ann Old", email="ann@example.org", consent=True)
    later = hub.create("Ann New", phone="030 555 1212", consent=True)
    hub.set_consent(ann["id"], False)
    kept = hub.merge(later["id"], ann["id"])
    assert kept["consent"] is False and kept["email"] == "ann@example.org"
    entries = _revoked(shop)
    assert entries[ann["id"]] == ("merged", later["id"])
    assert entries[later["id"]][0] == "withdrawn"  # tills drop the kept record they cached with consent


def test_refusals(shop: Shop) -> None:
    hub = shop.hub.customers
    a, b, c = (hub.create(n)["id"] for n in ("Al One", "Bo Two", "Cy Three"))
    with pytest.raises(InputError, match="into themselves"):
        hub.merge(a, a)
    with pytest.raises(NotFound, match="no customer nobody-1"):
        hub.merge(a, "nobody-1")
    with pytest.raises(NotFound, match="no customer nobody-2"):
        hub.merge("nobody-2", a)
    hub.erase(c)
    with pytest.raises(NotFound, match="is erased"):
        hub.merge(a, c)
    with pytest.raises(NotFound, match="is erased"):
        hub.merge(c, a)
    hub.merge(a, b)
    with pytest.raises(InputError, match=f"{b} was merged into {a}"):
        hub.merge(a, b)
    with pytest.raises(InputError, match=f"{b} was merged into {a}"):
        hub.merge(b, a)
    with pytest.raises(InputError, match="was merged into"):
        hub.update(b, name="Bo Again")
    with pytest.raises(InputError, match="was merged into"):
        hub.set_consent(b, True)
    assert len(shop.hub.query("SELECT * FROM customer_merges")) == 1  # the refusals changed nothing


# -- points and cards -------------------------------------------------------------------------------


def test_points_move_as_an_audit_pair_and_cards_point_to_the_kept_customer(shop: Shop) -> None:
    hub, accounts = shop.hub.customers, shop.hub.accounts
    keep = hub.create("Pia Points", email="pia@example.org")["id"]
    dup = hub.create("Pia P.", phone="0171 5550222")["id"]
    accounts.earn_points(keep, 30, ref="web-1")
    accounts.earn_points(dup, 150, ref="web-2")
    earned = accounts.redeem_points(dup, 30, ref="web-3")
    accounts.link_card("LC-0777", dup)
    before = _balance(shop.hub, keep) + _balance(shop.hub, dup)

    hub.merge(keep, dup, actor="max")
    assert (_balance(shop.hub, keep), _balance(shop.hub, dup)) == (150, 0)
    assert _balance(shop.hub, keep) + _balance(shop.hub, dup) == before
    out, into = accounts.moves(dup, LOYALTY)[-1], accounts.moves(keep, LOYALTY)[-1]
    assert (out["op"], out["delta"], out["balance"]) == ("merge_out", -120, 0)
    assert (into["op"], into["delta"], into["balance"]) == ("merge_in", 120, 150)
    [merge_id] = shop.hub.query("SELECT id FROM customer_merges")[0]
    assert out["ref"] == into["ref"] == merge_id
    assert shop.hub.query("SELECT staff FROM acct_moves WHERE ref = ?", (merge_id,)) == [("max",), ("max",)]

    # the card and the old id now stand for the kept customer
    assert shop.hub.query("SELECT customer FROM loyalty_cards") == [(keep,)]
    assert accounts.points("LC-0777") == {"customer": keep, "points": 150}
    assert accounts.points(dup) == {"customer": keep, "points": 150}
    assert accounts.redeem_points("LC-0777", 50)["customer"] == keep
    # undoing a redemption made under the old id gives the points to the kept customer
    back = accounts.reverse(earned["move_id"])
    assert (back["customer"], back["delta"], back["balance"]) == (keep, 30, 130)
    with pytest.raises(InputError, match="cannot be reversed"):
        accounts.reverse(into["id"])  # the merge itself is not undone point by point
    assert _balance(shop.hub, dup) == 0


# -- purchase history and lookups -------------------------------------------------------------------


def test_purchase_history_is_merged_newest_first_and_the_old_id_finds_the_kept_customer(shop: Shop) -> None:
    _connect(shop)
    a, b = shop.tills
    keep = shop.hub.customers.create("Hal Kept", email="hal@example.org", consent=True)["id"]
    dup = shop.hub.customers.create("Hal Dup", phone="0171 5550333", consent=True)["id"]
    qr = shop.hub.customers.app_token(dup)  # the app of the duplicate record
    first = _buy(shop, 0, dup, units=1)
    second = _buy(shop, 1, keep, units=2)
    _order(shop.hub, "web-71", dup)
    third = _buy(shop, 0, keep, units=1)
    asked = b.customers.history(dup)  # stored as the answer of its request
    assert [p.sale_id for p in asked.purchases] == ["web-71", first.committed.sale_id]
    assert b.customers.identify(dup, now=now()).id == dup  # a stored lookup answer naming the duplicate
    assert _answers_naming(shop.hub, dup) >= 2

    shop.hub.customers.merge(keep, dup)
    assert _answers_naming(shop.hub, dup) == 0
    assert shop.hub.query("SELECT count(*) FROM customer_purchases WHERE customer = ?", (dup,)) == [(0,)]
    history = a.customers.history(keep)
    assert [p.sale_id for p in history.purchases] == [third.committed.sale_id, "web-71", second.committed.sale_id,
                                                      first.committed.sale_id]  # fmt: skip
    assert [p.time for p in history.purchases] == sorted((p.time for p in history.purchases), reverse=True)
    assert b.customers.history(dup).customer == keep  # a till asking with the old id gets the kept history
    assert _rows(b.customers.history(dup)) == _rows(history)

    # the old id, the app's old QR code and the duplicate's phone all find the kept record
    for token in (dup, qr, "0171 5550333"):
        found = b.customers.identify(token, now=now())
        assert (found.id, found.name, found.email, found.phone) == (keep, "Hal Kept", "hal@example.org",
                                                                     "0171 5550333"), token  # fmt: skip
    assert shop.hub.call(lambda: shop.hub.customers.resolve(dup)).result(10) == keep
    assert shop.hub.call(lambda: shop.hub.customers.resolve(qr)).result(10) == keep


# -- tills ------------------------------------------------------------------------------------------


def test_a_tills_cached_duplicate_is_dropped_when_the_revoked_document_arrives(shop: Shop) -> None:
    _connect(shop)
    b = shop.tills[1]
    keep = shop.hub.customers.create("Ola Kept", email="ola@example.org", consent=True)["id"]
    dup = shop.hub.customers.create("Ola Dup", phone="0171 5550444", consent=True)["id"]
    assert b.customers.identify("0171 5550444", now=now()).id == dup
    assert b.customers.identify("ola@example.org", now=now()).id == keep
    assert _cached(shop, 1, dup) and _cached(shop, 1, keep)  # both consented: till B keeps both

    shop.hub.customers.merge(keep, dup)
    assert wait_until(lambda: not _cached(shop, 1, dup), timeout=15)
    assert _cached(shop, 1, keep)  # the person is still there; the next lookup refreshes the record
    assert _revoked(shop)[dup] == ("merged", keep)
    refreshed = b.customers.identify(dup, now=now())
    assert (refreshed.id, refreshed.phone) == (keep, "0171 5550444")
    assert not _cached(shop, 1, dup)


def test_a_sale_made_offline_with_the_old_id_is_recorded_for_the_kept_customer(shop: Shop) -> None:
    a = shop.tills[0]  # not connected: it sells offline
    keep = shop.hub.customers.create("Uli Kept", email="uli@example.org")["id"]
    dup = shop.hub.customers.create("Uli Dup", phone="0171 5550555")["id"]
    shop.hub.accounts.earn_points(dup, 40)
    offline = _finish(a, _basket(a, 2, customer=dup))  # 9.98 earns 99 points at the till
    shop.hub.customers.merge(keep, dup)

    shop.connect(0)
    assert wait_until(lambda: shop.settled(0), timeout=15)
    assert shop.hub.query("SELECT customer FROM customer_purchases WHERE sale_id = ?",
                          (offline.committed.sale_id,)) == [(keep,)]  # fmt: skip
    assert (_balance(shop.hub, keep), _balance(shop.hub, dup)) == (40 + 99, 0)
    earn = [m for m in shop.hub.accounts.moves(keep, LOYALTY) if m["op"] == "earn"]
    assert [(m["delta"], m["device"]) for m in earn] == [(99, "till-1")]
    # a sale still open at the till with the old id attached completes just the same
    sale = _basket(a, 1, customer=dup)
    _finish(a, sale)
    assert wait_until(lambda: shop.settled(0), timeout=15)
    assert _balance(shop.hub, keep) == 40 + 99 + 49
    assert shop.hub.query("SELECT count(*) FROM customer_purchases WHERE customer = ?", (keep,)) == [(2,)]


def test_the_duplicate_alert_of_the_pair_is_resolved(shop: Shop) -> None:
    _connect(shop)
    a = shop.tills[0]
    known = shop.hub.customers.create("Vera Shop", email="vera@example.org")["id"]
    other = shop.hub.customers.create("Walt Shop", phone="0171 5550666")["id"]
    vera = a.customers.add("Vera Till", email="vera@example.org", consent=True, now=now())
    walt = a.customers.add("Walt Till", phone="0171/5550666", now=now())
    assert wait_until(lambda: len([x for x in shop.hub.alerts() if x[0] == ALERT_DUPLICATE]) == 2, timeout=15)
    [vera_alert] = [x for x in shop.hub.alerts() if x[1] == vera.id]
    assert known in vera_alert[2]

    shop.hub.customers.merge(known, vera.id, actor="max")
    left = [x for x in shop.hub.alerts() if x[0] == ALERT_DUPLICATE]
    assert [x[1] for x in left] == [walt.id]  # the other pair is still to be merged
    shop.hub.customers.merge(walt.id, other)  # either way round
    assert [x for x in shop.hub.alerts() if x[0] == ALERT_DUPLICATE] == []


def test_erasing_the_kept_customer_erases_the_merged_id_too(shop: Shop) -> None:
    _connect(shop)
    b = shop.tills[1]
    keep = shop.hub.customers.create("Xia Kept", email="xia@example.org")["id"]
    dup = shop.hub.customers.create("Xia Dup", phone="0171 5550777")["id"]
    assert b.customers.identify("0171 5550777", now=now()).id == dup  # held while served (no consent)
    shop.hub.customers.merge(keep, dup)
    # the till that still holds the old id erases the person
    b.customers.erase(dup, Approval(Action.ERASE_CUSTOMER, "max", None, now() + timedelta(minutes=1)), now())
    assert wait_until(lambda: shop.hub.customers.erased(keep) and shop.hub.customers.erased(dup), timeout=15)
    with pytest.raises(NotFound):
        b.customers.identify(dup, now=now())


def test_a_hub_database_from_before_merges_is_upgraded(tmp_path: Path) -> None:
    old = tmp_path / "hub"
    old.mkdir()
    with sqlite3.connect(old / "hub.db") as conn:
        conn.execute(
            "CREATE TABLE customers(id TEXT PRIMARY KEY, version INTEGER NOT NULL, name TEXT, email TEXT, phone TEXT, "
            "phone_key TEXT, card TEXT, badge TEXT, consent INTEGER NOT NULL DEFAULT 0, consent_at TEXT, "
            "qr_sha256 TEXT, origin TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL, erased_at TEXT)"
        )
        cid = str(uuid.uuid4())
        conn.execute("INSERT INTO customers(id, version, name, origin, created_at, updated_at) "
                     "VALUES (?, 1, 'Yan Old', 'shop', 'x', 'x')", (cid,))  # fmt: skip
    conn.close()
    hub = Hub(old, LinkSettings.from_urls(["mqtt://127.0.0.1:1"], "hub"))  # never started: no broker needed
    try:
        columns = {str(r[1]) for r in hub.db.execute("PRAGMA table_info(customers)")}
        assert "merged_into" in columns
        assert hub.db.execute("SELECT name, merged_into FROM customers WHERE id = ?", (cid,)).fetchone() == (
            "Yan Old", None)  # fmt: skip
    finally:
        hub.close()
