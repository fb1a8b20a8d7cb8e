"""The companion firmware on the MicroPython unix port, driven by a scripted host over a pty.

The test is the host: it speaks the protocol on the pseudo-terminal the firmware's stdio is
on, and pokes the simulated pins through the simulator's control link.
"""

from __future__ import annotations

import os
import select
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from drivers.companion import protocol as proto
from drivers.companion.build import tool_command
from drivers.companion.sim import SimState, SimulatedBoard

try:
    tool_command("micropython_unix", "micropython")
except Exception as exc:  # pragma: no cover - dev dependency missing
    pytest.skip(f"MicroPython unix port not installed: {exc}", allow_module_level=True)

FULL = 65535


class ScriptedHost:
    """The host end of the link: raw frames in and out of the pty slave."""

    def __init__(self, port: str) -> None:
        self.fd = os.open(port, os.O_RDWR | os.O_NOCTTY)  # the simulator made it raw; no flush here
        self.decoder = proto.Decoder()
        self.seq = 0
        self.unsolicited: list[tuple[int, int, bytes]] = []

    def close(self) -> None:
        os.close(self.fd)

    def write(self, data: bytes) -> None:
        os.write(self.fd, data)

    def send(self, kind: int, payload: bytes = b"") -> int:
        self.seq = self.seq % 255 + 1
        self.write(proto.encode(kind, self.seq, payload))
        return self.seq

    def frames(self, timeout: float) -> list[tuple[int, int, bytes]]:
        """Every frame that arrives within ``timeout`` seconds."""
        out: list[tuple[int, int, bytes]] = []
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self.fd], [], [], remaining)
            if ready:
                out += self.decoder.feed(os.read(self.fd, 4096))
        return out

    def request(self, kind: int, payload: bytes = b"", timeout: float = 2.0) -> tuple[int, bytes]:
        """Send and wait for the reply with the same sequence number; keeps unsolicited frames."""
        seq = self.send(kind, payload)
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self.fd], [], [], remaining)
            if not ready:
                continue
            for frame in self.decoder.feed(os.read(self.fd, 4096)):
                if frame[1] == seq and frame[0] in (proto.ACK, proto.NAK, proto.WELCOME, proto.STATUS):
                    return frame[0], frame[2]
                self.unsolicited.append(frame)
        raise AssertionError(f"no reply to 0x{kind:02x}")

    def wait_event(self, timeout: float = 2.0) -> tuple[int, bool, int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for index, frame in enumerate(self.unsolicited):
                if frame[0] == proto.EVENT:
                    del self.unsolicited[index]
                    return proto.unpack_event(frame[2])
            self.unsolicited += self.frames(0.02)
        raise AssertionError("no input event")

    def hello(self, heartbeat_ms: int = 5000) -> tuple[int, int, int, int, int, str]:
        kind, payload = self.request(proto.HELLO, proto.pack_hello(1, 1, heartbeat_ms))
        assert kind == proto.WELCOME
        return proto.unpack_welcome(payload)

    def status(self) -> tuple[int, list[bool], list[int]]:
        kind, payload = self.request(proto.HEARTBEAT)
        assert kind == proto.STATUS
        return proto.unpack_status(payload)


def wait_for(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


@pytest.fixture
def board() -> Iterator[SimulatedBoard]:
    with SimulatedBoard(boot_heartbeat_ms=5000) as sim:
        yield sim
    assert "Traceback" not in sim.stderr


@pytest.fixture
def host(board: SimulatedBoard) -> Iterator[ScriptedHost]:
    link = ScriptedHost(board.port)
    yield link
    link.close()


def nak_error(reply: tuple[int, bytes]) -> int:
    assert reply[0] == proto.NAK
    return proto.unpack_nak(reply[1])[0]


# -- handshake ----------------------------------------------------------------------------------


def test_boot_frame_then_welcome(host: ScriptedHost) -> None:
    boot = [f for f in host.frames(0.2) if f[0] == proto.BOOT]
    assert len(boot) == 1
    assert proto.unpack_boot(boot[0][2]) == (1, "tbc 1.0.0")
    assert host.hello(800) == (1, 3, 1, 2, 800, "tbc 1.0.0")


def test_version_negotiation(host: ScriptedHost) -> None:
    reply = host.request(proto.HELLO, proto.pack_hello(2, 3, 1000))
    assert reply == (proto.NAK, bytes([proto.E_VERSION, 1]))
    kind, payload = host.request(proto.HELLO, proto.pack_hello(1, 9, 10))
    assert kind == proto.WELCOME
    version, *_, heartbeat_ms, _fw = proto.unpack_welcome(payload)
    assert (version, heartbeat_ms) == (1, proto.MIN_HEARTBEAT_MS)  # clamped


# -- lights -------------------------------------------------------------------------------------


def sample(board: SimulatedBoard, seconds: float) -> list[SimState]:
    states = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        states.append(board.peek())
        time.sleep(0.015)
    return states


def test_steady_blink_and_pulse_patterns(board: SimulatedBoard, host: ScriptedHost) -> None:
    host.hello()
    lights = [(proto.P_STEADY, 0), (proto.P_BLINK, 200), (proto.P_PULSE, 400)]
    assert host.request(proto.SET_LIGHTS, proto.pack_lights(lights)) == (proto.ACK, b"")
    time.sleep(0.05)  # a light update or two
    before = board.peek()
    states = sample(board, 0.8)
    after = board.peek()
    red = {s.lights[0].duty for s in states}
    amber = {s.lights[1].duty for s in states}
    green = {s.lights[2].duty for s in states}
    assert red == {FULL}
    assert after.lights[0].toggles == before.lights[0].toggles  # steady: no transitions
    assert amber == {0, FULL}  # blink is hard on/off
    assert after.lights[1].toggles - before.lights[1].toggles >= 4  # ~8 edges in 0.8 s at 200 ms
    assert len([d for d in green if 0 < d < FULL]) >= 4  # pulse ramps through the range


def test_missing_channels_are_switched_off(board: SimulatedBoard, host: ScriptedHost) -> None:
    host.hello()
    host.request(proto.SET_LIGHTS, proto.pack_lights([(proto.P_STEADY, 0)] * 3))
    assert host.request(proto.SET_LIGHTS, proto.pack_lights([(proto.P_STEADY, 0)])) == (proto.ACK, b"")
    wait_for(lambda: [light.duty for light in board.peek().lights] == [FULL, 0, 0])


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (proto.pack_lights([(proto.P_OFF, 0)] * 4), proto.E_RANGE),  # 4 channels on a 3-light tower
        (proto.pack_lights([(proto.P_BLINK, 20)]), proto.E_RANGE),
        (proto.pack_lights([(9, 0)]), proto.E_RANGE),
        (b"\x01\x00", proto.E_PAYLOAD),
    ],
)
def test_bad_light_settings_are_refused_and_change_nothing(
    board: SimulatedBoard, host: ScriptedHost, payload: bytes, error: int
) -> None:
    host.hello()
    host.request(proto.SET_LIGHTS, proto.pack_lights([(proto.P_OFF, 0), (proto.P_OFF, 0), (proto.P_STEADY, 0)]))
    assert nak_error(host.request(proto.SET_LIGHTS, payload)) == error
    time.sleep(0.05)
    assert [light.duty for light in board.peek().lights] == [0, 0, FULL]


# -- inputs -------------------------------------------------------------------------------------


def test_help_button_events_and_counters(board: SimulatedBoard, host: ScriptedHost) -> None:
    host.hello()
    assert host.status()[1:] == ([False, False], [0, 0])
    board.press(0)
    assert host.wait_event() == (0, True, 1)
    board.release(0)
    assert host.wait_event() == (0, False, 1)
    board.press(0)
    assert host.wait_event() == (0, True, 2)
    assert host.status()[1:] == ([True, False], [2, 0])


def test_sensor_glitch_shorter_than_debounce_is_ignored(board: SimulatedBoard, host: ScriptedHost) -> None:
    host.hello()
    board.set_input(1, True)  # the sensor debounces for 100 ms
    time.sleep(0.02)
    board.set_input(1, False)
    assert [f for f in host.frames(0.3) if f[0] == proto.EVENT] == []
    board.set_input(1, True)
    assert host.wait_event() == (1, True, 1)
    assert host.status()[1:] == ([False, True], [0, 1])


# -- pulse output -------------------------------------------------------------------------------


def test_pulse_output(board: SimulatedBoard, host: ScriptedHost) -> None:
    host.hello()
    assert host.request(proto.PULSE, proto.pack_pulse(0, 80)) == (proto.ACK, b"")
    assert nak_error(host.request(proto.PULSE, proto.pack_pulse(0, 80))) == proto.E_BUSY
    wait_for(lambda: board.peek().outputs[0].pulses == 1 and board.peek().outputs[0].level == 0)
    out = board.peek().outputs[0]
    assert 75 <= out.last_ms <= 200
    assert nak_error(host.request(proto.PULSE, proto.pack_pulse(1, 80))) == proto.E_RANGE  # one output
    assert nak_error(host.request(proto.PULSE, proto.pack_pulse(0, 5))) == proto.E_RANGE
    assert nak_error(host.request(proto.PULSE, proto.pack_pulse(0, 5000))) == proto.E_RANGE
    assert board.peek().outputs[0].pulses == 1


# -- heartbeat fallback -------------------------------------------------------------------------


def test_lost_heartbeat_falls_back_to_help_needed_and_recovers(board: SimulatedBoard, host: ScriptedHost) -> None:
    host.hello(heartbeat_ms=250)
    host.request(proto.SET_LIGHTS, proto.pack_lights([(proto.P_OFF, 0), (proto.P_OFF, 0), (proto.P_STEADY, 0)]))
    for _ in range(8):  # heartbeats keep it: 0.4 s > timeout
        assert host.status()[0] == 0
        time.sleep(0.05)
    assert not board.peek().fallback
    wait_for(lambda: board.peek().fallback, timeout=2.0)  # silence
    start = board.peek()
    assert start.lights[0].duty == start.lights[2].duty == 0  # red and green off
    time.sleep(0.6)
    assert board.peek().lights[1].toggles - start.lights[1].toggles >= 1  # amber blinks (1000 ms)
    flags, _, _ = host.status()  # heard again
    assert flags == proto.F_FELL_BACK
    state = board.peek()
    assert not state.fallback
    assert [light.duty for light in state.lights] == [0, 0, FULL]
    assert host.status()[0] == 0  # the flag is reported once


def test_board_falls_back_when_no_host_ever_speaks() -> None:
    with SimulatedBoard(boot_heartbeat_ms=150) as sim:
        wait_for(lambda: sim.peek().fallback, timeout=2.0)
        assert sim.peek().lights[1].duty in (0, FULL)


# -- garbage ------------------------------------------------------------------------------------

GARBAGE = [
    b"\x00\xff\x03\x04 hello \r\n",
    proto.encode(proto.HEARTBEAT, 1)[:5],  # truncated: cut by the next ':'
    proto.encode(proto.HEARTBEAT, 2)[:-4] + b"00\n",  # wrong CRC
    b":" + b"AB" * 80 + b"\n",  # too long
    b":0G04FFFF\n",  # not hex
    b":01\n",  # too short
    bytes(range(256)),
]


def test_garbage_and_truncated_frames_from_the_host_are_skipped(board: SimulatedBoard, host: ScriptedHost) -> None:
    host.hello()
    expected = proto.Decoder()
    for chunk in GARBAGE:
        host.write(chunk)
        assert expected.feed(chunk) == []
    kind, _ = host.request(proto.HEARTBEAT)  # a ':' ends whatever the garbage left open
    assert kind == proto.STATUS
    assert expected.dropped == 6
    assert board.peek().dropped == expected.dropped  # the firmware skipped exactly what CPython's decoder did


def test_garbage_does_not_count_as_a_heartbeat(board: SimulatedBoard, host: ScriptedHost) -> None:
    host.hello(heartbeat_ms=200)
    deadline = time.monotonic() + 0.6
    while time.monotonic() < deadline:
        host.write(b"\x00garbage:0104\n")
        time.sleep(0.03)
    assert board.peek().fallback


def test_unknown_kinds_and_simulator_frames_are_refused_on_the_host_link(
    board: SimulatedBoard, host: ScriptedHost
) -> None:
    host.hello()
    assert nak_error(host.request(0x55)) == proto.E_UNKNOWN
    assert nak_error(host.request(proto.SIM_INPUT, b"\x00\x01")) == proto.E_UNKNOWN
    time.sleep(0.08)
    assert host.status()[1:] == ([False, False], [0, 0])


def test_board_emits_raw_bytes_for_host_tests(board: SimulatedBoard, host: ScriptedHost) -> None:
    host.frames(0.1)  # the BOOT frame
    board.emit(b"noise:0102")
    time.sleep(0.05)
    assert os.read(host.fd, 100) == b"noise:0102"


# -- build and lifecycle ------------------------------------------------------------------------


def test_compiled_firmware_runs() -> None:
    with SimulatedBoard(compiled=True) as sim:
        names = sorted(p.name for p in Path(sim.firmware_dir).iterdir())
        assert names == ["main.py", "tbc_app.mpy", "tbc_config.py", "tbc_hal.mpy", "tbc_proto.mpy"]
        link = ScriptedHost(sim.port)
        try:
            assert link.hello()[-1] == "tbc 1.0.0"
            sim.press(0)
            assert link.wait_event() == (0, True, 1)
        finally:
            link.close()


def test_firmware_exits_cleanly_when_the_simulator_closes() -> None:
    sim = SimulatedBoard()
    sim.peek()  # running
    sim.restart()
    assert sim.last_exit == 0  # ended by the control link's end of file, not killed
    sim.close()
    assert sim.last_exit == 0
    assert not sim.alive
    sim.close()  # idempotent
