"""Requests a till makes of the shop, and the shop's answers: the generic request/response contract.

A till publishes ``tillbox/v1/{store}/{device}/req/{name}`` with the MQTT 5 properties
ResponseTopic (its own ``res/rpc``) and CorrelationData; the body is validated against
the schema ``{name}-request`` and always carries an ``id`` (a UUID). The hub answers on
the response topic with the same correlation data and an envelope (schema
``rpc-response``): ``{"id", "ok": true, "result": {...}}`` where ``result`` matches
``{name}-result``, or ``{"id", "ok": false, "code", "error"}``.

The ``id`` is the idempotency key: the hub stores each answer under (store, device,
name, id) and answers a repeated request with the stored answer, without doing the work
again. A till that saw no answer (a timeout is an ambiguous outcome) repeats the request
with the same id to learn what happened, so a gift card is never redeemed twice.

Error codes map to the appliance's exceptions in both directions.
"""

from __future__ import annotations

from typing import Any, Final

from appliance.errors import InputError, NotFound, SaleError, TenderError, TillboxError

#: The response topic name (class ``res``) every generic answer is sent to.
RESPONSE_NAME: Final = "rpc"

#: Error codes in answers, and the exception each stands for (most specific first).
ERROR_CODES: Final[tuple[tuple[str, type[TillboxError]], ...]] = (
    ("not_found", NotFound),
    ("declined", TenderError),
    ("refused", SaleError),
    ("invalid", InputError),
)


def error_code(exc: TillboxError) -> str:
    """The answer's ``code`` for an exception raised by a hub handler."""
    for code, kind in ERROR_CODES:
        if isinstance(exc, kind):
            return code
    return "failed"


def error_from(code: str, message: str) -> TillboxError:
    """The exception a till raises for an error answer."""
    for known, kind in ERROR_CODES:
        if known == code:
            return kind(message)
    return TillboxError(message)


def request_schema(name: str) -> str:
    return f"{name}-request"


def result_schema(name: str) -> str:
    return f"{name}-result"


def ok(request_id: str, result: dict[str, Any], time: str) -> dict[str, Any]:
    """A successful answer."""
    return {"id": request_id, "ok": True, "result": result, "time": time}


def failed(request_id: str, exc: TillboxError, time: str) -> dict[str, Any]:
    """An error answer (the message cut to what the schema allows)."""
    return {"id": request_id, "ok": False, "code": error_code(exc), "error": str(exc)[:200], "time": time}
