"""Tenders and the interfaces of the things that take payment.

The appliance never sees a card number: a :class:`PaymentTerminal` returns an
approval reference only. Gift cards and store credit plug in through
:class:`StoredValueProvider`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol


class TenderKind(StrEnum):
    """How a customer pays."""

    CASH = "cash"
    CARD = "card"
    GIFT_CARD = "gift_card"
    STORE_CREDIT = "store_credit"
    LOYALTY = "loyalty"  # points redeemed as payment (appliance/loyalty.py)
    EXCHANGE = "exchange"


@dataclass(frozen=True)
class Tender:
    """One payment applied to a sale.

    ``amount`` is what the tender contributes to the sale; for cash,
    ``tendered`` is what was handed over and ``change`` what was given back.
    """

    kind: TenderKind
    amount: int
    tendered: int = 0
    change: int = 0
    reference: str | None = None
    detail: dict[str, str] = field(default_factory=dict)

    def to_doc(self) -> dict[str, object]:
        doc: dict[str, object] = {"kind": str(self.kind), "amount": self.amount, "reference": self.reference}
        if self.kind is TenderKind.CASH:
            doc["tendered"] = self.tendered
            doc["change"] = self.change
        if self.detail:
            doc["detail"] = dict(self.detail)
        return doc


@dataclass(frozen=True)
class CardResult:
    """What a payment terminal reports: approval reference, never a card number."""

    approved: bool
    amount: int
    reference: str = ""
    approval_code: str = ""
    scheme: str = ""
    message: str = ""


class PaymentTerminal(Protocol):
    """A card terminal. Implementations live in ``drivers``."""

    def authorize(self, amount: int, currency: str, reference: str) -> CardResult:
        """Ask the customer to pay ``amount`` minor units; blocks until an outcome."""
        ...

    def reverse(self, reference: str) -> CardResult:
        """Cancel an approved payment (the sale was abandoned)."""
        ...

    def refund(self, amount: int, currency: str, reference: str) -> CardResult:
        """Pay ``amount`` back to the customer's card (a return)."""
        ...


@dataclass(frozen=True)
class StoredValueResult:
    """Outcome of a gift card or store credit operation."""

    ok: bool
    amount: int
    balance: int
    reference: str = ""
    message: str = ""


class StoredValueProvider(Protocol):
    """Gift cards and store credit, honoured in every channel (provided via sync)."""

    kind: TenderKind

    def balance(self, account: str) -> int:
        """Current balance of a card or credit account, in minor units."""
        ...

    def redeem(self, account: str, amount: int, reference: str) -> StoredValueResult:
        """Take up to ``amount`` from the account for the sale ``reference``."""
        ...
