"""The MQTT link: paho-mqtt (v2 API, MQTT 5) driven from its owner's thread.

:class:`MqttLink` never starts a thread of its own. The owner (the sync service or
the hub) calls :meth:`MqttLink.step` from its loop; connects, reads, writes and
every callback happen there, so the owner's state needs no locks.

- Brokers are tried in order; when the whole list has failed the next round
  waits a :class:`~sync.backoff.Backoff` delay (1 s doubling to a cap, reset
  after a successful connect).
- Every connection uses a fresh paho client, so a new Will (``{"online": false,
  "session": N}``, retained) carries the new session number.
- :meth:`close` publishes the retained offline status and waits for its PUBACK
  before a clean DISCONNECT (which suppresses the Will).
- Why the last attempt failed is kept in :attr:`MqttLink.last_error`; a refusal
  (bad credentials, a certificate the broker or the till does not accept) also sets
  :attr:`MqttLink.refused`, so health can say "check the credentials" rather than
  "the network is down". Either way the link keeps retrying with back-off.
"""

from __future__ import annotations

import gc
import logging
import math
import ssl
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from appliance.clock import Clock, SystemClock
from appliance.errors import ConfigError
from sync.backoff import Backoff

log = logging.getLogger(__name__)

MessageHandler = Callable[[mqtt.MQTTMessage], None]

#: CONNACK reason codes that mean "not with these credentials" (MQTT 5 spec, 3.2.2.2).
_REFUSALS: Final = frozenset({133, 134, 135, 138, 140})  # client id, user/password, not authorized, banned, auth


def _tls_problem(why: str) -> bool:
    """True when a failure text is a TLS handshake or certificate problem."""
    return "ssl" in why.lower() or "certificate" in why.lower()


def _explain(why: str) -> str:
    """paho's socket error text, made readable where it is cryptic."""
    why = why.removeprefix("failed to receive on socket: ")
    if "EOF occurred in violation of protocol" in why:
        return f"the broker closed the TLS connection; is this till's client certificate accepted there? ({why})"
    return why


@dataclass(frozen=True)
class Broker:
    """One broker endpoint."""

    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, url: str) -> Broker:
        """``mqtt://host[:port]`` or ``mqtts://host[:port]``."""
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ConfigError(f"broker {url!r} must be mqtt://host[:port] or mqtts://host[:port]")
        tls = parts.scheme == "mqtts"
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError:
            raise ConfigError(f"broker {url!r} has an invalid port") from None
        return cls(parts.hostname, port, tls)

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


@dataclass(frozen=True)
class LinkSettings:
    """How to reach the brokers; see ``[sync]`` in the config reference."""

    brokers: tuple[Broker, ...]
    client_id: str
    keepalive: int = 60
    username: str | None = None
    password: str | None = None
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    session_expiry: int = 86400
    backoff_initial: float = 1.0
    backoff_cap: float = 60.0
    connect_timeout: float = 5.0
    inflight: int = 100

    @classmethod
    def from_urls(cls, urls: tuple[str, ...] | list[str], client_id: str, **kw: Any) -> LinkSettings:
        if not urls:
            raise ConfigError("no MQTT broker configured")
        return cls(tuple(Broker.parse(u) for u in urls), client_id, **kw)


def read_password(path: Path) -> str:
    """The first line of a password file."""
    try:
        return path.read_text(encoding="utf-8").splitlines()[0] if path.stat().st_size else ""
    except (OSError, UnicodeDecodeError, IndexError) as exc:
        raise ConfigError(f"cannot read the MQTT password file {path}: {exc}") from None


def _props(kind: int, **values: Any) -> Properties:
    props = Properties(kind)  # type: ignore[no-untyped-call]
    for name, value in values.items():
        setattr(props, name, value)
    return props


class MqttLink:
    """A reconnecting MQTT 5 connection, stepped by its owner's loop.

    ``will`` returns ``(topic, payload)`` of the retained status for a session
    number; ``next_session`` returns a new, persisted session number for every
    connection attempt. ``on_connect(session)`` runs after CONNACK (subscribe and
    publish the birth message there); ``on_disconnect()`` after the connection is lost.
    """

    def __init__(
        self,
        settings: LinkSettings,
        *,
        next_session: Callable[[], int],
        will: Callable[[int], tuple[str, bytes]],
        on_connect: Callable[[int], None],
        on_disconnect: Callable[[], None],
        on_message: MessageHandler,
        on_published: Callable[[int], None],
        clock: Clock | None = None,
        wake: threading.Event | None = None,
    ) -> None:
        self.settings = settings
        self._next_session = next_session
        self._will = will
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._on_message = on_message
        self._on_published = on_published
        self.clock = clock or SystemClock()
        self.backoff = Backoff(settings.backoff_initial, settings.backoff_cap)
        self._wake = wake or threading.Event()
        self._client: mqtt.Client | None = None
        self._connected = False
        self._connecting_since: float | None = None
        self._broker_index = 0
        self._next_attempt = 0.0
        self.session = 0
        self.broker: Broker | None = None
        self.receive_maximum = settings.inflight
        self._was_up = False
        self.last_error: str | None = None
        self.refused = False
        self._log_error: str | None = None
        self._newest: mqtt.Client | None = None

    @property
    def connected(self) -> bool:
        return self._connected

    # -- connecting ------------------------------------------------------------------------------

    def _new_client(self, session: int) -> mqtt.Client:
        s = self.settings
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=s.client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
            reconnect_on_failure=False,
        )
        client.connect_timeout = s.connect_timeout
        client.max_inflight_messages_set(max(1, s.inflight))
        client.max_queued_messages_set(0)
        if s.username:
            client.username_pw_set(s.username, s.password)
        topic, payload = self._will(session)
        client.will_set(topic, payload, qos=1, retain=True)
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_message = self._handle_message
        client.on_publish = self._handle_publish
        client.on_log = self._handle_log
        self._newest = client
        return client

    def _configure_tls(self, client: mqtt.Client) -> None:
        s = self.settings
        try:
            client.tls_set(
                ca_certs=s.tls_ca_file or None,
                certfile=s.tls_cert_file or None,
                keyfile=s.tls_key_file or None,
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot load the MQTT TLS files: {exc}") from None

    def _attempt(self) -> None:
        """Try the current broker; on failure move to the next one (or back off after the last)."""
        broker = self.settings.brokers[self._broker_index]
        self.session = self._next_session()
        client = self._new_client(self.session)
        self._log_error = None
        if broker.tls:
            self._configure_tls(client)
        props = _props(PacketTypes.CONNECT, SessionExpiryInterval=self.settings.session_expiry)
        why: str | None = None
        refused = False
        with warnings.catch_warnings():
            # paho drops the socket of a failed TLS handshake without closing it; it is collected here
            warnings.simplefilter("ignore", ResourceWarning)
            try:
                client.connect(broker.host, broker.port, self.settings.keepalive, clean_start=False,
                               properties=props)  # fmt: skip
            except (OSError, ValueError) as exc:
                why = str(exc) or type(exc).__name__
                refused = isinstance(exc, ssl.SSLError) or _tls_problem(why)
            if why is not None and broker.tls:
                gc.collect()
        if why is not None:
            client.disconnect()
            self._failed(broker, why, refused=refused)
            return
        self._client = client
        self.broker = broker
        self._connecting_since = self.clock.monotonic()

    def _failed(self, broker: Broker, why: str, *, refused: bool = False) -> None:
        error = f"{broker}: {why}"
        if self._was_up or self.backoff.failures == 0 or (refused and error != self.last_error):
            log.warning("MQTT broker %s %s: %s", broker, "refused this client" if refused else "unreachable", why)
            self._was_up = False
        else:
            log.debug("MQTT broker %s unreachable: %s", broker, why)
        self.last_error = error
        self.refused = refused
        self._drop_client()
        self._broker_index += 1
        if self._broker_index >= len(self.settings.brokers):
            self._broker_index = 0
            self._next_attempt = self.clock.monotonic() + self.backoff.next_delay()

    def _drop_client(self) -> None:
        client, self._client = self._client, None
        self._connecting_since = None
        if client is not None:
            sock = client.socket()
            if sock is not None:
                sock.close()
            del client

    # -- paho callbacks (run inside step) --------------------------------------------------------

    def _handle_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Properties | None
    ) -> None:
        if rc.is_failure:
            broker = self.broker or self.settings.brokers[self._broker_index]
            self._failed(broker, f"connection refused: {rc}", refused=rc.value in _REFUSALS)
            return
        self._connected = True
        self._connecting_since = None
        self.backoff.reset()
        self._was_up = True
        self.last_error = None
        self.refused = False
        client.on_log = None  # only needed to explain failed attempts; formatting every packet costs throughput
        receive_max = getattr(props, "ReceiveMaximum", None) if props is not None else None
        self.receive_maximum = min(self.settings.inflight, int(receive_max or 65535))
        log.info("MQTT connected to %s (session %d)", self.broker, self.session)
        self._on_connect(self.session)

    def _handle_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Properties | None
    ) -> None:
        if client is not self._client:
            return
        was = self._connected
        self._connected = False
        self._drop_client()
        self._broker_index = 0
        if was:
            log.warning("MQTT connection to %s lost: %s", self.broker, rc)
            self._next_attempt = self.clock.monotonic() + self.backoff.next_delay()
            self._on_disconnect()
        else:
            why = self._log_error or f"disconnected before CONNACK: {rc}"
            self._failed(self.broker or self.settings.brokers[0], why, refused=_tls_problem(why))

    def _handle_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self._on_message(message)

    def _handle_log(self, client: mqtt.Client, userdata: Any, level: int, text: str) -> None:
        if level == mqtt.MQTT_LOG_ERR and client is self._newest and not self._connected and not self._log_error:
            self._log_error = _explain(text)

    def _handle_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, rc: ReasonCode, props: Properties | None
    ) -> None:
        if rc.is_failure:
            log.warning("broker refused a publish (mid %d): %s", mid, rc)
            return
        self._on_published(mid)

    # -- the owner's API -------------------------------------------------------------------------

    def step(self, timeout: float) -> None:
        """Do network work for up to ``timeout`` seconds (connect when due, read, write, keepalive)."""
        client = self._client
        if client is None:
            wait = self._next_attempt - self.clock.monotonic()
            if wait > 0:
                self._wake.wait(min(wait, timeout))
                self._wake.clear()
                return
            self._attempt()
            return
        try:
            rc = client.loop(timeout)
        except (OSError, ValueError) as exc:  # the socket died under paho
            log.debug("MQTT loop failed: %s", exc)
            self._log_error = self._log_error or str(exc) or type(exc).__name__
            rc = MQTTErrorCode.MQTT_ERR_CONN_LOST
        if self._client is client and rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_AGAIN):
            self._handle_disconnect(client, None, None, ReasonCode(PacketTypes.DISCONNECT, "Unspecified error"),
                                    None)  # fmt: skip
        elif (
            self._connecting_since is not None
            and self.clock.monotonic() - self._connecting_since > self.settings.connect_timeout
        ):
            self._failed(self.broker or self.settings.brokers[0], "no CONNACK in time")

    def status(self) -> dict[str, Any]:
        """Connection state for health pages: connected, broker, last error, refused, failures, next try."""
        retry = max(0, math.ceil(self._next_attempt - self.clock.monotonic())) if self._client is None else 0
        return {"connected": self._connected, "broker": str(self.broker) if self.broker else None,
                "last_error": self.last_error, "refused": self.refused, "failures": self.backoff.failures,
                "retry_in_s": retry}  # fmt: skip

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> int | None:
        """Queue a message; returns its message id, or None when not connected."""
        if not self._connected or self._client is None:
            return None
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return None
        return int(info.mid)

    def subscribe(self, topics: list[tuple[str, int]]) -> None:
        if self._client is not None and self._connected:
            self._client.subscribe(topics)

    def close(self, final: tuple[str, bytes] | None = None, timeout: float = 2.0) -> None:
        """Publish ``final`` (the offline status), wait for its PUBACK, then disconnect cleanly."""
        client = self._client
        if client is None:
            return
        if self._connected and final is not None:
            info = client.publish(final[0], final[1], qos=1, retain=True)
            deadline = self.clock.monotonic() + timeout
            try:
                while not info.is_published() and self._client is client and self.clock.monotonic() < deadline:
                    client.loop(0.05)
            except (RuntimeError, ValueError, OSError) as exc:
                log.debug("offline status not confirmed: %s", exc)
            if self._client is not client:
                return
        self._client = None  # our disconnect is not a lost connection
        self._connected = False
        client.disconnect()
        client.loop(0.01)
        self._client = client
        self._drop_client()


def message_properties(**values: Any) -> Properties:
    """MQTT 5 PUBLISH properties, e.g. ``message_properties(ContentType="application/json")``."""
    return _props(PacketTypes.PUBLISH, **values)
