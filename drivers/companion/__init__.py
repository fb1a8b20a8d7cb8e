"""Self-checkout companion board: a Pico on USB driving the light tower, help button and I/O.

``protocol`` is the wire codec shared with the firmware; ``host`` the driver; ``sim`` runs the
real firmware on the MicroPython unix port; ``build`` compiles and flashes ``firmware/``.
"""

from __future__ import annotations

from typing import Any

from drivers.base import simulated
from drivers.companion.host import (
    DEFAULT_PATTERNS,
    AttendantCall,
    BoardInfo,
    CompanionBoard,
    CompanionKicker,
    CompanionSensor,
    CompanionSettings,
    InputChange,
    Light,
    LightState,
    LinkStats,
    Pattern,
    UsbMatch,
    find_port,
)

__all__ = [
    "DEFAULT_PATTERNS",
    "AttendantCall",
    "BoardInfo",
    "CompanionBoard",
    "CompanionKicker",
    "CompanionSensor",
    "CompanionSettings",
    "InputChange",
    "Light",
    "LightState",
    "LinkStats",
    "Pattern",
    "UsbMatch",
    "find_port",
    "open_companion",
]


def open_companion(port: str = "", **kwargs: Any) -> CompanionBoard:
    """The companion board on ``port`` (found by USB VID/PID when empty); with
    ``TILLBOX_DEVICES=sim`` the firmware simulated on the MicroPython unix port."""
    if simulated():
        from drivers.companion.sim import SimulatedCompanion

        return SimulatedCompanion(**kwargs)
    return CompanionBoard(port=port, **kwargs)
