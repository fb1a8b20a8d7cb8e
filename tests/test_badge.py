"""Tests for drivers.badge: badges delivered, payment card data discarded without a trace."""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from unittest import mock

import evdev
import pytest
from evdev import InputEvent
from evdev import ecodes as e
from hypothesis import given
from hypothesis import strategies as st

from appliance.errors import DeviceUnavailable
from drivers.badge import (
    DISCARDED,
    EvdevBadgeReader,
    SimulatedBadgeReader,
    looks_like_payment_card,
    luhn_valid,
    open_badge_reader,
    strip_sentinels,
)
from drivers.base import Health
from drivers.scanner import WedgeDecoder

# Well-known test numbers (never issued to a cardholder).
VISA_TEST = "4111111111111111"
MC_TEST = "5555555555554444"
AMEX_TEST = "378282246310005"
TRACK1 = f"%B{VISA_TEST}^DOE/JANE^2512101000000000000000000000000?"
TRACK2 = f";{VISA_TEST}=25121010000000000000?"
SECRETS = (VISA_TEST, "DOE", "JANE", "2512", "4111 1111")


@pytest.fixture(autouse=True)
def _no_leftover_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    leftover = [t.name for t in threading.enumerate() if t not in before and t.is_alive()]
    assert not leftover, f"threads left running: {leftover}"


def luhn_complete(body: str) -> str:
    """Append the check digit that makes ``body`` Luhn-valid (independent of the driver)."""
    for check in "0123456789":
        digits = body + check
        total = sum(int(d) if i % 2 == 0 else sum(divmod(int(d) * 2, 10)) for i, d in enumerate(reversed(digits)))
        if total % 10 == 0:
            return digits
    raise AssertionError("unreachable")


def assert_nothing_leaked(caplog: pytest.LogCaptureFixture, secrets: Sequence[str] = SECRETS) -> None:
    for record in caplog.records:
        text = record.getMessage() + repr(record.args) + str(record.exc_info or "")
        for secret in secrets:
            assert secret not in text, f"{secret!r} leaked into a log record"


# --- detection -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("digits", "valid"),
    [("79927398713", True), (VISA_TEST, True), (MC_TEST, True), (AMEX_TEST, True),
     ("4111111111111112", False), ("4006381333931", False), ("", False), ("12a4", False)],
)  # fmt: skip
def test_luhn(digits: str, valid: bool) -> None:
    assert luhn_valid(digits) is valid


@pytest.mark.parametrize(
    "text",
    [
        VISA_TEST,
        AMEX_TEST,
        "5555 5555 5555 4444",
        "5555-5555-5555-4444",
        f"CARD {VISA_TEST} 12/25",
        f"{VISA_TEST} 2512",  # a PAN followed by its expiry is still a PAN
        TRACK1,
        TRACK2,
        f"B{VISA_TEST}^DOE/JANE^2512",  # track 1 without sentinels
        f"{VISA_TEST}=2512101",  # track 2 without sentinels
        ";1234567890=99?",  # track 2 layout, even with a non-Luhn number
        TRACK1 + TRACK2,
    ],
)
def test_payment_card_data_is_recognised(text: str) -> None:
    assert looks_like_payment_card(text)


@pytest.mark.parametrize(
    "text",
    [
        "STAFF-0042",
        "4006381333931",  # an EAN-13 loyalty card, not Luhn-valid
        "04A2B3C4D5E6F7",  # an NFC UID
        "3735928559",  # a 10-digit decimal UID
        "123456789012345678901234",  # a 24-digit gift card number
        ";0042?",
        "%STAFF0042?",
    ],
)
def test_badges_and_loyalty_cards_pass(text: str) -> None:
    assert not looks_like_payment_card(text)


@given(st.integers(12, 18).flatmap(lambda n: st.text("0123456789", min_size=n, max_size=n)))
def test_every_luhn_valid_13_to_19_digit_number_is_caught(body: str) -> None:
    pan = luhn_complete(body)
    assert looks_like_payment_card(pan)
    assert looks_like_payment_card(f"loyalty {pan[:4]} {pan[4:8]} {pan[8:12]} {pan[12:]}")


def test_sentinels_are_stripped_from_a_single_track() -> None:
    assert strip_sentinels(";0042?") == "0042"
    assert strip_sentinels("%STAFF0042?") == "STAFF0042"
    assert strip_sentinels("STAFF-0042") == "STAFF-0042"


# --- simulator -------------------------------------------------------------------------


def test_simulator_discards_payment_cards_and_logs_only_the_fact(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    reads: list[str] = []
    rejects: list[str] = []
    with SimulatedBadgeReader(reads.append, on_reject=rejects.append) as reader:
        reader.feed(";0042?")
        reader.feed(TRACK1)
        reader.feed(TRACK2)
        reader.feed("5555 5555 5555 4444\r\n")
        reader.feed("LOYALTY-77")
        assert reader.health.health == Health.OK
    assert reads == ["0042", "LOYALTY-77"]
    assert rejects == [DISCARDED] * 3
    assert [r.getMessage() for r in caplog.records if r.name == "drivers.badge"] == [DISCARDED] * 3
    assert_nothing_leaked(caplog, (*SECRETS, "5555"))
    with pytest.raises(DeviceUnavailable):
        reader.feed("LOYALTY-78")


@pytest.mark.allow_error_logs
def test_a_failing_read_handler_is_isolated(caplog: pytest.LogCaptureFixture) -> None:
    def explode(data: str) -> None:
        raise RuntimeError("handler bug")

    with SimulatedBadgeReader(explode) as reader:
        reader.feed("STAFF-1")  # does not raise
        reader.feed("STAFF-2")
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in errors] == ["read handler of badge failed"] * 2


# --- a keyboard-wedge magstripe reader through evdev -----------------------------------

US_CHARS = {
    **{str(d): (getattr(e, f"KEY_{d}"), False) for d in range(10)},
    **{c: (getattr(e, f"KEY_{c.upper()}"), False) for c in "abcdefghijklmnopqrstuvwxyz"},
    **{c: (getattr(e, f"KEY_{c}"), True) for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"},
    "%": (e.KEY_5, True), "^": (e.KEY_6, True), "/": (e.KEY_SLASH, False), "?": (e.KEY_SLASH, True),
    ";": (e.KEY_SEMICOLON, False), "=": (e.KEY_EQUAL, False), "-": (e.KEY_MINUS, False),
    "\n": (e.KEY_ENTER, False),
}  # fmt: skip


def typed(text: str, start: float) -> list[InputEvent]:
    """Key events a US-layout magstripe reader sends for ``text``, 3 ms per key."""
    events: list[InputEvent] = []
    t = start
    for ch in text:
        code, shift = US_CHARS[ch]
        seq = [(e.KEY_LEFTSHIFT, 1)] if shift else []
        seq += [(code, 1), (code, 0)]
        seq += [(e.KEY_LEFTSHIFT, 0)] if shift else []
        for key, value in seq:
            sec = int(t)
            usec = round((t - sec) * 1e6)
            events += [InputEvent(sec, usec, e.EV_KEY, key, value), InputEvent(sec, usec, e.EV_SYN, 0, 0)]
            t += 0.0007
        t += 0.003
    return events


def wait_for(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


def test_evdev_reader_discards_swiped_payment_cards(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    rfd, wfd = os.pipe()
    batches: queue.Queue[list[InputEvent]] = queue.Queue()

    def read() -> Iterator[InputEvent]:
        os.read(rfd, 1)
        return iter(batches.get_nowait())

    dev = mock.create_autospec(evdev.InputDevice, instance=True)
    dev.fileno.return_value = rfd
    dev.read.side_effect = read
    reads: list[str] = []
    rejects: list[str] = []
    try:
        with mock.patch("evdev.InputDevice", autospec=True, return_value=dev):
            reader = EvdevBadgeReader("badge-kbd", reads.append, on_reject=rejects.append, decoder=WedgeDecoder())
            try:
                # A payment card swiped: track 1 and track 2 as separate lines, then a staff badge.
                swipe = typed(TRACK1 + "\n" + TRACK2 + "\n", time.time())
                batches.put(swipe)
                os.write(wfd, b"x")
                wait_for(lambda: len(rejects) == 2)
                batches.put(typed(";0042?\n", time.time()))
                os.write(wfd, b"x")
                wait_for(lambda: reads == ["0042"])
            finally:
                reader.close()
    finally:
        os.close(rfd)
        os.close(wfd)
    dev.grab.assert_called_once_with()
    assert rejects == [DISCARDED, DISCARDED]
    assert [r.getMessage() for r in caplog.records if r.name == "drivers.badge"] == [DISCARDED, DISCARDED]
    assert_nothing_leaked(caplog)


def test_open_badge_reader_falls_back_to_the_simulator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TILLBOX_DEVICES", "sim")
    reads: list[str] = []
    with open_badge_reader("by-id/usb-reader-event-kbd", reads.append) as reader:
        assert isinstance(reader, SimulatedBadgeReader)
        reader.feed(VISA_TEST)
        reader.feed("STAFF-7")
    assert reads == ["STAFF-7"]
