"""Payment terminals. The simulator ships in the package for demo mode and tests.

A terminal returns approval references only; card numbers never reach the appliance.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass

from appliance.tenders import CardResult


@dataclass(frozen=True)
class Outcome:
    """A scripted terminal outcome for the simulator."""

    approved: bool = True
    message: str = ""
    scheme: str = "VISA"


class SimulatedTerminal:
    """A terminal that approves, or follows a script of outcomes (``script(Outcome(False, "declined"))``)."""

    def __init__(self) -> None:
        self._script: deque[Outcome] = deque()
        self._counter = itertools.count(1)
        self.history: list[tuple[str, int, str, CardResult]] = []

    def script(self, *outcomes: Outcome) -> None:
        """Queue outcomes for the next authorisations."""
        self._script.extend(outcomes)

    def authorize(self, amount: int, currency: str, reference: str) -> CardResult:
        outcome = self._script.popleft() if self._script else Outcome()
        n = next(self._counter)
        result = CardResult(
            approved=outcome.approved,
            amount=amount if outcome.approved else 0,
            reference=f"SIM{n:06d}" if outcome.approved else "",
            approval_code=f"{(n * 7919) % 1_000_000:06d}" if outcome.approved else "",
            scheme=outcome.scheme,
            message=outcome.message or ("approved" if outcome.approved else "declined"),
        )
        self.history.append(("authorize", amount, reference, result))
        return result

    def refund(self, amount: int, currency: str, reference: str) -> CardResult:
        outcome = self._script.popleft() if self._script else Outcome()
        n = next(self._counter)
        result = CardResult(
            approved=outcome.approved,
            amount=amount if outcome.approved else 0,
            reference=f"SIMR{n:06d}" if outcome.approved else "",
            scheme=outcome.scheme,
            message=outcome.message or ("refunded" if outcome.approved else "declined"),
        )
        self.history.append(("refund", amount, reference, result))
        return result

    def reverse(self, reference: str) -> CardResult:
        result = CardResult(approved=True, amount=0, reference=reference, message="reversed")
        self.history.append(("reverse", 0, reference, result))
        return result
