"""Loyalty points: earning rules, redemption as a tender, offline limits, returns and voids (docs/accounts.md)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.clock import FrozenClock
from appliance.config import parse_config
from appliance.errors import InputError, SaleError, TenderError
from appliance.loyalty import Rules, points_earned, points_kept
from appliance.money import Currency
from appliance.returns import ReturnRequest
from appliance.staff import Action, Approval
from appliance.till import Till, open_ledger
from drivers.payment import SimulatedTerminal
from tests.conftest import open_shift

EUR = Currency.of("EUR")
JUICE, BOOK, WINE = "5901234123457", "9780201379624", "4006040014003"  # drinks 1.99; stationery 3.49; drinks 6.99
CONFIG = """
[loyalty]
enabled = true
points_per_unit = "2"
point_value = 5
min_redeem_points = 10
excluded_departments = ["drinks"]
offline_limit_per_customer = 100
offline_limit_per_till = 150
"""
CUSTOMER = "0195a3e2-6a00-7abc-8def-0000000000c1"


def _line(total: int, **kw: Any) -> dict[str, Any]:
    return {"sku": "1", "total": total, "department": "", "tax_class": "standard", "voided": False, **kw}


def _doc(lines: list[dict[str, Any]], tenders: list[dict[str, Any]] = (), customer: str | None = "c") -> dict[str, Any]:  # type: ignore[assignment]
    return {"customer_id": customer, "lines": lines, "tenders": list(tenders)}


RULES = Rules(enabled=True, points_per_unit=Decimal(1), excluded_departments=frozenset({"drinks"}),
              excluded_tax_classes=frozenset({"exempt"}), excluded_skus=frozenset({"GIFTCARD"}))  # fmt: skip


def test_points_follow_the_rules() -> None:
    lines = [_line(1_250), _line(999, department="drinks"), _line(500, tax_class="exempt"),
             _line(5_000, sku="GIFTCARD"), _line(800, voided=True), _line(75)]  # fmt: skip
    assert points_earned(_doc(lines), RULES, EUR) == 13  # 13.25 of eligible goods, rounded down
    assert points_earned(_doc(lines, [{"kind": "loyalty", "amount": 300}]), RULES, EUR) == 10
    assert points_earned(_doc(lines, customer=None), RULES, EUR) == 0
    assert points_earned(_doc(lines), Rules(enabled=False), EUR) == 0
    assert points_earned(_doc([_line(100)], [{"kind": "loyalty", "amount": 500}]), RULES, EUR) == 0
    assert points_earned(_doc([_line(1_999)]), Rules(enabled=True, points_per_unit=Decimal("2.5")), EUR) == 49
    assert points_earned(_doc([_line(1_999)]), Rules(enabled=True), Currency.of("JPY")) == 1_999


@given(
    totals=st.lists(st.integers(min_value=0, max_value=100_000), max_size=8),
    excluded=st.lists(st.booleans(), min_size=8, max_size=8),
    paid=st.integers(min_value=0, max_value=200_000),
    rate=st.decimals(min_value=0, max_value=100, places=2),
)
def test_points_are_whole_never_negative_and_only_eligible_lines_count(
    totals: list[int], excluded: list[bool], paid: int, rate: Decimal
) -> None:
    rules = Rules(enabled=True, points_per_unit=rate, excluded_departments=frozenset({"x"}))
    lines = [_line(t, department="x" if ex else "") for t, ex in zip(totals, excluded, strict=False)]
    tenders = [{"kind": "loyalty", "amount": paid}]
    points = points_earned(_doc(lines, tenders), rules, EUR)
    base = max(sum(t for t, ex in zip(totals, excluded, strict=False) if not ex) - paid, 0)
    assert isinstance(points, int) and points >= 0
    assert points == int(Decimal(base) * rate // 100)
    more_excluded = [_line(t, department="x") for t in totals]
    assert points_earned(_doc(more_excluded, tenders), rules, EUR) == 0


@pytest.fixture
def till(tmp_path: Path, clock: FrozenClock) -> Iterator[Till]:
    from appliance.demo import seed

    config = parse_config(CONFIG)
    t = Till(config, open_ledger(config, tmp_path), clock=clock, terminal=SimulatedTerminal(), fast_hash=True)
    seed(t, tmp_path)
    open_shift(t)
    yield t
    t.ledger.close()


@pytest.fixture
def offline_till(till: Till, tmp_path: Path) -> Iterator[Till]:
    """The till with a sync service that is not connected: questions to the shop fail at once."""
    from sync.service import SyncService, settings_from_config

    link = settings_from_config(till.config, tmp_path, ("mqtt://127.0.0.1:1",))
    svc = SyncService.from_config(till.config, tmp_path, link=link)  # never started: offline
    till.loyalty.remote = svc.request
    till.stored_value.remote = svc.request
    yield till
    svc.close()


def _events(till: Till) -> list[dict[str, Any]]:
    return [json.loads(e.data) for e in till.ledger.outbox(limit=1000) if e.type == "tillbox.loyalty.moved"]


def _sale(till: Till, *codes: str, customer: str | None = CUSTOMER) -> Any:
    sale = till.new_sale("ann")
    for code in codes:
        till.scan(sale, code)
    sale.customer_id = customer
    return sale


def test_a_sale_earns_points_and_points_pay_a_later_sale(till: Till) -> None:
    sale = _sale(till, BOOK, BOOK, JUICE)  # 6.98 earns, the juice is in an excluded department
    sale.pay_cash(sale.cash_due())
    till.complete(sale)
    assert till.loyalty.get(CUSTOMER).points == 13  # 6.98 x 2, rounded down
    [earned] = _events(till)
    assert (earned["op"], earned["delta"], earned["balance"], earned["mode"], earned["staff"]) == (
        "earn", 13, 13, "local", "ann")  # fmt: skip

    sale = _sale(till, BOOK)
    with pytest.raises(TenderError, match="at least 10 points are redeemed at once"):
        till.pay_points(sale, 5)
    with pytest.raises(TenderError, match="has only 13 points"):
        till.pay_points(sale, 20)
    tender = till.pay_points(sale)  # all it has: 13 points at 0.05
    assert (tender.kind, tender.amount, tender.reference, tender.detail["points"]) == ("loyalty", 65, CUSTOMER, "13")
    with pytest.raises(TenderError, match="has only 0 points"):
        till.pay_points(sale)
    sale.pay_cash(sale.cash_due())
    done = till.complete(sale)
    assert [(e["op"], e["delta"]) for e in _events(till)][1:] == [("redeem", -13), ("earn", 5)]  # (3.49-0.65) x 2
    assert till.loyalty.get(CUSTOMER).points == 5

    # refunded to the original tenders, the points go back onto the customer's account
    plan = till.returns.plan_receipted(till.returns.find_sale(str(done.committed.number)),
                                       [ReturnRequest(Decimal(1), line=1)])  # fmt: skip
    ret, _ = till.refund(plan, Approval(Action.REFUND, "sue", None, till.clock.now() + timedelta(minutes=1)))
    assert ret["refunds"][0] == {"kind": "loyalty", "amount": 65, "reference": CUSTOMER,
                                 "original_reference": CUSTOMER, "points": 13}  # fmt: skip
    # the 13 points that paid come back; the 5 the book had earned are taken back
    assert [(e["op"], e["delta"], e["ref"]) for e in _events(till)][3:] == [("refund", 13, ret["id"]),
                                                                            ("clawback", -5, ret["id"])]  # fmt: skip
    assert till.loyalty.get(CUSTOMER).points == 5 + 13 - 5


def test_points_need_a_customer_and_the_scheme(till: Till, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="attach a customer"):
        till.pay_points(_sale(till, BOOK, customer=None))
    plain = Till(parse_config(""), till.ledger, clock=till.clock, fast_hash=True)
    with pytest.raises(SaleError, match="not enabled"):
        plain.pay_points(_sale(plain, BOOK))
    sale = _sale(plain, BOOK)
    sale.pay_cash(sale.cash_due())
    plain.complete(sale)
    assert _events(plain) == []  # no scheme, no points


def test_offline_points_are_limited_per_customer_and_per_till(offline_till: Till) -> None:
    till = offline_till
    sale = _sale(till, WINE, BOOK, BOOK)  # 13.97
    with pytest.raises(TenderError, match=r"^the shop cannot be reached: at most 100 more points can be redeemed "
                                          r"for this customer offline \(limit 100\)$"):  # fmt: skip
        till.pay_points(sale, 120)
    tender = till.pay_points(sale, 100)
    assert (tender.amount, tender.detail["mode"]) == (500, "offline")
    sale.pay_cash(sale.cash_due())
    till.complete(sale)
    other = "0195a3e2-6a00-7abc-8def-0000000000c2"
    sale = _sale(till, WINE, BOOK, customer=other)
    with pytest.raises(TenderError, match=r"this till can redeem at most 50 more points offline \(limit 150\)"):
        till.pay_points(sale, 60)
    assert till.pay_points(sale).detail["points"] == "50"  # what is left of the till's limit
    sale.pay_cash(sale.cash_due())
    till.complete(sale)
    moves = [(e["op"], e["delta"], e["mode"], e["balance"]) for e in _events(till) if e["op"] != "reverse"]
    assert moves[0] == ("redeem", -100, "offline", None)  # the till does not know the customer's points
    # the two refused attempts had been written down before the shop was asked: they are given back
    assert [(e["op"], e["customer"]) for e in _events(till) if e["op"] == "reverse"] == [("reverse", CUSTOMER),
                                                                                        ("reverse", other)]  # fmt: skip
    # a voided sale reverses its offline points (the hub cancels them if they never arrived)
    sale = _sale(till, BOOK, customer=other)
    till.ledger.mark_acked(till.ledger.outbox(limit=1000)[-1].seq, "2026-03-02T10:00:00Z")
    tender = till.pay_points(sale, 20)
    till.cancel(sale, actor="ann", reason="test")
    last = _events(till)[-1]
    assert (last["op"], last["reverses"], last["delta"]) == ("reverse", tender.detail["move"], 0)
    from sync.contract import envelope
    from sync.schemas import validate

    for event in till.ledger.outbox(limit=1000, unacked_only=False):
        validate("cloudevent", json.loads(envelope(event, store="demo", device="till-1")))


def test_offline_the_last_known_points_cap_the_redemption(offline_till: Till) -> None:
    till = offline_till
    till.loyalty.remember({"customer": CUSTOMER, "points": 30})
    sale = _sale(till, BOOK)
    with pytest.raises(TenderError, match="the customer had 30 points when last seen"):
        till.pay_points(sale, 40)
    assert till.pay_points(sale).detail["points"] == "30"
    assert till.loyalty.check(CUSTOMER).points == 30


def test_an_order_paid_at_pickup_earns_points_like_any_sale(till: Till) -> None:
    from appliance.orders import Orders
    from tests.test_orders import order_doc, receive

    assert receive(till, order_doc(payment="at_pickup"))
    orders = Orders(till)
    orders.pick("web-1", {1: Decimal(2), 2: Decimal(3)}, staff="ann")
    orders.ready("web-1", staff="ann")
    sale = orders.sale_for("web-1", cashier="ann")
    sale.customer_id = CUSTOMER
    sale.pay_cash(sale.cash_due())
    done = orders.hand_over("web-1", "code", "4711", staff="ann", sale=sale)
    assert done.completed is not None
    earned = [(e["customer"], e["delta"], e["ref"]) for e in _events(till) if e["op"] == "earn"]
    assert earned == [(CUSTOMER, 5, sale.id)]  # the pens' 2.70 x 2, floored; water is in drinks


# -- points taken back when a sale is returned ----------------------------------------------------------


def _numbered(*totals: int, **kw: Any) -> list[dict[str, Any]]:
    return [_line(t, line=i, **kw) for i, t in enumerate(totals, 1)]


def test_a_return_keeps_the_points_the_goods_kept_would_have_earned() -> None:
    doc = _doc(_numbered(1_000, 99))  # 10.99 earns 10
    assert points_kept(doc, {}, RULES, EUR) == points_earned(doc, RULES, EUR) == 10
    assert points_kept(doc, {2: 99}, RULES, EUR) == 10  # 10.00 kept still earns 10: nothing taken back
    assert points_kept(doc, {1: 1_000}, RULES, EUR) == 0  # 0.99 kept earns nothing
    assert points_kept(doc, {1: 1, 2: 99}, RULES, EUR) == 9  # 9.99 kept
    # points paid part of the eligible goods: they paid each line pro rata
    paid = _doc(_numbered(5_000, 5_000), [{"kind": "loyalty", "amount": 2_000}])
    assert points_earned(paid, RULES, EUR) == 80
    assert points_kept(paid, {1: 5_000}, RULES, EUR) == 40
    # excluded lines neither earn nor take back; a refund never counts for more than the line
    mixed = _doc([_line(1_000, line=1), _line(5_000, line=2, department="drinks")])
    assert points_kept(mixed, {2: 5_000}, RULES, EUR) == 10
    assert points_kept(mixed, {1: 99_999}, RULES, EUR) == 0
    assert points_kept(_doc(_numbered(1_000), customer=None), {}, RULES, EUR) == 0


@given(
    totals=st.lists(st.integers(min_value=1, max_value=50_000), min_size=1, max_size=5),
    steps=st.lists(
        st.tuples(st.integers(min_value=0, max_value=4), st.integers(min_value=1, max_value=60_000)), max_size=8
    ),
    paid=st.integers(min_value=0, max_value=30_000),
    rate=st.decimals(min_value=0, max_value=100, places=2),
)
def test_partial_returns_take_back_at_most_what_was_earned_and_all_of_it_in_the_end(
    totals: list[int], steps: list[tuple[int, int]], paid: int, rate: Decimal
) -> None:
    rules = Rules(enabled=True, points_per_unit=rate)
    doc = _doc(_numbered(*totals), [{"kind": "loyalty", "amount": paid}] if paid else [])
    earned = points_earned(doc, rules, EUR)
    refunded: dict[int, int] = {}
    taken = 0
    for index, amount in steps:  # returns one after another, as Returns prices them (never beyond the line)
        line = index % len(totals) + 1
        before = points_kept(doc, refunded, rules, EUR)
        refunded[line] = min(refunded.get(line, 0) + amount, totals[line - 1])
        after = points_kept(doc, refunded, rules, EUR)
        assert 0 <= after <= before <= earned
        taken += before - after
    assert taken == earned - points_kept(doc, refunded, rules, EUR)
    everything = dict(enumerate(totals, 1))
    assert points_kept(doc, everything, rules, EUR) == 0
    if not paid:  # without points paid, exactly what the goods kept earn under points_earned
        left = [_line(t - refunded.get(i, 0), line=i) for i, t in enumerate(totals, 1)]
        assert points_kept(doc, refunded, rules, EUR) == points_earned(_doc(left), rules, EUR)


def _return(till: Till, number: int, line: int, qty: int = 1) -> dict[str, Any]:
    plan = till.returns.plan_receipted(till.returns.find_sale(str(number)), [ReturnRequest(Decimal(qty), line=line)])
    ret, _ = till.refund(plan, Approval(Action.REFUND, "sue", None, till.clock.now() + timedelta(minutes=1)))
    return ret


def test_returned_goods_give_back_the_points_they_earned_in_parts(till: Till) -> None:
    sale = _sale(till, JUICE)  # the juice earns nothing (drinks)
    till.add_sku(sale, "1010", quantity=Decimal(2))  # batteries 2 x 4.99 = 9.98: 19 points
    sale.pay_cash(sale.cash_due())
    done = till.complete(sale)
    assert till.loyalty.get(CUSTOMER).points == 19
    assert _return(till, done.committed.number, 1)["refunds"][0]["kind"] == "cash"  # the juice: nothing taken back
    first = _return(till, done.committed.number, 2)  # 4.99 back; 4.99 kept earns 9
    second = _return(till, done.committed.number, 2)
    back = [(e["op"], e["delta"], e["ref"], e["reason"], e["mode"], e["staff"]) for e in _events(till)[1:]]
    assert back == [("clawback", -10, first["id"], "return", "local", "sue"),
                    ("clawback", -9, second["id"], "return", "local", "sue")]  # fmt: skip
    assert till.loyalty.get(CUSTOMER).points == 0
    row = till.ledger.conn.execute("SELECT journal_seq FROM account_moves WHERE op = 'clawback' AND ref = ?",
                                   (first["id"],)).fetchone()  # fmt: skip
    assert row == (till._return_seq(first["id"]),)  # in the return's own transaction


def test_points_already_spent_are_taken_back_below_zero(till: Till) -> None:
    sale = _sale(till, BOOK, BOOK)  # 6.98: 13 points
    sale.pay_cash(sale.cash_due())
    done = till.complete(sale)
    spend = _sale(till, BOOK)
    till.pay_points(spend, 13)
    spend.pay_cash(spend.cash_due())
    till.complete(spend)
    assert till.loyalty.get(CUSTOMER).points == 5  # all spent; the second sale earned 5 on (3.49 - 0.65)
    _return(till, done.committed.number, 1)  # never refused: this till keeps the points (it has no shop)
    _return(till, done.committed.number, 2)
    assert till.loyalty.get(CUSTOMER).points == 5 - 13


def test_offline_a_clawback_is_an_event_for_the_hub_outside_the_offline_limits(offline_till: Till) -> None:
    from appliance.loyalty import BOOK as POINTS
    from appliance.stored_value import outstanding

    till = offline_till
    sale = _sale(till, BOOK)
    sale.pay_cash(sale.cash_due())
    done = till.complete(sale)
    assert _events(till)[-1]["balance"] is None  # the till does not know the customer's points
    _return(till, done.committed.number, 1)
    last = _events(till)[-1]
    assert (last["op"], last["delta"], last["mode"], last["balance"]) == ("clawback", -6, "local", None)
    assert outstanding(till.ledger.conn, POINTS) == 0
    from sync.contract import envelope
    from sync.schemas import validate

    for event in till.ledger.outbox(limit=1000):
        validate("cloudevent", json.loads(envelope(event, store="demo", device="till-1")))


def test_points_taken_for_a_sale_lost_in_a_restart_are_given_back(offline_till: Till) -> None:
    till = offline_till
    sale = _sale(till, WINE)
    tender = till.pay_points(sale, 40)  # offline; then the till dies
    restarted = Till(till.config, till.ledger, clock=till.clock, fast_hash=True)
    [rid] = restarted.recover_accounts()
    last = _events(till)[-1]
    assert (last["move_id"], last["op"], last["reverses"], last["customer"], last["reason"]) == (
        rid, "reverse", tender.detail["move"], CUSTOMER, "lost")  # fmt: skip
    states = dict(till.ledger.conn.execute("SELECT id, state FROM account_auths"))
    assert states == {tender.detail["move"]: "reversed"}
