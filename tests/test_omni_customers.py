"""One customer record: the hub keeps it, two tills on a real Mosquitto look it up, cache it with consent, erase it."""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from appliance.config import parse_config
from appliance.customers import QR_PREFIX, Customers, apply_revoked, classify, phone_key, qr_token
from appliance.errors import InputError, NotFound
from appliance.staff import Action, Approval
from appliance.till import Till, open_ledger
from kiosk_ui.testing import CHROMIUM
from sync.hub import Hub
from sync.hub_customers import ALERT_DUPLICATE
from sync.link import LinkSettings
from sync.service import SyncOptions, SyncService, settings_from_config
from sync.testing import Mosquitto, wait_until

FAST = SyncOptions(window=50, ack_timeout=5.0, health_interval=0.05, poll_interval=0.005, reconcile_interval=None,
                   lookup_timeout=2.0)  # fmt: skip


def now() -> datetime:
    return datetime.now(UTC)


def erase_ok(actor: str = "max") -> Approval:
    return Approval(Action.ERASE_CUSTOMER, actor, None, now() + timedelta(minutes=1))


@dataclasses.dataclass
class Shop:
    broker: Mosquitto
    hub: Hub
    tills: list[Till]
    services: list[SyncService]
    dirs: list[Path]

    def row(self, i: int, customer_id: str) -> tuple[object, ...] | None:
        """Till i's ``customers`` row (name, email, cached_at, erased_at), read on a fresh connection."""
        with sqlite3.connect(self.tills[i].ledger.path) as conn:
            row = conn.execute("SELECT name, email, cached_at, erased_at FROM customers WHERE id = ?",
                               (customer_id,)).fetchone()  # fmt: skip
        conn.close()
        return None if row is None else tuple(row)


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[Shop]:
    configs = [parse_config(f'[store]\ndevice_id = "till-{i}"\n', environ={}) for i in (1, 2)]
    dirs = [tmp_path / f"till-{i}" for i in (1, 2)]
    with Mosquitto(tmp_path / "broker") as broker:
        hub = Hub(tmp_path / "hub", LinkSettings.from_urls([broker.url], "hub", backoff_initial=0.05)).start()
        tills: list[Till] = []
        services: list[SyncService] = []
        try:
            for config, d in zip(configs, dirs, strict=True):
                tills.append(Till(config, open_ledger(config, d), fast_hash=True))
                link = dataclasses.replace(settings_from_config(config, d, (broker.url,)), backoff_initial=0.05)
                services.append(SyncService.from_config(config, d, link=link, options=FAST).start())
                tills[-1].customers.remote = services[-1].request
            assert wait_until(lambda: all(s.link.connected for s in services) and hub.link.connected)
            yield Shop(broker, hub, tills, services, dirs)
        finally:
            for s in services:
                s.close()
            for t in tills:
                t.ledger.close()
            hub.close()


def _published(shop: Shop, customer_id: str) -> bool:
    return shop.hub.customers.get(customer_id) is not None


# -- across tills -----------------------------------------------------------------------------------


def test_a_customer_created_at_till_a_is_found_at_till_b(shop: Shop) -> None:
    a, b = (t.customers for t in shop.tills)
    jane = a.add("Jane Doe", email="Jane@Example.org", phone="+49 30 1234567", card="2000 0000 0001 5", consent=True,
                 now=now())  # fmt: skip
    assert wait_until(lambda: _published(shop, jane.id))
    record = shop.hub.customers.get(jane.id)
    assert record is not None and record["name"] == "Jane Doe" and record["card"] == "2000000000015"
    assert shop.hub.query("SELECT origin FROM customers WHERE id = ?", (jane.id,)) == [("till-1",)]

    for token in ("jane@example.org", "+49 (30) 123-4567", "2000000000015", jane.id):
        found = b.identify(token, now=now())
        assert (found.id, found.name, found.card, found.consent) == (jane.id, "Jane Doe", "2000000000015", True)
    assert shop.row(1, jane.id) is not None  # she consented: till B keeps her record now
    assert shop.row(1, jane.id)[:2] == ("Jane Doe", "jane@example.org")  # type: ignore[index]
    # the journals carry the id, never the personal data
    for i in (0, 1):
        journal = "".join(str(r) for r in shop.tills[i].ledger.conn.execute("SELECT payload FROM journal"))
        assert "Jane" not in journal and "example.org" not in journal and "1234567" not in journal


def test_lookup_by_phone_email_card_badge_and_the_apps_qr_code(shop: Shop) -> None:
    b = shop.tills[1].customers
    max_ = shop.hub.customers.create("Max Muster", email="max@example.org", phone="0171 5550123", badge="04a1b2c3",
                                     consent=True)  # fmt: skip
    token = shop.hub.customers.app_token(max_["id"])
    assert token.startswith(QR_PREFIX) and max_["id"] in token
    for t in (token, token.lower().replace(max_["id"].lower(), max_["id"]), "max@example.org", "0171/5550123",
              "04A1B2C3"):  # fmt: skip
        assert b.identify(t, now=now()).id == max_["id"], t
    newer = shop.hub.customers.app_token(max_["id"])
    with pytest.raises(NotFound, match="QR code"):
        b.identify(token, now=now())  # the app showed a new code: the old one is void
    forged = qr_token(max_["id"], "A" * 26)
    with pytest.raises(NotFound, match="QR code"):
        b.identify(forged, now=now())
    assert b.identify(newer, now=now()).name == "Max Muster"
    with pytest.raises(NotFound, match="shop has no customer"):
        b.identify("nobody@example.org", now=now())
    resolve = shop.hub.customers.resolve  # what the hub's loyalty accounts use for a card or QR code
    assert shop.hub.call(lambda: resolve(newer)).result(5) == max_["id"]
    assert shop.hub.call(lambda: resolve("04a1 b2c3")).result(5) == max_["id"]


def test_several_matches_are_listed_and_identify_asks_for_another_identifier(shop: Shop) -> None:
    b = shop.tills[1].customers
    one = shop.hub.customers.create("Ann Family", phone="030 999 888", consent=True)
    two = shop.hub.customers.create("Ben Family", phone="030-999888", email="ben@example.org")
    assert {c.id for c in b.lookup("030999888", now=now())} == {one["id"], two["id"]}
    with pytest.raises(InputError, match="2 customers match"):
        b.identify("030 999888", now=now())
    assert b.identify("ben@example.org", now=now()).id == two["id"]


def test_only_a_consenting_customer_is_cached_and_consent_travels_both_ways(shop: Shop) -> None:
    b = shop.tills[1].customers
    eve = shop.hub.customers.create("Eve Private", email="eve@example.org", consent=False)
    found = b.identify("eve@example.org", now=now())
    assert found.name == "Eve Private" and not found.cached
    assert shop.row(1, eve["id"]) is None  # nothing about her on disk
    assert b.get(eve["id"]).name == "Eve Private"  # held in memory while she is served

    b.set_consent(eve["id"], True, now())  # she agrees at the counter
    assert shop.row(1, eve["id"])[:2] == ("Eve Private", "eve@example.org")  # type: ignore[index]
    assert wait_until(lambda: (shop.hub.customers.get(eve["id"]) or {}).get("consent") is True)

    shop.hub.customers.set_consent(eve["id"], False)  # and withdraws it online
    assert wait_until(lambda: shop.row(1, eve["id"]) is None)
    assert b.cached("eve@example.org", now=now()) == []


def test_offline_a_till_finds_only_cached_customers(shop: Shop) -> None:
    b = shop.tills[1].customers
    kept = shop.hub.customers.create("Kim Kept", email="kim@example.org", consent=True)
    passing = shop.hub.customers.create("Pat Passing", email="pat@example.org", consent=False)
    assert b.identify("kim@example.org", now=now()).cached
    assert not b.identify("pat@example.org", now=now()).cached

    shop.hub.close()  # the shop is gone; the till hears the hub's Will
    assert wait_until(lambda: shop.services[1].hub_online is False)
    assert b.ask_shop("kim@example.org") is None
    assert b.identify("kim@example.org", now=now()).id == kept["id"]
    with pytest.raises(NotFound, match="not reachable"):
        b.identify("pat@example.org", now=now())
    assert passing["id"] not in {c.id for c in b.find("Pat")}
    later = now() + timedelta(days=31)  # the cache has an age: a month later Kim is not cached any more
    with pytest.raises(NotFound, match="not reachable"):
        b.identify("kim@example.org", now=later)
    assert b.purge(later) == 1 and shop.row(1, kept["id"]) is None


def test_a_customer_created_offline_is_published_when_the_link_returns(shop: Shop, tmp_path: Path) -> None:
    a, b = (t.customers for t in shop.tills)
    shop.services[0].close()
    lea = a.add("Lea Late", email="lea@example.org", consent=False, now=now())
    assert shop.row(0, lea.id) is None and a.get(lea.id).name == "Lea Late"  # no consent: held, not stored
    config = shop.tills[0].config
    link = dataclasses.replace(settings_from_config(config, shop.dirs[0], (shop.broker.url,)), backoff_initial=0.05)
    shop.services[0] = SyncService.from_config(config, shop.dirs[0], link=link, options=FAST).start()
    assert wait_until(lambda: _published(shop, lea.id))
    assert b.identify("lea@example.org", now=now()).id == lea.id


def test_erasure_at_a_till_reaches_the_shop_and_every_other_till(shop: Shop) -> None:
    a, b = (t.customers for t in shop.tills)
    zoe = a.add("Zoe Gone", email="zoe@example.org", phone="+49 40 7654321", consent=True, now=now())
    assert wait_until(lambda: _published(shop, zoe.id))
    assert b.identify("zoe@example.org", now=now()).cached

    a.erase(zoe.id, erase_ok(), now())
    assert wait_until(lambda: shop.hub.customers.erased(zoe.id))
    assert wait_until(lambda: (shop.row(1, zoe.id) or (None,) * 4)[3] is not None)  # till B: a tombstone
    assert shop.row(1, zoe.id)[:3] == (None, None, None)  # type: ignore[index]
    assert b.get(zoe.id).erased
    with pytest.raises(NotFound):
        b.identify("zoe@example.org", now=now())
    with pytest.raises(InputError, match="already erased"):
        a.erase(zoe.id, erase_ok(), now())
    # no trace of her personal data is left in either ledger or in the hub's database
    assert wait_until(lambda: not any(_mentions(p, "zoe@example.org") for p in _files(shop)))
    for path in _files(shop):
        assert not _mentions(path, "Zoe Gone") and not _mentions(path, "7654321"), path


def test_erasure_at_the_shop_reaches_every_till(shop: Shop) -> None:
    a, b = (t.customers for t in shop.tills)
    ivy = shop.hub.customers.create("Ivy Online", email="ivy@example.org", consent=True)
    for c in (a, b):
        assert c.identify("ivy@example.org", now=now()).cached
    shop.hub.customers.erase(ivy["id"])
    assert wait_until(lambda: all((shop.row(i, ivy["id"]) or (None,) * 4)[3] is not None for i in (0, 1)))
    assert shop.hub.customers.get(ivy["id"]) is None
    with pytest.raises(InputError, match="already erased"):
        shop.hub.customers.erase(ivy["id"])


def test_the_shop_is_told_about_a_duplicate_created_at_a_till(shop: Shop) -> None:
    online = shop.hub.customers.create("Olga Online", email="olga@example.org")
    twin = shop.tills[0].customers.add("Olga O.", email="olga@example.org", now=now())
    assert wait_until(lambda: any(code == ALERT_DUPLICATE for code, _s, _m in shop.hub.alerts()))
    [(_code, subject, message)] = [a for a in shop.hub.alerts() if a[0] == ALERT_DUPLICATE]
    assert subject == twin.id and online["id"] in message and "olga" not in message.lower()


def _files(shop: Shop) -> list[Path]:
    return [t.ledger.path for t in shop.tills] + [shop.hub.path]


def _mentions(path: Path, text: str) -> bool:
    """Whether any text column of any table in the SQLite file contains ``text``."""
    found = False
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            cols = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
            where = " OR ".join(f"instr(CAST({c} AS TEXT), ?) > 0" for c in cols)
            if conn.execute(f"SELECT 1 FROM {table} WHERE {where} LIMIT 1", (text,) * len(cols)).fetchone():
                found = True
    conn.close()
    return found


# -- without a broker -------------------------------------------------------------------------------


def test_tokens_are_classified() -> None:
    cid = "0195a3e2-6a00-7abc-8def-0123456789ab"
    assert classify(f"tbc1:{cid}:abcdefghijklmnopqrstuvwxyz") == ("qr", f"TBC1:{cid}:ABCDEFGHIJKLMNOPQRSTUVWXYZ")
    assert classify(cid.upper()) == ("id", cid)
    assert classify(" Jane@Example.org ") == ("email", "jane@example.org")
    assert classify("+49 30 1234567") == ("key", "+49 30 1234567")
    assert phone_key("+49 (30) 123-4567") == "+49301234567" and phone_key("call me") is None
    for bad in ("", "x" * 201, "TBC1:no-secret", "TBC1:a:b:c", "jane@", "tab\there"):
        with pytest.raises(InputError):
            classify(bad)


def test_the_outbox_allows_only_the_redaction_of_customer_events(tmp_path: Path) -> None:
    config = parse_config("", environ={})
    with open_ledger(config, tmp_path) as led:
        customers = Customers(led)
        c = customers.add("Rita Redact", email="rita@example.org", consent=True, now=now())
        event = led.conn.execute("SELECT seq, data FROM outbox WHERE type = 'tillbox.customer.created'").fetchone()
        assert "rita@example.org" in event[1]
        for data in ('{"id":"' + c.id + '","name":"Other"}', '{"id":"someone-else","redacted":true}'):
            with pytest.raises(sqlite3.IntegrityError, match="immutable"):
                led.conn.execute("UPDATE outbox SET data = ? WHERE seq = ?", (data, event[0]))
        customers.erase(c.id, erase_ok(), now())
        with pytest.raises(sqlite3.IntegrityError, match="immutable"):
            led.conn.execute("UPDATE outbox SET data = ? WHERE type = 'tillbox.customer.erased'",
                             ('{"id":"' + c.id + '","redacted":true}',))  # fmt: skip
        assert led.conn.execute("SELECT data FROM outbox WHERE seq = ?", (event[0],)).fetchone()[0] == (
            '{"id":"' + c.id + '","redacted":true}'
        )
        types = [r[0] for r in led.conn.execute("SELECT type FROM outbox WHERE type LIKE 'tillbox.customer.%'")]
        assert types == ["tillbox.customer.created", "tillbox.customer.erased"]


def test_revocations_respect_the_version_a_till_cached(tmp_path: Path) -> None:
    config = parse_config("", environ={})
    with open_ledger(config, tmp_path) as led:
        customers = Customers(led)
        t = now()
        for cid, version in (("c-old", 3), ("c-new", 9)):
            customers.remember({"id": cid, "version": version, "name": cid, "consent": True}, now=t)
        revoked = [{"id": "c-old", "version": 5, "reason": "withdrawn"}, {"id": "c-new", "version": 5,
                   "reason": "withdrawn"}, {"id": "c-unknown", "version": 5, "reason": "erased"}]  # fmt: skip
        with led.transaction("test") as tx:
            assert apply_revoked(tx.conn, revoked, "2026-03-02T09:30:00.000Z") == 1
        assert [r[0] for r in led.conn.execute("SELECT id FROM customers")] == ["c-new"]  # refreshed after version 5


# -- the cashier screen (real Chromium, real daemon with sync) --------------------------------------

WATER = "4006381333931"


@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM}")
def test_the_cashier_identifies_scans_and_registers_customers_through_the_shop(tmp_path: Path) -> None:
    from playwright.sync_api import expect

    from appliance.daemon import Daemon
    from kiosk_ui.testing import DaemonThread, chromium_page, demo_config, demo_prepare, log_in

    with Mosquitto(tmp_path / "broker") as broker:
        hub = Hub(tmp_path / "hub", LinkSettings.from_urls([broker.url], "hub", backoff_initial=0.05)).start()
        try:
            hub.customers.create("Max Muster", phone="0171 5550123", consent=True)
            ida = hub.customers.create("Ida App", email="ida@example.org", badge="04A1B2C3")
            ida_qr = hub.customers.app_token(ida["id"])
            daemon = Daemon(demo_config(), tmp_path / "data", fast_hash=True, prepare=demo_prepare(),
                            brokers=(broker.url,), health_interval=0.5)  # fmt: skip
            with DaemonThread(daemon) as running, chromium_page() as page:
                assert wait_until(lambda: daemon.sync is not None and daemon.sync.link.connected)
                log_in(page, running.url)
                page.fill("#code", WATER)
                page.press("#code", "Enter")
                page.wait_for_selector("#lines tbody tr")

                page.fill("#customer-token", "0171/555 0123")  # typed differently than registered
                page.press("#customer-token", "Enter")
                expect(page.locator("#customer")).to_have_text("Customer: Max Muster")
                assert "kept on this till" in page.inner_text("#customer-result")

                running.call(lambda: daemon.sim_feed("scanner", ida_qr))  # the app's QR code at the scanner
                expect(page.locator("#customer")).to_have_text("Customer: Ida App")

                page.click("#customer-panel button:has-text('Badge')")
                page.wait_for_timeout(200)
                running.call(lambda: daemon.sim_feed("badge", "04a1b2c3"))
                expect(page.locator("#customer-result")).to_contain_text("Ida App")
                assert "not kept (no consent)" in page.inner_text("#customer-result")

                page.click("#customer-panel summary")
                page.fill("input[aria-label='New customer name']", "Nina New")
                page.fill("input[aria-label='New customer email']", "nina@example.org")
                page.check("#customer-consent")
                page.click("#customer-panel button:has-text('Register')")
                expect(page.locator("#customer")).to_have_text("Customer: Nina New")
            assert wait_until(lambda: bool(hub.query("SELECT id FROM customers WHERE email = 'nina@example.org'")))
        finally:
            hub.close()
