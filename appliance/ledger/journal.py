"""The hash chain of the journal.

Each entry's hash is SHA-256 over the previous entry's hash and the entry's
fields, so altering, deleting or reordering any entry breaks every later hash.
The first entry chains to a genesis value derived from the store and device id.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


def genesis_hash(store_id: str, device_id: str) -> str:
    """The chain's starting value for one device."""
    return hashlib.sha256(f"tillbox-genesis\x1f{store_id}\x1f{device_id}".encode()).hexdigest()


def entry_hash(
    prev_hash: str,
    seq: int,
    time: str,
    type_: str,
    actor: str | None,
    approver: str | None,
    ref_seq: int | None,
    payload: str,
) -> str:
    """Hash of one journal entry; ``payload`` is the stored canonical JSON text."""
    fields = (
        prev_hash,
        str(seq),
        time,
        type_,
        actor or "",
        approver or "",
        "" if ref_seq is None else str(ref_seq),
        payload,
    )
    return hashlib.sha256("\x1f".join(fields).encode()).hexdigest()


@dataclass(frozen=True)
class JournalEntry:
    """One committed journal entry."""

    seq: int
    time: str
    type: str
    actor: str | None
    approver: str | None
    ref_seq: int | None
    payload: str
    prev_hash: str
    hash: str
