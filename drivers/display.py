"""Customer pole display: a 2x20 VFD/LCD speaking the Epson customer display command set.

Frames are pure bytes built by the functions below (``ESC @`` initialise, ``ESC t n`` code
table, ``US MD1`` overwrite mode, ``US C 0`` cursor off, ``US $ x y`` cursor to column x,
row y (1-based), ``CLR`` clear). A display wired behind the printer is addressed by
wrapping frames in ``ESC = 2`` ... ``ESC = 1`` (select display, then printer again) and
sending them through the printer with :class:`PrinterPassthrough`.

A missing or failing display never stops a sale: :class:`CustomerDisplay` marks itself
unavailable, remembers what it should show, and retries after ``retry_after`` seconds.
:class:`SimulatedDisplay` is a transport that interprets the frames and keeps the text.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from appliance.clock import Clock, SystemClock
from appliance.errors import DeviceMisconfigured, DeviceUnavailable
from appliance.money import Currency
from drivers.base import Device, Health, simulated
from drivers.escpos_codec import CODE_PAGES, CodePage, code_page, printable
from drivers.transport import SerialTransport, Transport

log = logging.getLogger(__name__)

ESC, US, CLR, CAN = 0x1B, 0x1F, 0x0C, 0x18


@dataclass(frozen=True)
class DisplayProfile:
    """Geometry and character set of a pole display."""

    columns: int = 20
    rows: int = 2
    code_page: str = "CP437"
    code_table: int | None = None
    via_printer: bool = False

    def __post_init__(self) -> None:
        if not 8 <= self.columns <= 40:
            raise DeviceMisconfigured(f"display columns {self.columns} out of range 8..40")
        if not 1 <= self.rows <= 4:
            raise DeviceMisconfigured(f"display rows {self.rows} out of range 1..4")
        code_page(self.code_page, self.code_table)

    @property
    def page(self) -> CodePage:
        return code_page(self.code_page, self.code_table)


# -- pure frames ----------------------------------------------------------------------------------


def _wrap(frame: bytes, profile: DisplayProfile) -> bytes:
    if profile.via_printer:
        return bytes([ESC, ord("="), 2]) + frame + bytes([ESC, ord("="), 1])
    return frame


def init_frame(profile: DisplayProfile) -> bytes:
    """Initialise, select the code table, overwrite mode, cursor off, clear."""
    frame = bytes([ESC, ord("@"), ESC, ord("t"), profile.page.table, US, 0x01, US, ord("C"), 0, CLR])
    return _wrap(frame, profile)


def clear_frame(profile: DisplayProfile) -> bytes:
    return _wrap(bytes([CLR]), profile)


def fit(text: str, profile: DisplayProfile) -> str:
    """Text made printable in the display's code page and padded/cut to one row."""
    return printable(text, profile.page)[: profile.columns].ljust(profile.columns)


def split_row(left: str, right: str, profile: DisplayProfile) -> str:
    """``left`` and ``right`` on one row; the right part wins when space is short."""
    page, width = profile.page, profile.columns
    right = printable(right, page)[:width]
    space = width - len(right) - 1
    if space <= 0:
        return right.rjust(width)
    return f"{printable(left, page)[:space]:<{space}} {right}"


def text_frame(lines: Sequence[str], profile: DisplayProfile) -> bytes:
    """Write every row in full (missing rows blank), each after ``US $ 1 y``."""
    out = bytearray()
    rows = list(lines[: profile.rows]) + [""] * (profile.rows - len(lines))
    for y, text in enumerate(rows, start=1):
        out += bytes([US, ord("$"), 1, y]) + fit(text, profile).encode(profile.page.codec)
    return _wrap(bytes(out), profile)


def scroll_window(text: str, offset: int, width: int, gap: int = 4) -> str:
    """The ``width`` characters of a marquee of ``text`` at ``offset`` (wraps around)."""
    if len(text) <= width:
        return text
    loop = text + " " * gap
    start = offset % len(loop)
    return (loop + loop)[start : start + width]


# -- the driver -----------------------------------------------------------------------------------

Opener = Callable[[], Transport]


class CustomerDisplay(Device):
    """What the customer sees: the last item and total, idle and promotion messages.

    Never raises to the sale path: every ``show_*`` returns whether the display got it.
    """

    def __init__(
        self,
        link: Transport | Opener,
        profile: DisplayProfile | None = None,
        *,
        currency: Currency,
        clock: Clock | None = None,
        retry_after: float = 30.0,
        name: str = "display",
    ) -> None:
        super().__init__(name)
        self.profile = profile or DisplayProfile()
        self.currency = currency
        self._clock = clock or SystemClock()
        self.retry_after = retry_after
        self._io = threading.RLock()
        self._ready = False
        self._retry_at: float | None = None
        self._lines: list[str] = [""] * self.profile.rows
        self._marquee: str | None = None
        self._offset = 0
        if hasattr(link, "write"):
            self._link: Transport | None = link  # type: ignore[assignment]
            self._opener: Opener | None = None
        else:
            self._link = None
            self._opener = link
        self._connect()

    @property
    def lines(self) -> tuple[str, ...]:
        """What the display should be showing (even while it is unavailable)."""
        return tuple(self._lines)

    def show_lines(self, *lines: str) -> bool:
        self._marquee = None
        return self._show([fit(t, self.profile).rstrip() for t in lines])

    def show_item(self, name: str, amount: int, total: int) -> bool:
        """The last scanned item with its amount, and the running total."""
        money = self.currency.plain
        return self.show_lines(
            split_row(name, money(amount), self.profile),
            split_row(f"TOTAL {self.currency.code}", money(total), self.profile),
        )

    def show_total(self, total: int, *, paid: int | None = None, change: int | None = None) -> bool:
        money = self.currency.plain
        first = split_row(f"TOTAL {self.currency.code}", money(total), self.profile)
        if change is not None:
            return self.show_lines(first, split_row("CHANGE", money(change), self.profile))
        if paid is not None:
            return self.show_lines(first, split_row("PAID", money(paid), self.profile))
        return self.show_lines(first)

    def show_idle(self, *lines: str) -> bool:
        return self.show_lines(*[t.strip().center(self.profile.columns) for t in lines])

    def show_promotion(self, headline: str, text: str) -> bool:
        """A fixed headline and a second row that scrolls with :meth:`tick` when too long."""
        self._marquee = printable(" ".join(text.split()), self.profile.page)
        self._offset = 0
        head = headline.strip().center(self.profile.columns)
        return self._show([head, scroll_window(self._marquee, 0, self.profile.columns)])

    def tick(self) -> bool:
        """Advance a scrolling promotion by one character; False when nothing scrolls."""
        if self._marquee is None or len(self._marquee) <= self.profile.columns:
            return False
        self._offset += 1
        lines = list(self._lines)
        lines[-1] = scroll_window(self._marquee, self._offset, self.profile.columns)
        return self._show(lines)

    def clear(self) -> bool:
        self._marquee = None
        return self._show([""] * self.profile.rows)

    def close(self) -> None:
        with self._io:
            if self._link is not None:
                try:
                    self._link.close()
                except Exception:
                    log.debug("closing %s failed", self.name, exc_info=True)
                self._link = None
            self._opener = None
            self._ready = False
        super().close()

    # internals -----------------------------------------------------------------------------------

    def _show(self, lines: list[str]) -> bool:
        with self._io:
            self._lines = (lines + [""] * self.profile.rows)[: self.profile.rows]
            if not self._ready and not self._connect():
                return False
            return self._write(text_frame(self._lines, self.profile))

    def _connect(self) -> bool:
        """Open the link if needed and initialise the display; False while unavailable."""
        if self.closed:
            return False
        now = self._clock.monotonic()
        if self._retry_at is not None and now < self._retry_at:
            return False
        try:
            if self._link is None:
                if self._opener is None:
                    raise DeviceUnavailable(f"{self.name} has no link")
                self._link = self._opener()
            self._link.write(init_frame(self.profile))
        except DeviceUnavailable as exc:
            self._fail(str(exc))
            return False
        self._ready = True
        self._retry_at = None
        self.set_health(Health.OK)
        return True

    def _write(self, frame: bytes) -> bool:
        assert self._link is not None
        try:
            self._link.write(frame)
        except DeviceUnavailable as exc:
            self._fail(str(exc))
            return False
        return True

    def _fail(self, reason: str) -> None:
        self._ready = False
        self._retry_at = self._clock.monotonic() + self.retry_after
        self.set_health(Health.UNAVAILABLE, reason)
        if self._opener is not None and self._link is not None:
            try:
                self._link.close()
            except Exception:
                log.debug("closing %s after a failure failed", self.name, exc_info=True)
            self._link = None


class CommandSink(Protocol):
    """Takes raw bytes for the printer (a :class:`~drivers.printer.ReceiptPrinter`)."""

    def send(self, data: bytes) -> None: ...


class PrinterPassthrough:
    """The link to a display daisy-chained behind the receipt printer.

    Every frame goes through the printer's own link as one command, so it never lands in
    the middle of a receipt; with ``DisplayProfile(via_printer=True)`` each frame selects
    the display (``ESC = 2``) and hands the printer back (``ESC = 1``). Nothing can be read
    back, and closing leaves the printer alone (it belongs to its own device slot).
    """

    def __init__(self, printer: CommandSink) -> None:
        self.printer = printer

    def write(self, data: bytes) -> None:
        self.printer.send(data)

    def read(self, size: int, timeout: float) -> bytes:
        return b""

    def close(self) -> None:
        """The printer stays open."""


def open_display(port: str, baudrate: int = 9600) -> Opener:
    """An opener for a serial display; the simulator when ``TILLBOX_DEVICES=sim``."""
    if simulated():
        sim = SimulatedDisplay()
        return lambda: sim
    return lambda: SerialTransport(port, baudrate)


# -- simulator ------------------------------------------------------------------------------------


class SimulatedDisplay:
    """A transport that interprets customer display frames and keeps the rows of text."""

    def __init__(self, columns: int = 20, rows: int = 2) -> None:
        self.columns = columns
        self.rows = rows
        self.connected = True
        self.written = bytearray()
        self._page: CodePage = CODE_PAGES["CP437"]
        self._tables = {cp.table: cp for cp in CODE_PAGES.values()}
        self._screen = [[" "] * columns for _ in range(rows)]
        self._x = self._y = 0
        self._selected = True
        self._pending = b""

    @property
    def lines(self) -> tuple[str, ...]:
        return tuple("".join(row).rstrip() for row in self._screen)

    def write(self, data: bytes) -> None:
        if not self.connected:
            raise DeviceUnavailable("simulated display is disconnected")
        self.written += data
        self._feed(self._pending + data)

    def read(self, size: int, timeout: float) -> bytes:
        if not self.connected:
            raise DeviceUnavailable("simulated display is disconnected")
        return b""

    def close(self) -> None:
        """The simulator stays usable; it is the device, not the link."""

    def _clear(self) -> None:
        self._screen = [[" "] * self.columns for _ in range(self.rows)]
        self._x = self._y = 0

    def _feed(self, data: bytes) -> None:
        self._pending = b""
        i, n = 0, len(data)
        while i < n:
            b = data[i]
            need = {ESC: 2, US: 2}.get(b, 1)
            if b == ESC and i + 1 < n and data[i + 1] in b"t=":
                need = 3
            elif b == US and i + 1 < n and data[i + 1] == ord("$"):
                need = 4
            elif b == US and i + 1 < n and data[i + 1] in b"CXEr":
                need = 3
            if i + need > n:
                self._pending = data[i:]
                return
            cmd = data[i : i + need]
            i += need
            if b == ESC and cmd[1] == ord("="):
                self._selected = bool(cmd[2] & 0x02)
            elif not self._selected:
                continue
            elif b == ESC and cmd[1] == ord("@"):
                self._clear()
                self._page = CODE_PAGES["CP437"]
            elif b == ESC and cmd[1] == ord("t"):
                self._page = self._tables.get(cmd[2], self._page)
            elif b == US and cmd[1] == ord("$"):
                self._x = min(max(cmd[2], 1), self.columns) - 1
                self._y = min(max(cmd[3], 1), self.rows) - 1
            elif b == CLR:
                self._clear()
            elif b == CAN:
                self._screen[self._y] = [" "] * self.columns
                self._x = 0
            elif b == 0x0D:
                self._x = 0
            elif b == 0x0A:
                self._y = min(self._y + 1, self.rows - 1)
            elif b == 0x0B:
                self._x = self._y = 0
            elif b >= 0x20 and b != 0x7F:
                self._screen[self._y][self._x] = bytes([b]).decode(self._page.codec, errors="replace")
                self._x += 1
                if self._x >= self.columns:
                    self._x = 0
                    self._y = (self._y + 1) % self.rows
