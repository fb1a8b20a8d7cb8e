"""Receipt printer: golden bytes, barcodes that scan, status parsing, failures that never fail a sale."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import select
import socket
import threading
import tty
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import appliance.ids
from appliance.clock import FrozenClock
from appliance.config import parse_config
from appliance.demo import seed
from appliance.errors import DeviceMisconfigured, DeviceUnavailable, InputError
from appliance.receipt import Receipt, ReceiptLine, ReceiptTender
from appliance.returns import ReturnRequest
from appliance.sale import Discount
from appliance.staff import Action, Approval
from appliance.till import Completed, Till, open_ledger
from drivers.base import Health, HealthState
from drivers.escpos_codec import (
    CODE128_QUIET_MODULES,
    PrinterProfile,
    PrinterStatus,
    RasterImage,
    cmd_qr,
    cmd_raster,
    code128_data,
    code_page,
    encode_text,
    printable,
    qr_modules,
    qr_version,
    render_receipt,
    to_text,
)
from drivers.payment import SimulatedTerminal
from drivers.printer import (
    PrinterAlert,
    PrintJob,
    ReceiptPrinter,
    ReprintQueue,
    SimulatedPrinter,
    file_link,
    job_key,
    load_logo,
    network_link,
    open_link,
    receipt_from_dict,
    receipt_to_dict,
    serial_link,
)
from drivers.transport import LoopbackTransport
from tests.conftest import open_shift

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("TILLBOX_UPDATE_GOLDEN") == "1"
STORE = """
[store]
name = "Café Müller"
address = ["Hauptstraße 1", "10115 Berlin"]
tax_id = "DE123456789"
timezone = "Europe/Berlin"

[receipt]
footer = ["Prices in € include VAT. Returns within 30 days with this receipt."]
url_template = "https://r.example.com/{store}/{reference}"
"""
LOGO = RasterImage.from_pattern(["#" * 24, "#" + "." * 22 + "#", "#..####..####..####...#", "#" * 24])
WATER, MILK, WINE, BEER, BANANAS = "4006381333931", "4012345678901", "4006040014003", "4008287050707", "4011"
SOLD_AT = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)


@contextmanager
def store_till(directory: Path, toml: str) -> Iterator[Till]:
    """A till as ``demo_till`` builds it (demo catalog, shift open), with its own configuration."""
    config = parse_config(toml, environ={})
    with open_ledger(config, directory) as ledger:
        till = Till(config, ledger, clock=FrozenClock(SOLD_AT), terminal=SimulatedTerminal(), fast_hash=True)
        seed(till, directory)
        open_shift(till)
        yield till


def fix_ids(mp: pytest.MonkeyPatch, clock: FrozenClock) -> None:
    """UUIDv7s from the frozen clock and a counter, so journal hashes (the printed witness) repeat."""
    counter = itertools.count()
    epoch = datetime(1970, 1, 1, tzinfo=UTC)

    def urandom(n: int) -> bytes:
        return hashlib.sha256(b"%d" % next(counter)).digest()[:n]

    def time_ns() -> int:
        return (clock.now() - epoch) // timedelta(microseconds=1) * 1000

    mp.setattr(appliance.ids, "os", SimpleNamespace(urandom=urandom))
    mp.setattr(appliance.ids, "time", SimpleNamespace(time_ns=time_ns))


def ring_golden_sale(till: Till) -> Completed:
    """Promotions, a weighed line, a price override, a manual and a cart discount, a void, card and cash."""
    sale = till.new_sale("anna")
    for code in (WATER, WATER, WATER, MILK):
        till.scan(sale, code)
    till.scan(sale, BANANAS, quantity=Decimal("1.235"))
    till.scan(sale, WINE)
    till.scan(sale, BEER, quantity=Decimal(2))
    till.scan(sale, "BAG")
    now = till.clock.now()
    sale.override_price(7, 119, now, reason="shelf label price", actor="anna")
    sale.discount_line(6, Discount(percent=Decimal(10), reason="damaged label", actor="anna"), now)
    sale.void_line(8, now, reason="customer changed mind")
    sale.discount_cart(Discount(percent=Decimal(5), reason="loyalty card", actor="anna"), now)
    till.pay_card(sale, 1000)
    sale.pay_cash(500)
    return till.complete(sale)


@dataclass(frozen=True)
class Shop:
    """One real sale rung through a till, its receipt, a reprinted copy and a return of part of it."""

    till: Till
    done: Completed
    sale: Receipt
    copy: Receipt
    ret: Receipt


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    mp = pytest.MonkeyPatch()
    try:
        fix_ids(mp, FrozenClock(SOLD_AT))
        with store_till(tmp_path_factory.mktemp("shop"), STORE) as till:
            done = ring_golden_sale(till)
            sale = till.receipt(done)
            copy = till.reprint(sale.reference, actor="anna")
            original = till.returns.find_sale(sale.reference)
            plan = till.returns.plan_receipted(original, [
                ReturnRequest(qty=Decimal("1.235"), line=5),
                ReturnRequest(qty=Decimal(1), line=6, disposition="damaged"),
                ReturnRequest(qty=Decimal(2), line=7),
            ])  # fmt: skip
            _, ret = till.refund(plan, Approval(Action.REFUND, "anna", None, SOLD_AT + timedelta(minutes=1)))
            mp.undo()
            yield Shop(till, done, sale, copy, ret)
    finally:
        mp.undo()


@pytest.fixture
def receipt(shop: Shop) -> Receipt:
    return shop.sale


# -- an independent reading of CODE128, as a scanner would ---------------------------------------

START = {"A": 103, "B": 104, "C": 105}
SWITCH = {"A": 101, "B": 100, "C": 99}


def read_code128(data: bytes) -> tuple[str, list[int]]:
    """Interpret ESC/POS CODE128 data as the printer does: the text and every symbol value."""
    assert data[:1] == b"{" and chr(data[1]) in "ABC", "data must open with a code set selection"
    text: list[str] = []
    values: list[int] = []
    mode = ""
    i = 0
    while i < len(data):
        b = data[i]
        if b == ord("{"):
            c = chr(data[i + 1])
            i += 2
            if c == "{":
                assert mode == "B"
                values.append(ord("{") - 32)
                text.append("{")
            else:
                values.append(SWITCH[c] if mode else START[c])
                mode = c
            continue
        if mode == "C":
            assert 0 <= b <= 99, "code set C carries one digit pair per byte"
            values.append(b)
            text.append(f"{b:02d}")
        else:
            assert mode == "B" and 32 <= b <= 126
            values.append(b - 32)
            text.append(chr(b))
        i += 1
    values.append((values[0] + sum(pos * v for pos, v in enumerate(values[1:], start=1))) % 103)
    return "".join(text), values


def barcode_in(data: bytes) -> tuple[int, bytes] | None:
    """(module width from GS w, data of GS k 73) found in a byte stream."""
    at = data.find(b"\x1dk\x49")
    if at < 0:
        return None
    width_at = data.rfind(b"\x1dw", 0, at)
    n = data[at + 3]
    return data[width_at + 2], data[at + 4 : at + 4 + n]


# -- golden receipts ------------------------------------------------------------------------------


def check_golden(name: str, data: bytes, columns: int) -> str:
    """Compare bytes and their text reading with the golden files (rewritten with TILLBOX_UPDATE_GOLDEN=1)."""
    text = to_text(data, columns)
    golden_bin, golden_txt = GOLDEN / f"{name}.bin", GOLDEN / f"{name}.txt"
    if UPDATE:
        golden_bin.write_bytes(data)
        golden_txt.write_text(text, encoding="utf-8")
    assert data == golden_bin.read_bytes()
    assert text == golden_txt.read_text(encoding="utf-8")
    return text


def test_the_golden_sale_is_real(shop: Shop) -> None:
    entry = shop.done.committed.journal
    assert (shop.sale.journal_seq, shop.sale.hash_prefix) == (entry.seq, entry.hash[:8])
    assert shop.till.ledger.entry(entry.seq) == entry
    assert shop.sale.reference == "TB-till-1-000001" and shop.sale.total == shop.done.doc["total"] == 1260
    assert (shop.copy.copy, shop.copy.journal_seq) == (1, entry.seq)
    assert shop.ret.title == "RETURN" and shop.ret.total < 0


@pytest.mark.parametrize(("paper", "page"), [(58, "CP858"), (80, "CP437")])
def test_sale_receipt_matches_golden_bytes(shop: Shop, paper: int, page: str) -> None:
    profile = PrinterProfile(paper_mm=paper, code_page=page)
    check_golden(f"receipt_{paper}", render_receipt(shop.sale, profile, logo=LOGO), profile.columns)


def test_return_receipt_matches_golden_bytes(shop: Shop) -> None:
    profile = PrinterProfile(paper_mm=58, code_page="CP858")
    data = render_receipt(shop.ret, profile)
    check_golden("return_58", data, profile.columns)
    text = to_text(data)  # no centring: lines as sent
    lines = text.splitlines()
    assert "RETURN" in lines and "RECEIPT" not in lines
    for expected in ("Bananas", "  1.235 kg                 -1.99", "Red Wine 0.75l             -5.98", "  damaged",
                     "  qty 2                    -2.26", "  returned to stock", "TOTAL EUR                 -10.23",
                     "Refund card               -10.00", "Refund cash                -0.23",
                     "7% Reduced rate      -1.86 -0.13", "19% Standard rate    -6.93 -1.31",
                     "[CODE128 RT-000001]", "Return of receipt", "TB-till-1-000001"):  # fmt: skip
        assert expected in lines
    assert not re.search(r"--\d", text)


def test_reprint_is_the_receipt_marked_copy(shop: Shop) -> None:
    profile = PrinterProfile(paper_mm=80)
    original = to_text(render_receipt(shop.sale, profile), profile.columns).splitlines()
    data = render_receipt(shop.copy, profile)
    assert b"\x1bE\x01*** COPY 1 ***\n\x1bE\x00" in data
    at = original.index("RECEIPT".center(48).rstrip()) + 1
    assert to_text(data, profile.columns).splitlines() == [*original[:at], "*** COPY 1 ***".center(48).rstrip(),
                                                           *original[at:]]  # fmt: skip


@pytest.mark.parametrize(("paper", "page", "table"), [(58, "CP858", 19), (80, "CP437", 0)])
def test_receipt_structure(shop: Shop, paper: int, page: str, table: int) -> None:
    profile = PrinterProfile(paper_mm=paper, code_page=page)
    data = render_receipt(shop.sale, profile, logo=LOGO)
    assert data.startswith(b"\x1b@\x1bt" + bytes([table]))
    assert data.endswith(b"\x1dV\x42\x00")  # feed to the cutter and cut partially
    assert b"\x1dv0\x00\x03\x00\x04\x00" in data  # the logo: 3 bytes x 4 rows
    assert b"\x1bE\x01\x1d!\x01" in data  # bold, double height
    text = to_text(data, profile.columns)
    lines = [line.strip() for line in text.splitlines()]
    assert all(len(line) <= profile.columns for line in text.splitlines() if not line.startswith("["))
    total = next(line for line in lines if line.startswith("TOTAL EUR"))
    assert total.endswith(" 12.60") and len(total) == profile.columns
    entry = shop.done.committed.journal
    for expected in ("RECEIPT", "* Water 3 for 2", "1.235 kg x 1.69/kg", "2 x 1.19", "price 1.29 -> 1.19: shelf",
                     "10% off: damaged label",
                     "Shopping Bag (VOID)", "ref VISA SIM000001", "Change", "7% Reduced rate", "19% Standard rate",
                     "Ref TB-till-1-000001", "No. 1  2026-03-02 10:30  anna", f"J{entry.seq}:{entry.hash[:8]}",
                     "Your receipt online:", "[QR https://r.example.com/demo/TB-till-1-000001]", "Tax ID DE123456789",
                     "[IMAGE 24x4]", "[CUT]"):  # fmt: skip
        assert any(line.startswith(expected) for line in lines), expected
    # 16 characters of CODE128 need 418 dots at the narrowest module: a QR code on 58 mm
    assert ("[QR TB-till-1-000001]" if paper == 58 else "[CODE128 TB-till-1-000001]") in lines
    euro = "€" if page == "CP858" else "EUR"
    assert f"Prices in {euro} include" in text.replace("\n", " ")


def test_prices_excluding_tax_and_cash_rounding(tmp_path: Path) -> None:
    toml = "[tax]\nprices_include_tax = false\n[currency]\ncash_rounding = 5\n"
    with store_till(tmp_path, toml) as till:
        sale = till.new_sale("ben")
        till.scan(sale, BEER)  # 1.29 net + 19% = 1.54 gross
        till.scan(sale, WATER)  # 0.79 net + 7% = 0.85 gross
        sale.pay_cash(sale.cash_due())
        receipt = till.receipt(till.complete(sale))
    assert (receipt.net, receipt.tax, receipt.total, receipt.rounding) == (208, 31, 239, 1)
    text = to_text(render_receipt(receipt, PrinterProfile(paper_mm=58)), 32)
    for left, right in (("Net", "2.08"), ("Tax", "0.31"), ("TOTAL EUR", "2.39"), ("Cash rounding", "0.01"),
                        ("Rounded total", "2.40"), ("Cash", "2.40")):  # fmt: skip
        assert left.ljust(32 - len(right)) + right in text.splitlines(), left
    assert "Your receipt online:" not in text and "Thank you!" in text  # the default footer, no link


def test_negative_and_large_amounts_keep_their_sign_and_width(shop: Shop) -> None:
    line = ReceiptLine("Refund test", "3", "each", 250, -750, discount=-25)
    receipt = replace(shop.ret, lines=(line,), subtotal=-750, discount=-25, total=-123456789, rounding=-2,
                      tenders=(ReceiptTender("Refund cash", -123456791),), change=-1)  # fmt: skip
    text = to_text(render_receipt(receipt, PrinterProfile(paper_mm=58)), 32)
    lines = text.splitlines()
    for left, right in (("  3 x 2.50", "-7.50"), ("  Discount", "0.25"), ("Subtotal", "-7.50"), ("Discounts", "0.25"),
                        ("TOTAL EUR", "-1234567.89"), ("Cash rounding", "-0.02"), ("Rounded total", "-1234567.91"),
                        ("Refund cash", "-1234567.91"), ("Change", "-0.01")):  # fmt: skip
        assert left.ljust(32 - len(right)) + right in lines, left
    assert all(len(line) <= 32 for line in lines)


@given(st.lists(st.integers(-(10**12), 10**12), min_size=6, max_size=6))
def test_any_amount_prints_once_with_one_sign(shop: Shop, amounts: list[int]) -> None:
    amount, discount, total, rounding, tendered, change = amounts
    receipt = replace(shop.sale, lines=(ReceiptLine("Item", "1", "each", amount, amount, discount=discount),),
                      discount=0, total=total, rounding=rounding, tenders=(ReceiptTender("Cash", tendered),),
                      change=change, digital_url=None)  # fmt: skip
    text = to_text(render_receipt(receipt, PrinterProfile(paper_mm=58)), 32)
    lines = text.splitlines()
    assert all(len(line) <= 32 for line in lines) and not re.search(r"--\d", text)
    money = shop.sale.currency.plain
    assert next(line for line in lines if line.startswith("Item")).endswith(" " + money(amount))
    assert next(line for line in lines if line.startswith("TOTAL EUR")).endswith(" " + money(total))
    assert any(line.startswith("  Discount") and line.endswith(" " + money(-discount)) for line in lines) == bool(
        discount
    )


def test_hostile_text_cannot_inject_commands(shop: Shop) -> None:
    evil = "Evil\x1b@\x1dV\x00\x10\x04\x01 🍺 Bier"
    receipt = replace(shop.sale, store_name=evil, footer=(evil,),
                      lines=(replace(shop.sale.lines[0], name=evil, note=evil, reasons=(evil,)),),
                      tenders=(ReceiptTender(evil, 100, evil),), digital_url=None)  # fmt: skip
    data = render_receipt(receipt, PrinterProfile(paper_mm=58))
    assert data.count(b"\x1b@") == 1  # only the initialisation
    assert b"\x1dV\x00" not in data and b"\x10\x04" not in data
    assert "Evil?@?V???? ? Bier  " in to_text(data, 32)


def test_receipt_json_round_trips(shop: Shop) -> None:
    for receipt in (shop.sale, shop.copy, shop.ret):
        data = json.loads(json.dumps(receipt_to_dict(receipt)))
        assert receipt_from_dict(data) == receipt
        assert render_receipt(receipt_from_dict(data), PrinterProfile()) == render_receipt(receipt, PrinterProfile())


def test_print_job_format_matches_golden(shop: Shop) -> None:
    job = PrintJob(job_key(shop.copy), shop.copy, "2026-03-02T09:30:00.000Z", attempts=2, last_error="paper out")
    path = GOLDEN / "print_job.json"
    if UPDATE:
        path.write_text(json.dumps(job.to_dict(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    stored = json.loads(path.read_text(encoding="utf-8"))
    assert job.to_dict() == stored
    assert PrintJob.from_dict(stored) == job
    assert stored["key"] == "TB-till-1-000001 copy 1"
    assert stored["receipt"]["currency"] == {"code": "EUR", "exponent": 2}


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d.pop("total"), "receipt lacks total"),
    (lambda d: d.update(total="12.59"), "receipt.total must be int, not str"),
    (lambda d: d.update(total=True), "receipt.total must be int, not bool"),
    (lambda d: d.update(lines=[{"name": "x"}]), r"receipt.lines\[0\] lacks qty"),
    (lambda d: d["tenders"][0].update(reference=5), r"receipt.tenders\[0\].reference must be str, not int"),
    (lambda d: d.update(footer="Thank you"), "receipt.footer must be a list, not str"),
    (lambda d: d.update(colour="red"), "receipt has unknown fields: colour"),
    (lambda d: d.update(currency="EUR"), "receipt.currency must be an object, not str"),
])  # fmt: skip
def test_malformed_receipt_data_is_rejected(shop: Shop, change: Any, message: str) -> None:
    data = receipt_to_dict(shop.sale)
    change(data)
    with pytest.raises(InputError, match=message):
        receipt_from_dict(data)
    with pytest.raises(InputError):
        PrintJob.from_dict({"key": "k", "queued_at": "t", "receipt": data})
    with pytest.raises(InputError, match="malformed"):
        PrintJob.from_dict({"key": "k", "doc": {}})


def test_defaulted_fields_may_be_absent(shop: Shop) -> None:
    data = receipt_to_dict(shop.ret)
    for name in ("copy", "digital_url", "footer"):
        del data[name]
    assert receipt_from_dict(data) == replace(shop.ret, copy=0, digital_url=None, footer=())


# -- code pages -----------------------------------------------------------------------------------


def test_unknown_code_page_is_a_clear_misconfiguration() -> None:
    with pytest.raises(DeviceMisconfigured, match="unknown code page 'CP999'"):
        PrinterProfile(code_page="CP999")
    with pytest.raises(DeviceMisconfigured, match="supported: CP437"):
        code_page("klingon")


@pytest.mark.parametrize(
    ("name", "canonical", "table"),
    [("pc858", "CP858", 19), ("WPC1252", "CP1252", 16), ("windows-1252", "CP1252", 16), ("cp437", "CP437", 0)],
)
def test_code_page_aliases(name: str, canonical: str, table: int) -> None:
    page = code_page(name)
    assert (page.name, page.table) == (canonical, table)


def test_euro_sign_per_code_page() -> None:
    assert encode_text("€1", code_page("CP858")) == b"\xd51"
    assert encode_text("€1", code_page("CP1252")) == b"\x801"
    assert encode_text("€1", code_page("CP437")) == b"EUR1"
    assert encode_text("Gdańsk ő", code_page("CP437")) == b"Gdansk o"


@given(st.text(max_size=80), st.sampled_from(["CP437", "CP850", "CP858", "CP1252", "CP866", "CP852"]))
def test_any_text_encodes_without_control_bytes(text: str, name: str) -> None:
    page = code_page(name)
    data = encode_text(text, page)
    assert len(data) == len(printable(text, page))
    assert not any(b < 0x20 or b == 0x7F for b in data)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"paper_mm": 57}, "paper width 57"),
    ({"paper_mm": 58, "columns": 42}, "58 mm paper has 32 columns"),
    ({"barcode_module": 7}, "module width 7"),
    ({"qr_ec": "X"}, "error correction"),
])  # fmt: skip
def test_profile_rejects_bad_settings(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(DeviceMisconfigured, match=message):
        PrinterProfile(**kwargs)


def test_profile_defaults_follow_the_paper() -> None:
    assert (PrinterProfile(paper_mm=58).columns, PrinterProfile(paper_mm=58).dots) == (32, 384)
    assert (PrinterProfile(paper_mm=80).columns, PrinterProfile(paper_mm=80).dots) == (48, 576)
    assert PrinterProfile(paper_mm=80, columns=42).columns == 42


# -- CODE128 and QR -------------------------------------------------------------------------------


def test_code_set_c_packs_digit_pairs() -> None:
    data, symbols = code128_data("4006381333931")
    # 13 digits: six pairs in set C as values 0..99, the odd last digit in set B
    assert data == b"{C" + bytes([40, 6, 38, 13, 33, 93]) + b"{B1"
    assert symbols == 10  # start, 6 pairs, code B, "1", check


@pytest.mark.parametrize("text", ["till-1-000001", "12", "123", "12345", "AB12345", "AB123456CD", "x{y}", "0", "Z"])
def test_code128_reads_back_and_counts_symbols(text: str) -> None:
    data, symbols = code128_data(text)
    decoded, values = read_code128(data)
    assert decoded == text
    assert len(values) == symbols


@given(st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=60))
def test_any_ascii_code128_reads_back(text: str) -> None:
    data, symbols = code128_data(text)
    decoded, values = read_code128(data)
    assert decoded == text and len(values) == symbols
    assert symbols <= len(text) + 3  # code C never costs more than plain set B plus switches


def test_code128_rejects_what_it_cannot_carry() -> None:
    with pytest.raises(InputError):
        code128_data("naïve")
    with pytest.raises(InputError):
        code128_data("")


@pytest.mark.parametrize(
    ("paper", "reference", "width"),
    [(58, "till-1-000001", 2), (80, "till-1-000001", 3), (80, None, 2), (80, "till-1-123456", 3), (58, "RT-000001", 2)],
)
def test_receipt_barcode_scans_and_fits_the_paper(
    receipt: Receipt, paper: int, reference: str | None, width: int
) -> None:
    if reference:
        receipt = replace(receipt, reference=reference)
    profile = PrinterProfile(paper_mm=paper, barcode_module=3)
    found = barcode_in(render_receipt(receipt, profile))
    assert found is not None
    module, data = found
    text, values = read_code128(data)
    assert text == (reference or "TB-till-1-000001")
    modules = 11 * len(values) + 13 + 2 * CODE128_QUIET_MODULES
    assert module == width
    assert modules * module <= profile.dots


def test_printed_reference_finds_the_sale_again(shop: Shop) -> None:
    found = barcode_in(render_receipt(shop.sale, PrinterProfile(paper_mm=80)))
    assert found is not None
    scanned = read_code128(found[1])[0]
    assert shop.till.returns.find_sale(scanned)["id"] == shop.done.committed.sale_id


def test_too_wide_barcode_falls_back_to_a_qr_code_that_fits(receipt: Receipt) -> None:
    reference = "01a218d2-a20b-77d5-a0c7-dab805c679e4"
    profile = PrinterProfile(paper_mm=58)
    data = render_receipt(replace(receipt, reference=reference, digital_url=None), profile)
    assert barcode_in(data) is None
    assert f"[QR {reference}]" in to_text(data)
    size = data[data.index(b"\x1d(k\x03\x001C") + 7]
    version = qr_version(len(reference), "M")
    assert version is not None and (qr_modules(version) + 8) * size <= profile.dots


def test_qr_bytes_follow_the_command_reference() -> None:
    expected = bytes.fromhex(
        "1d286b 0400 31 41 32 00"  # function 165: model 2
        "1d286b 0300 31 43 06"  # function 167: module size 6 dots
        "1d286b 0300 31 45 31"  # function 169: error correction M
        "1d286b 1000 31 50 30"  # function 180: store 13 bytes (pL = 13 + 3)
        "74696c6c2d312d303030303031"  # the data, "till-1-000001"
        "1d286b 0300 31 51 30"  # function 181: print
    )
    assert cmd_qr(b"till-1-000001", module=6, ec="M") == expected
    long = cmd_qr(b"x" * 300, module=3, ec="L")
    assert long[25:32] == bytes.fromhex("1d286b 2f01 3150")  # 303 = 0x012F, low byte first


@pytest.mark.parametrize("ec", ["L", "M", "Q", "H"])
def test_qr_version_matches_the_qrcode_library(ec: str) -> None:
    import qrcode  # type: ignore[import-untyped]
    import qrcode.constants  # type: ignore[import-untyped]

    levels = {"L": qrcode.constants.ERROR_CORRECT_L, "M": qrcode.constants.ERROR_CORRECT_M,
              "Q": qrcode.constants.ERROR_CORRECT_Q, "H": qrcode.constants.ERROR_CORRECT_H}  # fmt: skip
    for length in (1, 7, 8, 14, 15, 26, 27, 42, 43, 62, 63, 84, 106, 119, 120, 151, 152, 213, 214, 271):
        ours = qr_version(length, ec)
        qr = qrcode.QRCode(error_correction=levels[ec])
        qr.add_data(b"x" * length)
        version = qr.best_fit()
        assert ours == (version if version <= 10 else None), (length, ec)


def test_symbology_none_and_qr_only(receipt: Receipt) -> None:
    none = render_receipt(receipt, PrinterProfile(symbology="none"))
    assert b"\x1dk" not in none and b"\x1d(k" not in none
    assert "Your receipt online:\nhttps://r.example.com/demo/TB-till-1-000001\n" in to_text(none)
    qr = to_text(render_receipt(receipt, PrinterProfile(symbology="qr")))
    assert "[QR TB-till-1-000001]" in qr and "CODE128" not in qr


def test_digital_receipt_link_is_a_qr_code_or_text_that_fits(receipt: Receipt) -> None:
    profile = PrinterProfile(paper_mm=58)
    data = render_receipt(receipt, profile)
    link = b"https://r.example.com/demo/TB-till-1-000001"
    store = data.index(b"1P0" + link)  # function 180 stores exactly the link
    assert data[store - 5 : store] == b"\x1d(k" + bytes([len(link) + 3, 0])
    size = data[data.rindex(b"\x1d(k\x03\x001C", 0, store) + 7]
    assert qr_version(len(link), "M") == 4  # 43 bytes: one more than version 3 holds at level M
    assert size == 6 and (qr_modules(4) + 8) * size <= profile.dots
    long = "https://r.example.com/" + "x" * 300  # beyond QR version 10: printed as text, nothing lost
    text = to_text(render_receipt(replace(receipt, digital_url=long), profile))
    after = text.split("Your receipt online:\n")[1].splitlines()
    assert "".join(after[:11]) == long and all(len(line) <= 32 for line in after)
    assert b"\x1d(k" not in render_receipt(replace(receipt, digital_url=None), PrinterProfile(symbology="none"))


@pytest.mark.parametrize(
    ("cut", "ending"), [("full", b"\x1dVA\x00"), ("partial", b"\x1dVB\x00"), ("none", b"\x1bd\x04")]
)
def test_cut_modes(receipt: Receipt, cut: str, ending: bytes) -> None:
    data = render_receipt(receipt, PrinterProfile(cut=cut))  # type: ignore[arg-type]
    assert data.endswith(ending) and data.count(b"\x1dV") == (cut != "none")


# -- logo -----------------------------------------------------------------------------------------


def test_raster_bytes_pack_msb_first() -> None:
    image = RasterImage.from_pattern(["#.........", ".........#"])
    assert cmd_raster(image) == bytes.fromhex("1d7630 00 0200 0200 8000 0040")


def test_logo_from_an_image_file(tmp_path: Path) -> None:
    from PIL import Image

    path = tmp_path / "logo.png"
    image = Image.new("RGBA", (10, 2), (255, 255, 255, 0))
    image.putpixel((0, 0), (0, 0, 0, 255))
    image.putpixel((9, 1), (20, 20, 20, 255))
    image.save(path)
    assert load_logo(path, PrinterProfile()) == RasterImage.from_pattern(["#.........", ".........#"])
    Image.new("1", (400, 10)).save(tmp_path / "wide.png")
    with pytest.raises(DeviceMisconfigured, match="400 dots wide"):
        load_logo(tmp_path / "wide.png", PrinterProfile(paper_mm=58))
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(DeviceMisconfigured, match="cannot read logo"):
        load_logo(tmp_path / "junk.png", PrinterProfile())


# -- real-time status -----------------------------------------------------------------------------


@pytest.mark.parametrize(("replies", "expected"), [
    ((0x12, 0x12, 0x12, 0x12), PrinterStatus()),
    ((0x16, 0x12, 0x12, 0x12), PrinterStatus(drawer_pin3_high=True)),
    ((0x1A, 0x16, 0x12, 0x12), PrinterStatus(online=False, cover_open=True)),
    ((0x1A, 0x32, 0x12, 0x72), PrinterStatus(online=False, paper_end_stop=True, paper_out=True)),
    ((0x12, 0x12, 0x12, 0x1E), PrinterStatus(paper_near_end=True)),
    ((0x1A, 0x52, 0x1A, 0x12), PrinterStatus(online=False, error=True, cutter_error=True)),
    ((0x1A, 0x5A, 0x32, 0x12), PrinterStatus(online=False, error=True, feed_button=True, unrecoverable_error=True)),
    ((0x12, 0x52, 0x52, 0x12), PrinterStatus(error=True, auto_recoverable_error=True)),
])  # fmt: skip
def test_dle_eot_replies_parse(replies: tuple[int, int, int, int], expected: PrinterStatus) -> None:
    assert PrinterStatus.parse(*replies) == expected


def test_status_problems_name_the_cause() -> None:
    assert PrinterStatus.parse(0x1A, 0x32, 0x12, 0x72).problems == ("paper out",)
    assert PrinterStatus.parse(0x1A, 0x16, 0x12, 0x12).problems == ("cover open",)
    assert PrinterStatus.parse(0x1A, 0x12, 0x12, 0x12).problems == ("printer offline",)
    assert PrinterStatus.parse(0x12, 0x12, 0x12, 0x1E).ready


@pytest.mark.parametrize("garbage", [0x00, 0xFF, 0x10, 0x92, 0x13])
def test_garbled_status_byte_is_rejected(garbage: int) -> None:
    with pytest.raises(InputError):
        PrinterStatus.parse(garbage, 0x12, 0x12, 0x12)


@given(st.builds(PrinterStatus, *[st.booleans()] * 11))
def test_simulator_status_bytes_parse_back(status: PrinterStatus) -> None:
    assert PrinterStatus.parse(*status.to_bytes()) == status


# -- the driver: failures never fail the sale ----------------------------------------------------


class Alerts:
    def __init__(self) -> None:
        self.alerts: list[PrinterAlert] = []
        self.health: list[HealthState] = []


@pytest.fixture
def watch() -> Alerts:
    return Alerts()


def make_printer(link: Any, watch: Alerts, **kwargs: Any) -> ReceiptPrinter:
    printer = ReceiptPrinter(link, PrinterProfile(paper_mm=58), on_alert=watch.alerts.append, **kwargs)
    printer.on_health(watch.health.append)
    return printer


def test_prints_through_the_simulator(receipt: Receipt, watch: Alerts) -> None:
    sim = SimulatedPrinter(columns=32)
    printer = make_printer(sim, watch)
    printer.print_receipt(receipt)
    assert bytes(sim.written) == printer.render(receipt)
    assert "TOTAL EUR                  12.60" in sim.text()
    assert "[QR TB-till-1-000001]" in sim.text()
    assert printer.health.health == Health.OK and not printer.pending and not watch.alerts


def test_printer_disappears_mid_receipt_then_reprints(receipt: Receipt, watch: Alerts) -> None:
    sim = SimulatedPrinter()
    printer = make_printer(sim, watch, chunk_size=256)
    sim.fail_after(300)
    printer.print_receipt(receipt)  # must not raise
    assert 0 < len(sim.written) < len(printer.render(receipt))
    assert [j.key for j in printer.pending] == ["TB-till-1-000001"]
    assert printer.pending[0].attempts == 1
    assert "went away" in printer.health.reason
    assert [(a.job, a.pending) for a in watch.alerts] == [("TB-till-1-000001", 1)]

    assert printer.reprint_pending() == 0  # still gone
    assert printer.pending[0].attempts == 2
    sim.reconnect()
    sim.clear()
    assert printer.reprint_pending() == 1
    assert bytes(sim.written) == printer.render(receipt)
    assert not printer.pending
    assert [(s.health, s.reason) for s in watch.health] == [
        (Health.UNAVAILABLE, "simulated printer went away mid-job"),
        (Health.UNAVAILABLE, "simulated printer is disconnected"),
        (Health.OK, ""),
    ]


def test_paper_out_queues_and_prints_nothing(receipt: Receipt, watch: Alerts) -> None:
    sim = SimulatedPrinter()
    sim.status = PrinterStatus(online=False, paper_end_stop=True, paper_out=True)
    printer = make_printer(sim, watch)
    printer.print_receipt(receipt)
    assert not sim.written
    assert printer.health == HealthState("printer", Health.UNAVAILABLE, "paper out")
    assert watch.alerts[0].reason == "paper out"
    sim.status = PrinterStatus()
    assert printer.reprint_pending() == 1
    assert bytes(sim.written) == printer.render(receipt)
    assert printer.health.health == Health.OK


def test_near_end_prints_but_degrades(receipt: Receipt, watch: Alerts) -> None:
    sim = SimulatedPrinter()
    sim.status = PrinterStatus(paper_near_end=True)
    printer = make_printer(sim, watch)
    printer.print_receipt(receipt)
    assert sim.written and not printer.pending
    assert printer.health == HealthState("printer", Health.DEGRADED, "paper near end")


def test_receipts_waiting_keep_the_printer_degraded(receipt: Receipt, watch: Alerts) -> None:
    sim = SimulatedPrinter()
    printer = make_printer(sim, watch)
    sim.disconnect()
    printer.print_receipt(receipt)
    printer.print_receipt(replace(receipt, reference="TB-till-1-000002", number=2))
    sim.reconnect()
    printer.print_receipt(replace(receipt, reference="TB-till-1-000003", number=3))
    assert printer.health == HealthState("printer", Health.DEGRADED, "2 receipts waiting to be reprinted")
    assert printer.reprint_pending() == 2
    assert "Ref TB-till-1-000002" in sim.text()
    assert printer.health.health == Health.OK


def test_silent_printer_is_unavailable(receipt: Receipt, watch: Alerts) -> None:
    printer = make_printer(LoopbackTransport(), watch, status_timeout=0.01)
    printer.print_receipt(receipt)
    assert "did not answer status request 1" in printer.health.reason
    assert len(printer.pending) == 1


def test_garbled_status_is_unavailable(receipt: Receipt, watch: Alerts) -> None:
    link = LoopbackTransport()
    printer = make_printer(link, watch, status_timeout=0.01)
    original = link.write

    def answer_garbage(data: bytes) -> None:
        original(data)
        if data.startswith(b"\x10\x04"):
            link.feed(b"\xff")

    link.write = answer_garbage  # type: ignore[method-assign]
    printer.print_receipt(receipt)
    assert "garbled status" in printer.health.reason
    assert link.written == b"\x10\x04\x01"  # nothing sent after the garbled reply


def test_opener_is_retried_after_failures(receipt: Receipt, watch: Alerts) -> None:
    sim = SimulatedPrinter()
    attempts: list[int] = []

    def opener() -> SimulatedPrinter:
        attempts.append(1)
        if len(attempts) == 1:
            raise DeviceUnavailable("USB printer 04b8:0e15 not found")
        return sim

    printer = make_printer(opener, watch)
    printer.print_receipt(receipt)
    assert printer.health.reason == "USB printer 04b8:0e15 not found"
    assert printer.reprint_pending() == 1 and len(attempts) == 2


@pytest.mark.allow_error_logs
def test_broken_alert_listener_and_broken_link_never_raise(receipt: Receipt) -> None:
    def explode(alert: PrinterAlert) -> None:
        raise RuntimeError("listener bug")

    def misconfigured() -> SimulatedPrinter:
        raise DeviceMisconfigured("libusb is not installed")

    printer = ReceiptPrinter(misconfigured, on_alert=explode)
    printer.print_receipt(receipt)
    assert printer.health.health == Health.UNAVAILABLE and len(printer.pending) == 1


def test_queue_persists_through_its_hook(shop: Shop, watch: Alerts) -> None:
    saved: list[list[dict[str, Any]]] = []
    queue = ReprintQueue(on_change=lambda jobs: saved.append([j.to_dict() for j in jobs]))
    sim = SimulatedPrinter()
    sim.disconnect()
    printer = make_printer(sim, watch, queue=queue)
    receipts = [shop.sale, shop.copy, shop.ret]
    for receipt in receipts:
        printer.print_receipt(receipt)
    stored = json.loads(json.dumps(saved[-1]))  # what a daemon would write to disk
    assert [d["key"] for d in stored] == ["TB-till-1-000001", "TB-till-1-000001 copy 1", "RT-000001"]

    restored = ReprintQueue([PrintJob.from_dict(d) for d in stored])
    assert [j.receipt for j in restored.jobs()] == receipts
    sim.reconnect()
    printer = make_printer(sim, watch, queue=restored)
    assert printer.pending[0].last_error == "simulated printer is disconnected"
    assert printer.reprint_pending() == 3
    assert bytes(sim.written) == b"".join(printer.render(r) for r in receipts)


def test_queue_drops_the_oldest_beyond_its_limit(receipt: Receipt) -> None:
    queue = ReprintQueue(limit=2)
    for key in "abc":
        queue.put(PrintJob(key, receipt, "2026-01-01T00:00:00.000Z"))
    assert [j.key for j in queue.jobs()] == ["b", "c"]
    queue.put(replace(queue.jobs()[0], attempts=5))
    assert [(j.key, j.attempts) for j in queue.jobs()] == [("b", 5), ("c", 0)]


def test_status_and_raw_commands(watch: Alerts) -> None:
    sim = SimulatedPrinter()
    printer = make_printer(sim, watch)
    sim.status = PrinterStatus(drawer_pin3_high=True)
    assert printer.status().drawer_pin3_high
    printer.send(b"\x1bp\x00\x32\xfa")
    assert "[DRAWER pin 2, 100 ms]" in sim.text()
    sim.disconnect()
    with pytest.raises(DeviceUnavailable):
        printer.send(b"\x1bp\x00\x32\xfa")
    assert printer.health.health == Health.UNAVAILABLE
    printer.close()
    printer.close()
    with pytest.raises(DeviceUnavailable, match="closed"):
        printer.status()


# -- python-escpos links --------------------------------------------------------------------------


def test_file_link_receives_exact_bytes(receipt: Receipt, tmp_path: Path, watch: Alerts) -> None:
    path = tmp_path / "lp0"
    with make_printer(file_link(path), watch, check_status=False) as printer:
        printer.print_receipt(receipt)
        expected = printer.render(receipt)
    assert path.read_bytes() == expected


@pytest.fixture
def no_leftover_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    assert set(threading.enumerate()) <= before


class FakePrinterPeer:
    """The far end of a pty: records bytes, answers DLE EOT with a scripted status."""

    def __init__(self, master: int, status: PrinterStatus) -> None:
        self.master = master
        self.status = status
        self.received = bytearray()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fake-printer")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.02)
            if not ready:
                continue
            chunk = os.read(self.master, 4096)
            self.received += chunk
            at = chunk.find(b"\x10\x04")
            while 0 <= at < len(chunk) - 2:
                os.write(self.master, self.status.to_bytes()[chunk[at + 2] - 1 : chunk[at + 2]])
                at = chunk.find(b"\x10\x04", at + 3)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@pytest.mark.usefixtures("no_leftover_threads")
def test_serial_link_over_a_pty_with_status(receipt: Receipt, watch: Alerts) -> None:
    master, slave = os.openpty()
    tty.setraw(master)
    peer = FakePrinterPeer(master, PrinterStatus(paper_near_end=True))
    try:
        printer = make_printer(serial_link(os.ttyname(slave)), watch)
        printer.print_receipt(receipt)
        expected = printer.render(receipt)
        assert printer.health == HealthState("printer", Health.DEGRADED, "paper near end")
        peer.status = PrinterStatus(online=False, cover_open=True)
        printer.print_receipt(replace(receipt, reference="second"))
        assert printer.health.reason == "cover open" and [j.key for j in printer.pending] == ["second"]
        printer.close()
    finally:
        peer.stop()
        os.close(master)
        os.close(slave)
    requests = b"\x10\x04\x01\x10\x04\x02\x10\x04\x03\x10\x04\x04"
    assert bytes(peer.received) == requests + expected + requests


def test_links_that_cannot_open_are_unavailable(tmp_path: Path) -> None:
    with pytest.raises(DeviceUnavailable, match="cannot open serial printer"):
        serial_link(str(tmp_path / "ttyUSB9"))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound but not listening: connection refused
        with pytest.raises(DeviceUnavailable, match="cannot open network printer"):
            network_link("127.0.0.1", port, timeout=1)
    with pytest.raises(DeviceUnavailable, match="cannot open printer file"):
        file_link(tmp_path / "missing" / "lp0")


def test_open_link_by_kind(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("TILLBOX_DEVICES", raising=False)
    with pytest.raises(DeviceMisconfigured, match="unknown printer link 'parallel'"):
        open_link("parallel")
    with pytest.raises(DeviceMisconfigured, match="bad options for a file printer"):
        open_link("file", device=str(tmp_path / "lp0"))
    assert isinstance(open_link("sim"), SimulatedPrinter)
    monkeypatch.setenv("TILLBOX_DEVICES", "sim")
    assert isinstance(open_link("usb", vendor_id=0x04B8, product_id=0x0E15), SimulatedPrinter)
