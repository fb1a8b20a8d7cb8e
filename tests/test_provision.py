"""Provisioning files, first-boot enrollment over a real Mosquitto, and token handling."""

from __future__ import annotations

import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from appliance import provision
from appliance.config import load_config
from appliance.provision import ProvisionError
from sync.enroll import EnrollmentAuthority, EnrollmentServer, enroll
from sync.testing import Mosquitto


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "broker") as b:
        yield b


@pytest.fixture
def hub(tmp_path: Path, broker: Mosquitto) -> Iterator[EnrollmentAuthority]:
    authority = EnrollmentAuthority(tmp_path / "hub")
    server = EnrollmentServer(authority, broker.url)
    yield authority
    server.close()


def boot_file(tmp_path: Path, broker: Mosquitto, token: str | None, **extra: str) -> Path:
    p = provision.Provisioning("berlin-1", "till-3", (broker.url,), token, "Europe/Berlin", "de_DE", extra)
    path = tmp_path / "boot" / "tillbox-provision.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(provision.render(p))
    return path


def test_first_boot_enrolls_and_removes_the_token(tmp_path: Path, broker: Mosquitto,
                                                  hub: EnrollmentAuthority) -> None:  # fmt: skip
    token = hub.issue_token("berlin-1", "till-3")
    path = boot_file(tmp_path, broker, token, ssid="shop-wifi", psk="secret")
    data = tmp_path / "data"
    done = provision.apply(path, data, lambda p, csr: enroll(p, csr, timeout=10))
    assert done == {"store_id": "berlin-1", "device_id": "till-3", "brokers": [broker.url]}
    ident = data / "identity"
    assert stat.S_IMODE(ident.stat().st_mode) == 0o700
    assert stat.S_IMODE((ident / "key.pem").stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate((ident / "cert.pem").read_bytes())
    assert cert.subject.rfc4514_string() == "CN=berlin-1/till-3,O=berlin-1"
    assert cert.issuer == x509.load_pem_x509_certificate((ident / "ca.pem").read_bytes()).subject
    # the token is gone from the boot partition and was never copied anywhere
    assert token not in path.read_text()
    assert provision.load(path).enrollment_token is None
    for f in data.rglob("*"):
        if f.is_file():
            assert token.encode() not in f.read_bytes(), f
    config = load_config(data / "tillbox.toml")
    assert (config.store.id, config.store.device_id, config.store.timezone) == ("berlin-1", "till-3", "Europe/Berlin")
    assert config.sync.enabled and config.sync.brokers == (broker.url,)
    # a second boot is a no-op
    assert provision.apply(path, data, lambda p, csr: pytest.fail("must not enroll twice")) == done


def test_used_token_is_refused(tmp_path: Path, broker: Mosquitto, hub: EnrollmentAuthority) -> None:
    token = hub.issue_token("berlin-1", "till-3")
    provision.apply(boot_file(tmp_path, broker, token), tmp_path / "a", lambda p, c: enroll(p, c, timeout=10))
    again = boot_file(tmp_path, broker, token)
    with pytest.raises(ProvisionError, match="already used"):
        provision.apply(again, tmp_path / "b", lambda p, c: enroll(p, c, timeout=10))
    assert "already used" in (tmp_path / "b" / "provision-error.txt").read_text()
    assert not (tmp_path / "b" / "identity").exists()


def test_unknown_or_foreign_token(tmp_path: Path, broker: Mosquitto, hub: EnrollmentAuthority) -> None:
    with pytest.raises(ProvisionError, match="not recognised"):
        provision.apply(boot_file(tmp_path, broker, "x" * 32), tmp_path / "a",
                        lambda p, c: enroll(p, c, timeout=10))  # fmt: skip
    other = hub.issue_token("berlin-1", "till-9")
    with pytest.raises(ProvisionError, match="another device"):
        provision.apply(boot_file(tmp_path, broker, other), tmp_path / "b", lambda p, c: enroll(p, c, timeout=10))


def test_missing_token(tmp_path: Path, broker: Mosquitto) -> None:
    with pytest.raises(ProvisionError, match="enrollment_token is missing"):
        provision.apply(boot_file(tmp_path, broker, None), tmp_path / "d", lambda p, c: pytest.fail("no"))


def test_no_hub_answering(tmp_path: Path, broker: Mosquitto) -> None:
    with pytest.raises(ProvisionError, match="no answer from the enrollment service"):
        provision.apply(boot_file(tmp_path, broker, "y" * 32), tmp_path / "d",
                        lambda p, c: enroll(p, c, timeout=0.5))  # fmt: skip


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "missing [provision] section"),
        ("[provision\n", "invalid TOML"),
        ('[provision]\nstore_id = "Berlin 1"\ndevice_id = "t"\nbrokers = ["mqtt://h"]\n', "store_id must be"),
        ('[provision]\nstore_id = "b"\ndevice_id = "t"\nbrokers = []\n', "at least one"),
        ('[provision]\nstore_id = "b"\ndevice_id = "t"\nbrokers = ["http://h"]\n', "is not an mqtt"),
        ('[provision]\nstore_id = "b"\ndevice_id = "t"\nbrokers = ["mqtt://h"]\ntimezone = "Mars/Base"\n',
         "unknown time zone"),
        ('[provision]\nstore_id = "b"\ndevice_id = "t"\nbrokers = ["mqtt://h"]\nenrolment_token = "x"\n',
         "did you mean 'enrollment_token'"),
        ('[provision]\nstore_id = "b"\ndevice_id = "t"\nbrokers = ["mqtt://h"]\nenrollment_token = "short"\n',
         "enrollment_token must be"),
        ('[provison]\n', "did you mean 'provision'"),
    ],
)  # fmt: skip
def test_malformed_files(text: str, message: str) -> None:
    with pytest.raises(ProvisionError, match=message.replace("[", r"\[")):
        provision.parse(text)


def test_cli_write_check_and_token(tmp_path: Path, broker: Mosquitto) -> None:
    def tillbox(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "appliance.cli", *args], capture_output=True, text=True,
                              timeout=60, check=False)  # fmt: skip

    out = tillbox("enroll-token", "--store", "s1", "--device", "d1", "--data-dir", str(tmp_path / "hub"))
    token = out.stdout.strip()
    assert out.returncode == 0 and len(token) >= 16
    target = tmp_path / "tillbox-provision.toml"
    out = tillbox("provision", "write", "--store", "s1", "--device", "d1", "--broker", broker.url, "--token", token,
                  "--out", str(target))  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "with a token" in tillbox("provision", "check", str(target)).stdout
    out = tillbox("provision", "write", "--store", "S 1", "--device", "d1", "--broker", broker.url, "--token", token,
                  "--out", str(tmp_path / "bad.toml"))  # fmt: skip
    assert out.returncode == 1 and "store_id must be" in out.stderr
    assert not (tmp_path / "bad.toml").exists()
    # apply against a broker with no enrollment service: a clear message, exit 2
    out = tillbox("provision", "apply", str(target), "--data-dir", str(tmp_path / "dev"), "--timeout", "0.5")
    assert out.returncode == 2 and "no answer from the enrollment service" in out.stderr


def test_reset_retires_identity_and_ledger_for_reprovisioning(tmp_path: Path, broker: Mosquitto,
                                                              hub: EnrollmentAuthority) -> None:  # fmt: skip
    from appliance.ledger import NewEvent
    from appliance.till import open_ledger

    data = tmp_path / "data"
    token = hub.issue_token("berlin-1", "till-3")
    provision.apply(boot_file(tmp_path, broker, token), data, lambda p, c: enroll(p, c, timeout=10))
    config = load_config(data / "tillbox.toml")
    with open_ledger(config, data) as led:
        led.append("note", {}, time="t", events=[NewEvent("tillbox.test", {})])
    with pytest.raises(ProvisionError, match="1 event"):
        provision.reset(data, stamp="s1")
    assert provision.provisioned(data) is not None
    retired = provision.reset(data, force=True, stamp="s2")
    assert provision.provisioned(data) is None
    assert (retired / "identity" / "key.pem").exists() and (retired / "ledger.db").exists()
    # the till can now enroll under a new identity
    other = hub.issue_token("berlin-1", "till-4")
    p = provision.Provisioning("berlin-1", "till-4", (broker.url,), other, "UTC", "en_US", {})
    path = tmp_path / "boot2.toml"
    path.write_text(provision.render(p))
    assert provision.apply(path, data, lambda p, c: enroll(p, c, timeout=10))["device_id"] == "till-4"
    with open_ledger(load_config(data / "tillbox.toml"), data) as led:
        assert led.head()[0] == 0
