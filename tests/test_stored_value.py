"""Store credit and gift cards: issued by returns, redeemed as tenders, atomic with the ledger."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from appliance.clock import FrozenClock
from appliance.config import parse_config
from appliance.errors import DeviceUnavailable, InputError, NotFound, SaleError, TenderError
from appliance.ledger import verify
from appliance.returns import ReturnRequest
from appliance.staff import Action, Approval
from appliance.stored_value import StoredValue
from appliance.till import Till, open_ledger, scripted_sale
from drivers.payment import SimulatedTerminal
from tests.conftest import open_shift

JUICE, BOOK = "5901234123457", "9780201379624"


@pytest.fixture
def credit_till(tmp_path: Path, clock: FrozenClock) -> Till:
    from appliance.demo import seed

    config = parse_config('[returns]\nrefund_to = "store_credit"\n')
    till = Till(config, open_ledger(config, tmp_path), clock=clock, terminal=SimulatedTerminal(), fast_hash=True)
    seed(till, tmp_path)
    open_shift(till)
    return till


def approval(till: Till) -> Approval:
    return Approval(Action.REFUND, "sue", None, till.clock.now() + timedelta(minutes=1))


def refund_lines(till: Till, number: int, *lines: int) -> dict[str, Any]:
    original = till.returns.find_sale(str(number))
    plan = till.returns.plan_receipted(original, [ReturnRequest(Decimal(1), line=n) for n in lines])
    doc, _ = till.refund(plan, approval(till))
    return doc


def test_return_to_store_credit_then_spend_it(credit_till: Till) -> None:
    till = credit_till
    done = scripted_sale(till, [BOOK, JUICE], [("cash", None)], cashier="ann")
    doc = refund_lines(till, done.committed.number, 1)
    [credit] = doc["refunds"]
    account = credit["reference"]
    assert credit["kind"] == "store_credit" and credit["amount"] == 349 and account.startswith("SC-")
    wallet = StoredValue(till.ledger, "EUR")
    assert wallet.balance(account) == 349
    # spend part of it on a new sale, the rest in cash
    sale = till.new_sale("ann")
    till.scan(sale, JUICE)
    till.scan(sale, JUICE)  # 3.98
    tender = till.pay_stored_value(sale, account.lower())
    assert (tender.kind, tender.amount, tender.reference) == ("store_credit", 349, account)
    with pytest.raises(TenderError, match="no balance left"):
        till.pay_stored_value(sale, account)
    sale.pay_cash(sale.cash_due())
    till.complete(sale)
    assert wallet.balance(account) == 0
    moves = [json.loads(e.data) for e in till.ledger.outbox(limit=100) if e.type == "tillbox.stored_value.moved"]
    assert [(m["delta"], m["balance"], m["reason"]) for m in moves] == [(349, 349, "return"), (-349, 0, "sale")]
    assert verify(till.ledger).ok


def test_balance_is_checked_again_when_the_sale_commits(credit_till: Till) -> None:
    till = credit_till
    done = scripted_sale(till, [JUICE], [("cash", None)], cashier="ann")
    account = refund_lines(till, done.committed.number, 1)["refunds"][0]["reference"]
    first, second = till.new_sale("ann"), till.new_sale("ann")
    for sale in (first, second):
        till.scan(sale, JUICE)
        till.pay_stored_value(sale, account)  # both see 1.99 available before either commits
    till.complete(first)
    head = till.ledger.head()
    with pytest.raises(TenderError, match="has only 0"):
        till.complete(second)
    assert till.ledger.head() == head  # the second sale left nothing behind
    assert second.state == "open"  # and can be paid another way
    second.tenders.clear()
    second.pay_cash(second.cash_due())
    till.complete(second)
    assert StoredValue(till.ledger, "EUR").balance(account) == 0


def test_unknown_account(credit_till: Till) -> None:
    sale = credit_till.new_sale("ann")
    credit_till.scan(sale, JUICE)
    with pytest.raises(NotFound, match="no store credit or gift card SC-NOPE"):
        credit_till.pay_stored_value(sale, "SC-NOPE")


def test_refund_goes_back_onto_the_card_used(demo_till: Till) -> None:
    """With refund_to = original, a sale paid by store credit is refunded onto that same account."""
    from appliance.stored_value import move

    with demo_till.ledger.transaction() as tx:
        entry = tx.journal("test.seed", {}, time="t")
        move(tx, "gift_card", "GC-TEST-0001", 1_000, time="t", reason="sold", ref="x", journal_seq=entry.seq,
             currency="EUR")  # fmt: skip
    sale = demo_till.new_sale("ann")
    demo_till.scan(sale, BOOK)
    demo_till.pay_stored_value(sale, "GC-TEST-0001")
    done = demo_till.complete(sale)
    wallet = StoredValue(demo_till.ledger, "EUR")
    assert wallet.balance("GC-TEST-0001") == 651
    doc = refund_lines(demo_till, done.committed.number, 1)
    assert doc["refunds"] == [{"kind": "gift_card", "amount": 349, "reference": "GC-TEST-0001",
                               "original_reference": "GC-TEST-0001"}]  # fmt: skip
    assert wallet.balance("GC-TEST-0001") == 1_000
    assert verify(demo_till.ledger).ok


# -- with a shop: offline limits, gift card lines, voids (docs/accounts.md) ----------------------------

OFFLINE_CONFIG = """
[stored_value]
offline_limit_per_card = "10.00"
offline_limit_per_till = "15.00"
"""


@pytest.fixture
def offline_till(tmp_path: Path, clock: FrozenClock) -> Iterator[Till]:
    """A till whose sync service is not connected: every question to the shop fails at once, as offline."""
    from appliance.demo import seed
    from sync.service import SyncService, settings_from_config

    config = parse_config(OFFLINE_CONFIG)
    till = Till(config, open_ledger(config, tmp_path), clock=clock, terminal=SimulatedTerminal(), fast_hash=True)
    seed(till, tmp_path)
    open_shift(till)
    link = settings_from_config(config, tmp_path, ("mqtt://127.0.0.1:1",))
    svc = SyncService.from_config(config, tmp_path, link=link)  # never started: it is offline
    till.stored_value.remote = svc.request
    till.loyalty.remote = svc.request
    try:
        yield till
    finally:
        svc.close()
        till.ledger.close()


def _events(till: Till, kind: str = "tillbox.stored_value.moved") -> list[dict[str, Any]]:
    return [json.loads(e.data) for e in till.ledger.outbox(limit=1000) if e.type == kind]


def _auths(till: Till) -> dict[str, str]:
    return {str(i): str(st) for i, st in till.ledger.conn.execute("SELECT id, state FROM account_auths")}


def _valid_events(till: Till) -> None:
    from sync.contract import envelope
    from sync.schemas import validate

    for event in till.ledger.outbox(limit=1000):
        validate("cloudevent", json.loads(envelope(event, store="demo", device="till-1")))


def test_offline_a_card_is_redeemed_up_to_the_limit_per_card_and_per_till(offline_till: Till) -> None:
    till = offline_till
    first = till.new_sale("ann")
    for _ in range(4):
        till.scan(first, BOOK)  # 13.96
    tender = till.pay_stored_value(first, "gc-abcd-efgh")
    got = (tender.kind, tender.amount, tender.reference, tender.detail["mode"])
    assert got == ("gift_card", 1_000, "GC-ABCD-EFGH", "offline")
    with pytest.raises(TenderError, match=r"^the shop cannot be reached: at most 0\.00 more can be taken from "
                                          r"GC-ABCD-EFGH offline \(limit 10\.00 per card\)$"):  # fmt: skip
        till.pay_stored_value(first, "GC-ABCD-EFGH")
    first.pay_cash(first.cash_due())
    till.complete(first)
    # the refused attempt was written down before the shop was asked, so it is given back (the hub may have seen it)
    given_back, moved = _events(till)
    assert (given_back["op"], given_back["delta"], given_back["account"]) == ("reverse", 0, "GC-ABCD-EFGH")
    assert (moved["op"], moved["delta"], moved["mode"], moved["balance"]) == ("redeem", -1_000, "offline", None)
    assert moved["move_id"] == tender.detail["move"] and moved["staff"] == "ann"
    assert _auths(till) == {tender.detail["move"]: "consumed", given_back["reverses"]: "reversed"}

    second = till.new_sale("ann")
    till.scan(second, BOOK)
    till.scan(second, BOOK)  # 6.98: the till has 5.00 of its 15.00 left
    with pytest.raises(TenderError, match=r"this till can take at most 5\.00 more from gift cards and store credit "
                                          r"offline \(limit 15\.00\)"):  # fmt: skip
        till.pay_stored_value(second, "SC-ZZZZ-YYYY", 600)
    assert till.pay_stored_value(second, "SC-ZZZZ-YYYY").amount == 500  # as much as the limit allows
    with pytest.raises(TenderError, match="cannot be reached to check 12345678"):
        till.pay_stored_value(second, "12345678")  # no GC-/SC- prefix and never seen: its kind is unknown
    # acknowledged by the shop, the offline redemptions no longer count
    till.ledger.mark_acked(till.ledger.outbox(limit=1000)[-1].seq, "2026-03-02T10:00:00Z")
    assert till.stored_value.room("GC-ABCD-EFGH")[0] == 1_000
    _valid_events(till)


def test_offline_a_known_balance_caps_the_redemption_and_sales_are_checked_again_at_commit(offline_till: Till) -> None:
    till = offline_till
    till.stored_value.remember({"account": "GC-KNWN-0001", "kind": "gift_card", "balance": 300, "currency": "EUR"})
    sale = till.new_sale("ann")
    till.scan(sale, BOOK)
    with pytest.raises(TenderError, match=r"GC-KNWN-0001 had 3\.00 left when last seen"):
        till.pay_stored_value(sale, "GC-KNWN-0001", 349)
    assert till.pay_stored_value(sale, "GC-KNWN-0001").amount == 300
    # two open sales both take the whole per-card room; the second cannot commit
    a, b = till.new_sale("ann"), till.new_sale("ann")
    for s in (a, b):
        for _ in range(3):
            till.scan(s, BOOK)
        till.pay_stored_value(s, "GC-TWIN-0001", 1_000)
        s.pay_cash(s.cash_due())
    till.complete(a)
    head = till.ledger.head()
    with pytest.raises(TenderError, match=r"at most 0\.00 more can be taken from GC-TWIN-0001"):
        till.complete(b)
    assert till.ledger.head() == head and b.state == "open"


def test_offline_nothing_is_taken_when_the_limits_are_zero(tmp_path: Path) -> None:
    from appliance.stored_value import Limits, StoredValue

    config = parse_config("")
    with open_ledger(config, tmp_path) as ledger:
        wallet = StoredValue(ledger, "EUR", limits=Limits(0, 10_000))
        assert wallet.room("GC-AAAA-BBBB") == (0, "the shop cannot be reached and this till takes no gift cards or "
                                                  "store credit offline")  # fmt: skip


def test_a_gift_card_sold_in_a_sale_is_credited_only_when_the_sale_completes(credit_till: Till) -> None:
    till = credit_till
    sale = till.new_sale("ann")
    till.scan(sale, BOOK)
    line = till.sell_gift_card(sale, 2_500)
    code = line.scan.code if line.scan else ""
    assert code.startswith("GC-") and line.item.name == f"Gift card {code}"
    assert (line.tax, line.total, line.promo_discount) == (0, 2_500, 0)  # not taxed, no promotions
    with pytest.raises(NotFound):
        StoredValue(till.ledger, "EUR").get(code)  # not before the sale completes
    with pytest.raises(InputError, match="already in this sale"):
        till.sell_gift_card(sale, 1_000, code)
    with pytest.raises(InputError, match="store credit; only gift cards"):
        till.sell_gift_card(sale, 1_000, "SC-AAAA-BBBB")
    with pytest.raises(InputError, match=r"sold for 0\.01 to 500\.00"):
        till.sell_gift_card(sale, 50_001)
    voided = till.sell_gift_card(sale, 1_000, "GC-VOID-0001")
    sale.void_line(voided.no, till.clock.now())
    sale.pay_cash(sale.cash_due())
    done = till.complete(sale)
    assert StoredValue(till.ledger, "EUR").balance(code) == 2_500
    with pytest.raises(NotFound):
        StoredValue(till.ledger, "EUR").get("GC-VOID-0001")
    [moved] = _events(till)
    assert (moved["op"], moved["delta"], moved["balance"], moved["ref"]) == ("issue", 2_500, 2_500, done.doc["id"])
    # a top-up of the same card
    top = till.new_sale("ann")
    assert till.sell_gift_card(top, 1_000, code.lower()).item.name == f"Gift card top-up {code}"
    top.pay_cash(top.cash_due())
    till.complete(top)
    assert StoredValue(till.ledger, "EUR").balance(code) == 3_500
    assert [m["op"] for m in _events(till)] == ["issue", "top_up"]
    # a gift card line is not refunded like goods
    with pytest.raises(SaleError, match="is a gift card; its value stays on the card"):
        till.returns.plan_receipted(till.returns.find_sale(str(done.committed.number)),
                                    [ReturnRequest(Decimal(1), line=2)])  # fmt: skip


def test_voiding_a_sale_reverses_its_offline_and_online_tenders(offline_till: Till) -> None:
    till = offline_till
    sale = till.new_sale("ann")
    till.scan(sale, BOOK)
    tender = till.pay_stored_value(sale, "GC-ABCD-EFGH")
    till.cancel(sale, actor="sue", reason="customer left")
    [reversal] = _events(till)
    got = (reversal["op"], reversal["delta"], reversal["reverses"], reversal["staff"])
    assert got == ("reverse", 0, tender.detail["move"], "sue")
    entry = till.ledger.entry(till.ledger.head()[0])
    assert entry is not None and entry.type == "stored_value.reversed" and entry.actor == "sue"
    assert till.stored_value.room("GC-ABCD-EFGH")[0] == 1_000  # never booked, so nothing is outstanding
    _valid_events(till)


def test_check_offline_uses_the_last_known_balance(offline_till: Till) -> None:
    wallet = offline_till.stored_value
    with pytest.raises(DeviceUnavailable, match="has no balance for GC-NEW1-0001"):
        wallet.check("GC-NEW1-0001")
    wallet.remember({"account": "GC-NEW1-0001", "kind": "gift_card", "balance": -250, "currency": "EUR"})
    seen = wallet.check("gc-new1-0001")
    assert (seen.balance, seen.source, seen.known_at) == (-250, "till", "2026-03-02T09:30:00.000Z")
    with pytest.raises(InputError, match="not a gift card or store credit number"):
        wallet.check("GC 1")


# -- pending authorisations: written before the shop is asked, settled once (docs/accounts.md) ------


def test_a_redemption_is_written_down_before_the_shop_is_asked_and_settled_once(offline_till: Till) -> None:
    import sqlite3

    till = offline_till
    wallet = till.stored_value
    sale = till.new_sale("ann")
    till.scan(sale, BOOK)
    r = wallet.plan(sale, "gc-abcd-efgh")
    row = till.ledger.conn.execute("SELECT book, kind, account, amount, currency, sale_id, actor, state "
                                   "FROM account_auths WHERE id = ?", (r.move_id,)).fetchone()  # fmt: skip
    assert row == ("stored_value", "gift_card", "GC-ABCD-EFGH", 349, "EUR", sale.id, "ann", "pending")
    tender = wallet.tender(sale, r, wallet.ask(r))  # the shop cannot be reached: taken offline, same id
    assert tender.detail == {"move": r.move_id, "mode": "offline"}
    assert _auths(till) == {r.move_id: "pending"}
    done = till.complete(sale)
    assert _auths(till) == {r.move_id: "consumed"}
    settled = till.ledger.conn.execute("SELECT journal_seq FROM account_auths WHERE id = ?", (r.move_id,)).fetchone()
    assert settled == (done.committed.journal.seq,)
    assert [e["op"] for e in _events(till)] == ["redeem"]  # consumed: nothing is given back
    with pytest.raises(sqlite3.DatabaseError, match="settled once"):
        till.ledger.conn.execute("UPDATE account_auths SET state = 'reversed' WHERE id = ?", (r.move_id,))
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        till.ledger.conn.execute("DELETE FROM account_auths")
    # a till without a shop asks no one: nothing to write down
    wallet.remote = None
    sale = till.new_sale("ann")
    till.scan(sale, BOOK)
    wallet.plan(sale, "GC-ABCD-EFGH")
    assert len(_auths(till)) == 1


def test_what_a_lost_sale_took_is_given_back_at_the_next_start(offline_till: Till) -> None:
    till = offline_till
    lost, done, parked = (till.new_sale("ann") for _ in range(3))
    for sale in (lost, done, parked):
        till.scan(sale, BOOK)
    taken = till.pay_stored_value(lost, "GC-LOST-0001")  # the till dies before this sale completes
    paid = till.pay_stored_value(done, "GC-DONE-0001")
    till.complete(done)
    asked = till.stored_value.plan(parked, "GC-PARK-0001")  # asked, then the sale was parked unpaid
    till.suspend(parked)
    assert _auths(till)[asked.move_id] == "reversed"  # a parked sale keeps nothing taken at the shop
    # a parked (resumable) sale's hold is not touched by the restart
    from appliance.stored_value import Hold

    parked_hold = Hold("0195a3e2-6a00-7abc-8def-00000000aaaa", "stored_value", "gift_card", "GC-PARK-0002", 100,
                       "EUR", parked.id, "ann")  # fmt: skip
    till.stored_value.holds.open(parked_hold, time="2026-03-02T09:31:00.000Z")

    restarted = Till(till.config, till.ledger, clock=till.clock, fast_hash=True)  # the open sale is gone
    [rid] = restarted.recover_accounts()
    back = _events(till)[-1]
    assert (back["move_id"], back["op"], back["reverses"], back["account"], back["reason"], back["ref"]) == (
        rid, "reverse", taken.detail["move"], "GC-LOST-0001", "lost", lost.id)  # fmt: skip
    entry = till.ledger.entry(till.ledger.head()[0])
    assert entry is not None and entry.type == "stored_value.reversed" and entry.actor == "ann"
    assert json.loads(entry.payload)["holds"] == [{"move": taken.detail["move"], "account": "GC-LOST-0001",
                                                   "amount": 349}]  # fmt: skip
    assert _auths(till) == {taken.detail["move"]: "reversed", paid.detail["move"]: "consumed",
                            asked.move_id: "reversed", parked_hold.move_id: "pending"}  # fmt: skip
    assert restarted.recover_accounts() == []  # once
    assert till.stored_value.room("GC-LOST-0001")[0] == 1_000  # never booked, so nothing is outstanding
    assert verify(till.ledger).ok
    _valid_events(till)


def test_a_redemption_the_shop_refused_is_not_given_back(offline_till: Till) -> None:
    till = offline_till
    wallet = till.stored_value
    sale = till.new_sale("ann")
    till.scan(sale, BOOK)
    r = wallet.plan(sale, "GC-ABCD-EFGH")
    wallet.holds.refused(r.move_id)  # as ask() notes an answer "declined" or "not found": the shop took nothing
    till.cancel(sale, actor="ann", reason="customer left")
    assert _auths(till) == {r.move_id: "refused"}
    assert _events(till) == []
