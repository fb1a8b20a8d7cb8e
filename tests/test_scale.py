"""Tests for drivers.scale: the 8217 codec byte for byte, and a driver talking to the peer over a pty."""

from __future__ import annotations

import logging
import os
import select
import threading
import time
import tty
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.errors import DeviceUnavailable, InputError
from drivers.base import Device, Health
from drivers.scale import (
    LB_IN_KG,
    ScaleNotReady,
    ScaleProtocolError,
    ScaleReading,
    ScaleStatus,
    SimulatedScale,
    Toledo8217Peer,
    WeightUnit,
    encode_preset_tare,
    encode_status,
    encode_weight,
    open_scale,
    parse_reply,
    serial_scale,
)
from drivers.scanner import Backoff

KG, LB = WeightUnit.KG, WeightUnit.LB


@pytest.fixture(autouse=True)
def _no_leftover_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    leftover = [t.name for t in threading.enumerate() if t not in before and t.is_alive()]
    assert not leftover, f"threads left running: {leftover}"


def health(device: Device) -> Health:
    return device.health.health


@pytest.fixture
def scale() -> Iterator[SimulatedScale]:
    with SimulatedScale(reply_timeout=1.0) as sim:
        yield sim


# --- codec -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "value", "net"),
    [
        (b"\x0201.234\r", Decimal("1.234"), False),
        (b"\x0200.000\r", Decimal(0), False),
        (b"\x0212.50N\r", Decimal("12.50"), True),
        (b"\x02  1.5\r", Decimal("1.5"), False),
    ],
)
def test_parse_weight_replies(frame: bytes, value: Decimal, net: bool) -> None:
    reading = parse_reply(frame, KG)
    assert reading.value == value
    assert reading.status.net is net
    assert reading.stable


@pytest.mark.parametrize(
    ("byte", "flags"),
    [
        (b"@", {}),  # 0x40: only the always-set bit
        (b"A", {"motion": True}),  # 0x41
        (b"\xc1", {"motion": True}),  # 0x41 with the even-parity bit 7 set
        (b"B", {"over_capacity": True}),
        (b"D", {"under_zero": True}),
        (b"H", {"outside_zero_range": True}),
        (b"P", {"center_of_zero": True}),
        (b"`", {"net": True}),  # 0x60
        (b"q", {"motion": True, "center_of_zero": True, "net": True}),  # 0x71
    ],
)
def test_parse_status_replies(byte: bytes, flags: dict[str, bool]) -> None:
    reading = parse_reply(b"\x02?" + byte + b"\r", KG)
    assert reading.value is None
    assert reading.status == ScaleStatus(**flags)
    assert not reading.stable


@pytest.mark.parametrize(
    "frame",
    [
        b"01.234\r",  # no STX
        b"\x0201.234",  # no CR
        b"\x02?\x01\r",  # status byte without bit 6
        b"\x02?AB\r",
        b"\x021.2.3\r",
        b"\x02-1.234\r",
        b"\x02\xff\xfe\r",
        b"\x02" + b"9" * 20 + b"\r",
    ],
)
def test_garbage_replies_are_protocol_errors(frame: bytes) -> None:
    with pytest.raises(ScaleProtocolError):
        parse_reply(frame, KG)


@given(st.lists(st.booleans(), min_size=6, max_size=6))
def test_status_byte_round_trip_with_even_parity(flags: list[bool]) -> None:
    status = ScaleStatus(*flags)
    byte = status.to_byte()
    assert byte.bit_count() % 2 == 0
    assert byte & 0x40
    assert ScaleStatus.from_byte(byte) == status
    assert parse_reply(encode_status(status), KG).status == status


def test_encoders_byte_for_byte() -> None:
    assert encode_weight(Decimal("1.234"), KG) == b"\x0201.234\r"
    assert encode_weight(Decimal("0.5"), LB, net=True) == b"\x0200.50N\r"
    assert encode_status(ScaleStatus(motion=True)) == b"\x02?A\r"
    assert encode_status(ScaleStatus()) == b"\x02?\xc0\r"  # 0x40 has odd parity: bit 7 set
    assert encode_preset_tare(Decimal("0.120"), KG) == b"T00120\r"
    assert encode_preset_tare(Decimal("0.45359237"), LB) == b"T00100\r"  # exactly 1.00 lb
    with pytest.raises(InputError):
        encode_preset_tare(Decimal("150"), KG)


def test_pounds_convert_to_exact_kilograms() -> None:
    reading = ScaleReading(ScaleStatus(), LB, Decimal("2.50"))
    assert reading.weight_kg == Decimal("1.133980925")
    assert isinstance(reading.weight_kg, Decimal)
    assert ScaleReading(ScaleStatus(), LB, Decimal(1)).weight_kg == LB_IN_KG


# --- driver against the peer over a pty ------------------------------------------------


def test_stable_weight(scale: SimulatedScale) -> None:
    scale.peer.place(Decimal("1.234"))
    reading = scale.read_stable()
    assert reading.weight_kg == Decimal("1.234")
    assert isinstance(reading.weight_kg, Decimal)
    assert scale.peer.requests == [b"W", b"W"]  # two equal readings make it stable
    assert health(scale) == Health.OK


def test_motion_then_settled(scale: SimulatedScale) -> None:
    scale.peer.place(Decimal("0.875"), settle_after=3)
    first = scale.read()
    assert first.value is None
    assert first.status.motion
    assert scale.read_stable(interval=0.01).weight_kg == Decimal("0.875")
    assert len(scale.peer.requests) >= 5


def test_never_settling_times_out(scale: SimulatedScale) -> None:
    scale.peer.place(Decimal("2"), settle_after=10_000)
    with pytest.raises(ScaleNotReady, match=r"not stable within 0\.2 s.*motion"):
        scale.read_stable(timeout=0.2, interval=0.02)


def test_over_capacity_fails_at_once(scale: SimulatedScale) -> None:
    scale.peer.place(Decimal("16"))
    assert scale.status().over_capacity
    with pytest.raises(ScaleNotReady, match="over capacity"):
        scale.read_stable(timeout=5)
    assert len(scale.peer.requests) == 2


def test_tare_net_weight_and_clear(scale: SimulatedScale) -> None:
    scale.peer.place(Decimal("0.350"))  # an empty container
    assert scale.tare().net
    assert scale.read().value == Decimal(0)
    scale.peer.place(Decimal("1.585"))  # container with goods
    reading = scale.read_stable()
    assert reading.weight_kg == Decimal("1.235")
    assert reading.status.net
    scale.peer.place(Decimal(0))  # container taken off: below zero while tared
    with pytest.raises(ScaleNotReady, match="below zero"):
        scale.read_stable()
    assert not scale.clear_tare().net
    assert scale.read().value == Decimal(0)
    assert b"T" in scale.peer.requests
    assert b"C" in scale.peer.requests


def test_preset_tare(scale: SimulatedScale) -> None:
    scale.peer.place(Decimal("1.000"))
    scale.tare(Decimal("0.120"))
    assert scale.peer.requests[-1] == b"T00120\r"
    assert scale.peer.tare_value == Decimal("0.120")
    assert scale.read().value == Decimal("0.880")


def test_tare_refused_while_moving(scale: SimulatedScale) -> None:
    scale.peer.place(Decimal("0.5"), settle_after=5)
    with pytest.raises(ScaleNotReady, match="did not take the tare"):
        scale.tare()


def test_zero_within_and_outside_the_capture_range(scale: SimulatedScale) -> None:
    scale.peer.place(Decimal("0.020"))  # drift on an empty platter
    assert scale.zero().center_of_zero
    assert scale.read().value == Decimal(0)
    scale.peer.place(Decimal("5"))
    with pytest.raises(ScaleNotReady, match="outside zero range"):
        scale.zero()


def test_pounds_scale_reports_kilograms() -> None:
    with SimulatedScale(unit=LB, capacity=Decimal("30")) as scale:
        scale.peer.place(Decimal("2.50"))
        reading = scale.read_stable()
    assert reading.value == Decimal("2.50")
    assert reading.unit == LB
    assert reading.weight_kg == Decimal("2.50") * Decimal("0.45359237")


def test_garbage_degrades_then_recovers(scale: SimulatedScale) -> None:
    scale.peer.place(Decimal("1.5"))
    scale.peer.inject(b"\x02\xff\xfe?x\r")
    with pytest.raises(ScaleProtocolError):
        scale.read()
    assert health(scale) == Health.DEGRADED
    scale.peer.inject(b"\x02" + b"7" * 40)  # no CR: too long
    with pytest.raises(ScaleProtocolError, match="longer than"):
        scale.read()
    assert scale.read().value == Decimal("1.500")
    assert health(scale) == Health.OK


def test_no_reply_is_unavailable_without_dropping_the_port() -> None:
    with SimulatedScale(reply_timeout=0.2) as scale:
        scale.peer.place(Decimal("1.5"))
        scale.peer.inject(b"")
        with pytest.raises(DeviceUnavailable, match=r"did not answer within 0\.2 s"):
            scale.read()
        assert health(scale) == Health.UNAVAILABLE
        assert scale.read().value == Decimal("1.500")  # no back-off wait: the port was fine
        assert health(scale) == Health.OK


def test_closed_scale_refuses_requests() -> None:
    scale = SimulatedScale()
    scale.close()
    scale.close()
    with pytest.raises(DeviceUnavailable, match="closed"):
        scale.read()


class Link:
    """A pty with a peer on the master and the slave behind a stable symlink."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        tmp = path.with_suffix(".new")
        tmp.symlink_to(os.ttyname(self.slave))
        tmp.replace(path)
        self.peer = Toledo8217Peer(self.master).start()
        self.plugged = True

    def unplug(self) -> None:
        if self.plugged:
            self.plugged = False
            self.path.unlink(missing_ok=True)  # udev removes the by-id link
            self.peer.close()
            os.close(self.slave)
            os.close(self.master)


def test_unplug_and_replug(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    port = tmp_path / "ttyUSB-scale"
    link = Link(port)
    # 8N1: Linux ptys refuse 7 data bits and parity (EINVAL); a real scale port would use 7E1.
    scale = serial_scale(str(port), bytesize=8, parity="N", reply_timeout=1.0, backoff=Backoff(0.05, 0.2))
    try:
        link.peer.place(Decimal("0.750"))
        assert scale.read().value == Decimal("0.750")
        link.unplug()
        with pytest.raises(DeviceUnavailable):
            scale.read()
        assert health(scale) == Health.UNAVAILABLE
        with pytest.raises(DeviceUnavailable):
            scale.read()  # within the back-off: not even tried
        link = Link(port)
        link.peer.place(Decimal("0.800"))
        deadline = time.monotonic() + 3
        while True:
            try:
                reading = scale.read()
                break
            except DeviceUnavailable:
                assert time.monotonic() < deadline
                time.sleep(0.02)
        assert reading.value == Decimal("0.800")
        assert health(scale) == Health.OK
    finally:
        scale.close()
        link.unplug()
    base_logs = [r for r in caplog.records if r.name == "drivers.base"]
    assert [r.levelno for r in base_logs] == [logging.WARNING, logging.INFO]


def test_open_scale_in_sim_mode_speaks_8217(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TILLBOX_DEVICES", "sim")
    with open_scale("ttyUSB0") as scale:
        assert isinstance(scale, SimulatedScale)
        scale.peer.place(Decimal("0.250"))
        assert scale.read_stable().weight_kg == Decimal("0.25")
        assert scale.peer.requests == [b"W", b"W"]


def read_replies(fd: int, count: int) -> list[bytes]:
    """Read ``count`` CR-terminated replies from the host end of the link."""
    data = b""
    deadline = time.monotonic() + 2
    while data.count(b"\r") < count:
        assert time.monotonic() < deadline, f"only got {data!r}"
        ready, _, _ = select.select([fd], [], [], 0.05)
        if ready:
            data += os.read(fd, 64)
    return [part + b"\r" for part in data.split(b"\r")[:count]]


def test_peer_answers_byte_for_byte_as_a_host_sees_it(tmp_path: Path) -> None:
    link = Link(tmp_path / "scale")
    try:
        link.peer.place(Decimal("1.000"))
        os.write(link.slave, b"W")
        assert read_replies(link.slave, 1) == [b"\x0201.000\r"]
        os.write(link.slave, b"T12W")  # a preset cut short by another command
        assert read_replies(link.slave, 2) == [b"\x02?\xc0\r", b"\x0201.000\r"]
        assert link.peer.tare_value == Decimal(0)
        os.write(link.slave, b"T00250\rW")
        assert read_replies(link.slave, 2) == [b"\x02?`\r", b"\x0200.750N\r"]
        os.write(link.slave, b"X")
        assert read_replies(link.slave, 1) == [b"\x02?`\r"]  # unknown command: the status
    finally:
        link.unplug()
    assert link.peer.requests == [b"W", b"T12", b"W", b"T00250\r", b"W", b"X"]
