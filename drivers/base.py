"""What every device driver shares: health reporting and a mechanical lifecycle.

A device that fails is marked ``degraded`` or ``unavailable`` with a reason; it
never takes the till down. Health changes go to listeners (the device manager,
which forwards them to the UI and MQTT); a change is logged once, not per poll.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

log = logging.getLogger(__name__)


class Health(StrEnum):
    """Coarse state of a device."""

    OK = "ok"
    DEGRADED = "degraded"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class HealthState:
    """A device's health and why."""

    device: str
    health: Health
    reason: str = ""


HealthListener = Callable[[HealthState], None]


def simulated() -> bool:
    """True when ``TILLBOX_DEVICES=sim`` forces simulators everywhere."""
    return os.environ.get("TILLBOX_DEVICES", "").strip().lower() == "sim"


class Device:
    """Base of all drivers: a name, a health state, listeners and idempotent close()."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._health = HealthState(name, Health.OK)
        self._listeners: list[HealthListener] = []
        self._lock = threading.Lock()
        self._closed = False

    @property
    def health(self) -> HealthState:
        return self._health

    @property
    def closed(self) -> bool:
        return self._closed

    def on_health(self, listener: HealthListener) -> None:
        """Call ``listener`` on every health change (from whatever thread detected it)."""
        self._listeners.append(listener)

    def set_health(self, health: Health, reason: str = "") -> None:
        """Change health; logs and notifies only when the state actually changes."""
        with self._lock:
            if self._health.health == health and self._health.reason == reason:
                return
            previous = self._health.health
            self._health = HealthState(self.name, health, reason)
            state = self._health
        if health != previous:
            if health == Health.OK:
                log.info("%s recovered", self.name)
            else:
                log.warning("%s is %s: %s", self.name, health, reason)
        for listener in list(self._listeners):
            try:
                listener(state)
            except Exception:
                log.exception("health listener for %s failed", self.name)

    def close(self) -> None:
        """Release the device; safe to call twice."""
        self._closed = True

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
