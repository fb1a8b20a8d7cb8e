"""Tests for drivers.scanner and drivers.keymaps: wedge decoding, serial framing, reconnects."""

from __future__ import annotations

import errno
import logging
import os
import queue
import threading
import time
import tty
from collections.abc import Callable, Iterator, Sequence
from datetime import date
from pathlib import Path
from unittest import mock

import evdev
import pytest
from evdev import InputEvent
from evdev import ecodes as e
from hypothesis import given
from hypothesis import strategies as st

from appliance.barcode import Scan, ScanKind
from appliance.errors import BarcodeError, ConfigError, DeviceUnavailable
from drivers import keymaps
from drivers.base import Health, HealthState
from drivers.scanner import (
    Backoff,
    Decoded,
    EvdevScanner,
    Rejected,
    ScannerSettings,
    SerialFramer,
    SerialFraming,
    SerialScanner,
    SimulatedScanner,
    Terminator,
    WedgeDecoder,
    open_scanner,
    parsing,
    split_aim,
)

TODAY = date(2026, 6, 15)
T0 = 1_750_000_000.0
SCANNER_GAP = 0.004  # a key every 4 ms, press and release 1 ms apart
HUMAN_GAP = 0.15
GS = "\x1d"
SHIFT = (e.KEY_LEFTSHIFT,)
ALTGR = (e.KEY_RIGHTALT,)


@pytest.fixture(autouse=True)
def _no_leftover_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    leftover = [t.name for t in threading.enumerate() if t not in before and t.is_alive()]
    assert not leftover, f"threads left running: {leftover}"


def wait_for(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached in time")
        time.sleep(0.005)


class Typist:
    """Builds the event stream a keyboard-wedge device produces: per key transition an
    EV_MSC/MSC_SCAN, the EV_KEY and a SYN_REPORT, all with kernel timestamps."""

    def __init__(self, start: float = T0, gap: float = SCANNER_GAP) -> None:
        self.t = start
        self.gap = gap
        self.events: list[InputEvent] = []

    def _emit(self, code: int, value: int) -> None:
        sec = int(self.t)
        usec = round((self.t - sec) * 1_000_000)
        self.events += [
            InputEvent(sec, usec, e.EV_MSC, e.MSC_SCAN, 0x70000 + code),
            InputEvent(sec, usec, e.EV_KEY, code, value),
            InputEvent(sec, usec, e.EV_SYN, e.SYN_REPORT, 0),
        ]

    def key(self, code: int, mods: Sequence[int] = ()) -> Typist:
        for mod in mods:
            self._emit(mod, 1)
            self.t += 0.0005
        self._emit(code, 1)
        self.t += 0.001
        self._emit(code, 0)
        for mod in mods:
            self.t += 0.0005
            self._emit(mod, 0)
        self.t += self.gap
        return self

    def keys(self, codes: Sequence[int], mods: Sequence[int] = ()) -> Typist:
        for code in codes:
            self.key(code, mods)
        return self

    def digits(self, text: str) -> Typist:
        return self.keys([getattr(e, f"KEY_{d}") for d in text])

    def enter(self) -> Typist:
        return self.key(e.KEY_ENTER)

    def pause(self, seconds: float) -> Typist:
        self.t += seconds
        return self


def decode(decoder: WedgeDecoder, events: Sequence[InputEvent]) -> list[Decoded | Rejected]:
    out: list[Decoded | Rejected] = []
    for event in events:
        out += decoder.feed_event(event)
    return out


def texts(outcomes: Sequence[Decoded | Rejected]) -> list[str]:
    return [o.text for o in outcomes if isinstance(o, Decoded)]


def reasons(outcomes: Sequence[Decoded | Rejected]) -> list[str]:
    return [o.reason for o in outcomes if isinstance(o, Rejected)]


# --- keymaps ---------------------------------------------------------------------------


def test_key_codes_match_the_kernel_headers() -> None:
    names = [n for n in dir(keymaps) if n.startswith("KEY_")]
    assert len(names) > 60
    for name in names:
        assert getattr(keymaps, name) == getattr(e, name), name


def test_unknown_layout_suggests_the_closest() -> None:
    with pytest.raises(ConfigError, match="did you mean 'de'"):
        keymaps.get_layout("dee")


# --- US layout -------------------------------------------------------------------------

# A USB HID scanner reading EAN-13 4006381333931, as evtest shows it: scan code (HID usage),
# key event and SYN_REPORT per transition; presses ~2 ms apart, then Enter.
CAPTURE_US: list[tuple[int, int, int, int, int]] = []
for i, (usage, code) in enumerate(
    [(0x21, 5), (0x27, 11), (0x27, 11), (0x23, 7), (0x20, 4), (0x25, 9), (0x1E, 2), (0x20, 4),
     (0x20, 4), (0x20, 4), (0x26, 10), (0x20, 4), (0x1E, 2), (0x28, 28)]
):  # fmt: skip
    usec = 101_000 + i * 2_200
    CAPTURE_US += [
        (1_750_000_000, usec, 4, 4, 0x70000 + usage),
        (1_750_000_000, usec, 1, code, 1),
        (1_750_000_000, usec, 0, 0, 0),
        (1_750_000_000, usec + 900, 4, 4, 0x70000 + usage),
        (1_750_000_000, usec + 900, 1, code, 0),
        (1_750_000_000, usec + 900, 0, 0, 0),
    ]


def test_captured_us_scan_decodes_to_the_ean() -> None:
    [out] = decode(WedgeDecoder("us"), [InputEvent(*row) for row in CAPTURE_US])
    assert isinstance(out, Decoded)
    assert out.text == "4006381333931"
    assert out.at == pytest.approx(1_750_000_000.1296)


def test_us_shifted_characters() -> None:
    typist = Typist()
    typist.key(e.KEY_A, SHIFT).key(e.KEY_B).key(e.KEY_MINUS, SHIFT).key(e.KEY_1, SHIFT)
    typist.key(e.KEY_2, SHIFT).key(e.KEY_SLASH).key(e.KEY_SLASH, SHIFT).key(e.KEY_APOSTROPHE, SHIFT)
    typist.key(e.KEY_SEMICOLON, SHIFT).key(e.KEY_EQUAL).key(e.KEY_DOT).key(e.KEY_RIGHTSHIFT)
    typist.key(e.KEY_Z, (e.KEY_RIGHTSHIFT,)).enter()
    assert texts(decode(WedgeDecoder("us"), typist.events)) == ['Ab_!@/?":=.Z']


def test_us_right_alt_is_plain_alt_and_types_nothing() -> None:
    typist = Typist().key(e.KEY_Q, ALTGR).digits("12").enter()
    assert texts(decode(WedgeDecoder("us"), typist.events)) == ["12"]


def test_capslock_flips_letters_only() -> None:
    typist = Typist().key(e.KEY_CAPSLOCK).keys([e.KEY_A, e.KEY_1]).key(e.KEY_B, SHIFT).enter()
    assert texts(decode(WedgeDecoder("us"), typist.events)) == ["A1b"]


# --- German layout ---------------------------------------------------------------------


def test_de_qwertz_letters_umlauts_and_shifted_digits() -> None:
    typist = Typist()
    typist.keys([e.KEY_Y, e.KEY_Z]).key(e.KEY_Y, SHIFT).key(e.KEY_Z, SHIFT)
    typist.keys([e.KEY_MINUS, e.KEY_SEMICOLON, e.KEY_APOSTROPHE, e.KEY_LEFTBRACE])
    typist.key(e.KEY_APOSTROPHE, SHIFT).key(e.KEY_MINUS, SHIFT)
    typist.keys([e.KEY_2, e.KEY_3, e.KEY_7, e.KEY_0], SHIFT)
    typist.keys([e.KEY_SLASH, e.KEY_RIGHTBRACE, e.KEY_BACKSLASH]).key(e.KEY_DOT, SHIFT).enter()
    assert texts(decode(WedgeDecoder("de"), typist.events)) == ['zyZYßöäüÄ?"§/=-+#:']


def test_de_altgr_symbols() -> None:
    typist = Typist().keys([e.KEY_Q, e.KEY_E, e.KEY_8, e.KEY_9, e.KEY_7, e.KEY_0, e.KEY_MINUS], ALTGR)
    typist.keys([e.KEY_102ND, e.KEY_RIGHTBRACE, e.KEY_M], ALTGR).key(e.KEY_102ND).enter()
    assert texts(decode(WedgeDecoder("de"), typist.events)) == ["@€[]{}\\|~µ<"]


def test_de_ctrl_alt_is_altgr_as_windows_minded_scanners_send_it() -> None:
    typist = Typist().key(e.KEY_Q, (e.KEY_LEFTCTRL, e.KEY_LEFTALT)).digits("1").enter()
    assert texts(decode(WedgeDecoder("de"), typist.events)) == ["@1"]


def test_de_dead_keys_resolve_with_space_or_the_next_key() -> None:
    typist = Typist().key(e.KEY_GRAVE).key(e.KEY_SPACE).key(e.KEY_GRAVE).key(e.KEY_A)
    typist.key(e.KEY_EQUAL, SHIFT).key(e.KEY_SPACE).key(e.KEY_GRAVE, SHIFT).enter()
    assert texts(decode(WedgeDecoder("de"), typist.events)) == ["^^a`°"]


def test_de_keypad_decimal_is_a_comma() -> None:
    typist = Typist().keys([e.KEY_KP1, e.KEY_KPDOT, e.KEY_KP5]).key(e.KEY_KPENTER)
    assert texts(decode(WedgeDecoder("de"), typist.events)) == ["1,5"]


def test_de_aim_prefix_typed_with_altgr() -> None:
    typist = Typist().key(e.KEY_9, ALTGR).key(e.KEY_E, SHIFT).digits("04006381333931").enter()
    [text] = texts(decode(WedgeDecoder("de"), typist.events))
    assert split_aim(text) == ("4006381333931", "]E0")


def test_the_same_keys_mean_different_codes_per_layout() -> None:
    events = Typist().keys([e.KEY_Y, e.KEY_Z]).key(e.KEY_MINUS, SHIFT).enter().events
    assert texts(decode(WedgeDecoder("us"), events)) == ["yz_"]
    assert texts(decode(WedgeDecoder("de"), events)) == ["zy?"]


# --- GS1 separators --------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["us", "de"])
def test_gs_by_ctrl_bracket_parses_as_gs1(layout: str) -> None:
    typist = Typist()
    if layout == "us":
        typist.key(e.KEY_RIGHTBRACE).key(e.KEY_D).digits("2")
    else:
        typist.key(e.KEY_9, ALTGR).key(e.KEY_D).digits("2")
    typist.digits("010400638133393110").keys([e.KEY_L, e.KEY_O, e.KEY_T], SHIFT).digits("42")
    typist.key(e.KEY_RIGHTBRACE, (e.KEY_LEFTCTRL,))  # GS as Ctrl+] (the key's US position)
    typist.digits("17261231").enter()
    [text] = texts(decode(WedgeDecoder(layout), typist.events))
    assert text == "]d2010400638133393110LOT42" + GS + "17261231"
    scan = parsing_result(*split_aim(text))
    assert scan.kind == ScanKind.GS1
    assert scan.batch == "LOT42"
    assert scan.expiry == date(2026, 12, 31)


def feed_keys(decoder: WedgeDecoder, keys: Sequence[tuple[int, int]], step: float = 0.002) -> list[Decoded | Rejected]:
    out: list[Decoded | Rejected] = []
    for i, (code, value) in enumerate(keys):
        out += decoder.feed(T0 + i * step, code, value)
    return out


def test_alt_keypad_code_types_gs() -> None:
    keys = [(e.KEY_1, 1), (e.KEY_1, 0), (e.KEY_LEFTALT, 1), (e.KEY_LEFTALT, 0),  # a lone Alt tap
            (e.KEY_LEFTALT, 1), (e.KEY_KP0, 1), (e.KEY_KP0, 0), (e.KEY_KP2, 1), (e.KEY_KP2, 0),
            (e.KEY_KP9, 1), (e.KEY_KP9, 0), (e.KEY_LEFTALT, 0), (e.KEY_0, 1), (e.KEY_0, 0),
            (e.KEY_ENTER, 1), (e.KEY_ENTER, 0)]  # fmt: skip
    assert texts(feed_keys(WedgeDecoder("us"), keys)) == ["1" + GS + "0"]


def parsing_result(code: str, symbology: str | None) -> Scan:
    parsed: list[Scan] = []
    parsing(parsed.append, today=lambda: TODAY)(code, symbology)
    [scan] = parsed
    return scan


# --- human typing and timeouts ---------------------------------------------------------


def test_slow_human_typing_never_becomes_a_scan() -> None:
    typist = Typist(gap=HUMAN_GAP).digits("4006381333931").enter()
    decoder = WedgeDecoder("us")
    out = decode(decoder, typist.events)
    assert texts(out) == []
    assert out == []  # each key timed out alone: dropped quietly, not reported per key


def test_fast_human_typing_is_rejected_by_its_key_gaps() -> None:
    typist = Typist(gap=0.07).digits("123").enter()
    out = decode(WedgeDecoder("us"), typist.events)
    assert texts(out) == []
    assert len(reasons(out)) == 1
    assert "typed by hand" in reasons(out)[0]


def test_human_keys_before_a_scan_are_split_off_by_the_timeout() -> None:
    typist = Typist(gap=HUMAN_GAP).keys([e.KEY_X, e.KEY_Y])
    typist.gap = SCANNER_GAP
    typist.pause(0.2).digits("4006381333931").enter()
    assert texts(decode(WedgeDecoder("us"), typist.events)) == ["4006381333931"]


def test_human_key_just_before_a_scan_rejects_the_mix() -> None:
    typist = Typist().key(e.KEY_X).pause(0.07).digits("4006381333931").enter()
    out = decode(WedgeDecoder("us"), typist.events)
    assert texts(out) == []
    assert "mixed" in reasons(out)[0]


def test_human_typing_interleaved_between_scans() -> None:
    typist = Typist().digits("4006381333931").enter().pause(0.3)
    typist.gap = 0.08
    typist.keys([e.KEY_H, e.KEY_I]).enter().pause(0.3)
    typist.gap = SCANNER_GAP
    typist.digits("96385074").enter()
    out = decode(WedgeDecoder("us"), typist.events)
    assert texts(out) == ["4006381333931", "96385074"]
    assert len(reasons(out)) == 1


def test_a_held_key_autorepeat_marks_hand_typing() -> None:
    keys = [(e.KEY_1, 1), (e.KEY_1, 0), (e.KEY_2, 1), (e.KEY_2, 2), (e.KEY_2, 2), (e.KEY_2, 0), (e.KEY_ENTER, 1)]
    out = feed_keys(WedgeDecoder("us"), keys)
    assert texts(out) == []
    assert "held down" in reasons(out)[0]


def test_no_terminator_mode_splits_scans_by_the_timeout() -> None:
    decoder = WedgeDecoder("us", terminator=Terminator.NONE)
    typist = Typist().digits("4006381333931").pause(0.2).digits("96385074")
    out = decode(decoder, typist.events)
    assert texts(out) == ["4006381333931"]
    assert decoder.deadline == pytest.approx(typist.t - SCANNER_GAP + 0.1, abs=0.01)
    assert decoder.tick(typist.t) == []  # not yet
    assert texts(decoder.tick(typist.t + 0.2)) == ["96385074"]
    assert decoder.deadline is None


def test_unterminated_burst_is_rejected_and_the_next_scan_still_works() -> None:
    decoder = WedgeDecoder("us", terminator=Terminator.ENTER)
    typist = Typist().digits("400638")
    out = decode(decoder, typist.events)
    assert out == []
    out = decoder.tick(typist.t + 0.5)
    assert reasons(out) == ["incomplete scan: no enter within 0.1 s"]
    typist.pause(0.5).digits("4006381333931").enter()
    assert texts(decode(decoder, typist.events)) == ["4006381333931"]


def test_tab_terminator_and_enter_as_data() -> None:
    typist = Typist().digits("12").key(e.KEY_TAB).digits("34").enter().key(e.KEY_TAB)
    assert texts(decode(WedgeDecoder("us", terminator=Terminator.TAB), typist.events)) == ["12", "34\n"]


def test_oversized_scan_is_rejected() -> None:
    typist = Typist().digits("123456789012").enter().pause(0.3).digits("1234").enter()
    out = decode(WedgeDecoder("us", max_length=8), typist.events)
    assert reasons(out) == ["scan longer than 8 characters"]
    assert texts(out) == ["1234"]


def test_lone_enter_is_ignored() -> None:
    assert decode(WedgeDecoder("us"), Typist().enter().events) == []


@pytest.mark.parametrize(("key_gap", "max_gap", "scan_timeout"), [(0, 0.06, 0.1), (0.05, 0.04, 0.1), (0.03, 0.2, 0.1)])
def test_inconsistent_thresholds_are_config_errors(key_gap: float, max_gap: float, scan_timeout: float) -> None:
    with pytest.raises(ConfigError):
        WedgeDecoder(key_gap=key_gap, max_gap=max_gap, scan_timeout=scan_timeout)


# --- AIM identifiers and parsing -------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("]E04006381333931", ("4006381333931", "]E0")),
        ("]C1010400638133393110ABC", ("010400638133393110ABC", "]C1")),
        ("4006381333931", ("4006381333931", None)),
        ("]E0", ("]E0", None)),
        ("]]04006381333931", ("]]04006381333931", None)),
    ],
)
def test_split_aim(text: str, expected: tuple[str, str | None]) -> None:
    assert split_aim(text) == expected


def test_simulator_and_parsing_helper_report_bad_codes_without_crashing() -> None:
    parsed: list[Scan] = []
    rejected: list[tuple[str, BarcodeError]] = []
    handler = parsing(parsed.append, today=lambda: TODAY, on_rejected=lambda c, exc: rejected.append((c, exc)))
    with SimulatedScanner(handler) as scanner:
        scanner.feed("4006381333931")
        scanner.feed("]E04006381333932\r\n")  # bad check digit
        scanner.feed("]E04006381333931")
    assert [s.gtin for s in parsed] == ["04006381333931", "04006381333931"]
    assert parsed[1].symbology == "]E0"
    assert [c for c, _ in rejected] == ["4006381333932"]
    assert "check digit" in str(rejected[0][1])


def test_simulator_unplug_and_closed() -> None:
    seen: list[tuple[str, str | None]] = []
    scanner = SimulatedScanner(lambda c, s: seen.append((c, s)))
    scanner.unplug()
    assert scanner.health.health == Health.UNAVAILABLE
    with pytest.raises(DeviceUnavailable):
        scanner.feed("123")
    scanner.replug()
    scanner.feed("123")
    scanner.close()
    scanner.close()
    with pytest.raises(DeviceUnavailable):
        scanner.feed("456")
    assert seen == [("123", None)]


def test_open_scanner_uses_the_simulator_when_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TILLBOX_DEVICES", "sim")
    settings = ScannerSettings(backend="serial", device="ttyACM0")
    with open_scanner(settings, lambda c, s: None) as scanner:
        assert isinstance(scanner, SimulatedScanner)
    with pytest.raises(ConfigError, match="needs a device"):
        ScannerSettings(backend="evdev")
    with pytest.raises(ConfigError, match="layout"):
        ScannerSettings(layout="fr")


# --- evdev reader thread (only the kernel device is mocked) ----------------------------


class FakeKernel:
    """Feeds event batches through an autospec'd ``evdev.InputDevice``; a pipe makes the fd selectable."""

    def __init__(self) -> None:
        self.rfd, self.wfd = os.pipe()
        self.batches: queue.Queue[list[InputEvent] | OSError] = queue.Queue()

    def device(self) -> mock.NonCallableMagicMock:
        dev: mock.NonCallableMagicMock = mock.create_autospec(evdev.InputDevice, instance=True)
        dev.fileno.return_value = self.rfd
        dev.read.side_effect = self._read
        return dev

    def _read(self) -> Iterator[InputEvent]:
        os.read(self.rfd, 1)
        batch = self.batches.get_nowait()
        if isinstance(batch, OSError):
            raise batch
        return iter(batch)

    def send(self, batch: list[InputEvent] | OSError) -> None:
        self.batches.put(batch)
        os.write(self.wfd, b"x")

    def close(self) -> None:
        os.close(self.rfd)
        os.close(self.wfd)


@pytest.fixture
def kernel() -> Iterator[FakeKernel]:
    fake = FakeKernel()
    yield fake
    fake.close()


def now_typist() -> Typist:
    return Typist(start=time.time())


def test_evdev_scanner_grabs_decodes_and_releases(kernel: FakeKernel) -> None:
    seen: list[tuple[str, str | None]] = []
    got = threading.Event()

    def on_scan(code: str, symbology: str | None) -> None:
        seen.append((code, symbology))
        got.set()

    dev = kernel.device()
    with mock.patch("evdev.InputDevice", autospec=True, return_value=dev) as input_device:
        scanner = EvdevScanner("by-id/usb-scanner-event-kbd", on_scan, decoder=WedgeDecoder("de"))
        typist = now_typist().key(e.KEY_9, ALTGR).key(e.KEY_E, SHIFT).digits("04006381333931").enter()
        kernel.send(typist.events)
        assert got.wait(10)
        scanner.close()
        scanner.close()
    input_device.assert_called_once_with("by-id/usb-scanner-event-kbd")
    dev.grab.assert_called_once_with()
    dev.ungrab.assert_called_once_with()
    dev.close.assert_called_once_with()
    assert seen == [("4006381333931", "]E0")]
    assert scanner.health.health == Health.OK


def test_evdev_scanner_no_terminator_completes_on_the_timeout(kernel: FakeKernel) -> None:
    seen: list[str] = []
    dev = kernel.device()
    with mock.patch("evdev.InputDevice", autospec=True, return_value=dev):
        decoder = WedgeDecoder("us", terminator=Terminator.NONE, scan_timeout=0.05, max_gap=0.05)
        with EvdevScanner("kbd", lambda c, s: seen.append(c), decoder=decoder):
            kernel.send(now_typist().digits("96385074").events)
            wait_for(lambda: seen == ["96385074"])


def test_evdev_unplug_and_replug(kernel: FakeKernel, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    seen: list[str] = []
    states: list[HealthState] = []
    first, second = kernel.device(), kernel.device()
    gone = FileNotFoundError(errno.ENOENT, "No such file or directory")
    with mock.patch("evdev.InputDevice", autospec=True, side_effect=[first, gone, gone, second]) as input_device:
        scanner = EvdevScanner("kbd", lambda c, s: seen.append(c), backoff=Backoff(0.01, 0.04))
        scanner.on_health(states.append)
        kernel.send(now_typist().digits("4006381333931").enter().events)
        wait_for(lambda: seen == ["4006381333931"])
        kernel.send(OSError(errno.ENODEV, "No such device"))
        wait_for(lambda: input_device.call_count == 4 and scanner.health.health == Health.OK)
        kernel.send(now_typist().digits("96385074").enter().events)
        wait_for(lambda: len(seen) == 2)
        scanner.close()
    assert seen == ["4006381333931", "96385074"]
    assert states[0].health == Health.UNAVAILABLE
    assert states[-1].health == Health.OK
    second.grab.assert_called_once_with()
    base_logs = [r for r in caplog.records if r.name == "drivers.base"]
    assert [r.levelno for r in base_logs] == [logging.WARNING, logging.INFO]


def test_evdev_device_busy_is_unavailable_and_retried(kernel: FakeKernel) -> None:
    busy, ok = kernel.device(), kernel.device()
    busy.grab.side_effect = OSError(errno.EBUSY, "Device or resource busy")
    with mock.patch("evdev.InputDevice", autospec=True, side_effect=[busy, ok]):
        scanner = EvdevScanner("kbd", lambda c, s: None, backoff=Backoff(0.01, 0.02))
        wait_for(lambda: ok.grab.called and scanner.health.health == Health.OK)
        scanner.close()
    busy.close.assert_called_once_with()
    ok.grab.assert_called_once_with()


# --- serial framing (pure) -------------------------------------------------------------


def test_framer_lines_with_each_terminator() -> None:
    for terminator, end in (("cr", b"\r"), ("lf", b"\n"), ("crlf", b"\r\n")):
        framer = SerialFramer(SerialFraming(terminator=terminator))  # type: ignore[arg-type]
        out = framer.feed(b"4006381333931" + end + b"]E096385074" + end, 1.0)
        assert texts(out) == ["4006381333931", "]E096385074"], terminator


def test_framer_stx_etx_and_garbage_outside_frames() -> None:
    framer = SerialFramer(SerialFraming(stx_etx=True))
    out = framer.feed(b"\x024006381333931\x03\r\nzz\r\x0296385074\x03", 1.0)
    assert texts(out) == ["4006381333931", "96385074"]
    assert reasons(out) == ["garbage: bytes outside an STX/ETX frame"]


def test_framer_rejects_garbage_and_keeps_going() -> None:
    framer = SerialFramer(SerialFraming(max_length=16))
    out = framer.feed(b"\x00\xff\xfe\r" + b"12\x0734\r" + b"9" * 40 + b"\r" + b"0104006381333931\r", 1.0)
    assert reasons(out) == [
        "garbage: not valid utf-8 text",
        "garbage: control characters in the line",
        "line longer than 16 bytes",
    ]
    assert texts(out) == ["0104006381333931"]


def test_framer_tolerates_crlf_on_a_cr_port() -> None:
    framer = SerialFramer(SerialFraming(terminator="cr"))
    assert texts(framer.feed(b"4006381333931\r\n96385074\r\n", 1.0)) == ["4006381333931", "96385074"]
    assert framer.tick(5.0) == []  # the trailing LF is not a half line waiting to time out


def test_framer_keeps_gs1_separators_and_times_out_partial_lines() -> None:
    framer = SerialFramer(SerialFraming(line_timeout=0.5))
    assert texts(framer.feed(b"10LOT42\x1d17261231\r", 1.0)) == ["10LOT42" + GS + "17261231"]
    assert framer.feed(b"4006", 2.0) == []
    assert framer.tick(2.4) == []
    assert reasons(framer.tick(2.6)) == ["incomplete line: no terminator within 0.5 s"]


@given(st.lists(st.sampled_from(["4006381333931", "96385074", "]C1" + "0104006381333931"]), max_size=5),
       st.data())  # fmt: skip
def test_framer_output_does_not_depend_on_chunking(codes: list[str], data: st.DataObject) -> None:
    stream = b"".join(c.encode() + b"\r\n" for c in codes)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    framer = SerialFramer(SerialFraming(terminator="crlf"))
    out: list[Decoded | Rejected] = []
    for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        out += framer.feed(stream[a:b], 1.0)
    assert texts(out) == codes


# --- serial scanner over a real pseudo-terminal ----------------------------------------


class Pty:
    """A pseudo-terminal pair whose slave is reached through a stable symlink (a by-id path)."""

    def __init__(self, link: Path) -> None:
        self.link = link
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        tmp = link.with_suffix(".new")
        tmp.symlink_to(os.ttyname(self.slave))
        tmp.replace(link)
        self.plugged = True

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def sync(self, seen: Collector) -> None:
        """Wait until the scanner has the port open (pyserial flushes input on open)."""
        deadline = time.monotonic() + 3
        while ("SYNC", None) not in seen.scans:
            assert time.monotonic() < deadline, "scanner never opened the port"
            self.send(b"SYNC\r")
            time.sleep(0.06)
        time.sleep(0.06)
        seen.scans[:] = [scan for scan in seen.scans if scan != ("SYNC", None)]

    def unplug(self) -> None:
        """Pull the cable: udev removes the by-id link, the tty goes away. Idempotent."""
        if self.plugged:
            self.plugged = False
            self.link.unlink(missing_ok=True)
            os.close(self.slave)
            os.close(self.master)


class Collector:
    def __init__(self) -> None:
        self.scans: list[tuple[str, str | None]] = []
        self.rejects: list[str] = []
        self.health: list[Health] = []

    def on_scan(self, code: str, symbology: str | None) -> None:
        self.scans.append((code, symbology))

    def on_reject(self, reason: str) -> None:
        self.rejects.append(reason)


def test_serial_scanner_over_a_pty(tmp_path: Path) -> None:
    pty = Pty(tmp_path / "ttyACM0")
    seen = Collector()
    scanner = SerialScanner(str(pty.link), seen.on_scan, on_reject=seen.on_reject, framing=SerialFraming(max_length=32))
    try:
        pty.sync(seen)
        scanner.on_health(lambda s: seen.health.append(s.health))
        pty.send(b"4006381333931\r")
        wait_for(lambda: len(seen.scans) == 1)
        pty.send(b"\x00\xff\xfe\x80\r")
        wait_for(lambda: scanner.health.health == Health.DEGRADED)
        pty.send(b"]E09638")
        pty.send(b"5074\r")
        wait_for(lambda: len(seen.scans) == 2)
        assert scanner.health.health == Health.OK
        pty.send(b"7" * 100 + b"\r" + b"]C1010400638133393110ABC\r")
        wait_for(lambda: len(seen.scans) == 3)
    finally:
        scanner.close()
        pty.unplug()
    assert seen.scans == [
        ("4006381333931", None),
        ("96385074", "]E0"),
        ("010400638133393110ABC", "]C1"),
    ]
    assert seen.rejects == ["garbage: not valid utf-8 text", "line longer than 32 bytes"]
    assert seen.health == [Health.DEGRADED, Health.OK, Health.DEGRADED, Health.OK]


def test_serial_scanner_unplug_and_replug(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    pty = Pty(tmp_path / "ttyACM0")
    seen = Collector()
    scanner = SerialScanner(str(pty.link), seen.on_scan, backoff=Backoff(0.02, 0.1))
    replugged: Pty | None = None
    try:
        pty.sync(seen)
        pty.send(b"4006381333931\r")
        wait_for(lambda: len(seen.scans) == 1)
        pty.unplug()
        wait_for(lambda: scanner.health.health == Health.UNAVAILABLE)
        time.sleep(0.15)  # several failed reopen attempts
        replugged = Pty(tmp_path / "ttyACM0")
        replugged.sync(seen)
        assert scanner.health.health == Health.OK
        replugged.send(b"96385074\r")
        wait_for(lambda: len(seen.scans) == 2)
    finally:
        scanner.close()
        pty.unplug()
        if replugged is not None:
            replugged.unplug()
    assert [c for c, _ in seen.scans] == ["4006381333931", "96385074"]
    base_logs = [r for r in caplog.records if r.name == "drivers.base"]
    assert [r.levelno for r in base_logs] == [logging.WARNING, logging.INFO]


def test_serial_scanner_missing_port_starts_unavailable(tmp_path: Path) -> None:
    scanner = SerialScanner(str(tmp_path / "nothing"), lambda c, s: None, backoff=Backoff(0.01, 0.02))
    try:
        wait_for(lambda: scanner.health.health == Health.UNAVAILABLE)
        assert "cannot open serial port" in scanner.health.reason
    finally:
        scanner.close()
