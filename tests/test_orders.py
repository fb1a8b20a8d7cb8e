"""The till's order workflow (appliance/orders.py) on a real ledger, with orders arriving as the shop sends them."""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.clock import FrozenClock, iso_utc
from appliance.config import parse_config
from appliance.errors import InputError, NotFound, SaleError, TenderError
from appliance.ledger import OutboxEvent
from appliance.ledger.verify import verify
from appliance.orders import (
    ACTION_STATUS,
    OrderPolicy,
    Orders,
    advance,
    code_hash,
    expire_periodically,
    order_qr,
    order_view,
    packing_slip,
    parse_order_qr,
    slip_text,
)
from appliance.till import Till, open_ledger
from drivers.printer import ReceiptPrinter, SimulatedPrinter
from sync.contract import envelope
from sync.inbound import Inbound, InboundPolicy
from sync.schemas import validate

WATER = {"sku": "1001", "qty": "2", "name": "Sparkling Water 1.5l", "total": 150, "tax": 10, "tax_class": "reduced"}
PEN = {"sku": "1009", "qty": "3", "name": "Ballpoint Pen", "total": 270, "tax": 43, "tax_class": "standard"}
ADDRESS = {"name": "Erika Mustermann", "lines": ["Hauptstr. 5", "2. OG"], "postcode": "10115", "city": "Berlin",
           "country": "DE", "phone": "+49 30 1234567"}  # fmt: skip


def order_doc(order_id: str = "web-1", *, version: int = 1, code: str | None = "4711", **fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"id": order_id, "version": version, "status": "placed", "time": "2026-03-01T18:00:00.000Z",
                           "customer": "Erika Mustermann", "currency": "EUR", "lines": [dict(WATER), dict(PEN)],
                           **fields}  # fmt: skip
    if code is not None:
        doc["pickup_code_sha256"] = code_hash(order_id, code)
    return doc


def receive(till: Till, doc: dict[str, Any]) -> bool:
    """Deliver a document the way the sync service does (schema, version check, pickup_orders)."""
    policy = InboundPolicy(currency=till.currency, tax_classes=tuple(till.config.tax.classes))
    inbound = Inbound(till.ledger, policy, clock=till.clock)
    return inbound.handle(f"tillbox/v1/demo/orders/{doc['id']}", json.dumps(doc).encode())


def events(till: Till, prefix: str = "tillbox.") -> list[OutboxEvent]:
    return [e for e in till.ledger.outbox(limit=1000) if e.type.startswith(prefix)]


def shop_applies(till: Till, order_id: str) -> dict[str, Any]:
    """What the hub does with this till's order events: apply them in order and republish a new version."""
    row = till.ledger.conn.execute("SELECT version, body FROM pickup_orders WHERE id = ?", (order_id,)).fetchone()
    doc: dict[str, Any] = json.loads(row[1])
    for e in events(till, "tillbox.order."):
        if e.subject == order_id and e.seq > doc.get("applied", {}).get(till.ledger.device_id, 0):
            doc = advance(doc, e.type.removeprefix("tillbox.order."), json.loads(e.data), device="till-1", seq=e.seq,
                          time=e.time, late=True)  # fmt: skip
    doc["version"] = int(row[0]) + 1
    assert receive(till, doc)
    return doc


@pytest.fixture
def orders(demo_till: Till) -> Orders:
    return Orders(demo_till)


def test_picks_show_at_once_and_every_event_fits_the_contract(orders: Orders, demo_till: Till) -> None:
    assert receive(demo_till, order_doc())
    first = orders.pick("web-1", {1: Decimal(1)}, staff="ann")
    assert (first.status, first.pending) == ("picking", 1)
    assert [(str(ln.picked), str(ln.qty)) for ln in first.lines] == [("1", "2"), ("0", "3")]
    second = orders.pick("web-1", {1: "2", 2: "3"}, staff="ann")
    ready = orders.ready("web-1", staff="ann")
    assert (ready.status, ready.pending) == ("ready", 3)
    assert ready.hold_until == iso_utc(demo_till.clock.now() + timedelta(days=7))
    assert second.lines[1].picked == 3
    for e in events(demo_till, "tillbox.order."):
        validate("cloudevent", json.loads(envelope(e, store="demo", device="till-1")))
    journal = demo_till.ledger.conn.execute(
        "SELECT type, actor FROM journal WHERE type LIKE 'order.%' ORDER BY seq").fetchall()  # fmt: skip
    assert journal == [("order.picked", "ann"), ("order.picked", "ann"), ("order.ready", "ann")]
    # The shop confirms: the document now says so, and the till shows the shop's version with nothing pending.
    confirmed = shop_applies(demo_till, "web-1")
    seen = orders.get("web-1")
    assert (seen.version, seen.status, seen.pending) == (2, "ready", 0)
    assert confirmed["applied"] == {"till-1": events(demo_till, "tillbox.order.")[-1].seq}
    assert [h["action"] for h in seen.history] == ["picked", "picked", "ready"]


def test_an_order_is_not_ready_until_everything_is_picked_unless_confirmed_short(orders: Orders,
                                                                                 demo_till: Till) -> None:  # fmt: skip
    receive(demo_till, order_doc())
    with pytest.raises(SaleError, match="nothing of order web-1 is picked yet"):
        orders.ready("web-1", staff="ann")
    orders.pick("web-1", {1: Decimal(2), 2: Decimal(1)}, staff="ann")
    with pytest.raises(SaleError, match=r"line 2 of order web-1 \(Ballpoint Pen\) is not fully picked: 1 of 3"):
        orders.ready("web-1", staff="ann")
    with pytest.raises(InputError, match="4 picked, but only 3 ordered"):
        orders.pick("web-1", {2: Decimal(4)}, staff="ann")
    with pytest.raises(InputError, match="counted in units"):
        orders.pick("web-1", {2: Decimal("1.5")}, staff="ann")
    with pytest.raises(InputError, match="has no line 3"):
        orders.pick("web-1", {3: Decimal(1)}, staff="ann")
    short = orders.ready("web-1", staff="ann", short=True)
    assert short.status == "ready" and short.history[-1]["note"] == "short: line 2 1 of 3"
    assert len(events(demo_till, "tillbox.order.")) == 2  # the refused attempts emitted nothing


def test_a_paid_order_is_handed_over_with_its_code_and_its_stock_leaves(orders: Orders, demo_till: Till) -> None:
    receive(demo_till, order_doc())
    assert orders.reserved("1001").here == 2
    before = demo_till.ledger.stock_level("1009")
    orders.pick("web-1", {1: Decimal(2), 2: Decimal(3)}, staff="ann")
    orders.ready("web-1", staff="ann")
    with pytest.raises(SaleError, match="is paid already"):
        orders.sale_for("web-1", cashier="ann")
    done = orders.hand_over("web-1", "code", "4711", staff="ann")
    assert done.completed is None and done.order.status == "collected"
    assert demo_till.ledger.stock_level("1009") == before - 3
    moved = [json.loads(e.data) for e in events(demo_till, "tillbox.stock.moved")]
    assert moved == [{"reason": "pickup", "order_id": "web-1", "moves": [
        {"sku": "1001", "delta": "-2", "level": str(demo_till.ledger.stock_level("1001"))},
        {"sku": "1009", "delta": "-3", "level": str(before - 3)}]}]  # fmt: skip
    collected = json.loads(events(demo_till, "tillbox.order.collected")[0].data)
    assert (collected["check"], collected["staff"], collected["lines"][1]) == (
        "code",
        "ann",
        {"line": 2, "sku": "1009", "qty": "3"},
    )
    assert orders.reserved("1001").here == 0  # released
    with pytest.raises(SaleError, match="order web-1 is collected; it cannot be handed over"):
        orders.hand_over("web-1", "id", staff="ann")
    assert demo_till.ledger.stock_level("1009") == before - 3  # nothing moved twice


def test_a_wrong_code_is_refused_counted_and_in_the_end_only_an_id_check_will_do(demo_till: Till) -> None:
    orders = Orders(demo_till, OrderPolicy(code_attempts=2))
    receive(demo_till, order_doc())
    orders.pick("web-1", {1: Decimal(2), 2: Decimal(3)}, staff="ann")
    orders.ready("web-1", staff="ann")
    stock = demo_till.ledger.stock_level("1001")
    with pytest.raises(InputError, match=r"^wrong pickup code for order web-1; 1 attempt\(s\) left$"):
        orders.hand_over("web-1", "code", "1234", staff="ann")
    with pytest.raises(InputError, match="that QR code is for order web-2, not web-1"):
        orders.hand_over("web-1", "code", order_qr("web-2", "4711"), staff="ann")
    with pytest.raises(InputError, match="only an ID check can hand it over now"):
        orders.hand_over("web-1", "code", "0000", staff="ann")
    with pytest.raises(SaleError, match="2 wrong pickup codes for order web-1"):
        orders.hand_over("web-1", "code", order_qr("web-1", "4711"), staff="ann")  # even the right one, now
    assert orders.get("web-1").status == "ready" and demo_till.ledger.stock_level("1001") == stock
    refused = demo_till.ledger.conn.execute(
        "SELECT actor, payload FROM journal WHERE type = 'order.code_refused' ORDER BY seq").fetchall()  # fmt: skip
    assert [(a, json.loads(p)["attempt"]) for a, p in refused] == [("ann", 1), ("ann", 2)]
    assert events(demo_till, "tillbox.order.collected") == []
    done = orders.hand_over("web-1", "id", staff="sam")
    assert done.order.status == "collected"
    assert json.loads(events(demo_till, "tillbox.order.collected")[0].data)["staff"] == "sam"


def test_the_qr_code_hands_over_and_an_id_check_can_be_switched_off(demo_till: Till) -> None:
    orders = Orders(demo_till, OrderPolicy(id_check=False))
    receive(demo_till, order_doc())
    orders.pick("web-1", {1: Decimal(2), 2: Decimal(3)}, staff="ann")
    orders.ready("web-1", staff="ann")
    with pytest.raises(InputError, match="does not hand orders over on an ID check"):
        orders.hand_over("web-1", "id", staff="ann")
    assert parse_order_qr(" TBO:web-1:4711 ") == ("web-1", "4711") and parse_order_qr("4006381333931") is None
    assert [o.id for o in orders.search(text="TBO:web-1:4711")] == ["web-1"]
    assert orders.hand_over("web-1", "code", "TBO:web-1:4711", staff="ann").order.status == "collected"


def test_an_order_paid_at_pickup_is_rung_up_as_priced_online_then_handed_over(orders: Orders, demo_till: Till) -> None:
    receive(demo_till, order_doc(payment="at_pickup"))
    orders.pick("web-1", {1: Decimal(2), 2: Decimal(3)}, staff="ann")
    orders.ready("web-1", staff="ann")
    with pytest.raises(SaleError, match="to be paid at pickup: take the payment first"):
        orders.hand_over("web-1", "code", "4711", staff="ann")
    sale = orders.sale_for("web-1", cashier="ann")
    assert sale.totals().total == 420  # 1.50 + 2.70 as the shop priced them, not the catalog's 2 x 0.79 + 3 x 0.99
    with pytest.raises(TenderError, match="the sale is not paid"):
        orders.hand_over("web-1", "code", "4711", staff="ann", sale=sale)
    sales, stock = demo_till.ledger.sale_count(), demo_till.ledger.stock_level("1001")
    sale.pay_cash(500)
    done = orders.hand_over("web-1", "code", "4711", staff="ann", sale=sale)
    assert done.completed is not None and done.completed.doc["change"] == 80
    assert demo_till.ledger.sale_count() == sales + 1
    assert done.order.status == "collected" and done.order.sale_id == sale.id
    assert demo_till.ledger.stock_level("1001") == stock - 2  # moved once, by the sale
    assert [json.loads(e.data)["reason"] for e in events(demo_till, "tillbox.stock.moved")] == ["sale"]
    entry = demo_till.ledger.conn.execute(
        "SELECT actor, ref_seq FROM journal WHERE type = 'order.collected'").fetchone()  # fmt: skip
    assert entry == ("ann", done.completed.committed.journal.seq)
    assert demo_till.receipt(done.completed).total == 420


def test_a_sale_that_is_not_the_order_is_refused(orders: Orders, demo_till: Till) -> None:
    receive(demo_till, order_doc(payment="at_pickup"))
    orders.pick("web-1", {1: Decimal(2), 2: Decimal(3)}, staff="ann")
    orders.ready("web-1", staff="ann")
    sale = demo_till.new_sale("ann")
    demo_till.add_sku(sale, "1001", quantity=Decimal(2))
    sale.pay_cash(sale.cash_due())
    with pytest.raises(SaleError, match="does not hold the picked items of order web-1"):
        orders.hand_over("web-1", "id", staff="ann", sale=sale)
    assert orders.get("web-1").status == "ready"


def test_ship_from_store_pick_pack_print_the_label_and_ship(orders: Orders, demo_till: Till) -> None:
    receive(demo_till, order_doc("web-9", kind="ship", ship_to=ADDRESS, carrier="DHL Paket", code=None))
    with pytest.raises(SaleError, match="web-9 is a ship order; it cannot be marked ready"):
        orders.ready("web-9", staff="ann")
    orders.pick("web-9", {1: Decimal(2), 2: Decimal(3)}, staff="ann")
    with pytest.raises(SaleError, match="is picking; it cannot be shipped"):
        orders.ship("web-9", "00340434161234567890", staff="ann")
    orders.pack("web-9", staff="ann")
    slip = orders.slip("web-9", staff="ann")
    assert (slip.title, slip.reference, slip.total, slip.copy) == ("PACKING SLIP", "web-9", 420, 0)
    text = slip_text(slip)
    for expected in ("SHIP TO:", "Erika Mustermann", "Hauptstr. 5", "10115 Berlin", "Carrier: DHL Paket",
                     "Order web-9: 5 item(s)", "Paid online"):  # fmt: skip
        assert expected in text
    paper = SimulatedPrinter()
    ReceiptPrinter(paper).print_receipt(slip)
    printed = paper.text()
    assert "PACKING SLIP" in printed and "[CODE128 web-9]" in printed and "10115 Berlin" in printed
    assert orders.slip("web-9", staff="ann").copy == 1  # a second print is a copy
    level = demo_till.ledger.stock_level("1001")
    shipped = orders.ship("web-9", " 00340434161234567890 ", staff="ann", carrier="DHL")
    assert (shipped.status, shipped.tracking, shipped.carrier) == ("shipped", "00340434161234567890", "DHL")
    assert demo_till.ledger.stock_level("1001") == level - 2
    assert json.loads(events(demo_till, "tillbox.stock.moved")[0].data)["reason"] == "ship"
    with pytest.raises(SaleError, match="a ship order; it cannot be handed over"):
        orders.hand_over("web-9", "id", staff="ann")
    with pytest.raises(InputError, match="tracking reference"):
        orders.ship("web-9", "  ", staff="ann")


def test_unknown_orders_bad_transitions_and_bad_documents_give_clear_errors(orders: Orders, demo_till: Till) -> None:
    with pytest.raises(NotFound, match=r"^no order web-404$"):
        orders.get("web-404")
    receive(demo_till, order_doc())
    with pytest.raises(SaleError, match="order web-1 is placed; it cannot be handed over"):
        orders.hand_over("web-1", "id", staff="ann")
    with pytest.raises(InputError, match="hand-over check 'face' is not one of code, id"):
        orders.check(orders.get("web-1"), "face", None, staff="ann")
    with pytest.raises(InputError, match="needs a reason"):
        orders.cancel("web-1", "  ", staff="sam")
    cancelled = orders.cancel("web-1", "customer called", staff="sam", approver="sam")
    assert cancelled.status == "cancelled" and orders.reserved("1009").here == 0
    with pytest.raises(SaleError, match="is cancelled; it cannot be picked"):
        orders.pick("web-1", {1: Decimal(1)}, staff="ann")
    # A document that breaks the contract is dead-lettered by the sync service and never reaches the queue.
    assert not receive(demo_till, {"id": "web-2", "version": 1, "status": "lost", "lines": []})
    assert not receive(demo_till, order_doc("web-3", kind="ship"))  # a ship order without an address
    assert demo_till.ledger.conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0] == 2
    # One damaged in the database is reported and skipped; the others still list.
    receive(demo_till, order_doc("web-4"))
    demo_till.ledger.conn.execute("UPDATE pickup_orders SET body = '{\"id\": \"web-4\"' WHERE id = 'web-4'")
    with pytest.raises(InputError, match="order web-4 is stored malformed"):
        orders.get("web-4")
    assert [o.id for o in orders.search(open_only=False)] == ["web-1"]


def test_overdue_orders_expire_by_policy_and_release_their_stock(demo_till: Till) -> None:
    clock = demo_till.clock
    assert isinstance(clock, FrozenClock)
    orders = Orders(demo_till)
    receive(demo_till, order_doc("web-1"))
    receive(demo_till, order_doc("web-2", hold_until=iso_utc(clock.now() + timedelta(days=1))))  # never picked
    receive(demo_till, order_doc("web-3", kind="ship", ship_to=ADDRESS, code=None))
    orders.pick("web-1", {1: Decimal(2), 2: Decimal(3)}, staff="ann")
    orders.ready("web-1", staff="ann")
    assert orders.reserved("1001").here == 6
    assert orders.expire_due() == []
    clock.advance(2 * 86400)
    assert orders.expire_due() == ["web-2"]
    clock.advance(6 * 86400)
    assert Orders(demo_till, OrderPolicy(expire=False)).expire_due() == []
    assert orders.expire_due() == ["web-1"]
    assert orders.expire_due() == []
    assert orders.reserved("1001").here == 2  # only the ship order holds stock now
    assert [o.status for o in orders.search(open_only=False)] == ["placed", "expired", "expired"]
    data = json.loads(events(demo_till, "tillbox.order.expired")[1].data)
    assert data == {"id": "web-1", "status": "expired", "version": 1, "kind": "pickup", "staff": None,
                    "hold_until": "2026-03-09T09:30:00.000Z"}  # fmt: skip
    with pytest.raises(SaleError, match="is expired; it cannot be handed over"):
        orders.hand_over("web-1", "id", staff="ann")


def test_the_shops_word_wins_once_it_arrives(orders: Orders, demo_till: Till) -> None:
    receive(demo_till, order_doc())
    orders.pick("web-1", {1: Decimal(2)}, staff="ann")
    assert orders.get("web-1").pending == 1
    # The customer cancelled online before the shop saw the pick: the shop's document wins.
    receive(demo_till, {**order_doc(version=2), "status": "cancelled"})
    seen = orders.get("web-1")
    assert (seen.status, seen.pending, seen.lines[0].picked) == ("cancelled", 0, Decimal(0))
    assert orders.search() == []
    # An older document arriving late changes nothing.
    assert not receive(demo_till, order_doc(version=1))
    assert orders.get("web-1").status == "cancelled"


def test_search_by_order_number_or_name(orders: Orders, demo_till: Till) -> None:
    receive(demo_till, order_doc("web-1"))
    receive(demo_till, {**order_doc("web-2"), "customer": "Max Power"})
    receive(demo_till, {**order_doc("shop_3"), "customer": "100% Cotton Ltd"})
    assert [o.id for o in orders.search(text="max")] == ["web-2"]
    assert [o.id for o in orders.search(text="WEB-1")] == ["web-1"]
    assert [o.id for o in orders.search(text="100%")] == ["shop_3"]
    assert [o.id for o in orders.search(text="p_3")] == ["shop_3"]  # LIKE wildcards are literal
    assert sorted(o.id for o in orders.search()) == ["shop_3", "web-1", "web-2"]


def test_the_packing_slip_of_an_unpriced_order_has_no_payment(tmp_path: Path) -> None:
    config = parse_config('[store]\ntimezone = "Europe/Berlin"\n', environ={})
    doc = order_doc("web-5", kind="ship", ship_to=ADDRESS, code=None)
    doc["lines"] = [{"sku": "1001", "qty": "1"}]
    with open_ledger(config, tmp_path) as ledger:
        till = Till(config, ledger, fast_hash=True)
        slip = packing_slip(order_view(doc, version=1), till, staff="ann", time="2026-03-02T09:30:00.000Z",
                            number=1, journal_seq=7, journal_hash="ab" * 32)  # fmt: skip
    assert slip.tenders == () and slip.total == 0 and slip.lines[0].name == "1001"
    assert slip.time == "2026-03-02 10:30"  # the store's time zone


ACTIONS = st.sampled_from(sorted(ACTION_STATUS))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    kind=st.sampled_from(["pickup", "ship"]),
    steps=st.lists(st.tuples(ACTIONS, st.integers(0, 3), st.integers(0, 3), st.booleans(), st.booleans()), max_size=8),
)
def test_any_sequence_of_actions_keeps_a_valid_document(kind: str, steps: list[tuple[str, int, int, bool, bool]]
                                                        ) -> None:  # fmt: skip
    extra: dict[str, Any] = {"ship_to": ADDRESS} if kind == "ship" else {}
    doc = order_doc(kind=kind, **extra)
    for seq, (action, water, pens, short, late) in enumerate(steps, 1):
        data = {"staff": "ann", "short": short, "hold_until": "2026-03-09T09:30:00.000Z", "tracking": "T1",
                "reason": "why", "lines": [{"line": 1, "sku": "1001", "picked": str(water)},
                                           {"line": 2, "sku": "1009", "picked": str(pens)}]}  # fmt: skip
        try:
            new = advance(doc, action, data, device="till-1", seq=seq, time="2026-03-02T09:30:00.000Z", late=late)
        except (SaleError, InputError):
            continue
        validate("pickup-order", new)
        assert new["status"] == ACTION_STATUS[action] and new["applied"] == {"till-1": seq}
        assert all(Decimal(ln.get("picked", "0")) <= Decimal(ln["qty"]) for ln in new["lines"])
        if doc["status"] in ("collected", "shipped"):
            pytest.fail(f"{action} changed a {doc['status']} order")
        doc = new


def test_personal_data_leaves_closed_orders_after_the_retention(demo_till: Till) -> None:
    clock = demo_till.clock
    assert isinstance(clock, FrozenClock)
    orders = Orders(demo_till, OrderPolicy(keep_personal_days=30))
    receive(demo_till, order_doc("web-1", note="Ring twice"))
    receive(demo_till, order_doc("web-2", kind="ship", ship_to=ADDRESS, code=None))
    receive(demo_till, order_doc("web-3"))  # stays open
    orders.cancel("web-1", "customer called", staff="sam", approver="sam")
    clock.advance(10 * 86400)
    orders.pick("web-2", {1: Decimal(2), 2: Decimal(3)}, staff="ann")
    orders.pack("web-2", staff="ann")
    orders.ship("web-2", "00340434161234567890", staff="ann")
    clock.advance(21 * 86400)  # web-1 closed 31 days ago, web-2 21 days ago
    assert orders.forget_personal() == ["web-1"]
    web1 = orders.get("web-1")
    assert (web1.customer, web1.status, len(web1.lines)) == ("", "cancelled", 2)
    assert web1.doc.get("note") != "Ring twice" and web1.doc["redacted_at"] == iso_utc(clock.now())
    assert orders.search(text="Mustermann", open_only=False) == [orders.get("web-3"), orders.get("web-2")]
    clock.advance(10 * 86400)
    assert orders.forget_personal() == ["web-2"] and orders.forget_personal() == []
    web2 = orders.get("web-2")
    assert (web2.ship_to, web2.tracking, web2.status) == (None, "00340434161234567890", "shipped")
    assert orders.get("web-3").customer == "Erika Mustermann"  # open orders keep it, however old
    body = demo_till.ledger.conn.execute("SELECT group_concat(body) FROM pickup_orders WHERE id != 'web-3'")
    assert "Mustermann" not in body.fetchone()[0]
    assert "Hauptstr" not in orders.slip("web-2", staff="ann").footer  # a reprint has no address any more
    assert verify(demo_till.ledger).ok  # the journal was not touched


def test_the_periodic_check_expires_overdue_orders(demo_till: Till) -> None:
    orders = Orders(demo_till)
    receive(demo_till, order_doc(hold_until=iso_utc(demo_till.clock.now() - timedelta(minutes=1))))
    got: list[list[str]] = []

    async def run() -> None:
        task = asyncio.create_task(expire_periodically(orders, interval=0.01, on_expired=got.append))
        try:
            async with asyncio.timeout(5):
                while not got:
                    await asyncio.sleep(0.01)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(run())
    assert got == [["web-1"]] and orders.get("web-1").status == "expired"


def test_the_demo_has_two_orders_to_pick_up(demo_till: Till) -> None:
    from appliance.demo import seed_orders

    assert seed_orders(demo_till) == 2
    assert seed_orders(demo_till) == 0  # a demo restarted keeps what it had
    orders = Orders(demo_till)
    assert [(o.id, o.payment) for o in orders.search()] == [("web-1001", "paid"), ("web-1002", "at_pickup")]
    orders.pick("web-1001", {1: Decimal(2), 2: Decimal(1)}, staff="ann")
    orders.ready("web-1001", staff="ann")
    assert orders.hand_over("web-1001", "code", "TBO:web-1001:4711", staff="ann").order.status == "collected"
