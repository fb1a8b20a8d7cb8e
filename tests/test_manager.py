"""Device manager: built from config, simulators, real serial devices on ptys, health, hotplug, lifecycle."""

from __future__ import annotations

import logging
import os
import re
import select
import threading
import time
import tty
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory

from appliance.clock import FrozenClock
from appliance.config import Config, ConfigError, parse_config
from appliance.errors import DeviceUnavailable
from drivers.base import Health
from drivers.companion.host import AttendantCall
from drivers.display import DisplayProfile, init_frame, text_frame
from drivers.drawer import DrawerLeftOpen, DrawerOpen, SimulatedDrawer
from drivers.escpos_codec import INIT, PrinterProfile, PrinterStatus, cmd_pulse
from drivers.manager import (
    NOT_OPEN,
    BadgeRead,
    DeviceHealth,
    DeviceManager,
    InputRejected,
    ScanEvent,
    render_test_page,
)
from drivers.printer import SimulatedPrinter
from drivers.scanner import SimulatedScanner

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "systemd" / "99-tillbox.rules"

ALL_SIM = """
[devices]
mode = "sim"
[devices.drawer]
sensor = "printer"
[devices.terminal]
kind = "zvt-tcp"
host = "terminal.local"
[devices.badge]
kind = "evdev"
[devices.display]
kind = "serial"
[devices.scale]
kind = "serial"
"""
WITH_BOARD = ALL_SIM + '[devices.companion]\nkind = "usb"\n'


def config(text: str, **environ: str) -> Config:
    return parse_config(text, environ=environ)


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


@pytest.fixture(autouse=True)
def _no_leftover_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 2
    while set(threading.enumerate()) - before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert set(threading.enumerate()) <= before, "threads left behind"


@dataclass
class Seen:
    """Everything the manager dispatched, in order; thread-safe enough for appends."""

    events: list[Any] = field(default_factory=list)

    def dispatch(self, fn: Callable[[], None]) -> None:
        fn()

    def of(self, kind: type) -> list[Any]:
        return [e for e in list(self.events) if isinstance(e, kind)]

    def health_of(self, name: str) -> list[DeviceHealth]:
        return [e for e in self.of(DeviceHealth) if e.device == name]

    def subscribe(self, manager: DeviceManager) -> None:
        for register in (
            manager.on_health,
            manager.on_scan,
            manager.on_badge,
            manager.on_rejected,
            manager.on_attendant,
            manager.on_input,
            manager.on_drawer,
            manager.on_printer_alert,
        ):
            register(self.events.append)


def manager(cfg: Config, seen: Seen, **kwargs: Any) -> DeviceManager:
    mgr = DeviceManager(cfg, dispatch=seen.dispatch, **kwargs)
    seen.subscribe(mgr)
    return mgr


class Pty:
    """A pseudo-terminal pair; the slave is reached through a symlink that can vanish (unplug)."""

    def __init__(self, link: Path) -> None:
        self.link = link
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        tmp = link.with_suffix(".new")
        tmp.symlink_to(os.ttyname(self.slave))
        tmp.replace(link)
        self.node = os.ttyname(self.slave)
        self.open = True

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def receive(self, size: int, timeout: float = 2.0) -> bytes:
        out = b""
        deadline = time.monotonic() + timeout
        while len(out) < size and time.monotonic() < deadline:
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if ready:
                out += os.read(self.master, size - len(out))
        return out

    def unplug(self) -> None:
        if self.open:
            self.open = False
            self.link.unlink(missing_ok=True)
            os.close(self.slave)
            os.close(self.master)


@pytest.fixture
def ptys(tmp_path: Path) -> Iterator[Callable[[str], Pty]]:
    made: list[Pty] = []

    def make(name: str) -> Pty:
        pty = Pty(tmp_path / name)
        made.append(pty)
        return pty

    yield make
    for pty in made:
        pty.unplug()


def sync_scanner(pty: Pty, seen: Seen) -> None:
    """Wait until the scanner has the port open (pyserial flushes input on open)."""
    deadline = time.monotonic() + 3
    while not any(e.code == "SYNC" for e in seen.of(ScanEvent)):
        assert time.monotonic() < deadline, "scanner never opened the port"
        pty.send(b"SYNC\r")
        time.sleep(0.03)
    time.sleep(0.03)
    seen.events[:] = [e for e in seen.events if not (isinstance(e, ScanEvent) and e.code == "SYNC")]


@dataclass(frozen=True)
class FakeUdevDevice:
    """What pyudev reports for an add/remove event (only the fields the manager reads)."""

    action: str | None
    device_node: str | None = None
    device_links: tuple[str, ...] = ()
    properties: dict[str, str] = field(default_factory=dict)


class FakeMonitor:
    """A udev monitor stand-in: a pipe the manager can select on, and queued events."""

    def __init__(self) -> None:
        self._r, self._w = os.pipe()
        self._events: list[FakeUdevDevice] = []
        self._lock = threading.Lock()

    def push(self, event: FakeUdevDevice) -> None:
        with self._lock:
            self._events.append(event)
        os.write(self._w, b"e")

    def fileno(self) -> int:
        return self._r

    def poll(self, timeout: float | None = None) -> FakeUdevDevice | None:
        with self._lock:
            if not self._events:
                return None
            os.read(self._r, 1)
            return self._events.pop(0)

    def close(self) -> None:
        os.close(self._r)
        os.close(self._w)


# --------------------------------------------------------------------------- configuration


def test_device_defaults() -> None:
    devices = Config.defaults().devices
    assert devices.mode == "sim"
    assert (devices.scanner.kind, devices.scanner.device) == ("evdev", "/dev/tillbox/scanner")
    assert (devices.printer.kind, devices.printer.vendor_id, devices.printer.product_id) == ("usb", "04b8", "0202")
    assert devices.drawer.kind == "printer"
    assert {devices.terminal.kind, devices.badge.kind, devices.display.kind, devices.scale.kind} == {"none"}
    assert devices.companion.kind == "none"
    assert devices.reconnect_initial_seconds == Decimal(1)
    assert type(devices.terminal.ack_timeout_seconds) is Decimal


def test_every_device_path_defaults_under_dev_tillbox() -> None:
    cfg = config(WITH_BOARD)
    for name, path in cfg.devices.device_paths().items():
        assert path == f"/dev/tillbox/{name}"


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ('[devices.printer]\nkind = "network"\n', ["devices.printer.host", "needs a host"]),
        ('[devices.printer]\nkind = "laser"\n', ["devices.printer.kind", '"usb"']),
        ("[devices.printer]\npaper_mm = 76\n", ["devices.printer.paper_mm", "58 or 80"]),
        ("[devices.printer]\npaper_mm = 58\ncolumns = 48\n", ["devices.printer.columns", "58 mm paper"]),
        ('[devices.printer]\ncode_page = "CP-9999"\n', ["devices.printer.code_page", "not a supported code page"]),
        ('[devices.printer]\nvendor_id = "4b8"\n', ["devices.printer.vendor_id", "four hex digits"]),
        ('[devices.printer]\nkind = "none"\n', ["devices.drawer.kind", "printer"]),
        ('[devices.drawer]\nkind = "companion"\n', ["devices.drawer.kind", "companion"]),
        ("[devices.drawer]\nkick_pin = 3\n", ["devices.drawer.kick_pin", "2 or 5"]),
        ("[devices.drawer]\npulse_ms = 5000\n", ["devices.drawer.pulse_ms", "out of range"]),
        (
            '[devices.printer]\nkind = "file"\n[devices.drawer]\nsensor = "printer"\n',
            ["devices.drawer.sensor", "status_check"],
        ),
        ('[devices.scanner]\nterminator = "crlf"\n', ["devices.scanner.terminator", "serial scanners"]),
        ('[devices.scanner]\nkind = "serial"\nterminator = "tab"\n', ["devices.scanner.terminator", "evdev"]),
        ("[devices.scanner]\nkey_gap_ms = 80\n", ["devices.scanner.max_gap_ms", "key_gap_ms <= max_gap_ms"]),
        ('[devices.scanner]\ndevice = "dev/ttyACM0"\n', ["devices.scanner.device", "absolute device path"]),
        ('[devices.scanner]\nlayout = "fr"\n', ["devices.scanner.layout", '"us", "de"']),
        ('[devices.scanner]\nlayot = "de"\n', ["unknown key 'layot'", "did you mean 'layout'"]),
        ('[devices.terminal]\nkind = "zvt-tcp"\n', ["devices.terminal.host", "needs a host"]),
        ('[devices.terminal]\npassword = "12345"\n', ["devices.terminal.password", "six digits"]),
        ("[devices.terminal]\nresponse_timeout_seconds = 5\n", ["devices.terminal.response_timeout_seconds"]),
        (
            '[devices.display]\nkind = "serial"\ndevice = "/dev/tillbox/scanner"\n',
            ["devices.display.device", "already used by [devices.scanner]"],
        ),
        ("[devices]\nreconnect_initial_seconds = 40\nreconnect_max_seconds = 10\n", ["reconnect_initial_seconds"]),
        ('[devices.scale]\nserial_format = "9X1"\n', ["devices.scale.serial_format", '"7E1"']),
        ('[devices.badge]\nkind = "serial"\n', ["devices.badge.kind", '"evdev"']),
        (
            '[devices.printer]\nkind = "none"\n[devices.drawer]\nkind = "none"\n[devices.display]\nkind = "printer"\n',
            ["devices.display.kind", "behind the printer needs [devices.printer]"],
        ),
    ],
)
def test_bad_device_settings_fail_at_start_up(text: str, fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        config(text)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_example_file_configures_devices() -> None:
    from appliance.config import load_config

    devices = load_config(ROOT / "docs" / "tillbox.example.toml", environ={}).devices
    assert devices.mode == "real"
    assert devices.scanner.kind != "none" and devices.printer.kind != "none"


# --------------------------------------------------------------------------- simulators


def test_sim_mode_opens_a_simulator_for_every_configured_device() -> None:
    seen = Seen()
    with manager(config(WITH_BOARD), seen) as mgr:
        assert all(h.health == Health.UNAVAILABLE and h.reason == NOT_OPEN for h in mgr.health().values())
        mgr.start(background=False)
        health = mgr.health()
        assert list(health) == ["printer", "companion", "drawer", "scanner", "badge", "display", "scale", "terminal"]
        assert {name: h.health for name, h in health.items()} == dict.fromkeys(health, Health.OK)
        assert all(h.simulated for h in health.values())
        assert health["terminal"].backend == "zvt-tcp terminal.local:20007"
        assert isinstance(mgr.simulator("printer"), SimulatedPrinter)
        assert isinstance(mgr.simulator("drawer"), SimulatedDrawer)
        assert isinstance(mgr.scanner, SimulatedScanner)
        assert mgr.terminal is not None and mgr.scale is not None and mgr.companion is not None
        # every device announced itself once: from "not opened yet" to ok
        assert sorted(h.device for h in seen.of(DeviceHealth)) == sorted(health)


def test_display_behind_the_printer_in_sim_mode() -> None:
    cfg = config('[devices]\nmode = "sim"\n[devices.display]\nkind = "printer"\n[devices.scale]\nkind = "serial"\n')
    assert "display" not in cfg.devices.device_paths()  # it has no port of its own
    with manager(cfg, Seen()) as mgr:
        mgr.start(background=False)
        assert mgr.health()["display"].backend == "behind the printer (ESC =)"
        assert mgr.display is not None and mgr.display.show_lines("HELLO", "WORLD")
        assert mgr.simulator("display").lines == ("HELLO", "WORLD")
        assert mgr.test_print().ok
        printer = mgr.simulator("printer")
        assert "printer test" in printer.text() and "HELLO" not in printer.text()
        assert bytes(printer.passthrough).count(b"\x1b=\x02") == 2  # initialise, then the text


def test_kind_none_is_not_opened() -> None:
    with DeviceManager(config("[devices]\nmode = 'sim'\n"), dispatch=lambda fn: fn()) as mgr:
        mgr.start(background=False)
        assert mgr.names() == ("printer", "drawer", "scanner")
        assert mgr.display is None and mgr.terminal is None
        result = mgr.test_display()
        assert (result.ok, result.message) == (False, "no display is configured")


def test_environment_forces_simulators() -> None:
    real = '[devices]\nmode = "real"\n[devices.display]\nkind = "serial"\ndevice = "/dev/tillbox/nonexistent"\n'
    with DeviceManager(config(real, TILLBOX_DEVICES="sim"), dispatch=lambda fn: fn()) as mgr:
        mgr.start(background=False)
        assert mgr.simulated
        assert mgr.health()["display"].health == Health.OK
        assert mgr.display is not None and mgr.display.show_lines("HELLO")
        assert mgr.simulator("display").lines[0] == "HELLO"


def test_events_go_through_dispatch_only() -> None:
    queued: list[Callable[[], None]] = []
    received: list[Any] = []
    mgr = DeviceManager(config(ALL_SIM), dispatch=queued.append)
    mgr.on_scan(received.append)
    mgr.on_badge(received.append)
    mgr.on_rejected(received.append)
    with mgr:
        mgr.start(background=False)
        queued.clear()
        assert mgr.scanner is not None and mgr.badge is not None
        mgr.scanner.feed("]E04006381333931")
        mgr.badge.feed("STAFF-0042")
        mgr.badge.feed("%B4111111111111111^DOE/JOHN^2512101?")
        assert received == []  # nothing runs on the driver's thread
        for fn in queued:
            fn()
    assert [type(e) for e in received] == [ScanEvent, BadgeRead, InputRejected]
    scan, badge, rejected = received
    assert (scan.code, scan.symbology) == ("4006381333931", "]E0")
    assert badge.data == "STAFF-0042" and "STAFF" not in repr(badge)
    assert rejected == InputRejected("badge", "payment card data discarded", rejected.at)


def test_companion_help_button_reaches_listeners() -> None:
    seen = Seen()
    with manager(config(WITH_BOARD), seen) as mgr:
        mgr.start(background=False)
        board = mgr.simulator("companion")
        wait_for(lambda: mgr.companion is not None and mgr.companion.info is not None)
        board.press(0)
        wait_for(lambda: bool(seen.of(AttendantCall)))
        board.release(0)
    assert seen.of(AttendantCall)[0].device == "companion"


def test_self_tests_with_simulators() -> None:
    clock = FrozenClock(datetime(2026, 3, 2, 9, 30, tzinfo=UTC))
    seen = Seen()
    with manager(config(ALL_SIM), seen, clock=clock) as mgr:
        mgr.start(background=False)
        printer = mgr.simulator("printer")

        result = mgr.test_print()
        assert result.ok, result.message
        assert "printer test" in printer.text() and "2026-03-02T09:30:00.000Z" in printer.text()
        printer.status = PrinterStatus(paper_out=True)
        result = mgr.test_print()
        assert (result.ok, result.message) == (False, "not ready: paper out")
        assert mgr.health()["printer"].reason == "paper out"

        assert mgr.test_drawer("ann").ok
        assert len(mgr.simulator("drawer").pulses) == 1
        opened = seen.of(DrawerOpen)
        assert [(o.reason, o.actor) for o in opened] == [("technician test", "ann")]

        assert mgr.test_display().ok
        assert mgr.simulator("display").lines == ("12345678901234567890", "ÄÖÜ äöü ß EUR TEST")

        mgr.simulator("scale").place(Decimal("1.235"))
        result = mgr.test_scale()
        assert (result.ok, result.message) == (True, "1.235 kg (ok)")

        result = mgr.test_terminal()
        assert result.ok and "29001234" in result.message

        feeder = threading.Timer(0.05, lambda: mgr.scanner.feed("96385074"))  # type: ignore[union-attr]
        feeder.start()
        result = mgr.test_scanner(timeout=5)
        feeder.join()
        assert (result.ok, result.message) == (True, "read 96385074")
        assert seen.of(ScanEvent) == []  # the test scan went to the test, not to a sale
        assert mgr.test_scanner(timeout=0.01).message == "no scan within 0.01 s"


def test_test_page_bytes() -> None:
    now = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
    page = render_test_page(PrinterProfile(paper_mm=58, code_page="CP858"), now=now, lines=["link usb"])
    assert page.startswith(INIT + b"\x1bt\x13")  # ESC t 19: CP858
    assert b"12345678901234567890123456789012\n" in page and b"123456789012345678901234567890123" not in page
    assert "€".encode("cp858") in page
    assert page.endswith(b"\x1dVB\x00")  # partial cut
    no_cut = render_test_page(PrinterProfile(cut="none"), now=now)
    assert b"\x1dV" not in no_cut


# --------------------------------------------------------------------------- real devices on ptys


def test_real_serial_devices_and_missing_ones(tmp_path: Path, ptys: Callable[[str], Pty]) -> None:
    scanner, display = ptys("scanner"), ptys("display")
    receipts = tmp_path / "lp0"
    receipts.touch()
    cfg = config(f"""
[devices]
mode = "real"
hotplug = false
[devices.scanner]
kind = "serial"
device = "{scanner.link}"
[devices.printer]
kind = "file"
device = "{receipts}"
[devices.drawer]
kick_pin = 5
pulse_ms = 120
[devices.display]
kind = "serial"
device = "{display.link}"
[devices.scale]
kind = "serial"
device = "{tmp_path / "no-scale"}"
[devices.terminal]
kind = "zvt-serial"
device = "{tmp_path / "no-terminal"}"
""")
    seen = Seen()
    with manager(cfg, seen) as mgr:
        mgr.start(background=False)  # returns although two devices are missing
        health = mgr.health()
        assert health["scale"].health == Health.UNAVAILABLE
        assert "no-scale" in health["scale"].reason and health["scale"].last_error == health["scale"].reason
        assert health["terminal"].health == Health.UNAVAILABLE
        assert {n: health[n].health for n in ("printer", "drawer", "display")} == dict.fromkeys(
            ("printer", "drawer", "display"), Health.OK
        )
        assert not any(h.simulated for h in health.values())

        sync_scanner(scanner, seen)
        scanner.send(b"4006381333931\r")
        wait_for(lambda: len(seen.of(ScanEvent)) == 1)
        assert seen.of(ScanEvent)[0].code == "4006381333931"
        scanner.send(b"\xff\xfe\r")
        wait_for(lambda: mgr.health()["scanner"].health == Health.DEGRADED)
        assert seen.of(InputRejected)[0].reason == "garbage: not valid utf-8 text"

        profile = DisplayProfile()
        assert display.receive(len(init_frame(profile))) == init_frame(profile)
        assert mgr.test_display().ok
        assert display.receive(len(text_frame(["x", "y"], profile))).startswith(b"\x1f$\x01\x01123456789")

        assert mgr.test_print().ok
        assert mgr.test_drawer("ann").ok
        written = receipts.read_bytes()
        assert written.startswith(INIT) and b"printer test" in written
        assert written.endswith(cmd_pulse(1, 120, 500))

        assert not mgr.test_scale().ok
        assert not mgr.test_terminal().ok


def test_display_behind_a_serial_printer_end_to_end(ptys: Callable[[str], Pty]) -> None:
    from tests.test_display import PrinterWithDisplay, wait_for_peer

    port = ptys("printer")
    cfg = config(f"""
[devices]
mode = "real"
hotplug = false
[devices.scanner]
kind = "none"
[devices.printer]
kind = "serial"
device = "{port.link}"
[devices.drawer]
kind = "none"
[devices.display]
kind = "printer"
""")
    peer = PrinterWithDisplay(port.master)
    try:
        with manager(cfg, Seen()) as mgr:
            mgr.start(background=False)
            health = mgr.health()
            assert (health["printer"].health, health["display"].health) == (Health.OK, Health.OK)
            assert mgr.display is not None and mgr.display.show_item("Water", 79, 158)
            assert mgr.test_print().ok
            assert mgr.test_display().ok
            wait_for_peer(lambda: peer.display.lines[1].startswith("ÄÖÜ"))
            wait_for_peer(lambda: b"printer test" in peer.printed)
            assert b"Water" in peer.to_display and b"Water" not in peer.printed
    finally:
        peer.stop()


def test_missing_device_recovers_with_back_off(tmp_path: Path, ptys: Callable[[str], Pty]) -> None:
    link = tmp_path / "display"
    cfg = config(f"""
[devices]
mode = "real"
reconnect_initial_seconds = 1
reconnect_max_seconds = 4
[devices.scanner]
kind = "none"
[devices.printer]
kind = "none"
[devices.drawer]
kind = "none"
[devices.display]
kind = "serial"
device = "{link}"
""")
    clock = FrozenClock()
    seen = Seen()
    with manager(cfg, seen, clock=clock) as mgr:
        mgr.start(background=False)
        down = mgr.health()["display"]
        assert down.health == Health.UNAVAILABLE and str(link) in down.reason
        first = mgr.next_attempt("display")
        assert first == clock.monotonic() + 1

        steps = []
        for _ in range(4):  # still missing: 1, 2, 4, 4 (capped)
            before = mgr.next_attempt("display")
            assert before is not None
            clock.advance(before - clock.monotonic() - 0.5)
            mgr.maintain()
            assert mgr.next_attempt("display") == before  # not due yet
            clock.advance(0.5)
            mgr.maintain()
            after = mgr.next_attempt("display")
            assert after is not None
            steps.append(round(after - before, 6))
        assert steps == [2, 4, 4, 4]

        pty = ptys("display")
        assert pty.link == link
        clock.advance(4)
        mgr.maintain()
        up = mgr.health()["display"]
        assert up.health == Health.OK and up.reason == ""
        assert up.last_error == down.reason and up.last_error_at == down.last_error_at
        assert mgr.next_attempt("display") is None
    states = [(h.health, h.reason == "") for h in seen.health_of("display")]
    assert states == [(Health.UNAVAILABLE, False), (Health.OK, True)]  # reported once each way


def test_permanent_failure_is_not_retried() -> None:
    cfg = config('[currency]\ncode = "AUD"\nlocale = "en_AU"\n[devices]\nmode = "sim"\n[devices.terminal]\n'
                 'kind = "zvt-tcp"\nhost = "10.0.0.9"\n')  # fmt: skip
    clock = FrozenClock()
    with DeviceManager(cfg, dispatch=lambda fn: fn(), clock=clock) as mgr:
        mgr.start(background=False)
        state = mgr.health()["terminal"]
        assert state.health == Health.UNAVAILABLE and "AUD" in state.reason
        assert mgr.next_attempt("terminal") is None
        clock.advance(3600)
        mgr.maintain()
        assert mgr.health()["terminal"] == state
        assert mgr.test_terminal().message == state.reason


def test_gpio_drawer_with_sensor_and_left_open_alert() -> None:
    pins = MockFactory()
    try:
        cfg = config("""
[devices]
mode = "real"
[devices.scanner]
kind = "none"
[devices.printer]
kind = "none"
[devices.drawer]
kind = "gpio"
gpio_pin = 17
pulse_ms = 10
sensor = "gpio"
sensor_gpio_pin = 27
left_open_seconds = 30
""")
        clock = FrozenClock()
        seen = Seen()
        with manager(cfg, seen, clock=clock, pin_factory=pins) as mgr:
            mgr.start(background=False)
            kick, switch = pins.pin(17), pins.pin(27)
            switch.drive_low()  # shut: the switch grounds the line
            assert mgr.test_drawer("bob").ok
            assert [s.state for s in kick.states][-2:] == [True, False]
            switch.drive_high()
            mgr.maintain()  # first poll: open
            assert mgr.drawer is not None and mgr.drawer.is_open is True
            clock.advance(31)
            mgr.maintain()
            alerts = seen.of(DrawerLeftOpen)
            assert len(alerts) == 1 and alerts[0].seconds >= 30
            assert mgr.health()["drawer"].health == Health.DEGRADED
            switch.drive_low()
            clock.advance(1)
            mgr.maintain()
            assert mgr.health()["drawer"].health == Health.OK
            assert mgr.health()["drawer"].last_error.startswith("drawer left open")
    finally:
        pins.reset()


# --------------------------------------------------------------------------- listeners


@pytest.mark.allow_error_logs
def test_a_failing_listener_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    got: list[ScanEvent] = []

    def broken(event: ScanEvent) -> None:
        raise RuntimeError("listener bug")

    with DeviceManager(config("[devices]\nmode = 'sim'\n"), dispatch=lambda fn: fn()) as mgr:
        mgr.on_scan(broken)
        mgr.on_scan(got.append)
        mgr.start(background=False)
        assert mgr.scanner is not None
        mgr.scanner.feed("4006381333931")
    assert [e.code for e in got] == ["4006381333931"]
    assert any("scan listener failed" in r.getMessage() for r in caplog.records)


def test_health_listener_sees_loss_and_recovery_of_the_printer() -> None:
    seen = Seen()
    with manager(config("[devices]\nmode = 'sim'\n"), seen) as mgr:
        mgr.start(background=False)
        printer = mgr.simulator("printer")
        printer.disconnect()
        assert not mgr.test_print().ok
        printer.reconnect()
        assert mgr.test_print().ok
    states = [(h.health, h.reason) for h in seen.health_of("printer")]
    assert states[0] == (Health.OK, "")
    assert states[1][0] == Health.UNAVAILABLE and "disconnected" in states[1][1]
    assert states[2] == (Health.OK, "")
    doc = seen.health_of("printer")[-1].to_doc()
    assert doc["health"] == "ok" and "disconnected" in doc["last_error"] and doc["simulated"] is True


# --------------------------------------------------------------------------- hotplug


def display_config(link: Path, **extra: str) -> Config:
    more = "".join(f"{k} = {v}\n" for k, v in extra.items())
    return config(f"""
[devices]
mode = "real"
{more}
[devices.scanner]
kind = "none"
[devices.printer]
kind = "none"
[devices.drawer]
kind = "none"
[devices.display]
kind = "serial"
device = "{link}"
""")


def test_udev_add_and_remove_of_a_request_device(tmp_path: Path, ptys: Callable[[str], Pty]) -> None:
    link = tmp_path / "display"
    clock = FrozenClock()
    with DeviceManager(display_config(link), dispatch=lambda fn: fn(), clock=clock) as mgr:
        mgr.start(background=False)
        assert mgr.health()["display"].health == Health.UNAVAILABLE
        pty = ptys("display")

        other = FakeUdevDevice("add", "/dev/ttyUSB7", ("/dev/serial/by-id/usb-FTDI-if00",), {"ID_VENDOR_ID": "0403"})
        assert mgr.handle_udev_event(other) == ()
        assert mgr.handle_udev_event(FakeUdevDevice("change", pty.node, (str(link),))) == ()
        assert mgr.handle_udev_event(FakeUdevDevice("add", pty.node, (str(link),))) == ("display",)
        mgr.maintain()  # reopened now, without waiting for the back-off (the clock did not move)
        assert mgr.health()["display"].health == Health.OK

        assert mgr.handle_udev_event(FakeUdevDevice("remove", pty.node)) == ("display",)  # by its node
        state = mgr.health()["display"]
        assert state.health == Health.UNAVAILABLE and state.reason == f"unplugged ({pty.node})"


def test_usb_printer_events_match_by_vendor_and_product() -> None:
    cfg = config("[devices]\nmode = 'real'\n[devices.scanner]\nkind = 'none'\n[devices.drawer]\nkind = 'none'\n")
    with DeviceManager(cfg, dispatch=lambda fn: fn()) as mgr:  # not started: matching only
        epson = {"ID_VENDOR_ID": "04B8", "ID_MODEL_ID": "0202"}
        assert mgr.handle_udev_event(FakeUdevDevice("add", "/dev/bus/usb/001/007", (), epson)) == ("printer",)
        other = {"ID_VENDOR_ID": "04b8", "ID_MODEL_ID": "0e15"}
        assert mgr.handle_udev_event(FakeUdevDevice("add", "/dev/bus/usb/001/008", (), other)) == ()


def test_replugged_scanner_is_rebuilt_at_once(tmp_path: Path, ptys: Callable[[str], Pty]) -> None:
    first = ptys("scanner")
    cfg = config(f"""
[devices]
mode = "real"
reconnect_initial_seconds = 60
reconnect_max_seconds = 60
[devices.scanner]
kind = "serial"
device = "{first.link}"
[devices.printer]
kind = "none"
[devices.drawer]
kind = "none"
""")
    seen = Seen()
    with manager(cfg, seen) as mgr:
        mgr.start(background=False)
        sync_scanner(first, seen)
        old = mgr.scanner
        first.unplug()
        wait_for(lambda: mgr.health()["scanner"].health == Health.UNAVAILABLE)
        second = ptys("scanner")  # the driver itself would wait 60 s before trying again
        assert mgr.handle_udev_event(FakeUdevDevice("add", second.node, (str(second.link),))) == ("scanner",)
        mgr.maintain()
        assert mgr.scanner is not old and old is not None and old.closed
        sync_scanner(second, seen)
        second.send(b"96385074\r")
        wait_for(lambda: [e.code for e in seen.of(ScanEvent)] == ["96385074"])
        assert mgr.health()["scanner"].health == Health.OK


def test_background_thread_reacts_to_udev_events(tmp_path: Path, ptys: Callable[[str], Pty]) -> None:
    link = tmp_path / "display"
    monitor = FakeMonitor()
    recovered = threading.Event()
    mgr = DeviceManager(
        display_config(link, reconnect_initial_seconds="60", reconnect_max_seconds="60"),
        dispatch=lambda fn: fn(),
        udev_monitor=monitor,
    )
    mgr.on_health(lambda h: recovered.set() if h.health == Health.OK else None)
    try:
        mgr.start()
        assert mgr.health()["display"].health == Health.UNAVAILABLE
        pty = ptys("display")
        monitor.push(FakeUdevDevice("add", pty.node, (str(link),)))
        assert recovered.wait(5), "the add event did not reopen the display"
        assert pty.receive(2) == init_frame(DisplayProfile())[:2]
    finally:
        mgr.close()
        monitor.close()


# --------------------------------------------------------------------------- lifecycle


def test_close_is_idempotent_and_leaves_no_threads() -> None:
    before = set(threading.enumerate())
    seen = Seen()
    mgr = manager(config(WITH_BOARD), seen)
    mgr.start()  # background thread, simulator threads, companion firmware process
    assert set(threading.enumerate()) - before
    scanner, terminal = mgr.scanner, mgr.terminal
    mgr.close()
    mgr.close()
    assert set(threading.enumerate()) <= before
    assert scanner is not None and scanner.closed and terminal is not None and terminal.closed
    assert mgr.device("scanner") is None
    count = len(seen.events)
    with pytest.raises(DeviceUnavailable):
        scanner.feed("4006381333931")  # type: ignore[attr-defined]
    assert len(seen.events) == count
    mgr.start()  # a closed manager stays closed
    assert set(threading.enumerate()) <= before


def test_start_twice_opens_once() -> None:
    seen = Seen()
    with manager(config("[devices]\nmode = 'sim'\n"), seen) as mgr:
        mgr.start(background=False)
        printer = mgr.printer
        mgr.start(background=False)
        assert mgr.printer is printer


def test_startup_logs_the_effective_devices(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="drivers.manager")
    with DeviceManager(config(ALL_SIM), dispatch=lambda fn: fn()) as mgr:
        mgr.start(background=False)
    lines = [r.getMessage() for r in caplog.records if r.name == "drivers.manager"]
    assert lines[0].startswith("devices: mode=sim")
    assert "device terminal: zvt-tcp terminal.local:20007 (simulated)" in lines
    assert not any("000000" in line for line in lines)  # the terminal password is never logged


# --------------------------------------------------------------------------- udev rules


_TOKEN = re.compile(r'\s*([A-Z_]+)(\{[A-Za-z_]+\})?\s*(==|!=|\+=|-=|:=|=)\s*"([^"]*)"\s*(,|$)')
_MATCH_ONLY = {"ACTION", "SUBSYSTEM", "SUBSYSTEMS", "KERNEL", "KERNELS", "ATTR", "ATTRS", "DRIVERS", "DEVPATH"}
_ASSIGN_ONLY = {"SYMLINK", "GROUP", "MODE", "OWNER", "TAG", "GOTO", "LABEL", "RUN"}
NAMES = {"scanner", "printer", "display", "scale", "terminal", "badge", "companion"}


def parse_rules(text: str) -> list[list[tuple[str, str, str, str]]]:
    rules = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        tokens, pos = [], 0
        while pos < len(line):
            match = _TOKEN.match(line, pos)
            assert match, f"line {number}: cannot parse from {line[pos:]!r}"
            key, attr, op, value, _ = match.groups()
            tokens.append((key, attr or "", op, value))
            pos = match.end()
        rules.append(tokens)
    return rules


def test_udev_rules_are_well_formed() -> None:
    rules = parse_rules(RULES.read_text(encoding="utf-8"))
    assert len(rules) > 10
    named: set[str] = set()
    for rule in rules:
        keys = {key for key, _, _, _ in rule}
        for key, attr, op, value in rule:
            if key in _MATCH_ONLY:
                assert op in ("==", "!="), (key, op)
            elif key in _ASSIGN_ONLY:
                assert op in ("=", "+=", ":="), (key, op)
            else:
                assert key == "ENV" and attr, key
            if attr in ("{idVendor}", "{idProduct}"):
                assert re.fullmatch("[0-9a-f]{4}", value), value
            if key == "SYMLINK":
                assert op == "+=" and value.startswith("tillbox/"), value
                named.add(value.removeprefix("tillbox/"))
        assert {"GROUP", "MODE"} <= keys, rule
        assert ("GROUP", "", "=", "tillbox") in rule and ("MODE", "", "=", "0660") in rule
        assert any(k in _MATCH_ONLY and k != "ACTION" for k in keys), "a rule must match something"
        if "SYMLINK" in keys:
            assert any(a in ("{idVendor}",) for _, a, _, _ in rule), "named by USB vendor id"
    assert named == NAMES


def test_udev_rule_names_are_the_config_defaults() -> None:
    paths = config(WITH_BOARD).devices.device_paths()
    text = RULES.read_text(encoding="utf-8")
    for name, path in paths.items():
        assert path.startswith("/dev/")
        assert f'SYMLINK+="{path.removeprefix("/dev/")}"' in text, name


class FakeNetworkPrinter:
    """A raw-TCP ESC/POS printer on loopback: answers DLE EOT n with a ready status, keeps the rest."""

    def __init__(self, port: int = 0) -> None:
        import socket

        self.server = socket.create_server(("127.0.0.1", port))
        self.server.settimeout(0.05)
        self.port = self.server.getsockname()[1]
        self.received = bytearray()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            conn.settimeout(0.05)
            with conn:
                while not self._stop.is_set():
                    try:
                        data = conn.recv(4096)
                    except TimeoutError:
                        continue
                    if not data:
                        break
                    self.received += data
                    replies = bytes(PrinterStatus().to_bytes()[data[i + 2] - 1] for i in range(len(data) - 2)
                                    if data[i : i + 2] == b"\x10\x04")  # fmt: skip
                    conn.sendall(replies)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.server.close()


def test_network_printer_comes_back_after_back_off() -> None:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]  # a free port, closed again: nothing listens yet
    cfg = config(f"""
[devices]
mode = "real"
[devices.scanner]
kind = "none"
[devices.printer]
kind = "network"
host = "127.0.0.1"
port = {port}
""")
    clock = FrozenClock()
    with DeviceManager(cfg, dispatch=lambda fn: fn(), clock=clock) as mgr:
        mgr.start(background=False)
        down = mgr.health()["printer"]
        assert down.health == Health.UNAVAILABLE and f"127.0.0.1:{port}" in down.reason
        assert mgr.health()["drawer"].health == Health.OK  # kicks go through the printer when it is back
        peer = FakeNetworkPrinter(port)
        try:
            clock.advance(1)
            mgr.maintain()
            assert mgr.health()["printer"].health == Health.OK
            assert mgr.test_print().ok and mgr.test_drawer("ann").ok
            wait_for(lambda: bytes(peer.received).endswith(cmd_pulse(0, 100, 500)))
            assert b"printer test" in peer.received
        finally:
            mgr.close()
            peer.close()


def test_missing_evdev_readers_report_unavailable(tmp_path: Path) -> None:
    cfg = config(f"""
[devices]
mode = "real"
reconnect_initial_seconds = 60
reconnect_max_seconds = 60
[devices.scanner]
device = "{tmp_path / "scanner-event-kbd"}"
[devices.printer]
kind = "none"
[devices.drawer]
kind = "none"
[devices.badge]
kind = "evdev"
device = "{tmp_path / "badge-event-kbd"}"
layout = "de"
""")
    with DeviceManager(cfg, dispatch=lambda fn: fn()) as mgr:
        mgr.start(background=False)
        wait_for(lambda: all(h.health == Health.UNAVAILABLE for h in mgr.health().values()))
        health = mgr.health()
        assert "scanner-event-kbd" in health["scanner"].reason and "badge-event-kbd" in health["badge"].reason
        assert health["scanner"].backend == f"evdev {tmp_path / 'scanner-event-kbd'}"
        assert mgr.next_attempt("scanner") is None  # its reader thread retries on its own


def test_scanner_and_badge_nodes_are_hidden_from_the_compositor() -> None:
    rules = (Path(__file__).parent.parent / "systemd" / "99-tillbox.rules").read_text().splitlines()
    input_rules = [r for r in rules if r.startswith('SUBSYSTEM=="input"')]
    assert input_rules
    assert all('ENV{LIBINPUT_IGNORE_DEVICE}="1"' in r for r in input_rules)
