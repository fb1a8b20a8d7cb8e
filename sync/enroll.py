"""Device enrollment: one-time tokens exchanged for a client certificate over MQTT.

The hub side (:class:`EnrollmentAuthority`) keeps a small CA and a table of token
hashes; a token is bound to one store and device and can be used once. The device
side (:func:`enroll`) publishes its CSR and token to
``tillbox/v1/{store}/enroll/{device}`` with an MQTT 5 response topic and waits.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from appliance.provision import ProvisionError, Provisioning
from sync.link import Broker, message_properties

CERT_DAYS = 825
#: Seconds between repeats of an unanswered enrollment request.
RESEND = 2.0


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class EnrollmentAuthority:
    """The hub's CA and token book (SQLite, in the hub's data directory)."""

    def __init__(self, data_dir: Path) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        data_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.db = sqlite3.connect(data_dir / "enroll.db", check_same_thread=False, isolation_level=None)
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS tokens(hash TEXT PRIMARY KEY, store TEXT NOT NULL, device TEXT NOT NULL, "
            "created_at TEXT NOT NULL, used_at TEXT)"
        )
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(tokens)")}
        for column in ("key_hash", "certificate"):  # added later: a repeated request gets the same answer
            if column not in columns:
                self.db.execute(f"ALTER TABLE tokens ADD COLUMN {column} TEXT")
        key_path, cert_path = data_dir / "ca-key.pem", data_dir / "ca.pem"
        if not key_path.exists():
            key = ec.generate_private_key(ec.SECP256R1())
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tillbox hub CA")])
            now = dt.datetime.now(dt.UTC)
            cert = (
                x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + dt.timedelta(days=3650))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .sign(key, hashes.SHA256())
            )  # fmt: skip
            key_path.touch(mode=0o600)
            key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))  # fmt: skip
            cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.ca_key = serialization.load_pem_private_key(key_path.read_bytes(), None)
        self.ca_pem = cert_path.read_bytes()
        self.ca_cert = x509.load_pem_x509_certificate(self.ca_pem)

    def issue_token(self, store: str, device: str) -> str:
        """A new one-time token for one device (shown once; only its hash is kept)."""
        token = secrets.token_urlsafe(24)
        while token.startswith("-"):  # a leading "-" reads as an option on a command line
            token = secrets.token_urlsafe(24)
        with self._lock:
            self.db.execute(
                "INSERT INTO tokens(hash, store, device, created_at) VALUES (?, ?, ?, ?)",
                (_hash(token), store, device, dt.datetime.now(dt.UTC).isoformat()),
            )
        return token

    def sign(self, store: str, device: str, token: str, csr_pem: bytes) -> bytes:
        """Check the token and sign the CSR; raises ProvisionError with the reason.

        The same request again (same token, same key) gets the certificate already
        issued, so a device that missed the answer can ask again; any other use of a
        used token is refused.
        """
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        with self._lock:
            row = self.db.execute(
                "SELECT store, device, used_at, key_hash, certificate FROM tokens WHERE hash = ?", (_hash(token),)
            ).fetchone()
            if row is None:
                raise ProvisionError("enrollment token not recognised")
            if (row[0], row[1]) != (store, device):
                raise ProvisionError("enrollment token belongs to another device")
            try:
                csr = x509.load_pem_x509_csr(csr_pem)
            except ValueError:
                raise ProvisionError("certificate signing request is malformed") from None
            if not csr.is_signature_valid:
                raise ProvisionError("certificate signing request has a bad signature")
            spki = serialization.PublicFormat.SubjectPublicKeyInfo
            key_hash = hashlib.sha256(csr.public_key().public_bytes(serialization.Encoding.DER, spki)).hexdigest()
            if row[2] is not None:
                if row[3] == key_hash and row[4]:
                    return str(row[4]).encode()
                raise ProvisionError("enrollment token already used")
            now = dt.datetime.now(dt.UTC)
            name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, store),
                              x509.NameAttribute(NameOID.COMMON_NAME, f"{store}/{device}")])  # fmt: skip
            cert = (
                x509.CertificateBuilder().subject_name(name).issuer_name(self.ca_cert.subject)
                .public_key(csr.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=CERT_DAYS))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .sign(self.ca_key, hashes.SHA256())  # type: ignore[arg-type]
            )  # fmt: skip
            pem = cert.public_bytes(serialization.Encoding.PEM)
            self.db.execute(
                "UPDATE tokens SET used_at = ?, key_hash = ?, certificate = ? WHERE hash = ?",
                (now.isoformat(), key_hash, pem.decode(), _hash(token)),
            )
        return pem

    def handle(self, topic: str, payload: bytes) -> dict[str, Any]:
        """Answer one enrollment request message."""
        parts = topic.split("/")
        if len(parts) != 5 or parts[:2] != ["tillbox", "v1"] or parts[3] != "enroll":
            return {"ok": False, "error": "bad enrollment topic"}
        try:
            body = json.loads(payload)
            cert = self.sign(parts[2], parts[4], str(body["token"]), str(body["csr"]).encode())
        except ProvisionError as exc:
            return {"ok": False, "error": str(exc)}
        except (ValueError, KeyError, TypeError):
            return {"ok": False, "error": "enrollment request must be JSON with token and csr"}
        return {"ok": True, "certificate": cert.decode(), "ca": self.ca_pem.decode()}


class EnrollmentServer:
    """Answers enrollment requests on a broker, in a paho network thread."""

    def __init__(self, authority: EnrollmentAuthority, broker_url: str) -> None:
        self.authority = authority
        broker = Broker.parse(broker_url)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"tillbox-enroll-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv5)  # fmt: skip
        if broker.tls:
            self.client.tls_set()
        self._ready = threading.Event()
        self.client.on_connect = lambda c, *_: c.subscribe("tillbox/v1/+/enroll/+", qos=1)
        self.client.on_subscribe = lambda *_: self._ready.set()
        self.client.on_message = self._message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def wait_ready(self, timeout: float = 10.0) -> bool:
        """Wait until the broker has confirmed the subscription; False when it has not within ``timeout``."""
        return self._ready.wait(timeout)

    def _message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        reply_to = getattr(props, "ResponseTopic", None)
        if not reply_to:
            return
        answer = self.authority.handle(msg.topic, bytes(msg.payload))
        corr = getattr(props, "CorrelationData", None)
        out = message_properties(CorrelationData=corr) if corr else message_properties()
        client.publish(reply_to, json.dumps(answer), qos=1, properties=out)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _request(broker: Broker, p: Provisioning, csr_pem: bytes, timeout: float) -> dict[str, Any]:
    """One enrollment round trip; raises OSError or TimeoutError when the broker does not answer.

    The request is sent again every :data:`RESEND` seconds until answered: the
    enrollment service may come up after the till, and a request published while
    nothing listens is gone. The hub answers a repeated request the same way.
    """
    done = threading.Event()
    subscribed = threading.Event()
    answer: dict[str, Any] = {}
    corr = uuid.uuid4().bytes
    reply = f"tillbox/v1/{p.store_id}/{p.device_id}/res/enroll"

    def on_message(c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        if getattr(msg.properties, "CorrelationData", None) == corr:
            answer.update(json.loads(msg.payload))
            done.set()

    props = message_properties(ResponseTopic=reply, CorrelationData=corr, MessageExpiryInterval=max(1, int(timeout)))
    body = json.dumps({"token": p.enrollment_token, "csr": csr_pem.decode()})

    def on_subscribe(c: mqtt.Client, *a: Any) -> None:
        subscribed.set()
        c.publish(f"tillbox/v1/{p.store_id}/enroll/{p.device_id}", body, qos=1, properties=props)

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"tillbox-{p.store_id}-{p.device_id}-enroll",
                         protocol=mqtt.MQTTv5)  # fmt: skip
    client.on_message = on_message
    client.on_subscribe = on_subscribe
    client.on_connect = lambda c, *_a: c.subscribe(reply, qos=1)
    if broker.tls:
        client.tls_set()
    client.connect(broker.host, broker.port, keepalive=30)
    client.loop_start()
    deadline = time.monotonic() + timeout
    try:
        while not done.wait(min(RESEND, max(0.0, deadline - time.monotonic()))):
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no answer from the enrollment service within {timeout:.0f} s")
            if subscribed.is_set():
                client.publish(f"tillbox/v1/{p.store_id}/enroll/{p.device_id}", body, qos=1, properties=props)
    finally:
        client.disconnect()
        client.loop_stop()
    return answer


def enroll(p: Provisioning, csr_pem: bytes, *, timeout: float = 30.0) -> tuple[bytes, bytes]:
    """Device side: send the CSR and token to the first broker that answers; returns (certificate, CA)."""
    errors: list[str] = []
    for url in p.brokers:
        broker = Broker.parse(url)
        try:
            answer = _request(broker, p, csr_pem, timeout)
        except OSError as exc:  # TimeoutError included
            errors.append(f"{broker}: {exc}")
            continue
        if not answer.get("ok"):
            raise ProvisionError(f"enrollment refused: {answer.get('error', 'no reason given')}")
        return str(answer["certificate"]).encode(), str(answer["ca"]).encode()
    raise ProvisionError("could not enroll: " + "; ".join(errors))
