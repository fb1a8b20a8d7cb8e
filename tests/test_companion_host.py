"""The companion host driver: against the real firmware on the unix port, and scripted peers."""

from __future__ import annotations

import logging
import os
import select
import threading
import time
import tty
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest
from serial.tools.list_ports_common import ListPortInfo

from appliance.clock import FrozenClock
from appliance.errors import DeviceMisconfigured, DeviceUnavailable
from drivers.base import Health, HealthState
from drivers.companion import (
    AttendantCall,
    CompanionBoard,
    CompanionKicker,
    CompanionSensor,
    CompanionSettings,
    InputChange,
    Light,
    LightState,
    Pattern,
    UsbMatch,
    find_port,
    open_companion,
)
from drivers.companion import protocol as proto
from drivers.companion.build import tool_command
from drivers.companion.host import WAKE
from drivers.companion.sim import SimulatedBoard, SimulatedCompanion
from drivers.drawer import CashDrawer
from drivers.scanner import Backoff
from drivers.transport import SerialTransport, Transport

FULL = 65535
FAST = CompanionSettings(heartbeat_interval=0.05, heartbeat_timeout=0.4, reply_timeout=0.2, boot_wait=0.2)
QUICK = Backoff(0.05, 0.2)

try:
    tool_command("micropython_unix", "micropython")
    HAVE_MICROPYTHON = True
except Exception:  # pragma: no cover - dev dependency missing
    HAVE_MICROPYTHON = False
needs_micropython = pytest.mark.skipif(not HAVE_MICROPYTHON, reason="MicroPython unix port not installed")


def wait_for(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


class Recorder:
    """Collects calls, input changes and health states from the driver thread."""

    def __init__(self) -> None:
        self.calls: list[AttendantCall] = []
        self.changes: list[InputChange] = []
        self.health: list[HealthState] = []


class StallableTransport:
    """A serial link whose writes can be swallowed, like a host whose USB stack hangs."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.stalled = False

    def write(self, data: bytes) -> None:
        if not self.stalled:
            self.inner.write(data)

    def read(self, size: int, timeout: float) -> bytes:
        return self.inner.read(size, timeout)

    def close(self) -> None:
        self.inner.close()


# -- against the real firmware ------------------------------------------------------------------


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def companion(recorder: Recorder) -> Iterator[SimulatedCompanion]:
    if not HAVE_MICROPYTHON:
        pytest.skip("MicroPython unix port not installed")
    board = SimulatedCompanion(
        settings=FAST, backoff=QUICK, start=False, on_call=recorder.calls.append, on_input=recorder.changes.append
    )
    board.on_health(recorder.health.append)
    board.start()
    wait_for(lambda: board.info is not None and board.health.health == Health.OK)
    yield board
    board.close()
    assert "Traceback" not in board.board.stderr


def lights_now(companion: SimulatedCompanion) -> list[int]:
    return [light.duty for light in companion.board.peek().lights]


@needs_micropython
def test_handshake_reports_the_board(companion: SimulatedCompanion) -> None:
    assert companion.info is not None
    assert companion.info.port == companion.board.port
    assert (companion.info.version, companion.info.firmware) == (1, "tbc 1.0.0")
    assert (companion.info.lights, companion.info.outputs, companion.info.inputs) == (3, 1, 2)
    assert companion.info.heartbeat_ms == 400


@needs_micropython
def test_out_of_service_until_told_otherwise(companion: SimulatedCompanion) -> None:
    assert companion.state == LightState.OUT_OF_SERVICE
    wait_for(lambda: lights_now(companion) == [FULL, 0, 0])


@needs_micropython
def test_appliance_states_map_to_light_patterns(companion: SimulatedCompanion) -> None:
    board = companion.board
    companion.set_state(LightState.IDLE)
    wait_for(lambda: lights_now(companion) == [0, 0, FULL])

    companion.set_state(LightState.ASSISTANCE)  # amber blinks at 1 s
    wait_for(lambda: board.peek().lights[0].duty == 0 and board.peek().lights[2].duty == 0)
    start = board.peek().lights[1].toggles
    wait_for(lambda: board.peek().lights[1].toggles > start, timeout=3)

    companion.set_state(LightState.INTERVENTION)  # red blinks at 0.5 s
    wait_for(lambda: board.peek().lights[1].duty == 0 and board.peek().lights[2].duty == 0)
    start = board.peek().lights[0].toggles
    wait_for(lambda: board.peek().lights[0].toggles >= start + 2, timeout=3)

    companion.set_state(LightState.OUT_OF_SERVICE)
    wait_for(lambda: lights_now(companion) == [FULL, 0, 0])


@needs_micropython
def test_custom_lights(companion: SimulatedCompanion) -> None:
    companion.set_lights([Light(Pattern.OFF), Light(Pattern.PULSE, 400)])
    seen: set[int] = set()

    def ramping() -> bool:
        seen.add(companion.board.peek().lights[1].duty)
        return len({d for d in seen if 0 < d < FULL}) >= 3

    wait_for(ramping)
    assert lights_now(companion)[::2] == [0, 0]


@needs_micropython
def test_help_button_calls_the_attendant(companion: SimulatedCompanion, recorder: Recorder) -> None:
    companion.board.press(0)
    wait_for(lambda: len(recorder.calls) == 1)
    companion.board.release(0)
    wait_for(lambda: len(recorder.changes) == 2)
    time.sleep(0.15)  # a few heartbeats: the STATUS counters must not repeat the call
    assert [c.presses for c in recorder.calls] == [1]
    assert recorder.calls[0].device == "companion"
    assert [(c.name, c.active, c.activations) for c in recorder.changes] == [("help", True, 1), ("help", False, 0)]
    assert companion.input_active(0) is False


@needs_micropython
def test_sensor_changes_are_reported_without_calling_anyone(companion: SimulatedCompanion, recorder: Recorder) -> None:
    companion.board.set_input(1, True)
    wait_for(lambda: companion.input_active(1) is True)
    assert [(c.input, c.name, c.active) for c in recorder.changes] == [(1, "sensor", True)]
    assert recorder.calls == []
    assert CompanionSensor(companion, 1).is_open()
    assert not CompanionSensor(companion, 1, open_when_active=False).is_open()


@needs_micropython
def test_drawer_kick_through_the_companion(companion: SimulatedCompanion) -> None:
    drawer = CashDrawer(CompanionKicker(companion, 0, pulse_ms=60), CompanionSensor(companion, 1))
    record = drawer.open("float check", "ann")
    assert record.reason == "float check"
    wait_for(lambda: companion.board.peek().outputs[0].pulses == 1 and companion.board.peek().outputs[0].level == 0)
    assert 55 <= companion.board.peek().outputs[0].last_ms <= 200


@needs_micropython
def test_pulse_errors(companion: SimulatedCompanion) -> None:
    companion.pulse(0, 300)
    with pytest.raises(DeviceUnavailable, match="still pulsing"):
        companion.pulse(0, 300)
    with pytest.raises(DeviceMisconfigured, match="refused"):
        companion.pulse(3, 100)
    with pytest.raises(DeviceMisconfigured, match="out of range"):
        companion.pulse(0, 5)
    with pytest.raises(DeviceMisconfigured, match="out of range"):
        CompanionKicker(companion, 0, pulse_ms=5000)


@needs_micropython
def test_late_heartbeat_shows_fallback_then_host_restores(recorder: Recorder, caplog: pytest.LogCaptureFixture) -> None:
    links: list[StallableTransport] = []

    def connect() -> Transport:
        links.append(StallableTransport(SerialTransport(sim.port, 115200)))
        return links[-1]

    settings = CompanionSettings(heartbeat_interval=0.05, heartbeat_timeout=0.3, reply_timeout=0.1, max_missed=50)
    with (
        SimulatedBoard() as sim,
        CompanionBoard(
            connect, settings=settings, on_call=recorder.calls.append, on_input=recorder.changes.append
        ) as companion,
    ):
        companion.set_state(LightState.IDLE)
        wait_for(lambda: [x.duty for x in sim.peek().lights] == [0, 0, FULL])
        links[-1].stalled = True  # our frames stop reaching the board
        wait_for(lambda: sim.peek().fallback, timeout=2)
        assert sim.peek().lights[2].duty == 0  # green off, amber blinking
        with caplog.at_level(logging.WARNING):
            links[-1].stalled = False
            wait_for(lambda: companion.stats.fallbacks == 1)
        wait_for(lambda: [x.duty for x in sim.peek().lights] == [0, 0, FULL])
        assert not sim.peek().fallback
        assert len(links) == 1  # no reconnect was needed
        assert "fallback" in caplog.text


@needs_micropython
def test_board_going_silent_reconnects_with_backoff(companion: SimulatedCompanion, recorder: Recorder) -> None:
    companion.set_state(LightState.IDLE)
    wait_for(lambda: lights_now(companion) == [0, 0, FULL])
    companion.board.power_off()
    wait_for(lambda: companion.health.health == Health.UNAVAILABLE)
    assert companion.input_active(0) is None
    with pytest.raises(DeviceUnavailable):
        companion.pulse(0, 50)
    companion.board.power_on()
    wait_for(lambda: companion.health.health == Health.OK, timeout=5)
    wait_for(lambda: lights_now(companion) == [0, 0, FULL])
    states = [h.health for h in recorder.health]
    assert Health.UNAVAILABLE in states
    assert states[-1] == Health.OK


@needs_micropython
def test_board_restart_is_followed_by_a_new_hello(companion: SimulatedCompanion, recorder: Recorder) -> None:
    companion.set_state(LightState.IDLE)
    wait_for(lambda: lights_now(companion) == [0, 0, FULL])
    companion.board.restart()  # new firmware process: lights off, BOOT frame
    wait_for(lambda: lights_now(companion) == [0, 0, FULL], timeout=5)
    companion.board.press(0)
    wait_for(lambda: len(recorder.calls) == 1)
    assert recorder.calls[0].presses == 1  # the restarted board's counter is the new baseline


GARBAGE = [
    b"Traceback (most recent call last):\r\n",
    proto.encode(proto.EVENT, 1, proto.pack_event(0, True, 9))[:9],  # truncated
    proto.encode(proto.EVENT, 2, proto.pack_event(0, True, 9))[:-3] + b"00\n",  # bad CRC
    b":" + b"0" * 44 + b"\n",  # valid hex, bad CRC
    proto.encode(proto.EVENT, 3, b"\x00\x07\x01\x02"),  # good CRC, malformed payload
    proto.encode(0x99, 4, b"future"),  # unknown kind
    b"\xff\xfe\x00:\n\n",
]


@needs_micropython
def test_garbage_from_the_board_is_skipped(
    companion: SimulatedCompanion, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        for chunk in GARBAGE:
            companion.board.emit(chunk)
        wait_for(lambda: companion.stats.dropped >= 5)
    assert companion.health.health == Health.OK
    assert recorder.calls == []  # nothing in the garbage became a press
    assert caplog.text.count("malformed") == 1  # warned once, then counted
    companion.board.press(0)
    wait_for(lambda: len(recorder.calls) == 1)


def test_open_companion_is_simulated_under_tillbox_devices_sim(monkeypatch: pytest.MonkeyPatch) -> None:
    if not HAVE_MICROPYTHON:
        pytest.skip("MicroPython unix port not installed")
    monkeypatch.setenv("TILLBOX_DEVICES", "sim")
    with open_companion(settings=FAST) as board:
        assert isinstance(board, SimulatedCompanion)
        wait_for(lambda: board.health.health == Health.OK)


# -- scripted peers (plain CPython on the pty master) -------------------------------------------


class ScriptedPeer:
    """A fake board: answers frames with ``handler`` and records every byte received."""

    def __init__(self, handler: Callable[[ScriptedPeer, int, int, bytes], None], *, echo: bool = False) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.port = os.ttyname(self.slave)
        self.handler = handler
        self.echo = echo
        self.received = bytearray()
        self.frames: list[tuple[int, int, bytes]] = []
        self.counts = [0, 0]  # activation counters the STATUS replies report
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def send(self, kind: int, seq: int, payload: bytes = b"") -> None:
        os.write(self.master, proto.encode(kind, seq, payload))

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    def _run(self) -> None:
        decoder = proto.Decoder()
        while not self._stop.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.02)
            if not ready:
                continue
            try:
                data = os.read(self.master, 4096)
            except OSError:
                continue
            self.received += data
            if self.echo:
                os.write(self.master, data)
            for frame in decoder.feed(data):
                self.frames.append(frame)
                self.handler(self, *frame)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        os.close(self.master)
        os.close(self.slave)


def good_board(peer: ScriptedPeer, kind: int, seq: int, payload: bytes) -> None:
    """A minimal well-behaved board with no inputs pressed."""
    if kind == proto.HELLO:
        peer.send(proto.WELCOME, seq, proto.pack_welcome(1, 3, 1, 2, 400, "scripted"))
    elif kind == proto.HEARTBEAT:
        peer.send(proto.STATUS, seq, proto.pack_status(0, [False, False], peer.counts))
    else:
        peer.send(proto.ACK, seq)


@pytest.fixture
def peers() -> Iterator[list[ScriptedPeer]]:
    made: list[ScriptedPeer] = []
    yield made
    for peer in made:
        peer.close()


def driver(peer: ScriptedPeer, recorder: Recorder, clock: FrozenClock | None = None) -> CompanionBoard:
    board = CompanionBoard(
        port=peer.port,
        settings=FAST,
        backoff=QUICK,
        start=False,
        on_call=recorder.calls.append,
        on_input=recorder.changes.append,
        clock=clock,
    )
    board.on_health(recorder.health.append)
    board.start()
    return board


def test_version_mismatch_is_permanent(peers: list[ScriptedPeer], recorder: Recorder) -> None:
    def old_firmware(peer: ScriptedPeer, kind: int, seq: int, payload: bytes) -> None:
        peer.send(proto.NAK, seq, proto.pack_nak(proto.E_VERSION, 7))

    peers.append(peer := ScriptedPeer(old_firmware))
    with driver(peer, recorder) as board:
        wait_for(lambda: board.health.health == Health.UNAVAILABLE)
        assert "protocol v7" in board.health.reason
        assert "tillbox companion flash" in board.health.reason
        time.sleep(0.3)  # back-off would have retried by now
        assert [k for k, _, _ in peer.frames].count(proto.HELLO) == 1


def test_a_board_at_the_repl_is_woken_not_mistaken(peers: list[ScriptedPeer], recorder: Recorder) -> None:
    peers.append(peer := ScriptedPeer(lambda *_: None, echo=True))  # the REPL echoes what it gets
    with driver(peer, recorder) as board:
        wait_for(lambda: WAKE in peer.received)
        wait_for(lambda: board.health.health == Health.UNAVAILABLE)
        assert "no answer to hello" in board.health.reason
        assert board.info is None  # our own echoed HELLO was not taken for a reply


def test_lost_event_frame_is_recovered_from_status_counters(peers: list[ScriptedPeer], recorder: Recorder) -> None:
    peers.append(peer := ScriptedPeer(good_board))
    clock = FrozenClock(datetime(2026, 3, 2, 9, 30, tzinfo=UTC))
    with driver(peer, recorder, clock=clock) as board:
        wait_for(lambda: board.health.health == Health.OK and board.info is not None)
        event = proto.encode(proto.EVENT, 1, proto.pack_event(0, True, 1))
        peer.write(event[:6] + b"\x00" + event[7:])  # the press's EVENT frame is corrupted
        peer.counts = [2, 0]  # two presses by the time of the next STATUS
        wait_for(lambda: len(recorder.calls) == 1)
        time.sleep(0.2)
        assert recorder.calls == [AttendantCall("companion", clock.now(), presses=2)]
        assert board.stats.dropped >= 1


def test_counter_wraps_around(peers: list[ScriptedPeer], recorder: Recorder) -> None:
    peers.append(peer := ScriptedPeer(good_board))
    peer.counts = [254, 0]
    with driver(peer, recorder) as board:
        wait_for(lambda: board.info is not None)
        time.sleep(0.1)
        peer.send(proto.EVENT, 9, proto.pack_event(0, True, 1))  # 254 -> 255 -> 0 -> 1
        wait_for(lambda: len(recorder.calls) == 1)
        assert recorder.calls[0].presses == 3


def test_malformed_welcome_never_crashes_the_driver(peers: list[ScriptedPeer], recorder: Recorder) -> None:
    def broken(peer: ScriptedPeer, kind: int, seq: int, payload: bytes) -> None:
        peer.send(proto.WELCOME, seq, b"\x01")  # good CRC, short payload

    peers.append(peer := ScriptedPeer(broken))
    with driver(peer, recorder) as board:
        wait_for(lambda: board.health.health == Health.UNAVAILABLE)
        assert "malformed welcome" in board.health.reason
        wait_for(lambda: [k for k, _, _ in peer.frames].count(proto.HELLO) >= 2)  # keeps retrying


def test_too_few_lights_is_misconfigured(peers: list[ScriptedPeer], recorder: Recorder) -> None:
    def two_lights(peer: ScriptedPeer, kind: int, seq: int, payload: bytes) -> None:
        peer.send(proto.WELCOME, seq, proto.pack_welcome(1, 2, 1, 2, 400, "tiny"))

    peers.append(peer := ScriptedPeer(two_lights))
    with driver(peer, recorder) as board:
        wait_for(lambda: board.health.health == Health.UNAVAILABLE)
        assert "2 light channels" in board.health.reason


@pytest.mark.allow_error_logs
def test_raising_callback_is_isolated(peers: list[ScriptedPeer], caplog: pytest.LogCaptureFixture) -> None:
    peers.append(peer := ScriptedPeer(good_board))

    def boom(call: AttendantCall) -> None:
        raise RuntimeError("screen gone")

    board = CompanionBoard(port=peer.port, settings=FAST, backoff=QUICK, on_call=boom)
    with board:
        wait_for(lambda: board.info is not None)
        time.sleep(0.1)
        peer.send(proto.EVENT, 1, proto.pack_event(0, True, 1))
        wait_for(lambda: "event handler failed" in caplog.text)
        assert board.health.health == Health.OK


def test_no_board_found(recorder: Recorder) -> None:
    with CompanionBoard(usb=UsbMatch(vid=0x1234, pid=0x9999), settings=FAST, backoff=QUICK) as board:
        board.on_health(recorder.health.append)
        wait_for(lambda: board.health.health == Health.UNAVAILABLE)
        assert "no companion board found (USB 1234:9999)" in board.health.reason
        with pytest.raises(DeviceUnavailable):
            board.pulse()


# -- discovery and configuration ----------------------------------------------------------------


def port_info(device: str, vid: int | None, pid: int | None, serial: str | None = None) -> ListPortInfo:
    info = ListPortInfo(device, skip_link_detection=True)
    info.vid, info.pid, info.serial_number = vid, pid, serial
    return info


def test_find_port_by_vid_pid_and_serial() -> None:
    ports = [
        port_info("/dev/ttyUSB0", 0x0403, 0x6001),  # an FTDI scale cable
        port_info("/dev/ttyACM1", 0x2E8A, 0x0005, "E6614C311B7E2F32"),
        port_info("/dev/ttyACM0", 0x2E8A, 0x0005, "E66138935F5A3B2C"),
        port_info("/dev/ttyS0", None, None),
    ]
    assert find_port(comports=lambda: ports) == "/dev/ttyACM0"
    assert find_port(UsbMatch(serial_number="E6614C311B7E2F32"), comports=lambda: ports) == "/dev/ttyACM1"
    assert find_port(UsbMatch(vid=0x0403, pid=None), comports=lambda: ports) == "/dev/ttyUSB0"
    assert find_port(UsbMatch(pid=0x000A), comports=lambda: ports) is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"heartbeat_timeout": 0.01},
        {"heartbeat_timeout": 120},
        {"heartbeat_interval": 2.0, "heartbeat_timeout": 3.0},
        {"reply_timeout": 5.0},
        {"max_missed": 0},
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(DeviceMisconfigured):
        CompanionSettings(**kwargs)  # type: ignore[arg-type]


def test_light_and_pattern_validation() -> None:
    with pytest.raises(DeviceMisconfigured, match="period"):
        Light(Pattern.BLINK, 0)
    with pytest.raises(DeviceMisconfigured, match="no light pattern for idle"):
        CompanionBoard(patterns={LightState.ASSISTANCE: ()}, start=False)
