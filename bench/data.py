"""Synthetic but realistic data for the benchmarks: catalogs, carts, promotions, sale documents.

Everything is deterministic for a given seed (sale ids excepted: they are UUIDv7s).
"""

from __future__ import annotations

import csv
import random
from collections.abc import Iterator, Sequence
from datetime import datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from appliance.catalog import Item
from appliance.config import Config
from appliance.promotions import (
    AmountOff,
    BuyXGetY,
    MultiBuy,
    PercentOff,
    Promotion,
    SpendThreshold,
    Target,
    Window,
)
from appliance.sale import Sale, SalePolicy

#: Departments and the tax class of their items.
DEPARTMENTS: dict[str, str] = {
    "drinks": "reduced",
    "dairy": "reduced",
    "bakery": "reduced",
    "produce": "reduced",
    "meat": "reduced",
    "frozen": "reduced",
    "snacks": "reduced",
    "household": "standard",
    "personal care": "standard",
    "alcohol": "standard",
    "tobacco": "standard",
    "newspapers": "exempt",
}
_RESTRICTED = {"alcohol", "tobacco"}
_WORDS = ("Classic", "Organic", "Family", "Fresh", "Premium", "Value", "Mini", "Large", "Light", "Extra")


def ean13(body: str) -> str:
    """The EAN-13 for a 12-digit body (appends the GS1 check digit)."""
    if len(body) != 12 or not body.isdigit():
        raise ValueError(f"an EAN-13 body is 12 digits, not {body!r}")
    total = sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(body))
    return body + str((10 - total % 10) % 10)


def item_codes(index: int, *, second: bool) -> list[str]:
    """Barcodes of catalog item ``index``: unique EAN-13s outside the in-store (02, 2x) ranges."""
    codes = [ean13(f"4{index:011d}")]
    if second:
        codes.append(ean13(f"5{index:011d}"))
    return codes


def _price_text(minor: int) -> str:
    return f"{minor // 100}.{minor % 100:02d}"


def catalog_rows(count: int, *, seed: int = 1, second_barcode_every: int = 10) -> Iterator[list[str]]:
    """CSV rows (without header) of a catalog; every n-th item has a second barcode."""
    rng = random.Random(seed)
    departments = list(DEPARTMENTS)
    for i in range(1, count + 1):
        dept = departments[rng.randrange(len(departments))]
        weighed = dept == "produce" and rng.random() < 0.3
        codes = item_codes(i, second=second_barcode_every > 0 and i % second_barcode_every == 0)
        yield [
            f"P{i:07d}",
            f"{rng.choice(_WORDS)} {dept} item {i}",
            _price_text(rng.randint(19, 4_999)),
            "|".join(codes),
            DEPARTMENTS[dept],
            "kg" if weighed else "each",
            dept,
            "yes" if dept in _RESTRICTED else "no",
        ]


CSV_HEADER = ("sku", "name", "price", "barcode", "tax_class", "unit", "department", "age_restricted")


def write_catalog_csv(path: Path, count: int, *, seed: int = 1, second_barcode_every: int = 10) -> int:
    """Write a catalog CSV of ``count`` items; returns how many barcodes it holds."""
    barcodes = 0
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_HEADER)
        for row in catalog_rows(count, seed=seed, second_barcode_every=second_barcode_every):
            barcodes += row[3].count("|") + 1
            writer.writerow(row)
    return barcodes


# --------------------------------------------------------------------------- carts and promotions


def cart_items() -> list[Item]:
    """A small shop's worth of in-memory items (40, in 8 departments, 4 sold by weight)."""
    spec: list[tuple[str, int, int]] = [  # department, how many, base price
        ("drinks", 6, 89),
        ("dairy", 6, 119),
        ("bakery", 5, 229),
        ("snacks", 6, 149),
        ("frozen", 4, 399),
        ("household", 5, 349),
        ("alcohol", 4, 899),
        ("produce", 4, 199),
    ]
    items: list[Item] = []
    for dept, count, price in spec:
        for k in range(count):
            n = len(items) + 1
            weighed = dept == "produce"
            items.append(
                Item(
                    sku=f"C{n:03d}",
                    name=f"{dept.title()} {k + 1}",
                    price=price + 37 * k,
                    tax_class=DEPARTMENTS[dept],
                    unit="kg" if weighed else "each",
                    department=dept,
                    barcodes=tuple(item_codes(90_000 + n, second=False)),
                    age_restricted=dept in _RESTRICTED,
                )
            )
    return items


def _skus(items: Sequence[Item], dept: str, *picks: int) -> frozenset[str]:
    in_dept = [i.sku for i in items if i.department == dept]
    return frozenset(in_dept[p] for p in picks)


def cart_promotions(items: Sequence[Item], now: datetime) -> tuple[Promotion, ...]:
    """Twenty promotions of every kind over :func:`cart_items`; 17 are active at ``now``.

    Several overlap on the same lines (so the engine has competing groups to resolve);
    three are inactive: one needs a coupon and two are outside their window.
    """

    def dept(*names: str) -> Target:
        return Target(departments=frozenset(names))

    def skus(department: str, *picks: int) -> Target:
        return Target(skus=_skus(items, department, *picks))

    next_week = Window(start=now + timedelta(days=1), end=now + timedelta(days=8))
    this_week = Window(start=now - timedelta(days=1), end=now + timedelta(days=6))
    happy_hour = Window(weekdays=frozenset({(now.weekday() + 3) % 7}), daily_start=time(17), daily_end=time(19))
    return (
        MultiBuy("p01", "Drinks 3 for 2", skus("drinks", 0, 1, 2), buy=3, pay=2),
        MultiBuy("p02", "Snacks 2 for 3.00", skus("snacks", 0, 1, 2, 3), buy=2, price=300),
        MultiBuy("p03", "Dairy 4 for 3", dept("dairy"), buy=4, pay=3),
        MultiBuy("p04", "Wine 3 for 20.00", dept("alcohol"), buy=3, price=2_000),
        PercentOff("p05", "Bakery 10% off", dept("bakery"), percent=Decimal(10)),
        PercentOff("p06", "Frozen 20% off", dept("frozen"), percent=Decimal(20)),
        PercentOff("p07", "Cleaning 15% off", skus("household", 0, 1), percent=Decimal(15)),
        PercentOff("p08", "Produce 5% off", dept("produce"), percent=Decimal(5)),
        AmountOff("p09", "Milk 0.30 off", skus("dairy", 0), amount=30),
        AmountOff("p10", "Apples 0.50/kg off", skus("produce", 0), amount=50),
        BuyXGetY(
            "p11",
            "Crisps buy 2 get 1 free",
            buy_target=skus("snacks", 2, 3, 4),
            buy=2,
            get_target=skus("snacks", 2, 3, 4),
            get=1,
        ),
        BuyXGetY(
            "p12",
            "Buy dairy, bread half price",
            buy_target=dept("dairy"),
            buy=1,
            get_target=dept("bakery"),
            get=1,
            percent=Decimal(50),
        ),
        BuyXGetY("p13", "Buy 3 drinks get 1 free", buy_target=dept("drinks"), buy=3, get_target=dept("drinks"), get=1),
        SpendThreshold("p14", "5.00 off over 50.00", threshold=5_000, amount=500),
        SpendThreshold("p15", "10% off over 100.00", threshold=10_000, percent=Decimal(10)),
        SpendThreshold("p16", "2.00 off household over 20.00", threshold=2_000, amount=200, target=dept("household")),
        PercentOff("p17", "Staff 25%", Target(), percent=Decimal(25), coupon="STAFF"),
        MultiBuy("p18", "Next week: frozen 2 for 1", dept("frozen"), buy=2, pay=1, window=next_week),
        PercentOff("p19", "Happy hour beer 30%", dept("alcohol"), percent=Decimal(30), window=happy_hour),
        AmountOff("p20", "This week: ice cream 1.00 off", skus("frozen", 0, 1), amount=100, window=this_week),
    )


def sale_policy(config: Config, promotions: Sequence[Promotion] = ()) -> SalePolicy:
    """The pricing policy of the default configuration, with the given promotions."""
    return SalePolicy(
        currency=config.currency,
        tax=config.tax_policy(),
        tz=ZoneInfo(config.store.timezone),
        promotions=tuple(promotions),
        cash_rounding=config.currency_settings.cash_rounding,
        rounding_mode=config.currency_settings.rounding_mode,
    )


def weight_for(item: Item, rng: random.Random) -> Decimal | None:
    """A plausible weight (kg, gram precision) for a weighed item; ``None`` for counted ones."""
    return Decimal(rng.randint(150, 1_800)).scaleb(-3) if item.weighed else None


def fill_cart(sale: Sale, items: Sequence[Item], lines: int, now: datetime, rng: random.Random) -> None:
    """Ring ``lines`` lines, favouring a few popular items so multi-buys form deals."""
    popular = list(items[:: max(1, len(items) // 12)])
    for _ in range(lines):
        item = rng.choice(popular) if rng.random() < 0.5 else rng.choice(items)
        sale.add_item(item, now, quantity=weight_for(item, rng))


# --------------------------------------------------------------------------- sale documents


def stock_items(count: int) -> list[Item]:
    """``count`` counted items for sale documents (stock rows are keyed by their SKUs)."""
    names = list(DEPARTMENTS)
    return [
        Item(
            sku=f"S{n:06d}",
            name=f"Stock item {n}",
            price=99 + (n * 37) % 2_400,
            tax_class=DEPARTMENTS[names[n % len(names)]],
            department=names[n % len(names)],
        )
        for n in range(1, count + 1)
    ]


def sale_doc(
    policy: SalePolicy, items: Sequence[Item], now: datetime, rng: random.Random, *, lines: int = 5
) -> dict[str, Any]:
    """A completed sale document: ``lines`` distinct items, paid with one cash tender."""
    sale = Sale(policy=policy, cashier=rng.choice(("ann", "bob", "cat")))
    for item in rng.sample(list(items), lines):
        qty = Decimal(rng.choice((1, 1, 1, 2, 3)))
        sale.add_item(item, now - timedelta(seconds=40), quantity=qty)
    sale.pay_cash(sale.cash_due())
    return sale.complete(now)


def other_payloads(
    policy: SalePolicy, items: Sequence[Item], now: datetime, rng: random.Random
) -> list[tuple[str, dict[str, Any]]]:
    """Journal entries a till writes besides sales: log-ins, drawer, suspend, resume, void."""
    sale = Sale(policy=policy, cashier="ann")
    for item in rng.sample(list(items), rng.randint(1, 4)):
        sale.add_item(item, now)
    return [
        ("staff.login", {"id": "ann", "method": "pin"}),
        ("sale.suspended", sale.suspend()),
        ("drawer.opened", {"shift_id": 1, "reason": "change for the float", "by": "ann"}),
        ("sale.resumed", {"id": sale.id}),
        ("sale.voided", {**sale.to_doc(), "reason": "customer left"}),
    ]
