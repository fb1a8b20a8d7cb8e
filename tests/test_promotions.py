"""Tests for appliance.promotions: kinds, best-for-customer resolution, windows, allocation, JSON."""

from __future__ import annotations

import json
import time as clock
from collections.abc import Sequence
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from itertools import product
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.errors import InputError
from appliance.money import Currency, round_minor
from appliance.promotions import (
    AmountOff,
    BuyXGetY,
    MultiBuy,
    PercentOff,
    PromoContext,
    PromoLine,
    PromoResult,
    Promotion,
    SpendThreshold,
    Target,
    Window,
    allocate,
    evaluate,
    is_active,
    promotion_from_dict,
    promotion_to_dict,
)

EUR = Currency("EUR", 2)
BERLIN = ZoneInfo("Europe/Berlin")
# Monday 15 June 2026, 14:00 in Berlin (CEST, UTC+2).
NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
CTX = PromoContext(NOW, BERLIN)
D = Decimal


def line(
    key: str,
    sku: str,
    price: int,
    qty: int | str = 1,
    dept: str = "grocery",
    *,
    weighed: bool = False,
    eligible: bool = True,
) -> PromoLine:
    """A cart line; weighed lines take kg as a string and round their amount half-up."""
    quantity = D(qty)
    amount = round_minor(price * quantity) if weighed else price * int(quantity)
    return PromoLine(key, sku, dept, price, quantity, amount, weighed, eligible)


def skus(*names: str) -> Target:
    return Target(skus=frozenset(names))


def depts(*names: str) -> Target:
    return Target(departments=frozenset(names))


def run(lines: Sequence[PromoLine], promos: Sequence[Promotion], ctx: PromoContext = CTX) -> PromoResult:
    result = evaluate(lines, promos, ctx)
    check_invariants(lines, result)
    return result


def check_invariants(lines: Sequence[PromoLine], result: PromoResult) -> None:
    """What must hold for every result, whatever the promotions."""
    by_key = {ln.key: ln for ln in lines}
    assert set(result.line_discounts) == set(by_key)
    for applied in result.applied:
        assert applied.amount > 0
        assert sum(applied.allocations.values()) == applied.amount
        assert all(share > 0 for share in applied.allocations.values())
        for key in applied.allocations:
            assert applied.name in result.line_reasons[key]
    per_line: dict[str, int] = dict.fromkeys(by_key, 0)
    for applied in result.applied:
        for key, share in applied.allocations.items():
            per_line[key] += share
    assert per_line == dict(result.line_discounts)
    assert result.total == sum(a.amount for a in result.applied) == sum(per_line.values())
    for key, discount in result.line_discounts.items():
        ln = by_key[key]
        assert 0 <= discount <= max(ln.amount, 0)
        if not ln.eligible:
            assert discount == 0
            assert key not in result.line_reasons


def saving_of(result: PromoResult, promo_id: str) -> int:
    return sum(a.amount for a in result.applied if a.promo_id == promo_id)


# ------------------------------------------------------------------ unit offers


def test_percent_off_sku_rounds_once_half_up() -> None:
    # 20% of 2 x 2.49 = 0.996 -> 1.00; the other SKU is untouched.
    promo = PercentOff("p1", "Crisps -20%", skus("crisps"), D(20))
    result = run([line("a", "crisps", 249, 2), line("b", "milk", 99)], [promo])
    assert result.total == 100
    assert result.line_discounts == {"a": 100, "b": 0}
    assert result.line_reasons == {"a": ("Crisps -20%",)}


def test_percent_off_department_allocates_proportionally() -> None:
    promo = PercentOff("p1", "Dairy -10%", depts("dairy"), D(10))
    lines = [line("a", "milk", 100, dept="dairy"), line("b", "cheese", 300, dept="dairy"), line("c", "bread", 250)]
    result = run(lines, [promo])
    assert result.total == 40
    assert result.line_discounts == {"a": 10, "b": 30, "c": 0}


def test_amount_off_is_per_unit_and_capped_at_the_price() -> None:
    promo = AmountOff("a1", "50c off", skus("gum", "soap"), 50)
    result = run([line("a", "soap", 199, 3), line("b", "gum", 30, 2)], [promo])
    # 3 x 0.50 on soap; gum costs 0.30 so it can only go to zero.
    assert result.line_discounts == {"a": 150, "b": 60}
    assert result.total == 210


def test_target_with_nothing_listed_matches_everything() -> None:
    promo = PercentOff("all", "Everything -50%", Target(), D(50))
    result = run([line("a", "x", 100, dept="d1"), line("b", "y", 300, dept="d2")], [promo])
    assert result.line_discounts == {"a": 50, "b": 150}


def test_best_unit_offer_wins_per_line() -> None:
    lines = [line("a", "cola", 100, 2, dept="drinks"), line("b", "water", 40, 1, dept="drinks")]
    promos: list[Promotion] = [
        PercentOff("pct", "Drinks -25%", depts("drinks"), D(25)),
        AmountOff("amt", "Cola -0.30", skus("cola"), 30),
    ]
    result = run(lines, promos)
    assert result.line_discounts == {"a": 60, "b": 10}
    assert result.line_reasons == {"a": ("Cola -0.30",), "b": ("Drinks -25%",)}


def test_equal_unit_offers_tie_to_the_smallest_id() -> None:
    promos: list[Promotion] = [PercentOff("b", "B", skus("x"), D(10)), PercentOff("a", "A", skus("x"), D(10))]
    result = run([line("l", "x", 500)], promos)
    assert [a.promo_id for a in result.applied] == ["a"]


def test_weighed_lines_take_percent_and_per_kg_amounts() -> None:
    apples = line("a", "apples", 299, "1.234", dept="produce", weighed=True)  # 3.69
    assert apples.amount == 369
    result = run([apples], [PercentOff("p", "Produce -10%", depts("produce"), D(10))])
    assert result.total == 37  # 36.9 -> 37
    result = run([apples], [AmountOff("k", "0.50/kg off", skus("apples"), 50)])
    assert result.total == 62  # 0.50 x 1.234 = 0.617


def test_weighed_lines_never_count_as_units() -> None:
    lines = [line(f"w{i}", "apples", 300, "1.000", weighed=True) for i in range(4)]
    promos: list[Promotion] = [
        MultiBuy("m", "3 for 2", skus("apples"), 3, pay=2),
        BuyXGetY("b", "B1G1", skus("apples"), 1, skus("apples"), 1),
    ]
    assert run(lines, promos).total == 0


def test_fractional_counted_lines_are_measured_like_weighed_ones() -> None:
    cloth = PromoLine("c", "cloth", "fabric", 200, D("1.5"), 300)  # 1.5 m at 2.00
    promos: list[Promotion] = [
        AmountOff("a", "0.50/m off", skus("cloth"), 50),
        MultiBuy("m", "1 for 1.00", skus("cloth"), 1, price=100),
    ]
    result = run([cloth], promos)
    assert [(a.promo_id, a.amount) for a in result.applied] == [("a", 75)]


def test_amount_off_per_kg_never_exceeds_the_line() -> None:
    cheap = line("a", "carrots", 40, "0.500", weighed=True)  # 0.20
    result = run([cheap], [AmountOff("k", "1.00/kg off", skus("carrots"), 100)])
    assert result.line_discounts == {"a": 20}


# ------------------------------------------------------------------ multi-buy


def test_three_for_two_frees_the_cheapest_of_each_group() -> None:
    promo = MultiBuy("m", "3 for 2", depts("snacks"), 3, pay=2)
    prices = [500, 400, 300, 200, 100, 100]
    lines = [line(f"l{i}", f"s{i}", p, dept="snacks") for i, p in enumerate(prices)]
    result = run(lines, [promo])
    # Dearest first: (5, 4, 3) frees 3.00 and (2, 1, 1) frees 1.00.
    assert result.total == 400
    assert set(result.line_reasons) == {f"l{i}" for i in range(6)}


def test_three_for_two_needs_a_full_group() -> None:
    promo = MultiBuy("m", "3 for 2", skus("x"), 3, pay=2)
    assert run([line("a", "x", 100, 2)], [promo]).total == 0
    assert run([line("a", "x", 100, 3)], [promo]).total == 100
    assert run([line("a", "x", 100, 7)], [promo]).total == 200


def test_multibuy_groups_units_across_lines() -> None:
    promo = MultiBuy("m", "3 for 2", skus("x"), 3, pay=2)
    lines = [line("a", "x", 100), line("b", "x", 100), line("c", "x", 100)]
    result = run(lines, [promo])
    assert result.total == 100
    assert sorted(result.line_discounts.values()) == [33, 33, 34]


def test_n_for_a_fixed_price() -> None:
    promo = MultiBuy("m", "2 for 5.00", skus("wine"), 2, price=500)
    assert run([line("a", "wine", 300, 2)], [promo]).total == 100
    assert run([line("a", "wine", 300, 5)], [promo]).total == 200
    # Cheaper than the bundle price: no discount at all, and no reason shown.
    result = run([line("a", "wine", 200, 2)], [promo])
    assert result.total == 0
    assert result.line_reasons == {}


def test_fixed_price_bundle_takes_the_dearest_units() -> None:
    promo = MultiBuy("m", "2 for 5.00", depts("wine"), 2, price=500)
    lines = [
        line("a", "red", 400, dept="wine"),
        line("b", "white", 300, dept="wine"),
        line("c", "rose", 200, dept="wine"),
    ]
    result = run(lines, [promo])
    assert result.total == 200
    assert result.line_discounts["c"] == 0


def test_large_quantities_stay_fast() -> None:
    promo = MultiBuy("m", "3 for 2", skus("x"), 3, pay=2)
    started = clock.perf_counter()
    result = run([line("a", "x", 100, 10_000)], [promo])
    assert result.total == 3333 * 100
    assert clock.perf_counter() - started < 1.0


# ------------------------------------------------------------ buy X get Y


def test_buy_one_get_one_free_gives_the_cheaper_unit() -> None:
    promo = BuyXGetY("b", "B1G1", depts("toys"), 1, depts("toys"), 1)
    result = run([line("a", "car", 1000, dept="toys"), line("b", "ball", 400, dept="toys")], [promo])
    assert result.total == 400
    assert result.line_discounts == {"a": 0, "b": 400}
    # The bought line is part of the deal, so it shows the reason too.
    assert result.line_reasons == {"a": ("B1G1",), "b": ("B1G1",)}


def test_buy_two_get_one_half_price() -> None:
    promo = BuyXGetY("b", "B2G1 half", skus("x"), 2, skus("x"), 1, D(50))
    assert run([line("a", "x", 301, 3)], [promo]).total == 151  # 1.505 -> 1.51
    assert run([line("a", "x", 300, 2)], [promo]).total == 0
    assert run([line("a", "x", 300, 6)], [promo]).total == 300


def test_cross_sell_discounts_the_dearest_get_unit() -> None:
    promo = BuyXGetY("b", "Coffee + pastry", skus("coffee"), 2, depts("bakery"), 1)
    lines = [
        line("c", "coffee", 250, 2, dept="drinks"),
        line("p1", "croissant", 150, dept="bakery"),
        line("p2", "muffin", 220, dept="bakery"),
    ]
    result = run(lines, [promo])
    assert result.total == 220
    assert result.line_discounts == {"c": 0, "p1": 0, "p2": 220}
    assert "p1" not in result.line_reasons
    assert run([*lines[1:], line("c", "coffee", 250, 1, dept="drinks")], [promo]).total == 0


def test_cross_sell_with_overlapping_targets_keeps_enough_buy_units() -> None:
    # Buy any 1 drink, get a cola free: with only two colas, one must be the bought unit.
    promo = BuyXGetY("b", "Drink + cola", depts("drinks"), 1, skus("cola"), 1)
    result = run([line("a", "cola", 120, 2, dept="drinks")], [promo])
    assert result.total == 120


# ------------------------------------------------------------ spend threshold


def test_spend_threshold_amount_and_percent() -> None:
    lines = [line("a", "x", 3000), line("b", "y", 2000)]
    assert run(lines, [SpendThreshold("t", "5 off 50", 5000, amount=500)]).line_discounts == {"a": 300, "b": 200}
    assert run(lines, [SpendThreshold("t", "10% over 50", 5000, percent=D(10))]).total == 500
    assert run(lines, [SpendThreshold("t", "5 off 60", 6000, amount=500)]).total == 0


def test_spend_threshold_counts_what_is_left_after_item_promotions() -> None:
    lines = [line("a", "x", 3000), line("b", "y", 2000)]
    item = PercentOff("p", "x -10%", skus("x"), D(10))
    cart = SpendThreshold("t", "5 off 50", 5000, amount=500)
    # 50.00 - 3.00 = 47.00 is below the threshold.
    result = run(lines, [item, cart])
    assert [a.promo_id for a in result.applied] == ["p"]
    result = run([*lines, line("c", "z", 500)], [item, cart])
    assert [a.promo_id for a in result.applied] == ["p", "t"]
    # 5.00 spread over 27.00 + 20.00 + 5.00 remaining.
    assert result.applied[1].allocations == {"a": 260, "b": 192, "c": 48}
    assert result.line_reasons["a"] == ("x -10%", "5 off 50")


def test_spend_threshold_on_a_target_only() -> None:
    lines = [line("a", "wine", 2500, dept="wine"), line("b", "bread", 300)]
    promo = SpendThreshold("t", "Wine 10%", 2000, percent=D(10), target=depts("wine"))
    result = run(lines, [promo])
    assert result.line_discounts == {"a": 250, "b": 0}


def test_only_the_best_spend_threshold_applies() -> None:
    lines = [line("a", "x", 12000)]
    tiers = [
        SpendThreshold("t50", "Spend 50", 5000, amount=500),
        SpendThreshold("t100", "Spend 100", 10000, amount=1500),
    ]
    result = run(lines, tiers)
    assert [(a.promo_id, a.amount) for a in result.applied] == [("t100", 1500)]


def test_spend_threshold_never_exceeds_the_remaining_amount() -> None:
    promo = SpendThreshold("t", "10 off", 0, amount=1000)
    assert run([line("a", "x", 300)], [promo]).line_discounts == {"a": 300}


# ------------------------------------------------------------ competition


def test_three_for_two_beats_twenty_percent_when_bigger() -> None:
    lines = [line("a", "x", 1000, 3, dept="d")]
    promos: list[Promotion] = [
        MultiBuy("m", "3 for 2", skus("x"), 3, pay=2),
        PercentOff("p", "Dept -20%", depts("d"), D(20)),
    ]
    result = run(lines, promos)
    assert result.total == 1000
    assert [a.promo_id for a in result.applied] == ["m"]


def test_twenty_percent_beats_a_weak_multibuy() -> None:
    lines = [line("a", "x", 1000, 3, dept="d")]
    promos: list[Promotion] = [
        MultiBuy("m", "3 for 25", skus("x"), 3, price=2500),
        PercentOff("p", "Dept -20%", depts("d"), D(20)),
    ]
    result = run(lines, promos)
    assert result.total == 600
    assert [a.promo_id for a in result.applied] == ["p"]


def test_units_left_over_by_a_multibuy_take_the_unit_offer() -> None:
    lines = [line("a", "x", 1000, 4, dept="d")]
    promos: list[Promotion] = [
        MultiBuy("m", "3 for 2", skus("x"), 3, pay=2),
        PercentOff("p", "Dept -20%", depts("d"), D(20)),
    ]
    result = run(lines, promos)
    assert {a.promo_id: a.amount for a in result.applied} == {"m": 1000, "p": 200}
    assert result.line_reasons == {"a": ("3 for 2", "Dept -20%")}


def test_multibuy_leaves_units_with_a_better_offer_alone() -> None:
    # 3 for 2 on the range, and half price on x only: x keeps its half price,
    # the multi-buy is made of the other units.
    lines = [line("x", "x", 1000, 2), line("y", "y", 1000), line("z", "z", 100, 2)]
    promos: list[Promotion] = [
        MultiBuy("m", "3 for 2", skus("x", "y", "z"), 3, pay=2),
        PercentOff("p", "x half", skus("x"), D(50)),
    ]
    result = run(lines, promos)
    assert result.total == 1100
    assert result.line_discounts["x"] == 1000


def test_competing_multibuys_mix_to_the_best_total() -> None:
    # 7 units at 10.00: "3 for 2" saves 10 per 3 units, "2 for 12" saves 8 per 2 units.
    # Best is one 3-group and two 2-groups (26.00), not two 3-groups (20) or three pairs (24).
    lines = [line("a", "x", 1000, 7)]
    promos: list[Promotion] = [
        MultiBuy("m3", "3 for 2", skus("x"), 3, pay=2),
        MultiBuy("m2", "2 for 12", skus("x"), 2, price=1200),
    ]
    result = run(lines, promos)
    assert result.total == 2600
    assert {a.promo_id: a.amount for a in result.applied} == {"m2": 1600, "m3": 1000}


def test_a_unit_goes_to_one_item_promotion_only() -> None:
    lines = [line("a", "x", 1000, 2)]
    promos: list[Promotion] = [
        BuyXGetY("b", "B1G1", skus("x"), 1, skus("x"), 1),
        MultiBuy("m", "2 for 15", skus("x"), 2, price=1500),
        PercentOff("p", "x -10%", skus("x"), D(10)),
    ]
    result = run(lines, promos)
    assert [(a.promo_id, a.amount) for a in result.applied] == [("b", 1000)]


def _brute_force(count: int, price: int, promos: Sequence[Promotion]) -> int:
    """Best saving for ``count`` identical units, by trying every number of deals."""
    unit_offer = 0
    deals: list[tuple[int, int]] = []  # (units per deal, saving per deal)
    for p in promos:
        if isinstance(p, PercentOff):
            unit_offer = max(unit_offer, int(p.percent * price / 100))
        elif isinstance(p, AmountOff):
            unit_offer = max(unit_offer, min(p.amount, price))
        elif isinstance(p, MultiBuy):
            saving = (p.buy - p.pay) * price if p.pay is not None else p.buy * price - (p.price or 0)
            if saving > 0:
                deals.append((p.buy, saving))
        elif isinstance(p, BuyXGetY):
            deals.append((p.buy + p.get, int(p.get * price * p.percent / 100)))
    best = 0
    for counts in product(*(range(count // size + 1) for size, _ in deals)):
        used = sum(n * size for n, (size, _) in zip(counts, deals, strict=True))
        if used <= count:
            total = sum(n * s for n, (_, s) in zip(counts, deals, strict=True))
            best = max(best, total + (count - used) * unit_offer)
    return best


@st.composite
def single_sku_promos(draw: st.DrawFn) -> list[Promotion]:
    x = skus("x")
    kinds = draw(st.lists(st.integers(0, 4), min_size=1, max_size=3))
    promos: list[Promotion] = []
    for n, kind in enumerate(kinds):
        pid, name = f"p{n}", f"promo {n}"
        if kind == 0:
            promos.append(PercentOff(pid, name, x, D(draw(st.sampled_from([10, 20, 25, 50, 100])))))
        elif kind == 1:
            promos.append(AmountOff(pid, name, x, draw(st.integers(1, 400))))
        elif kind == 2:
            buy = draw(st.integers(2, 4))
            promos.append(MultiBuy(pid, name, x, buy, pay=draw(st.integers(0, buy - 1))))
        elif kind == 3:
            promos.append(MultiBuy(pid, name, x, draw(st.integers(1, 4)), price=draw(st.integers(1, 2000))))
        else:
            pct = D(draw(st.sampled_from([25, 50, 100])))
            promos.append(BuyXGetY(pid, name, x, draw(st.integers(1, 3)), x, draw(st.integers(1, 2)), pct))
    return promos


@settings(max_examples=150, deadline=None)
@given(
    split=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    price=st.integers(1, 30).map(lambda n: n * 20),
    promos=single_sku_promos(),
)
def test_identical_units_get_the_optimal_combination(split: list[int], price: int, promos: list[Promotion]) -> None:
    lines = [line(f"l{i}", "x", price, q) for i, q in enumerate(split)]
    assert run(lines, promos).total == _brute_force(sum(split), price, promos)


# ------------------------------------------------------------ coupons and windows


def test_coupon_promotions_need_the_code() -> None:
    promo = PercentOff("c", "Staff 10%", Target(), D(10), coupon="STAFF10")
    lines = [line("a", "x", 1000)]
    assert run(lines, [promo]).total == 0
    assert run(lines, [promo], PromoContext(NOW, BERLIN, frozenset({"OTHER"}))).total == 0
    assert run(lines, [promo], PromoContext(NOW, BERLIN, frozenset({"staff10"}))).total == 100
    assert is_active(promo, PromoContext(NOW, BERLIN, frozenset({"STAFF10"})))


def test_window_start_is_inclusive_and_end_exclusive() -> None:
    window = Window(start=NOW, end=NOW + timedelta(hours=1))
    assert window.contains(NOW, BERLIN)
    assert window.contains(NOW + timedelta(minutes=59), BERLIN)
    assert not window.contains(NOW + timedelta(hours=1), BERLIN)
    assert not window.contains(NOW - timedelta(seconds=1), BERLIN)


def test_window_instants_compare_across_zones() -> None:
    # Starts at midnight Berlin time = 22:00 UTC the day before.
    window = Window(start=datetime(2026, 6, 16, 0, 0, tzinfo=BERLIN))
    assert not window.contains(datetime(2026, 6, 15, 21, 59, tzinfo=UTC), BERLIN)
    assert window.contains(datetime(2026, 6, 15, 22, 0, tzinfo=UTC), BERLIN)


def test_weekday_is_the_store_local_day() -> None:
    sunday_only = Window(weekdays=frozenset({6}))
    late_sunday_utc = datetime(2026, 6, 14, 23, 30, tzinfo=UTC)  # already Monday 01:30 in Berlin
    assert not sunday_only.contains(late_sunday_utc, BERLIN)
    assert sunday_only.contains(late_sunday_utc, ZoneInfo("America/New_York"))
    promo = PercentOff("s", "Sunday", Target(), D(10), window=sunday_only)
    assert run([line("a", "x", 1000)], [promo], PromoContext(late_sunday_utc, BERLIN)).total == 0


def test_daily_window_uses_local_time() -> None:
    happy_hour = Window(daily_start=time(17), daily_end=time(19))
    assert happy_hour.contains(datetime(2026, 6, 15, 15, 0, tzinfo=UTC), BERLIN)  # 17:00 local
    assert not happy_hour.contains(datetime(2026, 6, 15, 17, 0, tzinfo=UTC), BERLIN)  # 19:00 local
    assert not happy_hour.contains(datetime(2026, 6, 15, 17, 0, tzinfo=UTC), ZoneInfo("Asia/Tokyo"))
    # In winter Berlin is UTC+1.
    assert happy_hour.contains(datetime(2026, 1, 15, 16, 30, tzinfo=UTC), BERLIN)


def test_daily_window_across_midnight_belongs_to_its_starting_day() -> None:
    friday_night = Window(weekdays=frozenset({4}), daily_start=time(22), daily_end=time(2))
    friday_2330 = datetime(2026, 6, 19, 23, 30, tzinfo=BERLIN)
    assert friday_night.contains(friday_2330, BERLIN)
    assert friday_night.contains(friday_2330 + timedelta(hours=2), BERLIN)  # Saturday 01:30
    assert not friday_night.contains(friday_2330 + timedelta(hours=3), BERLIN)  # Saturday 02:30
    assert not friday_night.contains(friday_2330 - timedelta(days=1), BERLIN)  # Thursday 23:30
    assert not friday_night.contains(datetime(2026, 6, 19, 1, 30, tzinfo=BERLIN), BERLIN)  # Thursday's night


def test_daily_window_with_one_bound() -> None:
    mornings = Window(daily_end=time(10))
    assert mornings.contains(datetime(2026, 6, 15, 9, 59, tzinfo=BERLIN), BERLIN)
    assert not mornings.contains(datetime(2026, 6, 15, 10, 0, tzinfo=BERLIN), BERLIN)
    evenings = Window(daily_start=time(18))
    assert evenings.contains(datetime(2026, 6, 15, 23, 59, tzinfo=BERLIN), BERLIN)
    assert not evenings.contains(datetime(2026, 6, 15, 17, 59, tzinfo=BERLIN), BERLIN)


def test_expired_promotions_do_not_apply() -> None:
    promo = PercentOff("e", "Old", Target(), D(10), window=Window(end=NOW))
    assert run([line("a", "x", 1000)], [promo]).total == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"start": datetime(2026, 1, 1)}, "timezone-aware"),
        ({"start": NOW, "end": NOW}, "not before end"),
        ({"weekdays": frozenset({7})}, "weekdays"),
        ({"weekdays": {1}}, "weekdays"),
        ({"daily_start": time(9), "daily_end": time(9)}, "differ"),
        ({"daily_end": time(0)}, "differ"),
        ({"daily_start": time(9, tzinfo=UTC)}, "naive local time"),
    ],
)
def test_bad_windows_are_rejected(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError, match=message):
        Window(**kwargs)


def test_context_needs_an_aware_now() -> None:
    with pytest.raises(InputError, match="timezone-aware"):
        PromoContext(datetime(2026, 6, 15, 12, 0), BERLIN)


# ------------------------------------------------------------ eligibility and input


def test_ineligible_lines_take_nothing_and_do_not_count() -> None:
    lines = [line("a", "x", 3000, eligible=False), line("b", "x", 3000), line("c", "x", 3000)]
    promos: list[Promotion] = [
        MultiBuy("m", "3 for 2", skus("x"), 3, pay=2),
        SpendThreshold("t", "Spend 80", 8000, amount=1000),
    ]
    result = run(lines, promos)
    assert result.total == 0
    result = run(lines, [PercentOff("p", "-10%", skus("x"), D(10))])
    assert result.line_discounts == {"a": 0, "b": 300, "c": 300}


def test_ineligible_lines_may_carry_any_amount() -> None:
    label_price = PromoLine("l", "x", "grocery", 500, D(1), 377, eligible=False)
    result = run([label_price, line("a", "x", 500)], [PercentOff("p", "-10%", skus("x"), D(10))])
    assert result.line_discounts == {"l": 0, "a": 50}


def test_returns_and_free_lines_are_ignored() -> None:
    refund = PromoLine("r", "x", "grocery", 500, D(-1), -500)
    free = line("f", "x", 0, 3)
    result = run([refund, free, line("a", "x", 500)], [PercentOff("p", "-10%", skus("x"), D(10))])
    assert result.line_discounts == {"r": 0, "f": 0, "a": 50}


def test_empty_cart_and_no_promotions() -> None:
    assert run([], [PercentOff("p", "-10%", Target(), D(10))]).total == 0
    result = run([line("a", "x", 100)], [])
    assert result.applied == ()
    assert result.line_discounts == {"a": 0}


def test_duplicate_keys_and_ids_are_rejected() -> None:
    with pytest.raises(InputError, match="duplicate line key 'a'"):
        evaluate([line("a", "x", 1), line("a", "y", 2)], [], CTX)
    promo = PercentOff("p", "P", Target(), D(10))
    with pytest.raises(InputError, match="duplicate promotion id 'p'"):
        evaluate([], [promo, promo], CTX)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: PromoLine("a", "x", "d", 100, D(2), 150), "is not unit_price"),
        (lambda: PromoLine("a", "x", "d", 100, 2, 200), "finite Decimal"),  # type: ignore[arg-type]
        (lambda: PromoLine("", "x", "d", 100, D(1), 100), "non-empty"),
        (lambda: PercentOff("p", "P", Target(), 0.5), "percent"),  # type: ignore[arg-type]
        (lambda: PercentOff("p", "P", Target(), D(0)), r"\(0, 100\]"),
        (lambda: PercentOff("p", "P", Target(), D(101)), r"\(0, 100\]"),
        (lambda: PercentOff("", "P", Target(), D(1)), "id"),
        (lambda: PercentOff("p", " ", Target(), D(1)), "name"),
        (lambda: PercentOff("p", "P", Target(), D(1), coupon=""), "coupon"),
        (lambda: AmountOff("p", "P", Target(), 0), "amount"),
        (lambda: AmountOff("p", "P", Target(), True), "amount"),
        (lambda: MultiBuy("p", "P", Target(), 3, pay=3), "less than buy"),
        (lambda: MultiBuy("p", "P", Target(), 3, pay=2, price=500), "exactly one"),
        (lambda: MultiBuy("p", "P", Target(), 3), "exactly one"),
        (lambda: MultiBuy("p", "P", Target(), 0, price=5), "buy"),
        (lambda: MultiBuy("p", "P", Target(), 2, price=0), "price"),
        (lambda: BuyXGetY("p", "P", Target(), 1, Target(), 0), "get"),
        (lambda: SpendThreshold("p", "P", 100), "exactly one"),
        (lambda: SpendThreshold("p", "P", -1, amount=5), "threshold"),
        (lambda: SpendThreshold("p", "P", 100, amount=5, percent=D(5)), "exactly one"),
        (lambda: Target(skus={"x"}), "frozenset"),  # type: ignore[arg-type]
        (lambda: Target(skus=frozenset({""})), "non-empty"),
    ],
)
def test_bad_values_are_rejected(build: Any, message: str) -> None:
    with pytest.raises(InputError, match=message):
        build()


# ------------------------------------------------------------ allocation


def test_allocate_largest_remainder_ties_by_key() -> None:
    assert allocate(100, {"a": 1, "b": 1, "c": 1}) == {"a": 34, "b": 33, "c": 33}
    assert allocate(2, {"c": 1, "b": 1, "a": 1}) == {"a": 1, "b": 1}
    assert allocate(10, {"a": 1, "b": 3}) == {"a": 3, "b": 7}  # 2.5 / 7.5: tie goes to "a"
    assert allocate(0, {"a": 5}) == {}
    assert allocate(5, {"a": 0, "b": 2}) == {"b": 5}


def test_allocate_rejects_bad_input() -> None:
    with pytest.raises(InputError):
        allocate(-1, {"a": 1})
    with pytest.raises(InputError):
        allocate(1, {"a": -1})
    with pytest.raises(InputError, match="zero weight"):
        allocate(1, {"a": 0})


@given(
    weights=st.dictionaries(st.text("abcdef", min_size=1, max_size=3), st.integers(0, 10_000), min_size=1),
    fraction=st.fractions(0, 1),
)
def test_allocate_is_proportional_and_exact(weights: dict[str, int], fraction: Any) -> None:
    total = sum(weights.values())
    amount = int(total * fraction)
    if total == 0:
        amount = 0
    shares = allocate(amount, weights)
    assert sum(shares.values()) == amount
    for key, share in shares.items():
        assert 0 < share <= weights[key]
        assert abs(share * total - amount * weights[key]) < total


# ------------------------------------------------------------ random carts


@st.composite
def targets(draw: st.DrawFn) -> Target:
    return Target(
        skus=frozenset(draw(st.lists(st.sampled_from("abcd"), max_size=2))),
        departments=frozenset(draw(st.lists(st.sampled_from(["d1", "d2"]), max_size=1))),
    )


@st.composite
def promotions(draw: st.DrawFn) -> list[Promotion]:
    out: list[Promotion] = []
    for n in range(draw(st.integers(0, 5))):
        pid, name = f"p{n}", draw(st.sampled_from(["Deal", "Sale", f"Promo {n}"]))
        kind = draw(st.integers(0, 5))
        percent = D(draw(st.integers(1, 100)))
        if kind == 0:
            out.append(PercentOff(pid, name, draw(targets()), percent))
        elif kind == 1:
            out.append(AmountOff(pid, name, draw(targets()), draw(st.integers(1, 500))))
        elif kind == 2:
            buy = draw(st.integers(1, 4))
            out.append(MultiBuy(pid, name, draw(targets()), buy, pay=draw(st.integers(0, buy - 1))))
        elif kind == 3:
            out.append(MultiBuy(pid, name, draw(targets()), draw(st.integers(1, 4)), price=draw(st.integers(1, 900))))
        elif kind == 4:
            buy_t = draw(targets())
            get_t = buy_t if draw(st.booleans()) else draw(targets())
            out.append(BuyXGetY(pid, name, buy_t, draw(st.integers(1, 3)), get_t, draw(st.integers(1, 2)), percent))
        else:
            amount = draw(st.none() | st.integers(1, 3000))
            out.append(
                SpendThreshold(
                    pid,
                    name,
                    draw(st.integers(0, 5000)),
                    amount=amount,
                    percent=percent if amount is None else None,
                    target=draw(targets()),
                )
            )
    return out


@st.composite
def carts(draw: st.DrawFn) -> list[PromoLine]:
    lines = []
    for n in range(draw(st.integers(0, 8))):
        sku = draw(st.sampled_from("abcde"))
        dept = draw(st.sampled_from(["d1", "d2", "d3"]))
        price = draw(st.integers(0, 1500))
        eligible = draw(st.booleans() | st.just(True))
        if draw(st.booleans() | st.just(False)):
            kg = D(draw(st.integers(1, 3000))) / 1000
            lines.append(line(f"k{n}", sku, price, str(kg), dept, weighed=True, eligible=eligible))
        else:
            lines.append(line(f"k{n}", sku, price, draw(st.integers(1, 6)), dept, eligible=eligible))
    return lines


@settings(max_examples=100, deadline=None)
@given(lines=carts(), promos=promotions(), data=st.data())
def test_random_carts_hold_invariants_and_ignore_input_order(
    lines: list[PromoLine], promos: list[Promotion], data: st.DataObject
) -> None:
    result = run(lines, promos)
    shuffled = evaluate(data.draw(st.permutations(lines)), data.draw(st.permutations(promos)), CTX)
    assert shuffled == result
    # Every item-level discount comes from one promotion per unit at most.
    for applied in result.applied:
        assert applied.promo_id in {p.id for p in promos}


@st.composite
def deal_promotions(draw: st.DrawFn) -> list[Promotion]:
    """Multi-buys and free-item BXGYs only: savings in whole minor units, no rounding."""
    out: list[Promotion] = []
    for n in range(draw(st.integers(1, 7))):
        target = draw(targets())
        kind = draw(st.integers(0, 2))
        if kind == 0:
            buy = draw(st.integers(2, 4))
            out.append(MultiBuy(f"p{n}", "mb", target, buy, pay=draw(st.integers(0, buy - 1))))
        elif kind == 1:
            out.append(MultiBuy(f"p{n}", "mbp", target, draw(st.integers(2, 3)), price=draw(st.integers(1, 900))))
        else:
            get_target = target if draw(st.booleans()) else draw(targets())
            out.append(BuyXGetY(f"p{n}", "bx", target, draw(st.integers(1, 2)), get_target, 1))
    return out


@settings(max_examples=60, deadline=None)
@given(lines=carts(), promos=deal_promotions())
def test_combining_never_does_worse_than_the_best_single_promotion(
    lines: list[PromoLine], promos: list[Promotion]
) -> None:
    # Holds on every path: exhaustive search, counts-only search and greedy fallback.
    best_single = max(evaluate(lines, [p], CTX).total for p in promos)
    assert run(lines, promos).total >= best_single


def test_big_competing_groups_fall_back_to_greedy_and_stay_sound() -> None:
    lines = [line(f"l{i}", "x", 100 + 10 * i, 5, "d") for i in range(10)]
    promos: list[Promotion] = [
        MultiBuy("a", "3 for 2", depts("d"), 3, pay=2),
        MultiBuy("b", "4 for 3", depts("d"), 4, pay=3),
        MultiBuy("c", "2 for 2.50", depts("d"), 2, price=250),
        BuyXGetY("e", "B2G1", depts("d"), 2, depts("d"), 1),
        BuyXGetY("f", "B1G1 half", depts("d"), 1, depts("d"), 1, D(50)),
    ]
    started = clock.perf_counter()
    result = run(lines, promos)
    assert clock.perf_counter() - started < 0.5
    assert result.total >= max(evaluate(lines, [p], CTX).total for p in promos)


# ------------------------------------------------------------ speed


def _busy_cart() -> tuple[list[PromoLine], list[Promotion]]:
    lines = [line(f"l{i:02}", f"s{i % 35}", 100 + 37 * i, 1 + i % 3, f"d{i % 6}") for i in range(50)]
    promos: list[Promotion] = []
    for k in range(20):
        target = depts(f"d{k % 6}") if k % 4 == 0 else skus(*(f"s{(k * 7 + j) % 35}" for j in range(4)))
        kind = k % 5
        if kind == 0:
            promos.append(PercentOff(f"p{k}", "pct", target, D(15)))
        elif kind == 1:
            promos.append(AmountOff(f"p{k}", "amt", target, 40))
        elif kind == 2:
            promos.append(MultiBuy(f"p{k}", "3 for 2", target, 3, pay=2))
        elif kind == 3:
            promos.append(MultiBuy(f"p{k}", "2 for 15", target, 2, price=1500))
        else:
            promos.append(BuyXGetY(f"p{k}", "b1g1 half", target, 1, target, 1, D(50)))
    promos.append(SpendThreshold("t", "Spend 100", 10000, amount=1000))
    return lines, promos


def test_busy_cart_is_fast() -> None:
    lines, promos = _busy_cart()
    result = run(lines, promos)
    assert result.total > 0
    rounds = 50
    started = clock.perf_counter()
    for _ in range(rounds):
        evaluate(lines, promos, CTX)
    per_call = (clock.perf_counter() - started) / rounds
    # Typically well under a millisecond; the bound only catches blow-ups on slow CI.
    assert per_call < 0.02


# ------------------------------------------------------------ JSON form


ROUND_TRIP: list[Promotion] = [
    PercentOff("p1", "Dairy -12.5%", depts("dairy"), D("12.5")),
    AmountOff("p2", "Soap -0.50", skus("soap", "gel"), 50, coupon="SOAP"),
    MultiBuy(
        "p3",
        "3 for 2",
        Target(skus=frozenset({"a"}), departments=frozenset({"b"})),
        3,
        pay=2,
        window=Window(
            start=datetime(2026, 6, 1, tzinfo=BERLIN),
            end=datetime(2026, 7, 1, 0, 0, tzinfo=UTC),
            weekdays=frozenset({4, 5}),
            daily_start=time(17, 30),
            daily_end=time(2),
        ),
    ),
    MultiBuy("p4", "2 for 5.00", skus("wine"), 2, price=500),
    BuyXGetY("p5", "Coffee + pastry", skus("coffee"), 2, depts("bakery"), 1, D(50)),
    BuyXGetY("p6", "B1G1", Target(), 1, Target(), 1),
    SpendThreshold("p7", "Spend 50 save 5", 5000, amount=500),
    SpendThreshold("p8", "Wine 10%", 3000, percent=D(10), target=depts("wine"), window=Window(weekdays=frozenset({0}))),
]


@pytest.mark.parametrize("promo", ROUND_TRIP, ids=lambda p: p.id)
def test_dict_round_trip(promo: Promotion) -> None:
    data = json.loads(json.dumps(promotion_to_dict(promo, EUR)))
    assert promotion_from_dict(data, EUR) == promo


def test_dict_form_uses_major_units_and_names() -> None:
    data = promotion_to_dict(ROUND_TRIP[2], EUR)
    assert data["kind"] == "multi_buy"
    assert data["window"]["weekdays"] == ["fri", "sat"]
    assert data["window"]["daily_start"] == "17:30:00"
    assert promotion_to_dict(ROUND_TRIP[6], EUR)["threshold"] == "50.00"
    assert promotion_to_dict(ROUND_TRIP[0], EUR)["percent"] == "12.5"
    jpy = promotion_from_dict(
        {"id": "j", "name": "J", "kind": "amount_off", "target": {}, "amount": "50"}, Currency("JPY", 0)
    )
    assert isinstance(jpy, AmountOff)
    assert jpy.amount == 50


GOOD = {"id": "p", "name": "P", "kind": "percent_off", "target": {"skus": ["x"]}, "percent": "20"}


def test_dict_accepts_minimal_and_null_optionals() -> None:
    promo = promotion_from_dict(
        {
            "id": "m",
            "name": "M",
            "kind": "multi_buy",
            "target": {"skus": ["x"]},
            "buy": 3,
            "pay": 2,
            "price": None,
            "coupon": None,
            "window": None,
        },
        EUR,
    )
    assert promo == MultiBuy("m", "M", skus("x"), 3, pay=2)
    windowed = promotion_from_dict(
        {**GOOD, "window": {"start": "2026-06-01T00:00:00Z", "weekdays": ["sun", "sat"], "daily_end": "10:00"}},
        EUR,
    )
    assert windowed.window == Window(
        start=datetime(2026, 6, 1, tzinfo=UTC), weekdays=frozenset({5, 6}), daily_end=time(10)
    )
    threshold = promotion_from_dict(
        {"id": "t", "name": "T", "kind": "spend_threshold", "threshold": "10", "percent": "5"}, EUR
    )
    assert threshold == SpendThreshold("t", "T", 1000, percent=D(5))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": "red"}, "unknown key"),
        ({"kind": "bogo"}, "kind must be one of"),
        ({"id": ""}, "id"),
        ({"id": 7}, "id"),
        ({"name": None}, "name"),
        ({"percent": 20}, 'string like "20"'),
        ({"percent": "abc"}, "not a number"),
        ({"percent": "NaN"}, "not a finite number"),
        ({"percent": "0"}, r"\(0, 100\]"),
        ({"percent": "100.5"}, r"\(0, 100\]"),
        ({"target": None}, "target must be an object"),
        ({"target": ["x"]}, "target must be an object"),
        ({"target": {"sku": ["x"]}}, "unknown key"),
        ({"target": {"skus": "x"}}, "list of non-empty strings"),
        ({"target": {"skus": [1]}}, "list of non-empty strings"),
        ({"coupon": ""}, "coupon"),
        ({"window": {"start": "2026-06-01T00:00:00"}}, "no UTC offset"),
        ({"window": {"start": "yesterday"}}, "not an ISO 8601 datetime"),
        ({"window": {"weekdays": ["monday"]}}, "weekdays"),
        ({"window": {"daily_start": "25:00"}}, "not a time"),
        ({"window": {"daily_start": 17}}, "time string"),
        ({"window": {"hours": 3}}, "unknown key"),
        ({"window": "always"}, "window must be an object"),
    ],
)
def test_bad_dicts_are_rejected(change: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError, match=message):
        promotion_from_dict({**GOOD, **change}, EUR)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"id": "p", "kind": "percent_off", "target": {}, "percent": "5"}, "missing key"),
        ({"id": "p", "name": "P", "kind": "amount_off", "target": {}}, "missing key.*amount"),
        ({"id": "p", "name": "P", "kind": "amount_off", "target": {}, "amount": 0.5}, "major-unit string"),
        ({"id": "p", "name": "P", "kind": "amount_off", "target": {}, "amount": "0.505"}, "more than 2 decimals"),
        ({"id": "p", "name": "P", "kind": "amount_off", "target": {}, "amount": "0"}, "amount"),
        ({"id": "p", "name": "P", "kind": "multi_buy", "target": {}, "buy": "3", "pay": 2}, "integer"),
        ({"id": "p", "name": "P", "kind": "multi_buy", "target": {}, "buy": True, "pay": 0}, "integer"),
        ({"id": "p", "name": "P", "kind": "multi_buy", "target": {}, "buy": 3, "pay": 2, "price": "5"}, "exactly one"),
        ({"id": "p", "name": "P", "kind": "multi_buy", "target": {}, "buy": 2, "pay": 2}, "less than buy"),
        ({"id": "p", "name": "P", "kind": "buy_x_get_y", "buy_target": {}, "buy": 1, "get": 1}, "missing key"),
        (
            {"id": "p", "name": "P", "kind": "buy_x_get_y", "buy_target": {}, "get_target": None, "buy": 1, "get": 1},
            "get_target must be an object",
        ),
        ({"id": "p", "name": "P", "kind": "spend_threshold", "threshold": "10"}, "exactly one"),
        ({"id": "p", "name": "P", "kind": "spend_threshold", "threshold": "10", "pay": 1}, "unknown key"),
        (["not", "a", "dict"], "must be an object"),
    ],
)
def test_bad_dicts_by_kind_are_rejected(data: Any, message: str) -> None:
    with pytest.raises(InputError, match=message):
        promotion_from_dict(data, EUR)


def test_error_messages_name_the_promotion() -> None:
    with pytest.raises(InputError, match="promotion 'p'"):
        promotion_from_dict({**GOOD, "percent": "-3"}, EUR)
