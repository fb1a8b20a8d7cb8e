"""Bounded exponential back-off for reconnecting: 1 s, 2 s, 4 s... up to a cap, reset on success."""

from __future__ import annotations

import random
from collections.abc import Callable

#: Jitter comes from a generator of its own: the global one belongs to the application (and to
#: Hypothesis, which notices when another thread moves it).
_JITTER = random.Random()


class Backoff:
    """Reconnect delays that double from ``initial`` up to ``cap``.

    ``jitter`` (0..1) shortens each delay by up to that fraction, so a shop full of
    tills does not reconnect in lockstep after the broker restarts; ``rand`` is
    injectable for deterministic tests.
    """

    def __init__(
        self,
        initial: float = 1.0,
        cap: float = 60.0,
        *,
        jitter: float = 0.0,
        rand: Callable[[], float] = _JITTER.random,
    ) -> None:
        if initial <= 0 or cap < initial:
            raise ValueError(f"back-off needs 0 < initial <= cap, got {initial} and {cap}")
        if not 0 <= jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {jitter}")
        self.initial = initial
        self.cap = cap
        self.jitter = jitter
        self._rand = rand
        self._next = initial
        self.failures = 0

    def next_delay(self) -> float:
        """The delay before the next attempt; each call doubles the following one, up to the cap."""
        delay = self._next
        self._next = min(self._next * 2, self.cap)
        self.failures += 1
        return delay * (1 - self.jitter * self._rand())

    def reset(self) -> None:
        """A connection succeeded: start again from ``initial``."""
        self._next = self.initial
        self.failures = 0
