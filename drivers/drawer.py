"""Cash drawer: a kick (through the printer or a GPIO pin), optional open sensing, and alerts.

Every open returns a :class:`DrawerOpen` record (time, reason, actor) for the caller to
journal in the ledger. With a sensor, :meth:`CashDrawer.poll` (called by the daemon's
timer) tracks open/closed and raises a "drawer left open" alert after a configurable
time, measured on the clock object passed in, so tests drive it without sleeping.

Kickers: :class:`PrinterKicker` (``ESC p m t1 t2`` on connector pin 2 or 5) and
:class:`GpioKicker` (a gpiozero ``DigitalOutputDevice`` pulse, e.g. through a relay).
Sensors: :class:`PrinterDrawerSensor` (``DLE EOT 1`` bit 2, connector pin 3) and
:class:`GpioDrawerSensor` (a gpiozero ``DigitalInputDevice``). :class:`SimulatedDrawer` is both.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from appliance.clock import Clock, SystemClock, iso_utc
from appliance.errors import DeviceMisconfigured, DeviceUnavailable, InputError
from drivers.base import Device, Health
from drivers.escpos_codec import PrinterStatus, cmd_pulse

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DrawerOpen:
    """One opening of the drawer, for the ledger."""

    drawer: str
    at: datetime
    reason: str
    actor: str

    def to_doc(self) -> dict[str, str]:
        return {"drawer": self.drawer, "at": iso_utc(self.at), "reason": self.reason, "actor": self.actor}


@dataclass(frozen=True)
class DrawerLeftOpen:
    """The drawer has been open longer than allowed."""

    drawer: str
    since: datetime
    seconds: float


class Kicker(Protocol):
    """Something that pops the drawer open."""

    def kick(self) -> None: ...


class DrawerSensor(Protocol):
    """Something that tells whether the drawer is open."""

    def is_open(self) -> bool: ...


class CommandSink(Protocol):
    """Takes raw printer commands (a :class:`~drivers.printer.ReceiptPrinter`)."""

    def send(self, data: bytes) -> None: ...


class StatusSource(Protocol):
    """Reports printer status (a :class:`~drivers.printer.ReceiptPrinter`)."""

    def status(self) -> PrinterStatus: ...


# -- kickers --------------------------------------------------------------------------------------


class PrinterKicker:
    """Kick through the printer's drawer connector: pin 0 (connector pin 2) or 1 (pin 5)."""

    def __init__(self, printer: CommandSink, *, pin: int = 0, on_ms: int = 100, off_ms: int = 500) -> None:
        self.command = cmd_pulse(pin, on_ms, off_ms)  # validates
        self._printer = printer

    def kick(self) -> None:
        self._printer.send(self.command)


def _gpio_error(pin: object, exc: Exception) -> Exception:
    from gpiozero import GPIOPinInUse, PinInvalidPin

    if isinstance(exc, PinInvalidPin | GPIOPinInUse | ValueError):
        return DeviceMisconfigured(f"GPIO pin {pin}: {exc}")
    return DeviceUnavailable(f"GPIO pin {pin} unavailable: {exc}")


class GpioKicker:
    """Kick with a GPIO output pulse (driving a relay or transistor on the solenoid)."""

    def __init__(self, pin: int | str, *, pulse_ms: int = 100, active_high: bool = True,
                 pin_factory: Any = None, sleep: Callable[[float], None] = time.sleep) -> None:  # fmt: skip
        from gpiozero import DigitalOutputDevice, GPIOZeroError

        if not 10 <= pulse_ms <= 1000:
            raise DeviceMisconfigured(f"drawer pulse {pulse_ms} ms is out of range 10..1000")
        self.pulse = pulse_ms / 1000
        self._sleep = sleep
        try:
            self._out = DigitalOutputDevice(pin, active_high=active_high, initial_value=False,
                                            pin_factory=pin_factory)  # fmt: skip
        except (GPIOZeroError, ValueError) as exc:
            raise _gpio_error(pin, exc) from exc

    def kick(self) -> None:
        self._out.on()
        try:
            self._sleep(self.pulse)
        finally:
            self._out.off()

    def close(self) -> None:
        self._out.close()


# -- sensors --------------------------------------------------------------------------------------


class PrinterDrawerSensor:
    """Read the drawer switch on connector pin 3 through ``DLE EOT 1`` (bit 2).

    Whether a high level means open depends on the drawer's switch: set ``open_when_high``.
    """

    def __init__(self, printer: StatusSource, *, open_when_high: bool = True) -> None:
        self._printer = printer
        self._open_when_high = open_when_high

    def is_open(self) -> bool:
        return self._printer.status().drawer_pin3_high == self._open_when_high


class GpioDrawerSensor:
    """Read the drawer switch on a GPIO input.

    With ``pull_up`` the input is active when the switch pulls it low. ``open_when_active``
    says whether an active input means open (switch closes as the drawer opens) or closed.
    """

    def __init__(self, pin: int | str, *, pull_up: bool = True, open_when_active: bool = False,
                 bounce_time: float | None = None, pin_factory: Any = None) -> None:  # fmt: skip
        from gpiozero import DigitalInputDevice, GPIOZeroError

        try:
            self._in = DigitalInputDevice(pin, pull_up=pull_up, bounce_time=bounce_time, pin_factory=pin_factory)
        except (GPIOZeroError, ValueError) as exc:
            raise _gpio_error(pin, exc) from exc
        self._open_when_active = open_when_active

    def is_open(self) -> bool:
        return bool(self._in.is_active) == self._open_when_active

    def close(self) -> None:
        self._in.close()


# -- the drawer -----------------------------------------------------------------------------------


class CashDrawer(Device):
    """A cash drawer: open it with a reason, poll its sensor, get told when it is left open."""

    def __init__(
        self,
        kicker: Kicker,
        sensor: DrawerSensor | None = None,
        *,
        clock: Clock | None = None,
        left_open_after: float = 60.0,
        on_open: Callable[[DrawerOpen], None] | None = None,
        on_left_open: Callable[[DrawerLeftOpen], None] | None = None,
        name: str = "drawer",
    ) -> None:
        super().__init__(name)
        if left_open_after <= 0:
            raise DeviceMisconfigured("left_open_after must be positive")
        self._kicker = kicker
        self._sensor = sensor
        self._clock = clock or SystemClock()
        self.left_open_after = left_open_after
        self._on_open = on_open
        self._on_left_open = on_left_open
        self._open_since: tuple[float, datetime] | None = None
        self._alerted = False
        self._is_open: bool | None = None
        self._kick_error = ""
        self._sensor_error = ""

    @property
    def is_open(self) -> bool | None:
        """Last known state; None without a sensor (or before the first poll)."""
        return self._is_open

    @property
    def left_open(self) -> bool:
        return self._alerted

    def open(self, reason: str, actor: str) -> DrawerOpen:
        """Kick the drawer open; returns the record to journal. Raises DeviceUnavailable."""
        if not reason.strip() or not actor.strip():
            raise InputError("opening the drawer needs a reason and a staff member")
        if self.closed:
            raise DeviceUnavailable(f"{self.name} is closed")
        try:
            self._kicker.kick()
        except DeviceUnavailable as exc:
            self._kick_error = f"cannot open: {exc}"
            self._refresh_health()
            raise
        self._kick_error = ""
        record = DrawerOpen(self.name, self._clock.now(), reason.strip(), actor.strip())
        log.info("%s opened by %s: %s", self.name, record.actor, record.reason)
        if self._sensor is not None and self._open_since is None:
            self._open_since = (self._clock.monotonic(), record.at)
            self._is_open = True
        self._refresh_health()
        self._notify(self._on_open, record)
        return record

    def poll(self) -> bool | None:
        """Read the sensor, track how long the drawer is open, alert once when left open."""
        if self._sensor is None or self.closed:
            return None
        try:
            is_open = self._sensor.is_open()
        except DeviceUnavailable as exc:
            self._sensor_error = f"cannot read drawer sensor: {exc}"
            self._refresh_health()
            return None
        self._sensor_error = ""
        self._is_open = is_open
        event = None
        if not is_open:
            self._open_since = None
            self._alerted = False
        else:
            if self._open_since is None:
                self._open_since = (self._clock.monotonic(), self._clock.now())
            started, since = self._open_since
            seconds = self._clock.monotonic() - started
            if seconds >= self.left_open_after and not self._alerted:
                self._alerted = True
                event = DrawerLeftOpen(self.name, since, seconds)
        self._refresh_health()
        if event is not None:
            self._notify(self._on_left_open, event)
        return is_open

    def close(self) -> None:
        if self.closed:
            return
        for part in {id(p): p for p in (self._kicker, self._sensor) if p is not None}.values():
            closer = getattr(part, "close", None)
            if callable(closer):
                closer()
        super().close()

    def _refresh_health(self) -> None:
        if self._kick_error:
            self.set_health(Health.UNAVAILABLE, self._kick_error)
        elif self._sensor_error:
            self.set_health(Health.DEGRADED, self._sensor_error)
        elif self._alerted:
            self.set_health(Health.DEGRADED, f"drawer left open over {self.left_open_after:g} s")
        else:
            self.set_health(Health.OK)

    def _notify(self, listener: Callable[[Any], None] | None, event: object) -> None:
        if listener is None:
            return
        try:
            listener(event)
        except Exception:
            log.exception("%s listener failed", self.name)


# -- simulator ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pulse:
    """A kick the simulated drawer received."""

    at: datetime
    monotonic: float


class SimulatedDrawer:
    """A drawer that records timestamped pulses, springs open, and closes when told to."""

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock = clock or SystemClock()
        self.pulses: list[Pulse] = []
        self.opened = False
        self.connected = True

    def kick(self) -> None:
        if not self.connected:
            raise DeviceUnavailable("simulated drawer is disconnected")
        self.pulses.append(Pulse(self._clock.now(), self._clock.monotonic()))
        self.opened = True

    def is_open(self) -> bool:
        if not self.connected:
            raise DeviceUnavailable("simulated drawer is disconnected")
        return self.opened

    def push_shut(self) -> None:
        """The cashier closes the drawer."""
        self.opened = False
