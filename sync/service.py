"""The sync service: one thread that owns the MQTT link, the outbox relay and inbound handling.

Everything runs on the service's own thread: paho callbacks, ledger writes
(through the service's own :class:`~appliance.ledger.Ledger` connection), health
checks. Other threads talk to it only through :meth:`SyncService.call`. No sale
path ever waits on it: sales are committed to the ledger first and the relay
picks them up from the outbox. The one request that waits for the shop is
:meth:`SyncService.lookup_sale` (a return of a sale this till does not have), and
it gives up quickly when the shop cannot answer.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final, TypeVar

import paho.mqtt.client as mqtt

from appliance import __version__
from appliance.alerts import active_alerts, clear_alert, raise_alert
from appliance.clock import Clock, SystemClock, iso_utc
from appliance.config import Config
from appliance.errors import ConfigError, DeviceUnavailable, InputError, NotFound, SaleError, TillboxError
from appliance.ledger import Ledger
from appliance.update_fetch import FetchOptions, UpdateFetcher
from sync import reconcile, rpc
from sync.contract import HUB_PREFIX, PREFIX, device_topic
from sync.inbound import Inbound, InboundPolicy, Rejected, doc_version
from sync.link import LinkSettings, MqttLink, message_properties, read_password
from sync.lookup import store_answer
from sync.relay import OutboxRelay
from sync.schemas import validate
from sync.worker import LinkWorker

log = logging.getLogger(__name__)

T = TypeVar("T")
CommandHandler = Callable[[Mapping[str, Any]], Mapping[str, Any]]

ALERT_BACKLOG: Final = "sync.backlog_old"
ALERT_ACK: Final = "sync.ack_invalid"
ALERT_REFUSED: Final = "sync.link_refused"
#: The catalog has not been confirmed as the shop's current one for ``catalog_max_age``.
ALERT_CATALOG: Final = "sync.catalog_stale"
#: The reference hub's retained online/offline status; a till fails lookups fast while it says offline.
HUB_STATUS: Final = f"{HUB_PREFIX}/status"
COMMANDS: Final = ("open_drawer", "reprint", "refresh", "reconcile")


@dataclass(frozen=True)
class SyncOptions:
    """Timing and limits of the service (from ``[sync]``; tests shorten them)."""

    window: int = 100
    ack_timeout: float = 60.0
    backlog_alert_after: float = 900.0
    health_interval: float = 5.0
    poll_interval: float = 0.01
    retention_days: int = 30
    prune_interval: float = 3600.0
    reconcile_interval: float | None = 3600.0
    response_expiry: int = 60
    lookup_timeout: float = 3.0
    catalog_max_age: float | None = None
    customer_cache_days: int = 30


@dataclass
class _Lookup:
    """A sale lookup or generic request waiting for the shop's answer."""

    reference: str  # the sale reference, or the request's id
    future: Future[dict[str, Any]]
    forget_at: float = 0.0  # set when sent: a late answer is still taken until twice the expiry
    name: str = "sale"


def _settle(pending: _Lookup, outcome: dict[str, Any] | TillboxError) -> None:
    if not pending.future.done():
        if isinstance(outcome, TillboxError):
            pending.future.set_exception(outcome)
        else:
            pending.future.set_result(outcome)


def settings_from_config(config: Config, data_dir: Path, brokers: tuple[str, ...] = ()) -> LinkSettings:
    """Link settings from ``[sync]``; ``brokers`` overrides the configured list."""
    s = config.sync

    def path(value: str) -> str | None:
        return str(data_dir / value) if value else None

    password = read_password(data_dir / s.password_file) if s.password_file else None
    return LinkSettings.from_urls(
        list(brokers or s.brokers), s.client_id or f"tillbox-{config.store.id}-{config.store.device_id}",
        keepalive=s.keepalive, username=s.username or None, password=password, tls_ca_file=path(s.tls_ca_file),
        tls_cert_file=path(s.tls_cert_file), tls_key_file=path(s.tls_key_file),
        session_expiry=s.session_expiry_hours * 3600, backoff_cap=float(s.reconnect_max_delay),
        inflight=s.inflight_window,
    )  # fmt: skip


def options_from_config(config: Config) -> SyncOptions:
    s = config.sync
    return SyncOptions(
        window=s.inflight_window, ack_timeout=float(s.ack_timeout), backlog_alert_after=s.backlog_alert_minutes * 60.0,
        retention_days=config.ledger.outbox_retention_days, reconcile_interval=s.reconcile_minutes * 60.0,
        catalog_max_age=s.catalog_max_age_hours * 3600.0 or None, customer_cache_days=s.customer_cache_days,
    )  # fmt: skip


class SyncService(LinkWorker):
    """Relays the outbox to the shop and applies what the shop sends; a context manager."""

    def __init__(
        self,
        ledger_path: Path,
        *,
        store: str,
        device: str,
        link: LinkSettings,
        policy: InboundPolicy,
        options: SyncOptions | None = None,
        clock: Clock | None = None,
        commands: Mapping[str, CommandHandler] | None = None,
        on_change: Callable[[str], None] = lambda kind: None,
        health: Callable[[], Mapping[str, str]] = dict,
        config_report: Mapping[str, Any] | None = None,
        updates: FetchOptions | None = None,
    ) -> None:
        self.options = options or SyncOptions()
        self.clock = clock or SystemClock()
        self.ledger = Ledger(ledger_path, store_id=store, device_id=device, create=False)
        try:
            self.store, self.device = store, device
            self._commands = dict(commands or {})
            self._on_change = on_change
            self._health = health
            self._config_report = dict(config_report) if config_report is not None else None
            self._lookups: dict[bytes, _Lookup] = {}
            self.hub_online: bool | None = None  # None: the shop does not say
            self._init_worker()
            link = replace(link, inflight=min(link.inflight, self.options.window))
            self.link = MqttLink(
                link, next_session=self._next_session, will=self._will, on_connect=self._connected,
                on_disconnect=self._disconnected, on_message=self._message, on_published=self._published,
                clock=self.clock, wake=self._wake,
            )  # fmt: skip
            self.relay = OutboxRelay(
                self.ledger, self._publish_event, clock=self.clock, window=self.options.window,
                ack_timeout=self.options.ack_timeout,
            )  # fmt: skip
            #: Fetches the update bundles the shop offers (docs/image.md, "Delivering updates"); None: off.
            self.updates = None if updates is None else UpdateFetcher(
                updates, device=device, clock=self.clock,
                report=lambda doc: self.call(lambda: self._publish_update_status(doc)),
            )  # fmt: skip
            self.inbound = Inbound(
                self.ledger, policy, clock=self.clock, on_change=self._changed, report_config=self._report_config,
                on_offer=None if self.updates is None else self._update_offer,
            )  # fmt: skip
            self._last_state: dict[str, Any] | None = None
            now = self.clock.monotonic()
            self._next_health = now
            self._next_prune = now
            self._next_reconcile = now + (self.options.reconcile_interval or 0)
            self.reconcile_results: list[list[str]] = []
            self._catalog_current_at: datetime | None = None
        except BaseException:
            self.ledger.close()
            raise

    @classmethod
    def from_config(
        cls,
        config: Config,
        data_dir: Path,
        *,
        brokers: tuple[str, ...] = (),
        clock: Clock | None = None,
        link: LinkSettings | None = None,
        **kw: Any,
    ) -> SyncService:
        """A service for the till configured in ``config`` with its ledger in ``data_dir``.

        ``link`` replaces the link settings derived from ``[sync]`` (and ``brokers``).
        """
        policy = InboundPolicy(
            currency=config.currency, tax_classes=tuple(config.tax.classes.keys()), layouts=config.barcode_layouts(),
            max_price=config.sale.max_line_amount, max_bytes=config.sync.max_inbound_bytes,
        )  # fmt: skip
        kw.setdefault("options", options_from_config(config))
        kw.setdefault("updates", FetchOptions.from_config(config, data_dir) if config.update.fetch else None)
        return cls(
            config.ledger_path(data_dir), store=config.store.id, device=config.store.device_id,
            link=link or settings_from_config(config, data_dir, brokers), policy=policy, clock=clock, **kw,
        )  # fmt: skip

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> SyncService:
        """Run the service on its own thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self.run, name=f"sync-{self.device}", daemon=True)
            self._thread.start()
        return self

    def run(self) -> None:
        """The loop; returns after :meth:`close` (or :meth:`stop`)."""
        try:
            while not self._stop.is_set():
                self.link.step(self.options.poll_interval)
                self._run_calls()
                self.relay.pump()
                self.relay.flush()
                self._periodic()
            self.relay.flush(force=True)
            self.link.close(final=self._status(False))
        finally:
            self._run_calls()
            self._forget_lookups(everything=True)

    def close(self) -> None:
        """Stop the loop, wait for it, close the ledger; idempotent."""
        if self.updates is not None:
            self.updates.close()
        self._join()
        self.ledger.close()

    def __enter__(self) -> SyncService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- link callbacks --------------------------------------------------------------------------

    def _topic(self, klass: str, name: str) -> str:
        return device_topic(self.store, self.device, klass, name)

    def _status(self, online: bool) -> tuple[str, bytes]:
        body = json.dumps({"online": online, "session": self.link.session}).encode()
        return self._topic("status", "connection"), body

    def _will(self, session: int) -> tuple[str, bytes]:
        return self._topic("status", "connection"), json.dumps({"online": False, "session": session}).encode()

    def _next_session(self) -> int:
        with self.ledger.transaction("counting sync sessions") as tx:
            value = self.ledger.counter("sync_session") + 1
            tx.set_counter("sync_session", value)
        return value

    def _connected(self, session: int) -> None:
        topics = [(t, 1) for t in self.inbound.topics()]
        topics += [(self._topic("res", "ack"), 1), (self._topic("res", "reconcile"), 1), (self._topic("cmd", "+"), 1),
                   (self._topic("res", "sale"), 1), (self._topic("res", rpc.RESPONSE_NAME), 1),
                   (HUB_STATUS, 1)]  # fmt: skip
        self.link.subscribe(topics)
        topic, body = self._status(True)
        self.link.publish(topic, body, retain=True)
        clear_alert(self.ledger, ALERT_REFUSED, time=self._now(), note=f"connected to {self.link.broker}")
        if self._config_report is not None:
            self._report_config(self._config_report)
            self._config_report = None
        self._last_state = None
        self.publish_state()
        if self.updates is not None and self.updates.last is not None:
            self._publish_update_status(self.updates.last)
        self.relay.connected()

    def _disconnected(self) -> None:
        self.relay.disconnected()

    def _published(self, mid: int) -> None:
        self.relay.on_published(mid)

    def _publish_event(self, topic: str, payload: bytes, props: Any) -> int | None:
        return self.link.publish(topic, payload, qos=1, properties=props)

    def _message(self, msg: mqtt.MQTTMessage) -> None:
        try:
            self._dispatch(msg)
        except Exception:
            log.exception("handling the message on %s failed", msg.topic)

    def _dispatch(self, msg: mqtt.MQTTMessage) -> None:
        topic, payload = msg.topic, bytes(msg.payload)
        if topic == self._topic("res", "ack"):
            self._ack(topic, payload)
        elif topic == self._topic("res", "reconcile"):
            try:
                doc = self.inbound.parse(topic, payload, "reconcile-response")
            except Rejected as exc:
                self.inbound.reject(topic, payload, str(exc))
                return
            result = reconcile.settle(self.ledger, doc, acked=self.relay.acked, time=self._now())
            if result is not None:
                self.reconcile_results.append(result)
        elif topic.startswith(self._topic("cmd", "")):
            self._command(msg)
        elif topic == self._topic("res", "sale"):
            self._lookup_answer(msg)
        elif topic == self._topic("res", rpc.RESPONSE_NAME):
            self._rpc_answer(msg)
        elif topic == HUB_STATUS:
            try:
                self.hub_online = bool(self.inbound.parse(topic, payload, "status")["online"]) if payload else None
            except Rejected as exc:
                self.inbound.reject(topic, payload, str(exc))
        else:
            self.inbound.handle(topic, payload)

    def _ack(self, topic: str, payload: bytes) -> None:
        if not payload:
            return
        try:
            seq = int(self.inbound.parse(topic, payload, "ack")["seq"])
            self.relay.on_ack(seq)
        except Rejected as exc:
            self.inbound.reject(topic, payload, str(exc))
        except ValueError as exc:
            self.inbound.reject(topic, payload, str(exc), alert=False)
            raise_alert(self.ledger, ALERT_ACK, str(exc), time=self._now(), severity="critical")

    def _command(self, msg: mqtt.MQTTMessage) -> None:
        topic, payload = msg.topic, bytes(msg.payload)
        name = topic.rsplit("/", 1)[1]
        response_topic = getattr(msg.properties, "ResponseTopic", None)
        correlation = getattr(msg.properties, "CorrelationData", None)
        try:
            doc = self.inbound.parse(topic, payload, "command")
            if name not in COMMANDS:
                raise Rejected(f"unknown command {name!r}")
            result = self._run_command(name, doc.get("args", {}))
            reply: dict[str, Any] = {"ok": True, "command": name, "result": dict(result)}
        except Rejected as exc:
            self.inbound.reject(topic, payload, str(exc))
            reply = {"ok": False, "command": name, "error": str(exc)}
        except TillboxError as exc:
            reply = {"ok": False, "command": name, "error": str(exc)}
        if response_topic:
            props = message_properties(ContentType="application/json",
                                       MessageExpiryInterval=self.options.response_expiry)  # fmt: skip
            if correlation is not None:
                props.CorrelationData = correlation
            self.link.publish(str(response_topic), json.dumps(reply).encode(), qos=1, properties=props)

    def _run_command(self, name: str, args: Mapping[str, Any]) -> Mapping[str, Any]:
        if name == "refresh":
            self._last_state = None
            return {"state": self.publish_state()}
        if name == "reconcile":
            return {"request_seq": reconcile.request(self.ledger, time=self._now())}
        handler = self._commands.get(name)
        if handler is None:
            raise InputError(f"{name} is not available on this device")
        return handler(args)

    # -- sale lookups (returns of sales this till does not have) ---------------------------------

    def lookup_sale(self, reference: str, timeout: float | None = None) -> dict[str, Any]:
        """Ask the shop for a sale (another till's, or an online order); store it in ``remote_sales``.

        Call from any thread but the service's. Returns the stored sale. Raises
        :class:`NotFound` when the shop does not know it, :class:`SaleError` when it
        cannot be returned (a cancelled or unpaid order), :class:`DeviceUnavailable`
        when the shop cannot be asked (offline, hub down) or does not answer within
        ``timeout`` (default ``options.lookup_timeout``), and :class:`InputError` when
        the answer was invalid (it is dead-lettered).
        """
        if threading.current_thread() is self._thread:
            raise RuntimeError("lookup_sale waits for the service thread; call it from another thread")
        wait = self.options.lookup_timeout if timeout is None else timeout
        validate("sale-lookup", {"reference": reference})
        body = {"reference": reference, "issued_at": self._now()}
        return self._ask("sale", body, _Lookup(reference, Future()), wait, response="sale")

    def request(self, name: str, body: Mapping[str, Any], *, request_id: str | None = None,
                timeout: float | None = None) -> dict[str, Any]:  # fmt: skip
        """Ask the shop (``req/{name}``, see :mod:`sync.rpc`) and return its result.

        Call from any thread but the service's. ``request_id`` is the idempotency key
        (a fresh UUID when omitted): repeat a request whose outcome is unknown with the
        same id and the shop answers what it did the first time. Raises
        :class:`DeviceUnavailable` when the shop cannot be asked or does not answer
        within ``timeout`` (the outcome is then unknown), :class:`InputError` when the
        answer is invalid, and the error the shop answered otherwise (:class:`NotFound`,
        :class:`TenderError` for a decline, :class:`SaleError` for a refusal).
        """
        if threading.current_thread() is self._thread:
            raise RuntimeError("request waits for the service thread; call it from another thread")
        wait = self.options.lookup_timeout if timeout is None else timeout
        rid = str(uuid.UUID(request_id)) if request_id is not None else str(uuid.uuid4())
        doc = {**body, "id": rid}
        validate(rpc.request_schema(name), doc)
        return self._ask(name, doc, _Lookup(rid, Future(), name=name), wait)

    def _ask(self, name: str, doc: Mapping[str, Any], pending: _Lookup, wait: float, *,
             response: str = rpc.RESPONSE_NAME) -> dict[str, Any]:  # fmt: skip
        """Send on the service thread and wait for the answer (raises as :meth:`request` says)."""
        if not self.link.connected:
            raise DeviceUnavailable("the shop is not reachable: this till is offline")
        if self.hub_online is False:
            raise DeviceUnavailable("the shop is not reachable: its hub is offline")
        self.call(lambda: self._send(name, doc, pending, wait, response=response))
        try:
            return pending.future.result(wait)
        except TimeoutError:
            raise DeviceUnavailable(f"the shop did not answer within {wait:g} s") from None

    def _send(self, name: str, doc: Mapping[str, Any], pending: _Lookup, wait: float, *,
              response: str = rpc.RESPONSE_NAME) -> None:  # fmt: skip
        correlation = uuid.uuid4().bytes
        expiry = max(1, math.ceil(wait))
        props = message_properties(ResponseTopic=self._topic("res", response), CorrelationData=correlation,
                                   MessageExpiryInterval=expiry, ContentType="application/json")  # fmt: skip
        if self.link.publish(self._topic("req", name), json.dumps(doc).encode(), qos=1, properties=props) is None:
            pending.future.set_exception(DeviceUnavailable("the shop is not reachable: this till is offline"))
            return
        pending.forget_at = self.clock.monotonic() + 2 * expiry
        self._lookups[correlation] = pending

    def _rpc_answer(self, msg: mqtt.MQTTMessage) -> None:
        topic, payload = msg.topic, bytes(msg.payload)
        pending = self._pending_for(msg)
        if pending is None:
            return
        outcome: dict[str, Any] | TillboxError
        try:
            answer = self.inbound.parse(topic, payload, "rpc-response")
            if str(answer["id"]).lower() != pending.reference:
                raise Rejected(f"answer for request {answer['id']} to request {pending.reference}")
            if answer["ok"]:
                result = answer["result"]
                try:
                    validate(rpc.result_schema(pending.name), result)
                except InputError as exc:
                    raise Rejected(str(exc)) from None
                outcome = dict(result)
            else:
                outcome = rpc.error_from(str(answer["code"]), f"the shop refused: {answer['error']}")
        except Rejected as exc:
            self.inbound.reject(topic, payload, str(exc))
            outcome = InputError(f"the shop's answer to {pending.name} was invalid: {exc}")
        _settle(pending, outcome)

    def _pending_for(self, msg: mqtt.MQTTMessage) -> _Lookup | None:
        """The request an answer belongs to (by CorrelationData), taken off the waiting list."""
        correlation = getattr(msg.properties, "CorrelationData", None)
        pending = self._lookups.pop(bytes(correlation), None) if correlation else None
        if pending is None:
            log.debug("answer on %s to an unknown or expired request ignored", msg.topic)
        return pending

    def _lookup_answer(self, msg: mqtt.MQTTMessage) -> None:
        topic, payload = msg.topic, bytes(msg.payload)
        pending = self._pending_for(msg)
        if pending is None:
            return
        outcome: dict[str, Any] | TillboxError
        try:
            answer = self.inbound.parse(topic, payload, "sale-lookup-response")
            if answer["reference"] != pending.reference:
                raise Rejected(f"answer for {answer['reference']!r} to a lookup of {pending.reference!r}")
            if answer["found"]:
                outcome = store_answer(self.ledger, answer, reference=pending.reference,
                                       currency=self.inbound.policy.currency.code, store=self.store,
                                       now=self._now())  # fmt: skip
            elif answer.get("reason") == "not_returnable":
                outcome = SaleError(f"receipt {pending.reference} cannot be returned: {answer.get('error', '')}")
            else:
                outcome = NotFound(str(answer.get("error") or f"the shop has no sale {pending.reference}"))
        except Rejected as exc:
            self.inbound.reject(topic, payload, str(exc))
            outcome = InputError(f"the shop's answer about {pending.reference} was invalid: {exc}")
        _settle(pending, outcome)

    def _forget_lookups(self, *, everything: bool = False) -> None:
        now = self.clock.monotonic()
        for correlation, pending in list(self._lookups.items()):
            if everything or now >= pending.forget_at:
                del self._lookups[correlation]
                if not pending.future.done():
                    pending.future.set_exception(DeviceUnavailable("the shop did not answer"))

    def _report_config(self, doc: dict[str, Any]) -> None:
        self.link.publish(self._topic("cfg", "reported"), json.dumps(doc).encode(), retain=True)

    def _update_offer(self, doc: dict[str, Any]) -> None:
        assert self.updates is not None
        ignored = self.updates.offer(doc)
        if ignored:
            log.debug("update offer %s ignored: %s", doc["release"], ignored)

    def _publish_update_status(self, doc: Mapping[str, Any]) -> None:
        """The retained ``status/update`` (appliance/update_fetch.py reports every step)."""
        try:
            validate("update-status", doc)
        except InputError as exc:
            log.warning("update status not published: %s", exc)
            return
        self.link.publish(self._topic("status", "update"), json.dumps(doc).encode(), retain=True)

    def _changed(self, kind: str) -> None:
        try:
            self._on_change(kind)
        except Exception:
            log.exception("change listener failed for %s", kind)

    # -- periodic work ---------------------------------------------------------------------------

    def _now(self) -> str:
        return iso_utc(self.clock.now())

    def _periodic(self) -> None:
        now = self.clock.monotonic()
        if now >= self._next_health:
            self._next_health = now + self.options.health_interval
            self.check_backlog()
            self.check_link()
            self.check_catalog()
            self._forget_lookups()
            if self.updates is not None:
                self.updates.check_result()
            self.publish_state()
        if now >= self._next_prune:
            self._next_prune = now + self.options.prune_interval
            self.prune()
        interval = self.options.reconcile_interval
        if interval and now >= self._next_reconcile and self.link.connected:
            self._next_reconcile = now + interval
            reconcile.request(self.ledger, time=self._now())

    def check_backlog(self) -> tuple[int, int]:
        """Raise the backlog alert when the oldest unacknowledged event is too old; clear it when drained."""
        size, age = self.relay.backlog()
        limit = self.options.backlog_alert_after
        if age > limit:
            raise_alert(self.ledger, ALERT_BACKLOG, f"events not confirmed by the shop for over {int(limit)} s",
                        time=self._now())  # fmt: skip
        elif age <= limit / 2:
            clear_alert(self.ledger, ALERT_BACKLOG, time=self._now(), note=f"backlog {size}, oldest {age} s")
        return size, age

    def check_link(self) -> None:
        """Raise ``sync.link_refused`` while the broker refuses this till's credentials or certificate."""
        if self.link.refused and self.link.last_error:
            raise_alert(self.ledger, ALERT_REFUSED, f"the shop's broker refused this till: {self.link.last_error}",
                        time=self._now(), severity="critical")  # fmt: skip

    def catalog_age(self) -> float | None:
        """Seconds since the catalog was last known to be the shop's current one; None without a shop catalog.

        It is current while the link is up, the hub does not say it is offline, and no
        catalog message was rejected since the last one applied (any newer version would
        have arrived on the retained topic).
        """
        row = self.ledger.conn.execute("SELECT updated_at FROM sync_docs WHERE name = 'catalog'").fetchone()
        if row is None:
            return None
        now = self.clock.now()
        rejected = self.ledger.conn.execute(
            "SELECT max(received_at) FROM dead_letters WHERE topic LIKE ?", (f"{PREFIX}/{self.store}/catalog/%",)
        ).fetchone()[0]
        if self.link.connected and self.hub_online is not False and (rejected is None or rejected < row[0]):
            self._catalog_current_at = now
        seen = datetime.fromisoformat(str(row[0]))
        if self._catalog_current_at is not None:
            seen = max(seen, self._catalog_current_at)
        return max(0.0, (now - seen).total_seconds())

    def check_catalog(self) -> float | None:
        """Raise ``sync.catalog_stale`` when :meth:`catalog_age` exceeds ``catalog_max_age``; clear it when current."""
        age, limit = self.catalog_age(), self.options.catalog_max_age
        if age is None or not limit:
            return age
        version = doc_version(self.ledger, "catalog")
        if age > limit:
            raise_alert(self.ledger, ALERT_CATALOG, f"the catalog (version {version}) has not been confirmed as the "
                        f"shop's current one for over {limit / 3600:g} h", time=self._now())  # fmt: skip
        else:
            clear_alert(self.ledger, ALERT_CATALOG, time=self._now(), note=f"catalog version {version} is current")
        return age

    def prune(self) -> int:
        """Delete acknowledged events older than the retention period (and expired cached customers)."""
        from appliance.customers import Customers

        Customers(self.ledger, cache_days=self.options.customer_cache_days).purge(self.clock.now())
        cutoff = iso_utc(self.clock.now() - timedelta(days=self.options.retention_days))
        return self.ledger.prune_outbox(cutoff)

    def state(self) -> dict[str, Any]:
        """The retained device state document."""
        size, age = self.relay.backlog()
        link = "ok" if self.link.connected else "unavailable" if self.link.refused else "degraded"
        health = {"sync": link, **self._health()}
        alerts = [a.code for a in active_alerts(self.ledger)]
        if ALERT_CATALOG in alerts:
            health["catalog"] = "degraded"
        return {
            "time": self._now(),
            "session": max(1, self.link.session),
            "versions": {"tillbox": __version__, "schema": self.ledger.schema_version},
            "backlog": {"size": size, "oldest_age_s": age},
            "last_seq": self.relay.last_seq(),
            "last_acked_seq": self.relay.acked,
            "catalog_version": doc_version(self.ledger, "catalog"),
            "promotions_version": doc_version(self.ledger, "promotions"),
            "config_version": doc_version(self.ledger, "config"),
            "health": health,
            "alerts": alerts,
            "link": self.link.status(),
        }

    def publish_state(self) -> dict[str, Any]:
        """Publish the retained state when it changed (ignoring the timestamp)."""
        state = self.state()
        same = {k: v for k, v in state.items() if k != "time"}
        if self.link.connected and same != self._last_state:
            self.link.publish(self._topic("state", "device"), json.dumps(state).encode(), retain=True)
            self._last_state = same
        return state


def run_service(config: Config, data_dir: Path, brokers: tuple[str, ...] = ()) -> int:
    """Run the service in the foreground until SIGTERM or SIGINT (``python -m sync relay``)."""
    import signal

    if not (brokers or config.sync.brokers):
        raise ConfigError("no broker: give --broker or set [sync] brokers")
    service = SyncService.from_config(config, data_dir, brokers=brokers)

    def stop(signum: int, frame: object) -> None:
        service.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        service.run()
    finally:
        service.close()
    return 0
