"""Gift cards, store credit and loyalty across channels: a real Mosquitto, the hub and two tills (docs/accounts.md)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from appliance.config import Config, parse_config
from appliance.demo import seed
from appliance.errors import NotFound, SaleError, TenderError
from appliance.returns import ReturnRequest
from appliance.sale import Sale
from appliance.staff import Action, Approval
from appliance.stored_value import BOOK, outstanding
from appliance.till import Completed, Till, open_ledger
from kiosk_ui.testing import CHROMIUM
from sync.hub import Hub
from sync.hub_accounts import ALERT_NEGATIVE, ALERT_NEGATIVE_POINTS
from sync.link import LinkSettings
from sync.service import SyncOptions, SyncService, settings_from_config
from sync.testing import Mosquitto, wait_until
from tests.conftest import open_shift

FAST = SyncOptions(window=50, ack_timeout=1.0, health_interval=0.05, poll_interval=0.005, reconcile_interval=None,
                   lookup_timeout=2.0)  # fmt: skip
CONFIG = """
[store]
device_id = "{device}"
[returns]
refund_to = "store_credit"
[stored_value]
offline_limit_per_card = "25.00"
offline_limit_per_till = "40.00"
request_timeout = 2
retries = 1
[loyalty]
enabled = true
points_per_unit = "10"
point_value = 1
offline_limit_per_customer = 300
"""
BATTERIES = "1010"  # 4.99, standard tax


@dataclasses.dataclass
class Shop:
    broker: Mosquitto
    hub: Hub
    configs: list[Config]
    tills: list[Till]
    services: list[SyncService]

    def connect(self, i: int) -> SyncService:
        """Start till ``i``'s sync service; its gift cards and points then ask the hub."""
        config, till = self.configs[i], self.tills[i]
        link = dataclasses.replace(settings_from_config(config, till.ledger.path.parent, (self.broker.url,)),
                                   backoff_initial=0.05, backoff_cap=0.2)  # fmt: skip
        svc = SyncService.from_config(config, till.ledger.path.parent, link=link, options=FAST).start()
        self.services.append(svc)
        till.stored_value.remote = svc.request
        till.loyalty.remote = svc.request
        assert wait_until(lambda: svc.link.connected)
        return svc

    def settled(self, i: int) -> bool:
        """The hub has applied every event till ``i`` wrote."""
        svc = self.services[i]
        return svc.relay.last_seq() > 0 and self.hub.contiguous("demo", self.tills[i].ledger.device_id) == \
            svc.relay.last_seq()  # fmt: skip


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[Shop]:
    configs = [parse_config(CONFIG.format(device=f"till-{i}"), environ={}) for i in (1, 2)]
    tills = []
    for config in configs:
        d = tmp_path / config.store.device_id
        till = Till(config, open_ledger(config, d), fast_hash=True)
        seed(till, d)
        open_shift(till)
        tills.append(till)
    services: list[SyncService] = []
    with Mosquitto(tmp_path / "broker") as broker:
        link = LinkSettings.from_urls([broker.url], "hub", backoff_initial=0.05, backoff_cap=0.2)
        hub = Hub(tmp_path / "hub", link).start()
        shop = Shop(broker, hub, configs, tills, services)
        try:
            assert wait_until(lambda: hub.link.connected)
            yield shop
        finally:
            for svc in services:
                svc.close()
            hub.close()
            shop.hub.close()  # a test may have started another hub in its place
            for till in tills:
                till.ledger.close()


def _basket(till: Till, units: int = 4, customer: str | None = None) -> Sale:
    sale = till.new_sale("ann")
    till.add_sku(sale, BATTERIES, quantity=Decimal(units))
    sale.customer_id = customer
    return sale


def _finish(till: Till, sale: Sale) -> Completed:
    if sale.totals().due > 0:
        sale.pay_cash(sale.cash_due())
    return till.complete(sale)


def test_a_gift_card_bought_online_is_redeemed_at_a_till(shop: Shop) -> None:
    till = shop.tills[0]
    shop.connect(0)
    card = shop.hub.accounts.issue_gift_card(3_000, "EUR")
    account = card["account"]
    assert account.startswith("GC-") and card["balance"] == 3_000

    sale = _basket(till)  # 19.96
    tender = till.pay_stored_value(sale, account.lower())
    assert (tender.kind, tender.amount, tender.reference) == ("gift_card", 1_996, account)
    assert tender.detail["mode"] == "online"
    assert shop.hub.accounts.balance(account)["balance"] == 1_004  # the hub took it before the sale commits
    _finish(till, sale)
    assert wait_until(lambda: shop.settled(0))
    moves = shop.hub.accounts.moves(account)
    # the till's own event of the redemption applied nothing more
    assert [(m["op"], m["delta"], m["balance"], m["channel"]) for m in moves] == [
        ("issue", 3_000, 3_000, "online"), ("redeem", -1_996, 1_004, "store")]  # fmt: skip
    assert moves[1]["id"] == tender.detail["move"]
    assert till.stored_value.get(account).balance == 1_004  # the till keeps what the hub said

    # too little left: the hub declines a full redemption; a partial one takes the rest
    second = _basket(till, 5)
    with pytest.raises(TenderError, match=rf"the shop refused: {account} has only 10\.04 EUR"):
        till.pay_stored_value(second, account, 2_000)
    assert till.pay_stored_value(second, account).amount == 1_004
    with pytest.raises(NotFound, match="no gift card or store credit GC-2222-2222"):
        till.pay_stored_value(second, "GC-2222-2222")
    # the refusals took nothing at the hub: when the sale completes, they are settled without a reversal
    _finish(till, second)
    states = sorted(s for (s,) in till.ledger.conn.execute("SELECT state FROM account_auths"))
    assert states == ["consumed", "consumed", "refused", "refused"]
    assert wait_until(lambda: shop.settled(0))
    assert [m["op"] for m in shop.hub.accounts.moves(account)] == ["issue", "redeem", "redeem"]


def test_offline_redemptions_at_two_tills_are_reconciled_with_an_alert(shop: Shop) -> None:
    one, two = shop.tills
    shop.connect(0)
    shop.connect(1)
    account = shop.hub.accounts.issue_gift_card(3_000, "EUR")["account"]
    shop.broker.stop()  # the network is cut
    assert wait_until(lambda: not any(s.link.connected for s in shop.services))

    done = []
    for till in (one, two):  # each till alone stays within its limit of 25.00 per card
        sale = _basket(till)
        tender = till.pay_stored_value(sale, account)
        assert (tender.amount, tender.detail["mode"]) == (1_996, "offline")
        done.append(_finish(till, sale))
        assert outstanding(till.ledger.conn, BOOK, account) == 1_996
    # over the limit: refused with a clear error, and nothing recorded
    sale = _basket(one)
    with pytest.raises(TenderError, match=r"^the shop cannot be reached: at most 5\.04 more can be taken from "
                                          rf"{account} offline \(limit 25\.00 per card\)$"):  # fmt: skip
        one.pay_stored_value(sale, account, 1_000)
    assert sale.tenders == []
    assert one.pay_stored_value(sale, account, 504).amount == 504  # what the limit still allows
    one.cancel(sale, actor="ann", reason="customer changed their mind")

    shop.broker.restart()
    assert wait_until(lambda: shop.settled(0) and shop.settled(1), timeout=15)
    assert shop.hub.accounts.balance(account)["balance"] == 3_000 - 2 * 1_996
    [(code, subject, message)] = shop.hub.alerts()
    assert (code, subject) == (ALERT_NEGATIVE, account)
    assert "balance -9.92 EUR" in message
    assert "offline redemptions: 19.96 EUR at demo/till-1, 19.96 EUR at demo/till-2" in message
    # acknowledged by the shop: nothing is outstanding, the limits are free again
    assert wait_until(lambda: all(outstanding(t.ledger.conn, BOOK) == 0 for t in shop.tills))
    ops = sorted((m["op"], m["delta"], m["mode"], m["device"]) for m in shop.hub.accounts.moves(account))
    # the voided offline tender and the refused attempt (asked while the shop could not be reached) had not
    # reached the hub: their reversals cancel them, so they never will apply
    assert ops == [("cancelled", 0, "local", "till-1"), ("cancelled", 0, "local", "till-1"),
                   ("issue", 3_000, "online", None), ("redeem", -1_996, "offline", "till-1"),
                   ("redeem", -1_996, "offline", "till-2"), ("reverse", 0, "local", "till-1"),
                   ("reverse", 0, "local", "till-1")]  # fmt: skip
    # online again, the card is overdrawn: the hub declines it
    with pytest.raises(TenderError, match=r"has only -9\.92 EUR"):
        two.pay_stored_value(_basket(two), account)


def test_a_timed_out_redemption_asked_again_with_the_same_id_charges_once(shop: Shop) -> None:
    till = shop.tills[0]
    shop.connect(0)
    account = shop.hub.accounts.issue_gift_card(5_000, "EUR")["account"]
    till.stored_value.timeout, till.stored_value.retries = 0.3, 6

    shop.hub.call(lambda: time.sleep(1.0))  # the hub is busy: the first attempts get no answer
    sale = _basket(till)
    started = time.monotonic()
    tender = till.pay_stored_value(sale, account)
    assert time.monotonic() - started > 0.6  # it really waited through timeouts
    assert (tender.amount, tender.detail["mode"]) == (1_996, "online")
    _finish(till, sale)
    move_id = tender.detail["move"]
    assert shop.hub.query("SELECT count(*) FROM answers WHERE id = ?", (move_id,)) == [(1,)]
    assert wait_until(lambda: shop.settled(0))
    assert [(m["id"], m["delta"]) for m in shop.hub.accounts.moves(account) if m["op"] == "redeem"] == [
        (move_id, -1_996)]  # fmt: skip
    assert shop.hub.accounts.balance(account)["balance"] == 5_000 - 1_996

    # no answer at all: the till goes on offline under the same id, and the hub still applies it once
    till.stored_value.retries = 0
    shop.hub.call(lambda: time.sleep(0.8))
    sale = _basket(till, 2)
    tender = till.pay_stored_value(sale, account)
    assert (tender.amount, tender.detail["mode"]) == (998, "offline")
    _finish(till, sale)
    assert wait_until(lambda: shop.settled(0))
    redeemed = [m for m in shop.hub.accounts.moves(account) if m["op"] == "redeem"]
    assert [(m["id"], m["delta"]) for m in redeemed][1:] == [(tender.detail["move"], -998)]
    assert shop.hub.accounts.balance(account)["balance"] == 5_000 - 1_996 - 998
    assert shop.hub.alerts() == []


def test_loyalty_points_earned_at_a_till_are_redeemed_online(shop: Shop) -> None:
    till = shop.tills[0]
    shop.connect(0)
    customer = "0195a3e2-6a00-7abc-8def-00000000e7e0"  # a customer id, as the customer lookup gives it
    _finish(till, _basket(till, customer=customer))  # 19.96 x 10 points per euro
    assert wait_until(lambda: shop.settled(0))
    assert shop.hub.accounts.points(customer) == {"customer": customer, "points": 199}

    shop.hub.accounts.link_card("LC-0042", customer)
    online = shop.hub.accounts.redeem_points("LC-0042", 150, ref="web-42")
    assert (online["customer"], online["delta"], online["balance"]) == (customer, -150, 49)
    with pytest.raises(TenderError, match="has only 49 points"):
        shop.hub.accounts.redeem_points(customer, 50)

    # back at the till: the 49 points left pay 0.49 of the next sale, through the hub
    sale = _basket(till, 1, customer)
    tender = till.pay_points(sale)
    assert (tender.kind, tender.amount, tender.detail["points"], tender.detail["mode"]) == ("loyalty", 49, "49",
                                                                                             "online")  # fmt: skip
    done = _finish(till, sale)
    assert wait_until(lambda: shop.settled(0))
    earned = (499 - 49) * 10 // 100  # points are not earned on what points paid
    assert shop.hub.accounts.points(customer)["points"] == earned
    assert [t["kind"] for t in done.doc["tenders"]] == ["loyalty", "cash"]


def test_points_the_hub_took_but_the_sale_cannot_use_are_given_back(shop: Shop) -> None:
    till = shop.tills[0]
    shop.connect(0)
    shop.hub.accounts.earn_points("cust-9", 30)
    till.loyalty.rules = dataclasses.replace(till.loyalty.rules, min_redeem=50)
    sale = _basket(till, 1, "cust-9")
    with pytest.raises(TenderError, match=r"^customer cust-9 has too few points \(30\)$"):
        till.pay_points(sale)  # the hub took the 30 there are (a partial redemption): too few to pay with
    assert sale.tenders == []
    assert wait_until(lambda: shop.settled(0))
    assert shop.hub.accounts.points("cust-9")["points"] == 30
    assert [m["op"] for m in shop.hub.accounts.moves("cust-9", "loyalty")] == ["earn", "redeem", "reverse"]
    assert [s for (s,) in till.ledger.conn.execute("SELECT state FROM account_auths")] == ["reversed"]


def test_points_of_goods_returned_at_a_till_are_taken_back_at_the_hub(shop: Shop) -> None:
    till = shop.tills[0]
    shop.connect(0)
    customer = "0195a3e2-6a00-7abc-8def-00000000e7e1"
    done = _finish(till, _basket(till, 4, customer=customer))  # 19.96: 199 points
    assert wait_until(lambda: shop.settled(0))
    shop.hub.accounts.redeem_points(customer, 150, ref="web-7")  # spent online: 49 left

    original = till.returns.find_sale(str(done.committed.number))
    plan = till.returns.plan_receipted(original, [ReturnRequest(Decimal(2), line=1)])  # 9.98 back; 9.98 kept: 99
    ret, _ = till.refund(plan, Approval(Action.REFUND, "sue", None, till.clock.now() + timedelta(minutes=1)))
    assert wait_until(lambda: shop.settled(0))
    assert shop.hub.accounts.points(customer)["points"] == 49 - 100
    last = shop.hub.accounts.moves(customer, "loyalty")[-1]
    assert (last["op"], last["delta"], last["mode"], last["device"], last["ref"]) == ("clawback", -100, "local",
                                                                                      "till-1", ret["id"])  # fmt: skip
    [(code, subject, message)] = shop.hub.alerts()
    assert (code, subject) == (ALERT_NEGATIVE_POINTS, customer)
    assert message == f"points {customer} is overdrawn: balance -51 points after local clawback at demo/till-1"
    # online, the hub books a claw-back once per movement id, like any other movement
    web = "0195a3e2-6a00-7abc-8def-00000000c1a0"
    first = shop.hub.accounts.claw_back_points(customer, 9, ref="web-8", move_id=web)
    again = shop.hub.accounts.claw_back_points(customer, 9, ref="web-8", move_id=web)
    assert first == again and (first["op"], first["delta"], first["balance"]) == ("clawback", -9, -60)


def test_cards_sold_at_a_till_store_credit_from_returns_and_voids_reach_the_hub(shop: Shop) -> None:
    one, two = shop.tills
    shop.connect(0)
    shop.connect(1)
    sale = _basket(one, 1)
    line = one.sell_gift_card(sale, 5_000)
    card = line.scan.code if line.scan else ""
    assert line.tax == 0 and line.total == 5_000
    done = _finish(one, sale)
    assert wait_until(lambda: shop.settled(0))
    assert shop.hub.accounts.balance(card) == {"account": card, "kind": "gift_card", "balance": 5_000,
                                               "currency": "EUR"}  # fmt: skip
    # a return refunded as store credit; spent at the other till
    original = one.returns.find_sale(str(done.committed.number))
    plan = one.returns.plan_receipted(original, [ReturnRequest(Decimal(1), line=1)])
    ret, _ = one.refund(plan, Approval(Action.REFUND, "sue", None, one.clock.now() + timedelta(minutes=1)))
    credit = ret["refunds"][0]["reference"]
    assert wait_until(lambda: shop.settled(0))
    assert shop.hub.accounts.balance(credit)["balance"] == 499
    sale = _basket(two, 1)
    assert two.pay_stored_value(sale, credit).amount == 499
    # a voided sale gives back what the hub took
    assert shop.hub.accounts.balance(credit)["balance"] == 0
    two.cancel(sale, actor="ann", reason="wrong customer")
    assert wait_until(lambda: shop.settled(1))
    assert shop.hub.accounts.balance(credit)["balance"] == 499
    with pytest.raises(SaleError, match="gift card; its value stays on the card"):
        one.returns.plan_receipted(original, [ReturnRequest(Decimal(1), line=2)])


def test_offline_points_are_limited_per_customer(shop: Shop) -> None:
    till = shop.tills[0]
    shop.connect(0)
    customer = "cust-7"
    shop.hub.accounts.earn_points(customer, 1_000, ref="web-1")
    assert till.loyalty.check(customer).points == 1_000  # remembered for offline use
    shop.broker.stop()
    assert wait_until(lambda: not shop.services[0].link.connected)
    sale = _basket(till, 8, customer)  # 39.92, less 2.00 off above 30.00
    with pytest.raises(TenderError, match=r"at most 300 more points can be redeemed for this customer offline "
                                          r"\(limit 300\)"):  # fmt: skip
        till.pay_points(sale, 400)
    tender = till.pay_points(sale, 300)
    assert (tender.amount, tender.detail["mode"]) == (300, "offline")
    done = _finish(till, sale)
    assert done.doc["total"] == 3_992 - 200  # "2.00 off when you spend 30"
    shop.broker.restart()
    assert wait_until(lambda: shop.settled(0), timeout=15)
    earned = (3_792 - 300) * 10 // 100
    assert shop.hub.accounts.points(customer)["points"] == 1_000 - 300 + earned
    assert shop.hub.alerts() == []


def test_the_cashier_api_sells_checks_and_takes_gift_cards_and_points(shop: Shop, tmp_path: Path) -> None:
    import httpx

    from appliance.daemon import Daemon
    from appliance.demo import DEMO_DEVICES
    from kiosk_ui.testing import DaemonThread, demo_prepare

    config = parse_config(DEMO_DEVICES + "[loyalty]\nenabled = true\n", environ={})
    daemon = Daemon(config, tmp_path / "kiosk", fast_hash=True, prepare=demo_prepare(), brokers=(shop.broker.url,),
                    health_interval=0.2)  # fmt: skip
    with DaemonThread(daemon) as running, httpx.Client(base_url=running.url + "/api/v1", timeout=10) as http:
        assert wait_until(lambda: daemon.sync is not None and daemon.sync.link.connected)
        login = http.post("/session/pin", json={"staff_id": "ann", "pin": "1234"}).json()
        http.headers["Authorization"] = f"Bearer {login['token']}"

        sold = http.post("/cart/gift-cards", json={"amount": 2_500})
        assert sold.status_code == 200, sold.text
        account = sold.json()["account"]
        assert [ln["name"] for ln in sold.json()["cart"]["lines"]] == [f"Gift card {account}"]
        paid = http.post("/cart/payments", json={"kind": "cash", "amount": 2_500}).json()
        assert paid["receipt"] is not None
        assert wait_until(lambda: shop.hub.query("SELECT balance FROM acct_balances WHERE account = ?", (account,))
                          == [(2_500,)])  # fmt: skip

        seen = http.get(f"/accounts/stored-value/{account.lower()}").json()
        assert (seen["balance"]["minor"], seen["kind"], seen["source"]) == (2_500, "gift_card", "shop")
        assert http.post("/cart/items", json={"code": "9780201379624"}).status_code == 200  # 3.49
        res = http.post("/cart/payments/stored-value", json={"account": account, "print": False})
        assert res.status_code == 200, res.text
        body = res.json()
        assert body["tender"]["mode"] == "online" and body["tender"]["amount"]["minor"] == 349
        assert body["receipt"] is not None and body["cart"]["lines"] == []
        assert shop.hub.accounts.balance(account)["balance"] == 2_151

        missing = http.post("/cart/items", json={"code": "9780201379624"})
        assert missing.status_code == 200
        nope = http.post("/cart/payments/stored-value", json={"account": "GC-2222-3333"})
        assert (nope.status_code, nope.json()["error"]["code"]) == (404, "not_found")
        bad = http.post("/cart/payments/stored-value", json={"account": "no such card!"})
        assert bad.status_code == 422

        customer = "0195a3e2-6a00-7abc-8def-00000000c0de"
        shop.hub.accounts.earn_points(customer, 120)
        running.call(lambda: setattr(daemon.sale, "customer_id", customer))
        assert http.get(f"/accounts/loyalty/{customer}").json() == {
            "customer": customer, "points": 120, "source": "shop",
            "value": {"minor": 120, "text": running.call(lambda: daemon.fmt.money(120))}}  # fmt: skip
        res = http.post("/cart/payments/points", json={"points": 100, "print": False})
        assert res.status_code == 200, res.text
        assert (res.json()["tender"]["points"], res.json()["cart"]["paid"]["minor"]) == (100, 100)
        assert shop.hub.accounts.points(customer)["points"] == 20
        assert http.post("/cart/payments", json={"kind": "cash"}).status_code == 200


@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM} (apt install chromium)")
def test_the_cashier_screen_sells_and_takes_a_gift_card(shop: Shop, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    from appliance.daemon import Daemon
    from appliance.demo import DEMO_DEVICES
    from kiosk_ui.testing import DaemonThread, chromium_page, demo_prepare, log_in

    config = parse_config(DEMO_DEVICES, environ={})
    daemon = Daemon(config, tmp_path / "kiosk", fast_hash=True, prepare=demo_prepare(), brokers=(shop.broker.url,),
                    health_interval=0.2)  # fmt: skip
    with DaemonThread(daemon) as running, chromium_page(height=900) as page:
        log_in(page, running.url)
        assert wait_until(lambda: daemon.sync is not None and daemon.sync.link.connected)

        page.click("#b-sell-card")
        page.fill('dialog input[aria-label="Amount"]', "30,00")
        page.keyboard.press("Enter")
        expect(page.locator("#lines tbody tr")).to_have_count(1)
        account = page.inner_text("#lines tbody tr td:nth-child(2)").removeprefix("Gift card ").strip()
        assert account.startswith("GC-")
        page.keyboard.press("F4")
        page.wait_for_selector("#tendered")
        page.keyboard.press("Enter")  # exact cash
        page.wait_for_selector("#change, dialog pre.receipt")
        page.keyboard.press("Escape")
        assert wait_until(lambda: shop.hub.query("SELECT balance FROM acct_balances WHERE account = ?",
                                                 (account,)) == [(3_000,)])  # fmt: skip

        page.fill("#code", "9780201379624")  # a notebook, 3.49
        page.keyboard.press("Enter")
        expect(page.locator("#lines tbody tr")).to_have_count(1)
        page.click("#b-giftcard")
        page.fill('dialog input[aria-label="Card or credit number (scan it)"]', account)
        page.keyboard.press("Enter")
        expect(page.locator("dialog pre.receipt")).to_contain_text(f"Gift Card {account}")
        assert shop.hub.accounts.balance(account)["balance"] == 3_000 - 349
        page.keyboard.press("Escape")
        page.click("#b-balance")
        page.fill("dialog input", account)
        page.keyboard.press("Enter")
        expect(page.locator("#balance-result")).to_have_text(f"{account} (gift card): 26,51\xa0€")
