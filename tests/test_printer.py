"""Receipt printer: golden bytes, barcodes that scan, status parsing, failures that never fail a sale."""

from __future__ import annotations

import json
import os
import select
import socket
import threading
import tty
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.errors import DeviceMisconfigured, DeviceUnavailable, InputError
from drivers.base import Health, HealthState
from drivers.escpos_codec import (
    CODE128_QUIET_MODULES,
    Letterhead,
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
from drivers.printer import (
    PrinterAlert,
    PrintJob,
    ReceiptPrinter,
    ReprintQueue,
    SimulatedPrinter,
    file_link,
    load_logo,
    network_link,
    open_link,
    serial_link,
)
from drivers.transport import LoopbackTransport

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("TILLBOX_UPDATE_GOLDEN") == "1"
CET = timezone(timedelta(hours=1))
LETTERHEAD = Letterhead(
    name="Café Müller",
    address=("Hauptstraße 1", "10115 Berlin"),
    tax_id="DE123456789",
    footer=("Prices in € include VAT. Returns within 30 days with this receipt.",),
    tz=CET,
)
LOGO = RasterImage.from_pattern(["#" * 24, "#" + "." * 22 + "#", "#..####..####..####...#", "#" * 24])


@pytest.fixture
def doc() -> dict[str, Any]:
    """A real committed sale: promotions, a weighed line, a void, manual and cart discounts, split tender."""
    data: dict[str, Any] = json.loads((GOLDEN / "sale_doc.json").read_text(encoding="utf-8"))
    return data


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


@pytest.mark.parametrize(("paper", "page"), [(58, "CP858"), (80, "CP437")])
def test_full_receipt_matches_golden_bytes(doc: dict[str, Any], paper: int, page: str) -> None:
    profile = PrinterProfile(paper_mm=paper, code_page=page)
    data = render_receipt(doc, profile, LETTERHEAD, logo=LOGO)
    text = to_text(data, profile.columns)
    golden_bin, golden_txt = GOLDEN / f"receipt_{paper}.bin", GOLDEN / f"receipt_{paper}.txt"
    if UPDATE:
        golden_bin.write_bytes(data)
        golden_txt.write_text(text, encoding="utf-8")
    assert data == golden_bin.read_bytes()
    assert text == golden_txt.read_text(encoding="utf-8")


@pytest.mark.parametrize(("paper", "page", "table"), [(58, "CP858", 19), (80, "CP437", 0)])
def test_receipt_structure(doc: dict[str, Any], paper: int, page: str, table: int) -> None:
    profile = PrinterProfile(paper_mm=paper, code_page=page)
    data = render_receipt(doc, profile, LETTERHEAD, logo=LOGO)
    assert data.startswith(b"\x1b@\x1bt" + bytes([table]))
    assert data.endswith(b"\x1dV\x42\x00")  # feed to the cutter and cut partially
    assert b"\x1dv0\x00\x03\x00\x04\x00" in data  # the logo: 3 bytes x 4 rows
    assert b"\x1bE\x01\x1d!\x01" in data  # bold, double height
    text = to_text(data, profile.columns)
    lines = text.splitlines()
    assert all(len(line) <= profile.columns for line in lines)
    total = next(line for line in lines if line.startswith("TOTAL EUR"))
    assert total.endswith(" 12.79") and len(total) == profile.columns
    for expected in ("* Water 3 for 2", "* damaged label 10%", "* loyalty card 5%", "1.235 kg x 1.69/kg",
                     "2 x 1.29", "Shopping Bag (VOID)", "ref SIM000001 auth 007919", "Change",
                     "7% Reduced rate", "19% Standard rate", "Ref TB-till-1-000001", "2026-03-02 10:30  anna",
                     "[IMAGE 24x4]", "[CUT]"):  # fmt: skip
        assert expected in text
    # 16 characters of CODE128 need 418 dots at the narrowest module: a QR code on 58 mm
    assert ("[QR TB-till-1-000001]" if paper == 58 else "[CODE128 TB-till-1-000001]") in text
    euro = "€" if page == "CP858" else "EUR"
    assert f"Prices in {euro} include" in text.replace("\n", " ")


def test_prices_excluding_tax_and_cash_rounding(doc: dict[str, Any]) -> None:
    doc = {**doc, "prices_include_tax": False, "rounding": -4}
    text = to_text(render_receipt(doc, PrinterProfile(paper_mm=58)), 32)
    assert "Net                        11.17" in text
    assert "Tax                         1.62" in text
    assert "Cash rounding              -0.04" in text


def test_hostile_names_cannot_inject_commands(doc: dict[str, Any]) -> None:
    doc = {**doc, "lines": [{**doc["lines"][0], "name": "Evil\x1b@\x1dV\x00\x10\x04\x01 🍺 Bier"}]}
    data = render_receipt(doc, PrinterProfile(paper_mm=58))
    assert data.count(b"\x1b@") == 1  # only the initialisation
    assert b"\x1dV\x00" not in data and b"\x10\x04" not in data
    assert "Evil?@?V???? ? Bier  " in to_text(data, 32)


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
    [(58, "till-1-000001", 2), (80, "till-1-000001", 3), (80, None, 2), (80, "till-1-123456", 3)],
)
def test_receipt_barcode_scans_and_fits_the_paper(
    doc: dict[str, Any], paper: int, reference: str | None, width: int
) -> None:
    if reference:
        doc = {**doc, "reference": reference}
    profile = PrinterProfile(paper_mm=paper, barcode_module=3)
    found = barcode_in(render_receipt(doc, profile))
    assert found is not None
    module, data = found
    text, values = read_code128(data)
    assert text == (reference or "TB-till-1-000001")
    modules = 11 * len(values) + 13 + 2 * CODE128_QUIET_MODULES
    assert module == width
    assert modules * module <= profile.dots


def test_printed_reference_is_the_one_returns_look_up(doc: dict[str, Any]) -> None:
    from appliance.returns import parse_reference

    found = barcode_in(render_receipt({**doc, "number": 42}, PrinterProfile(paper_mm=80)))
    assert found is not None
    assert parse_reference(read_code128(found[1])[0]) == ("till-1", 42)


def test_too_wide_barcode_falls_back_to_a_qr_code_that_fits(doc: dict[str, Any]) -> None:
    doc = {k: v for k, v in doc.items() if k != "number"}  # the reference becomes the 36-character id
    profile = PrinterProfile(paper_mm=58)
    data = render_receipt(doc, profile)
    assert barcode_in(data) is None
    store = data.index(b"\x1d(k")
    assert f"[QR {doc['id']}]" in to_text(data)
    size = data[data.index(b"\x1d(k\x03\x001C") + 7]
    version = qr_version(len(doc["id"]), "M")
    assert version is not None and (qr_modules(version) + 8) * size <= profile.dots
    assert store > 0


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


def test_symbology_none_and_qr_only(doc: dict[str, Any]) -> None:
    none = render_receipt(doc, PrinterProfile(symbology="none"))
    assert b"\x1dk" not in none and b"\x1d(k" not in none
    qr = to_text(render_receipt(doc, PrinterProfile(symbology="qr")))
    assert "[QR TB-till-1-000001]" in qr and "CODE128" not in qr


@pytest.mark.parametrize(
    ("cut", "ending"), [("full", b"\x1dVA\x00"), ("partial", b"\x1dVB\x00"), ("none", b"\x1bd\x04")]
)
def test_cut_modes(doc: dict[str, Any], cut: str, ending: bytes) -> None:
    data = render_receipt(doc, PrinterProfile(cut=cut))  # type: ignore[arg-type]
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
    printer = ReceiptPrinter(link, PrinterProfile(paper_mm=58), letterhead=LETTERHEAD,
                             on_alert=watch.alerts.append, **kwargs)  # fmt: skip
    printer.on_health(watch.health.append)
    return printer


def test_prints_through_the_simulator(doc: dict[str, Any], watch: Alerts) -> None:
    sim = SimulatedPrinter(columns=32)
    printer = make_printer(sim, watch)
    printer.print_receipt(doc)
    assert bytes(sim.written) == printer.render(doc)
    assert "TOTAL EUR                  12.79" in sim.text()
    assert "[QR TB-till-1-000001]" in sim.text()
    assert printer.health.health == Health.OK and not printer.pending and not watch.alerts


def test_printer_disappears_mid_receipt_then_reprints(doc: dict[str, Any], watch: Alerts) -> None:
    sim = SimulatedPrinter()
    printer = make_printer(sim, watch, chunk_size=256)
    sim.fail_after(300)
    printer.print_receipt(doc)  # must not raise
    assert 0 < len(sim.written) < len(printer.render(doc))
    assert [j.key for j in printer.pending] == [doc["id"]]
    assert printer.pending[0].attempts == 1
    assert "went away" in printer.health.reason
    assert [(a.job, a.pending) for a in watch.alerts] == [(doc["id"], 1)]

    assert printer.reprint_pending() == 0  # still gone
    assert printer.pending[0].attempts == 2
    sim.reconnect()
    sim.clear()
    assert printer.reprint_pending() == 1
    assert bytes(sim.written) == printer.render(doc)
    assert not printer.pending
    assert [(s.health, s.reason) for s in watch.health] == [
        (Health.UNAVAILABLE, "simulated printer went away mid-job"),
        (Health.UNAVAILABLE, "simulated printer is disconnected"),
        (Health.OK, ""),
    ]


def test_paper_out_queues_and_prints_nothing(doc: dict[str, Any], watch: Alerts) -> None:
    sim = SimulatedPrinter()
    sim.status = PrinterStatus(online=False, paper_end_stop=True, paper_out=True)
    printer = make_printer(sim, watch)
    printer.print_receipt(doc)
    assert not sim.written
    assert printer.health == HealthState("printer", Health.UNAVAILABLE, "paper out")
    assert watch.alerts[0].reason == "paper out"
    sim.status = PrinterStatus()
    assert printer.reprint_pending() == 1
    assert bytes(sim.written) == printer.render(doc)
    assert printer.health.health == Health.OK


def test_near_end_prints_but_degrades(doc: dict[str, Any], watch: Alerts) -> None:
    sim = SimulatedPrinter()
    sim.status = PrinterStatus(paper_near_end=True)
    printer = make_printer(sim, watch)
    printer.print_receipt(doc)
    assert sim.written and not printer.pending
    assert printer.health == HealthState("printer", Health.DEGRADED, "paper near end")


def test_receipts_waiting_keep_the_printer_degraded(doc: dict[str, Any], watch: Alerts) -> None:
    sim = SimulatedPrinter()
    printer = make_printer(sim, watch)
    sim.disconnect()
    printer.print_receipt(doc)
    printer.print_receipt({**doc, "id": "second", "number": 2})
    sim.reconnect()
    printer.print_receipt({**doc, "id": "third", "number": 3})
    assert printer.health == HealthState("printer", Health.DEGRADED, "2 receipts waiting to be reprinted")
    assert printer.reprint_pending() == 2
    assert "Ref TB-till-1-000002" in sim.text()
    assert printer.health.health == Health.OK


def test_silent_printer_is_unavailable(doc: dict[str, Any], watch: Alerts) -> None:
    printer = make_printer(LoopbackTransport(), watch, status_timeout=0.01)
    printer.print_receipt(doc)
    assert "did not answer status request 1" in printer.health.reason
    assert len(printer.pending) == 1


def test_garbled_status_is_unavailable(doc: dict[str, Any], watch: Alerts) -> None:
    link = LoopbackTransport()
    printer = make_printer(link, watch, status_timeout=0.01)
    original = link.write

    def answer_garbage(data: bytes) -> None:
        original(data)
        if data.startswith(b"\x10\x04"):
            link.feed(b"\xff")

    link.write = answer_garbage  # type: ignore[method-assign]
    printer.print_receipt(doc)
    assert "garbled status" in printer.health.reason
    assert link.written == b"\x10\x04\x01"  # nothing sent after the garbled reply


def test_opener_is_retried_after_failures(doc: dict[str, Any], watch: Alerts) -> None:
    sim = SimulatedPrinter()
    attempts: list[int] = []

    def opener() -> SimulatedPrinter:
        attempts.append(1)
        if len(attempts) == 1:
            raise DeviceUnavailable("USB printer 04b8:0e15 not found")
        return sim

    printer = make_printer(opener, watch)
    printer.print_receipt(doc)
    assert printer.health.reason == "USB printer 04b8:0e15 not found"
    assert printer.reprint_pending() == 1 and len(attempts) == 2


@pytest.mark.allow_error_logs
def test_broken_alert_listener_and_broken_link_never_raise(doc: dict[str, Any]) -> None:
    def explode(alert: PrinterAlert) -> None:
        raise RuntimeError("listener bug")

    def misconfigured() -> SimulatedPrinter:
        raise DeviceMisconfigured("libusb is not installed")

    printer = ReceiptPrinter(misconfigured, on_alert=explode)
    printer.print_receipt(doc)
    assert printer.health.health == Health.UNAVAILABLE and len(printer.pending) == 1


def test_queue_persists_through_its_hook(doc: dict[str, Any], watch: Alerts) -> None:
    saved: list[list[dict[str, Any]]] = []
    queue = ReprintQueue(on_change=lambda jobs: saved.append([j.to_dict() for j in jobs]))
    sim = SimulatedPrinter()
    sim.disconnect()
    make_printer(sim, watch, queue=queue).print_receipt(doc)
    stored = json.loads(json.dumps(saved[-1]))  # what a daemon would write to disk

    restored = ReprintQueue([PrintJob.from_dict(d) for d in stored])
    sim.reconnect()
    printer = make_printer(sim, watch, queue=restored)
    assert printer.pending[0].last_error == "simulated printer is disconnected"
    assert printer.reprint_pending() == 1
    assert "Ref TB-till-1-000001" in sim.text()


def test_queue_drops_the_oldest_beyond_its_limit() -> None:
    queue = ReprintQueue(limit=2)
    for key in "abc":
        queue.put(PrintJob(key, {}, "2026-01-01T00:00:00.000Z"))
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


def test_file_link_receives_exact_bytes(doc: dict[str, Any], tmp_path: Path, watch: Alerts) -> None:
    path = tmp_path / "lp0"
    with make_printer(file_link(path), watch, check_status=False) as printer:
        printer.print_receipt(doc)
        expected = printer.render(doc)
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
def test_serial_link_over_a_pty_with_status(doc: dict[str, Any], watch: Alerts) -> None:
    master, slave = os.openpty()
    tty.setraw(master)
    peer = FakePrinterPeer(master, PrinterStatus(paper_near_end=True))
    try:
        printer = make_printer(serial_link(os.ttyname(slave)), watch)
        printer.print_receipt(doc)
        expected = printer.render(doc)
        assert printer.health == HealthState("printer", Health.DEGRADED, "paper near end")
        peer.status = PrinterStatus(online=False, cover_open=True)
        printer.print_receipt({**doc, "id": "second"})
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
