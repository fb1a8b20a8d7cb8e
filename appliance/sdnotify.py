"""systemd's notify protocol: READY=1, WATCHDOG=1, STATUS=..., STOPPING=1.

A datagram to the socket named by ``$NOTIFY_SOCKET`` (an abstract socket when it
starts with "@"). Outside systemd the variable is unset and every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(message: str, *, environ: dict[str, str] | None = None) -> bool:
    """Send one notification; returns False when not running under systemd or on failure."""
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("systemd notify failed: %s", exc)
        return False
    return True


def watchdog_interval(*, environ: dict[str, str] | None = None) -> float | None:
    """Half the watchdog timeout systemd set for us, in seconds (ping at least that often)."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2_000_000
