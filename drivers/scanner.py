"""Barcode scanners: keyboard-wedge (evdev), serial, and a simulator.

Every scanner is a :class:`Scanner` that hands each decoded code to
``on_scan(code, symbology)`` from its reader thread (the daemon wraps the callback
with ``loop.call_soon_threadsafe``); ``symbology`` is the AIM identifier (``"]E0"``)
when the scanner sends one, else ``None``. Parsing is the caller's job;
:func:`parsing` builds an ``on_scan`` that runs :func:`appliance.barcode.parse_scan`
and reports a :class:`BarcodeError` as a rejected scan.

Keyboard-wedge thresholds (:class:`WedgeDecoder`), from how the two kinds of typist behave:

* A USB HID scanner types a whole code in one burst, a key every 1-10 ms (one or two
  USB polling intervals per press/release pair).
* A person needs 80-250 ms per key; even rollover bursts of a fast typist rarely
  stay below 30 ms for more than a key or two.

So a sequence is accepted only when the **median** gap between key presses is at most
``key_gap`` (30 ms) and **no** gap exceeds ``max_gap`` (60 ms, hand typing mixed into a
scan). A pause longer than ``scan_timeout`` (100 ms) ends a sequence: with no
terminator that is the end of the code; otherwise the unterminated keys are dropped.
An autorepeat event (a key held down) marks a sequence as typed by hand.
"""

from __future__ import annotations

import contextlib
import logging
import re
import select
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from itertools import pairwise
from typing import Any, Literal, Protocol

from appliance.barcode import DEFAULT_LAYOUTS, MAX_SCAN_LENGTH, Scan, VariableMeasureLayout, parse_scan
from appliance.errors import BarcodeError, ConfigError, DeviceMisconfigured, DeviceUnavailable
from drivers.base import Device, Health, simulated
from drivers.keymaps import KEY_ENTER, KEY_KPENTER, KEY_TAB, KeyTranslator, Layout, get_layout
from drivers.transport import SerialTransport, Transport

__all__ = [
    "Backoff",
    "Decoded",
    "EvdevLink",
    "EvdevScanner",
    "Outcome",
    "ReaderThread",
    "RejectCallback",
    "Rejected",
    "ScanCallback",
    "Scanner",
    "ScannerSettings",
    "SerialFramer",
    "SerialFraming",
    "SerialScanner",
    "SimulatedScanner",
    "Terminator",
    "WedgeDecoder",
    "link_errors",
    "open_scanner",
    "parse_raw",
    "parsing",
    "require_evdev",
    "split_aim",
]

log = logging.getLogger(__name__)

#: ``on_scan(code, symbology)``: a decoded code and its AIM identifier (or None).
ScanCallback = Callable[[str, str | None], None]
#: ``on_reject(reason)``: one line saying why input was dropped; never holds the data.
RejectCallback = Callable[[str], None]

SCAN_TIMEOUT = 0.1
KEY_GAP = 0.03
MAX_GAP = 0.06

EV_KEY = 1  # linux/input-event-codes.h
_AIM = re.compile(r"\][A-Za-z][0-9A-Za-z]")


class Terminator(StrEnum):
    """What ends a code typed by a keyboard-wedge device."""

    ENTER = "enter"
    TAB = "tab"
    NONE = "none"  # a pause longer than the scan timeout


@dataclass(frozen=True)
class Decoded:
    """A complete code (or badge read) as typed, AIM prefix included."""

    text: str
    at: float


@dataclass(frozen=True)
class Rejected:
    """Input that was dropped, and why (never the data itself)."""

    reason: str
    at: float


Outcome = Decoded | Rejected


def split_aim(text: str) -> tuple[str, str | None]:
    """Split a leading AIM symbology identifier (``]`` + code + modifier) off the data."""
    if len(text) > 3 and _AIM.match(text):
        return text[3:], text[:3]
    return text, None


class InputEventLike(Protocol):
    """What :meth:`WedgeDecoder.feed_event` needs of an ``evdev.InputEvent``."""

    type: int
    code: int
    value: int

    def timestamp(self) -> float: ...


class WedgeDecoder:
    """Turns key events of a keyboard-wedge device into codes. Pure: time comes with the events.

    Feed ``(timestamp, keycode, value)`` with :meth:`feed` or evdev events with
    :meth:`feed_event`; call :meth:`tick` when time passes without events so a pending
    sequence can time out. Each call returns the outcomes it completed.
    """

    def __init__(
        self,
        layout: Layout | str = "us",
        *,
        terminator: Terminator = Terminator.ENTER,
        scan_timeout: float = SCAN_TIMEOUT,
        key_gap: float = KEY_GAP,
        max_gap: float = MAX_GAP,
        max_length: int = MAX_SCAN_LENGTH,
    ) -> None:
        if not 0 < key_gap <= max_gap <= scan_timeout:
            raise ConfigError(
                f"wedge timing needs 0 < key_gap <= max_gap <= scan_timeout, got {key_gap}, {max_gap}, {scan_timeout}"
            )
        if max_length < 1:
            raise ConfigError(f"max_length must be at least 1, got {max_length}")
        self.layout = get_layout(layout) if isinstance(layout, str) else layout
        self.terminator = Terminator(terminator)
        self.scan_timeout = scan_timeout
        self.key_gap = key_gap
        self.max_gap = max_gap
        self.max_length = max_length
        self._end_keys = {
            Terminator.ENTER: frozenset({KEY_ENTER, KEY_KPENTER}),
            Terminator.TAB: frozenset({KEY_TAB}),
            Terminator.NONE: frozenset(),
        }[self.terminator]
        self._keys = KeyTranslator(self.layout)
        self._last: float | None = None
        self._clear()

    def _clear(self) -> None:
        self._chars: list[str] = []
        self._length = 0
        self._presses: list[float] = []
        self._repeat = False
        self._overflow = False

    def reset(self) -> None:
        """Forget everything, keyboard state included (after a reconnect)."""
        self._keys.reset()
        self._last = None
        self._clear()

    @property
    def deadline(self) -> float | None:
        """When :meth:`tick` will end the pending sequence, or None if nothing is pending."""
        if self._last is None or not self._presses:
            return None
        return self._last + self.scan_timeout

    def feed_event(self, event: InputEventLike) -> list[Outcome]:
        """Feed an ``evdev.InputEvent``; non-key events (SYN, MSC scan codes) are ignored."""
        if event.type != EV_KEY:
            return []
        return self.feed(event.timestamp(), event.code, event.value)

    def feed(self, timestamp: float, code: int, value: int) -> list[Outcome]:
        """Feed one key event: ``value`` is 1 press, 0 release, 2 autorepeat."""
        out = self.tick(timestamp)
        self._last = timestamp
        if value == 2:
            self._repeat = True
            return out
        if value == 1:
            self._presses.append(timestamp)
            if code in self._end_keys and not self._keys.composing:
                out.extend(self._finish(timestamp))
                return out
        self._append(self._keys.key(code, value))
        return out

    def tick(self, now: float) -> list[Outcome]:
        """End the pending sequence if nothing was typed for longer than the scan timeout."""
        if self._last is None or now - self._last <= self.scan_timeout or not self._presses:
            return []
        text = self._take()
        at, hand = self._last, self._hand_typed(self._presses)
        verdict = self._verdict(text, at)
        keys, overflow = len(self._presses), self._overflow
        self._clear()
        if not text and not overflow:
            return []
        if self.terminator == Terminator.NONE:
            return [verdict]
        if hand is not None:
            log.debug("dropped %d unterminated keys typed by hand", keys)
            return []
        return [Rejected(f"incomplete scan: no {self.terminator} within {self.scan_timeout:g} s", at)]

    def _append(self, text: str) -> None:
        if not text or self._overflow:
            return
        if self._length + len(text) > self.max_length:
            self._overflow = True
            self._chars.clear()
            return
        self._chars.append(text)
        self._length += len(text)

    def _take(self) -> str:
        self._append(self._keys.flush())
        return "".join(self._chars)

    def _finish(self, at: float) -> list[Outcome]:
        text = self._take()
        verdict = self._verdict(text, at)
        empty = not text and not self._overflow
        self._clear()
        return [] if empty else [verdict]

    def _verdict(self, text: str, at: float) -> Outcome:
        """The pending sequence as a code, or why it is not one."""
        hand = self._hand_typed(self._presses)
        if hand is not None:
            return Rejected(hand, at)
        if self._overflow:
            return Rejected(f"scan longer than {self.max_length} characters", at)
        return Decoded(text, at)

    def _hand_typed(self, presses: Sequence[float]) -> str | None:
        """Why these key presses look typed by a person, or None if they came at scanner speed."""
        if self._repeat:
            return "typed by hand (a key was held down)"
        gaps = [b - a for a, b in pairwise(presses)]
        if not gaps:
            return "typed by hand (a single key)"
        median = statistics.median(gaps)
        if median > self.key_gap:
            return f"typed by hand (median key gap {median * 1000:.0f} ms > {self.key_gap * 1000:.0f} ms)"
        worst = max(gaps)
        if worst > self.max_gap:
            return f"hand typing mixed into a scan (a {worst * 1000:.0f} ms pause)"
        return None


@dataclass(frozen=True)
class SerialFraming:
    """How a serial scanner frames each code."""

    terminator: Literal["cr", "lf", "crlf"] = "cr"
    #: Codes arrive as STX data ETX (a terminator after ETX is ignored).
    stx_etx: bool = False
    max_length: int = MAX_SCAN_LENGTH
    encoding: str = "utf-8"
    #: An unterminated line older than this (seconds) is rejected.
    line_timeout: float = 0.5

    def __post_init__(self) -> None:
        if self.terminator not in ("cr", "lf", "crlf"):
            raise ConfigError(f"serial terminator must be cr, lf or crlf, got {self.terminator!r}")
        if self.max_length < 1:
            raise ConfigError(f"serial max_length must be at least 1, got {self.max_length}")
        if self.line_timeout <= 0:
            raise ConfigError(f"serial line_timeout must be positive, got {self.line_timeout}")
        try:
            "".encode(self.encoding)
        except LookupError:
            raise ConfigError(f"unknown serial encoding {self.encoding!r}") from None


_STX, _ETX = 0x02, 0x03
_CR, _LF = 0x0D, 0x0A
#: Control characters that belong in scan data: GS (GS1 FNC1), RS and EOT (ISO/IEC 15434), FS.
_DATA_CONTROLS = frozenset("\x1c\x1d\x1e\x04")


class SerialFramer:
    """Splits a serial scanner's byte stream into codes. Pure: time is passed in."""

    def __init__(self, framing: SerialFraming | None = None) -> None:
        self.framing = framing or SerialFraming()
        self._end = {"cr": b"\r", "lf": b"\n", "crlf": b"\r\n"}[self.framing.terminator]
        self.reset()

    def reset(self) -> None:
        """Drop any partial line."""
        self._buf = bytearray()
        self._started: float | None = None
        self._overflow = False
        self._in_frame = False
        self._stray = False

    def feed(self, data: bytes, now: float) -> list[Outcome]:
        """Feed received bytes; return completed codes and rejected lines."""
        out = self.tick(now)
        for byte in data:
            if self.framing.stx_etx:
                self._frame_byte(byte, now, out)
            else:
                self._line_byte(byte, now, out)
        return out

    def tick(self, now: float) -> list[Outcome]:
        """Reject a partial line that has waited longer than the line timeout."""
        if self._started is None or now - self._started <= self.framing.line_timeout:
            return []
        self.reset()
        return [Rejected(f"incomplete line: no terminator within {self.framing.line_timeout:g} s", now)]

    def _line_byte(self, byte: int, now: float, out: list[Outcome]) -> None:
        if not self._buf and not self._overflow:
            if byte in (_CR, _LF):
                return  # a blank line, or the LF of a CRLF sent to a CR-configured port
            self._started = now
        if not self._overflow:
            self._buf.append(byte)
        if self._buf.endswith(self._end) or (self._overflow and byte == self._end[-1]):
            overflow, line = self._overflow, bytes(self._buf)
            self.reset()
            if overflow:
                out.append(Rejected(f"line longer than {self.framing.max_length} bytes", now))
            else:
                self._emit(line, now, out)
        elif len(self._buf) > self.framing.max_length + len(self._end):
            self._overflow = True
            self._buf.clear()

    def _frame_byte(self, byte: int, now: float, out: list[Outcome]) -> None:
        if byte == _STX:
            if self._in_frame or self._stray:
                out.append(Rejected("garbage: bytes outside an STX/ETX frame", now))
            self.reset()
            self._in_frame, self._started = True, now
        elif not self._in_frame:
            if byte in (_CR, _LF):
                if self._stray:
                    out.append(Rejected("garbage: bytes outside an STX/ETX frame", now))
                self.reset()
            else:
                self._stray = True
                if self._started is None:
                    self._started = now
        elif byte == _ETX:
            overflow, line = self._overflow, bytes(self._buf)
            self.reset()
            if overflow:
                out.append(Rejected(f"frame longer than {self.framing.max_length} bytes", now))
            else:
                self._emit(line, now, out)
        elif not self._overflow:
            self._buf.append(byte)
            if len(self._buf) > self.framing.max_length:
                self._overflow = True
                self._buf.clear()

    def _emit(self, line: bytes, now: float, out: list[Outcome]) -> None:
        line = line.strip(b"\r\n")
        if not line:
            return
        try:
            text = line.decode(self.framing.encoding)
        except UnicodeDecodeError:
            out.append(Rejected(f"garbage: not valid {self.framing.encoding} text", now))
            return
        if len(text) > self.framing.max_length:
            out.append(Rejected(f"line longer than {self.framing.max_length} characters", now))
        elif not all(ch.isprintable() or ch in _DATA_CONTROLS for ch in text):
            out.append(Rejected("garbage: control characters in the line", now))
        else:
            out.append(Decoded(text, now))


@dataclass(frozen=True)
class Backoff:
    """Reconnect delays: ``initial`` seconds, doubling to ``cap``."""

    initial: float = 1.0
    cap: float = 30.0

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.cap:
            raise ConfigError(f"back-off needs 0 < initial <= cap, got {self.initial}, {self.cap}")


class Link(Protocol):
    """A device connection driven by :class:`ReaderThread`."""

    def open(self) -> None:
        """Connect; raise DeviceUnavailable (retry later) or DeviceMisconfigured (give up)."""
        ...

    def pump(self) -> None:
        """Wait briefly for input and process it; raise DeviceUnavailable when the device is lost."""
        ...

    def release(self) -> None:
        """Disconnect; safe after a failure."""
        ...


class ReaderThread:
    """Runs a :class:`Link` on its own thread: open, pump until lost, back off, reopen.

    Health goes unavailable on loss and back to ok on reconnect; the base class logs
    each change once.
    """

    def __init__(self, device: Device, link: Link, backoff: Backoff | None = None) -> None:
        self._device = device
        self._link = link
        self._backoff = backoff or Backoff()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"reader-{device.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop and join the thread; safe to call twice."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        delay = self._backoff.initial
        while not self._stop.is_set():
            if self._connect():
                delay = self._backoff.initial
                self._pump()
                if self._stop.is_set():
                    return
            self._stop.wait(delay)
            delay = min(delay * 2, self._backoff.cap)

    def _connect(self) -> bool:
        """Open the link; False (health set) when it cannot be opened now."""
        try:
            self._link.open()
        except DeviceMisconfigured as exc:
            self._device.set_health(Health.UNAVAILABLE, str(exc))
            self._stop.set()
            return False
        except DeviceUnavailable as exc:
            self._device.set_health(Health.UNAVAILABLE, str(exc))
            return False
        except Exception as exc:
            log.exception("opening %s failed", self._device.name)
            self._device.set_health(Health.UNAVAILABLE, f"cannot open: {exc}")
            return False
        self._device.set_health(Health.OK)
        return True

    def _pump(self) -> None:
        """Pump the open link until it is lost or the thread is stopped."""
        try:
            while not self._stop.is_set():
                self._link.pump()
        except DeviceUnavailable as exc:
            self._device.set_health(Health.UNAVAILABLE, str(exc))
        except Exception as exc:
            log.exception("reader of %s failed", self._device.name)
            self._device.set_health(Health.UNAVAILABLE, f"reader failed: {exc}")
        finally:
            self._link.release()


class InputDeviceLike(Protocol):
    """The part of ``evdev.InputDevice`` the link uses."""

    def fileno(self) -> int: ...

    def read(self) -> Iterator[InputEventLike]: ...

    def grab(self) -> None: ...

    def ungrab(self) -> None: ...

    def close(self) -> None: ...


class EvdevLink:
    """An evdev keyboard-wedge device, grabbed exclusively, feeding a :class:`WedgeDecoder`.

    ``clock`` must match the kernel's event timestamps (wall time by default).
    """

    def __init__(
        self,
        path: str,
        decoder: WedgeDecoder,
        handle: Callable[[list[Outcome]], None],
        *,
        clock: Callable[[], float] = time.time,
        poll: float = 0.2,
    ) -> None:
        self.path = path
        self._decoder = decoder
        self._handle = handle
        self._clock = clock
        self._poll = poll
        self._dev: InputDeviceLike | None = None

    def open(self) -> None:
        evdev = require_evdev()
        try:
            dev: InputDeviceLike = evdev.InputDevice(self.path)
        except OSError as exc:
            raise DeviceUnavailable(f"cannot open {self.path}: {exc.strerror or exc}") from exc
        try:
            dev.grab()
        except OSError as exc:
            dev.close()
            raise DeviceUnavailable(f"cannot grab {self.path} (held by another program?): {exc}") from exc
        self._decoder.reset()
        self._dev = dev

    def pump(self) -> None:
        dev = self._dev
        if dev is None:
            raise DeviceUnavailable(f"{self.path} is not open")
        timeout = self._poll
        deadline = self._decoder.deadline
        if deadline is not None:
            timeout = max(0.0, min(timeout, deadline - self._clock()))
        outcomes: list[Outcome] = []
        try:
            ready, _, _ = select.select([dev.fileno()], [], [], timeout)
            if ready:
                with contextlib.suppress(BlockingIOError):  # woken with nothing to read
                    for event in dev.read():
                        outcomes.extend(self._decoder.feed_event(event))
        except OSError as exc:
            self._handle(outcomes)
            raise DeviceUnavailable(f"{self.path} disconnected: {exc.strerror or exc}") from exc
        outcomes.extend(self._decoder.tick(self._clock()))
        self._handle(outcomes)

    def release(self) -> None:
        dev, self._dev = self._dev, None
        if dev is None:
            return
        with contextlib.suppress(OSError):  # a device that is gone cannot be ungrabbed
            dev.ungrab()
        with contextlib.suppress(OSError):
            dev.close()


def require_evdev() -> Any:
    """The evdev module, imported on first use; DeviceMisconfigured when it is missing."""
    try:
        import evdev
    except ImportError as exc:
        raise DeviceMisconfigured("evdev is not installed (pip install tillbox[linux-input])") from exc
    return evdev


def _escaping_errors() -> tuple[type[Exception], ...]:
    """Errors pyserial can raise past :class:`SerialTransport` when a port vanishes or refuses settings."""
    errors: list[type[Exception]] = [OSError]
    with contextlib.suppress(ImportError):
        import serial

        errors.append(serial.SerialException)
    with contextlib.suppress(ImportError):
        import termios

        errors.append(termios.error)
    return tuple(errors)


@contextlib.contextmanager
def link_errors(what: str) -> Iterator[None]:
    """Translate serial-link failures that escape the transport into DeviceUnavailable."""
    try:
        yield
    except DeviceUnavailable:
        raise
    except Exception as exc:
        if isinstance(exc, _escaping_errors()):
            raise DeviceUnavailable(f"{what}: {exc}") from exc
        raise


class SerialLink:
    """A serial scanner: a :class:`SerialTransport` feeding a :class:`SerialFramer`."""

    def __init__(
        self,
        port: str,
        framer: SerialFramer,
        handle: Callable[[list[Outcome]], None],
        *,
        baudrate: int = 9600,
        connect: Callable[[], Transport] | None = None,
        clock: Callable[[], float] = time.monotonic,
        poll: float = 0.2,
    ) -> None:
        self.port = port
        self._framer = framer
        self._handle = handle
        self._connect = connect or (lambda: SerialTransport(port, baudrate))
        self._clock = clock
        self._poll = poll
        self._transport: Transport | None = None

    def open(self) -> None:
        with link_errors(f"cannot open {self.port}"):
            self._transport = self._connect()
        self._framer.reset()

    def pump(self) -> None:
        if self._transport is None:
            raise DeviceUnavailable(f"{self.port} is not open")
        with link_errors(f"{self.port} failed"):
            data = self._transport.read(1, self._poll)  # returns as soon as a byte arrives
            if data:
                data += self._transport.read(4096, 0)
        now = self._clock()
        self._handle(self._framer.feed(data, now) if data else self._framer.tick(now))

    def release(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            with contextlib.suppress(DeviceUnavailable), link_errors(f"closing {self.port}"):
                transport.close()


class Scanner(Device):
    """A barcode scanner: calls ``on_scan(code, symbology)`` for every code it reads."""

    def __init__(self, name: str, on_scan: ScanCallback, *, on_reject: RejectCallback | None = None) -> None:
        super().__init__(name)
        self._on_scan = on_scan
        self._on_reject = on_reject

    def _deliver(self, text: str) -> None:
        code, symbology = split_aim(text)
        try:
            self._on_scan(code, symbology)
        except Exception:
            log.exception("scan handler of %s failed", self.name)

    def _reject(self, reason: str) -> None:
        log.info("%s rejected input: %s", self.name, reason)
        if self._on_reject is None:
            return
        try:
            self._on_reject(reason)
        except Exception:
            log.exception("reject handler of %s failed", self.name)


class EvdevScanner(Scanner):
    """A USB HID keyboard-wedge scanner read through evdev, grabbed so it types nowhere else.

    ``path`` should be stable across replugging (``/dev/input/by-id/...-event-kbd``).
    Human typing on the device is rejected, not delivered (see the module notes).
    """

    def __init__(
        self,
        path: str,
        on_scan: ScanCallback,
        *,
        on_reject: RejectCallback | None = None,
        decoder: WedgeDecoder | None = None,
        name: str = "scanner",
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(name, on_scan, on_reject=on_reject)
        self.decoder = decoder or WedgeDecoder()
        self._reader = start_wedge(self, path, self.decoder, self._deliver, self._reject, backoff=backoff, clock=clock)

    def close(self) -> None:
        if self._closed:
            return
        super().close()
        self._reader.stop()


def start_wedge(device: Device, path: str, decoder: WedgeDecoder, accept: Callable[[str], None],
                reject: Callable[[str], None], *, backoff: Backoff | None,
                clock: Callable[[], float]) -> ReaderThread:  # fmt: skip
    """Read a keyboard-wedge device (scanner, badge reader) through evdev on its own thread.

    Each decoded line goes to ``accept``, each rejected one (human typing, garbage) to
    ``reject``; the thread reconnects with ``backoff`` when the device goes away.
    """
    require_evdev()

    def handle(outcomes: list[Outcome]) -> None:
        for outcome in outcomes:
            if isinstance(outcome, Decoded):
                accept(outcome.text)
            else:
                reject(outcome.reason)

    reader = ReaderThread(device, EvdevLink(path, decoder, handle, clock=clock), backoff)
    reader.start()
    return reader


class SerialScanner(Scanner):
    """A scanner on a serial port (USB CDC/ACM or RS-232).

    A malformed or oversized line is rejected and marks the scanner degraded until the
    next good code; the reader keeps going.
    """

    def __init__(
        self,
        port: str,
        on_scan: ScanCallback,
        *,
        on_reject: RejectCallback | None = None,
        framing: SerialFraming | None = None,
        baudrate: int = 9600,
        name: str = "scanner",
        backoff: Backoff | None = None,
        connect: Callable[[], Transport] | None = None,
    ) -> None:
        super().__init__(name, on_scan, on_reject=on_reject)
        self.framer = SerialFramer(framing)
        link = SerialLink(port, self.framer, self._handle, baudrate=baudrate, connect=connect)
        self._reader = ReaderThread(self, link, backoff)
        self._reader.start()

    def _handle(self, outcomes: list[Outcome]) -> None:
        for outcome in outcomes:
            if isinstance(outcome, Decoded):
                if self.health.health == Health.DEGRADED:
                    self.set_health(Health.OK)
                self._deliver(outcome.text)
            else:
                self.set_health(Health.DEGRADED, f"rejected serial data: {outcome.reason}")
                self._reject(outcome.reason)

    def close(self) -> None:
        if self._closed:
            return
        super().close()
        self._reader.stop()


class SimulatedScanner(Scanner):
    """A scanner you drive from code: ``feed("4006381333931")`` or ``feed("]E04006381333931")``.

    The callback runs on the caller's thread.
    """

    def __init__(
        self, on_scan: ScanCallback, *, on_reject: RejectCallback | None = None, name: str = "scanner"
    ) -> None:
        super().__init__(name, on_scan, on_reject=on_reject)
        self.fed: list[str] = []

    def feed(self, code: str) -> None:
        """Deliver ``code`` as if scanned (trailing CR/LF stripped, AIM prefix split off)."""
        if self._closed:
            raise DeviceUnavailable(f"{self.name} is closed")
        if self.health.health == Health.UNAVAILABLE:
            raise DeviceUnavailable(f"{self.name} is unplugged")
        self.fed.append(code)
        text = code.strip("\r\n")
        if not text:
            self._reject("empty scan")
            return
        self._deliver(text)

    def unplug(self) -> None:
        """Simulate pulling the cable."""
        self.set_health(Health.UNAVAILABLE, "simulated unplug")

    def replug(self) -> None:
        """Simulate plugging it back in."""
        self.set_health(Health.OK)


def parse_raw(
    code: str,
    symbology: str | None,
    *,
    today: date,
    layouts: Sequence[VariableMeasureLayout] = DEFAULT_LAYOUTS,
) -> Scan:
    """Parse a delivered code, its AIM identifier put back in front; raises BarcodeError."""
    return parse_scan((symbology or "") + code, today=today, layouts=layouts)


def parsing(
    on_parsed: Callable[[Scan], None],
    *,
    today: Callable[[], date],
    layouts: Sequence[VariableMeasureLayout] = DEFAULT_LAYOUTS,
    on_rejected: Callable[[str, BarcodeError], None] | None = None,
) -> ScanCallback:
    """An ``on_scan`` that parses each code and hands on a :class:`Scan`.

    A code that does not parse goes to ``on_rejected(code, error)`` instead; nothing raises.
    """

    def on_scan(code: str, symbology: str | None) -> None:
        try:
            scan = parse_raw(code, symbology, today=today(), layouts=layouts)
        except BarcodeError as exc:
            log.info("scan rejected: %s", exc)
            if on_rejected is not None:
                on_rejected(code, exc)
            return
        on_parsed(scan)

    return on_scan


@dataclass(frozen=True, kw_only=True)
class ScannerSettings:
    """Which scanner to open and how to read it."""

    backend: Literal["evdev", "serial", "sim"] = "sim"
    #: evdev device path or serial port.
    device: str = ""
    layout: str = "us"
    terminator: Terminator = Terminator.ENTER
    scan_timeout: float = SCAN_TIMEOUT
    key_gap: float = KEY_GAP
    max_gap: float = MAX_GAP
    baudrate: int = 9600
    framing: SerialFraming = SerialFraming()
    name: str = "scanner"

    def __post_init__(self) -> None:
        if self.backend not in ("evdev", "serial", "sim"):
            raise ConfigError(f"scanner backend must be evdev, serial or sim, got {self.backend!r}")
        if self.backend != "sim" and not self.device:
            raise ConfigError(f"a {self.backend} scanner needs a device path")
        if not 50 <= self.baudrate <= 4_000_000:
            raise ConfigError(f"scanner baudrate {self.baudrate} is out of range")
        Terminator(self.terminator)
        get_layout(self.layout)


def open_scanner(
    settings: ScannerSettings, on_scan: ScanCallback, *, on_reject: RejectCallback | None = None
) -> Scanner:
    """The scanner ``settings`` describe; a simulator when ``TILLBOX_DEVICES=sim``."""
    if simulated() or settings.backend == "sim":
        return SimulatedScanner(on_scan, on_reject=on_reject, name=settings.name)
    if settings.backend == "serial":
        return SerialScanner(
            settings.device,
            on_scan,
            on_reject=on_reject,
            framing=settings.framing,
            baudrate=settings.baudrate,
            name=settings.name,
        )
    decoder = WedgeDecoder(
        settings.layout,
        terminator=settings.terminator,
        scan_timeout=settings.scan_timeout,
        key_gap=settings.key_gap,
        max_gap=settings.max_gap,
    )
    return EvdevScanner(settings.device, on_scan, on_reject=on_reject, decoder=decoder, name=settings.name)
