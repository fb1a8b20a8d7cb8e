"""Pickup and ship-from-store orders at the till: pick, ready, hand over, pack, ship, expire.

The shop publishes each order as a retained ``pickup-order`` document; the sync service
stores it in ``pickup_orders``. Staff act on it here, and every action is one ledger
transaction: a journal entry naming the staff member, a row in ``order_actions``, a
``tillbox.order.*`` outbox event and, for a hand-over or a shipment, the stock move. The
hub applies the event with the same state machine (:func:`advance`) and republishes the
document with a new version, so every till and the shop's website see it.

What a till shows is the shop's document with this till's own actions that the shop has
not confirmed yet laid over it; the document's ``applied`` map says, per device, which
of its events the shop has applied. An action shows at once, also offline, and the
shop's word wins once it arrives. The states (docs/orders.md)::

    pickup: placed -> picking -> ready -> collected      (expired, cancelled)
    ship:   placed -> picking -> packed -> shipped       (cancelled)

The till expires pickup orders past their hold (``[orders]``): the shop's ``hold_until``,
or ``hold_days`` after the order was marked ready.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import hashlib
import hmac
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from appliance.canonical import canonical_json
from appliance.catalog import Item
from appliance.clock import iso_utc
from appliance.config import Config
from appliance.errors import InputError, NotFound, SaleError, TenderError, TillboxError
from appliance.ledger import NewEvent, Tx
from appliance.ledger.store import milli_to_qty, qty_to_milli
from appliance.money import round_minor
from appliance.receipt import Receipt, ReceiptLine, ReceiptTender, render_text
from appliance.sale import Sale
from appliance.till import Completed, Till

log = logging.getLogger(__name__)

KINDS: Final = ("pickup", "ship")
STATUSES: Final = ("placed", "picking", "ready", "packed", "collected", "shipped", "expired", "cancelled")
#: Orders in these states hold (reserve) their stock.
OPEN_STATUSES: Final = frozenset({"placed", "picking", "ready", "packed"})
FINAL_STATUSES: Final = frozenset({"collected", "shipped", "expired", "cancelled"})
#: Actions, each with its event type ``tillbox.order.<action>``, and the status it leads to.
ACTION_STATUS: Final[Mapping[str, str]] = {
    "picked": "picking", "ready": "ready", "packed": "packed", "collected": "collected", "shipped": "shipped",
    "expired": "expired", "cancelled": "cancelled",
}  # fmt: skip
EVENT_PREFIX: Final = "tillbox.order."
#: Scanned text of an order's QR code: ``TBO:<order id>:<pickup code>``.
QR_PREFIX: Final = "TBO:"
HISTORY_LIMIT: Final = 50
#: What of an order names or reaches the customer; dropped ``keep_personal_days`` after it closed.
PERSONAL_FIELDS: Final = ("customer", "ship_to", "note")

_ALLOWED: Final[Mapping[tuple[str, str], frozenset[str]]] = {
    ("pickup", "picked"): frozenset({"placed", "picking"}),
    ("pickup", "ready"): frozenset({"placed", "picking"}),
    ("pickup", "collected"): frozenset({"ready"}),
    ("pickup", "expired"): frozenset({"placed", "picking", "ready"}),
    ("pickup", "cancelled"): frozenset({"placed", "picking", "ready"}),
    ("ship", "picked"): frozenset({"placed", "picking"}),
    ("ship", "packed"): frozenset({"placed", "picking"}),
    ("ship", "shipped"): frozenset({"packed"}),
    ("ship", "cancelled"): frozenset({"placed", "picking", "packed"}),
}
_VERB: Final = {"picked": "picked", "ready": "marked ready", "packed": "packed", "collected": "handed over",
                "shipped": "shipped", "expired": "expired", "cancelled": "cancelled"}  # fmt: skip
_CHECKS: Final = ("code", "id")


# -- the document and its state machine (pure; the hub uses the same) ------------------------------


def code_hash(order_id: str, code: str) -> str:
    """What the shop publishes instead of the pickup code: hex SHA-256 of ``<id>\\n<code>``."""
    return hashlib.sha256(f"{order_id}\n{code.strip()}".encode()).hexdigest()


def order_qr(order_id: str, code: str) -> str:
    """The text of an order's QR code (what the shop sends the customer)."""
    return f"{QR_PREFIX}{order_id}:{code}"


def parse_order_qr(text: str) -> tuple[str, str] | None:
    """(order id, pickup code) of a scanned order QR code, or None when the text is not one."""
    text = text.strip()
    if text[: len(QR_PREFIX)].upper() != QR_PREFIX:
        return None
    order_id, sep, code = text[len(QR_PREFIX) :].rpartition(":")
    if not sep or not order_id or not code:
        return None
    return order_id, code


def kind_of(doc: Mapping[str, Any]) -> str:
    """``pickup`` (the default) or ``ship``."""
    return str(doc.get("kind") or "pickup")


def payment_of(doc: Mapping[str, Any]) -> str:
    """``paid`` (the default: the till takes no money) or ``at_pickup``."""
    return str(doc.get("payment") or "paid")


def _qty(value: object, what: str) -> Decimal:
    try:
        qty = Decimal(str(value))
    except InvalidOperation:
        raise InputError(f"{what}: {value!r} is not a quantity") from None
    if not qty.is_finite() or qty < 0 or qty_to_milli(qty) != qty * 1000:
        raise InputError(f"{what}: {value!r} is not a quantity of at most three decimals")
    return qty


def _qty_text(qty: Decimal) -> str:
    return str(milli_to_qty(qty_to_milli(qty)))


def _set_pick(doc: dict[str, Any], pick: Mapping[str, Any]) -> None:
    lines = doc["lines"]
    no = pick.get("line")
    if not isinstance(no, int) or not 1 <= no <= len(lines):
        raise InputError(f"order {doc['id']} has no line {no}")
    line = lines[no - 1]
    if pick.get("sku") != line["sku"]:
        raise InputError(f"line {no} of order {doc['id']} is {line['sku']}, not {pick.get('sku')}")
    picked = _qty(pick.get("picked"), f"line {no} of order {doc['id']}")
    ordered = _qty(line["qty"], f"line {no} of order {doc['id']}")
    if picked > ordered:
        raise InputError(f"line {no} of order {doc['id']}: {picked} picked, but only {ordered} ordered")
    if line.get("unit", "each") == "each" and picked != picked.to_integral_value():
        raise InputError(f"line {no} of order {doc['id']}: {line['sku']} is counted in units, not {picked}")
    line["picked"] = _qty_text(picked)


def advance(
    doc: Mapping[str, Any], action: str, data: Mapping[str, Any], *, device: str, seq: int | None, time: str,
    late: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """The order document after one action (a new dict; ``doc`` is not changed).

    ``data`` is the action's event data (``staff``, picked ``lines``, ``hold_until``,
    ``short``, ``sale_id``, ``tracking``, ``carrier``, ``reason``). ``seq`` records the
    device's event sequence in ``applied``. ``late`` (the hub) accepts a hand-over or a
    shipment of an order that already expired or was cancelled: the goods are gone.
    Raises :class:`SaleError` for a transition the state machine forbids and
    :class:`InputError` for bad data.
    """
    new = copy.deepcopy(dict(doc))
    order_id, kind, status = str(new["id"]), kind_of(new), str(new["status"])
    target = ACTION_STATUS.get(action)
    if target is None:
        raise InputError(f"unknown order action {action!r}")
    allowed = _ALLOWED.get((kind, action))
    if allowed is None:
        raise SaleError(f"order {order_id} is a {kind} order; it cannot be {_VERB[action]}")
    late_ok = late and action in ("collected", "shipped") and status in ("expired", "cancelled")
    if status not in allowed and not late_ok:
        raise SaleError(f"order {order_id} is {status}; it cannot be {_VERB[action]}")
    note = ""
    if action in ("picked", "ready", "packed"):
        for pick in data.get("lines") or ():
            _set_pick(new, pick)
        if action != "picked":
            short = [(no, ln) for no, ln in enumerate(new["lines"], 1)
                     if _qty(ln.get("picked", 0), "picked") < _qty(ln["qty"], "qty")]  # fmt: skip
            if all(_qty(ln.get("picked", 0), "picked") == 0 for ln in new["lines"]):
                raise SaleError(f"nothing of order {order_id} is picked yet")
            if short and not data.get("short"):
                no, ln = short[0]
                what = ln.get("name") or ln["sku"]
                raise SaleError(
                    f"line {no} of order {order_id} ({what}) is not fully picked: "
                    f"{ln.get('picked', '0')} of {ln['qty']}; pick it or confirm the order short"
                )
            if short:
                note = "short: " + ", ".join(f"line {no} {ln.get('picked', '0')} of {ln['qty']}" for no, ln in short)
        if action == "ready" and data.get("hold_until") and not new.get("hold_until"):
            new["hold_until"] = str(data["hold_until"])
    elif action == "collected" and data.get("sale_id"):
        new["sale_id"] = str(data["sale_id"])
    elif action == "shipped":
        if not data.get("tracking"):
            raise InputError(f"shipping order {order_id} needs a tracking reference")
        new["tracking"] = str(data["tracking"])
        if data.get("carrier"):
            new["carrier"] = str(data["carrier"])
    elif action == "cancelled":
        note = str(data.get("reason") or "")[:200]
        new["note"] = note
    if late_ok and status not in allowed:
        note = f"after it was {status}"
    new["status"] = target
    entry: dict[str, Any] = {"action": action, "status": target, "time": time, "device": device,
                             "staff": data.get("staff")}  # fmt: skip
    if note:
        entry["note"] = note[:200]
    new["history"] = [*new.get("history", []), entry][-HISTORY_LIMIT:]
    if seq is not None:
        applied = dict(new.get("applied") or {})
        applied[device] = max(int(applied.get(device, 0)), seq)
        new["applied"] = applied
    return new


def _instant(text: str) -> datetime:
    """An RFC 3339 time; one without an offset is taken as UTC."""
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _local(time: str, till: Till) -> str:
    return _instant(time).astimezone(till.tz).strftime("%Y-%m-%d %H:%M")


def open_quantities(doc: Mapping[str, Any]) -> dict[str, Decimal]:
    """Per SKU, the quantity an order holds: all of its lines while it is open, nothing after."""
    if str(doc.get("status")) not in OPEN_STATUSES:
        return {}
    held: dict[str, Decimal] = {}
    for ln in doc["lines"]:
        held[str(ln["sku"])] = held.get(str(ln["sku"]), Decimal(0)) + Decimal(str(ln["qty"]))
    return held


# -- views -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OrderLine:
    """One line of an order, with what has been picked of it."""

    line: int
    sku: str
    name: str
    qty: Decimal
    picked: Decimal
    unit: str
    total: int | None
    unit_price: int | None
    tax: int | None
    tax_class: str | None

    @property
    def short(self) -> bool:
        return self.picked < self.qty


@dataclass(frozen=True)
class Order:
    """An order as this till sees it: the shop's document and this till's unconfirmed actions."""

    id: str
    version: int
    kind: str
    status: str
    payment: str
    customer: str
    currency: str | None
    time: str | None
    hold_until: str | None
    lines: tuple[OrderLine, ...]
    ship_to: Mapping[str, Any] | None
    carrier: str | None
    tracking: str | None
    sale_id: str | None
    history: tuple[Mapping[str, Any], ...]
    pending: int
    doc: Mapping[str, Any]

    @property
    def open(self) -> bool:
        return self.status in OPEN_STATUSES

    @property
    def has_code(self) -> bool:
        return bool(self.doc.get("pickup_code_sha256"))

    @property
    def total(self) -> int | None:
        """What the customer pays (or paid) for the whole order; None when the shop gave no prices."""
        if any(ln.total is None for ln in self.lines):
            return None
        return sum(ln.total or 0 for ln in self.lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (quantities as strings, money as minor units)."""
        return {
            "id": self.id, "version": self.version, "kind": self.kind, "status": self.status, "open": self.open,
            "payment": self.payment, "customer": self.customer, "currency": self.currency, "time": self.time,
            "hold_until": self.hold_until, "has_code": self.has_code, "total": self.total,
            "lines": [{"line": ln.line, "sku": ln.sku, "name": ln.name, "qty": _qty_text(ln.qty),
                       "picked": _qty_text(ln.picked), "unit": ln.unit, "total": ln.total} for ln in self.lines],
            "ship_to": dict(self.ship_to) if self.ship_to else None, "carrier": self.carrier,
            "tracking": self.tracking, "sale_id": self.sale_id, "history": [dict(h) for h in self.history],
            "pending": self.pending,
        }  # fmt: skip


def order_view(doc: Mapping[str, Any], *, version: int, pending: int = 0) -> Order:
    """An :class:`Order` of a document; raises :class:`InputError` when the document is malformed."""
    try:
        lines = tuple(
            OrderLine(
                line=no, sku=str(ln["sku"]), name=str(ln.get("name") or ln["sku"]), qty=_qty(ln["qty"], "qty"),
                picked=_qty(ln.get("picked", "0"), "picked"), unit=str(ln.get("unit", "each")),
                total=None if ln.get("total") is None else int(ln["total"]),
                unit_price=None if ln.get("unit_price") is None else int(ln["unit_price"]),
                tax=None if ln.get("tax") is None else int(ln["tax"]), tax_class=ln.get("tax_class"),
            )
            for no, ln in enumerate(doc["lines"], 1)
        )  # fmt: skip
        kind, status = kind_of(doc), str(doc["status"])
        if kind not in KINDS or status not in STATUSES or not lines:
            raise ValueError(f"kind {kind!r}, status {status!r}, {len(lines)} lines")
        return Order(
            id=str(doc["id"]), version=version, kind=kind, status=status, payment=payment_of(doc),
            customer=str(doc.get("customer") or ""), currency=doc.get("currency"), time=doc.get("time"),
            hold_until=doc.get("hold_until"), lines=lines, ship_to=doc.get("ship_to"), carrier=doc.get("carrier"),
            tracking=doc.get("tracking"), sale_id=doc.get("sale_id"), history=tuple(doc.get("history") or ()),
            pending=pending, doc=doc,
        )  # fmt: skip
    except (KeyError, TypeError, ValueError, InputError) as exc:
        raise InputError(f"order {doc.get('id', '?')} is malformed: {exc}") from None


@dataclass(frozen=True)
class Reservation:
    """Units of a SKU held for open orders: as this till counts them and as the shop reports them."""

    sku: str
    here: Decimal
    shop: Decimal | None
    on_hand: Decimal
    shop_level: Decimal | None

    @property
    def free(self) -> Decimal:
        """Units not held for an order: the shop's store level (else this till's) less the larger count."""
        level = self.shop_level if self.shop_level is not None else self.on_hand
        return level - max(self.here, self.shop or Decimal(0))

    def to_dict(self) -> dict[str, Any]:
        return {"sku": self.sku, "reserved_here": str(self.here),
                "reserved_shop": None if self.shop is None else str(self.shop), "on_hand": str(self.on_hand),
                "shop_level": None if self.shop_level is None else str(self.shop_level),
                "free": str(self.free)}  # fmt: skip


@dataclass(frozen=True)
class OrderPolicy:
    """``[orders]`` of the configuration."""

    hold_days: int = 7
    expire: bool = True
    expiry_check_minutes: int = 5
    code_attempts: int = 5
    id_check: bool = True
    keep_personal_days: int = 30

    @classmethod
    def from_config(cls, config: Config) -> OrderPolicy:
        o = config.orders
        return cls(hold_days=o.hold_days, expire=o.expire, expiry_check_minutes=o.expiry_check_minutes,
                   code_attempts=o.code_attempts, id_check=o.id_check,
                   keep_personal_days=o.keep_personal_days)  # fmt: skip


@dataclass(frozen=True)
class HandOver:
    """A collected order, with the sale that took its payment at pickup (if any)."""

    order: Order
    completed: Completed | None


# -- the service -----------------------------------------------------------------------------------


class Orders:
    """The order workflow of one till. Use it from the thread that owns the till's ledger."""

    def __init__(self, till: Till, policy: OrderPolicy | None = None) -> None:
        self.till = till
        self.ledger = till.ledger
        self.clock = till.clock
        self.device = till.ledger.device_id
        self.policy = policy or OrderPolicy.from_config(till.config)

    # -- reading ---------------------------------------------------------------------------------

    def _effective(self, order_id: str, version: int, body: str) -> Order:
        try:
            doc = json.loads(body)
        except ValueError as exc:
            raise InputError(f"order {order_id} is stored malformed: {exc}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("lines"), list):
            raise InputError(f"order {order_id} is stored malformed")
        applied = doc.get("applied")
        mine = applied.get(self.device) if isinstance(applied, dict) else None
        mine = mine if isinstance(mine, int) else 0
        rows = self.ledger.conn.execute(
            "SELECT action, event_seq, time, data FROM order_actions WHERE order_id = ? AND event_seq > ? ORDER BY id",
            (order_id, mine),
        ).fetchall()
        pending = 0
        for action, _seq, time, data in rows:
            try:
                doc = advance(doc, str(action), json.loads(data), device=self.device, seq=None, time=str(time))
                pending += 1
            except (TillboxError, KeyError, TypeError, ValueError) as exc:  # the shop's document moved on
                log.info("order %s: local %s no longer applies: %s", order_id, action, exc)
        return order_view(doc, version=version, pending=pending)

    def get(self, order_id: str) -> Order:
        """The order as this till sees it; :class:`NotFound` when the shop has not sent it."""
        row = self.ledger.conn.execute("SELECT version, body FROM pickup_orders WHERE id = ?", (order_id,)).fetchone()
        if row is None:
            raise NotFound(f"no order {order_id}")
        return self._effective(order_id, int(row[0]), str(row[1]))

    def _rows(self, sql: str, args: Sequence[Any]) -> list[Order]:
        out = []
        for order_id, version, body in self.ledger.conn.execute(sql, tuple(args)).fetchall():
            try:
                out.append(self._effective(str(order_id), int(version), str(body)))
            except InputError as exc:
                log.warning("%s", exc)
        return out

    def search(self, *, text: str = "", open_only: bool = True, kind: str | None = None, limit: int = 200
             ) -> list[Order]:  # fmt: skip
        """Orders, open ones first (then newest first); ``text`` is an order number, a name or a scanned QR code."""
        text = text.strip()
        qr = parse_order_qr(text) if text else None
        where, args = ["1 = 1"], []
        if qr is not None:
            where.append("id = ?")
            args.append(qr[0])
        elif text:
            pattern = "%" + text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            where.append("(lower(id) LIKE ? ESCAPE '\\' OR lower(json_extract(body, '$.customer')) LIKE ? ESCAPE '\\')")
            args += [pattern, pattern]
        if open_only:
            where.append(f"status IN ({', '.join('?' * len(OPEN_STATUSES))})")
            args += sorted(OPEN_STATUSES)
        orders = self._rows(f"SELECT id, version, body FROM pickup_orders WHERE {' AND '.join(where)} "
                            "ORDER BY updated_at DESC LIMIT ?", [*args, max(1, min(limit, 500))])  # fmt: skip
        if open_only:
            orders = [o for o in orders if o.open]
        if kind is not None:
            orders = [o for o in orders if o.kind == kind]
        rank = {s: i for i, s in enumerate(STATUSES)}
        return sorted(orders, key=lambda o: (not o.open, rank[o.status], o.time or ""))

    def reserved(self, sku: str) -> Reservation:
        """Units of ``sku`` held for open orders, here and at the shop, with the stock levels."""
        here = Decimal(0)
        for order in self.search(open_only=True, limit=500):
            here += open_quantities(order.doc).get(sku, Decimal(0))
        shop = shop_level = None
        row = self.ledger.conn.execute("SELECT body FROM remote_stock WHERE sku = ?", (sku,)).fetchone()
        if row is not None:
            try:
                remote = json.loads(row[0])
                shop = Decimal(str(remote["reserved"]))
                level = remote.get("levels", {}).get("store")
                shop_level = None if level is None else Decimal(str(level))
            except (ValueError, KeyError, TypeError, InvalidOperation):
                log.warning("the shop's stock level of %s is malformed", sku)
        return Reservation(sku, here, shop, self.ledger.stock_level(sku), shop_level)

    # -- writing ---------------------------------------------------------------------------------

    def _now(self) -> str:
        return iso_utc(self.clock.now())

    def _event_data(self, order: Order, action: str, staff: str | None, **extra: Any) -> dict[str, Any]:
        return {"id": order.id, "status": ACTION_STATUS[action], "version": order.version, "kind": order.kind,
                "staff": staff, **{k: v for k, v in extra.items() if v is not None}}  # fmt: skip

    def _record(self, tx: Tx, order: Order, action: str, data: Mapping[str, Any], *, staff: str | None, time: str,
                approver: str | None = None, ref_seq: int | None = None, emit: bool = True,
                move: str | None = None) -> int:  # fmt: skip
        """Journal an action, emit its event (unless local only) and keep it in ``order_actions``; returns the entry.

        ``move`` moves the picked stock out with that reason, before the order event: the shop sees
        the stock leave before the reservation ends, never more free stock than there is.
        """
        entry = tx.journal(f"order.{action}", {"order": order.id, **data}, time=time, actor=staff, approver=approver,
                           ref_seq=ref_seq)  # fmt: skip
        if move is not None:
            self._move(tx, order, move, entry.seq, time)
        seq = (tx.emit(NewEvent(EVENT_PREFIX + action, data, subject=order.id), time=time, journal_seq=entry.seq)
               if emit else None)  # fmt: skip
        tx.conn.execute(
            "INSERT INTO order_actions(order_id, action, event_seq, staff, time, data, journal_seq) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (order.id, action, seq, staff, time, json.dumps(dict(data), sort_keys=True), entry.seq),
        )
        return entry.seq

    def _act(self, order: Order, action: str, data: dict[str, Any], *, staff: str | None,
             approver: str | None = None) -> Order:  # fmt: skip
        time = self._now()
        advance(order.doc, action, data, device=self.device, seq=None, time=time)  # refuse before writing
        with self.ledger.transaction(f"order {order.id} {action}") as tx:
            self._record(tx, order, action, data, staff=staff, time=time, approver=approver)
        log.info("order %s %s by %s", order.id, _VERB[action], staff or "policy")
        return self.get(order.id)

    def _picks(self, order: Order) -> list[dict[str, Any]]:
        return [{"line": ln.line, "sku": ln.sku, "picked": _qty_text(ln.picked)} for ln in order.lines]

    def pick(self, order_id: str, picks: Mapping[int, Decimal | str], *, staff: str) -> Order:
        """Record how much of each line is picked (absolute; a correction down is allowed)."""
        order = self.get(order_id)
        if not picks:
            raise InputError("say which lines were picked")
        lines: list[dict[str, Any]] = []
        for no, qty in sorted(picks.items()):
            if not 1 <= no <= len(order.lines):
                raise InputError(f"order {order.id} has no line {no}")
            lines.append({"line": no, "sku": order.lines[no - 1].sku,
                          "picked": _qty_text(_qty(qty, f"line {no} of order {order.id}"))})  # fmt: skip
        return self._act(order, "picked", self._event_data(order, "picked", staff, lines=lines), staff=staff)

    def ready(self, order_id: str, *, staff: str, short: bool = False) -> Order:
        """Mark a picked pickup order ready for collection; the shop tells the customer."""
        order = self.get(order_id)
        hold = order.hold_until or iso_utc(self.clock.now() + timedelta(days=self.policy.hold_days))
        data = self._event_data(order, "ready", staff, lines=self._picks(order), short=short or None, hold_until=hold)
        return self._act(order, "ready", data, staff=staff)

    def pack(self, order_id: str, *, staff: str, short: bool = False) -> Order:
        """Mark a picked ship-from-store order packed (print its slip with :meth:`slip`)."""
        order = self.get(order_id)
        data = self._event_data(order, "packed", staff, lines=self._picks(order), short=short or None)
        return self._act(order, "packed", data, staff=staff)

    def cancel(self, order_id: str, reason: str, *, staff: str, approver: str | None = None) -> Order:
        """Cancel an open order at the till (the customer refused it, the goods are damaged...)."""
        reason = reason.strip()
        if not reason or len(reason) > 200:
            raise InputError("cancelling an order needs a reason of at most 200 characters")
        order = self.get(order_id)
        return self._act(order, "cancelled", self._event_data(order, "cancelled", staff, reason=reason), staff=staff,
                         approver=approver)  # fmt: skip

    # -- hand-over -------------------------------------------------------------------------------

    def _restricted(self, order: Order) -> list[str]:
        names = []
        for ln in order.lines:
            try:
                if self.till.catalog.by_sku(ln.sku).age_restricted:
                    names.append(ln.name)
            except NotFound:
                continue
        return names

    def code_failures(self, order_id: str) -> int:
        row = self.ledger.conn.execute(
            "SELECT count(*) FROM order_actions WHERE order_id = ? AND action = 'code_refused'", (order_id,)
        ).fetchone()
        return int(row[0])

    def check(self, order: Order, check: str, code: str | None, *, staff: str) -> None:
        """Refuse a hand-over without the right proof: the pickup code (or its QR), or an ID check by staff.

        A wrong code is journaled; after ``code_attempts`` of them only an ID check is accepted.
        """
        if check not in _CHECKS:
            raise InputError(f"hand-over check {check!r} is not one of {', '.join(_CHECKS)}")
        if check == "id":
            if not self.policy.id_check:
                raise InputError("this till does not hand orders over on an ID check; enter the pickup code")
            return
        restricted = self._restricted(order)
        if restricted:
            raise SaleError(f"order {order.id} holds age-restricted items ({', '.join(restricted)}): check the "
                            "customer's ID")  # fmt: skip
        given = (code or "").strip()
        qr = parse_order_qr(given)
        if qr is not None:
            if qr[0] != order.id:
                raise InputError(f"that QR code is for order {qr[0]}, not {order.id}")
            given = qr[1]
        if not given or len(given) > 64:
            raise InputError("enter or scan the pickup code")
        if not order.has_code:
            raise InputError(f"order {order.id} has no pickup code; check the customer's ID instead")
        failures = self.code_failures(order.id)
        if failures >= self.policy.code_attempts:
            raise SaleError(f"{failures} wrong pickup codes for order {order.id}: hand it over only after an ID check")
        if hmac.compare_digest(code_hash(order.id, given), str(order.doc["pickup_code_sha256"])):
            return
        time = self._now()
        with self.ledger.transaction(f"order {order.id} code refused") as tx:
            self._record(tx, order, "code_refused", {"attempt": failures + 1}, staff=staff, time=time, emit=False)
        left = self.policy.code_attempts - failures - 1
        log.warning("wrong pickup code for order %s (attempt %d)", order.id, failures + 1)
        raise InputError(f"wrong pickup code for order {order.id}; " +
                         (f"{left} attempt(s) left" if left else "only an ID check can hand it over now"))  # fmt: skip

    def verify(self, order_id: str, check: str, code: str | None = None, *, staff: str) -> Order:
        """Check a hand-over before the payment is taken: the order can be collected and the proof is right."""
        order = self.get(order_id)
        data = self._event_data(order, "collected", staff, check=check, lines=[])
        advance(order.doc, "collected", data, device=self.device, seq=None, time=self._now())
        self.check(order, check, code, staff=staff)
        return order

    def _item(self, ln: OrderLine) -> Item:
        try:
            item = self.till.catalog.by_sku(ln.sku)
        except NotFound:
            if ln.tax_class is None or ln.tax_class not in self.till.config.tax.classes:
                raise InputError(f"{ln.sku} is not in the catalog and the order gives no known tax class") from None
            return Item(ln.sku, ln.name, ln.unit_price or 0, ln.tax_class, "kg" if ln.unit == "kg" else "each")
        return dataclasses.replace(item, active=True)  # sold online: deactivated here or not, it is handed over

    def _price(self, ln: OrderLine) -> int | None:
        """The line's fixed amount as the shop priced it (for the picked quantity); None: the catalog price."""
        mode = self.till.config.currency_settings.rounding_mode
        if ln.total is not None:
            gross = ln.total if ln.picked == ln.qty else round_minor(Decimal(ln.total) * ln.picked / ln.qty, mode)
            if not self.till.config.tax.prices_include_tax and ln.tax is not None:
                tax = ln.tax if ln.picked == ln.qty else round_minor(Decimal(ln.tax) * ln.picked / ln.qty, mode)
                return gross - tax
            return gross
        if ln.unit_price is not None:
            return round_minor(Decimal(ln.unit_price) * ln.picked, mode)
        return None

    def sale_for(self, order_id: str, *, cashier: str) -> Sale:
        """The sale of an order to be paid at pickup: its picked lines, priced as in the order.

        Take the payment on it (cash, card...) and pass it to :meth:`hand_over`.
        """
        order = self.get(order_id)
        if order.payment != "at_pickup":
            raise SaleError(f"order {order.id} is paid already; hand it over without a sale")
        if order.status != "ready":
            raise SaleError(f"order {order.id} is {order.status}; it is rung up when it is ready")
        sale = self.till.new_sale(cashier)
        now = self.clock.now()
        for ln in order.lines:
            if ln.picked > 0:
                sale.add_item(self._item(ln), now, quantity=ln.picked, fixed_amount=self._price(ln))
        return sale

    def _match(self, order: Order, sale: Sale) -> None:
        want = sorted((ln.sku, ln.picked) for ln in order.lines if ln.picked > 0)
        have = sorted((ln.item.sku, ln.quantity) for ln in sale.lines if not ln.voided)
        if want != have:
            raise SaleError(f"the sale does not hold the picked items of order {order.id}; ring it up with sale_for")

    def hand_over(self, order_id: str, check: str, code: str | None = None, *, staff: str,
                  sale: Sale | None = None) -> HandOver:  # fmt: skip
        """Hand a ready pickup order over after the check (see :meth:`check`).

        A paid order moves its stock here (a ``pickup`` stock move). An order to be paid at
        pickup needs its paid ``sale`` (from :meth:`sale_for`): the sale and the hand-over
        are committed in one transaction, and the sale moves the stock.
        """
        order = self.get(order_id)
        time = self._now()
        handed = [{"line": ln.line, "sku": ln.sku, "qty": _qty_text(ln.picked)} for ln in order.lines if ln.picked]
        data = self._event_data(order, "collected", staff, check=check, sale_id=sale.id if sale else None,
                                lines=handed)  # fmt: skip
        advance(order.doc, "collected", data, device=self.device, seq=None, time=time)
        self.check(order, check, code, staff=staff)
        if order.payment != "at_pickup":
            if sale is not None:
                raise InputError(f"order {order.id} is paid already; it is handed over without a sale")
            with self.ledger.transaction(f"order {order.id} collected") as tx:
                self._record(tx, order, "collected", data, staff=staff, time=time, move="pickup")
            log.info("order %s handed over by %s (%s check)", order.id, staff, check)
            return HandOver(self.get(order.id), None)
        if sale is None:
            raise SaleError(f"order {order.id} is to be paid at pickup: take the payment first")
        self._match(order, sale)
        if sale.state != "open" or sale.totals().due > 0:
            raise TenderError(f"order {order.id}: the sale is not paid ({self.till.currency.plain(sale.totals().due)} "
                              "due)")  # fmt: skip
        shift = self.till.shifts.require_open()
        sale.shift_id = shift.id
        doc = sale.complete(self.clock.now())
        try:
            with self.ledger.transaction(f"order {order.id} sold and collected") as tx:
                committed = self.till.write_sale(tx, doc)  # with its gift card and points movements
                self._record(tx, order, "collected", data, staff=staff, time=time, ref_seq=committed.journal.seq)
        except TillboxError:
            sale.state, sale.completed_at = "open", None  # nothing was written
            raise
        done = Completed(committed, {**doc, "number": committed.number, "store": self.ledger.store_id,
                                     "device": self.ledger.device_id})  # fmt: skip
        log.info("order %s sold as #%d and handed over by %s", order.id, committed.number, staff)
        return HandOver(self.get(order.id), done)

    def _move(self, tx: Tx, order: Order, reason: str, journal_seq: int, time: str) -> None:
        moves: dict[str, Decimal] = {}
        for ln in order.lines:
            if ln.picked:
                moves[ln.sku] = moves.get(ln.sku, Decimal(0)) - ln.picked
        if not moves:
            return
        stock = [{"sku": sku, "delta": _qty_text(delta),
                  "level": _qty_text(tx.move_stock(sku, delta, reason=reason, journal_seq=journal_seq))}
                 for sku, delta in moves.items()]  # fmt: skip
        tx.emit(NewEvent("tillbox.stock.moved", {"reason": reason, "order_id": order.id, "moves": stock}),
                time=time, journal_seq=journal_seq)  # fmt: skip

    # -- ship from store -------------------------------------------------------------------------

    def slip(self, order_id: str, *, staff: str) -> Receipt:
        """The packing slip and label of an order for the receipt printer; each print is journaled."""
        order = self.get(order_id)
        if order.status in FINAL_STATUSES and order.status != "shipped":
            raise SaleError(f"order {order.id} is {order.status}; there is nothing to pack")
        time = self._now()
        with self.ledger.transaction(f"order {order.id} slip") as tx:
            seq = self._record(tx, order, "slip_printed", {"status": order.status}, staff=staff, time=time,
                               emit=False)  # fmt: skip
        entry = self.ledger.entry(seq)
        assert entry is not None
        prints = self.ledger.conn.execute(
            "SELECT count(*) FROM order_actions WHERE order_id = ? AND action = 'slip_printed'", (order.id,)
        ).fetchone()[0]
        return packing_slip(order, self.till, staff=staff, time=time, number=int(prints), journal_seq=entry.seq,
                            journal_hash=entry.hash)  # fmt: skip

    def ship(self, order_id: str, tracking: str, *, staff: str, carrier: str | None = None) -> Order:
        """Mark a packed order shipped with the carrier's tracking reference; its stock leaves the store."""
        tracking = tracking.strip()
        if not tracking or len(tracking) > 64 or not tracking.isprintable():
            raise InputError("a tracking reference is 1-64 printable characters")
        carrier = (carrier or "").strip() or None
        if carrier is not None and (len(carrier) > 64 or not carrier.isprintable()):
            raise InputError("a carrier name is at most 64 printable characters")
        order = self.get(order_id)
        time = self._now()
        handed = [{"line": ln.line, "sku": ln.sku, "qty": _qty_text(ln.picked)} for ln in order.lines if ln.picked]
        data = self._event_data(order, "shipped", staff, tracking=tracking, carrier=carrier, lines=handed)
        advance(order.doc, "shipped", data, device=self.device, seq=None, time=time)
        with self.ledger.transaction(f"order {order.id} shipped") as tx:
            self._record(tx, order, "shipped", data, staff=staff, time=time, move="ship")
        log.info("order %s shipped by %s: %s", order.id, staff, tracking)
        return self.get(order.id)

    # -- expiry ----------------------------------------------------------------------------------

    def deadline(self, order: Order) -> datetime | None:
        """When an uncollected pickup order expires: the shop's hold_until, else hold_days after it was ready."""
        if order.kind != "pickup" or not order.open:
            return None
        if order.hold_until:
            return _instant(order.hold_until)
        if order.status != "ready":
            return None
        ready = [h for h in order.history if h.get("status") == "ready" and h.get("time")]
        since = str(ready[-1]["time"]) if ready else order.time
        return None if not since else _instant(since) + timedelta(days=self.policy.hold_days)

    def expire_due(self) -> list[str]:
        """Expire the open pickup orders past their hold (when ``[orders] expire`` is on); returns their ids."""
        if not self.policy.expire:
            return []
        now = self.clock.now()
        expired = []
        for order in self.search(open_only=True, kind="pickup", limit=500):
            try:
                deadline = self.deadline(order)
            except ValueError:
                log.warning("order %s has a malformed hold time", order.id)
                continue
            if deadline is None or now <= deadline:
                continue
            data = self._event_data(order, "expired", None, hold_until=iso_utc(deadline))
            try:
                self._act(order, "expired", data, staff=None)
            except TillboxError as exc:
                log.warning("order %s could not be expired: %s", order.id, exc)
                continue
            expired.append(order.id)
        return expired

    def forget_personal(self) -> list[str]:
        """Drop the customer's name, address and note from orders closed ``keep_personal_days`` ago; their ids.

        The order itself stays (lines, status, history, the journal's record of every action):
        only what names or reaches the customer goes, as the till no longer needs it.
        """
        now = self.clock.now()
        cutoff = now - timedelta(days=self.policy.keep_personal_days)
        rows = self.ledger.conn.execute(
            "SELECT p.id, p.version, p.body, max(p.updated_at, coalesce(max(a.time), '')) FROM pickup_orders p "
            "LEFT JOIN order_actions a ON a.order_id = p.id WHERE json_extract(p.body, '$.redacted_at') IS NULL "
            "GROUP BY p.id"
        ).fetchall()
        forgotten = []
        for order_id, version, body, last in rows:
            try:
                order = self._effective(str(order_id), int(version), str(body))
                closed_long_ago = order.status in FINAL_STATUSES and _instant(str(last)) <= cutoff
            except (InputError, ValueError) as exc:
                log.warning("order %s: %s", order_id, exc)
                continue
            if not closed_long_ago:
                continue
            doc = json.loads(body)
            for name in PERSONAL_FIELDS:
                doc.pop(name, None)
            doc["redacted_at"] = iso_utc(now)
            with self.ledger.transaction(f"order {order_id}: dropping personal data") as tx:
                tx.conn.execute("UPDATE pickup_orders SET body = ? WHERE id = ? AND version = ?",
                                (canonical_json(doc), order_id, version))  # fmt: skip
            forgotten.append(str(order_id))
        if forgotten:
            log.info("personal data dropped from %d closed order(s)", len(forgotten))
        return forgotten


def packing_slip(order: Order, till: Till, *, staff: str, time: str, number: int, journal_seq: int,
                 journal_hash: str) -> Receipt:  # fmt: skip
    """The packing slip (and address label) of an order as a receipt the printer driver prints.

    The order id is the receipt's reference, printed as a barcode to scan at the carrier's
    counter; the second and later prints are marked as copies.
    """
    lines = tuple(
        ReceiptLine(name=ln.name, qty=_qty_text(ln.picked or ln.qty), unit=ln.unit, unit_price=0,
                    amount=ln.total or 0,
                    note=f"SKU {ln.sku}" + (f"; short: {_qty_text(ln.picked)} of {_qty_text(ln.qty)}"
                                            if ln.short else ""))
        for ln in order.lines
    )  # fmt: skip
    total = sum(ln.amount for ln in lines)
    tenders = (ReceiptTender("Paid online", total),) if order.payment == "paid" and total else ()
    footer: list[str] = []
    to = order.ship_to or {}
    if to:
        footer += ["SHIP TO:", str(to.get("name", ""))]
        footer += [str(to["company"])] if to.get("company") else []
        footer += [str(x) for x in to.get("lines", ())]
        footer.append(f"{to.get('postcode', '')} {to.get('city', '')}".strip())
        footer += [str(to["region"])] if to.get("region") else []
        footer.append(str(to.get("country", "")))
        footer += [f"Phone {to['phone']}"] if to.get("phone") else []
        footer.append("")
    elif order.customer:
        footer += [f"For {order.customer}", ""]
    if order.carrier:
        footer.append(f"Carrier: {order.carrier}")
    items = sum((ln.picked or ln.qty for ln in order.lines), Decimal(0))
    footer.append(f"Order {order.id}: {_qty_text(items)} item(s)")
    s = till.store_info
    return Receipt(
        title="PACKING SLIP", store_name=s.name, address=tuple(s.address), tax_id="", currency=till.currency,
        number=number, reference=order.id, staff=staff, time=_local(time, till),
        lines=lines,
        subtotal=total, discount=0, net=total, tax=0, total=total, prices_include_tax=True, taxes=(),
        tenders=tenders, change=0, rounding=0, journal_seq=journal_seq, hash_prefix=journal_hash[:8],
        copy=max(0, number - 1), footer=tuple(footer),
    )  # fmt: skip


def slip_text(receipt: Receipt, width: int = 42) -> str:
    """A packing slip as fixed-width text (the kiosk shows it)."""
    return render_text(receipt, width)


async def expire_periodically(
    orders: Orders, *, interval: float, on_expired: Callable[[list[str]], None] = lambda ids: None
) -> None:
    """Run :meth:`Orders.expire_due` every ``interval`` seconds on the loop, until cancelled."""
    while True:
        await asyncio.sleep(interval)
        try:
            expired = orders.expire_due()
            orders.forget_personal()
        except TillboxError as exc:
            log.warning("order expiry check failed: %s", exc)
            continue
        except Exception:  # a bug must not end the periodic check for good
            log.exception("order expiry check failed")
            continue
        if expired:
            log.info("%d order(s) expired: %s", len(expired), ", ".join(expired))
            on_expired(expired)
