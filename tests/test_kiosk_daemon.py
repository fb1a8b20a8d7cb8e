"""The daemon as a process (SIGTERM, demo, ``tillbox scan``), and the pure parts of the kiosk: sessions, the
kiosk key, formatting, quick cash and secret masking."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.money import Currency
from appliance.staff import Action, Approval, AuthError, Role, StaffMember
from kiosk_ui.auth import Approvals, KioskKey, Sessions, Unauthenticated, boot_time
from kiosk_ui.views import Formatter, mask_secrets, quick_cash

EUR = Currency.of("EUR")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_healthy(url: str, proc: subprocess.Popen[str], timeout: float = 20) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            res = httpx.get(url + "/api/v1/health", timeout=1)
            if res.status_code == 200:
                return dict(res.json())
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise AssertionError("the daemon did not become healthy")


def _wait_file(path: Path, timeout: float = 20) -> Path:
    """The daemon announces itself just after it starts serving; under load that can lag the first answer."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.02)
    return path


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "appliance.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})  # fmt: skip


def test_daemon_shuts_down_cleanly_on_sigterm(tmp_path: Path) -> None:
    port = _port()
    (tmp_path / "tillbox.toml").write_text(f"[ui]\nport = {port}\n", encoding="utf-8")
    proc = _cli("daemon", "--data-dir", str(tmp_path), env={"TILLBOX_DEVICES": "sim"})
    try:
        health = _wait_healthy(f"http://127.0.0.1:{port}", proc)
        assert health["status"] in ("ok", "degraded")
        info = json.loads(_wait_file(tmp_path / "daemon.json").read_text())
        assert info == {"url": f"http://127.0.0.1:{port}", "pid": proc.pid}
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=1)


def test_demo_prints_how_to_scan_and_tillbox_scan_feeds_it(tmp_path: Path) -> None:
    port = _port()
    data = tmp_path / "demo"
    proc = _cli("demo", "--port", str(port), "--data-dir", str(data))
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url, proc)
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(8)]
        text = "".join(lines)
        assert f"{url}/cashier" in text and f"tillbox scan 4006381333931 --data-dir {data}" in text
        key = (data / "kiosk.key").read_text().strip()
        assert f"{url}/self-checkout#key={key}" in text
        token = httpx.post(url + "/api/v1/session/pin", json={"staff_id": "ann", "pin": "1234"}).json()["token"]
        scan = subprocess.run([sys.executable, "-m", "appliance.cli", "scan", "4006381333931", "--data-dir", str(data)],
                              capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
        assert scan.returncode == 0, scan.stderr
        assert scan.stdout.strip() == "fed 4006381333931 to the simulated scanner"
        cart: dict[str, object] = {}
        for _ in range(100):
            cart = httpx.get(url + "/api/v1/cart", headers={"Authorization": f"Bearer {token}"}).json()
            if cart["lines"]:
                break
            time.sleep(0.05)
        assert [ln["name"] for ln in cart["lines"]] == ["Sparkling Water 1.5l"]  # type: ignore[attr-defined]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=15)
    assert proc.returncode == 0
    bad = subprocess.run([sys.executable, "-m", "appliance.cli", "scan", "1", "--data-dir", str(tmp_path / "none")],
                         capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    assert bad.returncode == 1 and "no running daemon" in bad.stderr


# -- sessions and approvals ------------------------------------------------------------------------


class Mono:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


ANN = StaffMember("ann", "Ann", Role.CASHIER)


def test_staff_sessions_idle_out_device_sessions_do_not() -> None:
    mono = Mono()
    sessions = Sessions(idle_seconds=60, monotonic=mono)
    staff = sessions.open(ANN)
    lane = sessions.open(StaffMember("self-checkout", "Lane", Role.SELF_CHECKOUT), "self_checkout")
    mono.t = 59
    assert sessions.get(staff.token) is staff  # touching it restarts the idle time
    mono.t = 118
    assert sessions.peek(staff.token) is staff
    mono.t = 120
    with pytest.raises(Unauthenticated, match="expired"):
        sessions.get(staff.token)
    with pytest.raises(Unauthenticated, match="unknown"):
        sessions.get(staff.token)  # gone for good
    mono.t = 10_000
    assert sessions.get(lane.token) is lane
    with pytest.raises(Unauthenticated, match="log in first"):
        sessions.get(None)
    assert staff.allows(Action.SELL) and not staff.allows(Action.REFUND)
    display = sessions.open(StaffMember("d", "Display", Role.SELF_CHECKOUT), "display")
    assert display.role is None and not display.allows(Action.SELL)


def test_approval_tokens_are_bound_single_use_and_expire() -> None:
    mono = Mono()
    sessions = Sessions(idle_seconds=60, monotonic=mono)
    mine, theirs = sessions.open(ANN), sessions.open(ANN)
    now = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
    approvals = Approvals()
    approval = Approval(Action.VOID_SALE, "ann", "sam", now + timedelta(seconds=60))
    token = approvals.issue(mine, approval, now)
    with pytest.raises(AuthError):
        approvals.take(theirs, token, Action.VOID_SALE, now)
    with pytest.raises(AuthError, match="for void_sale, not refund"):
        approvals.take(mine, token, Action.REFUND, now)
    assert approvals.take(mine, token, Action.VOID_SALE, now) is approval
    with pytest.raises(AuthError, match="already used"):
        approvals.take(mine, token, Action.VOID_SALE, now)
    late = approvals.issue(mine, approval, now)
    with pytest.raises(AuthError, match="expired"):
        approvals.take(mine, late, Action.VOID_SALE, now + timedelta(seconds=61))


def test_kiosk_key_is_kept_within_a_boot_and_private(tmp_path: Path) -> None:
    path = tmp_path / "kiosk.key"
    first = KioskKey(path)
    assert path.stat().st_mode & 0o777 == 0o600 and len(first.value) >= 40
    second = KioskKey(path)
    if boot_time() is not None:
        assert second.value == first.value  # a daemon restart keeps the screens paired
        os.utime(path, (boot_time() - 10, boot_time() - 10))  # type: ignore[operator]
        assert KioskKey(path).value != first.value  # written before this boot: renewed
    assert second.matches(second.value) and not second.matches(second.value[:-1] + "x")


# -- formatting ------------------------------------------------------------------------------------


def test_money_and_dates_follow_the_locale() -> None:
    de = Formatter(EUR, "de_DE", "Europe/Berlin")
    en = Formatter(Currency.of("USD"), "en_US", "America/New_York")
    assert de.money(123456) == "1.234,56\xa0€"
    assert en.money(123456) == "$1,234.56"
    assert de.qty(Decimal("0.750"), "kg") == "0,75 kg" and en.qty(Decimal("2"), "each") == "2"
    moment = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
    assert de.when(moment) == "02.03.26, 10:30"
    assert en.when("2026-03-02T09:30:00.000Z") == "3/2/26, 4:30\u202fAM"


@given(st.integers(min_value=1, max_value=10**7))
def test_quick_cash_offers_exact_then_round_notes(due: int) -> None:
    options = quick_cash(due, EUR)
    assert options[0] == due and 1 <= len(options) <= 4
    assert options == sorted(set(options))
    assert all(o >= due for o in options)
    assert all(o % 100 == 0 for o in options[1:])
    assert quick_cash(0, EUR) == []


def test_secrets_are_masked() -> None:
    doc = {"sync": {"username": "till", "password_file": "mqtt.pw", "tls_key_file": "", "keepalive": 60,
                    "brokers": ["mqtts://user:pw@broker.example:8883", "mqtt://broker2"]}}  # fmt: skip
    masked = mask_secrets(doc)
    assert masked["sync"]["username"] == "********" and masked["sync"]["password_file"] == "********"
    assert masked["sync"]["tls_key_file"] == "" and masked["sync"]["keepalive"] == 60
    assert masked["sync"]["brokers"] == ["mqtts://********@broker.example:8883", "mqtt://broker2"]
