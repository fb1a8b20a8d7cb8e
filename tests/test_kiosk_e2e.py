"""The kiosk screens end to end in real Chromium (Debian's package, driven by Playwright).

Each test runs a whole daemon on a loopback port with simulated devices, except where a
real driver is the point: the cashier's scanner is the serial scanner driver reading a
pseudo-terminal. Screenshots go to the test's tmp dir (and to ``$TILLBOX_ARTIFACTS`` when
set) and are checked to be real renders, not blank pages.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.config import parse_config
from appliance.daemon import Daemon, Inputs, managed_devices
from appliance.demo import DEMO_DEVICES
from appliance.ledger import verify
from kiosk_ui.testing import CHROMIUM, CHROMIUM_ARGS, DaemonThread, chromium_page, demo_prepare, leftover_threads

WATER, PEN, MILK, WINE = "4006381333931", "4006381000130", "4012345678901", "4006040014003"

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM} (apt install chromium)")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=list(CHROMIUM_ARGS))
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    with chromium_page(browser) as pg:
        yield pg


def screenshot(page: Any, tmp_path: Path, name: str) -> Path:
    """Save a screenshot and check it is a real render: a sizeable PNG with many colours."""
    from PIL import Image

    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path))
    assert path.stat().st_size > 5_000
    with Image.open(path) as img:
        colours = img.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 20, "the screenshot is (nearly) blank"
    target = os.environ.get("TILLBOX_ARTIFACTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / path.name)
    return path


class Pty:
    """A pseudo-terminal pair: the scanner driver opens ``port``; the test writes scanner bytes."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        self.port = os.ttyname(self.slave)

    def scan(self, code: str) -> None:
        os.write(self.master, code.encode("ascii") + b"\r")

    def close(self) -> None:
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def pty() -> Iterator[Pty]:
    p = Pty()
    yield p
    p.close()


def start(tmp_path: Path, *, shift: bool = True, scanner_port: str | None = None, extra: str = "") -> DaemonThread:
    config_text = DEMO_DEVICES + extra
    factory = None
    if scanner_port is not None:
        from drivers.scanner import SerialScanner

        config_text += '\n[devices.scanner]\nkind = "none"\n'

        def factory(inputs: Inputs, daemon: Daemon) -> Any:
            scanner = SerialScanner(scanner_port, inputs.scan, on_reject=lambda r: inputs.reject("scanner", r))
            return managed_devices(inputs, daemon, overrides={"scanner": scanner})

    daemon = Daemon(parse_config(config_text, environ={}), tmp_path, fast_hash=True, prepare=demo_prepare(shift=shift),
                    devices=factory, health_interval=0.5)  # fmt: skip
    return DaemonThread(daemon).start()


@pytest.fixture
def threads_joined() -> Iterator[None]:
    before = {t.ident for t in threading.enumerate()}
    yield
    # Playwright's own event loop keeps executor threads (asyncio_N) for the module's browser;
    # the daemon's loop (asyncio.run) joins its executor before it returns.
    left = leftover_threads(before, ignore="asyncio_")
    assert not left, f"threads left behind: {left}"


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as pw_expect

    return pw_expect(locator)


def test_cashier_sells_through_the_serial_scanner(page: Any, pty: Pty, tmp_path: Path, threads_joined: None) -> None:
    with start(tmp_path / "data", shift=False, scanner_port=pty.port) as running:
        daemon = running.daemon
        page.goto(running.url + "/cashier")
        page.fill("#staff-id", "ann")
        for digit in "1234":  # the on-screen keypad, as on a touch screen
            page.click(f'.keypad button[data-key="{digit}"]')
        page.click(".keypad button[type=submit]")
        page.wait_for_selector("#no-shift:not(.hidden)")
        page.fill("#float", "100,00")
        page.click("#shift-form button[type=submit]")
        page.wait_for_selector("#till:not(.hidden)")
        page.wait_for_selector("#conn.ok")
        for n, code in enumerate((PEN, WATER, MILK), 1):
            pty.scan(code)
            page.wait_for_selector(f"#lines tbody tr:nth-child({n})")
        assert page.inner_text("#lines tbody tr:nth-child(1)").startswith("1\tBallpoint Pen")
        assert "20% off dairy" in page.inner_text("#lines tbody tr:nth-child(3)")
        assert page.inner_text("#t-due") == "2,70\xa0€"
        page.keyboard.press("F8")  # coupon
        page.fill("dialog input", "PEN")
        page.keyboard.press("Enter")
        expect(page.locator("#t-due")).to_have_text("1,71\xa0€")
        assert "Free pen with coupon PEN" in page.inner_text("#promos")
        screenshot(page, tmp_path, "cashier")
        page.keyboard.press("F4")  # cash
        page.wait_for_selector("#tendered")
        page.fill("#tendered", "5")
        page.keyboard.press("Enter")
        page.wait_for_selector("#change")
        assert page.inner_text("#change") == "Change: 3,29\xa0€"
        screenshot(page, tmp_path, "cashier-receipt")
        printed = daemon.devices.sim["printer"].text()
        assert "Ballpoint Pen" in printed and "Ref TB-till-1-000001" in printed and "Change" in printed
        assert daemon.devices.sim["drawer"].pulses, "the drawer opened for the cash"

        def ledger_state() -> tuple[dict[str, Any], bool]:
            till = daemon.t
            return till.returns.find_sale("TB-till-1-000001"), verify(till.ledger).ok

        sale, ok = running.call(ledger_state)
        assert ok
        assert sale["cashier"] == "ann" and sale["total"] == 171 and sale["change"] == 329
        assert [ln["sku"] for ln in sale["lines"]] == ["1009", "1001", "1003"]
        assert sale["coupons"] == ["PEN"]
        page.click("dialog button.primary")
        page.wait_for_selector("dialog", state="detached")
        assert page.inner_text("#t-due") == "0,00\xa0€" and page.locator("#lines tbody tr").count() == 0


def test_self_checkout_weighed_and_age_restricted_with_attendant(page: Any, tmp_path: Path,
                                                                 threads_joined: None) -> None:  # fmt: skip
    from decimal import Decimal

    with start(tmp_path / "data") as running:
        daemon = running.daemon
        if "scale" not in daemon.devices.sim:
            pytest.skip("no pseudo-terminals for the simulated scale")
        key = daemon.key.value  # type: ignore[union-attr]
        page.goto(f"{running.url}/self-checkout#key={key}")
        page.wait_for_selector("#attract:not(.hidden)")
        assert "key=" not in page.url, "the kiosk key must leave the address bar"
        page.click('#langs button[data-lang="de"]')
        expect(page.locator("#attract-title")).to_have_text("Willkommen")
        assert page.get_attribute("html", "lang") == "de"
        screenshot(page, tmp_path, "self-checkout-attract")
        page.click("#start")
        page.click("#lookup")  # produce without a barcode: pictures by category
        page.click('#categories button[data-department="produce"]')
        page.click('#tiles button[data-sku="2003"]')
        expect(page.locator("#weigh-title")).to_have_text("Tomatoes auf die Waage legen")
        daemon.devices.sim["scale"].place(Decimal("0.750"))
        page.click("#weigh-go")
        page.wait_for_selector("#shop:not(.hidden) #lines tr")
        assert "0,75 kg" in page.inner_text("#lines tr:nth-child(1)")
        running.call(lambda: daemon.sim_feed("scanner", WINE))  # the shopper scans a bottle of wine
        page.wait_for_selector("#attendant:not(.hidden)")
        screenshot(page, tmp_path, "self-checkout-attendant")
        alerts = running.call(lambda: [a["code"] for a in daemon._alert_list()])
        assert "lane.attendant" in alerts
        assert str(daemon.devices.companion.state) == "intervention"  # the light tower calls staff
        page.fill("#att-id", "ann")  # a cashier may not approve an age check
        page.fill("#att-pin", "1234")
        page.click("#att-form button[type=submit]")
        expect(page.locator("#att-msg")).to_contain_text("may not approve")
        page.fill("#att-id", "sam")
        page.fill("#att-pin", "9999")
        page.click("#att-form button[type=submit]")
        page.wait_for_selector("#shop:not(.hidden)")
        assert page.locator("#lines tr").count() == 2
        assert str(daemon.devices.companion.state) == "idle"
        page.click("#pay")
        page.wait_for_selector("#payment:not(.hidden)")
        assert page.is_hidden("#pay-cash"), "card only without a cash device"
        page.click("#pay-card")
        page.wait_for_selector("#receipt:not(.hidden)")
        page.click("#r-digital")
        page.wait_for_selector("#thanks:not(.hidden) #qr")
        screenshot(page, tmp_path, "self-checkout-thanks")

        def sale() -> dict[str, Any]:
            return daemon.t.returns.find_sale("TB-till-1-000001")

        doc = running.call(sale)
        assert doc["cashier"] == "self-checkout" and doc["approver"] == "sam"
        assert [t["kind"] for t in doc["tenders"]] == ["card"]
        assert [ln["name"] for ln in doc["lines"]] == ["Tomatoes", "Red Wine 0.75l"] and doc["lines"][0][
            "qty"
        ] == "0.75"
        assert "Red Wine" not in daemon.devices.sim["printer"].text(), "digital receipt: nothing printed"


def test_customer_display_follows_the_cart(browser: Any, tmp_path: Path, threads_joined: None) -> None:
    with start(tmp_path / "data") as running:
        daemon = running.daemon
        key = daemon.key.value  # type: ignore[union-attr]
        context = browser.new_context(viewport={"width": 1280, "height": 720})
        try:
            display = context.new_page()
            cashier = context.new_page()
            display.goto(f"{running.url}/customer-display#key={key}")
            expect(display.locator("#promo")).not_to_be_empty()  # offers while idle
            cashier.goto(running.url + "/cashier")
            cashier.fill("#staff-id", "ann")
            cashier.fill("#pin", "1234")
            cashier.press("#pin", "Enter")
            cashier.wait_for_selector("#till:not(.hidden)")
            cashier.wait_for_selector("#conn.ok")
            for n, code in enumerate((WATER, MILK), 1):
                cashier.fill("#code", code)
                cashier.press("#code", "Enter")
                display.wait_for_selector(f"#lines tr:nth-child({n})")
            assert "Whole Milk 1l" in display.inner_text("#lines tr:nth-child(2)")
            expect(display.locator("#total")).to_have_text("1,71\xa0€")
            screenshot(display, tmp_path, "customer-display-cart")
            cashier.keyboard.press("F4")
            cashier.fill("#tendered", "2")
            cashier.keyboard.press("Enter")
            display.wait_for_selector("#thanks:not(.hidden)")
            expect(display.locator("#thanks-change")).to_have_text("Change: 0,29\xa0€")
            assert display.get_attribute("#qr", "src").startswith("data:image/svg+xml")
            screenshot(display, tmp_path, "customer-display-thanks")
            pole = daemon.devices.sim["display"].lines
            assert pole[0].startswith("TOTAL") and pole[1].startswith("CHANGE")  # the pole display too
        finally:
            context.close()


def test_technician_test_prints(page: Any, tmp_path: Path, threads_joined: None) -> None:
    with start(tmp_path / "data") as running:
        page.goto(running.url + "/technician")
        page.fill("#staff-id", "ann")  # a cashier is not a technician
        page.fill("#pin", "1234")
        page.press("#pin", "Enter")
        expect(page.locator("#login-notice")).to_contain_text("technician role")
        page.fill("#staff-id", "tom")
        page.fill("#pin", "4321")
        page.press("#pin", "Enter")
        page.wait_for_selector('#device-rows tr[data-device="printer"]')
        assert page.inner_text('#device-rows tr[data-device="printer"] .badge-health') == "ok"
        page.click('button[data-test="printer"]')
        expect(page.locator("#test-result")).to_have_text("printer: OK – test page sent")
        assert "printer test" in running.daemon.devices.sim["printer"].text()
        assert "Outbox backlog" in page.inner_text("#sync-info")
        assert '"store"' in page.inner_text("#config-view")
        screenshot(page, tmp_path, "technician")


def _approve(page: Any) -> None:
    page.wait_for_selector("#approver-id")
    page.fill("#approver-id", "sam")
    page.fill("#approver-pin", "9999")
    page.press("#approver-pin", "Enter")


def _press(page: Any, key: str) -> None:
    """Press a till shortcut once no dialog is open (the screen ignores shortcuts while one is)."""
    expect(page.locator("dialog[open]")).to_have_count(0)
    page.keyboard.press(key)


def test_cashier_approvals_park_return_and_z_report(page: Any, tmp_path: Path, threads_joined: None) -> None:
    with start(tmp_path / "data") as running:
        page.goto(running.url + "/cashier")
        page.fill("#staff-id", "ann")
        page.fill("#pin", "1234")
        page.press("#pin", "Enter")
        page.fill("#code", WATER)
        page.press("#code", "Enter")
        page.wait_for_selector("#lines tbody tr")
        page.keyboard.press("F7")  # 50% off is above the cashier's limit: a supervisor approves
        page.click("dialog button:has-text('Selected line')")
        page.fill("dialog input >> nth=0", "50")
        page.fill("dialog input >> nth=2", "dented")
        page.press("dialog input >> nth=2", "Enter")
        _approve(page)
        expect(page.locator("#t-due")).to_have_text("0,39\xa0€")
        _press(page, "F10")  # park
        expect(page.locator("#lines tbody tr")).to_have_count(0)
        _press(page, "Control+F10")  # resume
        page.click("dialog .grid button")
        expect(page.locator("#lines tbody tr")).to_have_count(1)
        _press(page, "F4")
        page.wait_for_selector("#tendered")
        page.press("#tendered", "Enter")  # exact cash
        page.wait_for_selector("dialog pre.receipt")
        page.click("dialog button.primary")
        _press(page, "F11")  # return it
        page.fill("dialog input", "TB-till-1-000001")
        page.press("dialog input", "Enter")
        page.check("dialog input[type=checkbox]")
        page.click("dialog button:has-text('Refund')")
        _approve(page)
        expect(page.locator("dialog pre.receipt")).to_contain_text("RETURN")
        page.click("dialog button.primary")
        _press(page, "F12")
        page.click("dialog button:has-text('Close shift')")
        page.fill("dialog input", "100")
        page.press("dialog input", "Enter")
        _approve(page)
        expect(page.locator('dialog[aria-label="Z report 1"] pre')).to_contain_text("Counted")
        screenshot(page, tmp_path, "cashier-z-report")

        def journal() -> list[tuple[str, str | None, str | None]]:
            rows = running.daemon.t.ledger.conn.execute(
                "SELECT type, actor, approver FROM journal WHERE type IN ('approval.granted', 'sale.completed', "
                "'return.completed', 'shift.closed') ORDER BY seq"
            )
            return [(str(r[0]), r[1], r[2]) for r in rows]

        entries = running.call(journal)
        assert ("return.completed", "ann", "sam") in entries and ("shift.closed", "ann", "sam") in entries
        assert [e[0] for e in entries].count("approval.granted") == 3
        page.keyboard.press("Escape")
        page.wait_for_selector("#no-shift:not(.hidden)")
