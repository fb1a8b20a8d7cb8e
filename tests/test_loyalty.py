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
from appliance.loyalty import Rules, points_earned
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
    assert till.loyalty.get(CUSTOMER).points == 18


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
    moves = [(e["op"], e["delta"], e["mode"], e["balance"]) for e in _events(till)]
    assert moves[0] == ("redeem", -100, "offline", None)  # the till does not know the customer's points
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
