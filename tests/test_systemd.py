"""systemd units: they verify, the daemon unit is hardened, the notify protocol works."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from appliance.sdnotify import notify, watchdog_interval

UNITS = Path(__file__).parent.parent / "systemd"
needs_systemd = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")


@needs_systemd
@pytest.mark.parametrize("unit", sorted(p.name for p in UNITS.glob("*.service")))
def test_units_verify(unit: str, tmp_path: Path) -> None:
    # Executables of the appliance image do not exist on the build machine: point them at /bin/sh.
    text = (UNITS / unit).read_text()
    text = text.replace("/opt/tillbox/current/bin/tillbox", "/bin/sh").replace("/usr/bin/cage", "/bin/sh")
    (tmp_path / unit).write_text(text)
    out = subprocess.run(["systemd-analyze", "verify", str(tmp_path / unit)], capture_output=True, text=True,
                         check=False)  # fmt: skip
    ignore = ("Failed to create",)  # units of the image that are not installed here
    problems = [ln for ln in (out.stdout + out.stderr).splitlines() if unit in ln and not any(i in ln for i in ignore)]
    assert problems == []


@needs_systemd
def test_daemon_unit_security_score() -> None:
    out = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(UNITS / "tillbox.service")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    match = re.search(r"Overall exposure level for tillbox.service: ([0-9.]+)", out.stdout)
    assert match, out.stdout[-500:]
    assert float(match.group(1)) <= 2.5


def test_daemon_unit_essentials() -> None:
    text = (UNITS / "tillbox.service").read_text()
    for line in ("Type=notify", "Restart=always", "WatchdogSec=", "User=tillbox", "StateDirectory=tillbox",
                 "ProtectSystem=strict", "NoNewPrivileges=yes", "SystemCallFilter=@system-service",
                 "DeviceAllow=char-input rw", "DeviceAllow=char-gpiochip rw"):  # fmt: skip
        assert line in text


def test_notify_reaches_the_socket(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        assert notify("READY=1", environ={"NOTIFY_SOCKET": str(path)})
        assert server.recv(100) == b"READY=1"
    assert not notify("READY=1", environ={})
    assert not notify("READY=1", environ={"NOTIFY_SOCKET": str(tmp_path / "gone")})


def test_watchdog_interval() -> None:
    assert watchdog_interval(environ={"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval(environ={}) is None
    assert watchdog_interval(environ={"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
