"""A real Mosquitto broker on a free loopback port, for tests, benchmarks and local demos.

Each :class:`Mosquitto` writes its own config file into a working directory and
runs ``mosquitto -c FILE`` as a child process. The port is picked at random and
retried when another process grabbed it first, so parallel test workers never
collide. ``stop()`` and ``restart()`` keep the port, so a client sees "the
broker went away and came back".
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

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


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


def local_preamble() -> str:
    """Config lines for a throw-away broker: run as this user (not "mosquitto" when root), errors to stderr."""
    return f"user {_user()}\nlog_dest stderr\nlog_type error\npersistence false\n"


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class BrokerTls:
    """A TLS listener: the server's certificate and key, and the CA that client certificates must chain to."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    require_certificate: bool = True
    identity_as_username: bool = True


class Mosquitto:
    """A Mosquitto child process listening on ``127.0.0.1:port``; a context manager.

    ``tls`` makes the listener TLS-only (``url`` is then ``mqtts://``); ``password_file``
    (see :func:`write_password_file`) and ``acl_file`` switch on authentication and
    authorisation, and anonymous clients are refused unless ``anonymous`` is set.
    ``config`` writes a complete configuration instead, given the port to listen on.
    The broker's stderr goes to ``workdir/mosquitto.err``.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        persistence: bool = False,
        extra_config: tuple[str, ...] = (),
        executable: str | None = None,
        tls: BrokerTls | None = None,
        password_file: Path | None = None,
        acl_file: Path | None = None,
        anonymous: bool | None = None,
        config: Callable[[int], str] | None = None,
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
        self.tls = tls
        self.password_file = password_file
        self.acl_file = acl_file
        self.anonymous = anonymous if anonymous is not None else (password_file is None and tls is None)
        self._config = config
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _write_config(self) -> Path:
        path = self.workdir / "mosquitto.conf"
        if self._config is not None:
            path.write_text(self._config(self.port), encoding="utf-8")
            return path
        lines = [
            f"listener {self.port} 127.0.0.1",
            f"allow_anonymous {'true' if self.anonymous else 'false'}",
            "max_inflight_messages 0",
            "max_queued_messages 0",
            "max_queued_bytes 0",
            "log_dest stderr",
            "log_type error",
            f"user {_user()}",  # when started as root, stay this user (who owns the files), not "mosquitto"
            f"persistence {'true' if self.persistence else 'false'}",
        ]
        if self.persistence:
            lines.append(f"persistence_location {self.workdir}{os.sep}")
        if self.tls is not None:
            t = self.tls
            lines += [f"cafile {t.ca_file}", f"certfile {t.cert_file}", f"keyfile {t.key_file}",
                      f"require_certificate {'true' if t.require_certificate else 'false'}",
                      f"use_identity_as_username {'true' if t.identity_as_username else 'false'}"]  # fmt: skip
        if self.password_file is not None:
            lines.append(f"password_file {self.password_file}")
        if self.acl_file is not None:
            lines.append(f"acl_file {self.acl_file}")
        lines.extend(self.extra_config)
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
            with open(self.workdir / "mosquitto.err", "ab") as err:
                self._proc = subprocess.Popen(
                    [self.executable, "-c", str(conf)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
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
                tail = (self.workdir / "mosquitto.err").read_text(errors="replace").strip().splitlines()[-1:]
                raise DeviceUnavailable(f"mosquitto did not start on port {self.port} within {timeout} s"
                                        + (f": {tail[0]}" if tail else ""))  # fmt: skip
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


def write_password_file(path: Path, users: Mapping[str, str]) -> Path:
    """A Mosquitto password file made by ``mosquitto_passwd -b`` (hashed, as in production)."""
    tool = shutil.which("mosquitto_passwd", path=os.pathsep.join([os.environ.get("PATH", ""), *_EXTRA_PATH]))
    if tool is None:
        raise DeviceUnavailable("mosquitto_passwd is not installed (it comes with the mosquitto package)")
    path.write_text("", encoding="utf-8")
    path.chmod(0o600)
    for user, password in users.items():
        subprocess.run([tool, "-b", str(path), user, password], check=True, capture_output=True, timeout=30)
    return path


@dataclass(frozen=True)
class Pki:
    """A throw-away certificate authority with a server certificate for ``127.0.0.1`` and ``localhost``.

    Made by :func:`make_pki`; :meth:`client` issues client certificates whose common
    name is the MQTT identity (Mosquitto's ``use_identity_as_username``).
    """

    directory: Path
    ca_file: Path
    server_cert: Path
    server_key: Path
    now: dt.datetime

    def broker_tls(self, *, require_certificate: bool = True) -> BrokerTls:
        return BrokerTls(self.ca_file, self.server_cert, self.server_key, require_certificate=require_certificate)

    def client(self, common_name: str, *, file_stem: str | None = None) -> tuple[Path, Path]:
        """(certificate, key) files of a client certificate for ``common_name``."""
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        from cryptography.x509.oid import ExtendedKeyUsageOID

        stem = file_stem or common_name.replace("/", "_")
        cert_path, key_path = self.directory / f"{stem}.pem", self.directory / f"{stem}.key"
        if not cert_path.exists():
            ca_cert = x509.load_pem_x509_certificate(self.ca_file.read_bytes())
            ca_key = serialization.load_pem_private_key((self.directory / "ca.key").read_bytes(), None)
            _issue(cert_path, key_path, common_name, issuer=(ca_cert, ca_key), now=self.now,
                   usage=ExtendedKeyUsageOID.CLIENT_AUTH)  # fmt: skip
        return cert_path, key_path


def _issue(cert_path: Path, key_path: Path, common_name: str, *, issuer: tuple[Any, Any] | None, now: dt.datetime,
           usage: Any = None, hosts: tuple[str, ...] = ()) -> tuple[Any, Any]:  # fmt: skip
    """Write a certificate and its key (EC P-256); self-signed CA when ``issuer`` is None."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    signer_cert, signer_key = issuer if issuer is not None else (None, key)
    builder = (
        x509.CertificateBuilder().subject_name(name)
        .issuer_name(signer_cert.subject if signer_cert is not None else name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )  # fmt: skip
    if issuer is None:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                          encipher_only=False, decipher_only=False), critical=True)  # fmt: skip
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if hosts:
        alt: list[x509.GeneralName] = []
        for host in hosts:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                alt.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    cert = builder.sign(signer_key, hashes.SHA256())
    key_path.touch(mode=0o600)
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def make_pki(directory: Path, *, now: dt.datetime, name: str = "tillbox test CA") -> Pki:
    """A new CA in ``directory`` with a server certificate for the loopback broker."""
    from cryptography.x509.oid import ExtendedKeyUsageOID

    directory.mkdir(parents=True, exist_ok=True)
    ca = _issue(directory / "ca.pem", directory / "ca.key", name, issuer=None, now=now)
    _issue(directory / "server.pem", directory / "server.key", "localhost", issuer=ca, now=now,
           usage=ExtendedKeyUsageOID.SERVER_AUTH, hosts=("127.0.0.1", "localhost"))  # fmt: skip
    return Pki(directory, directory / "ca.pem", directory / "server.pem", directory / "server.key", now)


class Collector:
    """A plain paho subscriber that records what arrives; for tests and benchmarks.

    It runs paho's network thread (``loop_start``); :meth:`close` stops it.
    """

    def __init__(
        self,
        url: str,
        topics: list[str],
        *,
        client_id: str = "",
        persistent: bool = False,
        ca_file: Path | None = None,
        cert: tuple[Path, Path] | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
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
        if broker.tls:
            self.client.tls_set(ca_certs=str(ca_file) if ca_file else None, certfile=str(cert[0]) if cert else None,
                                keyfile=str(cert[1]) if cert else None)  # fmt: skip
        if username is not None:
            self.client.username_pw_set(username, password)
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
