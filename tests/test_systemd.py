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
    for exe in ("/opt/tillbox/current/bin/tillbox", "/opt/tillbox/current/bin/python", "/usr/bin/cage"):
        text = text.replace(exe, "/bin/sh")
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


# -- udev rules: every USB id is documented and was checked --------------------------------------

RULES = UNITS / "99-tillbox.rules"
# The names under which the ids in the rules were checked: the usb.ids list (what lsusb shows),
# or for 2e8a:0005 Raspberry Pi's own USB PID list, which usb.ids does not carry yet.
CHECKED_IDS = {
    "04b8": "Seiko Epson Corp.",
    "0519": "Star Micronics Co., Ltd",
    "0416:5011": "Virtual Com Port",
    "05e0": "Symbol Technologies",
    "0c2e": "Metrologic Instruments",
    "0536": "Hand Held Products (Welch Allyn, Inc.)",
    "05f9": "PSC Scanning, Inc.",
    "080c": "Datalogic S.p.A.",
    "0801": "MagTek",
    "0acd": "ID Tech",
    "0c27": "RFIDeas, Inc",
    "0b00": "INGENICO",
    "11ca": "VeriFone Inc",
    "0eb8": "Mettler Toledo",
    "0403:6001": "FT232 Serial (UART) IC",
    "2e8a:0005": "Raspberry Pi Pico MicroPython firmware (CDC)",
}
_SOURCE = re.compile(r'\((?:usb\.ids|Raspberry Pi USB PID list): ([0-9a-f]{4}(?::[0-9a-f]{4})?) "([^"]+)"\)$')
_ID = re.compile(r'ATTRS?\{(idVendor|idProduct)\}=="([^"]*)"')


def rules_with_their_comment() -> list[tuple[str, str]]:
    """(rule, the comment line right above its block of rules) for every rule line."""
    out, comment = [], ""
    for line in RULES.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            comment = line
        elif line.strip():
            out.append((line, comment))
        else:
            comment = ""
    return out


def test_every_usb_id_in_the_udev_rules_is_well_formed_and_documented() -> None:
    rules = rules_with_their_comment()
    assert len(rules) > 10
    used = set()
    for rule, comment in rules:
        ids = dict(_ID.findall(rule))
        if not ids:
            continue
        assert set(ids) <= {"idVendor", "idProduct"} and "idVendor" in ids, rule
        assert all(re.fullmatch("[0-9a-f]{4}", v) for v in ids.values()), rule  # lower-case hex, as sysfs has it
        key = ids["idVendor"] + (f":{ids['idProduct']}" if "idProduct" in ids else "")
        source = _SOURCE.search(comment)
        assert source, f"no comment naming the device and where its id was checked above: {rule}"
        assert source.groups() == (key, CHECKED_IDS.get(key)), (rule, comment)
        used.add(key)
    assert used == set(CHECKED_IDS)  # no checked id without its rule, no rule without its check
