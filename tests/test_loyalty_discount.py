"""Loyalty points redeemed as a discount: the tax base goes down, holds, limits, the hub, returns (docs/accounts.md)."""

# ruff: noqa: F811  (the fixtures imported from test_loyalty and test_omni_accounts are requested by name)

from __future__ import annotations

import json
import re
from datetime import UTC, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.catalog import Item
from appliance.config import parse_config
from appliance.errors import InputError, SaleError, TenderError
from appliance.loyalty import BOOK as POINTS
from appliance.loyalty import discount_points_back
from appliance.money import Currency
from appliance.receipt import render_text
from appliance.returns import ReturnRequest
from appliance.sale import Discount, PointsDiscount, Sale, SalePolicy
from appliance.staff import Action, Approval
from appliance.stored_value import outstanding
from appliance.till import Completed, Till
from kiosk_ui.testing import CHROMIUM
from sync.testing import wait_until
from tests.test_loyalty import BOOK, CUSTOMER, WINE, _events, _sale, offline_till, till  # noqa: F401  (fixtures)
from tests.test_omni_accounts import Shop, _basket, shop  # noqa: F401  (fixture)

EUR = Currency.of("EUR")
BATTERIES = "1010"  # 4.99, standard rate (19 %), earns points; BOOK 3.49 standard; WINE 6.99 drinks (no points)
WATER = "4006381333931"  # 0.79


def _vat19(gross: int) -> int:
    """VAT in a gross amount at 19 %, rounded half up: worked out here, not by the tax engine."""
    return int((Decimal(gross) * 19 / 119).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _refund(till: Till, number: int, *requests: tuple[int, int]) -> tuple[dict[str, Any], str]:
    original = till.returns.find_sale(str(number))
    plan = till.returns.plan_receipted(original, [ReturnRequest(Decimal(q), line=n) for n, q in requests])
    ret, receipt = till.refund(plan, Approval(Action.REFUND, "sue", None, till.clock.now() + timedelta(minutes=1)))
    return ret, render_text(receipt)


def _states(till: Till) -> dict[str, str]:
    return {str(i): str(s) for i, s in till.ledger.conn.execute("SELECT id, state FROM account_auths")}


def _pay_rest(till: Till, sale: Sale) -> Completed:
    if sale.totals().due > 0:
        sale.pay_cash(sale.cash_due())
    return till.complete(sale)


# -- pricing ------------------------------------------------------------------------------------------


def test_a_points_discount_lowers_the_tax_base_where_a_points_tender_does_not(till: Till) -> None:
    till.loyalty.remember({"customer": CUSTOMER, "points": 1_000})
    baskets = []
    for _ in range(3):
        sale = _sale(till, BOOK)
        till.add_sku(sale, BATTERIES, quantity=Decimal(2))  # 3.49 + 9.98 = 13.47, all at 19 %
        baskets.append(sale)
    tendered, discounted, cart = baskets
    till.pay_points(tendered, 50)  # 50 points x 0.05 = 2.50 pays part of the price
    d = till.take_points_off(discounted, 50)  # 2.50 off the price
    cart.discount_cart(Discount(amount=250, reason="same amount as a cart discount"), till.clock.now())
    assert (d.points, d.value, d.mode) == (50, 5, "local")

    t_tender, t_discount = tendered.totals(), discounted.totals()
    assert (t_tender.total, t_tender.tax, t_tender.due) == (1_347, _vat19(1_347), 1_347 - 250)
    assert (t_discount.total, t_discount.tax, t_discount.due) == (1_097, _vat19(1_097), 1_097)
    assert t_discount.tax < t_tender.tax and (t_discount.discount, t_discount.points_discount) == (250, 250)
    # spread over the lines like a cart discount of the same amount, and taxed on what is left
    assert [ln.points_discount for ln in discounted.lines] == [ln.cart_discount for ln in cart.lines]
    assert [ln.tax for ln in discounted.lines] == [ln.tax for ln in cart.lines]
    assert [ln.total for ln in discounted.lines] == [349 - 65, 998 - 185]  # 250 x 349/1347 = 64.8, x 998/1347 = 185.2

    # both earn on what was not paid with points: 2 points per euro of 10.97
    for sale in (tendered, discounted):
        _pay_rest(till, sale)
    ops = [(e["op"], e["delta"], e["reason"]) for e in _events(till)]
    assert ops == [("redeem", -50, "sale"), ("earn", 21, "sale"), ("redeem", -50, "discount"), ("earn", 21, "sale")]
    assert till.loyalty.get(CUSTOMER).points == 1_000 - 2 * 50 + 2 * 21


@settings(max_examples=150, deadline=None)
@given(
    prices=st.lists(
        st.tuples(st.integers(min_value=0, max_value=60_000), st.sampled_from(["standard", "reduced"]), st.booleans()),
        min_size=1,
        max_size=6,
    ),
    percent=st.integers(min_value=0, max_value=60),
    points=st.integers(min_value=1, max_value=20_000),
    value=st.integers(min_value=1, max_value=40),
)
def test_points_are_spread_pro_rata_add_up_exactly_and_never_take_the_sale_below_zero(
    prices: list[tuple[int, str, bool]], percent: int, points: int, value: int
) -> None:
    from datetime import datetime

    now = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
    policy = SalePolicy(currency=EUR, tax=parse_config("").tax_policy(), tz=UTC)
    twins = [Sale(policy=policy), Sale(policy=policy)]
    for sale in twins:
        for i, (price, tax_class, gift) in enumerate(prices):
            item = Item(sku=f"S{i}", name=f"item {i}", price=price, tax_class=tax_class,
                        department="gift_card" if gift else "")  # fmt: skip
            sale.add_item(item, now)
        if percent:
            sale.discount_cart(Discount(percent=Decimal(percent)), now)
    plain, sale = twins
    sale.set_points_discount(PointsDiscount("c", points, value, "m"), now)
    weights = {ln.no: ln.amount for ln in plain.lines if ln.item.department != "gift_card"}
    pool = sum(weights.values())
    assert sale.points_applied == min(points, pool // value)  # whole points, capped at what the goods cost
    off = sale.points_applied * value
    shares = {ln.no: ln.points_discount for ln in sale.lines}
    assert sum(shares.values()) == sale.totals().points_discount == off
    for no, share in shares.items():
        exact = Decimal(off * weights.get(no, 0)) / pool if pool else Decimal(0)
        assert abs(share - exact) < 1  # pro rata, one minor unit of rounding at most
        assert 0 <= share <= weights.get(no, 0)  # gift cards take none
    t, before = sale.totals(), plain.totals()
    assert t.total == before.total - off >= 0 and t.discount == before.discount + off
    assert sum(ln.total for ln in sale.lines) == t.total
    doc = sale.to_doc()
    assert sum(ln["points_discount"] for ln in doc["lines"]) == doc["points_discount"]["amount"] == off


def test_the_discount_is_capped_at_the_sale_and_points_it_no_longer_takes_go_back(till: Till) -> None:
    till.loyalty.remember({"customer": CUSTOMER, "points": 1_000})
    sale = _sale(till, BOOK, WINE)  # 3.49 + 6.99 = 10.48: at most 209 points of 0.05
    with pytest.raises(TenderError, match=r"^210 points take 10\.50 off, more than the 10\.48 the sale costs; "
                                          r"at most 209 points$"):  # fmt: skip
        till.take_points_off(sale, 210)
    with pytest.raises(TenderError, match="at least 10 points are redeemed at once"):
        till.take_points_off(sale, 9)
    d = till.take_points_off(sale)  # as many as the sale takes
    assert (d.points, sale.totals().total) == (209, 1_048 - 1_045)
    with pytest.raises(SaleError, match="already has a points discount"):
        till.take_points_off(sale, 10)

    sale.void_line(2, till.clock.now())  # the wine goes: 3.49 left, 69 points of the 209 still fit
    assert (sale.points_applied, sale.points_discount and sale.points_discount.points) == (69, 209)
    assert sale.totals().total == 349 - 345
    till.scan(sale, WINE)  # and grows again: the points taken are fixed, all of them fit again
    assert (sale.points_applied, sale.totals().total) == (209, 349 + 699 - 1_045)
    sale.void_line(3, till.clock.now())
    done = _pay_rest(till, sale)
    assert {k: done.doc["points_discount"][k] for k in ("points", "held", "amount", "mode")} == {
        "points": 69, "held": 209, "amount": 345, "mode": "local"}  # fmt: skip
    moves = [(e["op"], e["delta"], e["reason"], e["ref"]) for e in _events(till)]
    assert moves == [("redeem", -209, "discount", sale.id), ("refund", 140, "discount", sale.id)]  # nothing lost
    assert till.loyalty.get(CUSTOMER).points == 1_000 - 69  # 0.04 paid in cash earns nothing


def test_a_discount_needs_a_customer_the_scheme_an_unpaid_sale_and_something_to_take_off(till: Till) -> None:
    till.loyalty.remember({"customer": CUSTOMER, "points": 100})
    with pytest.raises(InputError, match="attach a customer"):
        till.take_points_off(_sale(till, BOOK, customer=None))
    with pytest.raises(TenderError, match="has only 100 points"):
        till.take_points_off(_sale(till, BOOK, WINE), 101)  # 5.05 of 10.48 would fit, but the till knows 100
    gift = _sale(till)
    till.sell_gift_card(gift, 2_000)
    with pytest.raises(SaleError, match="nothing in the sale for points to take off"):
        till.take_points_off(gift)  # a gift card's value is not discounted
    paying = _sale(till, BOOK)
    paying.pay_cash(100)
    with pytest.raises(SaleError, match="payment has started"):
        till.take_points_off(paying, 10)
    plain = Till(parse_config(""), till.ledger, clock=till.clock, fast_hash=True)
    with pytest.raises(SaleError, match="not enabled"):
        plain.take_points_off(_sale(plain, BOOK))
    assert _events(till) == [] and _states(till) == {}


# -- holds, limits and releases --------------------------------------------------------------------------


def test_offline_a_discount_counts_against_the_same_limits_as_points_tenders(offline_till: Till) -> None:
    till = offline_till  # at most 100 points per customer and 150 per till offline
    sale = _sale(till, WINE, BOOK, BOOK)  # 13.97
    with pytest.raises(TenderError, match=r"^the shop cannot be reached: at most 100 more points can be redeemed "
                                          r"for this customer offline \(limit 100\)$"):  # fmt: skip
        till.take_points_off(sale, 120)
    assert sale.points_discount is None and sale.totals().total == 1_397
    assert list(_states(till).values()) == ["reversed"]  # written down before asking, given back: nothing held
    d = till.take_points_off(sale, 100)
    assert (d.mode, sale.totals().total) == ("offline", 1_397 - 500)
    with pytest.raises(TenderError, match=r"at most 0 more points can be redeemed for this customer offline"):
        till.pay_points(sale, 10)  # the discount's points count like a tender's
    _pay_rest(till, sale)
    redeem = [e for e in _events(till) if e["op"] == "redeem"]
    assert [(e["delta"], e["mode"], e["reason"], e["move_id"]) for e in redeem] == [(-100, "offline", "discount",
                                                                                    d.move)]  # fmt: skip
    assert outstanding(till.ledger.conn, POINTS) == 100 and _states(till)[d.move] == "consumed"

    other = "0195a3e2-6a00-7abc-8def-0000000000c2"
    sale = _sale(till, WINE, customer=other)
    with pytest.raises(TenderError, match=r"this till can redeem at most 50 more points offline \(limit 150\)"):
        till.take_points_off(sale, 60)
    assert till.take_points_off(sale).points == 50  # as many as allowed: what is left of the till's limit
    _pay_rest(till, sale)
    assert outstanding(till.ledger.conn, POINTS) == 150
    from sync.contract import envelope
    from sync.schemas import validate

    for event in till.ledger.outbox(limit=1000):  # the sale documents with their points discount, the movements
        validate("cloudevent", json.loads(envelope(event, store="demo", device="till-1")))
    docs = [json.loads(e.data) for e in till.ledger.outbox(limit=1000) if e.type == "tillbox.sale.completed"]
    assert [(d["points_discount"]["customer"], d["discount"]) for d in docs] == [(CUSTOMER, 500), (other, 250)]


def test_removing_the_discount_voiding_or_parking_the_sale_gives_the_points_back(offline_till: Till) -> None:
    till = offline_till
    sale = _sale(till, BOOK, BOOK)
    d1 = till.take_points_off(sale, 40)
    removed = till.loyalty.remove_discount(sale, actor="ann")
    assert removed == d1 and sale.points_discount is None and sale.totals().total == 698
    with pytest.raises(SaleError, match="the sale has no points discount"):
        till.loyalty.remove_discount(sale, actor="ann")
    d2 = till.take_points_off(sale, 40)
    till.cancel(sale, actor="ann", reason="customer left")

    parked = _sale(till, BOOK)
    d3 = till.take_points_off(parked, 20)
    till.suspend(parked)
    resumed = till.resume(parked.id, cashier="ann")
    assert resumed.points_discount is None and resumed.totals().total == 349  # resumed without the points

    paying = _sale(till, BOOK)
    d4 = till.take_points_off(paying, 20)
    paying.pay_cash(50)
    with pytest.raises(SaleError, match="payment has started"):
        till.loyalty.remove_discount(paying, actor="ann")
    till.cancel(paying, actor="ann", reason="test")

    reversals = [(e["reverses"], e["delta"], e["reason"]) for e in _events(till) if e["op"] == "reverse"]
    assert reversals == [(d.move, 0, "void") for d in (d1, d2, d3, d4)]
    assert _states(till) == {d.move: "reversed" for d in (d1, d2, d3, d4)}
    assert not [e for e in _events(till) if e["op"] == "redeem"]


def test_points_held_for_a_sale_lost_in_a_restart_are_given_back(offline_till: Till) -> None:
    till = offline_till
    sale = _sale(till, WINE)
    d = till.take_points_off(sale, 40)  # held offline; then the till dies before the sale completes
    restarted = Till(till.config, till.ledger, clock=till.clock, fast_hash=True)
    [rid] = restarted.recover_accounts()
    last = _events(till)[-1]
    assert (last["move_id"], last["op"], last["reverses"], last["reason"]) == (rid, "reverse", d.move, "lost")
    assert _states(till) == {d.move: "reversed"}
    assert restarted.recover_accounts() == []  # settled once


# -- the hub ----------------------------------------------------------------------------------------------


def test_the_hub_takes_a_discount_once_refuses_without_holding_and_gets_unused_points_back(shop: Shop) -> None:
    till = shop.tills[0]  # 10 points per euro, a point is worth 0.01
    shop.connect(0)
    customer = "0195a3e2-6a00-7abc-8def-00000000d15c"
    shop.hub.accounts.earn_points(customer, 400)
    sale = _basket(till, 2, customer)  # 9.98
    with pytest.raises(TenderError, match=rf"^the shop refused: {customer} has only 400 points$"):
        till.take_points_off(sale, 500)
    assert sale.points_discount is None and sale.totals().total == 998
    assert shop.hub.accounts.points(customer)["points"] == 400
    d = till.take_points_off(sale, 300)
    assert (d.mode, d.balance, sale.totals().total) == ("online", 100, 698)
    assert shop.hub.accounts.points(customer)["points"] == 100  # taken before the sale commits
    _pay_rest(till, sale)
    assert wait_until(lambda: shop.settled(0))
    moves = [(m["id"], m["op"], m["delta"]) for m in shop.hub.accounts.moves(customer, "loyalty")]
    # the till's own event of the redemption applied nothing more; earned on the 6.98 paid in cash
    assert moves[1:] == [(d.move, "redeem", -300), (moves[2][0], "earn", 69)]
    assert shop.hub.accounts.points(customer)["points"] == 100 + 69
    assert sorted(_states(till).values()) == ["consumed", "refused"]

    # the sale shrinks after the hub took the points: those it no longer uses go back when it completes
    sale = _basket(till, 1, customer)
    till.scan(sale, WATER)  # 4.99 + 0.79
    d = till.take_points_off(sale, 160)
    assert shop.hub.accounts.points(customer)["points"] == 169 - 160
    sale.void_line(1, till.clock.now())  # 0.79 left: it takes 79 of the 160 points
    assert (sale.points_applied, sale.totals().total) == (79, 0)
    _pay_rest(till, sale)
    assert wait_until(lambda: shop.settled(0))
    tail = [(m["op"], m["delta"]) for m in shop.hub.accounts.moves(customer, "loyalty")][-2:]
    assert tail == [("redeem", -160), ("refund", 160 - 79)]
    assert shop.hub.accounts.points(customer)["points"] == 169 - 79

    # removed: the hub gives them back when the reversal arrives
    sale = _basket(till, 1, customer)
    till.take_points_off(sale, 50)
    assert shop.hub.accounts.points(customer)["points"] == 90 - 50
    till.loyalty.remove_discount(sale, actor="ann")
    assert wait_until(lambda: shop.settled(0) and shop.hub.accounts.points(customer)["points"] == 90)
    assert [m["op"] for m in shop.hub.accounts.moves(customer, "loyalty")][-2:] == ["redeem", "reverse"]

    # taken for a sale the till then lost: given back at the next start
    sale = _basket(till, 1, customer)
    d = till.take_points_off(sale, 60)
    assert shop.hub.accounts.points(customer)["points"] == 30
    assert len(Till(till.config, till.ledger, fast_hash=True).recover_accounts()) == 1
    assert wait_until(lambda: shop.settled(0) and shop.hub.accounts.points(customer)["points"] == 90)
    assert _states(till)[d.move] == "reversed" and shop.hub.alerts() == []


# -- returns and receipts ----------------------------------------------------------------------------------


def test_a_return_refunds_what_was_paid_and_gives_the_points_back_in_proportion(till: Till) -> None:
    till.loyalty.remember({"customer": CUSTOMER, "points": 1_000})
    sale = _sale(till)
    till.add_sku(sale, BATTERIES, quantity=Decimal(3))  # 14.97
    till.scan(sale, BOOK)  # 3.49
    till.take_points_off(sale, 100)  # 5.00 off: 405 on the batteries (500 x 1497/1846), 95 on the notebook
    assert [ln.points_discount for ln in sale.lines] == [405, 95]
    done = _pay_rest(till, sale)  # 13.46 in cash earns 26
    assert till.loyalty.get(CUSTOMER).points == 1_000 - 100 + 26

    ret, text = _refund(till, done.committed.number, (1, 1))  # one battery: a third of 10.92 paid
    assert ret["refunds"] == [{"kind": "cash", "amount": 364, "reference": None}]
    assert ret["points_back"] == {"customer": CUSTOMER, "points": 27}  # floor(405 / 3) = 135 of 500: 27 of 100
    # and the points the battery earned: 13.46 earned 26, the 9.82 kept earn 19
    assert [(e["op"], e["delta"], e["ref"]) for e in _events(till)][-2:] == [("refund", 27, ret["id"]),
                                                                            ("clawback", -7, ret["id"])]  # fmt: skip
    assert "Points given back: 27 pts" in text and "Points taken back: 7 pts" in text

    rest, _ = _refund(till, done.committed.number, (1, 2), (2, 1))  # everything else comes back
    assert rest["refunds"][0]["amount"] == 1_092 - 364 + 254
    assert ret["points_back"]["points"] + rest["points_back"]["points"] == 100  # exactly the points used
    assert till.loyalty.get(CUSTOMER).points == 1_000  # as before the sale


def test_points_given_back_follow_the_discount_refunded_so_far() -> None:
    lines = [{"line": 1, "qty": "3", "points_discount": 20}, {"line": 2, "qty": "1.5", "points_discount": 15},
             {"line": 3, "qty": "1", "points_discount": 0}]  # fmt: skip
    original = {"points_discount": {"points": 7, "amount": 35}, "lines": lines}
    steps = [{1: Decimal(1)}, {1: Decimal(1), 2: Decimal("0.5")}, {1: Decimal(3), 2: Decimal("0.5"), 3: Decimal(1)},
             {1: Decimal(3), 2: Decimal("1.5"), 3: Decimal(1)}]  # fmt: skip
    given: list[int] = []
    before: dict[int, Decimal] = {}
    for after in steps:
        given.append(discount_points_back(original, before, after))
        before = after
    # discount refunded so far: 6 (20 x 1/3), 11 (+ 15 x 0.5/1.5), 25 (line 1's last units take the rest), 35
    assert given == [6 // 5, 11 // 5 - 6 // 5, 25 // 5 - 11 // 5, 7 - 25 // 5]
    assert sum(given) == 7
    assert discount_points_back({"lines": []}, {}, {1: Decimal(1)}) == 0


def test_the_receipt_shows_the_points_redeemed_on_their_own_line(till: Till) -> None:
    from drivers.escpos_codec import PrinterProfile, render_receipt, to_text

    till.loyalty.remember({"customer": CUSTOMER, "points": 1_000})
    sale = _sale(till, BOOK, WINE)
    sale.discount_line(1, Discount(amount=49, reason="scuffed"), till.clock.now())
    till.take_points_off(sale, 50)
    receipt = till.receipt(_pay_rest(till, sale))
    lines = render_text(receipt).splitlines()

    def row(left: str, right: str) -> list[str]:
        return [ln for ln in lines if re.fullmatch(rf"{re.escape(left)} +{re.escape(right)}", ln) and len(ln) == 42]

    assert len(row("Points redeemed: 50 pts", "-2.50")) == 1
    assert row("  discount", "-0.49") == [row("  discount", "-0.49")[0]]  # the item's own discount only
    assert not row("  discount", "-0.75") and not row("  discount", "-1.75")  # no points shares on the items
    assert row("Discounts", "-2.99") and row("TOTAL EUR", "7.49")  # 10.48 - 0.49 - 2.50
    assert "Points redeemed: 50 pts" in to_text(render_receipt(receipt, PrinterProfile()))


def test_the_shift_report_shows_the_points_part_of_the_discounts(till: Till) -> None:
    from appliance.reports import render_report

    till.loyalty.remember({"customer": CUSTOMER, "points": 1_000})
    sale = _sale(till, BOOK, WINE)
    sale.discount_line(1, Discount(amount=49, reason="scuffed"), till.clock.now())
    till.take_points_off(sale, 50)
    _pay_rest(till, sale)
    _pay_rest(till, _sale(till, BOOK))  # no discount at all
    report = till.shifts.report()
    assert (report["discounts"], report["points_discounts"]) == (299, 250)
    text = render_report(report, EUR)
    assert re.search(r"^Discounts given +2\.99$", text, re.M) and re.search(
        r"^  of which loyalty points +2\.50$", text, re.M
    )
    plain = {**report, "points_discounts": 0}
    assert "loyalty points" not in render_report(plain, EUR)


def test_a_return_receipt_prints_the_points_taken_back_of_a_sale_paid_in_cash(till: Till) -> None:
    sale = _sale(till, BOOK, BOOK)  # 6.98 earns 13
    done = _pay_rest(till, sale)
    _, text = _refund(till, done.committed.number, (1, 1))
    assert "Points taken back: 7 pts" in text and "Points given back" not in text


# -- the kiosk ----------------------------------------------------------------------------------------------


def test_the_cashier_api_takes_points_off_the_price_and_back(tmp_path: Path) -> None:
    from datetime import datetime

    from appliance.clock import FrozenClock
    from appliance.demo import DEMO_DEVICES
    from tests.test_kiosk_api import Api, _start

    config = parse_config(DEMO_DEVICES + "[loyalty]\nenabled = true\npoint_value = 5\nmin_redeem_points = 10\n",
                          environ={})  # fmt: skip
    running = _start(tmp_path, FrozenClock(datetime(2026, 3, 2, 9, 30, tzinfo=UTC)), config)
    try:
        with Api(running) as api:
            daemon = running.daemon
            path = "/sales/{}/loyalty-discount"
            assert api.post(path.format("x"), {"points": 10})[0] == 401
            assert api.call("DELETE", path.format("x"))[0] == 401
            token = api.login("ann", "1234")
            status, cart = api.post("/cart/items", {"code": BOOK}, token)
            assert status == 200
            status, cart = api.call("PATCH", "/cart/lines/1", {"quantity": "2"}, token)  # 6.98
            url = path.format(cart["id"])
            status, err = api.post(url, {"points": 10}, token)
            assert status == 422 and err["error"]["message"].startswith("attach a customer (or give a loyalty card)")
            running.call(lambda: setattr(daemon.sale, "customer_id", CUSTOMER))
            running.call(lambda: daemon.t.loyalty.remember({"customer": CUSTOMER, "points": 1_000}))
            head = api.head()
            for bad in ({"points": 0}, {"points": -5}, {"points": 10**12}, {"points": "ten"}, {"points": 1.5},
                        {"points": 10, "extra": 1}):  # fmt: skip
                assert api.post(url, bad, token)[0] == 422, bad
            assert api.post(path.format("0195a3e2-6a00-7abc-8def-000000000000"), {}, token)[0] == 404
            status, err = api.post(url, {"points": 5}, token)
            assert (status, err["error"]["message"]) == (409, "at least 10 points are redeemed at once")
            status, err = api.post(url, {"points": 140}, token)
            assert status == 409 and "at most 139 points" in err["error"]["message"]
            assert api.head() == head, "a refused request recorded something"

            status, body = api.post(url, {"points": None}, token)  # as many as the sale takes
            assert status == 200, body
            assert (body["points_discount"]["points"], body["points_discount"]["amount"]["minor"]) == (139, 695)
            assert body["cart"]["total"]["minor"] == 698 - 695 and body["cart"]["points_discount"]["capped"] is False
            assert api.post(url, {"points": 10}, token)[0] == 409
            status, cart = api.call("PATCH", "/cart/lines/1", {"quantity": "1"}, token)  # the sale shrinks
            assert cart["points_discount"]["capped"] is True
            assert cart["points_discount"]["message"] == ("the sale now takes only 69 of the 139 points; the other "
                                                          "70 go back to the customer when it is paid")  # fmt: skip
            status, body = api.call("DELETE", url, token=token)
            assert (status, body["released"], body["cart"]["total"]["minor"]) == (200, 139, 349)
            assert body["cart"]["points_discount"] is None
            status, err = api.call("DELETE", url, token=token)
            assert (status, err["error"]["message"]) == (409, "the sale has no points discount")

            status, err = api.post("/cart/customer", {"customer_id": None}, token)
            assert api.post(url, {"points": 60}, token)[0] == 422  # the customer went with it
            running.call(lambda: setattr(daemon.sale, "customer_id", CUSTOMER))
            assert api.post(url, {"points": 60}, token)[0] == 200
            status, err = api.post("/cart/customer", {"customer_id": None}, token)
            assert status == 409 and "remove the points discount first" in err["error"]["message"]
            status, paid = api.post("/cart/payments", {"kind": "cash"}, token)
            assert status == 200 and "Points redeemed: 60 pts" in paid["receipt"]["text"]
            assert running.call(lambda: daemon.t.loyalty.get(CUSTOMER).points) == 1_000 - 60
    finally:
        running.stop()


def test_the_points_discount_view_is_none_for_an_empty_or_plain_sale() -> None:
    from kiosk_ui.accounts import points_discount_view

    class _Fmt:
        def amount(self, minor: int) -> dict[str, Any]:
            return {"minor": minor}

    daemon: Any = SimpleNamespace(fmt=_Fmt())
    policy = SalePolicy(currency=EUR, tax=parse_config("").tax_policy(), tz=UTC)
    assert points_discount_view(daemon, None) is None
    assert points_discount_view(daemon, Sale(policy=policy)) is None


@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM} (apt install chromium)")
def test_the_cashier_screen_takes_points_off_and_back_with_one_button(tmp_path: Path) -> None:
    from playwright.sync_api import expect

    from appliance.daemon import Daemon
    from appliance.demo import DEMO_DEVICES
    from kiosk_ui.testing import DaemonThread, chromium_page, demo_prepare, log_in

    config = parse_config(DEMO_DEVICES + "[loyalty]\nenabled = true\npoint_value = 5\n", environ={})
    daemon = Daemon(config, tmp_path / "kiosk", fast_hash=True, prepare=demo_prepare(), health_interval=0.2)
    with DaemonThread(daemon) as running, chromium_page(height=900) as page:
        log_in(page, running.url)
        page.fill("#code", BOOK)
        page.keyboard.press("Enter")
        expect(page.locator("#lines tbody tr")).to_have_count(1)
        running.call(lambda: setattr(daemon.sale, "customer_id", CUSTOMER))
        running.call(lambda: daemon.t.loyalty.remember({"customer": CUSTOMER, "points": 500}))

        button = page.get_by_role("button", name="Points off")
        expect(button).to_have_attribute("title", re.compile("points off the price"))
        button.click()
        page.fill('dialog input[aria-label="Points (empty: as many as the sale takes)"]', "40")
        page.keyboard.press("Enter")
        expect(page.locator("#notice")).to_contain_text("40 points:")
        expect(page.locator("#t-due")).to_contain_text("1,49")  # 3.49 - 40 x 0.05
        page.keyboard.press("Control+i")  # the same control takes them off again
        page.get_by_role("button", name="Remove the points discount").click()
        expect(page.locator("#notice")).to_contain_text("40 points go back to the customer")
        expect(page.locator("#t-due")).to_contain_text("3,49")
