"""Customer pole display: frames byte for byte, a real pty link, and a display that is not there."""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time
import tty
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.clock import FrozenClock
from appliance.errors import DeviceMisconfigured, DeviceUnavailable
from appliance.money import Currency
from drivers.base import Health, HealthState
from drivers.display import (
    CustomerDisplay,
    DisplayProfile,
    PrinterPassthrough,
    SimulatedDisplay,
    clear_frame,
    init_frame,
    open_display,
    scroll_window,
    split_row,
    text_frame,
)
from drivers.escpos_codec import PrinterStatus
from drivers.printer import ReceiptPrinter, SimulatedPrinter, serial_link
from drivers.transport import SerialTransport, Transport

EUR = Currency("EUR", 2)


def rows_of(frame: bytes, profile: DisplayProfile) -> list[bytes]:
    """The text written after each ``US $ 1 y``, checking the cursor commands on the way."""
    rows = []
    step = 4 + profile.columns
    assert len(frame) == step * profile.rows
    for y in range(profile.rows):
        chunk = frame[y * step : (y + 1) * step]
        assert chunk[:4] == bytes([0x1F, 0x24, 1, y + 1])
        rows.append(chunk[4:])
    return rows


# -- pure frames ----------------------------------------------------------------------------------


def test_init_frame() -> None:
    # ESC @, ESC t 0, US MD1 (overwrite), US C 0 (cursor off), CLR
    assert init_frame(DisplayProfile()) == bytes.fromhex("1b40 1b7400 1f01 1f4300 0c")
    assert init_frame(DisplayProfile(code_page="CP858"))[2:5] == b"\x1bt\x13"
    assert init_frame(DisplayProfile(code_page="CP858", code_table=5))[2:5] == b"\x1bt\x05"


def test_text_frame_positions_and_pads_each_row() -> None:
    frame = text_frame(["Sparkling Water 0.79", "TOTAL"], DisplayProfile())
    assert frame == (
        b"\x1f$\x01\x01" + b"Sparkling Water 0.79" + b"\x1f$\x01\x02" + b"TOTAL" + b" " * 15
    )  # fmt: skip
    assert text_frame([], DisplayProfile()) == b"\x1f$\x01\x01" + b" " * 20 + b"\x1f$\x01\x02" + b" " * 20


def test_display_behind_the_printer_is_selected_and_released() -> None:
    profile = DisplayProfile(via_printer=True)
    assert clear_frame(profile) == b"\x1b=\x02\x0c\x1b=\x01"
    assert text_frame(["x"], profile).startswith(b"\x1b=\x02\x1f$\x01\x01x")


def test_split_row_keeps_the_amount() -> None:
    profile = DisplayProfile()
    assert split_row("Water", "0.79", profile) == "Water           0.79"
    assert split_row("Extra Virgin Olive Oil 1l", "12.99", profile) == "Extra Virgin O 12.99"
    assert split_row("x", "1234567890123456789012", profile) == "12345678901234567890"


def test_code_page_and_replacements() -> None:
    cp858 = rows_of(text_frame(["Müller €5", ""], DisplayProfile(code_page="CP858")), DisplayProfile())
    assert cp858[0].rstrip() == b"M\x81ller \xd55"
    cp437 = rows_of(text_frame(["Müller €5", ""], DisplayProfile()), DisplayProfile())
    assert cp437[0].rstrip() == b"M\x81ller EUR5"


def test_garbage_and_oversized_text_stay_in_their_row() -> None:
    profile = DisplayProfile()
    name = "Schokolade " * 10 + "\x1b@\x0c\x18\x1f$\x05\x05" + "🍫"
    frame = text_frame([name, "\x00" * 50, "third row ignored"], profile)
    first, second = rows_of(frame, profile)
    assert first == b"Schokolade Schokolad"
    assert second == b"?" * 20


@given(st.lists(st.text(max_size=60), max_size=4), st.sampled_from(["CP437", "CP858", "CP1252", "CP866"]))
def test_any_text_makes_a_well_formed_frame(lines: list[str], page: str) -> None:
    profile = DisplayProfile(code_page=page)
    for row in rows_of(text_frame(lines, profile), profile):
        assert len(row) == 20 and all(0x20 <= b != 0x7F for b in row)


def test_scroll_window_wraps_around() -> None:
    text = "Water 3 for 2 all week long"
    assert scroll_window(text, 0, 20) == "Water 3 for 2 all we"
    assert scroll_window(text, 1, 20) == "ater 3 for 2 all wee"
    assert scroll_window(text, 25, 20) == "ng    Water 3 for 2 "
    assert scroll_window(text, len(text) + 4, 20) == scroll_window(text, 0, 20)
    assert scroll_window("short", 7, 20) == "short"


def test_profile_validation() -> None:
    with pytest.raises(DeviceMisconfigured, match="columns 50"):
        DisplayProfile(columns=50)
    with pytest.raises(DeviceMisconfigured, match="unknown code page"):
        DisplayProfile(code_page="UTF-8")


# -- the driver with the simulator ----------------------------------------------------------------


@pytest.fixture
def sim() -> SimulatedDisplay:
    return SimulatedDisplay()


def test_shows_last_item_and_total(sim: SimulatedDisplay) -> None:
    display = CustomerDisplay(sim, currency=EUR)
    assert display.show_item("Sparkling Water 1.5l", 79, 1279)
    assert sim.lines == ("Sparkling Water 0.79", "TOTAL EUR      12.79")
    assert display.show_total(1279, change=221)
    assert sim.lines == ("TOTAL EUR      12.79", "CHANGE          2.21")
    assert display.show_idle("Welcome!", "Open 8-20")
    assert sim.lines == ("      Welcome!", "     Open 8-20")
    assert display.clear()
    assert sim.lines == ("", "")
    assert display.health == HealthState("display", Health.OK)
    assert bytes(sim.written).startswith(init_frame(DisplayProfile()))


def test_promotion_scrolls(sim: SimulatedDisplay) -> None:
    display = CustomerDisplay(sim, currency=EUR)
    display.show_promotion("This week", "Water 3 for 2, all week long!")
    assert sim.lines == ("     This week", "Water 3 for 2, all w")
    assert display.tick()
    assert sim.lines == ("     This week", "ater 3 for 2, all we")
    display.show_item("Butter", 249, 249)
    assert not display.tick()  # the promotion is gone
    display.show_promotion("Hello", "short")
    assert not display.tick()


def test_simulator_interprets_cursor_clear_and_code_table(sim: SimulatedDisplay) -> None:
    sim.write(b"\x1b@\x1bt\x13")
    sim.write(b"\x1f$\x05\x02\xd5\x1f")  # a command split across writes is completed by the next one
    sim.write(b"$\x01\x01abc\x18xy")
    assert sim.lines == ("xy", "    €")
    sim.write(b"\x0c")
    assert sim.lines == ("", "")


def test_missing_display_is_unavailable_never_fatal(clock: FrozenClock) -> None:
    sim = SimulatedDisplay()
    calls: list[str] = []

    def opener() -> Transport:
        calls.append("open")
        if len(calls) == 1:
            return SerialTransport("/dev/nonexistent-vfd")
        return sim

    health: list[HealthState] = []
    display = CustomerDisplay(opener, currency=EUR, clock=clock, retry_after=30)
    display.on_health(health.append)
    assert display.health.health == Health.UNAVAILABLE
    assert "/dev/nonexistent-vfd" in display.health.reason
    assert display.show_item("Butter", 249, 249) is False  # no exception, no retry yet
    assert display.lines == ("Butter          2.49", "TOTAL EUR       2.49")
    assert calls == ["open"]
    clock.advance(30)
    assert display.show_item("Milk", 115, 364) is True
    assert sim.lines == ("Milk            1.15", "TOTAL EUR       3.64")
    assert calls == ["open", "open"]
    assert [h.health for h in health] == [Health.OK]
    display.close()
    display.close()
    assert display.show_lines("after close") is False


# -- end to end over a pseudo-terminal ------------------------------------------------------------


@pytest.fixture
def pty_pair() -> Iterator[tuple[int, str]]:
    before = set(threading.enumerate())
    master, slave = os.openpty()
    try:
        yield master, os.ttyname(slave)
    finally:
        for fd in (master, slave):
            with contextlib.suppress(OSError):  # the test may have closed the master already
                os.close(fd)
    assert set(threading.enumerate()) <= before


def read_exactly(fd: int, size: int, timeout: float = 2.0) -> bytes:
    data = bytearray()
    deadline = time.monotonic() + timeout
    while len(data) < size:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        data += os.read(fd, size - len(data))
    return bytes(data)


def test_pty_end_to_end(pty_pair: tuple[int, str], clock: FrozenClock) -> None:
    master, path = pty_pair
    profile = DisplayProfile(code_page="CP858")
    display = CustomerDisplay(lambda: SerialTransport(path, 9600), profile, currency=EUR, clock=clock)
    assert read_exactly(master, 11) == init_frame(profile)

    assert display.show_item("Käse 200g", 349, 1628)
    frame = read_exactly(master, 48)
    assert frame == text_frame(["Käse 200g       3.49", "TOTAL EUR      16.28"], profile)
    peer = SimulatedDisplay()
    peer.write(init_frame(profile) + frame)
    assert peer.lines == ("Käse 200g       3.49", "TOTAL EUR      16.28")
    assert select.select([master], [], [], 0.05)[0] == []  # nothing more was sent

    os.close(master)  # the display is unplugged
    assert display.show_item("Brot", 299, 1927) is False
    assert display.health.health == Health.UNAVAILABLE
    assert "failed" in display.health.reason
    display.close()


def test_open_display_follows_sim_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TILLBOX_DEVICES", "sim")
    assert isinstance(open_display("/dev/ttyUSB0")(), SimulatedDisplay)
    monkeypatch.delenv("TILLBOX_DEVICES")
    with pytest.raises(DeviceUnavailable, match="cannot open serial port"):
        open_display("/dev/nonexistent-vfd")()


# -- a display daisy-chained behind the receipt printer -------------------------------------------

SELECT_DISPLAY, SELECT_PRINTER = b"\x1b=\x02", b"\x1b=\x01"


def test_display_behind_a_simulated_printer(clock: FrozenClock) -> None:
    sim = SimulatedPrinter(columns=32)
    sim.peripheral = SimulatedDisplay()
    printer = ReceiptPrinter(sim, check_status=False, clock=clock)
    display = CustomerDisplay(PrinterPassthrough(printer), DisplayProfile(via_printer=True), currency=EUR, clock=clock)
    assert display.show_item("Water", 79, 79)
    printer.send(b"RECEIPT LINE\n")
    assert display.show_total(79, paid=100)
    assert sim.peripheral.lines == ("TOTAL EUR       0.79", "PAID            1.00")
    assert b"RECEIPT LINE" in sim.written
    assert b"TOTAL" not in sim.written and b"Water" not in sim.written  # nothing for the display is printed
    assert sim.passthrough.startswith(SELECT_DISPLAY + b"\x1b@") and sim.passthrough.endswith(SELECT_PRINTER)
    display.close()
    printer.send(b"still printing")  # closing the display leaves the printer open
    assert sim.written.endswith(b"still printing")


def test_display_behind_a_lost_printer_is_unavailable_and_comes_back(clock: FrozenClock) -> None:
    sim = SimulatedPrinter()
    sim.peripheral = SimulatedDisplay()
    printer = ReceiptPrinter(sim, check_status=False, clock=clock)
    display = CustomerDisplay(lambda: PrinterPassthrough(printer), DisplayProfile(via_printer=True), currency=EUR,
                              clock=clock, retry_after=5)  # fmt: skip
    sim.disconnect()
    assert display.show_lines("GONE") is False
    assert display.health.health == Health.UNAVAILABLE
    assert printer.health.health == Health.UNAVAILABLE  # the shared link failed for the printer too
    sim.reconnect()
    clock.advance(5)
    assert display.show_lines("BACK")
    assert sim.peripheral.lines[0] == "BACK"
    display.close()


class PrinterWithDisplay:
    """The far end of a pty: an ESC/POS printer with a customer display on its pass-through port.

    Bytes go to the printer or, after ``ESC = 2``, to the display (until ``ESC = 1``);
    ``DLE EOT n`` addressed to the printer is answered with a ready status.
    """

    def __init__(self, master: int) -> None:
        self.master = master
        self.printed = bytearray()
        self.to_display = bytearray()
        self.display = SimulatedDisplay()
        self._pending = b""
        self._printer_selected = True
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="printer-with-display")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if select.select([self.master], [], [], 0.02)[0]:
                self._take(os.read(self.master, 4096))

    def _take(self, data: bytes) -> None:
        data, self._pending = self._pending + data, b""
        i = 0
        while i < len(data):
            if data[i] in (0x1B, 0x10) and len(data) - i < 3:
                self._pending = data[i:]  # a command split across reads
                return
            if data[i : i + 2] == b"\x1b=":
                self._printer_selected = bool(data[i + 2] & 0x01)
                self.to_display += data[i : i + 3]
                self.display.write(data[i : i + 3])
                i += 3
            elif self._printer_selected and data[i : i + 2] == b"\x10\x04":
                os.write(self.master, PrinterStatus().to_bytes()[data[i + 2] - 1 : data[i + 2]])
                i += 3
            elif self._printer_selected:
                self.printed.append(data[i])
                i += 1
            else:
                self.to_display.append(data[i])
                self.display.write(data[i : i + 1])
                i += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def test_display_behind_a_serial_printer_over_a_pty(pty_pair: tuple[int, str], clock: FrozenClock) -> None:
    master, path = pty_pair
    tty.setraw(master)
    peer = PrinterWithDisplay(master)
    try:
        printer = ReceiptPrinter(serial_link(path), clock=clock)
        printer.status()  # the printer answers DLE EOT through the same port
        profile = DisplayProfile(via_printer=True, code_page="CP858")
        display = CustomerDisplay(lambda: PrinterPassthrough(printer), profile, currency=EUR, clock=clock)
        assert display.show_item("Käse 200g", 349, 1628)
        printer.send(b"RECEIPT LINE\n")
        assert display.show_total(1628, change=372)
        expected = ("TOTAL EUR      16.28", "CHANGE          3.72")
        wait_for_peer(lambda: peer.display.lines == expected)
        assert bytes(peer.printed).count(b"RECEIPT LINE") == 1
        assert b"TOTAL" not in peer.printed and "Käse".encode("cp858") not in peer.printed
        frames = [init_frame(profile), text_frame(["Käse 200g       3.49", "TOTAL EUR      16.28"], profile),
                  text_frame(list(expected), profile)]  # fmt: skip
        assert bytes(peer.to_display) == b"".join(frames)  # whole frames, each selecting and releasing the display
        display.close()
        printer.close()
    finally:
        peer.stop()


def wait_for_peer(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the peer did not get it in time"
        time.sleep(0.005)
