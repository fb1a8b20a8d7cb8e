"""Request bodies of the kiosk API: strict (unknown fields are errors), bounded, no floats.

Amounts are integer minor units; quantities and percentages are decimal strings.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from appliance.staff import Action

QTY_PATTERN = r"^[0-9]{1,4}(\.[0-9]{1,3})?$"
PERCENT_PATTERN = r"^[0-9]{1,3}(\.[0-9]{1,2})?$"

Text = Annotated[str, StringConstraints(min_length=1, max_length=120, pattern=r"^[^\x00-\x1f\x7f]+$")]
Reason = Annotated[str, StringConstraints(max_length=120, pattern=r"^[^\x00-\x1f\x7f]*$")]
Code = Annotated[str, StringConstraints(min_length=1, max_length=80, pattern=r"^[\x1d\x20-\x7e]+$")]
Token = Annotated[str, StringConstraints(min_length=8, max_length=128, pattern=r"^[A-Za-z0-9_-]+$")]
StaffId = Annotated[str, StringConstraints(min_length=1, max_length=32, pattern=r"^[\x21-\x7e]+$")]
Pin = Annotated[str, StringConstraints(pattern=r"^[0-9]{4,8}$")]
Quantity = Annotated[str, StringConstraints(pattern=QTY_PATTERN)]
Percent = Annotated[str, StringConstraints(pattern=PERCENT_PATTERN)]
Minor = Annotated[int, Field(ge=1, le=1_000_000_000)]
MinorOrZero = Annotated[int, Field(ge=0, le=1_000_000_000)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def decimal_or_none(text: str | None) -> Decimal | None:
    return None if text is None else Decimal(text)


class PinLogin(Strict):
    staff_id: StaffId
    pin: Pin


class BadgeLogin(Strict):
    timeout: int = Field(20, ge=1, le=60, description="seconds to wait for a badge")


class DeviceLogin(Strict):
    key: Token
    kind: Literal["self_checkout", "display"]


class ApprovalIn(Strict):
    action: Action
    staff_id: StaffId | None = None
    pin: Pin | None = None
    badge: bool = Field(False, description="wait for the supervisor's badge instead of a PIN")
    timeout: int = Field(20, ge=1, le=60)


class AddItem(Strict):
    code: Code | None = Field(None, description="a scanned or typed barcode, PLU or SKU code")
    sku: StaffId | None = Field(None, description="an item picked from search or the produce pictures")
    quantity: Quantity | None = Field(None, description="units, or kg for weighed items; omit to weigh on the scale")


class SetQuantity(Strict):
    quantity: Quantity


class VoidLine(Strict):
    reason: Reason = ""
    approval: Token | None = None


class DiscountIn(Strict):
    percent: Percent | None = None
    amount: Minor | None = None
    reason: Reason = ""
    approval: Token | None = None


class PriceIn(Strict):
    price: MinorOrZero
    reason: Text
    approval: Token | None = None


class CouponIn(Strict):
    code: Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[\x21-\x7e]+$")]


class CustomerRef(Strict):
    customer_id: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None


class ApprovalUse(Strict):
    approval: Token


class CancelIn(Strict):
    reason: Reason = ""
    approval: Token | None = None


class PaymentIn(Strict):
    kind: Literal["cash", "card"]
    amount: Minor | None = Field(None, description="cash handed over, or the card amount; omit for all that is due")
    print: bool = Field(True, description="print the receipt when this payment completes the sale")


class ReprintIn(Strict):
    reference: Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[\x21-\x7e]+$")]


class ShiftOpen(Strict):
    float: MinorOrZero


class CashMove(Strict):
    kind: Literal["paid_in", "paid_out", "safe_drop"]
    amount: Minor
    reason: Text
    approval: Token | None = None


class NoSale(Strict):
    reason: Text
    approval: Token | None = None


class CountLine(Strict):
    denomination: Minor
    count: Annotated[int, Field(ge=0, le=100_000)]


class ShiftClose(Strict):
    counted: list[CountLine] | None = Field(None, max_length=40, description="cash count by denomination")
    counted_total: MinorOrZero | None = None
    approval: Token | None = None


class ReturnLine(Strict):
    line: Annotated[int, Field(ge=1, le=9999)] | None = None
    sku: StaffId | None = None
    qty: Quantity = "1"
    disposition: Literal["restock", "damaged"] = "restock"


class ReturnIn(Strict):
    reference: Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[\x21-\x7e]+$")] | None = None
    lines: list[ReturnLine] = Field(min_length=1, max_length=200)
    reason: Reason = ""
    approval: Token | None = None
    card_present: bool = Field(False, description="the card an online order was paid with is at the terminal")


class ExchangeIn(Strict):
    reference: Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[\x21-\x7e]+$")]
    lines: list[ReturnLine] = Field(min_length=1, max_length=200)
    reason: Reason = ""
    approval: Token | None = None


class CustomerIn(Strict):
    name: Text
    email: Annotated[str, StringConstraints(max_length=120)] | None = None
    phone: Annotated[str, StringConstraints(max_length=40)] | None = None
    consent: bool = False


class SimInput(Strict):
    value: Code
