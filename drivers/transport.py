"""The hardware seam: every link reduces to ``write(bytes)`` and ``read(n, timeout)``.

Codecs build pure bytes; these transports carry them over serial (pyserial,
including pseudo-terminals in tests), TCP, a file, or an in-memory simulator.
"""

from __future__ import annotations

import socket
import termios
import threading
import time
from collections import deque
from pathlib import Path
from typing import Protocol

from appliance.errors import DeviceUnavailable


class Transport(Protocol):
    """A byte link to a device."""

    def write(self, data: bytes) -> None: ...

    def read(self, size: int, timeout: float) -> bytes:
        """Up to ``size`` bytes, waiting at most ``timeout`` seconds; b"" on timeout."""
        ...

    def close(self) -> None: ...


class SerialTransport:
    """A serial port (USB CDC/ACM, RS-232, or a pty in tests) through pyserial."""

    def __init__(self, port: str, baudrate: int = 9600, *, bytesize: int = 8, parity: str = "N",
                 stopbits: float = 1, rtscts: bool = False) -> None:  # fmt: skip
        import serial

        try:
            self._port = serial.Serial(port, baudrate=baudrate, bytesize=bytesize, parity=parity,
                                       stopbits=stopbits, rtscts=rtscts, timeout=0)  # fmt: skip
        except (serial.SerialException, OSError, termios.error) as exc:
            raise DeviceUnavailable(f"cannot open serial port {port}: {exc}") from exc
        self.port = port

    def write(self, data: bytes) -> None:
        import serial

        try:
            self._port.write(data)
            self._port.flush()
        except (serial.SerialException, OSError) as exc:
            raise DeviceUnavailable(f"write to {self.port} failed: {exc}") from exc

    def read(self, size: int, timeout: float) -> bytes:
        import serial

        try:
            self._port.timeout = max(0.0, timeout)
            return bytes(self._port.read(size))
        except (serial.SerialException, OSError, termios.error) as exc:
            raise DeviceUnavailable(f"read from {self.port} failed: {exc}") from exc

    def close(self) -> None:
        self._port.close()


class TcpTransport:
    """A TCP connection (network printers on port 9100, ZVT terminals on 20007)."""

    def __init__(self, host: str, port: int, *, connect_timeout: float = 5.0) -> None:
        try:
            self._sock = socket.create_connection((host, port), timeout=connect_timeout)
        except OSError as exc:
            raise DeviceUnavailable(f"cannot connect to {host}:{port}: {exc}") from exc
        # Device protocols are small request/response exchanges: Nagle would add ~40 ms to each.
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.address = f"{host}:{port}"

    def write(self, data: bytes) -> None:
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise DeviceUnavailable(f"send to {self.address} failed: {exc}") from exc

    def read(self, size: int, timeout: float) -> bytes:
        self._sock.settimeout(max(0.001, timeout))
        try:
            data = self._sock.recv(size)
        except TimeoutError:
            return b""
        except OSError as exc:
            raise DeviceUnavailable(f"receive from {self.address} failed: {exc}") from exc
        if not data:
            raise DeviceUnavailable(f"{self.address} closed the connection")
        return data

    def close(self) -> None:
        self._sock.close()


class FileTransport:
    """Appends bytes to a file or character device (``/dev/usb/lp0``); reads nothing."""

    def __init__(self, path: Path) -> None:
        try:
            self._fh = Path(path).open("ab", buffering=0)  # noqa: SIM115 - kept open for the device's life
        except OSError as exc:
            raise DeviceUnavailable(f"cannot open {path}: {exc}") from exc
        self.path = path

    def write(self, data: bytes) -> None:
        try:
            self._fh.write(data)
        except OSError as exc:
            raise DeviceUnavailable(f"write to {self.path} failed: {exc}") from exc

    def read(self, size: int, timeout: float) -> bytes:
        return b""

    def close(self) -> None:
        self._fh.close()


class LoopbackTransport:
    """In-memory transport for simulators: keeps what was written, serves scripted replies."""

    def __init__(self) -> None:
        self.written = bytearray()
        self._incoming: deque[bytes] = deque()
        self._cond = threading.Condition()
        self.connected = True

    def feed(self, data: bytes) -> None:
        """Queue bytes for the driver to read (as if the device sent them)."""
        with self._cond:
            self._incoming.append(data)
            self._cond.notify_all()

    def write(self, data: bytes) -> None:
        if not self.connected:
            raise DeviceUnavailable("simulated device is disconnected")
        self.written += data

    def read(self, size: int, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._incoming:
                if not self.connected:
                    raise DeviceUnavailable("simulated device is disconnected")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return b""
                self._cond.wait(remaining)
            chunk = self._incoming.popleft()
            if len(chunk) > size:
                self._incoming.appendleft(chunk[size:])
                chunk = chunk[:size]
            return chunk

    def close(self) -> None:
        self.connected = False
        with self._cond:
            self._cond.notify_all()
