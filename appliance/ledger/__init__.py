"""The durable ledger: hash-chained journal, sales, stock and transactional outbox."""

from appliance.ledger.journal import JournalEntry, entry_hash, genesis_hash
from appliance.ledger.store import CommittedSale, Ledger, NewEvent, OutboxEvent, Tx
from appliance.ledger.verify import VerifyReport, verify

__all__ = [
    "CommittedSale",
    "JournalEntry",
    "Ledger",
    "NewEvent",
    "OutboxEvent",
    "Tx",
    "VerifyReport",
    "entry_hash",
    "genesis_hash",
    "verify",
]
