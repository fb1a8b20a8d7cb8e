"""Remote configuration applied at start-up.

The shop's desired configuration (``cfg/desired``) is checked by
:class:`~sync.inbound.Inbound` when it arrives and, if accepted, stored in the
ledger's ``sync_docs``. It takes effect at the next start (under systemd the daemon
restarts itself for it once the till is idle; see ``Daemon.idle``): :func:`apply_desired`
lays the stored values over the file configuration and validates the result as a
whole, exactly as a file is validated. Protected keys are dropped again (a stored
document is not trusted blindly); if the merged configuration is invalid, nothing
is applied and the file configuration stays in force. The outcome is journaled
once per version (``config.applied``) and reported to the shop on ``cfg/reported``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, Literal

from appliance.config import Config, InvalidConfigError, merge_config
from appliance.ledger import Ledger
from sync.inbound import PROTECTED_KEYS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AppliedConfig:
    """The configuration to run with, and what became of the stored remote values."""

    config: Config
    version: int = 0
    status: Literal["none", "applied", "rejected"] = "none"
    values: dict[str, Any] = field(default_factory=dict)
    errors: tuple[str, ...] = ()

    def report(self, time: str) -> dict[str, Any] | None:
        """The ``config-reported`` document, or None when there was nothing to apply."""
        if self.status == "none":
            return None
        doc: dict[str, Any] = {"version": self.version, "status": self.status, "time": time}
        if self.status == "applied":
            doc["values"] = self.values
        if self.errors:
            doc["errors"] = list(self.errors)
        return doc


def stored_desired(ledger: Ledger) -> tuple[int, dict[str, Any]] | None:
    """(version, values) of the accepted remote configuration, or None."""
    row = ledger.conn.execute("SELECT version, body FROM sync_docs WHERE name = 'config'").fetchone()
    if row is None or row[1] is None:
        return None
    values = json.loads(row[1])
    return int(row[0]), dict(values) if isinstance(values, dict) else {}


def apply_desired(config: Config, ledger: Ledger, *, time: str, environ: dict[str, str] | None = None) -> AppliedConfig:
    """Merge the stored remote configuration over ``config``; journal the outcome of a new version."""
    stored = stored_desired(ledger)
    if stored is None:
        return AppliedConfig(config)
    version, values = stored
    refused = tuple(f"{key} cannot be set remotely" for key in values if key in PROTECTED_KEYS)
    kept = {k: v for k, v in values.items() if k not in PROTECTED_KEYS}
    try:
        merged = merge_config(config, kept, source=f"remote config version {version}", environ=environ)
    except InvalidConfigError as exc:
        log.warning("remote config version %d not applied: %s", version, exc)
        outcome = AppliedConfig(config, version, "rejected", {}, tuple(exc.problems) + refused)
    else:
        log.info("remote config version %d applied: %s", version, ", ".join(sorted(kept)) or "no values")
        outcome = AppliedConfig(merged, version, "applied", kept, refused)
    last = ledger.conn.execute(
        "SELECT payload FROM journal WHERE type = 'config.applied' ORDER BY seq DESC LIMIT 1"
    ).fetchone()
    entry = {"version": version, "status": outcome.status, "values": outcome.values, "errors": list(outcome.errors)}
    if last is None or json.loads(last[0]) != entry:
        with ledger.transaction("journaling applied config") as tx:
            tx.journal("config.applied", entry, time=time)
    return outcome
