"""JSON Schemas (draft 2020-12) of every payload in the MQTT contract.

The schemas are defined here, in code, and written to ``docs/schemas/*.json`` by
``python -m sync.schemas --write docs/schemas`` (a test checks the files are
current). Inbound payloads are validated against them before anything is applied.
Quantities are decimal strings, money is integer minor units; floats never occur.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any, Final

from jsonschema import Draft202012Validator

from appliance.errors import InputError

DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"

_QTY = {"type": "string", "pattern": r"^-?[0-9]{1,12}(\.[0-9]{1,3})?$", "description": "Decimal quantity."}
_MINOR = {"type": "integer", "description": "Money in integer minor units of the currency."}
_TIME = {"type": "string", "format": "date-time", "maxLength": 40}
_SKU = {"type": "string", "minLength": 1, "maxLength": 64}
_UUID = {"type": "string", "pattern": r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"}
_UUID_ANY = {"type": "string", "pattern": "^[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}$",
             "description": "A UUID (any version): the request's idempotency key."}  # fmt: skip
_VERSION = {"type": "integer", "minimum": 1, "maximum": 2**53 - 1}
_SEQ = {"type": "integer", "minimum": 0, "maximum": 2**53 - 1}
_SLUG = {"type": "string", "pattern": r"^[a-z0-9][a-z0-9-]{0,31}$"}
_TEXT = {"type": "string", "maxLength": 200}
#: An update bundle's version (appliance.update checks the same rule).
_RELEASE = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9.+_-]{0,63}$"}


def _obj(props: Mapping[str, Any], required: Sequence[str] = (), **extra: Any) -> dict[str, Any]:
    return {"type": "object", "properties": dict(props), "required": list(required),
            "additionalProperties": False, **extra}  # fmt: skip


def _doc(title: str, description: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"$schema": DIALECT, "$id": f"urn:tillbox:schema:{title}", "title": title,
            "description": description, **body}  # fmt: skip


_ITEM = _obj(
    {
        "sku": _SKU,
        "name": {"type": "string", "minLength": 1, "maxLength": 200},
        "price": {**_MINOR, "minimum": 0},
        "barcodes": {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 64},
                     "minItems": 1, "maxItems": 32},
        "tax_class": {"type": "string", "minLength": 1, "maxLength": 64},
        "unit": {"enum": ["each", "kg"]},
        "department": {"type": "string", "maxLength": 64},
        "age_restricted": {"type": "boolean"},
        "active": {"type": "boolean"},
    },
    ["sku", "name", "price", "barcodes", "tax_class"],
)  # fmt: skip

_SALE_LINE = {
    "type": "object",
    "required": ["line", "sku", "name", "qty", "unit_price", "amount", "discount", "tax", "total", "tax_class",
                 "voided"],
    "properties": {
        "line": {"type": "integer", "minimum": 1}, "sku": _SKU, "name": _TEXT, "qty": _QTY,
        "unit_price": _MINOR, "amount": _MINOR, "discount": _MINOR, "tax": _MINOR, "total": _MINOR,
        "tax_class": {"type": "string"}, "voided": {"type": "boolean"},
        "points_discount": {**_MINOR, "minimum": 0,
                            "description": "The line's share of the sale's points discount (part of discount)."},
    },
}  # fmt: skip

#: Loyalty points redeemed as a discount (docs/accounts.md): ``amount`` is part of the sale's ``discount``.
_POINTS_DISCOUNT = {
    "type": "object", "required": ["customer", "points", "held", "value", "amount", "move", "mode"],
    "properties": {
        "customer": {"type": "string", "minLength": 1, "maxLength": 64},
        "points": {"type": "integer", "minimum": 0, "description": "Points the sale used."},
        "held": {"type": "integer", "minimum": 1, "description": "Points taken; those not used went back."},
        "value": {"type": "integer", "minimum": 1, "description": "Minor units per point."},
        "amount": {**_MINOR, "minimum": 0}, "move": {"type": "string", "maxLength": 64},
        "mode": {"enum": ["online", "offline", "local"]}, "balance": {"type": "integer"},
    },
}  # fmt: skip

_SALE = {
    "type": "object",
    "required": ["id", "number", "store", "device", "currency", "completed_at", "lines", "tenders", "subtotal",
                 "discount", "tax", "total", "rounding", "change"],
    "properties": {
        "id": _UUID, "number": {"type": "integer", "minimum": 1}, "store": _SLUG, "device": _SLUG,
        "cashier": {"type": ["string", "null"]}, "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
        "started_at": {"type": ["string", "null"]}, "completed_at": _TIME,
        "lines": {"type": "array", "items": _SALE_LINE, "minItems": 1},
        "tenders": {"type": "array", "items": {
            "type": "object", "required": ["kind", "amount"],
            "properties": {"kind": {"type": "string"}, "amount": _MINOR},
        }},
        "subtotal": _MINOR, "discount": _MINOR, "tax": _MINOR, "total": _MINOR, "rounding": _MINOR,
        "change": _MINOR, "points_discount": _POINTS_DISCOUNT,
        "customer_id": {"type": ["string", "null"], "maxLength": 64,
                        "description": "The customer attached to the sale (their purchase history at the shop)."},
    },
}  # fmt: skip

_MOVE = _obj({"sku": _SKU, "delta": _QTY, "level": _QTY}, ["sku", "delta", "level"])

_REFERENCE = {"type": "string", "minLength": 1, "maxLength": 64, "pattern": r"^[\x21-\x7e]+$",
              "description": "A receipt reference (TB-<device>-<number>), sale id or online order id."}  # fmt: skip
_POS_QTY = {**_QTY, "pattern": r"^[0-9]{1,12}(\.[0-9]{1,3})?$"}
_TAX_RATES = {"type": "object", "maxProperties": 16, "propertyNames": {"maxLength": 32},
              "additionalProperties": {**_MINOR, "minimum": 0}}  # fmt: skip

_RETURNABLE_LINE = {
    "type": "object",
    "required": ["line", "sku", "name", "qty", "unit", "total", "tax", "tax_class", "voided"],
    "properties": {
        "line": {"type": "integer", "minimum": 1}, "sku": _SKU, "name": _TEXT, "qty": _POS_QTY,
        "unit": {"enum": ["each", "kg"]}, "unit_price": _MINOR, "amount": _MINOR, "discount": _MINOR,
        "total": {**_MINOR, "minimum": 0}, "tax": {**_MINOR, "minimum": 0},
        "tax_class": {"type": "string", "minLength": 1, "maxLength": 64}, "tax_rates": _TAX_RATES,
        "voided": {"type": "boolean"},
    },
}  # fmt: skip

#: A sale as a till needs it to take a return: a till's sale.completed data, or an online order.
_RETURNABLE = {
    "type": "object",
    "required": ["id", "currency", "completed_at", "lines", "tenders", "total"],
    "properties": {
        "id": {"type": "string", "minLength": 1, "maxLength": 64},
        "number": {"type": ["integer", "null"], "minimum": 1},
        "store": _SLUG, "device": _SLUG, "channel": {"enum": ["till", "online"]},
        "currency": {"type": "string", "pattern": "^[A-Z]{3}$"}, "completed_at": _TIME,
        "lines": {"type": "array", "items": _RETURNABLE_LINE, "minItems": 1, "maxItems": 5000},
        "tenders": {"type": "array", "maxItems": 32, "items": {
            "type": "object", "required": ["kind", "amount"],
            "properties": {"kind": {"type": "string", "maxLength": 32}, "amount": _MINOR,
                           "reference": {"type": ["string", "null"], "maxLength": 128}},
        }},
        "total": _MINOR, "tax": _MINOR,
    },
}  # fmt: skip

_ORDER_LINE = _obj(
    {"sku": _SKU, "qty": _QTY, "name": _TEXT, "unit": {"enum": ["each", "kg"]}, "unit_price": {**_MINOR, "minimum": 0},
     "total": {**_MINOR, "minimum": 0, "description": "Paid for the line, tax included (minor units)."},
     "tax": {**_MINOR, "minimum": 0}, "tax_class": {"type": "string", "minLength": 1, "maxLength": 64},
     "tax_rates": _TAX_RATES, "picked": {**_POS_QTY, "description": "Picked so far in the store."}},
    ["sku", "qty"],
)  # fmt: skip

# -- pickup and ship-from-store orders (docs/orders.md) --
_ORDER_ID = {"type": "string", "minLength": 1, "maxLength": 64}
_ORDER_STATUS = {"enum": ["placed", "picking", "ready", "packed", "collected", "shipped", "expired", "cancelled"]}
_STAFF = {"type": ["string", "null"], "maxLength": 128, "description": "The staff member who acted (null: policy)."}
_ADDRESS = _obj(
    {"name": {"type": "string", "minLength": 1, "maxLength": 100}, "company": {"type": "string", "maxLength": 100},
     "lines": {"type": "array", "minItems": 1, "maxItems": 4,
               "items": {"type": "string", "minLength": 1, "maxLength": 100}},
     "postcode": {"type": "string", "maxLength": 16}, "city": {"type": "string", "minLength": 1, "maxLength": 100},
     "region": {"type": "string", "maxLength": 100}, "country": {"type": "string", "pattern": "^[A-Z]{2}$"},
     "phone": {"type": "string", "maxLength": 32}},
    ["name", "lines", "city", "country"],
)  # fmt: skip
_ORDER_HISTORY = _obj(
    {"action": {"type": "string", "maxLength": 32}, "status": _ORDER_STATUS, "time": _TIME,
     "device": {"type": "string", "maxLength": 32}, "staff": _STAFF, "note": _TEXT},
    ["action", "status", "time"],
)  # fmt: skip
_PICKS = {
    "type": "array",
    "minItems": 1,
    "maxItems": 500,
    "items": _obj(
        {"line": {"type": "integer", "minimum": 1}, "sku": _SKU, "picked": _POS_QTY}, ["line", "sku", "picked"]
    ),
}
_HANDED = {
    "type": "array",
    "maxItems": 500,
    "items": _obj({"line": {"type": "integer", "minimum": 1}, "sku": _SKU, "qty": _POS_QTY}, ["line", "sku", "qty"]),
}


def _order_event(status: str, props: Mapping[str, Any], required: Sequence[str] = ()) -> dict[str, Any]:
    """``data`` of a ``tillbox.order.*`` event: the order, its new status, who, and the action's details."""
    return _obj({"id": _ORDER_ID, "status": {"const": status}, "version": _SEQ, "kind": {"enum": ["pickup", "ship"]},
                 "staff": _STAFF, **props}, ["id", "status", "staff", *required])  # fmt: skip


# -- customers (docs/customers.md) --
_CUSTOMER_ID = {
    "type": "string",
    "pattern": r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
    "description": "The shop's customer id (a UUIDv7 for customers created at a till).",
}
_CUSTOMER_IDENT = {"type": ["string", "null"], "pattern": r"^[A-Z0-9._-]{1,64}$"}
_CUSTOMER_FIELDS: dict[str, Any] = {
    "name": {"type": "string", "minLength": 1, "maxLength": 120},
    "email": {"type": ["string", "null"], "maxLength": 254},
    "phone": {"type": ["string", "null"], "maxLength": 40},
    "card": {**_CUSTOMER_IDENT, "description": "Loyalty card number."},
    "badge": {**_CUSTOMER_IDENT, "description": "Badge id."},
    "consent": {"type": "boolean", "description": "The customer agreed that tills keep their record."},
    "consent_at": {"type": ["string", "null"], "maxLength": 40},
}
_CUSTOMER_RECORD = _obj(
    {
        "id": _CUSTOMER_ID,
        "version": _VERSION,
        **_CUSTOMER_FIELDS,
        "qr_sha256": {
            "type": ["string", "null"],
            "pattern": "^[0-9a-f]{64}$",
            "description": "Hex SHA-256 of the app's current QR code (TBC1:<id>:<secret>).",
        },
    },
    ["id", "version", "name", "consent"],
)
_CURSOR = {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,400}$",
           "description": "Opaque: the next of an earlier answer, to page further back."}  # fmt: skip
_PURCHASE = _obj(
    {"channel": {"enum": ["store", "online"]}, "store": _SLUG,
     "device": {**_SLUG, "description": "The till, or online for an order paid online."},
     "reference": _REFERENCE, "sale_id": {"type": "string", "minLength": 1, "maxLength": 64}, "time": _TIME,
     "total": {"type": ["integer", "null"], "description": "Paid, minor units (null: an order without prices)."},
     "currency": {"type": ["string", "null"], "pattern": "^[A-Z]{3}$"},
     "refunded": {**_MINOR, "minimum": 0, "description": "Refunded so far at any till."},
     "returnable": {"type": "boolean",
                    "description": "A till of the asking store can take a return of it: something is left."}},
    ["channel", "store", "device", "reference", "sale_id", "time", "total", "currency", "refunded", "returnable"],
)  # fmt: skip
_CUSTOMER_EVENT = _obj(
    {"id": _CUSTOMER_ID, **_CUSTOMER_FIELDS,
     "redacted": {"const": True, "description": "The personal data was removed on the till (erasure)."}},
    ["id"],
)  # fmt: skip

# -- gift cards, store credit and loyalty points (docs/accounts.md) --
_ACCOUNT = {"type": "string", "pattern": r"^[A-Z0-9][A-Z0-9-]{3,31}$",
            "description": "A gift card or store credit number, upper case (e.g. GC-7KQ2-M9XD)."}  # fmt: skip
_SV_KIND = {"enum": ["gift_card", "store_credit"]}
_CURRENCY = {"type": "string", "pattern": "^[A-Z]{3}$"}
_CUSTOMER = {"type": "string", "minLength": 1, "maxLength": 64, "pattern": r"^[\x21-\x7e]+$",
             "description": "A customer id; the hub also takes a loyalty card linked to one."}  # fmt: skip
_AMOUNT = {**_MINOR, "minimum": 1, "maximum": 10**9}
_POINTS = {"type": "integer", "minimum": 1, "maximum": 10**9}
_DELTA = {"type": "integer", "minimum": -(10**9), "maximum": 10**9,
          "description": "Signed change: positive credits the account, negative debits it."}  # fmt: skip
_MOVE_MODE = {"enum": ["online", "offline", "local"],
              "description": "online: the hub applied it first (the event is a record); offline: taken while the "
                             "shop could not be reached, within the till's limits; local: recorded at the till "
                             "(credits, or a till without a shop). The hub applies each move_id once."}  # fmt: skip
_ACCT_REF = {"type": "string", "maxLength": 64, "description": "What the movement belongs to (sale, return, order)."}
_ACCT_STAFF = {"type": ["string", "null"], "maxLength": 128}
_SV_OP = {"enum": ["issue", "top_up", "redeem", "refund", "reverse"]}
_LOYALTY_OP = {
    "enum": ["earn", "redeem", "refund", "clawback", "reverse"],
    "description": "clawback: points a returned sale had earned, taken back (may overdraw).",
}
_REVERSES = {**_UUID_ANY, "description": "op reverse: the movement to undo, once (one that never came never applies)."}
_SV_MOVED = _obj(
    {"move_id": _UUID_ANY, "op": _SV_OP, "account": _ACCOUNT, "kind": _SV_KIND, "delta": _DELTA,
     "balance": {"type": ["integer", "null"], "description": "The balance the till knows after it (null: unknown)."},
     "currency": _CURRENCY, "reason": {"type": "string", "maxLength": 32}, "ref": _ACCT_REF, "mode": _MOVE_MODE,
     "staff": _ACCT_STAFF, "reverses": _REVERSES},
    ["account", "kind", "delta", "currency"],
)  # fmt: skip
_LOYALTY_MOVED = _obj(
    {"move_id": _UUID_ANY, "op": _LOYALTY_OP, "customer": _CUSTOMER, "delta": _DELTA,
     "balance": {"type": ["integer", "null"], "description": "Points the till knows after it (null: unknown)."},
     "reason": {"type": "string", "maxLength": 32}, "ref": _ACCT_REF, "mode": _MOVE_MODE, "staff": _ACCT_STAFF,
     "reverses": _REVERSES},
    ["move_id", "op", "customer", "delta", "mode"],
)  # fmt: skip
_NEEDS_REVERSES = [{"if": {"properties": {"op": {"const": "reverse"}}},
                    "then": {"required": ["reverses"]}}]  # fmt: skip


#: Event type -> schema of its ``data``.
EVENT_DATA: Final[dict[str, dict[str, Any]]] = {
    "tillbox.sale.completed": _SALE,
    "tillbox.sale.voided": {"type": "object", "required": ["id", "reason"],
                            "properties": {"id": _UUID, "reason": _TEXT}},
    "tillbox.stock.moved": {
        "type": "object", "required": ["reason", "moves"],
        "properties": {"reason": {"type": "string", "maxLength": 32}, "sale_id": _UUID,
                       "moves": {"type": "array", "items": _MOVE, "minItems": 1}},
    },
    "tillbox.ledger.head": _obj(
        {"seq": {"type": "integer", "minimum": 1}, "hash": {"type": "string", "pattern": "^[0-9a-f]{64}$"}},
        ["seq", "hash"],
    ),
    "tillbox.alert.raised": _obj(
        {"code": {"type": "string", "maxLength": 64}, "severity": {"enum": ["info", "warning", "critical"]},
         "message": {"type": "string", "maxLength": 1000}},
        ["code", "severity", "message"],
    ),
    "tillbox.alert.cleared": _obj(
        {"code": {"type": "string", "maxLength": 64}, "note": {"type": "string", "maxLength": 1000}}, ["code"]
    ),
    "tillbox.reconcile.requested": _obj(
        {"journal_seq": _SEQ, "time": _TIME}, ["journal_seq"]
    ),
    "tillbox.return.completed": {
        "type": "object", "required": ["id", "original_sale_id", "lines", "total"],
        "properties": {
            "id": _UUID, "original_sale_id": {"type": ["string", "null"], "maxLength": 64},
            "original_device": {"type": ["string", "null"]}, "total": _MINOR, "tax": _MINOR,
            "lines": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["line", "sku", "qty", "amount", "tax"],
                "properties": {"line": {"type": ["integer", "null"]}, "sku": _SKU, "qty": _POS_QTY, "amount": _MINOR,
                               "tax": _MINOR},
            }},
            "points_back": {"type": "object", "required": ["customer", "points"],
                            "description": "Points of the sale's points discount given back with the lines.",
                            "properties": {"customer": {"type": "string", "minLength": 1, "maxLength": 64},
                                           "points": {"type": "integer", "minimum": 1}}},
        },
    },
    "tillbox.catalog.snapshot_requested": _obj(
        {"have_version": _SEQ, "wanted_version": _SEQ, "reason": _TEXT}, ["have_version"]
    ),
    "tillbox.order.picked": _order_event("picking", {"lines": _PICKS}, ["lines"]),
    "tillbox.order.ready": _order_event("ready", {"lines": _PICKS, "short": {"type": "boolean"}, "hold_until": _TIME},
                                        ["hold_until"]),
    "tillbox.order.packed": _order_event("packed", {"lines": _PICKS, "short": {"type": "boolean"}}),
    "tillbox.order.collected": _order_event(
        "collected", {"check": {"enum": ["code", "id"]}, "sale_id": {"type": ["string", "null"], "maxLength": 64},
                      "lines": _HANDED}, ["check", "lines"]),
    "tillbox.order.shipped": _order_event(
        "shipped", {"tracking": {"type": "string", "minLength": 1, "maxLength": 64},
                    "carrier": {"type": "string", "maxLength": 64}, "lines": _HANDED}, ["tracking", "lines"]),
    "tillbox.order.expired": _order_event("expired", {"hold_until": _TIME}, ["hold_until"]),
    "tillbox.order.cancelled": _order_event("cancelled", {"reason": _TEXT}, ["reason"]),
    "tillbox.customer.created": _CUSTOMER_EVENT,
    "tillbox.customer.updated": _CUSTOMER_EVENT,
    "tillbox.customer.erased": _obj({"id": _CUSTOMER_ID}, ["id"]),
    "tillbox.stored_value.moved": _SV_MOVED,
    "tillbox.loyalty.moved": _LOYALTY_MOVED,
}  # fmt: skip


def _event_schema(*, with_data: bool = True) -> dict[str, Any]:
    branches = [
        {"if": {"properties": {"type": {"const": t}}}, "then": {"properties": {"data": s}}}
        for t, s in EVENT_DATA.items()
    ]
    return _doc(
        "cloudevent",
        "A business event: CloudEvents 1.0, JSON structured mode, with the sequence and store extensions.",
        {
            "type": "object",
            "required": ["specversion", "id", "source", "type", "time", "datacontenttype", "data", "sequence",
                         "store"],
            "properties": {
                "specversion": {"const": "1.0"},
                "id": {**_UUID, "description": "UUIDv7 of the outbox entry: the idempotency key."},
                "source": {"type": "string", "pattern": r"^/tillbox/[a-z0-9][a-z0-9-]*/[a-z0-9][a-z0-9-]*$"},
                "type": {"type": "string", "pattern": r"^tillbox\.[a-z_]+(\.[a-z_]+)+$"},
                "time": _TIME,
                "subject": {"type": "string", "maxLength": 128},
                "datacontenttype": {"const": "application/json"},
                "sequence": {**_SEQ, "minimum": 1, "description": "Per-device, gap-free, from 1."},
                "store": _SLUG,
                "data": {"type": "object"},
            },
            "additionalProperties": False,
            **({"allOf": branches} if with_data else {}),
        },
    )  # fmt: skip


SCHEMAS: Final[dict[str, dict[str, Any]]] = {
    "cloudevent": _event_schema(),
    "status": _doc("status", "Retained online/offline status; also the Will.", _obj(
        {"online": {"type": "boolean"}, "session": {"type": "integer", "minimum": 1}}, ["online", "session"])),
    "state": _doc("state", "Retained device state.", _obj(
        {
            "time": _TIME, "session": {"type": "integer", "minimum": 1},
            "versions": _obj({"tillbox": {"type": "string"}, "schema": {"type": "integer"}}, ["tillbox", "schema"]),
            "backlog": _obj({"size": _SEQ, "oldest_age_s": {"type": "integer", "minimum": 0}},
                            ["size", "oldest_age_s"]),
            "last_seq": _SEQ, "last_acked_seq": _SEQ, "catalog_version": _SEQ, "promotions_version": _SEQ,
            "config_version": _SEQ,
            "health": {"type": "object", "additionalProperties": {"enum": ["ok", "degraded", "unavailable"]}},
            "alerts": {"type": "array", "items": {"type": "string"}},
            "link": _obj({"connected": {"type": "boolean"}, "broker": {"type": ["string", "null"]},
                          "last_error": {"type": ["string", "null"], "maxLength": 1000},
                          "refused": {"type": "boolean"}, "failures": _SEQ, "retry_in_s": _SEQ},
                         ["connected", "last_error", "refused"]),
        },
        ["time", "session", "versions", "backlog", "last_seq", "last_acked_seq", "health", "alerts"],
    )),
    "ack": _doc("ack", "End-to-end ack from the hub: every event up to seq was received (retained).", _obj(
        {"seq": _SEQ, "time": _TIME}, ["seq"])),
    "reconcile-response": _doc("reconcile-response", "The hub's view of a device at a reconcile request.", _obj(
        {"request_seq": _SEQ, "contiguous": _SEQ, "sales": _SEQ,
         "stock": {"type": "object", "propertyNames": _SKU, "additionalProperties": _QTY}, "time": _TIME},
        ["request_seq", "contiguous", "sales", "stock"],
    )),
    "command": _doc("command", "A command to a device (MQTT 5 response topic and correlation data).", _obj(
        {"args": {"type": "object", "maxProperties": 16}, "issued_at": _TIME}, [])),
    "command-response": _doc("command-response", "The reply to a command, on its response topic.", _obj(
        {"ok": {"type": "boolean"}, "command": {"type": "string"}, "result": {"type": "object"},
         "error": {"type": "string"}}, ["ok", "command"])),
    "config-desired": _doc("config-desired", "Desired configuration values (retained), by dotted key.", _obj(
        {"version": _VERSION,
         "values": {"type": "object", "maxProperties": 64,
                    "propertyNames": {"pattern": r"^[a-z_]+(\.[a-z0-9_]+)+$"},
                    "additionalProperties": {"type": ["string", "integer", "boolean", "array"]}}},
        ["version", "values"])),
    "config-reported": _doc("config-reported", "What the device did with the desired configuration.", _obj(
        {"version": _SEQ, "status": {"enum": ["accepted", "rejected", "applied"]},
         "errors": {"type": "array", "items": {"type": "string"}}, "values": {"type": "object"}, "time": _TIME},
        ["version", "status"])),
    "catalog-snapshot": _doc("catalog-snapshot", "The whole catalog at a version (retained).", _obj(
        {"version": _VERSION, "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
         "items": {"type": "array", "items": _ITEM, "maxItems": 200000}},
        ["version", "currency", "items"])),
    "catalog-delta": _doc("catalog-delta", "Changes from base_version to version.", _obj(
        {"version": _VERSION, "base_version": _SEQ, "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
         "upsert": {"type": "array", "items": _ITEM, "maxItems": 50000},
         "prices": {"type": "array", "maxItems": 50000,
                    "items": _obj({"sku": _SKU, "price": {**_MINOR, "minimum": 0}}, ["sku", "price"])},
         "deactivate": {"type": "array", "items": _SKU, "maxItems": 50000}},
        ["version", "base_version", "currency"])),
    "promotions-snapshot": _doc("promotions-snapshot", "All promotions at a version (retained).", _obj(
        {"version": _VERSION,
         "promotions": {"type": "array", "maxItems": 10000,
                        "items": {"type": "object", "required": ["id"],
                                  "properties": {"id": {"type": "string", "minLength": 1, "maxLength": 64},
                                                 "channels": {
                                                     "type": "array", "maxItems": 16, "uniqueItems": True,
                                                     "items": _SLUG,
                                                     "description": "Where it runs (e.g. store, online); "
                                                                    "absent or empty: every channel."}}}}},
        ["version", "promotions"])),
    "stock-level": _doc("stock-level", "Central stock of one SKU in the store, per channel (retained).", _obj(
        {"sku": _SKU, "version": _VERSION, "time": _TIME,
         "levels": {"type": "object", "maxProperties": 32, "propertyNames": _SLUG, "additionalProperties": _QTY},
         "reserved": _QTY},
        ["sku", "version", "levels", "reserved"])),
    "pickup-order": _doc("pickup-order", "An online order to be picked up in the store, or shipped from it "
                         "(retained); see docs/orders.md.", _obj(
        {"id": _ORDER_ID, "version": _VERSION,
         "status": _ORDER_STATUS, "time": _TIME,
         "customer": {"type": "string", "maxLength": 200},
         "customer_id": {**_CUSTOMER_ID, "description": "The shop's customer id: a paid, collected or shipped "
                         "order is part of their purchase history (docs/customers.md)."},
         "currency": {"type": "string", "pattern": "^[A-Z]{3}$"}, "paid_at": _TIME,
         "lines": {"type": "array", "minItems": 1, "maxItems": 500, "items": _ORDER_LINE},
         "kind": {"enum": ["pickup", "ship"], "description": "pickup (the default) or ship-from-store."},
         "payment": {"enum": ["paid", "at_pickup"], "description": "paid (the default) or to be paid at pickup."},
         "pickup_code_sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$",
                                "description": "Hex SHA-256 of '<id>\\n<pickup code>' (the code is in the QR)."},
         "hold_until": {**_TIME, "description": "An uncollected pickup order expires after this instant."},
         "ship_to": _ADDRESS, "carrier": {"type": "string", "maxLength": 64},
         "tracking": {"type": "string", "minLength": 1, "maxLength": 64},
         "sale_id": {"type": "string", "maxLength": 64, "description": "The till's sale of an order paid at pickup."},
         "note": _TEXT, "history": {"type": "array", "maxItems": 100, "items": _ORDER_HISTORY},
         "applied": {"type": "object", "maxProperties": 256, "propertyNames": _SLUG, "additionalProperties": _SEQ,
                     "description": "Per device: the sequence of its last order event applied to this order."}},
        ["id", "version", "status", "lines"],
        allOf=[{"if": {"properties": {"kind": {"const": "ship"}}, "required": ["kind"]},
                "then": {"required": ["ship_to"], "properties": {"payment": {"const": "paid"}}}}],
    )),
    "sale-lookup": _doc("sale-lookup", "A till asks the shop for a sale it does not have (for a return); MQTT 5 "
                        "ResponseTopic and CorrelationData.", _obj(
        {"reference": _REFERENCE, "issued_at": _TIME}, ["reference"])),
    "sale-lookup-response": _doc("sale-lookup-response", "The shop's answer to a sale lookup, with what other "
                                 "devices have already refunded of each line.", _obj(
        {"reference": _REFERENCE, "found": {"type": "boolean"}, "sale": _RETURNABLE,
         "refunded": {"type": "array", "maxItems": 5000, "items": _obj(
             {"line": {"type": "integer", "minimum": 1}, "qty": _POS_QTY, "amount": _MINOR, "tax": _MINOR},
             ["line", "qty", "amount", "tax"])},
         "reason": {"enum": ["unknown", "not_returnable"], "description": "Why found is false."},
         "error": {"type": "string", "maxLength": 200}, "time": _TIME},
        ["reference", "found"],
        allOf=[{"if": {"properties": {"found": {"const": True}}}, "then": {"required": ["sale"]},
                "else": {"not": {"required": ["sale"]}}}],
    )),
    "rpc-response": _doc("rpc-response", "The shop's answer to any generic request (req/{name}), on the till's "
                         "res/rpc with the request's CorrelationData; id repeats the request's id (idempotency key).",
                         _obj(
        {"id": _UUID_ANY, "ok": {"type": "boolean"}, "result": {"type": "object"},
         "code": {"enum": ["not_found", "declined", "refused", "invalid", "failed"]},
         "error": {"type": "string", "maxLength": 200}, "time": _TIME},
        ["id", "ok"],
        allOf=[{"if": {"properties": {"ok": {"const": True}}}, "then": {"required": ["result"]},
                "else": {"required": ["code", "error"]}}],
    )),
    "stock-query-request": _doc("stock-query-request", "A till asks for the central stock of SKUs in every store "
                                "(\"is it in stock elsewhere?\").", _obj(
        {"id": _UUID_ANY, "skus": {"type": "array", "minItems": 1, "maxItems": 50, "uniqueItems": True,
                                   "items": _SKU}}, ["id", "skus"])),
    "stock-query-result": _doc("stock-query-result", "Central stock per store and SKU: units on hand per channel "
                               "and units reserved by open online orders.", _obj(
        {"stores": {"type": "object", "maxProperties": 1000, "propertyNames": _SLUG,
                    "additionalProperties": {"type": "object", "additionalProperties": _obj(
                        {"levels": {"type": "object", "additionalProperties": _QTY}, "reserved": _POS_QTY},
                        ["levels", "reserved"])}}}, ["stores"])),
    "customer-lookup-request": _doc("customer-lookup-request", "A till asks the shop for a customer by phone, "
                                    "email, loyalty card, badge, customer id or app QR code.", _obj(
        {"id": _UUID_ANY, "token": {"type": "string", "minLength": 1, "maxLength": 200}}, ["id", "token"])),
    "customer-lookup-result": _doc("customer-lookup-result", "The customers a token names (not_found when "
                                   "none); a till caches only those who consented.", _obj(
        {"customers": {"type": "array", "minItems": 1, "maxItems": 10, "items": _CUSTOMER_RECORD}}, ["customers"])),
    "customer-history-request": _doc("customer-history-request", "A till asks a customer's purchases at every "
                                     "till and online, newest first.", _obj(
        {"id": _UUID_ANY, "customer": _CUSTOMER_ID,
         "limit": {"type": "integer", "minimum": 1, "maximum": 50, "description": "At most this many (default 20)."},
         "before": _CURSOR}, ["id", "customer"])),
    "customer-history-result": _doc("customer-history-result", "A customer's purchases, newest first (not_found "
                                    "for an unknown or erased customer); next pages further back.", _obj(
        {"customer": _CUSTOMER_ID, "purchases": {"type": "array", "maxItems": 50, "items": _PURCHASE},
         "next": _CURSOR}, ["customer", "purchases"])),
    "customers-revoked": _doc("customers-revoked", "Customers tills must no longer keep (retained): erased, "
                              "consent withdrawn, or merged into another record, at the shop's record version; the "
                              "last 90 days.", _obj(
        {"version": _VERSION, "time": _TIME,
         "revoked": {"type": "array", "maxItems": 100000, "items": _obj(
             {"id": _CUSTOMER_ID, "version": _VERSION, "reason": {"enum": ["erased", "withdrawn", "merged"]},
              "at": _TIME, "merged_into": {**_CUSTOMER_ID, "description": "The kept customer (reason merged)."}},
             ["id", "version", "reason"])}},
        ["version", "revoked"])),
    "stored-value-balance-request": _doc("stored-value-balance-request", "A till asks the balance of a gift card "
                                         "or store credit account.", _obj(
        {"id": _UUID_ANY, "account": _ACCOUNT}, ["id", "account"])),
    "stored-value-balance-result": _doc("stored-value-balance-result", "The hub's balance of an account (negative "
                                        "when offline redemptions overdrew it).", _obj(
        {"account": _ACCOUNT, "kind": _SV_KIND, "balance": {"type": "integer"}, "currency": _CURRENCY},
        ["account", "kind", "balance", "currency"])),
    "stored-value-move-request": _doc("stored-value-move-request", "Issue, top up, redeem, refund onto or reverse "
                                      "a gift card or store credit; id is the movement's id (applied once).", _obj(
        {"id": _UUID_ANY, "op": _SV_OP, "account": _ACCOUNT, "kind": _SV_KIND, "amount": _AMOUNT,
         "currency": _CURRENCY, "partial": {"type": "boolean", "description": "redeem: take what there is, up to "
                                            "amount, instead of declining."},
         "ref": _ACCT_REF, "reverses": _REVERSES, "staff": _ACCT_STAFF, "time": _TIME},
        ["id", "op", "account", "currency"],
        allOf=[*_NEEDS_REVERSES, {"if": {"properties": {"op": {"not": {"const": "reverse"}}}},
                                  "then": {"required": ["amount"]}}],
    )),
    "stored-value-move-result": _doc("stored-value-move-result", "What the hub applied: the signed change and the "
                                     "balance after it.", _obj(
        {"move_id": _UUID_ANY, "op": _SV_OP, "account": _ACCOUNT, "kind": _SV_KIND, "delta": _DELTA,
         "balance": {"type": "integer"}, "currency": _CURRENCY},
        ["move_id", "op", "account", "kind", "delta", "balance", "currency"])),
    "loyalty-balance-request": _doc("loyalty-balance-request", "A till asks a customer's loyalty points.", _obj(
        {"id": _UUID_ANY, "customer": _CUSTOMER}, ["id", "customer"])),
    "loyalty-balance-result": _doc("loyalty-balance-result", "A customer's points at the hub (the customer id, "
                                   "also when asked by loyalty card).", _obj(
        {"customer": _CUSTOMER, "points": {"type": "integer"}}, ["customer", "points"])),
    "loyalty-move-request": _doc("loyalty-move-request", "Earn, redeem, refund, claw back or reverse loyalty points; "
                                 "id is the movement's id (applied once).", _obj(
        {"id": _UUID_ANY, "op": _LOYALTY_OP, "customer": _CUSTOMER, "points": _POINTS,
         "partial": {"type": "boolean", "description": "redeem: take what there is, up to points."},
         "ref": _ACCT_REF, "reverses": _REVERSES, "staff": _ACCT_STAFF, "time": _TIME},
        ["id", "op", "customer"],
        allOf=[*_NEEDS_REVERSES, {"if": {"properties": {"op": {"not": {"const": "reverse"}}}},
                                  "then": {"required": ["points"]}}],
    )),
    "loyalty-move-result": _doc("loyalty-move-result", "What the hub applied: the signed change in points and the "
                                "balance after it.", _obj(
        {"move_id": _UUID_ANY, "op": _LOYALTY_OP, "customer": _CUSTOMER, "delta": _DELTA,
         "balance": {"type": "integer"}}, ["move_id", "op", "customer", "delta", "balance"])),
    "update-offer": _doc("update-offer", "A signed update bundle the shop offers the tills of a store (retained); "
                         "see docs/image.md, Delivering updates.", _obj(
        {"version": _VERSION, "release": _RELEASE, "url": {"type": "string", "maxLength": 2048,
                                                           "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://[^\\s]+$"},
         "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$", "description": "Hex SHA-256 of the bundle."},
         "size": {"type": "integer", "minimum": 1, "maximum": 4_294_967_296, "description": "The bundle's bytes."},
         "devices": {"type": "array", "minItems": 1, "maxItems": 1000, "uniqueItems": True, "items": _SLUG,
                     "description": "The tills it is for; absent: every till of the store."},
         "not_before": {**_TIME, "description": "Tills do not download it before this instant."},
         "time": _TIME},
        ["version", "release", "url", "sha256", "size"])),
    "update-status": _doc("update-status", "Where a till is with an offered update (retained).", _obj(
        {"release": _RELEASE, "state": {"enum": ["downloading", "ready", "refused", "installed", "failed",
                                                 "rolled_back"]},
         "error": {"type": "string", "maxLength": 1000}, "attempt": {"type": "integer", "minimum": 1},
         "time": _TIME},
        ["release", "state", "time"])),
}  # fmt: skip


#: The envelope alone, without the per-type ``data`` rules (not published as a document).
_INTERNAL: Final = {"cloudevent-envelope": _event_schema(with_data=False)}


@cache
def validator(name: str) -> Draft202012Validator:
    """A (cached) validator for one schema of :data:`SCHEMAS`."""
    schema = SCHEMAS[name] if name in SCHEMAS else _INTERNAL[name]
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def validate(name: str, instance: object) -> None:
    """Raise :class:`InputError` naming the first problem when ``instance`` does not match."""
    error = next(iter(sorted(validator(name).iter_errors(instance), key=lambda e: list(e.path))), None)
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        raise InputError(f"{name}: {where}: {error.message[:200]}")


def write_docs(directory: Path) -> list[Path]:
    """Write every schema as ``<name>.json``; returns the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, schema in SCHEMAS.items():
        path = directory / f"{name}.json"
        path.write_text(json.dumps(schema, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) == 2 and args[0] == "--write":
        for path in write_docs(Path(args[1])):
            sys.stdout.write(f"{path}\n")
        return 0
    sys.stderr.write("usage: python -m sync.schemas --write DIR\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())
