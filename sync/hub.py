"""The reference shop hub: the other end of the contract, for small shops and for tests.

``tillbox hub --broker mqtt://HOST:PORT --data-dir DIR`` keeps a SQLite database
(``DIR/hub.db``) and:

- ingests device events idempotently (unique on event id and on (source, sequence)),
  applying them in sequence order per device and recording gaps;
- keeps central stock per store and channel (tills sell from ``store``; online
  orders reserve units) and republishes retained stock levels;
- sends end-to-end acks (highest contiguous sequence per device, retained);
- answers reconciliation requests with its view of each till;
- answers sale lookups (``req/sale``) from the sales it ingested and the paid online
  orders it published, so a till can take a return of a sale it does not have;
- tracks the refunds every till reports (``tillbox.return.completed``) and raises a
  ``returns.over_refunded`` alert when a line has been refunded more than it sold;
- publishes catalog snapshots and deltas, promotions, desired config, pickup orders,
  update offers and commands.

Like the till's service it runs on one thread that owns the MQTT link and the
database writes; other threads use :meth:`Hub.call` or the public methods, which go
through it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Final, TypeVar

import paho.mqtt.client as mqtt

from appliance.clock import Clock, SystemClock, iso_utc
from appliance.errors import InputError, NotFound, TillboxError
from appliance.ledger.store import milli_to_qty, qty_to_milli
from appliance.returns import parse_reference
from sync import hub_accounts, hub_customers, hub_orders, rpc
from sync.contract import HUB_PREFIX, PREFIX, Topic, parse_device_topic, sku_segment, source, store_topic
from sync.link import LinkSettings, MqttLink, message_properties
from sync.lookup import returnable_order
from sync.schemas import validate, validator
from sync.worker import LinkWorker

log = logging.getLogger(__name__)

T = TypeVar("T")
#: Answers one kind of generic request: (store, device, request) -> result; see :meth:`Hub.serve`.
RequestHandler = Callable[[str, str, Mapping[str, Any]], dict[str, Any]]
STORE_CHANNEL: Final = "store"
_HUB_PREFIX: Final = HUB_PREFIX
ALERT_OVER_REFUNDED: Final = "returns.over_refunded"
#: Seconds a lookup answer stays deliverable (MQTT 5 message expiry).
ANSWER_EXPIRY: Final = 30

_SCHEMA = """
CREATE TABLE IF NOT EXISTS counters(name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS events(
    id TEXT PRIMARY KEY, source TEXT NOT NULL, store TEXT NOT NULL, device TEXT NOT NULL, seq INTEGER NOT NULL,
    type TEXT NOT NULL, time TEXT NOT NULL, received_at TEXT NOT NULL, body TEXT NOT NULL, UNIQUE(source, seq));
CREATE TABLE IF NOT EXISTS devices(
    store TEXT NOT NULL, device TEXT NOT NULL, contiguous INTEGER NOT NULL DEFAULT 0,
    max_seen INTEGER NOT NULL DEFAULT 0, PRIMARY KEY(store, device));
CREATE TABLE IF NOT EXISTS gaps(
    store TEXT NOT NULL, device TEXT NOT NULL, from_seq INTEGER NOT NULL, to_seq INTEGER NOT NULL,
    detected_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS conflicts(
    source TEXT NOT NULL, seq INTEGER NOT NULL, id TEXT NOT NULL, received_at TEXT NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rejected(topic TEXT NOT NULL, reason TEXT NOT NULL, received_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sales(
    id TEXT PRIMARY KEY, store TEXT NOT NULL, device TEXT NOT NULL, number INTEGER NOT NULL,
    total INTEGER NOT NULL, currency TEXT NOT NULL, time TEXT NOT NULL, event_id TEXT);
CREATE INDEX IF NOT EXISTS sales_by_number ON sales(store, device, number);
CREATE TABLE IF NOT EXISTS refunds(
    store TEXT NOT NULL, sale_id TEXT NOT NULL, line INTEGER NOT NULL, device TEXT NOT NULL, return_id TEXT NOT NULL,
    qty_milli INTEGER NOT NULL, amount INTEGER NOT NULL, tax INTEGER NOT NULL, PRIMARY KEY(return_id, line));
CREATE INDEX IF NOT EXISTS refunds_by_sale ON refunds(store, sale_id, line);
CREATE TABLE IF NOT EXISTS alerts(
    id INTEGER PRIMARY KEY, code TEXT NOT NULL, store TEXT NOT NULL, subject TEXT NOT NULL, message TEXT NOT NULL,
    raised_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS stock(
    store TEXT NOT NULL, channel TEXT NOT NULL, sku TEXT NOT NULL, level_milli INTEGER NOT NULL,
    PRIMARY KEY(store, channel, sku));
CREATE TABLE IF NOT EXISTS stock_versions(
    store TEXT NOT NULL, sku TEXT NOT NULL, version INTEGER NOT NULL, PRIMARY KEY(store, sku));
CREATE TABLE IF NOT EXISTS tally(
    store TEXT NOT NULL, device TEXT NOT NULL, sku TEXT NOT NULL, delta_milli INTEGER NOT NULL,
    PRIMARY KEY(store, device, sku));
CREATE TABLE IF NOT EXISTS docs(
    store TEXT NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY(store, name));
CREATE TABLE IF NOT EXISTS answers(
    store TEXT NOT NULL, device TEXT NOT NULL, name TEXT NOT NULL, id TEXT NOT NULL, body TEXT NOT NULL,
    answered_at TEXT NOT NULL, PRIMARY KEY(store, device, name, id));
CREATE TABLE IF NOT EXISTS orders(
    store TEXT NOT NULL, id TEXT NOT NULL, version INTEGER NOT NULL, status TEXT NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY(store, id));
"""


@dataclass
class _Batch:
    """What one ingest transaction changed, published after it commits."""

    acks: set[tuple[str, str]] = field(default_factory=set)
    stock: set[tuple[str, str]] = field(default_factory=set)
    replies: list[tuple[str, bytes]] = field(default_factory=list)
    snapshots: set[str] = field(default_factory=set)
    lookups: list[mqtt.MQTTMessage] = field(default_factory=list)
    orders: set[tuple[str, str]] = field(default_factory=set)


class Hub(LinkWorker):
    """The reference shop hub; start it, use it, close it."""

    def __init__(
        self,
        data_dir: Path,
        link: LinkSettings,
        *,
        clock: Clock | None = None,
        poll_interval: float = 0.01,
        validate_events: bool = True,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.data_dir / "hub.db"
        self.clock = clock or SystemClock()
        self.poll_interval = poll_interval
        self.validate_events = validate_events
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute("PRAGMA synchronous = FULL")
        self.db.execute("PRAGMA busy_timeout = 5000")
        if self.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'sales'").fetchone() is not None:
            columns = {str(r[1]) for r in self.db.execute("PRAGMA table_info(sales)")}
            if "event_id" not in columns:  # hub databases from before sale lookups
                self.db.execute("ALTER TABLE sales ADD COLUMN event_id TEXT")
        self.db.executescript(_SCHEMA)
        self._init_worker()
        self._pending: list[mqtt.MQTTMessage] = []
        self._waiting: dict[bytes, Future[dict[str, Any]]] = {}
        self._reported_gaps: set[tuple[str, str, int]] = set()
        self._acked: dict[tuple[str, str], int] = {}
        self._services: dict[str, RequestHandler] = {}
        self.serve("stock-query", self._stock_query)
        self.orders = hub_orders.HubOrders(self)
        self.accounts = hub_accounts.Accounts(self)  # gift cards, store credit, loyalty: docs/accounts.md
        self.customers = hub_customers.HubCustomers(self)
        self.link = MqttLink(
            link, next_session=self._next_session, will=self._will, on_connect=self._connected,
            on_disconnect=lambda: None, on_message=lambda m: self._pending.append(m), on_published=lambda mid: None,
            clock=self.clock, wake=self._wake,
        )  # fmt: skip

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> Hub:
        if self._thread is None:
            self._thread = threading.Thread(target=self.run, name="tillbox-hub", daemon=True)
            self._thread.start()
        return self

    def run(self) -> None:
        try:
            while not self._stop.is_set():
                self.link.step(self.poll_interval)
                self._run_calls()
                if self._pending:
                    self._ingest()
            self.link.close(final=self._will(self.link.session))
        finally:
            self._run_calls()

    def close(self) -> None:
        """Stop, wait for the thread, close the database; idempotent."""
        self._join()
        self.db.close()

    def __enter__(self) -> Hub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _counter(self, name: str, *, bump: bool = False) -> int:
        row = self.db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        value = int(row[0]) if row else 0
        if bump:
            value += 1
            self.db.execute(
                "INSERT INTO counters(name, value) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                (name, value),
            )
        return value

    def _next_session(self) -> int:
        return self._counter("session", bump=True)

    def _will(self, session: int) -> tuple[str, bytes]:
        return f"{_HUB_PREFIX}/status", json.dumps({"online": False, "session": session}).encode()

    def _connected(self, session: int) -> None:
        self.link.subscribe([(f"{PREFIX}/+/+/evt/+", 1), (f"{PREFIX}/+/+/req/+", 1), (f"{_HUB_PREFIX}/res/+", 1)])
        self.link.publish(f"{_HUB_PREFIX}/status", json.dumps({"online": True, "session": session}).encode(),
                          retain=True)  # fmt: skip

    # -- ingest ----------------------------------------------------------------------------------

    def _now(self) -> str:
        return iso_utc(self.clock.now())

    def _reject(self, topic: str, reason: str) -> None:
        log.warning("hub rejected a message on %s: %s", topic, reason)
        self.db.execute(
            "INSERT INTO rejected(topic, reason, received_at) VALUES (?, ?, ?)", (topic, reason, self._now())
        )

    def _ingest(self) -> None:
        messages, self._pending = self._pending, []
        batch = _Batch()
        now = self._now()
        self.db.execute("BEGIN IMMEDIATE")
        try:
            for msg in messages:
                if msg.topic.startswith(f"{_HUB_PREFIX}/res/"):
                    self._response(msg)
                elif (t := parse_device_topic(msg.topic)) is not None and t.klass == "req":
                    batch.lookups.append(msg)  # answered after this batch is applied
                else:
                    self._store_event(msg, now, batch)
            for store, device in sorted(batch.acks):
                self._advance(store, device, batch, now)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        for store, device in sorted(batch.acks):
            contiguous, max_seen = self.db.execute(
                "SELECT contiguous, max_seen FROM devices WHERE store = ? AND device = ?", (store, device)
            ).fetchone()
            if contiguous == self._acked.get((store, device)) and max_seen <= contiguous:
                continue  # only duplicates: nothing new to say
            self._acked[(store, device)] = contiguous
            body = json.dumps({"seq": contiguous, "time": now}).encode()
            self.link.publish(f"{PREFIX}/{store}/{device}/res/ack", body, retain=True)
        for store, sku in sorted(batch.stock):
            self._publish_stock(store, sku)
        for store, order_id in sorted(batch.orders):
            self.orders.publish(store, order_id)
        for topic, body in batch.replies:
            self.link.publish(topic, body)
        for store in sorted(batch.snapshots):
            self._republish(store, "catalog/snapshot", "catalog")
        for msg in batch.lookups:
            self._answer_lookup(msg)

    def _store_event(self, msg: mqtt.MQTTMessage, now: str, batch: _Batch) -> None:
        topic = parse_device_topic(msg.topic)
        try:
            event = json.loads(msg.payload, parse_float=Decimal)
            validate("cloudevent-envelope", event)
        except (ValueError, InputError) as exc:
            self._reject(msg.topic, str(exc))
            return
        if self.validate_events:
            try:
                validate("cloudevent", event)
            except InputError as exc:  # stored all the same: a gap would stall the device's stream
                self._reject(msg.topic, str(exc))
        assert topic is not None
        if event["source"] != source(topic.store, topic.device) or event["store"] != topic.store:
            self._reject(msg.topic, f"source {event['source']} does not match the topic")
            return
        seq = int(event["sequence"])
        body = json.dumps(event, default=str, separators=(",", ":"))
        cur = self.db.execute(
            "INSERT OR IGNORE INTO events(id, source, store, device, seq, type, time, received_at, body) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (event["id"], event["source"], topic.store, topic.device, seq, event["type"], event["time"], now, body),
        )
        if cur.rowcount == 0:
            same = self.db.execute(
                "SELECT 1 FROM events WHERE id = ? AND source = ? AND seq = ?", (event["id"], event["source"], seq)
            ).fetchone()
            if same is None:
                log.warning("event %s from %s reuses sequence %d with another id", event["id"], event["source"], seq)
                self.db.execute(
                    "INSERT INTO conflicts(source, seq, id, received_at, body) VALUES (?, ?, ?, ?, ?)",
                    (event["source"], seq, event["id"], now, body),
                )
        self.db.execute(
            "INSERT INTO devices(store, device, max_seen) VALUES (?, ?, ?) ON CONFLICT(store, device) "
            "DO UPDATE SET max_seen = MAX(max_seen, excluded.max_seen)",
            (topic.store, topic.device, seq),
        )
        batch.acks.add((topic.store, topic.device))

    def _advance(self, store: str, device: str, batch: _Batch, now: str) -> None:
        contiguous, max_seen = self.db.execute(
            "SELECT contiguous, max_seen FROM devices WHERE store = ? AND device = ?", (store, device)
        ).fetchone()
        expected = int(contiguous) + 1
        rows = self.db.execute(
            "SELECT seq, type, body, id FROM events WHERE source = ? AND seq >= ? ORDER BY seq",
            (source(store, device), expected),
        )
        next_present = None
        for seq, type_, body, event_id in rows.fetchall():
            if seq != expected:
                next_present = int(seq)
                break
            self._apply(store, device, int(seq), str(type_), json.loads(body)["data"], batch, str(event_id))
            expected += 1
        self.db.execute(
            "UPDATE devices SET contiguous = ? WHERE store = ? AND device = ?", (expected - 1, store, device)
        )
        if next_present is not None and (store, device, expected) not in self._reported_gaps:
            self._reported_gaps.add((store, device, expected))
            log.info("gap from %s/%s: waiting for %d..%d", store, device, expected, next_present - 1)
            self.db.execute(
                "INSERT INTO gaps(store, device, from_seq, to_seq, detected_at) VALUES (?, ?, ?, ?, ?)",
                (store, device, expected, next_present - 1, now),
            )
        del max_seen

    def _apply(
        self, store: str, device: str, seq: int, type_: str, data: dict[str, Any], batch: _Batch, event_id: str
    ) -> None:
        if type_ == "tillbox.sale.completed":
            self.db.execute(
                "INSERT OR IGNORE INTO sales(id, store, device, number, total, currency, time, event_id) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (data["id"], store, device, data["number"], data["total"], data["currency"], data["completed_at"],
                 event_id),
            )  # fmt: skip
            self.customers.record_sale(store, device, data, event_id)  # purchase history: docs/customers.md
        elif type_ == "tillbox.return.completed":
            self._record_return(store, device, data)
        elif type_ == "tillbox.stock.moved":
            for move in data["moves"]:
                milli = qty_to_milli(Decimal(str(move["delta"])))
                self._move(store, STORE_CHANNEL, str(move["sku"]), milli)
                self.db.execute(
                    "INSERT INTO tally(store, device, sku, delta_milli) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT(store, device, sku) DO UPDATE SET delta_milli = delta_milli + excluded.delta_milli",
                    (store, device, move["sku"], milli),
                )
                batch.stock.add((store, str(move["sku"])))
        elif type_ == "tillbox.reconcile.requested":
            sales = self.db.execute(
                "SELECT count(*) FROM sales WHERE store = ? AND device = ?", (store, device)
            ).fetchone()[0]
            stock = {
                str(sku): str(milli_to_qty(int(m)))
                for sku, m in self.db.execute(
                    "SELECT sku, delta_milli FROM tally WHERE store = ? AND device = ? AND delta_milli != 0",
                    (store, device),
                )
            }
            reply = {"request_seq": seq, "contiguous": seq, "sales": int(sales), "stock": stock, "time": self._now()}
            batch.replies.append((f"{PREFIX}/{store}/{device}/res/reconcile", json.dumps(reply).encode()))
        elif type_ == "tillbox.catalog.snapshot_requested":
            batch.snapshots.add(store)
        elif type_.startswith("tillbox.order."):
            self.orders.apply(store, device, seq, type_, data, batch)
        elif type_ in hub_accounts.EVENTS:
            self.accounts.apply_event(store, device, type_, data, event_id)
        elif type_.startswith("tillbox.customer."):
            self.customers.apply(store, device, type_, data)

    def _move(self, store: str, channel: str, sku: str, milli: int) -> None:
        self.db.execute(
            "INSERT INTO stock(store, channel, sku, level_milli) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(store, channel, sku) DO UPDATE SET level_milli = level_milli + excluded.level_milli",
            (store, channel, sku, milli),
        )

    def _publish_stock(self, store: str, sku: str) -> None:
        self.db.execute(
            "INSERT INTO stock_versions(store, sku, version) VALUES (?, ?, 1) "
            "ON CONFLICT(store, sku) DO UPDATE SET version = version + 1",
            (store, sku),
        )
        version = int(self.db.execute("SELECT version FROM stock_versions WHERE store = ? AND sku = ?",
                                      (store, sku)).fetchone()[0])  # fmt: skip
        rows = self.db.execute("SELECT channel, level_milli FROM stock WHERE store = ? AND sku = ?", (store, sku))
        levels = {str(ch): str(milli_to_qty(int(m))) for ch, m in rows}
        reserved = self._reserved(store, sku)
        doc = {"sku": sku, "version": version, "time": self._now(), "levels": levels, "reserved": str(reserved)}
        self.link.publish(store_topic(store, "stock", sku_segment(sku)), json.dumps(doc).encode(), retain=True)

    def _reserved(self, store: str, sku: str) -> Decimal:
        """Units of ``sku`` reserved in ``store`` by open online orders."""
        return hub_orders.reserved(self.db, store, sku)

    def _response(self, msg: mqtt.MQTTMessage) -> None:
        correlation = getattr(msg.properties, "CorrelationData", None)
        fut = self._waiting.pop(bytes(correlation), None) if correlation else None
        if fut is not None and not fut.done():
            try:
                fut.set_result(json.loads(msg.payload))
            except ValueError as exc:
                fut.set_exception(InputError(f"bad command response: {exc}"))

    # -- returns: sale lookups and refunds across tills --------------------------------------------

    def _returnable(self, store: str, reference: str) -> dict[str, Any]:
        """A sale of any till (by receipt reference or sale id) or a paid online order; raises NotFound."""
        parsed = parse_reference(reference)
        args: tuple[Any, ...]
        if parsed is not None:
            where, args = "s.store = ? AND s.device = ? AND s.number = ?", (store, parsed[0], parsed[1])
        else:
            where, args = "s.store = ? AND s.id = ?", (store, reference)
        row = self.db.execute(
            "SELECT s.id, s.device, e.body FROM sales s LEFT JOIN events e ON e.id = s.event_id WHERE " + where, args
        ).fetchone()
        if row is not None and row[2] is None:  # ingested before sale lookups existed
            row = self.db.execute(
                "SELECT ?, ?, body FROM events WHERE source = ? AND type = 'tillbox.sale.completed' "
                "AND json_extract(body, '$.data.id') = ?", (row[0], row[1], source(store, row[1]), row[0])
            ).fetchone()  # fmt: skip
        if row is not None:
            data: dict[str, Any] = json.loads(row[2])["data"]
            return data
        if parsed is None:
            order = self.db.execute("SELECT body FROM orders WHERE store = ? AND id = ?", (store, reference)).fetchone()
            if order is not None:
                return returnable_order(json.loads(order[0]), store)
        raise NotFound(f"no sale or online order {reference} in store {store}")

    def _refunded(self, store: str, sale_id: str, *, besides: str | None = None) -> list[dict[str, Any]]:
        """Per line: what has been refunded of a sale (by devices other than ``besides``)."""
        rows = self.db.execute(
            "SELECT line, sum(qty_milli), sum(amount), sum(tax) FROM refunds WHERE store = ? AND sale_id = ? "
            "AND device != ? GROUP BY line ORDER BY line", (store, sale_id, besides or "")
        )  # fmt: skip
        return [{"line": int(ln), "qty": str(milli_to_qty(int(q))), "amount": int(a), "tax": int(t)}
                for ln, q, a, t in rows]  # fmt: skip

    def _record_return(self, store: str, device: str, data: Mapping[str, Any]) -> None:
        """Count a till's refunds per original line; flag a line refunded beyond what was sold."""
        sale_id = data.get("original_sale_id")
        if not sale_id:
            return  # a return without receipt
        for ln in data["lines"]:
            if ln.get("line") is None:
                continue
            self.db.execute(
                "INSERT OR IGNORE INTO refunds(store, sale_id, line, device, return_id, qty_milli, amount, tax) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (store, sale_id, ln["line"], device, data["id"], qty_to_milli(Decimal(str(ln["qty"]))),
                 int(ln["amount"]), int(ln["tax"])),
            )  # fmt: skip
        try:
            sold = {int(ln["line"]): Decimal(str(ln["qty"])) for ln in self._returnable(store, str(sale_id))["lines"]}
        except (NotFound, InputError):
            return  # the original is not known here (yet): nothing to compare with
        for done in self._refunded(store, str(sale_id)):
            if Decimal(done["qty"]) > sold.get(done["line"], Decimal(0)):
                devices = [str(r[0]) for r in self.db.execute(
                    "SELECT DISTINCT device FROM refunds WHERE store = ? AND sale_id = ? AND line = ? ORDER BY device",
                    (store, sale_id, done["line"]))]  # fmt: skip
                self._alert(ALERT_OVER_REFUNDED, store, f"{sale_id}/{done['line']}",
                            f"line {done['line']} of sale {sale_id}: {done['qty']} refunded but "
                            f"{sold.get(done['line'], 0)} sold (refunds by {', '.join(devices)})")  # fmt: skip

    def _alert(self, code: str, store: str, subject: str, message: str) -> None:
        exists = self.db.execute(
            "SELECT 1 FROM alerts WHERE code = ? AND store = ? AND subject = ? AND message = ?",
            (code, store, subject, message),
        ).fetchone()
        if exists is None:
            log.warning("hub alert %s in store %s: %s", code, store, message)
            self.db.execute("INSERT INTO alerts(code, store, subject, message, raised_at) VALUES (?, ?, ?, ?, ?)",
                            (code, store, subject, message, self._now()))  # fmt: skip

    def _answer_lookup(self, msg: mqtt.MQTTMessage) -> None:
        """Answer a till's ``req/{name}`` on its own ``res`` topic, with the request's correlation data."""
        topic = parse_device_topic(msg.topic)
        assert topic is not None
        reply_to = getattr(msg.properties, "ResponseTopic", None)
        correlation = getattr(msg.properties, "CorrelationData", None)
        if topic.name != "sale" and topic.name not in self._services:
            self._reject(msg.topic, f"unknown request {topic.name!r}")
            return
        if not reply_to or not str(reply_to).startswith(f"{PREFIX}/{topic.store}/{topic.device}/res/"):
            self._reject(msg.topic, "a request must name a response topic under the device's own res/")
            return
        answer = self._sale_answer(msg, topic) if topic.name == "sale" else self._serve(msg, topic)
        if answer is None:
            return
        props = message_properties(ContentType="application/json", MessageExpiryInterval=ANSWER_EXPIRY)
        if correlation is not None:
            props.CorrelationData = correlation
        self.link.publish(str(reply_to), json.dumps(answer, default=str).encode(), properties=props)

    def _sale_answer(self, msg: mqtt.MQTTMessage, topic: Topic) -> dict[str, Any] | None:
        try:
            request = json.loads(msg.payload)
            validate("sale-lookup", request)
        except (ValueError, InputError) as exc:
            self._reject(msg.topic, str(exc))
            return None
        reference = str(request["reference"])
        answer: dict[str, Any] = {"reference": reference, "time": self._now()}
        try:
            sale = self._returnable(topic.store, reference)
        except InputError as exc:
            reason = "unknown" if isinstance(exc, NotFound) else "not_returnable"
            answer.update(found=False, reason=reason, error=str(exc)[:200])
        else:
            refunded = self._refunded(topic.store, str(sale["id"]), besides=topic.device)
            answer.update(found=True, sale=sale, refunded=refunded)
        return answer

    # -- generic requests (sync/rpc.py) ----------------------------------------------------------

    def serve(self, name: str, handler: RequestHandler) -> None:
        """Answer ``req/{name}`` with ``handler(store, device, request)`` (call before :meth:`start`).

        The handler runs on the hub thread inside one database transaction; it returns the
        result (schema ``{name}-result``) or raises a :class:`TillboxError`, which becomes an
        error answer and rolls its writes back. Answers are stored by request id, so a
        repeated request gets the first answer and the work is done once.
        """
        if name == "sale" or name in self._services:
            raise ValueError(f"request {name!r} is already served")
        validator(rpc.request_schema(name))
        validator(rpc.result_schema(name))
        self._services[name] = handler

    def _serve(self, msg: mqtt.MQTTMessage, topic: Topic) -> dict[str, Any] | None:
        try:
            request = json.loads(msg.payload, parse_float=Decimal)
            validate(rpc.request_schema(topic.name), request)
        except (ValueError, InputError) as exc:
            self._reject(msg.topic, str(exc))
            return None
        request_id = str(request["id"]).lower()
        key = (topic.store, topic.device, topic.name, request_id)
        row = self.db.execute(
            "SELECT body FROM answers WHERE store = ? AND device = ? AND name = ? AND id = ?", key
        ).fetchone()
        if row is not None:
            stored: dict[str, Any] = json.loads(row[0])
            return stored
        now = self._now()
        self.db.execute("BEGIN IMMEDIATE")
        try:
            result = self._services[topic.name](topic.store, topic.device, request)
            validate(rpc.result_schema(topic.name), result)
            answer = rpc.ok(request_id, result, now)
        except TillboxError as exc:
            self.db.execute("ROLLBACK")
            self.db.execute("BEGIN IMMEDIATE")
            answer = rpc.failed(request_id, exc, now)
        except Exception as exc:  # a bug in a handler: answer, keep serving, do not remember the answer
            self.db.execute("ROLLBACK")
            log.exception("request %s from %s/%s failed", topic.name, topic.store, topic.device)
            return rpc.failed(request_id, TillboxError(f"the shop could not answer: {type(exc).__name__}"), now)
        try:
            self.db.execute(
                "INSERT INTO answers(store, device, name, id, body, answered_at) VALUES (?, ?, ?, ?, ?, ?)",
                (*key, json.dumps(answer, default=str), now),
            )
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return answer

    def _stock_query(self, store: str, device: str, request: Mapping[str, Any]) -> dict[str, Any]:
        """Central stock of some SKUs in every store the hub knows (``req/stock-query``)."""
        skus = [str(s) for s in request["skus"]]
        marks = ",".join("?" * len(skus))
        stores: dict[str, dict[str, Any]] = {}
        query = f"SELECT store, channel, sku, level_milli FROM stock WHERE sku IN ({marks}) ORDER BY store, sku"
        for st, channel, sku, milli in self.db.execute(query, skus):
            entry = stores.setdefault(str(st), {}).setdefault(str(sku), {"levels": {}, "reserved": "0"})
            entry["levels"][str(channel)] = str(milli_to_qty(int(milli)))
        for st, per_sku in stores.items():
            for sku, entry in per_sku.items():
                entry["reserved"] = str(self._reserved(st, sku))
        return {"stores": stores}

    # -- publishing (each runs on the hub thread) ------------------------------------------------

    def _doc(self, store: str, name: str) -> tuple[int, dict[str, Any] | None]:
        row = self.db.execute("SELECT version, body FROM docs WHERE store = ? AND name = ?", (store, name)).fetchone()
        return (int(row[0]), json.loads(row[1])) if row else (0, None)

    def _put_doc(self, store: str, name: str, version: int, body: Mapping[str, Any]) -> None:
        self.db.execute(
            "INSERT INTO docs(store, name, version, body) VALUES (?, ?, ?, ?) ON CONFLICT(store, name) "
            "DO UPDATE SET version = excluded.version, body = excluded.body",
            (store, name, version, json.dumps(body)),
        )

    def _republish(self, store: str, topic_name: str, doc_name: str) -> None:
        body = self._doc(store, doc_name)[1]
        if body is not None:
            kind, name = topic_name.split("/")
            self.link.publish(store_topic(store, kind, name), json.dumps(body).encode(), retain=True)

    def _sync(self, fn: Callable[[], T], timeout: float = 10.0) -> T:
        if threading.current_thread() is self._thread:
            return fn()
        return self.call(fn).result(timeout)

    def write(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the hub thread in one database transaction (from any thread); its result."""

        def run() -> T:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                result = fn()
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            return result

        return self._sync(run)

    def publish_catalog(self, store: str, items: Iterable[Mapping[str, Any]], *, currency: str) -> int:
        """Publish a full catalog snapshot (retained); returns its version."""
        rows = [dict(i) for i in items]

        def run() -> int:
            version = self._doc(store, "catalog")[0] + 1
            self._put_doc(store, "catalog", version, {"version": version, "currency": currency, "items": rows})
            self._republish(store, "catalog/snapshot", "catalog")
            return version

        return self._sync(run)

    def change_prices(self, store: str, prices: Mapping[str, int]) -> int:
        """Publish a price delta and the updated retained snapshot; returns the new version."""

        def run() -> int:
            base, snap = self._doc(store, "catalog")
            if snap is None:
                raise InputError(f"no catalog published for store {store}")
            version = base + 1
            for item in snap["items"]:
                if item["sku"] in prices:
                    item["price"] = prices[item["sku"]]
            snap["version"] = version
            delta = {"version": version, "base_version": base, "currency": snap["currency"],
                     "prices": [{"sku": s, "price": p} for s, p in prices.items()]}  # fmt: skip
            self._put_doc(store, "catalog", version, snap)
            self.link.publish(store_topic(store, "catalog", "delta"), json.dumps(delta).encode())
            self._republish(store, "catalog/snapshot", "catalog")
            return version

        return self._sync(run)

    def publish_promotions(self, store: str, promotions: list[dict[str, Any]]) -> int:
        def run() -> int:
            version = self._doc(store, "promotions")[0] + 1
            self._put_doc(store, "promotions", version, {"version": version, "promotions": promotions})
            self._republish(store, "promotions/snapshot", "promotions")
            return version

        return self._sync(run)

    def set_stock(self, store: str, channel: str, sku: str, level: Decimal) -> None:
        """Set the central stock of a SKU in one channel (goods received, online allocation)."""

        def run() -> None:
            self.db.execute(
                "INSERT INTO stock(store, channel, sku, level_milli) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(store, channel, sku) DO UPDATE SET level_milli = excluded.level_milli",
                (store, channel, sku, qty_to_milli(level)),
            )
            self._publish_stock(store, sku)

        self._sync(run)

    def place_order(
        self,
        store: str,
        order_id: str,
        lines: Mapping[str, Decimal] | Sequence[Mapping[str, Any]],
        *,
        status: str = "placed",
        currency: str | None = None,
        paid_at: str | None = None,
        **details: Any,
    ) -> int:
        """Publish an online order (retained) and the stock it reserves; returns its version.

        ``lines`` maps SKU to quantity, or lists ``pickup-order`` lines; lines with the
        paid ``total`` (and ``tax``), together with ``currency``, make the order returnable
        at a till. ``details`` are the order fields of :meth:`sync.hub_orders.HubOrders.prepare`
        (``kind``, ``customer``, ``customer_id``, ``pickup_code``, ``payment``, ``hold_until``, ``ship_to``,
        ``carrier``).
        """
        if isinstance(lines, Mapping):
            rows = [{"sku": s, "qty": str(q)} for s, q in lines.items()]
        else:
            rows = [{**ln, "qty": str(ln["qty"])} for ln in lines]

        def run() -> int:
            row = self.db.execute("SELECT version FROM orders WHERE store = ? AND id = ?", (store, order_id)).fetchone()
            version = (int(row[0]) if row else 0) + 1
            doc: dict[str, Any] = {"id": order_id, "version": version, "status": status, "time": self._now(),
                                   "lines": rows}  # fmt: skip
            if currency is not None:
                doc["currency"] = currency
            if paid_at is not None:
                doc["paid_at"] = paid_at
            self.orders.prepare(store, doc, **details)
            validate("pickup-order", doc)
            self.db.execute(
                "INSERT INTO orders(store, id, version, status, body) VALUES (?, ?, ?, ?, ?) ON CONFLICT(store, id) "
                "DO UPDATE SET version = excluded.version, status = excluded.status, body = excluded.body",
                (store, order_id, version, status, json.dumps(doc)),
            )
            self.customers.record_order(store, doc)
            self.link.publish(store_topic(store, "orders", sku_segment(order_id)), json.dumps(doc).encode(),
                              retain=True)  # fmt: skip
            for sku in sorted({r["sku"] for r in rows}):
                self._publish_stock(store, sku)
            return version

        return self._sync(run)

    def desire_config(self, store: str, device: str, values: Mapping[str, Any]) -> int:
        """Publish desired config values for a device (retained); returns the version."""

        def run() -> int:
            version = self._counter(f"config/{store}/{device}", bump=True)
            body = {"version": version, "values": dict(values)}
            self.link.publish(f"{PREFIX}/{store}/{device}/cfg/desired", json.dumps(body).encode(), retain=True)
            return version

        return self._sync(run)

    def offer_update(
        self, store: str, release: str, url: str, sha256: str, size: int, devices: Sequence[str] | None = None,
        *, not_before: str | None = None,
    ) -> int:  # fmt: skip
        """Offer a signed update bundle to the tills of a store (retained ``update/offer``); returns its version.

        ``devices`` limits it to some tills (None: all). Each till fetches and checks it and reports on
        its ``status/update``; root installs it once the till is idle (docs/image.md, "Delivering updates").
        """

        def run() -> int:
            version = self._doc(store, "update")[0] + 1
            doc: dict[str, Any] = {"version": version, "release": release, "url": url, "sha256": sha256.lower(),
                                   "size": size, "time": self._now()}  # fmt: skip
            if devices is not None:
                doc["devices"] = list(devices)
            if not_before is not None:
                doc["not_before"] = not_before
            validate("update-offer", doc)
            self._put_doc(store, "update", version, doc)
            self._republish(store, "update/offer", "update")
            return version

        return self._sync(run)

    def command(
        self, store: str, device: str, name: str, args: Mapping[str, Any] | None = None, *, expiry: int = 30
    ) -> Future[dict[str, Any]]:
        """Send a command; the future gets the device's response."""
        correlation = uuid.uuid4().bytes
        fut: Future[dict[str, Any]] = Future()

        def run() -> None:
            props = message_properties(ResponseTopic=f"{_HUB_PREFIX}/res/{name}", CorrelationData=correlation,
                                       MessageExpiryInterval=expiry, ContentType="application/json")  # fmt: skip
            self._waiting[correlation] = fut
            body = json.dumps({"args": dict(args or {}), "issued_at": self._now()}).encode()
            if self.link.publish(f"{PREFIX}/{store}/{device}/cmd/{name}", body, properties=props) is None:
                self._waiting.pop(correlation, None)
                fut.set_exception(TillboxError("the hub is not connected"))

        self.call(run)
        return fut

    # -- queries (any thread; a fresh read connection) -------------------------------------------

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with sqlite3.connect(f"file:{self.path}?mode=ro", uri=True) as conn:
            rows = conn.execute(sql, args).fetchall()
        conn.close()
        return [tuple(r) for r in rows]

    def contiguous(self, store: str, device: str) -> int:
        rows = self.query("SELECT contiguous FROM devices WHERE store = ? AND device = ?", (store, device))
        return int(rows[0][0]) if rows else 0

    def sale_count(self, store: str | None = None) -> int:
        if store is None:
            return int(self.query("SELECT count(*) FROM sales")[0][0])
        return int(self.query("SELECT count(*) FROM sales WHERE store = ?", (store,))[0][0])

    def alerts(self, store: str | None = None) -> list[tuple[str, str, str]]:
        """Alerts the hub raised, oldest first: (code, subject, message)."""
        rows = self.query("SELECT code, subject, message, store FROM alerts ORDER BY id")
        return [(str(c), str(s), str(m)) for c, s, m, st in rows if store is None or st == store]

    def stock_level(self, store: str, sku: str, channel: str = STORE_CHANNEL) -> Decimal:
        rows = self.query("SELECT level_milli FROM stock WHERE store = ? AND channel = ? AND sku = ?",
                          (store, channel, sku))  # fmt: skip
        return milli_to_qty(int(rows[0][0])) if rows else Decimal(0)


def main(args: argparse.Namespace) -> int:
    """``tillbox hub``: run the hub in the foreground until SIGTERM or SIGINT."""
    import signal

    link = LinkSettings.from_urls(args.broker, args.client_id)
    hub = Hub(args.data_dir, link)

    def stop(signum: int, frame: object) -> None:
        hub.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("hub on %s, data in %s", ", ".join(args.broker), args.data_dir)
    from sync.enroll import EnrollmentAuthority, EnrollmentServer

    enrollment = EnrollmentServer(EnrollmentAuthority(args.data_dir), args.broker[0])
    try:
        hub.run()
    finally:
        enrollment.close()
        hub.close()
    return 0
