"""Store credit and gift cards: issued by returns, redeemed as tenders, atomic with the ledger."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from appliance.config import parse_config
from appliance.errors import NotFound, TenderError
from appliance.ledger import verify
from appliance.returns import ReturnRequest
from appliance.staff import Action, Approval
from appliance.stored_value import StoredValue
from appliance.till import Till, open_ledger, scripted_sale
from drivers.payment import SimulatedTerminal
from tests.conftest import open_shift

JUICE, BOOK = "5901234123457", "9780201379624"


@pytest.fixture
def credit_till(tmp_path: Path, clock) -> Till:  # type: ignore[no-untyped-def]
    from appliance.demo import seed

    config = parse_config('[returns]\nrefund_to = "store_credit"\n')
    till = Till(config, open_ledger(config, tmp_path), clock=clock, terminal=SimulatedTerminal(), fast_hash=True)
    seed(till, tmp_path)
    open_shift(till)
    return till


def approval(till: Till) -> Approval:
    return Approval(Action.REFUND, "sue", None, till.clock.now() + timedelta(minutes=1))


def refund_lines(till: Till, number: int, *lines: int) -> dict[str, object]:
    original = till.returns.find_sale(str(number))
    plan = till.returns.plan_receipted(original, [ReturnRequest(Decimal(1), line=n) for n in lines])
    doc, _ = till.refund(plan, approval(till))
    return doc


def test_return_to_store_credit_then_spend_it(credit_till: Till) -> None:
    till = credit_till
    done = scripted_sale(till, [BOOK, JUICE], [("cash", None)], cashier="ann")
    doc = refund_lines(till, done.committed.number, 1)
    [credit] = doc["refunds"]  # type: ignore[misc]
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
    account = refund_lines(till, done.committed.number, 1)["refunds"][0]["reference"]  # type: ignore[index]
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
