"""The contract: JSON Schemas are valid and current, golden payloads match them, AsyncAPI hangs together."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator

from appliance.canonical import canonical_json
from appliance.errors import InputError
from appliance.ledger import OutboxEvent
from sync.contract import device_topic, envelope, sku_from_segment, sku_segment
from sync.schemas import SCHEMAS, validate

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).parent / "golden" / "sync"
DOCS = ROOT / "docs"


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_each_schema_is_valid_and_the_docs_copy_is_current(name: str) -> None:
    Draft202012Validator.check_schema(SCHEMAS[name])
    assert json.loads((DOCS / "schemas" / f"{name}.json").read_text()) == SCHEMAS[name], (
        "regenerate with: python -m sync.schemas --write docs/schemas"
    )


@pytest.mark.parametrize("path", sorted(GOLDEN.glob("*.json")), ids=lambda p: p.name)
def test_golden_payloads_match_their_schema(path: Path) -> None:
    validate(path.name.split(".")[0], json.loads(path.read_text()))


def test_every_schema_has_a_golden_payload() -> None:
    assert {p.name.split(".")[0] for p in GOLDEN.glob("*.json")} == set(SCHEMAS)


def test_the_envelope_is_byte_exact() -> None:
    golden = (GOLDEN / "cloudevent.stock-moved.json").read_bytes()
    data = {"reason": "sale", "sale_id": "0195a3e2-6a00-7abc-8def-0123456789ab",
            "moves": [{"sku": "1001", "delta": "-1", "level": "11"}]}  # fmt: skip
    event = OutboxEvent(8, "0195a3e2-6a01-7000-8000-00000000000b", "tillbox.stock.moved",
                        "2026-03-02T09:30:00.000Z", None, canonical_json(data), 12, None, None)  # fmt: skip
    assert envelope(event, store="demo", device="till-1") == golden


@pytest.mark.parametrize(
    ("name", "doc"),
    [
        ("cloudevent", {"specversion": "1.0"}),
        ("ack", {"seq": -1}),
        ("stock-level", {"sku": "1", "version": 1, "levels": {"store": 5}, "reserved": "0"}),
        ("catalog-snapshot", {"version": 1, "currency": "EUR", "items": [{"sku": "1"}]}),
    ],
)
def test_schemas_reject_bad_payloads(name: str, doc: object) -> None:
    with pytest.raises(InputError, match=name):
        validate(name, doc)


def test_a_sale_event_with_a_float_amount_is_invalid() -> None:
    event = json.loads((GOLDEN / "cloudevent.sale-completed.json").read_text())
    event["data"]["total"] = 0.79
    with pytest.raises(InputError, match="data/total"):
        validate("cloudevent", event)


def test_asyncapi_document_structure() -> None:
    doc = yaml.safe_load((DOCS / "asyncapi.yaml").read_text())
    assert doc["asyncapi"].startswith("3.")
    messages = doc["components"]["messages"]
    referenced = set()
    for name, channel in doc["channels"].items():
        assert channel["address"], name
        params = set(channel.get("parameters", {}))
        assert params == {p.strip("{}") for p in channel["address"].split("/") if p.startswith("{")}, name
        for ref in channel["messages"].values():
            key = ref["$ref"].removeprefix("#/components/messages/")
            assert key in messages, ref
    for op in doc["operations"].values():
        assert op["action"] in ("send", "receive")
        assert op["channel"]["$ref"].removeprefix("#/channels/") in doc["channels"]
    for message in messages.values():
        target = message["payload"]["$ref"]
        assert (DOCS / target).is_file(), target
        referenced.add(Path(target).stem)
    assert referenced == set(SCHEMAS)  # every schema is part of the contract


def test_topics_and_sku_segments() -> None:
    assert device_topic("demo", "till-1", "evt", "sale.completed") == "tillbox/v1/demo/till-1/evt/sale.completed"
    for sku in ("A/B", "x+y", "#1", "50%"):
        seg = sku_segment(sku)
        assert not {"/", "+", "#"} & set(seg) and sku_from_segment(seg) == sku
    with pytest.raises(InputError):
        device_topic("demo", "till/1", "evt", "x")
    with pytest.raises(InputError):
        device_topic("demo", "till-1", "nope", "x")
