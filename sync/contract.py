"""The MQTT contract: topic names and the CloudEvents envelope.

Topics are ``tillbox/v1/{store}/{device}/{class}/{name}`` for one device (``req`` is
the class of the device's own requests to the shop, answered on ``res``) and
``tillbox/v1/{store}/{kind}/{name}`` for store-wide documents; see
``docs/asyncapi.yaml``. Business events are CloudEvents 1.0 in JSON structured
mode; ``id`` is the outbox UUIDv7 (the idempotency key) and the extensions
``sequence`` (per device, gap-free) and ``store`` carry the order.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote, unquote

from appliance.errors import InputError
from appliance.ledger import OutboxEvent

PREFIX: Final = "tillbox/v1"
SPECVERSION: Final = "1.0"
CONTENT_TYPE: Final = "application/cloudevents+json"
DATA_CONTENT_TYPE: Final = "application/json"
DEVICE_CLASSES: Final = ("evt", "state", "status", "cmd", "res", "cfg", "req")
STORE_KINDS: Final = ("catalog", "promotions", "stock", "orders", "update")
TYPE_PREFIX: Final = "tillbox."
#: The reference hub's own topics (its retained status, and the responses to its commands).
HUB_PREFIX: Final = "tillbox/hub"

_SEGMENT = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")


def _segment(value: str, what: str) -> str:
    if not _SEGMENT.fullmatch(value):
        raise InputError(f"{what} {value!r} cannot be used in a topic")
    return value


def device_topic(store: str, device: str, klass: str, name: str) -> str:
    """``tillbox/v1/{store}/{device}/{class}/{name}``."""
    if klass not in DEVICE_CLASSES:
        raise InputError(f"unknown topic class {klass!r}")
    return f"{PREFIX}/{_segment(store, 'store')}/{_segment(device, 'device')}/{klass}/{name}"


def store_topic(store: str, kind: str, name: str) -> str:
    """``tillbox/v1/{store}/{kind}/{name}`` for store-wide documents (catalog, stock...)."""
    if kind not in STORE_KINDS:
        raise InputError(f"unknown store topic {kind!r}")
    return f"{PREFIX}/{_segment(store, 'store')}/{kind}/{name}"


def sku_segment(sku: str) -> str:
    """A SKU made safe for one topic level ('/', '+', '#' and '%' are percent-encoded)."""
    return quote(sku, safe="")


def sku_from_segment(segment: str) -> str:
    return unquote(segment)


def event_name(type_: str) -> str:
    """The topic name of an event type: ``tillbox.sale.completed`` -> ``sale.completed``."""
    return type_.removeprefix(TYPE_PREFIX)


def source(store: str, device: str) -> str:
    """The CloudEvents ``source`` of a device (a URI reference)."""
    return f"/tillbox/{store}/{device}"


@dataclass(frozen=True)
class Topic:
    """A parsed device topic."""

    store: str
    device: str
    klass: str
    name: str


def parse_device_topic(topic: str) -> Topic | None:
    """Split ``tillbox/v1/{store}/{device}/{class}/{name}``; None when it is not one."""
    parts = topic.split("/")
    if len(parts) != 6 or f"{parts[0]}/{parts[1]}" != PREFIX or parts[4] not in DEVICE_CLASSES:
        return None
    return Topic(parts[2], parts[3], parts[4], parts[5])


def envelope(event: OutboxEvent, *, store: str, device: str) -> bytes:
    """The CloudEvent for an outbox event, as JSON bytes.

    ``data`` is the outbox's canonical JSON, embedded verbatim (not re-encoded).
    """
    head = {
        "specversion": SPECVERSION,
        "id": event.id,
        "source": source(store, device),
        "type": event.type,
        "time": event.time,
        "datacontenttype": DATA_CONTENT_TYPE,
        "sequence": event.seq,
        "store": store,
    }
    if event.subject is not None:
        head["subject"] = event.subject
    text = json.dumps(head, ensure_ascii=False, separators=(",", ":"))
    return (text[:-1] + ',"data":' + event.data + "}").encode()


def decode_event(payload: bytes) -> dict[str, Any]:
    """Parse a CloudEvent (structure is checked by the schema, not here)."""
    try:
        obj = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise InputError("not a JSON object")
    return obj
