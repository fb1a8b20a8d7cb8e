"""The device manager: opens every configured peripheral, watches its health, handles hotplug.

:class:`DeviceManager` is built from the ``[devices]`` config. :meth:`~DeviceManager.start`
opens each configured device (the real driver, or its simulator when ``devices.mode = "sim"``).
A device that cannot be opened, or fails its self-check, is marked unavailable, logged once,
and never stops start-up (a missing pole display must not stop sales).

Reconnecting reuses what the drivers do:

* Reader devices (scanner, badge reader, companion board) reconnect on their own thread with
  bounded back-off. When udev says a scanner or badge reader was plugged in again the manager
  rebuilds it, so a replug works at once instead of after the next back-off step.
* Request devices (printer, pole display, scale, terminal) reopen their link on the next call.
  While one is unavailable the manager probes it (status request) with back-off from
  ``reconnect_initial_seconds`` doubling to ``reconnect_max_seconds``, and at once when udev
  reports it plugged in (the display is rebuilt then, keeping its text).
* A device whose driver could not even be built is rebuilt with the same back-off, unless the
  failure was permanent (:class:`~appliance.errors.DeviceMisconfigured`).

Everything the devices report reaches the daemon through one door: the ``dispatch`` function
(``loop.call_soon_threadsafe``). Listeners (:meth:`~DeviceManager.on_health`,
:meth:`~DeviceManager.on_scan`, ...) run wherever ``dispatch`` runs them (on the loop, with
``call_soon_threadsafe``), and a listener that raises is logged without stopping the others.

Do not keep references to devices: a replug may replace one. Ask the manager each time
(``manager.printer``). Blocking calls (self-tests, :meth:`~DeviceManager.maintain`) belong in
an executor, not on the event loop.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import select
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Final, Literal, Protocol, TypeVar

from appliance.clock import Clock, SystemClock, iso_utc
from appliance.config import Config, DevicesSection
from appliance.errors import ConfigError, DeviceMisconfigured, DeviceUnavailable, InputError, TillboxError
from appliance.money import Currency
from drivers.badge import BadgeReader, EvdevBadgeReader, SimulatedBadgeReader
from drivers.base import Device, Health, HealthState
from drivers.companion import (
    AttendantCall,
    CompanionBoard,
    CompanionKicker,
    CompanionSensor,
    CompanionSettings,
    InputChange,
    UsbMatch,
)
from drivers.display import CustomerDisplay, DisplayProfile, PrinterPassthrough, SimulatedDisplay
from drivers.drawer import (
    CashDrawer,
    DrawerLeftOpen,
    DrawerOpen,
    DrawerSensor,
    GpioDrawerSensor,
    GpioKicker,
    Kicker,
    PrinterDrawerSensor,
    PrinterKicker,
    SimulatedDrawer,
)
from drivers.escpos_codec import (
    INIT,
    PrinterProfile,
    cmd_align,
    cmd_bold,
    cmd_code_table,
    cmd_cut,
    cmd_feed,
    cmd_size,
    encode_text,
)
from drivers.printer import (
    PrinterAlert,
    ReceiptPrinter,
    ReprintQueue,
    SimulatedPrinter,
    file_link,
    load_logo,
    network_link,
    serial_link,
    usb_link,
)
from drivers.scale import Scale, SimulatedScale, WeightUnit, serial_scale
from drivers.scanner import (
    Backoff,
    EvdevScanner,
    Scanner,
    SerialFraming,
    SerialScanner,
    SimulatedScanner,
    Terminator,
    WedgeDecoder,
)
from drivers.transport import SerialTransport, Transport
from drivers.zvt import ZvtTerminal

__all__ = [
    "DEVICE_NAMES",
    "HOTPLUG_SUBSYSTEMS",
    "NOT_OPEN",
    "BadgeRead",
    "DeviceHealth",
    "DeviceManager",
    "Dispatch",
    "InputRejected",
    "ScanEvent",
    "SelfTestResult",
    "UdevDevice",
    "UdevMonitor",
    "render_test_page",
]

log = logging.getLogger(__name__)

#: Every device the manager knows, in the order they are opened (closed in reverse).
DEVICE_NAMES: Final = ("printer", "companion", "drawer", "scanner", "badge", "display", "scale", "terminal")
#: udev subsystems whose add/remove events can concern a configured device.
HOTPLUG_SUBSYSTEMS: Final = ("tty", "input", "usb", "usbmisc")
#: Devices read on their own thread (they reconnect themselves).
_READERS: Final = frozenset({"scanner", "badge", "companion"})
#: Devices rebuilt when udev reports them plugged in again (the display keeps its text).
_REBUILT_ON_REPLUG: Final = frozenset({"scanner", "badge", "display"})
#: The reason a configured device gives before :meth:`DeviceManager.start` opened it.
NOT_OPEN: Final = "not opened yet"
#: Longest the background thread sleeps between two looks at its schedule.
_MAX_IDLE: Final = 1.0

#: Hands a callable to the daemon's event loop, e.g. ``loop.call_soon_threadsafe``.
Dispatch = Callable[[Callable[[], None]], object]

_D = TypeVar("_D", bound=Device)


# -- events ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceHealth(HealthState):
    """A device's health as the manager reports it: the driver's state plus history."""

    backend: str = ""
    simulated: bool = False
    #: The reason of the last failure, kept after the device recovered.
    last_error: str = ""
    last_error_at: datetime | None = None
    #: When the health last changed.
    since: datetime | None = None

    def to_doc(self) -> dict[str, Any]:
        """JSON-ready form for the UI and MQTT."""
        return {
            "device": self.device,
            "health": str(self.health),
            "reason": self.reason,
            "backend": self.backend,
            "simulated": self.simulated,
            "last_error": self.last_error,
            "last_error_at": iso_utc(self.last_error_at) if self.last_error_at else None,
            "since": iso_utc(self.since) if self.since else None,
        }


@dataclass(frozen=True)
class ScanEvent:
    """A code read by the scanner; ``symbology`` is its AIM identifier when the scanner sent one."""

    device: str
    code: str
    symbology: str | None
    at: datetime


@dataclass(frozen=True)
class BadgeRead:
    """A staff badge, loyalty or gift card read (payment cards never get here)."""

    device: str
    data: str = field(repr=False)
    at: datetime


@dataclass(frozen=True)
class InputRejected:
    """Input a scanner or card reader dropped, and why (never the data itself)."""

    device: str
    reason: str
    at: datetime


@dataclass(frozen=True)
class SelfTestResult:
    """Outcome of a technician self-test, in one line."""

    device: str
    ok: bool
    message: str


# -- udev -----------------------------------------------------------------------------------------


class UdevDevice(Protocol):
    """The part of ``pyudev.Device`` hotplug handling reads."""

    @property
    def action(self) -> str | None: ...

    @property
    def device_node(self) -> str | None: ...

    @property
    def device_links(self) -> Iterable[str]: ...

    @property
    def properties(self) -> Mapping[str, str]: ...


class UdevMonitor(Protocol):
    """The part of a started ``pyudev.Monitor`` the manager uses."""

    def fileno(self) -> int: ...

    def poll(self, timeout: float | None = None) -> UdevDevice | None: ...


def _open_udev_monitor() -> UdevMonitor | None:
    """A started pyudev monitor of :data:`HOTPLUG_SUBSYSTEMS`, or None (logged) without pyudev/udev."""
    try:
        import pyudev
    except ImportError:
        log.info("hotplug is off: pyudev is not installed; lost devices are retried with back-off")
        return None
    try:
        monitor = pyudev.Monitor.from_netlink(pyudev.Context())
        for subsystem in HOTPLUG_SUBSYSTEMS:
            monitor.filter_by(subsystem)
        monitor.start()
    except (ImportError, OSError) as exc:
        log.warning("hotplug is off: cannot watch udev (%s); lost devices are retried with back-off", exc)
        return None
    return monitor  # type: ignore[no-any-return]


# -- the test page --------------------------------------------------------------------------------


def render_test_page(profile: PrinterProfile, *, now: datetime, lines: Iterable[str] = ()) -> bytes:
    """ESC/POS bytes of the technician's test print: title, settings, a ruler, the character set, a cut."""
    page = profile.page

    def line(text: str) -> bytes:
        return encode_text(text[: profile.columns], page) + b"\n"

    ruler = "".join(str(i % 10) for i in range(1, profile.columns + 1))
    out = bytearray(INIT + cmd_code_table(page.table) + cmd_align("center"))
    out += cmd_bold(True) + cmd_size(2, 2) + line("TILLBOX") + cmd_size(1, 1) + cmd_bold(False)
    out += line("printer test") + line(iso_utc(now)) + cmd_align("left") + b"\n"
    out += line(f"paper {profile.paper_mm} mm, {profile.columns} columns")
    out += line(f"code page {page.name} (ESC t {page.table})")
    out += line(ruler)
    out += line("ÄÖÜ äöü ß é ñ € £ ¥")
    for text in lines:
        out += line(text)
    out += cmd_feed(3)
    if profile.cut != "none":
        out += cmd_cut(partial=profile.cut == "partial")
    return bytes(out)


# -- slots ----------------------------------------------------------------------------------------

_Built = tuple[Device, tuple[Callable[[], None], ...]]


@dataclass(eq=False)
class _Slot:
    """One configured device and what the manager knows about it."""

    name: str
    backend: str
    simulated: bool
    build: Callable[[], _Built]
    probe: Callable[[], None] | None
    paths: tuple[str, ...] = ()
    usb: tuple[str, str] | None = None
    device: Device | None = None
    cleanup: tuple[Callable[[], None], ...] = ()
    state: DeviceHealth = field(default_factory=lambda: DeviceHealth("", Health.OK))
    permanent: bool = False
    delay: float = 0.0
    next_try: float | None = None
    busy: bool = False
    replug: bool = False
    nodes: set[str] = field(default_factory=set)
    sim_peer: object = None
    #: The driver whose state ``state`` holds (None: the manager's own, e.g. a failed build).
    reported_by: Device | None = None
    #: A state other than "not opened yet" was reported.
    opened: bool = False


def _seconds(value: Decimal | int) -> float:
    """Config durations (exact decimals) as driver timeouts."""
    return float(value)


class DeviceManager:
    """Opens, watches and closes every configured device. See the module notes.

    ``dispatch`` hands callables to the daemon's loop (``loop.call_soon_threadsafe``); tests
    pass ``lambda fn: fn()``. ``udev_monitor`` replaces the pyudev monitor (tests); by default
    one is opened in real mode when ``devices.hotplug`` is on. ``pin_factory`` goes to gpiozero.
    """

    def __init__(
        self,
        config: Config,
        *,
        dispatch: Dispatch,
        clock: Clock | None = None,
        data_dir: Path | None = None,
        print_queue: ReprintQueue | None = None,
        udev_monitor: UdevMonitor | None = None,
        pin_factory: Any = None,
    ) -> None:
        self._devices: DevicesSection = config.devices
        self._currency: Currency = config.currency
        self._sim = config.devices.mode == "sim"
        self._dispatch = dispatch
        self._clock = clock or SystemClock()
        self._data_dir = data_dir
        self._print_queue = print_queue
        self._pin_factory = pin_factory
        self._backoff = Backoff(
            _seconds(self._devices.reconnect_initial_seconds), _seconds(self._devices.reconnect_max_seconds)
        )
        self._monitor = udev_monitor
        self._auto_monitor = udev_monitor is None and self._devices.hotplug and not self._sim
        self._lock = threading.RLock()
        self._listeners: dict[str, list[Callable[[Any], None]]] = {}
        self._scan_waiters: list[tuple[threading.Event, list[tuple[str, str | None]]]] = []
        self._slots: dict[str, _Slot] = {}
        self._started = False
        self._closed = False
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._thread: threading.Thread | None = None
        self._wake_r = self._wake_w = -1
        self._drawer_next_poll: float | None = None
        self._drawer_polling = False
        for name in DEVICE_NAMES:
            slot = self._slot(name)
            if slot is not None:
                slot.state = DeviceHealth(
                    name, Health.UNAVAILABLE, NOT_OPEN, backend=slot.backend, simulated=slot.simulated
                )
                slot.delay = self._backoff.initial
                self._slots[name] = slot

    # -- listeners --------------------------------------------------------------------------------

    def on_health(self, listener: Callable[[DeviceHealth], None]) -> None:
        """Call ``listener`` (through dispatch) with every health change of any device."""
        self._listen("health", listener)

    def on_scan(self, listener: Callable[[ScanEvent], None]) -> None:
        self._listen("scan", listener)

    def on_badge(self, listener: Callable[[BadgeRead], None]) -> None:
        self._listen("badge", listener)

    def on_rejected(self, listener: Callable[[InputRejected], None]) -> None:
        """Input the scanner or card reader dropped (garbage, hand typing, payment cards)."""
        self._listen("rejected", listener)

    def on_attendant(self, listener: Callable[[AttendantCall], None]) -> None:
        """Help-button presses on the companion board."""
        self._listen("attendant", listener)

    def on_input(self, listener: Callable[[InputChange], None]) -> None:
        """Companion board input changes."""
        self._listen("input", listener)

    def on_drawer(self, listener: Callable[[DrawerOpen | DrawerLeftOpen], None]) -> None:
        """Drawer openings (to journal: reason and staff member) and left-open alerts."""
        self._listen("drawer", listener)

    def on_printer_alert(self, listener: Callable[[PrinterAlert], None]) -> None:
        """Receipts that could not be printed (they wait in the reprint queue)."""
        self._listen("printer", listener)

    def _listen(self, kind: str, listener: Callable[[Any], None]) -> None:
        with self._lock:
            self._listeners.setdefault(kind, []).append(listener)

    def _emit(self, kind: str, event: object) -> None:
        with self._lock:
            if self._closed:
                return
            listeners = tuple(self._listeners.get(kind, ()))
        if not listeners:
            return

        def deliver() -> None:
            for listener in listeners:
                try:
                    listener(event)
                except Exception:
                    log.exception("%s listener failed", kind)

        try:
            self._dispatch(deliver)
        except RuntimeError:  # the loop is closed: the daemon is going down
            log.debug("dropped a %s event: dispatch refused it", kind, exc_info=True)

    def _emitter(self, kind: str) -> Callable[[Any], None]:
        return lambda event: self._emit(kind, event)

    # -- state ------------------------------------------------------------------------------------

    @property
    def simulated(self) -> bool:
        return self._sim

    def names(self) -> tuple[str, ...]:
        """The configured devices, in opening order."""
        return tuple(self._slots)

    def health(self) -> dict[str, DeviceHealth]:
        """Health of every configured device, with reason and last error."""
        with self._lock:
            return {name: slot.state for name, slot in self._slots.items()}

    def next_attempt(self, name: str) -> float | None:
        """Monotonic time of the next reopen attempt of ``name``, or None when none is due."""
        with self._lock:
            slot = self._slots.get(name)
            return None if slot is None else slot.next_try

    def device(self, name: str) -> Device | None:
        """The driver of ``name`` now (None when not configured or not built)."""
        with self._lock:
            slot = self._slots.get(name)
            return None if slot is None else slot.device

    def simulator(self, name: str) -> Any:
        """In sim mode, the simulator behind ``name`` for scripting it: SimulatedPrinter, SimulatedDrawer,
        SimulatedDisplay, the scale's Toledo8217Peer, ZvtSimulator, SimulatedBoard, or the simulated
        scanner/badge reader itself. None otherwise."""
        with self._lock:
            slot = self._slots.get(name)
            return None if slot is None else slot.sim_peer

    def _typed(self, name: str, cls: type[_D]) -> _D | None:
        device = self.device(name)
        return device if isinstance(device, cls) else None

    @property
    def scanner(self) -> Scanner | None:
        return self._typed("scanner", Scanner)

    @property
    def printer(self) -> ReceiptPrinter | None:
        return self._typed("printer", ReceiptPrinter)

    @property
    def drawer(self) -> CashDrawer | None:
        return self._typed("drawer", CashDrawer)

    @property
    def terminal(self) -> ZvtTerminal | None:
        return self._typed("terminal", ZvtTerminal)

    @property
    def badge(self) -> BadgeReader | None:
        return self._typed("badge", BadgeReader)

    @property
    def display(self) -> CustomerDisplay | None:
        return self._typed("display", CustomerDisplay)

    @property
    def scale(self) -> Scale | None:
        return self._typed("scale", Scale)

    @property
    def companion(self) -> CompanionBoard | None:
        return self._typed("companion", CompanionBoard)

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self, *, background: bool = True, check_timeout: float = 10.0) -> None:
        """Open every configured device and self-check it; never raises for a device problem.

        With ``background`` a thread runs the reconnect schedule, drawer polling and udev
        hotplug; without it call :meth:`maintain` yourself (tests). Blocks while devices are
        checked, at most ``check_timeout`` seconds (a slow check finishes in the background):
        call it from an executor.
        """
        with self._lock:
            if self._started or self._closed:
                return
            self._started = True
            self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="tillbox-devices")
        d = self._devices
        log.info(
            "devices: mode=%s, hotplug=%s, reconnect back-off %g..%g s",
            d.mode,
            d.hotplug and not self._sim,
            self._backoff.initial,
            self._backoff.cap,
        )
        for slot in self._slots.values():
            log.info("device %s: %s%s", slot.name, slot.backend, " (simulated)" if slot.simulated else "")
            self._open_slot(slot)
        checks = [slot for slot in self._slots.values() if slot.device is not None and slot.probe is not None]
        futures = [self._submit(self._self_check, slot) for slot in checks]
        concurrent.futures.wait([f for f in futures if f is not None], timeout=check_timeout)
        self._schedule_drawer_poll()
        if background:
            if self._auto_monitor:
                self._monitor = _open_udev_monitor()
            self._wake_r, self._wake_w = os.pipe()
            os.set_blocking(self._wake_w, False)
            self._thread = threading.Thread(target=self._run, name="tillbox-device-manager", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop the background thread and close every device (reverse order); safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for event, _ in self._scan_waiters:
                event.set()
        self._wake()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
        for slot in reversed(list(self._slots.values())):
            self._close_slot(slot)
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1
        self._monitor = None

    def __enter__(self) -> DeviceManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reconnect schedule -----------------------------------------------------------------------

    def maintain(self, *, wait: bool = True) -> None:
        """Run what is due now: reopen attempts, probes of unavailable devices, the drawer poll.

        The background thread calls this; tests call it after moving their clock.
        """
        now = self._clock.monotonic()
        jobs: list[tuple[Callable[..., None], tuple[Any, ...]]] = []
        with self._lock:
            if self._closed or self._executor is None:
                return
            for slot in self._slots.values():
                if slot.busy or slot.permanent:
                    continue
                if slot.replug or (slot.next_try is not None and slot.next_try <= now):
                    slot.busy = True
                    jobs.append((self._attempt, (slot,)))
            if self._drawer_next_poll is not None and self._drawer_next_poll <= now and not self._drawer_polling:
                self._drawer_polling = True
                jobs.append((self._poll_drawer, ()))
        futures = [self._submit(fn, *args) for fn, args in jobs]
        if wait:
            concurrent.futures.wait([f for f in futures if f is not None])

    def _submit(self, fn: Callable[..., None], *args: Any) -> concurrent.futures.Future[None] | None:
        executor = self._executor
        if executor is None:
            return None
        try:
            return executor.submit(fn, *args)
        except RuntimeError:  # shut down by close()
            return None

    def _attempt(self, slot: _Slot) -> None:
        """One reopen attempt or probe (on an executor thread)."""
        with self._lock:
            replugged, slot.replug = slot.replug, False
        try:
            if slot.device is None or (replugged and slot.name in _REBUILT_ON_REPLUG):
                old = slot.device
                self._open_slot(slot)
                new = slot.device
                if isinstance(old, CustomerDisplay) and isinstance(new, CustomerDisplay) and any(old.lines):
                    new.show_lines(*old.lines)
                if new is not None and slot.probe is not None:
                    self._self_check(slot)
            elif slot.probe is not None:
                self._self_check(slot)
        finally:
            with self._lock:
                slot.busy = False
                self._reschedule(slot)

    def _reschedule(self, slot: _Slot) -> None:
        """After an attempt (lock held): back off while still down, reset once up."""
        down = not slot.permanent and (
            slot.device is None or (slot.probe is not None and slot.state.health == Health.UNAVAILABLE)
        )
        if down:
            self._retry_later(slot)
        else:
            slot.next_try = None
            slot.delay = self._backoff.initial

    def _retry_later(self, slot: _Slot) -> None:
        """Schedule the next attempt after the current delay, and double the delay (lock held)."""
        slot.next_try = self._clock.monotonic() + slot.delay
        slot.delay = min(slot.delay * 2, self._backoff.cap)

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._closed:
                    return
            try:
                self.maintain(wait=False)
            except Exception:
                log.exception("device maintenance failed")
            monitor = self._monitor
            monitor_fd = monitor.fileno() if monitor is not None else -1
            fds = [self._wake_r] + ([monitor_fd] if monitor_fd >= 0 else [])
            try:
                ready, _, _ = select.select(fds, [], [], self._idle_time())
            except (OSError, ValueError):
                return  # the wake pipe was closed under us: closing
            if self._wake_r in ready:
                with contextlib.suppress(OSError):
                    os.read(self._wake_r, 4096)
            if monitor is not None and monitor_fd in ready:
                self._drain_udev(monitor)

    def _idle_time(self) -> float:
        now = self._clock.monotonic()
        with self._lock:
            deadlines = [s.next_try for s in self._slots.values() if s.next_try is not None and not s.busy]
            if self._drawer_next_poll is not None and not self._drawer_polling:
                deadlines.append(self._drawer_next_poll)
        if not deadlines:
            return _MAX_IDLE
        return max(0.0, min(_MAX_IDLE, min(deadlines) - now))

    def _wake(self) -> None:
        if self._wake_w >= 0:
            with contextlib.suppress(OSError):  # full (already woken) or closed
                os.write(self._wake_w, b"!")

    # -- opening and closing ----------------------------------------------------------------------

    def _open_slot(self, slot: _Slot) -> None:
        """(Re)build the driver of ``slot``; failures mark it unavailable, never raise."""
        old = slot.device
        if old is not None:
            self._close_slot(slot)
        try:
            device, cleanup = slot.build()
        except (DeviceMisconfigured, ConfigError) as exc:
            self._slot_failed(slot, str(exc), permanent=True)
            return
        except (DeviceUnavailable, InputError) as exc:
            self._slot_failed(slot, str(exc), permanent=isinstance(exc, InputError))
            return
        except Exception as exc:
            log.exception("opening %s failed", slot.name)
            self._slot_failed(slot, f"cannot open: {exc}", permanent=False)
            return
        with self._lock:
            if self._closed:
                closing = True
            else:
                closing = False
                slot.device, slot.cleanup = device, cleanup
                slot.permanent = False
        if closing:
            self._close_device(slot.name, device, cleanup)
            return
        self._learn_nodes(slot)
        device.on_health(lambda _state: self._device_health(slot, device))
        self._device_health(slot, device)

    def _close_slot(self, slot: _Slot) -> None:
        with self._lock:
            device, cleanup = slot.device, slot.cleanup
            slot.device, slot.cleanup = None, ()
        if device is not None:
            self._close_device(slot.name, device, cleanup)

    @staticmethod
    def _close_device(name: str, device: Device, cleanup: Iterable[Callable[[], None]]) -> None:
        try:
            device.close()
        except Exception:
            log.exception("closing %s failed", name)
        for step in cleanup:
            try:
                step()
            except Exception:
                log.exception("closing the %s simulator failed", name)

    def _slot_failed(self, slot: _Slot, reason: str, *, permanent: bool) -> None:
        """The driver could not be built: the slot is unavailable without a device."""
        with self._lock:
            slot.permanent = permanent
            slot.reported_by = None
            slot.opened = True
            changed = self._update(slot, Health.UNAVAILABLE, reason)
            if not permanent and slot.next_try is None and not slot.busy:
                self._retry_later(slot)
            state = slot.state
        if changed:
            log.warning("%s is unavailable: %s%s", slot.name, reason, "" if not permanent else " (not retried)")
            self._emit("health", state)

    def _device_health(self, slot: _Slot, device: Device) -> None:
        """A driver's health changed (any thread): record it and pass it on."""
        with self._lock:
            if slot.device is not device:
                return  # a replaced driver
            current = device.health
            before = slot.state.health
            fresh = slot.reported_by is not device
            slot.reported_by = device
            was_open, slot.opened = slot.opened, True
            changed = self._update(slot, current.health, current.reason)
            if (
                current.health == Health.UNAVAILABLE
                and slot.probe is not None
                and slot.next_try is None
                and not slot.busy
                and not slot.permanent
            ):
                self._retry_later(slot)
            state = slot.state
        if not changed:
            return
        if fresh and was_open and before == Health.UNAVAILABLE and current.health == Health.OK:
            log.info("%s is available again", slot.name)  # a new driver: its own log starts at ok
        self._emit("health", state)
        self._wake()

    def _update(self, slot: _Slot, health: Health, reason: str) -> bool:
        """Record a new state (lock held); False when nothing changed."""
        old = slot.state
        if old.health == health and old.reason == reason:
            return False
        now = self._clock.now()
        failed = health != Health.OK and bool(reason)
        slot.state = DeviceHealth(
            slot.name,
            health,
            reason,
            backend=slot.backend,
            simulated=slot.simulated,
            last_error=reason if failed else old.last_error,
            last_error_at=now if failed else old.last_error_at,
            since=now if health != old.health or old.since is None else old.since,
        )
        return True

    def _self_check(self, slot: _Slot) -> None:
        """Probe a request device (executor thread); the driver sets its own health."""
        device, probe = slot.device, slot.probe
        if device is None or probe is None:
            return
        try:
            probe()
        except DeviceMisconfigured as exc:  # e.g. no USB backend: probing again will not help
            with self._lock:
                slot.permanent = True
                slot.next_try = None
            device.set_health(Health.UNAVAILABLE, str(exc))
        except TillboxError as exc:
            if device.health.health == Health.OK:
                device.set_health(Health.UNAVAILABLE, str(exc))
        except Exception as exc:
            log.exception("self-check of %s failed", slot.name)
            device.set_health(Health.UNAVAILABLE, f"self-check failed: {exc}")
        self._learn_nodes(slot)

    def _learn_nodes(self, slot: _Slot) -> None:
        """Remember the device nodes the configured paths resolve to (for udev remove events)."""
        nodes = {os.path.realpath(p) for p in slot.paths if os.path.exists(p)}
        if nodes:
            with self._lock:
                slot.nodes |= nodes

    # -- hotplug ----------------------------------------------------------------------------------

    def _drain_udev(self, monitor: UdevMonitor) -> None:
        try:
            while (event := monitor.poll(0)) is not None:
                self.handle_udev_event(event)
        except Exception:
            log.exception("reading udev events failed; hotplug is off")
            self._monitor = None

    def handle_udev_event(self, event: UdevDevice) -> tuple[str, ...]:
        """Act on one udev event; returns the names of the devices it concerns.

        ``add``: a matching device that is down is reopened now (back-off reset).
        ``remove``: a matching request device is marked unavailable (readers notice themselves).
        """
        action = event.action or ""
        if action not in ("add", "remove"):
            return ()
        links = frozenset(event.device_links)
        node = event.device_node
        props = event.properties
        vid = props.get("ID_VENDOR_ID", "").lower()
        pid = props.get("ID_MODEL_ID", "").lower()
        hits: list[_Slot] = []
        with self._lock:
            if self._closed:
                return ()
            for slot in self._slots.values():
                by_path = any(p in links or p == node for p in slot.paths)
                by_node = node is not None and node in slot.nodes
                by_usb = slot.usb is not None and (vid, pid) == slot.usb
                if by_path or by_node or by_usb:
                    hits.append(slot)
            for slot in hits:
                if action == "add" and slot.state.health == Health.UNAVAILABLE and not slot.permanent:
                    slot.replug = True
                    slot.delay = self._backoff.initial
        names = tuple(slot.name for slot in hits)
        if not names:
            return names
        log.debug("udev %s of %s concerns %s", action, node or "a device", ", ".join(names))
        if action == "remove":
            for slot in hits:
                device = slot.device
                if device is not None and slot.name not in _READERS:
                    device.set_health(Health.UNAVAILABLE, f"unplugged ({node or 'udev remove'})")
        self._wake()
        return names

    # -- driver callbacks -------------------------------------------------------------------------

    def _scanned(self, code: str, symbology: str | None) -> None:
        with self._lock:
            waiters, self._scan_waiters = self._scan_waiters, []
        if waiters:
            for event, box in waiters:
                box.append((code, symbology))
                event.set()
            return
        self._emit("scan", ScanEvent("scanner", code, symbology, self._clock.now()))

    def _rejected(self, device: str) -> Callable[[str], None]:
        return lambda reason: self._emit("rejected", InputRejected(device, reason, self._clock.now()))

    def _badge_read(self, data: str) -> None:
        self._emit("badge", BadgeRead("badge", data, self._clock.now()))

    # -- builders ---------------------------------------------------------------------------------

    def _slot(self, name: str) -> _Slot | None:
        """The slot of ``name`` as configured, or None when its kind is "none"."""
        d = self._devices
        sim = self._sim
        match name:
            case "scanner" if d.scanner.kind != "none":
                return _Slot(
                    name,
                    f"{d.scanner.kind} {d.scanner.device}",
                    sim,
                    self._build_scanner,
                    None,
                    paths=(d.scanner.device,),
                )
            case "printer" if d.printer.kind != "none":
                return self._printer_slot()
            case "companion" if d.companion.kind != "none":
                c = d.companion
                usb = (c.vendor_id.lower(), c.product_id.lower())
                where = c.device or f"usb {usb[0]}:{usb[1]}"
                paths = (c.device,) if c.device else ()
                return _Slot(
                    name, f"usb {where}", sim, self._build_companion, None, paths=paths, usb=None if c.device else usb
                )
            case "drawer" if d.drawer.kind != "none":
                dr = d.drawer
                sensor = "" if dr.sensor == "none" else f", sensor {dr.sensor}"
                return _Slot(name, f"{dr.kind}{sensor}", sim, self._build_drawer, None)
            case "badge" if d.badge.kind != "none":
                return _Slot(name, f"evdev {d.badge.device}", sim, self._build_badge, None, paths=(d.badge.device,))
            case "display" if d.display.kind == "printer":
                return _Slot(name, "behind the printer (ESC =)", sim, self._build_display, self._probe_display)
            case "display" if d.display.kind != "none":
                return _Slot(
                    name,
                    f"serial {d.display.device}",
                    sim,
                    self._build_display,
                    self._probe_display,
                    paths=(d.display.device,),
                )
            case "scale" if d.scale.kind != "none":
                return _Slot(
                    name, f"serial {d.scale.device}", sim, self._build_scale, self._probe_scale, paths=(d.scale.device,)
                )
            case "terminal" if d.terminal.kind != "none":
                t = d.terminal
                if t.kind == "zvt-serial":
                    return _Slot(
                        name,
                        f"zvt-serial {t.device}",
                        sim,
                        self._build_terminal,
                        self._probe_terminal,
                        paths=(t.device,),
                    )
                return _Slot(name, f"zvt-tcp {t.host}:{t.port}", sim, self._build_terminal, self._probe_terminal)
        return None

    def _printer_slot(self) -> _Slot:
        p = self._devices.printer
        if p.kind == "usb":
            usb = (p.vendor_id.lower(), p.product_id.lower())
            return _Slot(
                "printer", f"usb {usb[0]}:{usb[1]}", self._sim, self._build_printer, self._probe_printer, usb=usb
            )
        if p.kind == "network":
            return _Slot("printer", f"network {p.host}:{p.port}", self._sim, self._build_printer, self._probe_printer)
        return _Slot(
            "printer", f"{p.kind} {p.device}", self._sim, self._build_printer, self._probe_printer, paths=(p.device,)
        )

    def _set_peer(self, name: str, peer: object) -> None:
        with self._lock:
            slot = self._slots.get(name)
            if slot is not None:
                slot.sim_peer = peer

    def _build_scanner(self) -> _Built:
        s = self._devices.scanner
        reject = self._rejected("scanner")
        if self._sim:
            scanner = SimulatedScanner(self._scanned, on_reject=reject, name="scanner")
            self._set_peer("scanner", scanner)
            return scanner, ()
        if s.kind == "serial":
            terminator: Literal["cr", "lf", "crlf"] = (
                "lf" if s.terminator == "lf" else "crlf" if s.terminator == "crlf" else "cr"
            )
            framing = SerialFraming(terminator=terminator, stx_etx=s.stx_etx)
            return SerialScanner(
                s.device,
                self._scanned,
                on_reject=reject,
                framing=framing,
                baudrate=s.baudrate,
                name="scanner",
                backoff=self._backoff,
            ), ()
        decoder = WedgeDecoder(
            s.layout,
            terminator=Terminator(s.terminator),
            scan_timeout=s.scan_timeout_ms / 1000,
            key_gap=s.key_gap_ms / 1000,
            max_gap=s.max_gap_ms / 1000,
        )
        return EvdevScanner(
            s.device, self._scanned, on_reject=reject, decoder=decoder, name="scanner", backoff=self._backoff
        ), ()

    def _build_badge(self) -> _Built:
        b = self._devices.badge
        reject = self._rejected("badge")
        if self._sim:
            reader = SimulatedBadgeReader(self._badge_read, on_reject=reject, name="badge")
            self._set_peer("badge", reader)
            return reader, ()
        decoder = WedgeDecoder(b.layout, terminator=Terminator(b.terminator))
        return EvdevBadgeReader(
            b.device, self._badge_read, on_reject=reject, decoder=decoder, name="badge", backoff=self._backoff
        ), ()

    def _printer_profile(self) -> PrinterProfile:
        p = self._devices.printer
        return PrinterProfile(
            paper_mm=p.paper_mm,
            code_page=p.code_page,
            columns=p.columns,
            code_table=None if p.code_table < 0 else p.code_table,
            symbology=p.reference_code,
            cut=p.cut,
        )

    def _build_printer(self) -> _Built:
        p = self._devices.printer
        profile = self._printer_profile()
        logo = None
        if p.logo:
            if self._data_dir is None:
                log.warning("printer logo %s ignored: no data directory given", p.logo)
            else:
                try:
                    logo = load_logo(self._data_dir / p.logo, profile)
                except DeviceMisconfigured as exc:
                    log.warning("printing without a logo: %s", exc)
        link: Transport | Callable[[], Transport]
        check_status = p.status_check
        if self._sim:
            sim = SimulatedPrinter(columns=profile.columns)
            self._set_peer("printer", sim)
            link = sim
        else:
            link = self._printer_opener()
            check_status = p.status_check and p.kind != "file"
        printer = ReceiptPrinter(
            link,
            profile,
            logo=logo,
            clock=self._clock,
            queue=self._print_queue,
            on_alert=self._emitter("printer"),
            check_status=check_status,
            name="printer",
        )
        return printer, ()

    def _printer_opener(self) -> Callable[[], Transport]:
        p = self._devices.printer
        if p.kind == "usb":
            vid, pid = int(p.vendor_id, 16), int(p.product_id, 16)
            in_ep, out_ep = int(p.in_endpoint, 16), int(p.out_endpoint, 16)
            return lambda: usb_link(vid, pid, in_ep=in_ep, out_ep=out_ep)
        if p.kind == "serial":
            return lambda: serial_link(p.device, p.baudrate)
        if p.kind == "network":
            return lambda: network_link(p.host, p.port)

        def open_file() -> Transport:
            if not os.path.exists(p.device):  # python-escpos would create a plain file in its place
                raise DeviceUnavailable(f"printer file {p.device} not found")
            return file_link(p.device)

        return open_file

    def _probe_printer(self) -> None:
        printer = self.printer
        if printer is None:
            return
        if self._sim or (self._devices.printer.status_check and self._devices.printer.kind != "file"):
            printer.status()  # sets health from paper/cover/online
            return
        printer.send(b"")  # a link that cannot report status: opening it is all we can check
        if printer.health.health == Health.UNAVAILABLE:
            printer.set_health(Health.OK)

    def _build_companion(self) -> _Built:
        c = self._devices.companion
        timeout = _seconds(c.heartbeat_timeout_seconds)
        settings = CompanionSettings(
            heartbeat_timeout=timeout, heartbeat_interval=min(1.0, timeout / 3), reply_timeout=min(0.5, timeout / 2)
        )
        options: dict[str, Any] = {
            "on_call": self._emitter("attendant"),
            "on_input": self._emitter("input"),
            "settings": settings,
            "name": "companion",
            "clock": self._clock,
            "backoff": self._backoff,
        }
        if self._sim:
            from drivers.companion.sim import SimulatedCompanion

            board = SimulatedCompanion(**options)
            self._set_peer("companion", board.board)
            return board, ()
        usb = UsbMatch(int(c.vendor_id, 16), int(c.product_id, 16))
        return CompanionBoard(port=c.device, usb=usb, **options), ()

    def _dependency(self, name: str, cls: type[_D]) -> _D:
        """The device ``name`` another device is wired through; raises when it is not there."""
        with self._lock:
            slot = self._slots.get(name)
            permanent = slot is not None and slot.permanent
        device = self._typed(name, cls)
        if device is None:
            if permanent:
                raise DeviceMisconfigured(f"the {name} it is wired through is unavailable")
            raise DeviceUnavailable(f"the {name} it is wired through is not open")
        return device

    def _build_drawer(self) -> _Built:
        d = self._devices.drawer
        kicker: Kicker
        sensor: DrawerSensor | None = None
        if self._sim:
            sim = SimulatedDrawer(self._clock)
            self._set_peer("drawer", sim)
            kicker, sensor = sim, (sim if d.sensor != "none" else None)
        else:
            closers: list[Callable[[], None]] = []
            try:
                kicker = self._drawer_kicker(closers)
                sensor = self._drawer_sensor(closers)
            except BaseException:
                for close in closers:
                    close()
                raise
        drawer = CashDrawer(
            kicker,
            sensor,
            clock=self._clock,
            left_open_after=float(d.left_open_seconds),
            on_open=self._emitter("drawer"),
            on_left_open=self._emitter("drawer"),
            name="drawer",
        )
        return drawer, ()

    def _drawer_kicker(self, closers: list[Callable[[], None]]) -> Kicker:
        d = self._devices.drawer
        if d.kind == "printer":
            pin = 0 if d.kick_pin == 2 else 1
            return PrinterKicker(self._dependency("printer", ReceiptPrinter), pin=pin, on_ms=d.pulse_ms, off_ms=500)
        if d.kind == "companion":
            return CompanionKicker(self._dependency("companion", CompanionBoard), d.companion_output, d.pulse_ms)
        gpio = GpioKicker(
            d.gpio_pin, pulse_ms=d.pulse_ms, active_high=d.gpio_active_high, pin_factory=self._pin_factory
        )
        closers.append(gpio.close)
        return gpio

    def _drawer_sensor(self, closers: list[Callable[[], None]]) -> DrawerSensor | None:
        d = self._devices.drawer
        if d.sensor == "printer":
            printer = self._dependency("printer", ReceiptPrinter)
            return PrinterDrawerSensor(printer, open_when_high=d.sensor_open_level == "high")
        if d.sensor == "companion":
            board = self._dependency("companion", CompanionBoard)
            return CompanionSensor(board, d.sensor_input, open_when_active=d.sensor_open_level == "low")
        if d.sensor == "gpio":
            gpio = GpioDrawerSensor(
                d.sensor_gpio_pin,
                pull_up=True,
                open_when_active=d.sensor_open_level == "low",
                pin_factory=self._pin_factory,
            )
            closers.append(gpio.close)
            return gpio
        return None

    def _schedule_drawer_poll(self) -> None:
        with self._lock:
            if "drawer" in self._slots and self._devices.drawer.sensor != "none":
                self._drawer_next_poll = self._clock.monotonic()

    def _poll_drawer(self) -> None:
        try:
            drawer = self.drawer
            if drawer is not None:
                drawer.poll()
        except Exception:
            log.exception("polling the drawer failed")
        finally:
            with self._lock:
                self._drawer_polling = False
                self._drawer_next_poll = self._clock.monotonic() + self._devices.drawer.sensor_poll_ms / 1000

    def _build_display(self) -> _Built:
        d = self._devices.display
        via_printer = d.kind == "printer"
        profile = DisplayProfile(
            columns=d.columns,
            rows=d.rows,
            code_page=d.code_page,
            code_table=None if d.code_table < 0 else d.code_table,
            via_printer=via_printer,
        )
        link: Transport | Callable[[], Transport]
        if via_printer:
            sim = SimulatedDisplay(d.columns, d.rows) if self._sim else None
            if sim is not None:
                self._set_peer("display", sim)
            link = lambda: self._printer_passthrough(sim)  # noqa: E731 - an opener: the printer may be replaced
        elif self._sim:
            sim = SimulatedDisplay(d.columns, d.rows)
            self._set_peer("display", sim)
            link = sim
        else:
            link = lambda: SerialTransport(d.device, d.baudrate)  # noqa: E731 - an opener, called on each reconnect
        display = CustomerDisplay(
            link, profile, currency=self._currency, clock=self._clock, retry_after=self._backoff.initial, name="display"
        )
        return display, ()

    def _printer_passthrough(self, sim: SimulatedDisplay | None) -> PrinterPassthrough:
        """The display's link through the printer that is open now (sim: the display hangs behind its simulator)."""
        try:
            printer = self._dependency("printer", ReceiptPrinter)
        except DeviceMisconfigured as exc:  # the display retries; the printer's own slot reports why
            raise DeviceUnavailable(str(exc)) from exc
        if sim is not None:
            printer_sim = self.simulator("printer")
            if isinstance(printer_sim, SimulatedPrinter):
                printer_sim.peripheral = sim
        return PrinterPassthrough(printer)

    def _probe_display(self) -> None:
        display = self.display
        if display is None or display.health.health == Health.OK:
            return  # opened and initialised when built
        if not display.show_lines(*display.lines):
            raise DeviceUnavailable(display.health.reason or "display did not take the text")

    def _build_scale(self) -> _Built:
        s = self._devices.scale
        unit = WeightUnit(s.unit)
        timeout = s.reply_timeout_ms / 1000
        if self._sim:
            scale = SimulatedScale(unit=unit, name="scale", reply_timeout=timeout)
            self._set_peer("scale", scale.peer)
            return scale, ()
        bits, parity, stop = int(s.serial_format[0]), s.serial_format[1], int(s.serial_format[2])
        return serial_scale(
            s.device,
            unit=unit,
            baudrate=s.baudrate,
            bytesize=bits,
            parity=parity,
            stopbits=stop,
            name="scale",
            reply_timeout=timeout,
            backoff=self._backoff,
        ), ()

    def _probe_scale(self) -> None:
        scale = self.scale
        if scale is not None:
            scale.status()

    def _build_terminal(self) -> _Built:
        t = self._devices.terminal
        options: dict[str, Any] = {
            "name": "terminal",
            "password": t.password,
            "currency": self._currency.code,
            "t3": _seconds(t.ack_timeout_seconds),
            "t4": _seconds(t.response_timeout_seconds),
        }
        if self._sim:
            from drivers.zvt_sim import ZvtSimulator

            sim = ZvtSimulator.pty(clock=self._clock.now)
            try:
                terminal = ZvtTerminal.serial(sim.port, **options)
            except BaseException:
                sim.close()
                raise
            self._set_peer("terminal", sim)
            return terminal, (sim.close,)
        if t.kind == "zvt-serial":
            return ZvtTerminal.serial(t.device, t.baudrate, **options), ()
        return ZvtTerminal.tcp(t.host, t.port, **options), ()

    def _probe_terminal(self) -> None:
        terminal = self.terminal
        if terminal is None or terminal.pending is not None:
            return  # an unresolved payment is the daemon's to settle first
        status = terminal.status()
        if not status.ready:
            terminal.set_health(Health.DEGRADED, f"terminal not ready: {status.message}")

    # -- technician self-tests (blocking: run them in an executor) ---------------------------------

    def _missing(self, name: str) -> SelfTestResult | None:
        if name not in self._slots:
            return SelfTestResult(name, False, f"no {name} is configured")
        if self.device(name) is None:
            return SelfTestResult(name, False, self._slots[name].state.reason or f"{name} is not open")
        return None

    def test_print(self) -> SelfTestResult:
        """Print a test page (settings, ruler, character set) after a status check."""
        missing = self._missing("printer")
        printer = self.printer
        if missing is not None or printer is None:
            return missing or SelfTestResult("printer", False, "printer is not open")
        can_ask = self._sim or (self._devices.printer.status_check and self._devices.printer.kind != "file")
        try:
            if can_ask:
                status = printer.status()
                if not status.ready:
                    return SelfTestResult("printer", False, "not ready: " + ", ".join(status.problems))
            printer.send(
                render_test_page(
                    printer.profile, now=self._clock.now(), lines=[f"link {self._slots['printer'].backend}"]
                )
            )
        except TillboxError as exc:
            return SelfTestResult("printer", False, str(exc))
        return SelfTestResult("printer", True, "test page sent")

    def test_drawer(self, actor: str) -> SelfTestResult:
        """Kick the drawer open; the opening reaches :meth:`on_drawer` listeners like any other."""
        missing = self._missing("drawer")
        drawer = self.drawer
        if missing is not None or drawer is None:
            return missing or SelfTestResult("drawer", False, "drawer is not open")
        try:
            drawer.open("technician test", actor)
        except TillboxError as exc:
            return SelfTestResult("drawer", False, str(exc))
        return SelfTestResult("drawer", True, "drawer kicked")

    def test_display(self) -> SelfTestResult:
        """Show a ruler and the character set on the pole display (the daemon restores its text)."""
        missing = self._missing("display")
        display = self.display
        if missing is not None or display is None:
            return missing or SelfTestResult("display", False, "display is not open")
        columns = display.profile.columns
        ruler = "".join(str(i % 10) for i in range(1, columns + 1))
        if not display.show_lines(ruler, "ÄÖÜ äöü ß € TEST"[:columns], *["*" * columns] * (display.profile.rows - 2)):
            return SelfTestResult("display", False, display.health.reason or "display did not take the text")
        return SelfTestResult("display", True, "test pattern shown")

    def test_scanner(self, timeout: float = 30.0) -> SelfTestResult:
        """Wait up to ``timeout`` seconds for the next scan; that scan goes to the test, not to a sale."""
        missing = self._missing("scanner")
        if missing is not None:
            return missing
        event, box = threading.Event(), list[tuple[str, str | None]]()
        with self._lock:
            if self._closed:
                return SelfTestResult("scanner", False, "device manager is closed")
            self._scan_waiters.append((event, box))
        try:
            event.wait(timeout)
        finally:
            with self._lock, contextlib.suppress(ValueError):
                self._scan_waiters.remove((event, box))
        if not box:
            return SelfTestResult("scanner", False, f"no scan within {timeout:g} s")
        code, symbology = box[0]
        return SelfTestResult("scanner", True, f"read {code}" + (f" ({symbology})" if symbology else ""))

    def test_scale(self) -> SelfTestResult:
        """Read the weight once."""
        missing = self._missing("scale")
        scale = self.scale
        if missing is not None or scale is None:
            return missing or SelfTestResult("scale", False, "scale is not open")
        try:
            reading = scale.read()
        except TillboxError as exc:
            return SelfTestResult("scale", False, str(exc))
        if reading.value is None:
            return SelfTestResult("scale", True, f"no weight: {reading.status.describe()}")
        return SelfTestResult("scale", True, f"{reading.value} {reading.unit} ({reading.status.describe()})")

    def test_terminal(self) -> SelfTestResult:
        """Ask the payment terminal for its status (no money moves)."""
        missing = self._missing("terminal")
        terminal = self.terminal
        if missing is not None or terminal is None:
            return missing or SelfTestResult("terminal", False, "terminal is not open")
        try:
            status = terminal.status()
        except TillboxError as exc:
            return SelfTestResult("terminal", False, str(exc))
        tid = f", terminal id {status.terminal_id}" if status.terminal_id else ""
        return SelfTestResult("terminal", status.ready, status.message + tid)
