"""Host driver of the self-checkout companion board (a Pico on USB running ``firmware/``).

:class:`CompanionBoard` finds the board by USB VID/PID, says hello (protocol version and the
heartbeat timeout the board should enforce), then from its own thread:

* keeps the light tower showing the pattern of the appliance state (:class:`LightState`);
* sends a heartbeat every ``heartbeat_interval``; the STATUS reply carries the input levels
  and per-input activation counters, so a press whose EVENT frame was lost is still seen;
* turns help-button activations into :class:`AttendantCall` and every input change into
  :class:`InputChange`, through callbacks called on the driver's thread (the daemon hands
  them to its loop with ``call_soon_threadsafe``); a raising callback is logged, not fatal;
* reconnects with bounded back-off when the board goes away or stops answering; health goes
  unavailable, then ok again, logged once each way (a version mismatch is permanent).

Frames that fail the checksum or make no sense are counted (:attr:`CompanionBoard.stats`) and
skipped. The board echoes nothing it does not understand, but a board left at the MicroPython
REPL echoes our own frames: replies are matched by kind *and* sequence number, and if the
hello goes unanswered the driver sends Ctrl-B Ctrl-D once, which restarts the firmware from
the REPL and is noise to a running firmware.

Link timeouts use ``time.monotonic`` (they are I/O timing); event timestamps use ``clock``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum, StrEnum
from types import MappingProxyType
from typing import Any

from appliance.clock import Clock, SystemClock
from appliance.errors import DeviceMisconfigured, DeviceUnavailable
from drivers.base import Device, Health
from drivers.companion import protocol as proto
from drivers.scanner import Backoff, ReaderThread, link_errors
from drivers.transport import SerialTransport, Transport

log = logging.getLogger(__name__)

PICO_VID = 0x2E8A
MICROPYTHON_PID = 0x0005
WAKE = b"\r\x02\x04"  # at the REPL: leave raw mode, soft reset (reruns main.py)
_REPLIES = frozenset({proto.ACK, proto.NAK, proto.WELCOME, proto.STATUS})


class LightState(StrEnum):
    """What the lane's light tower says."""

    IDLE = "idle"
    ASSISTANCE = "assistance"
    INTERVENTION = "intervention"
    OUT_OF_SERVICE = "out_of_service"


class Pattern(IntEnum):
    OFF = proto.P_OFF
    STEADY = proto.P_STEADY
    BLINK = proto.P_BLINK
    PULSE = proto.P_PULSE


@dataclass(frozen=True)
class Light:
    """One tower channel's pattern; ``period_ms`` matters for blink and pulse."""

    pattern: Pattern = Pattern.OFF
    period_ms: int = 0

    def __post_init__(self) -> None:
        if proto.light_error(self.pattern, self.period_ms):
            raise DeviceMisconfigured(
                f"light {self.pattern.name.lower()} needs a period of {proto.MIN_PERIOD_MS}..{proto.MAX_PERIOD_MS} ms,"
                f" got {self.period_ms}"
            )


LIGHT_CHANNELS = ("red", "amber", "green")
_OFF = Light()
DEFAULT_PATTERNS: Mapping[LightState, tuple[Light, ...]] = MappingProxyType(
    {
        LightState.IDLE: (_OFF, _OFF, Light(Pattern.STEADY)),
        LightState.ASSISTANCE: (_OFF, Light(Pattern.BLINK, 1000), _OFF),
        LightState.INTERVENTION: (Light(Pattern.BLINK, 500), _OFF, _OFF),
        LightState.OUT_OF_SERVICE: (Light(Pattern.STEADY), _OFF, _OFF),
    }
)


@dataclass(frozen=True)
class UsbMatch:
    """Which USB serial device is the board (default: any Pico running MicroPython)."""

    vid: int = PICO_VID
    pid: int | None = MICROPYTHON_PID
    serial_number: str | None = None

    def __str__(self) -> str:
        pid = "*" if self.pid is None else f"{self.pid:04x}"
        return f"USB {self.vid:04x}:{pid}" + (f" serial {self.serial_number}" if self.serial_number else "")


@dataclass(frozen=True)
class CompanionSettings:
    """Link timing. The board falls back to its help-needed light after ``heartbeat_timeout``
    seconds without a frame from us; after ``max_missed`` unanswered requests we reconnect."""

    heartbeat_interval: float = 1.0
    heartbeat_timeout: float = 3.0
    reply_timeout: float = 0.5
    max_missed: int = 2
    boot_wait: float = 1.5
    poll: float = 0.05
    baudrate: int = 115200

    def __post_init__(self) -> None:
        timeout_ms = round(self.heartbeat_timeout * 1000)
        if not proto.MIN_HEARTBEAT_MS <= timeout_ms <= proto.MAX_HEARTBEAT_MS:
            raise DeviceMisconfigured(
                f"heartbeat_timeout {self.heartbeat_timeout} s is out of range"
                f" {proto.MIN_HEARTBEAT_MS / 1000}..{proto.MAX_HEARTBEAT_MS / 1000}"
            )
        if not 0 < self.heartbeat_interval * 2 <= self.heartbeat_timeout:
            raise DeviceMisconfigured("heartbeat_interval must be positive and at most half of heartbeat_timeout")
        if not 0 < self.reply_timeout < self.heartbeat_timeout:
            raise DeviceMisconfigured("reply_timeout must be positive and below heartbeat_timeout")
        if self.max_missed < 1 or self.boot_wait < 0 or not 0 < self.poll <= 1:
            raise DeviceMisconfigured("max_missed must be >= 1, boot_wait >= 0 and poll in (0, 1]")

    @property
    def heartbeat_ms(self) -> int:
        return round(self.heartbeat_timeout * 1000)


@dataclass(frozen=True)
class BoardInfo:
    """What the board said in its welcome."""

    port: str
    version: int
    firmware: str
    lights: int
    outputs: int
    inputs: int
    heartbeat_ms: int


@dataclass(frozen=True)
class AttendantCall:
    """The help button was pressed ``presses`` times (more than one only if frames were lost)."""

    device: str
    at: datetime
    presses: int = 1


@dataclass(frozen=True)
class InputChange:
    """An input changed level or was activated (``activations`` since the last report)."""

    device: str
    input: int
    name: str
    active: bool
    activations: int
    at: datetime


@dataclass(frozen=True)
class LinkStats:
    """Malformed frames dropped and noise bytes skipped, over the driver's life."""

    dropped: int
    noise: int
    fallbacks: int


def find_port(usb: UsbMatch | None = None, comports: Callable[[], Iterable[Any]] | None = None) -> str | None:
    """The device path of the first serial port matching ``usb``, or None."""
    usb = usb or UsbMatch()
    if comports is None:
        from serial.tools import list_ports

        comports = list_ports.comports
    matches = sorted(
        str(info.device)
        for info in comports()
        if info.vid == usb.vid
        and (usb.pid is None or info.pid == usb.pid)
        and (usb.serial_number is None or info.serial_number == usb.serial_number)
    )
    return matches[0] if matches else None


class _Pulse:
    """A pulse request handed to the driver thread, and its outcome."""

    def __init__(self, output: int, duration_ms: int) -> None:
        self.output = output
        self.duration_ms = duration_ms
        self.done = threading.Event()
        self.error: Exception | None = None


class CompanionBoard(Device):
    """The companion board: light tower, help button, sensor and drawer output."""

    def __init__(
        self,
        connect: Callable[[], Transport] | None = None,
        *,
        port: str = "",
        usb: UsbMatch | None = None,
        on_call: Callable[[AttendantCall], None] | None = None,
        on_input: Callable[[InputChange], None] | None = None,
        patterns: Mapping[LightState, Sequence[Light]] = DEFAULT_PATTERNS,
        settings: CompanionSettings | None = None,
        input_names: Sequence[str] = ("help", "sensor"),
        help_input: int = 0,
        name: str = "companion",
        clock: Clock | None = None,
        backoff: Backoff | None = None,
        start: bool = True,
    ) -> None:
        super().__init__(name)
        missing = [s.value for s in LightState if s not in patterns]
        if missing:
            raise DeviceMisconfigured(f"{name}: no light pattern for {', '.join(missing)}")
        self._patterns = {state: tuple(patterns[state]) for state in LightState}
        self.settings = settings or CompanionSettings()
        self._connect_to = connect
        self._port = port
        self._usb = usb or UsbMatch()
        self._on_call = on_call
        self._on_input = on_input
        self._input_names = tuple(input_names)
        self._help_input = help_input
        self._clock = clock or SystemClock()
        self._state_lock = threading.Lock()
        self._state = LightState.OUT_OF_SERVICE
        self._desired: tuple[Light, ...] = self._patterns[self._state]
        self._pulses: deque[_Pulse] = deque()
        self._decoder = proto.Decoder()
        self._frames: deque[tuple[int, int, bytes]] = deque()
        self._transport: Transport | None = None
        self._seq = 0
        self._acked: tuple[Light, ...] | None = None
        self._next_heartbeat = 0.0
        self._missed = 0
        self._warned_garbage = False
        self._fallbacks = 0
        self.info: BoardInfo | None = None
        self._active: list[bool] | None = None
        self._counts: list[int] | None = None
        self._port_in_use = port
        self._rehello = False
        self._worker: threading.Thread | None = None
        self._reader = ReaderThread(self, _BoardLink(self), backoff or Backoff(0.5, 30.0))
        if start:
            self._reader.start()

    # -- public API --------------------------------------------------------------------------------

    @property
    def state(self) -> LightState:
        return self._state

    @property
    def lights(self) -> tuple[Light, ...]:
        """The lights the tower should show (sent on every (re)connect until acknowledged)."""
        return self._desired

    @property
    def stats(self) -> LinkStats:
        return LinkStats(self._decoder.dropped, self._decoder.noise, self._fallbacks)

    def start(self) -> None:
        """Start the driver thread (when constructed with ``start=False``)."""
        self._reader.start()

    def set_state(self, state: LightState) -> None:
        """Show ``state``'s pattern on the tower (returns at once; the driver thread sends it)."""
        with self._state_lock:
            self._state = LightState(state)
            self._desired = self._patterns[self._state]

    def set_lights(self, lights: Sequence[Light]) -> None:
        """Show a custom pattern, channel 0 (red) first; missing channels are off."""
        if len(lights) > 8:
            raise DeviceMisconfigured(f"{self.name}: at most 8 light channels, got {len(lights)}")
        with self._state_lock:
            self._desired = tuple(lights)

    def input_active(self, index: int) -> bool | None:
        """Last known level of input ``index``; None before the first status or when offline."""
        active = self._active
        if active is None or not 0 <= index < len(active) or self.health.health == Health.UNAVAILABLE:
            return None
        return active[index]

    def pulse(self, output: int = 0, duration_ms: int = 100, *, timeout: float = 2.0) -> None:
        """Pulse ``output`` for ``duration_ms``; returns once the board accepted it.

        Raises DeviceMisconfigured when the board refuses the values, DeviceUnavailable when it
        is offline, busy with a pulse on that output, or does not answer. Never repeated.
        """
        if threading.current_thread() is self._worker:
            raise DeviceMisconfigured(f"{self.name}: pulse() cannot be called from a {self.name} callback")
        if not proto.MIN_PULSE_MS <= duration_ms <= proto.MAX_PULSE_MS:
            raise DeviceMisconfigured(
                f"pulse of {duration_ms} ms is out of range {proto.MIN_PULSE_MS}..{proto.MAX_PULSE_MS}"
            )
        if self.closed or self._transport is None:
            raise DeviceUnavailable(f"{self.name} is not connected")
        request = _Pulse(output, duration_ms)
        with self._state_lock:
            self._pulses.append(request)
        if not request.done.wait(timeout):
            with self._state_lock:
                if request in self._pulses:
                    self._pulses.remove(request)
                    raise DeviceUnavailable(f"{self.name}: pulse not sent within {timeout} s")
            if not request.done.wait(self.settings.reply_timeout + 1.0):
                raise DeviceUnavailable(f"{self.name}: no outcome for pulse")
        if request.error is not None:
            raise request.error

    def close(self) -> None:
        if self._closed:
            return
        super().close()
        self._reader.stop()
        self._fail_pulses(DeviceUnavailable(f"{self.name} is closed"))

    # -- link (run by ReaderThread through _BoardLink) -------------------------------------------

    def _open(self) -> None:
        """Connect, handshake and read the inputs; raises DeviceUnavailable / DeviceMisconfigured."""
        self._worker = threading.current_thread()
        connect = self._connect_to or self._serial
        with link_errors(f"cannot open {self.name}"):
            self._transport = connect()
        try:
            self._decoder.reset()
            self._frames.clear()
            self._drain()
            self._handshake()
            self._acked = None
            self._missed = 0
            self._next_heartbeat = time.monotonic() + self.settings.heartbeat_interval
        except BaseException:
            self._release()
            raise

    def _pump(self) -> None:
        """Handle incoming frames, then send what is due: a pulse, the lights, a heartbeat."""
        frame = self._next_frame(self.settings.poll)
        while frame is not None:
            self._dispatch(*frame)
            frame = self._next_frame(0)
        if self._rehello:
            self._rehello = False
            self._handshake()
            self._acked = None
        with self._state_lock:
            request = self._pulses.popleft() if self._pulses else None
            desired = self._desired
        if request is not None:
            self._send_pulse(request)
        if desired != self._acked:
            self._send_lights(desired)
        if time.monotonic() >= self._next_heartbeat:
            self._next_heartbeat = time.monotonic() + self.settings.heartbeat_interval
            reply = self._exchange(proto.HEARTBEAT)
            if reply is not None and reply[0] == proto.STATUS:
                self._status(reply[1], baseline=False)

    def _release(self) -> None:
        """Close the transport; safe after a failure."""
        transport, self._transport = self._transport, None
        self._fail_pulses(DeviceUnavailable(f"{self.name} disconnected"))
        if transport is not None:
            try:
                with link_errors(f"closing {self.name}"):
                    transport.close()
            except DeviceUnavailable:
                log.debug("closing %s failed", self.name, exc_info=True)

    # -- link internals --------------------------------------------------------------------------

    def _serial(self) -> Transport:
        port = self._port or find_port(self._usb)
        if not port:
            raise DeviceUnavailable(f"no companion board found ({self._usb})")
        transport = SerialTransport(port, self.settings.baudrate)
        self._port_in_use = port
        return transport

    def _handshake(self) -> None:
        hello = proto.pack_hello(proto.MIN_VERSION, proto.VERSION, self.settings.heartbeat_ms)
        reply = self._exchange(proto.HELLO, hello, count_miss=False)
        if reply is None:
            self._write(WAKE)
            self._wait_boot()
            reply = self._exchange(proto.HELLO, hello, count_miss=False)
        if reply is None:
            raise DeviceUnavailable(f"{self.name}: no answer to hello")
        kind, payload = reply
        try:
            if kind == proto.NAK:
                error, version = proto.unpack_nak(payload)
                if error == proto.E_VERSION:
                    raise DeviceMisconfigured(
                        f"{self.name}: firmware speaks protocol v{version}, host needs"
                        f" v{proto.MIN_VERSION}..v{proto.VERSION}; reflash with `tillbox companion flash`"
                    )
                raise DeviceUnavailable(f"{self.name}: hello refused (error {error})")
            if kind != proto.WELCOME:
                raise DeviceUnavailable(f"{self.name}: unexpected reply 0x{kind:02x} to hello")
            version, lights, outputs, inputs, heartbeat_ms, firmware = proto.unpack_welcome(payload)
        except ValueError as exc:
            raise DeviceUnavailable(f"{self.name}: malformed welcome: {exc}") from exc
        if not proto.MIN_VERSION <= version <= proto.VERSION:
            raise DeviceMisconfigured(f"{self.name}: firmware chose protocol v{version}, host speaks v{proto.VERSION}")
        longest = max(len(p) for p in self._patterns.values())
        if lights < longest:
            raise DeviceMisconfigured(f"{self.name}: board has {lights} light channels, patterns use {longest}")
        self.info = BoardInfo(self._port_in_use, version, firmware, lights, outputs, inputs, heartbeat_ms)
        log.info("%s: firmware %r, protocol v%d, %d lights, %d outputs, %d inputs",
                 self.name, firmware, version, lights, outputs, inputs)  # fmt: skip
        status = self._exchange(proto.HEARTBEAT, count_miss=False)
        if status is None or status[0] != proto.STATUS:
            raise DeviceUnavailable(f"{self.name}: no status after hello")
        self._status(status[1], baseline=True)

    def _wait_boot(self) -> None:
        """After a wake-up: wait for the firmware's BOOT frame, at most ``boot_wait``."""
        deadline = time.monotonic() + self.settings.boot_wait
        while (remaining := deadline - time.monotonic()) > 0:
            frame = self._next_frame(remaining)
            if frame is not None and frame[0] == proto.BOOT:
                return

    def _drain(self) -> None:
        """Drop what the board sent while nobody listened (stale events, a REPL banner)."""
        assert self._transport is not None
        with link_errors(f"{self.name} read failed"):
            for _ in range(64):
                if not self._transport.read(4096, 0):
                    return

    def _write(self, data: bytes) -> None:
        if self._transport is None:
            raise DeviceUnavailable(f"{self.name} is not connected")
        with link_errors(f"{self.name} write failed"):
            self._transport.write(data)

    def _next_frame(self, timeout: float) -> tuple[int, int, bytes] | None:
        """The next complete frame, reading for at most ``timeout`` seconds if none is queued."""
        if not self._frames:
            if self._transport is None:
                raise DeviceUnavailable(f"{self.name} is not connected")
            with link_errors(f"{self.name} read failed"):
                data = self._transport.read(1, timeout)
                if data:
                    data += self._transport.read(4096, 0)
            if data:
                dropped = self._decoder.dropped
                self._frames.extend(self._decoder.feed(data))
                if self._decoder.dropped > dropped and not self._warned_garbage:
                    self._warned_garbage = True
                    log.warning("%s: discarding malformed frames from the board (counted in stats)", self.name)
        return self._frames.popleft() if self._frames else None

    def _exchange(self, kind: int, payload: bytes = b"", *, count_miss: bool = True) -> tuple[int, bytes] | None:
        """Send a request and wait for its reply; None when none came within ``reply_timeout``."""
        self._seq = self._seq % 255 + 1
        seq = self._seq
        self._write(proto.encode(kind, seq, payload))
        deadline = time.monotonic() + self.settings.reply_timeout
        while (remaining := deadline - time.monotonic()) > 0:
            frame = self._next_frame(remaining)
            if frame is None:
                continue
            if frame[0] in _REPLIES and frame[1] == seq:
                self._answered()
                return frame[0], frame[2]
            self._dispatch(*frame)
        if count_miss:
            self._miss(kind)
        return None

    def _answered(self) -> None:
        if self._missed:
            self._missed = 0
            self.set_health(Health.OK)

    def _miss(self, kind: int) -> None:
        self._missed += 1
        if self._missed >= self.settings.max_missed:
            raise DeviceUnavailable(f"{self.name}: board stopped answering")
        self.set_health(Health.DEGRADED, f"no reply to request 0x{kind:02x}")

    def _dispatch(self, kind: int, seq: int, payload: bytes) -> None:
        """An unsolicited frame (or a late reply, which is ignored)."""
        try:
            if kind == proto.EVENT:
                index, active, count = proto.unpack_event(payload)
                self._input(index, active, count)
            elif kind == proto.BOOT:
                proto.unpack_boot(payload)
                log.info("%s restarted; saying hello again", self.name)
                self._rehello = True
            else:
                log.debug("%s: ignoring frame 0x%02x seq %d", self.name, kind, seq)
        except ValueError:
            self._decoder.dropped += 1

    def _status(self, payload: bytes, *, baseline: bool) -> None:
        try:
            flags, active, counts = proto.unpack_status(payload)
        except ValueError:
            self._decoder.dropped += 1
            return
        if flags & proto.F_FELL_BACK and not baseline:
            self._fallbacks += 1
            log.warning("%s showed its fallback light: our heartbeat was late", self.name)
        if baseline:
            previous = self._active
            self._active, self._counts = list(active), list(counts)
            if previous is not None:
                for index, (was, now) in enumerate(zip(previous, active, strict=False)):
                    if was != now:
                        self._deliver_change(index, now, 0)
            return
        for index, (on, count) in enumerate(zip(active, counts, strict=True)):
            self._input(index, on, count)

    def _input(self, index: int, active: bool, count: int) -> None:
        if self._active is None or self._counts is None or not 0 <= index < len(self._counts):
            return
        activations = (count - self._counts[index]) & 0xFF
        changed = active != self._active[index]
        self._active[index], self._counts[index] = active, count
        if changed or activations:
            self._deliver_change(index, active, activations)
        if index == self._help_input and activations:
            call = AttendantCall(self.name, self._clock.now(), activations)
            log.info("%s: attendant called", self.name)
            self._callback(self._on_call, call)

    def _deliver_change(self, index: int, active: bool, activations: int) -> None:
        name = self._input_names[index] if index < len(self._input_names) else f"input{index}"
        self._callback(self._on_input, InputChange(self.name, index, name, active, activations, self._clock.now()))

    def _callback(self, callback: Callable[[Any], None] | None, event: object) -> None:
        if callback is None:
            return
        try:
            callback(event)
        except Exception:
            log.exception("%s: event handler failed", self.name)

    def _send_lights(self, desired: tuple[Light, ...]) -> None:
        reply = self._exchange(proto.SET_LIGHTS, proto.pack_lights([(int(x.pattern), x.period_ms) for x in desired]))
        if reply is None:
            return
        if reply[0] == proto.NAK:
            log.warning("%s refused lights %s", self.name, desired)
        self._acked = desired  # a refusal is not retried until the lights change

    def _send_pulse(self, request: _Pulse) -> None:
        try:
            reply = self._exchange(proto.PULSE, proto.pack_pulse(request.output, request.duration_ms))
        except DeviceUnavailable as exc:
            request.error = exc
            request.done.set()
            raise
        if reply is None:
            request.error = DeviceUnavailable(f"{self.name}: no answer to pulse (not repeated)")
        elif reply[0] == proto.NAK:
            error = proto.unpack_nak(reply[1])[0] if reply[1] else 0
            if error == proto.E_BUSY:
                request.error = DeviceUnavailable(f"{self.name}: output {request.output} is still pulsing")
            else:
                request.error = DeviceMisconfigured(f"{self.name}: board refused pulse on output {request.output}")
        request.done.set()

    def _fail_pulses(self, error: Exception) -> None:
        with self._state_lock:
            pending = list(self._pulses)
            self._pulses.clear()
        for request in pending:
            request.error = error
            request.done.set()


class _BoardLink:
    """The :class:`drivers.scanner.Link` face of a board, for its ReaderThread."""

    def __init__(self, board: CompanionBoard) -> None:
        self._board = board

    def open(self) -> None:
        self._board._open()

    def pump(self) -> None:
        self._board._pump()

    def release(self) -> None:
        self._board._release()


class CompanionKicker:
    """A drawer kicker on a companion board output (a :class:`drivers.drawer.Kicker`)."""

    def __init__(self, board: CompanionBoard, output: int = 0, pulse_ms: int = 100) -> None:
        if not proto.MIN_PULSE_MS <= pulse_ms <= proto.MAX_PULSE_MS:
            raise DeviceMisconfigured(
                f"drawer pulse {pulse_ms} ms is out of range {proto.MIN_PULSE_MS}..{proto.MAX_PULSE_MS}"
            )
        self._board = board
        self._output = output
        self._pulse_ms = pulse_ms

    def kick(self) -> None:
        self._board.pulse(self._output, self._pulse_ms)


class CompanionSensor:
    """A door or drawer switch on a companion board input (a :class:`drivers.drawer.DrawerSensor`)."""

    def __init__(self, board: CompanionBoard, input_index: int = 1, *, open_when_active: bool = True) -> None:
        self._board = board
        self._index = input_index
        self._open_when_active = open_when_active

    def is_open(self) -> bool:
        active = self._board.input_active(self._index)
        if active is None:
            raise DeviceUnavailable(f"{self._board.name}: input {self._index} is unknown (board offline)")
        return active == self._open_when_active
