"""Canonical JSON: one byte-exact text per value, so hashes are reproducible."""

from __future__ import annotations

import json
from typing import Any


def _reject(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not allowed in canonical JSON")


_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_reject)


def canonical_json(value: Any) -> str:
    """Serialise with sorted keys and no whitespace; floats are refused (money is int)."""
    _check_no_float(value)
    return _ENCODER.encode(value)


def _check_no_float(value: Any) -> None:
    if isinstance(value, float):
        raise TypeError("float is not allowed in canonical JSON; use int minor units or str")
    if isinstance(value, dict):
        for item in value.values():
            _check_no_float(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_no_float(item)
