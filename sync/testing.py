"""A real Mosquitto broker on a free loopback port, for tests, benchmarks and local demos.

Each :class:`Mosquitto` writes its own config file into a working directory and
runs ``mosquitto -c FILE`` as a child process. The port is picked at random and
retried when another process grabbed it first, so parallel test workers never
collide. ``stop()`` and ``restart()`` keep the port, so a client sees "the
broker went away and came back".
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from appliance.errors import DeviceUnavailable

log = logging.getLogger(__name__)

#: Where distributions install the broker when sbin is not on PATH.
_EXTRA_PATH = ("/usr/sbin", "/usr/local/sbin")


def find_mosquitto() -> str | None:
    """The mosquitto executable: ``$TILLBOX_MOSQUITTO``, PATH, then the usual sbin directories."""
    override = os.environ.get("TILLBOX_MOSQUITTO")
    if override:
        return override
    search = os.pathsep.join([os.environ.get("PATH", ""), *_EXTRA_PATH])
    return shutil.which("mosquitto", path=search)


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class Mosquitto:
    """A Mosquitto child process listening on ``127.0.0.1:port``; a context manager."""

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        persistence: bool = False,
        extra_config: tuple[str, ...] = (),
        executable: str | None = None,
    ) -> None:
        exe = executable or find_mosquitto()
        if exe is None:
            raise DeviceUnavailable("mosquitto is not installed (apt install mosquitto)")
        self.executable = exe
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or 0
        self.persistence = persistence
        self.extra_config = extra_config
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _write_config(self) -> Path:
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            "max_inflight_messages 0",
            "max_queued_messages 0",
            "max_queued_bytes 0",
            "log_dest none",
            f"persistence {'true' if self.persistence else 'false'}",
        ]
        if self.persistence:
            lines.append(f"persistence_location {self.workdir}{os.sep}")
        lines.extend(self.extra_config)
        path = self.workdir / "mosquitto.conf"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    def start(self, timeout: float = 10.0) -> Mosquitto:
        """Start the broker and wait until it accepts connections."""
        if self.running:
            return self
        fixed = self.port != 0
        deadline = time.monotonic() + timeout
        while True:
            if not fixed:
                self.port = free_port()
            conf = self._write_config()
            self._proc = subprocess.Popen(
                [self.executable, "-c", str(conf)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd=self.workdir,
            )
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    break  # most likely the port was taken meanwhile
                if _port_open(self.port):
                    return self
                time.sleep(0.01)
            self._reap()
            if time.monotonic() >= deadline:
                raise DeviceUnavailable(f"mosquitto did not start on port {self.port} within {timeout} s")
            if fixed:
                time.sleep(0.05)  # the old listener may still be closing

    def _reap(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop(self) -> None:
        """Stop the broker (SIGTERM; a persistent broker saves its state); idempotent."""
        self._reap()

    def kill(self) -> None:
        """Kill the broker without letting it save anything."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
        self._reap()

    def restart(self) -> None:
        """Stop and start again on the same port."""
        self.stop()
        self.start()

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class Collector:
    """A plain paho subscriber that records what arrives; for tests and benchmarks.

    It runs paho's network thread (``loop_start``); :meth:`close` stops it.
    """

    def __init__(self, url: str, topics: list[str], *, client_id: str = "", persistent: bool = False) -> None:
        import threading

        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

        from sync.link import Broker

        broker = Broker.parse(url)
        self.messages: list[tuple[str, bytes, float, bool]] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
        )  # fmt: skip
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, 1) for t in topics])
        self.client.reconnect_delay_set(1, 1)
        if persistent:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 3600
            self.client.connect(broker.host, broker.port, clean_start=False, properties=props)
        else:
            self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        if not self._subscribed.wait(5):
            self.close()
            raise DeviceUnavailable(f"could not subscribe at {url}")

    def _on_message(self, client: object, userdata: object, msg: object) -> None:
        stamp = time.monotonic()
        with self._cond:
            self.messages.append((msg.topic, bytes(msg.payload), stamp, bool(msg.retain)))  # type: ignore[attr-defined]
            self._cond.notify_all()

    def wait(self, count: int, timeout: float = 10.0, *, topic_part: str = "") -> list[tuple[str, bytes]]:
        """Wait until ``count`` messages (whose topic contains ``topic_part``) arrived; returns them."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                got = [(t, p) for t, p, _, _ in self.messages if topic_part in t]
                if len(got) >= count or time.monotonic() >= deadline:
                    return got
                self._cond.wait(deadline - time.monotonic())

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.01) -> bool:
    """Poll ``predicate`` until it is true or the timeout passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return predicate()
        time.sleep(interval)
    return True
