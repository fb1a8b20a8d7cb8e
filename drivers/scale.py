"""Serial retail scales speaking the Mettler Toledo 8217 protocol, and a simulator peer.

8217 ("weight only"), usually 9600 baud 7E1. The host sends one ASCII command:

=============  ================================================================
``W``          weight: ``STX <weight> [N] CR``; the weight keeps its leading zeros
               and decimal point (``WW.WWW`` kg, ``WW.WW`` lb); ``N`` marks a net
               weight. While there is no valid weight (motion, over capacity, under
               zero, zero error) the reply is ``STX ? <status> CR`` instead.
``Z``          zero (only when stable and within the zero capture range).
``T``          tare the load on the platter (stable and above zero).
``T<5d> CR``   preset tare, five digits read as ``WW.WWW`` kg or ``WWW.WW`` lb.
``C``          clear the tare.
=============  ================================================================

``Z``, ``T`` and ``C`` (and, on most models, any unknown command) answer
``STX ? <status> CR``. Status byte bits: 0 motion, 1 over capacity, 2 under zero,
3 outside the zero capture range, 4 centre of zero, 5 net weight, 6 always 1,
7 parity (ignored here).

The protocol carries no unit, so the driver is told the scale's unit; weights come
out as exact ``Decimal`` kilograms (1 lb = 0.45359237 kg by definition), never float.
There is no side-effect-free status command: :meth:`Scale.status` asks for the weight.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from enum import StrEnum

from appliance.errors import DeviceUnavailable, InputError
from drivers.base import Device, Health, simulated
from drivers.scanner import Backoff, link_errors
from drivers.transport import SerialTransport, Transport

__all__ = [
    "LB_IN_KG",
    "Scale",
    "ScaleNotReady",
    "ScaleProtocolError",
    "ScaleReading",
    "ScaleStatus",
    "SimulatedScale",
    "Toledo8217Peer",
    "WeightUnit",
    "encode_preset_tare",
    "encode_status",
    "encode_weight",
    "open_scale",
    "parse_reply",
    "serial_scale",
    "to_kg",
]

STX = b"\x02"
CR = b"\r"
CMD_WEIGHT = b"W"
CMD_ZERO = b"Z"
CMD_TARE = b"T"
CMD_CLEAR_TARE = b"C"
#: Kilograms in one avoirdupois pound, exactly.
LB_IN_KG = Decimal("0.45359237")
#: Longest reply the driver waits for before calling it garbage.
MAX_REPLY = 32

_WEIGHT_REPLY = re.compile(rb"\x02 *([0-9]{1,7}(?:\.[0-9]{1,4})?)(N?)\r")
_STATUS_REPLY = re.compile(rb"\x02\?(.)\r", re.DOTALL)
_ALWAYS_ONE = 0x40


class WeightUnit(StrEnum):
    """The unit a scale is set up to weigh in."""

    KG = "kg"
    LB = "lb"


class ScaleProtocolError(DeviceUnavailable):
    """The scale sent something that is not an 8217 reply (line noise, wrong protocol)."""


class _NoReply(DeviceUnavailable):
    """The scale did not answer in time (switched off?); the port itself is fine."""


class ScaleNotReady(InputError):
    """No usable weight now: still moving, over capacity, below zero, or a command was refused."""

    retryable = True


@dataclass(frozen=True)
class ScaleStatus:
    """The 8217 status byte."""

    motion: bool = False
    over_capacity: bool = False
    under_zero: bool = False
    outside_zero_range: bool = False
    center_of_zero: bool = False
    net: bool = False

    @classmethod
    def from_byte(cls, value: int) -> ScaleStatus:
        """Decode a status byte; bit 6 must be set, bit 7 (parity) is ignored."""
        if not value & _ALWAYS_ONE:
            raise ScaleProtocolError(f"status byte 0x{value:02x} lacks the always-set bit 6")
        return cls(*(bool(value & (1 << bit)) for bit in range(6)))

    def to_byte(self, *, parity: bool = True) -> int:
        """Encode as a status byte, with even parity in bit 7 when ``parity``."""
        flags = (self.motion, self.over_capacity, self.under_zero, self.outside_zero_range,
                 self.center_of_zero, self.net)  # fmt: skip
        value = _ALWAYS_ONE | sum(1 << bit for bit, on in enumerate(flags) if on)
        if parity and value.bit_count() % 2:
            value |= 0x80
        return value

    @property
    def weighable(self) -> bool:
        """True when nothing stops the scale from reporting a weight."""
        return not (self.motion or self.over_capacity or self.under_zero or self.outside_zero_range)

    def describe(self) -> str:
        """The set flags as words, e.g. ``"motion, over capacity"``; ``"ok"`` if none."""
        names = [
            name.replace("_", " ")
            for name in ("motion", "over_capacity", "under_zero", "outside_zero_range", "center_of_zero", "net")
            if getattr(self, name)
        ]
        return ", ".join(names) or "ok"


@dataclass(frozen=True)
class ScaleReading:
    """One reply to a weight request: a weight, or only the status saying why not."""

    status: ScaleStatus
    unit: WeightUnit
    #: The weight in the scale's unit as it was sent, or None for a status-only reply.
    value: Decimal | None = None

    @property
    def weight_kg(self) -> Decimal | None:
        """The weight in kilograms (exact), or None."""
        return None if self.value is None else to_kg(self.value, self.unit)

    @property
    def stable(self) -> bool:
        """True when this reading carries a valid, settled weight."""
        return self.value is not None and self.status.weighable


def to_kg(value: Decimal, unit: WeightUnit) -> Decimal:
    """Convert a weight to kilograms exactly."""
    return value if unit == WeightUnit.KG else value * LB_IN_KG


def parse_reply(frame: bytes, unit: WeightUnit) -> ScaleReading:
    """Parse one ``STX ... CR`` reply; ScaleProtocolError for anything else."""
    match = _WEIGHT_REPLY.fullmatch(frame)
    if match:
        net = bool(match.group(2))
        return ScaleReading(ScaleStatus(net=net), unit, Decimal(match.group(1).decode("ascii")))
    match = _STATUS_REPLY.fullmatch(frame)
    if match:
        return ScaleReading(ScaleStatus.from_byte(match.group(1)[0]), unit)
    raise ScaleProtocolError(f"malformed scale reply ({len(frame)} bytes, starts {frame[:8]!r})")


def encode_weight(value: Decimal, unit: WeightUnit, *, net: bool = False) -> bytes:
    """A weight reply as a scale sends it: ``WW.WWW`` kg or ``WW.WW`` lb, zero-padded."""
    text = f"{value:06.3f}" if unit == WeightUnit.KG else f"{value:05.2f}"
    return STX + text.encode("ascii") + (b"N" if net else b"") + CR


def encode_status(status: ScaleStatus) -> bytes:
    """A status reply: ``STX ? <status> CR``."""
    return STX + b"?" + bytes([status.to_byte()]) + CR


def encode_preset_tare(weight_kg: Decimal, unit: WeightUnit) -> bytes:
    """The preset tare command for ``weight_kg``, rounded to the scale's 5 digits."""
    if unit == WeightUnit.KG:
        digits = (weight_kg * 1000).quantize(Decimal(1), ROUND_HALF_EVEN)
    else:
        digits = (weight_kg / LB_IN_KG * 100).quantize(Decimal(1), ROUND_HALF_EVEN)
    if not 0 <= digits <= 99999:
        raise InputError(f"preset tare {weight_kg} kg is outside what the scale accepts")
    return CMD_TARE + f"{int(digits):05d}".encode("ascii") + CR


def _preset_value(digits: bytes, unit: WeightUnit) -> Decimal:
    return Decimal(int(digits)).scaleb(-3 if unit == WeightUnit.KG else -2)


class Scale(Device):
    """An 8217 scale on a byte link (opened by ``connect``; reopened with back-off after a loss).

    Calls block (run them in an executor); one request is in flight at a time.
    """

    def __init__(
        self,
        connect: Callable[[], Transport],
        *,
        unit: WeightUnit = WeightUnit.KG,
        name: str = "scale",
        reply_timeout: float = 0.5,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(name)
        self.unit = WeightUnit(unit)
        self._connect = connect
        self._reply_timeout = reply_timeout
        self._backoff = backoff or Backoff()
        self._delay = self._backoff.initial
        self._retry_at = 0.0
        self._clock = clock
        self._io = threading.Lock()
        self._stop = threading.Event()
        self._transport: Transport | None = None

    def read(self) -> ScaleReading:
        """Ask for the weight once; a status-only reading when there is no valid weight."""
        return self._request(CMD_WEIGHT)

    def status(self) -> ScaleStatus:
        """The scale status, from a weight request (a weight reply means nothing is wrong)."""
        reading = self.read()
        if reading.value is None:
            return reading.status
        return ScaleStatus(net=reading.status.net, center_of_zero=reading.value == 0)

    def read_stable(self, *, timeout: float = 3.0, samples: int = 2, interval: float = 0.1) -> ScaleReading:
        """Poll until ``samples`` consecutive readings carry the same settled weight.

        Raises ScaleNotReady at once when over capacity or below zero, and when the weight
        has not settled within ``timeout`` seconds.
        """
        deadline = self._clock() + timeout
        last: ScaleReading | None = None
        count = 0
        while True:
            reading = self.read()
            if reading.status.over_capacity:
                raise ScaleNotReady("scale over capacity: take the load off")
            if reading.status.under_zero:
                raise ScaleNotReady("scale below zero: empty the platter and zero it")
            if reading.stable:
                count = count + 1 if last is not None and last.value == reading.value else 1
                last = reading
                if count >= samples:
                    return reading
            else:
                last, count = None, 0
            if self._clock() >= deadline:
                raise ScaleNotReady(
                    f"weight not stable within {timeout:g} s (scale reports {reading.status.describe()})"
                )
            if self._stop.wait(interval):
                raise DeviceUnavailable(f"{self.name} is closed")

    def zero(self) -> ScaleStatus:
        """Zero the scale; ScaleNotReady if it refused (moving or outside the zero range)."""
        status = self._command(CMD_ZERO)
        if not status.center_of_zero:
            raise ScaleNotReady(f"scale did not zero ({status.describe()})")
        return status

    def tare(self, preset_kg: Decimal | None = None) -> ScaleStatus:
        """Tare the load on the platter, or a preset tare; ScaleNotReady if refused."""
        command = CMD_TARE if preset_kg is None else encode_preset_tare(preset_kg, self.unit)
        status = self._command(command)
        if not status.net:
            raise ScaleNotReady(f"scale did not take the tare ({status.describe()})")
        return status

    def clear_tare(self) -> ScaleStatus:
        """Clear the tare (the scale ignores this while the weight is moving)."""
        return self._command(CMD_CLEAR_TARE)

    def close(self) -> None:
        if self._closed:
            return
        super().close()
        self._stop.set()
        with self._io:
            self._drop()

    def _command(self, command: bytes) -> ScaleStatus:
        reading = self._request(command)
        if reading.value is not None:
            self.set_health(Health.DEGRADED, "scale answered a command with a weight")
            raise ScaleProtocolError(f"scale answered {command[:1]!r} with a weight, not a status")
        return reading.status

    def _request(self, command: bytes) -> ScaleReading:
        with self._io:
            transport = self._open()
            try:
                with link_errors(f"{self.name} link failed"):
                    self._drain(transport)
                    transport.write(command)
                    frame = self._read_frame(transport)
                reading = parse_reply(frame, self.unit)
            except ScaleProtocolError as exc:
                self.set_health(Health.DEGRADED, str(exc))
                raise
            except _NoReply as exc:
                self.set_health(Health.UNAVAILABLE, str(exc))
                raise
            except DeviceUnavailable as exc:
                self._drop()
                self._schedule_retry()
                self.set_health(Health.UNAVAILABLE, str(exc))
                raise
        self.set_health(Health.OK)
        return reading

    def _open(self) -> Transport:
        if self._closed:
            raise DeviceUnavailable(f"{self.name} is closed")
        if self._transport is not None:
            return self._transport
        wait = self._retry_at - self._clock()
        if wait > 0:
            raise DeviceUnavailable(f"{self.name} is unavailable; next attempt in {wait:.1f} s")
        try:
            with link_errors(f"cannot open {self.name}"):
                self._transport = self._connect()
        except DeviceUnavailable as exc:
            self._schedule_retry()
            self.set_health(Health.UNAVAILABLE, str(exc))
            raise
        self._delay = self._backoff.initial
        return self._transport

    def _schedule_retry(self) -> None:
        self._retry_at = self._clock() + self._delay
        self._delay = min(self._delay * 2, self._backoff.cap)

    def _drop(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            with contextlib.suppress(DeviceUnavailable), link_errors(f"closing {self.name}"):
                transport.close()

    @staticmethod
    def _drain(transport: Transport) -> None:
        """Discard stale input (a late reply, noise) before a request."""
        for _ in range(16):
            if not transport.read(256, 0):
                return

    def _read_frame(self, transport: Transport) -> bytes:
        deadline = self._clock() + self._reply_timeout
        frame = bytearray()
        while True:
            remaining = deadline - self._clock()
            if remaining <= 0:
                if frame:
                    raise ScaleProtocolError(f"incomplete scale reply ({len(frame)} bytes, no CR)")
                raise _NoReply(f"{self.name} did not answer within {self._reply_timeout:g} s")
            byte = transport.read(1, remaining)
            if not byte:
                continue
            frame += byte
            if byte == CR:
                return bytes(frame)
            if len(frame) > MAX_REPLY:
                raise ScaleProtocolError(f"scale reply longer than {MAX_REPLY} bytes")


def serial_scale(
    port: str,
    *,
    unit: WeightUnit = WeightUnit.KG,
    baudrate: int = 9600,
    bytesize: int = 7,
    parity: str = "E",
    stopbits: float = 1,
    name: str = "scale",
    reply_timeout: float = 0.5,
    backoff: Backoff | None = None,
) -> Scale:
    """An 8217 scale on a serial port (defaults: 9600 baud, 7 data bits, even parity)."""

    def connect() -> Transport:
        return SerialTransport(port, baudrate, bytesize=bytesize, parity=parity, stopbits=stopbits)

    return Scale(connect, unit=unit, name=name, reply_timeout=reply_timeout, backoff=backoff)


class Toledo8217Peer:
    """The scale end of an 8217 link: answers commands on a pty master fd from a thread.

    Script it with :meth:`place` (load, and how many weight requests it keeps moving),
    and :meth:`inject` (raw bytes instead of the next reply; ``b""`` for no reply).
    Loads are in the peer's unit. ``requests`` records every command received.
    """

    def __init__(
        self,
        fd: int,
        *,
        unit: WeightUnit = WeightUnit.KG,
        capacity: Decimal = Decimal("15"),
        zero_range: Decimal = Decimal("0.3"),
    ) -> None:
        self.fd = fd
        self.unit = WeightUnit(unit)
        self.capacity = capacity
        self.zero_range = zero_range
        self.requests: list[bytes] = []
        self._load = Decimal(0)
        self._zero = Decimal(0)
        self._tare = Decimal(0)
        self._moving = 0
        self._injected: deque[bytes] = deque()
        self._buf = bytearray()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="toledo8217-peer", daemon=True)

    def start(self) -> Toledo8217Peer:
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop answering and join the thread (the fd stays open; its owner closes it)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def place(self, load: Decimal, *, settle_after: int = 0) -> None:
        """Put ``load`` (gross, in the peer's unit) on the platter, moving for ``settle_after`` requests."""
        with self._lock:
            self._load = Decimal(load)
            self._moving = settle_after

    def inject(self, reply: bytes) -> None:
        """Send ``reply`` instead of the next answer (garbage, or ``b""`` for none)."""
        with self._lock:
            self._injected.append(reply)

    @property
    def tare_value(self) -> Decimal:
        with self._lock:
            return self._tare

    def status(self) -> ScaleStatus:
        """The status the scale would report now."""
        with self._lock:
            return self._status()

    def _status(self, *, outside_zero_range: bool = False) -> ScaleStatus:
        gross = self._load - self._zero
        shown = gross - self._tare
        return ScaleStatus(
            motion=self._moving > 0,
            over_capacity=gross > self.capacity,
            under_zero=shown < 0,
            outside_zero_range=outside_zero_range,
            center_of_zero=shown == 0 and self._moving == 0,
            net=self._tare > 0,
        )

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self.fd], [], [], 0.05)
                if not ready:
                    continue
                data = os.read(self.fd, 256)
            except OSError:  # no slave side open right now (closed or reconnecting)
                self._stop.wait(0.02)
                continue
            if not data:
                self._stop.wait(0.02)
                continue
            self._buf += data
            self._process()

    def _process(self) -> None:
        while self._buf:
            first = bytes(self._buf[:1])
            if first in (b"\r", b"\n"):
                del self._buf[:1]
                continue
            if first == CMD_TARE:
                command = self._take_tare()
                if command is None:
                    return
            else:
                command = bytes(first)
                del self._buf[:1]
            self.requests.append(command)
            self._reply(self._answer(command))

    def _take_tare(self) -> bytes | None:
        """Split off ``T`` or ``T<5 digits>CR``; None while a preset is still arriving."""
        if len(self._buf) == 1:  # a preset's digits may still be on their way
            ready, _, _ = select.select([self.fd], [], [], 0.05)
            if ready:
                with contextlib.suppress(OSError):
                    self._buf += os.read(self.fd, 256)
        end = 1
        while end < len(self._buf) and self._buf[end : end + 1].isdigit():
            end += 1
        if end == 1:
            del self._buf[:1]
            return CMD_TARE
        if end == len(self._buf) and end <= 6:
            return None  # wait for the rest of the preset
        if self._buf[end : end + 1] == CR:
            end += 1
        command = bytes(self._buf[:end])  # a malformed preset is answered with the status only
        del self._buf[:end]
        return command

    def _answer(self, command: bytes) -> bytes:
        with self._lock:
            if self._injected:
                return self._injected.popleft()
            head = command[:1]
            if head == CMD_WEIGHT:
                return self._weight()
            outside = False
            if head == CMD_ZERO and not self._moving:
                if self._tare == 0 and abs(self._load - self._zero) <= self.zero_range:
                    self._zero = self._load
                else:
                    outside = True
            elif command == CMD_TARE and not self._moving and self._tare == 0:
                gross = self._load - self._zero
                if gross > 0:
                    self._tare = gross
            elif head == CMD_TARE and len(command) == 7:
                self._tare = _preset_value(command[1:6], self.unit)
            elif head == CMD_CLEAR_TARE and not self._moving:
                self._tare = Decimal(0)
            return encode_status(self._status(outside_zero_range=outside))

    def _weight(self) -> bytes:
        status = self._status()
        if self._moving:
            self._moving -= 1
        if not status.weighable:
            return encode_status(status)
        shown = self._load - self._zero - self._tare
        return encode_weight(shown, self.unit, net=self._tare > 0)

    def _reply(self, data: bytes) -> None:
        if data:
            with contextlib.suppress(OSError):
                os.write(self.fd, data)


class SimulatedScale(Scale):
    """A :class:`Scale` talking real 8217 over a pseudo-terminal to a :class:`Toledo8217Peer`.

    For demo mode and tests: script the scale through ``.peer``.
    """

    def __init__(
        self,
        *,
        unit: WeightUnit = WeightUnit.KG,
        capacity: Decimal = Decimal("15"),
        name: str = "scale",
        reply_timeout: float = 0.5,
    ) -> None:
        self._master, self._slave = os.openpty()
        try:
            self.port = os.ttyname(self._slave)
            self.peer = Toledo8217Peer(self._master, unit=unit, capacity=capacity).start()
        except BaseException:
            os.close(self._master)
            os.close(self._slave)
            raise
        port = self.port
        super().__init__(lambda: SerialTransport(port), unit=unit, name=name, reply_timeout=reply_timeout)

    def close(self) -> None:
        if self._closed:
            return
        super().close()
        self.peer.close()
        os.close(self._slave)
        os.close(self._master)


def open_scale(port: str, *, unit: WeightUnit = WeightUnit.KG, name: str = "scale") -> Scale:
    """The 8217 scale on ``port`` (9600 7E1); a :class:`SimulatedScale` when ``port`` is empty
    or ``TILLBOX_DEVICES=sim``."""
    if simulated() or not port:
        return SimulatedScale(unit=unit, name=name)
    return serial_scale(port, unit=unit, name=name)
