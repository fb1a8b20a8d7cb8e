"""Card and badge readers: staff badges, loyalty and gift cards. Never payment cards.

HID magstripe and NFC readers in keyboard-wedge mode are read through evdev with the
scanner's :class:`~drivers.scanner.WedgeDecoder`. Anything that looks like payment card
data is dropped before it reaches a callback, a log line or an attribute:

* a run of 13-19 digits (digit groups split by single spaces or dashes count as one
  run) that passes the Luhn check;
* ISO/IEC 7813 track 1 (``%B<PAN>^NAME^...?``) or track 2 (``;<PAN>=...?``) data.

Only "payment card data discarded" is logged. So loyalty and gift card numbers must
not be Luhn-valid 13-19 digit numbers (use a letter prefix or another length).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable

from appliance.errors import DeviceUnavailable
from drivers.base import Device, Health, simulated
from drivers.scanner import Backoff, RejectCallback, WedgeDecoder, start_wedge

__all__ = [
    "DISCARDED",
    "BadgeReader",
    "EvdevBadgeReader",
    "SimulatedBadgeReader",
    "looks_like_payment_card",
    "luhn_valid",
    "open_badge_reader",
    "strip_sentinels",
]

log = logging.getLogger(__name__)

#: ``on_read(data)``: the badge, loyalty or gift card data read.
ReadCallback = Callable[[str], None]

#: The only thing ever said about a payment card read.
DISCARDED = "payment card data discarded"

# Digit groups joined by single spaces or dashes: "4111 1111-1111 1111".
_DIGIT_RUN = re.compile(r"\d+(?:[ -]\d+)*")
_GROUP_SPLIT = re.compile(r"[ -]")
# Track 1 format code B, then the PAN and its field separator; with or without the % sentinel.
_TRACK1 = re.compile(r"B\d{1,19}\^", re.IGNORECASE)
# Track 2: start sentinel, PAN, separator; or an unsentinelled PAN=YYMM.
_TRACK2 = re.compile(r";\d{1,19}=|\d{12,19}=\d{4}")
_SENTINELS = re.compile(r"^[%;](.*)\?$", re.DOTALL)


def luhn_valid(digits: str) -> bool:
    """True if ``digits`` (ASCII digits only) passes the Luhn (mod 10) check."""
    if not digits or not digits.isascii() or not digits.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def looks_like_payment_card(text: str) -> bool:
    """True if ``text`` holds track data or a Luhn-valid 13-19 digit number."""
    if _TRACK1.search(text) or _TRACK2.search(text):
        return True
    for run in _DIGIT_RUN.finditer(text):
        groups = _GROUP_SPLIT.split(run.group())
        for start in range(len(groups)):
            digits = ""
            for group in groups[start:]:
                digits += group
                if len(digits) > 19:
                    break
                if len(digits) >= 13 and luhn_valid(digits):
                    return True
    return False


def strip_sentinels(text: str) -> str:
    """Drop the start (``%`` or ``;``) and end (``?``) sentinels of a single track."""
    match = _SENTINELS.match(text)
    return match.group(1) if match else text


class BadgeReader(Device):
    """A card reader that calls ``on_read(data)`` for every non-payment card it reads."""

    def __init__(self, name: str, on_read: ReadCallback, *, on_reject: RejectCallback | None = None) -> None:
        super().__init__(name)
        self._on_read = on_read
        self._on_reject = on_reject

    def _accept(self, text: str) -> None:
        """Screen one read: payment data is discarded, anything else is delivered."""
        if looks_like_payment_card(text):
            log.warning(DISCARDED)
            self._reject(DISCARDED)
            return
        data = strip_sentinels(text.strip())
        if not data:
            return
        try:
            self._on_read(data)
        except Exception:
            log.exception("read handler of %s failed", self.name)

    def _reject(self, reason: str) -> None:
        if self._on_reject is None:
            return
        try:
            self._on_reject(reason)
        except Exception:
            log.exception("reject handler of %s failed", self.name)


class EvdevBadgeReader(BadgeReader):
    """A keyboard-wedge magstripe or NFC reader, grabbed through evdev.

    Each line the reader types (Enter-terminated by default) is screened on its own,
    so readers that send track 1 and track 2 as separate lines are covered.
    """

    def __init__(
        self,
        path: str,
        on_read: ReadCallback,
        *,
        on_reject: RejectCallback | None = None,
        decoder: WedgeDecoder | None = None,
        name: str = "badge",
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(name, on_read, on_reject=on_reject)
        self.decoder = decoder or WedgeDecoder()
        self._reader = start_wedge(self, path, self.decoder, self._accept, self._reject, backoff=backoff, clock=clock)

    def close(self) -> None:
        if self._closed:
            return
        super().close()
        self._reader.stop()


class SimulatedBadgeReader(BadgeReader):
    """A reader you drive from code: ``feed("STAFF-0042")``. Payment data is screened as for real."""

    def __init__(self, on_read: ReadCallback, *, on_reject: RejectCallback | None = None, name: str = "badge") -> None:
        super().__init__(name, on_read, on_reject=on_reject)

    def feed(self, data: str) -> None:
        """Deliver ``data`` as if a card was swiped or tapped (the callback runs here)."""
        if self._closed or self.health.health == Health.UNAVAILABLE:
            raise DeviceUnavailable(f"{self.name} is not connected")
        self._accept(data.strip("\r\n"))


def open_badge_reader(
    device: str,
    on_read: ReadCallback,
    *,
    on_reject: RejectCallback | None = None,
    layout: str = "us",
    name: str = "badge",
) -> BadgeReader:
    """The evdev reader at ``device``; a simulator when ``device`` is empty or ``TILLBOX_DEVICES=sim``."""
    if simulated() or not device:
        return SimulatedBadgeReader(on_read, on_reject=on_reject, name=name)
    return EvdevBadgeReader(device, on_read, on_reject=on_reject, decoder=WedgeDecoder(layout), name=name)
