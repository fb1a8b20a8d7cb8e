"""Exception hierarchy shared by the whole appliance.

Every error the appliance raises on purpose derives from :class:`TillboxError`.
The ``retryable`` flag tells a caller whether trying again later can help
(a device that is unplugged) or not (a bad configuration key).
"""

from __future__ import annotations


class TillboxError(Exception):
    """Root of all tillbox errors."""

    retryable: bool = False


class ConfigError(TillboxError):
    """The configuration file is missing, malformed or holds an invalid value."""


class InputError(TillboxError):
    """Input from a person, a file or a peer was rejected (bad quantity, bad row...)."""


class BarcodeError(InputError):
    """A scanned code could not be parsed (bad check digit, malformed GS1 data)."""


class NotFound(InputError):
    """A barcode, SKU or record does not exist."""


class SaleError(TillboxError):
    """An operation on a sale is not allowed in its current state."""


class TenderError(SaleError):
    """Tenders do not cover the total, or a tender is invalid."""


class PaymentDeclined(TillboxError):
    """The payment terminal declined: a business outcome, not a fault."""


class LedgerError(TillboxError):
    """The ledger cannot be opened or written."""


class LedgerCorrupt(LedgerError):
    """The database is not a tillbox ledger, is damaged, or fails verification."""


class LedgerTooNew(LedgerError):
    """The database was written by a newer tillbox with a schema we do not know."""


class StorageFull(LedgerError):
    """The disk is full; nothing was written."""

    retryable = True


class DeviceUnavailable(TillboxError):
    """A device is absent or not answering; retrying later can help."""

    retryable = True


class DeviceMisconfigured(TillboxError):
    """A device is configured wrongly; retrying will not help."""
