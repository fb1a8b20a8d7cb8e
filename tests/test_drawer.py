"""Cash drawer: kick pulses (printer and GPIO), open sensing, the left-open alert, open records."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory

from appliance.clock import FrozenClock
from appliance.errors import DeviceMisconfigured, DeviceUnavailable, InputError
from drivers.base import Health, HealthState
from drivers.drawer import (
    CashDrawer,
    DrawerLeftOpen,
    DrawerOpen,
    GpioDrawerSensor,
    GpioKicker,
    PrinterDrawerSensor,
    PrinterKicker,
    SimulatedDrawer,
)
from drivers.escpos_codec import PrinterStatus
from drivers.printer import ReceiptPrinter, SimulatedPrinter


@pytest.fixture
def mock_pins() -> Iterator[MockFactory]:
    """gpiozero mock pins for the test, the previous factory restored after."""
    before_threads = set(threading.enumerate())
    previous = Device.pin_factory
    factory = MockFactory()
    Device.pin_factory = factory
    try:
        yield factory
    finally:
        factory.reset()
        Device.pin_factory = previous
    assert set(threading.enumerate()) <= before_threads


class Events:
    def __init__(self) -> None:
        self.opens: list[DrawerOpen] = []
        self.left_open: list[DrawerLeftOpen] = []
        self.health: list[HealthState] = []


def make_drawer(kicker: Any, sensor: Any, clock: FrozenClock, events: Events, **kwargs: Any) -> CashDrawer:
    drawer = CashDrawer(kicker, sensor, clock=clock, on_open=events.opens.append,
                        on_left_open=events.left_open.append, **kwargs)  # fmt: skip
    drawer.on_health(events.health.append)
    return drawer


# -- kick through the printer ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pin", "on_ms", "off_ms", "expected"),
    [
        (0, 100, 500, b"\x1bp\x00\x32\xfa"),  # connector pin 2, 50 x 2 ms on, 250 x 2 ms off
        (1, 50, 200, b"\x1bp\x01\x19\x64"),  # connector pin 5
        (0, 101, 101, b"\x1bp\x00\x33\x33"),  # odd milliseconds round up, never shorter
    ],
)
def test_printer_kick_command(pin: int, on_ms: int, off_ms: int, expected: bytes) -> None:
    kicker = PrinterKicker(ReceiptPrinter(SimulatedPrinter()), pin=pin, on_ms=on_ms, off_ms=off_ms)
    assert kicker.command == expected


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pin": 2}, "must be 0"),
        ({"on_ms": 0}, "on-time 0 ms"),
        ({"on_ms": 600}, "on-time 600 ms"),
        ({"on_ms": 200, "off_ms": 100}, "off-time 100 ms"),
    ],
)
def test_printer_kick_rejects_bad_settings(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(DeviceMisconfigured, match=message):
        PrinterKicker(ReceiptPrinter(SimulatedPrinter()), **kwargs)


def test_open_through_the_printer_records_reason_and_actor(clock: FrozenClock) -> None:
    sim = SimulatedPrinter()
    printer = ReceiptPrinter(sim)
    events = Events()
    drawer = make_drawer(PrinterKicker(printer), PrinterDrawerSensor(printer), clock, events)
    record = drawer.open("no sale: change for a 50", "anna")
    assert record == DrawerOpen("drawer", clock.now(), "no sale: change for a 50", "anna")
    assert record.to_doc() == {"drawer": "drawer", "at": "2026-03-02T09:30:00.000Z",
                               "reason": "no sale: change for a 50", "actor": "anna"}  # fmt: skip
    assert events.opens == [record]
    assert bytes(sim.written) == b"\x1bp\x00\x32\xfa"


def test_printer_sensor_reads_pin_3(clock: FrozenClock) -> None:
    sim = SimulatedPrinter()
    printer = ReceiptPrinter(sim)
    events = Events()
    drawer = make_drawer(PrinterKicker(printer), PrinterDrawerSensor(printer), clock, events)
    assert drawer.poll() is False
    sim.status = PrinterStatus(drawer_pin3_high=True)
    assert drawer.poll() is True
    inverted = PrinterDrawerSensor(printer, open_when_high=False)
    assert inverted.is_open() is False


def test_unreadable_sensor_degrades_then_recovers(clock: FrozenClock) -> None:
    sim = SimulatedPrinter()
    printer = ReceiptPrinter(sim)
    events = Events()
    drawer = make_drawer(PrinterKicker(printer), PrinterDrawerSensor(printer), clock, events)
    sim.disconnect()
    assert drawer.poll() is None
    assert drawer.health.health == Health.DEGRADED
    assert drawer.health.reason.startswith("cannot read drawer sensor")
    sim.reconnect()
    assert drawer.poll() is False
    assert drawer.health == HealthState("drawer", Health.OK)


def test_failed_kick_raises_and_records_nothing(clock: FrozenClock) -> None:
    sim = SimulatedPrinter()
    events = Events()
    drawer = make_drawer(PrinterKicker(ReceiptPrinter(sim)), None, clock, events)
    sim.disconnect()
    with pytest.raises(DeviceUnavailable):
        drawer.open("no sale", "anna")
    assert events.opens == []
    assert drawer.health.health == Health.UNAVAILABLE
    sim.reconnect()
    drawer.open("no sale", "anna")
    assert (drawer.health, len(events.opens)) == (HealthState("drawer", Health.OK), 1)


def test_an_open_needs_a_reason_and_a_person(clock: FrozenClock) -> None:
    drawer = CashDrawer(SimulatedDrawer(clock), clock=clock)
    with pytest.raises(InputError):
        drawer.open("  ", "anna")
    with pytest.raises(InputError):
        drawer.open("no sale", "")


# -- GPIO -----------------------------------------------------------------------------------------


def test_gpio_pulse_length(mock_pins: MockFactory) -> None:
    pin = mock_pins.pin(17)
    seen: list[tuple[float, bool]] = []

    def fake_sleep(seconds: float) -> None:
        seen.append((seconds, pin.state))

    kicker = GpioKicker(17, pulse_ms=120, sleep=fake_sleep)
    kicker.kick()
    assert seen == [(0.12, True)]  # the output was on for exactly the pulse
    assert pin.state is False
    kicker.close()


def test_gpio_pulse_in_real_time(mock_pins: MockFactory) -> None:
    pin = mock_pins.pin(17)
    kicker = GpioKicker(17, pulse_ms=60)
    pin.clear_states()
    kicker.kick()
    on = next(s for s in pin.states if s.state)
    off = next(s for s in pin.states if not s.state and s.timestamp > on.timestamp)
    assert 0.06 <= off.timestamp - on.timestamp < 0.2
    kicker.close()


def test_gpio_active_low_relay(mock_pins: MockFactory) -> None:
    pin = mock_pins.pin(22)
    levels: list[bool] = []
    kicker = GpioKicker(22, pulse_ms=50, active_high=False, sleep=lambda s: levels.append(pin.state))
    assert pin.state is True  # idle high
    kicker.kick()
    assert levels == [False] and pin.state is True
    kicker.close()


def test_gpio_configuration_errors(mock_pins: MockFactory) -> None:
    with pytest.raises(DeviceMisconfigured, match="GPIO99"):
        GpioKicker("GPIO99")
    with pytest.raises(DeviceMisconfigured, match="out of range"):
        GpioKicker(17, pulse_ms=5)
    kicker = GpioKicker(17)
    with pytest.raises(DeviceMisconfigured, match="in use"):
        GpioDrawerSensor(17)
    kicker.close()
    GpioDrawerSensor(17).close()  # released by close()


def test_gpio_sensor_levels(mock_pins: MockFactory) -> None:
    pin = mock_pins.pin(27)
    sensor = GpioDrawerSensor(27)  # pull-up; the switch grounds the input while the drawer is shut
    pin.drive_low()
    assert sensor.is_open() is False
    pin.drive_high()
    assert sensor.is_open() is True
    sensor.close()
    closes_when_open = GpioDrawerSensor(27, open_when_active=True)
    pin.drive_low()
    assert closes_when_open.is_open() is True
    closes_when_open.close()


def test_left_open_alert_with_gpio(mock_pins: MockFactory, clock: FrozenClock) -> None:
    kick_pin, sense_pin = mock_pins.pin(17), mock_pins.pin(27)
    sense_pin.drive_low()
    events = Events()
    drawer = make_drawer(GpioKicker(17, sleep=lambda s: sense_pin.drive_high()), GpioDrawerSensor(27), clock,
                         events, left_open_after=30)  # fmt: skip
    opened_at = clock.now()
    drawer.open("cash sale", "anna")
    assert kick_pin.state is False and drawer.is_open is True
    clock.advance(29)
    assert drawer.poll() is True and events.left_open == [] and drawer.health.health == Health.OK
    clock.advance(1)
    drawer.poll()
    assert events.left_open == [DrawerLeftOpen("drawer", opened_at, 30.0)]
    assert (drawer.left_open, drawer.health) == (
        True,
        HealthState("drawer", Health.DEGRADED, "drawer left open over 30 s"),
    )
    clock.advance(60)
    drawer.poll()
    assert len(events.left_open) == 1  # one alert per opening, not one per poll
    sense_pin.drive_low()
    assert drawer.poll() is False
    assert (drawer.left_open, drawer.health) == (False, HealthState("drawer", Health.OK))
    assert [h.health for h in events.health] == [Health.DEGRADED, Health.OK]

    drawer.open("refund", "ben")  # the timer restarts with each opening
    clock.advance(20)
    drawer.poll()
    assert len(events.left_open) == 1
    drawer.close()
    drawer.close()
    GpioKicker(17).close()  # the pins were released


def test_drawer_opened_by_hand_is_timed_from_the_first_poll(mock_pins: MockFactory, clock: FrozenClock) -> None:
    sense_pin = mock_pins.pin(27)
    events = Events()
    drawer = make_drawer(GpioKicker(17, sleep=lambda s: None), GpioDrawerSensor(27), clock, events,
                         left_open_after=10)  # fmt: skip
    sense_pin.drive_high()  # opened with the key
    drawer.poll()
    clock.advance(10)
    drawer.poll()
    assert [e.seconds for e in events.left_open] == [10.0]
    drawer.close()


# -- simulator ------------------------------------------------------------------------------------


def test_simulated_drawer_records_timestamped_pulses(clock: FrozenClock) -> None:
    sim = SimulatedDrawer(clock)
    events = Events()
    drawer = make_drawer(sim, sim, clock, events, left_open_after=5)
    first = clock.now()
    drawer.open("cash sale", "anna")
    assert sim.is_open()
    clock.advance(2)
    sim.push_shut()
    assert drawer.poll() is False
    drawer.open("no sale", "anna")
    assert [(p.at, p.monotonic) for p in sim.pulses] == [(first, 0.0), (clock.now(), 2.0)]
    clock.advance(5)
    drawer.poll()
    assert len(events.left_open) == 1
    sim.connected = False
    with pytest.raises(DeviceUnavailable):
        drawer.open("no sale", "anna")


def test_kick_and_poll_leave_no_threads(mock_pins: MockFactory, clock: FrozenClock) -> None:
    before = threading.active_count()
    drawer = CashDrawer(GpioKicker(17, pulse_ms=10), GpioDrawerSensor(27), clock=clock)
    drawer.open("no sale", "anna")
    drawer.poll()
    drawer.close()
    assert threading.active_count() == before
