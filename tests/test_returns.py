"""Receipted and no-receipt returns, exchanges, refund limits, customers and receipts."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.canonical import canonical_json
from appliance.errors import InputError, NotFound, SaleError
from appliance.ledger import verify
from appliance.receipt import render_text
from appliance.returns import ReturnRequest, parse_reference, sale_reference
from appliance.sale import Discount
from appliance.staff import Action, Approval, AuthError
from appliance.till import Completed, Till, scripted_sale
from drivers.payment import SimulatedTerminal

WATER, JUICE, BOOK, MILK = "4006381333931", "5901234123457", "9780201379624", "4012345678901"


def ok(till: Till, action: Action, actor: str = "sue", approver: str | None = None) -> Approval:
    return Approval(action, actor, approver, till.clock.now() + timedelta(minutes=1))


def refund(till: Till, done: Completed, *lines: tuple[int, str], disposition: str = "restock"):  # type: ignore[no-untyped-def]
    original = till.returns.find_sale(sale_reference("till-1", done.committed.number))
    reqs = [ReturnRequest(qty=Decimal(q), line=n, disposition=disposition) for n, q in lines]  # type: ignore[arg-type]
    return till.refund(till.returns.plan_receipted(original, reqs), ok(till, Action.REFUND))


def test_reference_round_trip() -> None:
    ref = sale_reference("till-1", 42)
    assert ref == "TB-till-1-000042"
    assert parse_reference(ref) == ("till-1", 42)
    assert parse_reference("something") is None


def test_full_return_refunds_exactly_what_was_paid(demo_till: Till) -> None:
    done = scripted_sale(demo_till, [JUICE, BOOK], [("cash", None)], cashier="ann")
    doc, receipt = refund(demo_till, done, (1, "1"), (2, "1"))
    assert doc["total"] == done.doc["total"] == 548
    assert doc["tax"] == done.doc["tax"]
    assert doc["refunds"] == [{"kind": "cash", "amount": 548, "reference": None}]
    assert demo_till.ledger.stock_level("1002") == 0  # sold one, returned one
    assert receipt.title == "RETURN" and receipt.total == -548
    assert "Return of receipt TB-till-1-000001" in render_text(receipt)
    assert verify(demo_till.ledger).ok


def test_partial_return_of_discounted_multibuy(demo_till: Till) -> None:
    done = scripted_sale(demo_till, [WATER, WATER, WATER], [("cash", None)], cashier="ann")  # 3 for 2: 1.58
    paid = [ln["total"] for ln in done.doc["lines"]]
    assert sum(paid) == 158
    doc, _ = refund(demo_till, done, (2, "1"))
    assert doc["total"] == paid[1]  # the price actually paid for that unit, not the shelf price
    doc2, _ = refund(demo_till, done, (1, "1"), (3, "1"))
    assert doc["total"] + doc2["total"] == 158


def test_return_after_price_change_uses_the_price_paid(demo_till: Till, tmp_path: Path) -> None:
    from appliance.catalog_import import import_catalog

    done = scripted_sale(demo_till, [JUICE], [("cash", None)], cashier="ann")
    csv = tmp_path / "new.csv"
    csv.write_text("sku,name,price,barcode,tax_class\n1002,Orange Juice 1l,2.49,5901234123457,reduced\n")
    import_catalog(demo_till.ledger, csv, currency=demo_till.currency, tax_classes={"reduced"}, time="t")
    doc, _ = refund(demo_till, done, (1, "1"))
    assert doc["total"] == 199


def test_double_refund_is_refused(demo_till: Till) -> None:
    done = scripted_sale(demo_till, [JUICE], [("cash", None)], cashier="ann")
    refund(demo_till, done, (1, "1"))
    head = demo_till.ledger.head()
    with pytest.raises(SaleError, match="only 0 of 1 not yet refunded"):
        refund(demo_till, done, (1, "1"))
    assert demo_till.ledger.head() == head


def test_concurrent_plans_cannot_both_refund(demo_till: Till) -> None:
    done = scripted_sale(demo_till, [JUICE], [("cash", None)], cashier="ann")
    original = demo_till.returns.find_sale(str(done.committed.number))
    plan_a = demo_till.returns.plan_receipted(original, [ReturnRequest(Decimal(1), line=1)])
    plan_b = demo_till.returns.plan_receipted(original, [ReturnRequest(Decimal(1), line=1)])
    demo_till.refund(plan_a, ok(demo_till, Action.REFUND))
    with pytest.raises(SaleError, match="already refunded"):
        demo_till.refund(plan_b, ok(demo_till, Action.REFUND))


def test_unknown_sale_and_lines(demo_till: Till) -> None:
    with pytest.raises(NotFound, match="no sale found for receipt TB-till-1-000099"):
        demo_till.returns.find_sale("TB-till-1-000099")
    done = scripted_sale(demo_till, [JUICE], [("cash", None)], cashier="ann")
    original = demo_till.returns.find_sale(done.committed.sale_id)
    with pytest.raises(NotFound, match="no line 7"):
        demo_till.returns.plan_receipted(original, [ReturnRequest(Decimal(1), line=7)])
    with pytest.raises(InputError, match="positive"):
        demo_till.returns.plan_receipted(original, [ReturnRequest(Decimal(0), line=1)])


def test_split_tender_refund_goes_back_to_card_first(demo_till: Till) -> None:
    done = scripted_sale(demo_till, [BOOK, BOOK], [("cash", 200), ("card", None)], cashier="ann")  # 6.98
    doc, _ = refund(demo_till, done, (1, "1"), (2, "1"))
    card_ref = done.doc["tenders"][1]["reference"]
    assert doc["refunds"][0]["kind"] == "card" and doc["refunds"][0]["amount"] == 498
    assert doc["refunds"][0]["original_reference"] == card_ref
    assert doc["refunds"][1] == {"kind": "cash", "amount": 200, "reference": None}
    assert isinstance(demo_till.terminal, SimulatedTerminal)
    assert demo_till.terminal.history[-1][:3] == ("refund", 498, card_ref)


def test_card_refunds_never_exceed_the_card_payment(demo_till: Till) -> None:
    done = scripted_sale(demo_till, [BOOK, BOOK], [("cash", 500), ("card", None)], cashier="ann")  # card 1.98
    first, _ = refund(demo_till, done, (1, "1"))
    second, _ = refund(demo_till, done, (2, "1"))
    card = sum(r["amount"] for d in (first, second) for r in d["refunds"] if r["kind"] == "card")
    assert card == 198
    assert first["total"] + second["total"] == 698


def test_no_receipt_return_needs_approval_and_reason(demo_till: Till) -> None:
    now = demo_till.clock.now()
    reqs = [ReturnRequest(Decimal(1), sku="1008", disposition="damaged")]
    with pytest.raises(AuthError, match="is for refund"):
        demo_till.returns.plan_no_receipt(demo_till.catalog, reqs, "gift", ok(demo_till, Action.REFUND), now)
    with pytest.raises(InputError, match="reason code"):
        demo_till.returns.plan_no_receipt(demo_till.catalog, reqs, "because",
                                          ok(demo_till, Action.RETURN_NO_RECEIPT), now)  # fmt: skip
    approval = ok(demo_till, Action.RETURN_NO_RECEIPT, actor="ann", approver="sue")
    plan = demo_till.returns.plan_no_receipt(demo_till.catalog, reqs, "gift", approval, now)
    doc, _ = demo_till.refund(plan, approval)
    assert (doc["total"], doc["receipted"], doc["approver"]) == (349, False, "sue")
    assert demo_till.ledger.stock_level("1008") == 0  # damaged: not back on the shelf
    damaged = demo_till.ledger.conn.execute("SELECT level_milli FROM stock_damaged WHERE sku = '1008'").fetchone()
    assert damaged[0] == 1000


def test_no_receipt_limit(demo_till: Till) -> None:
    approval = ok(demo_till, Action.RETURN_NO_RECEIPT)
    reqs = [ReturnRequest(Decimal(20), sku="1008")]  # 69.80 > 50.00
    plan = demo_till.returns.plan_no_receipt(demo_till.catalog, reqs, "gift", approval, demo_till.clock.now())
    with pytest.raises(SaleError, match=r"limited to 50\.00"):
        demo_till.refund(plan, approval)


def test_return_period(demo_till: Till, clock) -> None:  # type: ignore[no-untyped-def]
    done = scripted_sale(demo_till, [JUICE], [("cash", None)], cashier="ann")
    clock.advance(31 * 86400)
    with pytest.raises(SaleError, match="30-day return period"):
        refund(demo_till, done, (1, "1"))


def test_exchange_in_one_transaction(demo_till: Till) -> None:
    done = scripted_sale(demo_till, [BOOK], [("card", None)], cashier="ann")  # 3.49
    original = demo_till.returns.find_sale(str(done.committed.number))
    plan = demo_till.returns.plan_receipted(original, [ReturnRequest(Decimal(1), line=1)])
    new = demo_till.new_sale("ann")
    demo_till.scan(new, JUICE)  # 1.99: the customer gets 1.50 back
    ret, sold = demo_till.exchange(plan, new, ok(demo_till, Action.REFUND))
    assert ret["refunds"][0] == {"kind": "exchange", "amount": 199, "reference": new.id}
    assert ret["refunds"][1]["kind"] == "card" and ret["refunds"][1]["amount"] == 150
    assert sold.doc["tenders"] == [{"kind": "exchange", "amount": 199, "reference": plan.id}]
    assert ret["exchange_sale_id"] == sold.committed.sale_id
    assert verify(demo_till.ledger).ok


def test_exchange_for_something_dearer(demo_till: Till) -> None:
    done = scripted_sale(demo_till, [JUICE], [("cash", None)], cashier="ann")
    plan = demo_till.returns.plan_receipted(demo_till.returns.find_sale(str(done.committed.number)),
                                            [ReturnRequest(Decimal(1), line=1)])  # fmt: skip
    new = demo_till.new_sale("ann")
    demo_till.scan(new, BOOK)  # 3.49: 1.50 more to pay
    with pytest.raises(SaleError, match=r"1\.50 still to pay"):
        demo_till.exchange(plan, new, ok(demo_till, Action.REFUND))
    new.pay_cash(150)
    ret, sold = demo_till.exchange(plan, new, ok(demo_till, Action.REFUND))
    assert [r["kind"] for r in ret["refunds"]] == ["exchange"]
    assert sum(t["amount"] for t in sold.doc["tenders"]) == 349


def test_return_of_another_tills_sale(demo_till: Till) -> None:
    remote = {
        "id": "01900000-0000-7000-8000-000000000001", "number": 7, "device": "till-2", "currency": "EUR",
        "completed_at": demo_till.clock.now().isoformat(),
        "lines": [{"line": 1, "sku": "1002", "name": "Orange Juice 1l", "qty": "2", "unit": "each", "unit_price": 199,
                   "amount": 398, "discount": 0, "tax": 26, "tax_rates": {"reduced": 26}, "total": 398,
                   "tax_class": "reduced", "voided": False}],
        "tenders": [{"kind": "cash", "amount": 398, "reference": None}],
    }  # fmt: skip
    demo_till.ledger.conn.execute(
        "INSERT INTO remote_sales(id, source, reference, received_at, body) VALUES (?, ?, ?, ?, ?)",
        (remote["id"], "till-2", "TB-till-2-000007", "t", canonical_json(remote)),
    )
    original = demo_till.returns.find_sale("TB-till-2-000007")
    plan = demo_till.returns.plan_receipted(original, [ReturnRequest(Decimal(1), line=1)])
    doc, _ = demo_till.refund(plan, ok(demo_till, Action.REFUND))
    assert (doc["total"], doc["tax"], doc["original_device"]) == (199, 13, "till-2")
    plan = demo_till.returns.plan_receipted(original, [ReturnRequest(Decimal(1), line=1)])
    demo_till.refund(plan, ok(demo_till, Action.REFUND))
    with pytest.raises(SaleError, match="not yet refunded"):
        demo_till.returns.plan_receipted(original, [ReturnRequest(Decimal(1), line=1)])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.integers(1, 9),
    st.integers(0, 40),
    st.lists(st.integers(1, 4), min_size=1, max_size=6),
)
def test_refunds_of_a_line_never_exceed_what_was_paid(demo_till: Till, qty: int, pct: int, chunks: list[int]) -> None:
    sale = demo_till.new_sale("ann")
    demo_till.add_sku(sale, "1001", quantity=Decimal(qty))  # water, in the 3-for-2
    if pct:
        sale.discount_cart(Discount(percent=Decimal(pct)), demo_till.clock.now())
    sale.pay_cash(sale.cash_due())
    done = demo_till.complete(sale)
    paid, paid_tax = done.doc["lines"][0]["total"], done.doc["lines"][0]["tax"]
    refunded = refunded_tax = 0
    left = qty
    for chunk in chunks:
        n = min(chunk, left)
        if n == 0:
            with pytest.raises(SaleError):
                refund(demo_till, done, (1, str(chunk)))
            break
        doc, _ = refund(demo_till, done, (1, str(n)))
        refunded += doc["total"]
        refunded_tax += doc["tax"]
        left -= n
        assert refunded <= paid and refunded_tax <= paid_tax
    if left == 0:
        assert (refunded, refunded_tax) == (paid, paid_tax)


# -- customers ------------------------------------------------------------------------------------


def test_customer_attach_and_erase(demo_till: Till) -> None:
    now = demo_till.clock.now()
    c = demo_till.customers.add("Jane Doe", email="Jane@Example.org", phone="+49 30 1234567", consent=True, now=now)
    assert c.email == "jane@example.org" and c.consent and c.consent_at
    assert [x.id for x in demo_till.customers.find("jane@example.org")] == [c.id]
    sale = demo_till.new_sale("ann")
    sale.customer_id = c.id
    demo_till.scan(sale, JUICE)
    sale.pay_cash(199)
    done = demo_till.complete(sale)
    assert done.doc["customer_id"] == c.id
    with pytest.raises(AuthError):
        demo_till.customers.erase(c.id, ok(demo_till, Action.REFUND), now)
    demo_till.customers.erase(c.id, ok(demo_till, Action.ERASE_CUSTOMER, actor="max"), now)
    gone = demo_till.customers.get(c.id)
    assert (gone.name, gone.email, gone.phone, gone.erased) == (None, None, None, True)
    assert demo_till.customers.find("Jane") == []
    assert demo_till.ledger.sale_count() == 1  # the sale stays, anonymous
    everything = "".join(str(r) for r in demo_till.ledger.conn.execute("SELECT payload FROM journal"))
    assert "Jane" not in everything and "example.org" not in everything and "1234567" not in everything
    with pytest.raises(InputError, match="already erased"):
        demo_till.customers.erase(c.id, ok(demo_till, Action.ERASE_CUSTOMER), now)
    assert verify(demo_till.ledger).ok


def test_customer_validation(demo_till: Till) -> None:
    now = demo_till.clock.now()
    with pytest.raises(InputError, match="email"):
        demo_till.customers.add("X", email="not-an-email", now=now)
    with pytest.raises(InputError, match="phone"):
        demo_till.customers.add("X", phone="call me", now=now)
    with pytest.raises(InputError, match="name"):
        demo_till.customers.add("  ", now=now)


# -- receipts -------------------------------------------------------------------------------------


def test_receipt_carries_journal_witness_and_reference(demo_till: Till) -> None:
    done = scripted_sale(demo_till, [JUICE], [("cash", 500)], cashier="ann")
    receipt = demo_till.receipt(done)
    entry = done.committed.journal
    assert receipt.journal_seq == entry.seq and receipt.hash_prefix == entry.hash[:8]
    assert receipt.reference == "TB-till-1-000001"
    text = render_text(receipt)
    assert f"J{entry.seq}:{entry.hash[:8]}" in text and "Change" in text and "Thank you!" in text
    assert demo_till.returns.find_sale(receipt.reference)["id"] == done.committed.sale_id


def test_reprint_is_marked_and_counted(demo_till: Till) -> None:
    done = scripted_sale(demo_till, [JUICE], [("cash", None)], cashier="ann")
    first = demo_till.reprint("TB-till-1-000001", actor="ann")
    second = demo_till.reprint("1", actor="ann")
    assert (first.copy, second.copy) == (1, 2)
    assert "*** COPY 2 ***" in render_text(second)
    rows = demo_till.ledger.conn.execute(
        "SELECT ref_seq, payload FROM journal WHERE type = 'receipt.reprinted'"
    ).fetchall()
    assert [r[0] for r in rows] == [done.committed.journal.seq] * 2
    assert json.loads(rows[1][1])["copy"] == 2


def test_digital_receipt_url(tmp_path: Path, clock) -> None:  # type: ignore[no-untyped-def]
    from appliance.config import parse_config
    from appliance.demo import seed
    from appliance.till import open_ledger
    from tests.conftest import open_shift

    config = parse_config('[receipt]\nurl_template = "https://r.example/{store}/{device}/{number}"\n')
    with open_ledger(config, tmp_path) as led:
        till = Till(config, led, clock=clock, terminal=SimulatedTerminal(), fast_hash=True)
        seed(till, tmp_path)
        open_shift(till)
        done = scripted_sale(till, [JUICE], [("cash", None)], cashier="ann")
        assert till.receipt(done).digital_url == "https://r.example/demo/till-1/1"


def test_verify_checks_returns_against_the_journal(demo_till: Till) -> None:
    import sqlite3

    done = scripted_sale(demo_till, [JUICE, BOOK], [("cash", None)], cashier="ann")
    refund(demo_till, done, (2, "1"))
    assert verify(demo_till.ledger).ok
    conn = sqlite3.connect(demo_till.ledger.path)
    conn.execute("DROP TRIGGER refunds_no_update")
    conn.execute("UPDATE refunds SET amount = amount + 100")
    conn.commit()
    conn.close()
    report = verify(demo_till.ledger)
    assert "return 1 (journal entry" in report.errors[0] and "refund rows" in report.errors[0]
