"""Alerts: conditions someone must look at (sync backlog too old, printer out of paper...).

An alert is raised once and cleared once; both are journal entries with outbox events
(``tillbox.alert.raised`` / ``tillbox.alert.cleared``), and the active set lives in the
``alerts`` table so the UI and MQTT state can show it after a restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from appliance.ledger import Ledger, NewEvent

Severity = Literal["info", "warning", "critical"]


@dataclass(frozen=True)
class Alert:
    """An active alert."""

    code: str
    severity: str
    message: str
    raised_at: str


def raise_alert(ledger: Ledger, code: str, message: str, *, time: str, severity: Severity = "warning") -> bool:
    """Raise an alert unless it is already active with the same message; returns True if recorded."""
    row = ledger.conn.execute("SELECT message, severity FROM alerts WHERE code = ?", (code,)).fetchone()
    if row is not None and tuple(row) == (message, severity):
        return False
    data = {"code": code, "severity": severity, "message": message}
    with ledger.transaction(f"raising alert {code}") as tx:
        entry = tx.journal("alert.raised", data, time=time)
        tx.emit(NewEvent("tillbox.alert.raised", data, subject=code), time=time, journal_seq=entry.seq)
        tx.conn.execute(
            "INSERT INTO alerts(code, severity, message, raised_at, journal_seq) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(code) DO UPDATE SET severity = excluded.severity, message = excluded.message, "
            "raised_at = excluded.raised_at, journal_seq = excluded.journal_seq",
            (code, severity, message, time, entry.seq),
        )
    return True


def clear_alert(ledger: Ledger, code: str, *, time: str, note: str = "") -> bool:
    """Clear an active alert; returns False when it was not active."""
    if ledger.conn.execute("SELECT 1 FROM alerts WHERE code = ?", (code,)).fetchone() is None:
        return False
    data = {"code": code, "note": note}
    with ledger.transaction(f"clearing alert {code}") as tx:
        entry = tx.journal("alert.cleared", data, time=time)
        tx.emit(NewEvent("tillbox.alert.cleared", data, subject=code), time=time, journal_seq=entry.seq)
        tx.conn.execute("DELETE FROM alerts WHERE code = ?", (code,))
    return True


def active_alerts(ledger: Ledger) -> list[Alert]:
    """Alerts raised and not yet cleared, oldest first."""
    rows = ledger.conn.execute("SELECT code, severity, message, raised_at FROM alerts ORDER BY raised_at, code")
    return [Alert(*map(str, r)) for r in rows]
