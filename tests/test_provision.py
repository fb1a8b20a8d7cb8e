"""Provisioning files, first-boot enrollment over a real Mosquitto, and token handling."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta
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
    assert server.wait_ready()
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
    path = boot_file(tmp_path, broker, token, ssid="shop-wifi", psk="secret passphrase")
    data = tmp_path / "data"
    done = provision.apply(path, data, lambda p, csr: enroll(p, csr, timeout=10))
    assert done == {"store_id": "berlin-1", "device_id": "till-3", "brokers": [broker.url]}
    ident = data / "identity"
    assert stat.S_IMODE(ident.stat().st_mode) == 0o700
    assert stat.S_IMODE((ident / "key.pem").stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate((ident / "cert.pem").read_bytes())
    assert cert.subject.rfc4514_string() == "CN=berlin-1/till-3,O=berlin-1"
    assert cert.issuer == x509.load_pem_x509_certificate((ident / "ca.pem").read_bytes()).subject
    # the token and the Wi-Fi key are gone from the boot partition and were never copied anywhere
    assert token not in path.read_text() and "secret passphrase" not in path.read_text()
    assert provision.load(path).enrollment_token is None
    for f in data.rglob("*"):
        if f.is_file():
            assert token.encode() not in f.read_bytes(), f
            assert b"secret passphrase" not in f.read_bytes(), f
    # the Wi-Fi network was stored (as its derived key) before the file lost it
    stored = provision.stored_settings(data)
    assert stored is not None and stored.wifi is not None and stored.wifi.ssid == "shop-wifi"
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


def test_repeated_request_gets_the_same_certificate(tmp_path: Path, hub: EnrollmentAuthority) -> None:
    """A device that missed the answer asks again with the same key and gets the same certificate."""
    p = provision.Provisioning("berlin-1", "till-3", (), None, "Europe/Berlin", "de_DE", {})
    token = hub.issue_token("berlin-1", "till-3")
    _, csr = provision.generate_identity(p)
    first = hub.sign("berlin-1", "till-3", token, csr)
    assert hub.sign("berlin-1", "till-3", token, csr) == first
    _, other = provision.generate_identity(p)
    with pytest.raises(ProvisionError, match="already used"):
        hub.sign("berlin-1", "till-3", token, other)


def test_enrollment_service_started_after_the_till(tmp_path: Path, broker: Mosquitto) -> None:
    """The till keeps asking until the hub's enrollment service comes up."""
    import threading

    authority = EnrollmentAuthority(tmp_path / "hub")
    token = authority.issue_token("berlin-1", "till-3")
    outcome: list[object] = []
    worker = threading.Thread(target=lambda: outcome.append(provision.apply(
        boot_file(tmp_path, broker, token), tmp_path / "a", lambda p, c: enroll(p, c, timeout=30))))  # fmt: skip
    worker.start()
    time.sleep(1.0)  # the till's first request finds nobody listening
    server = EnrollmentServer(authority, broker.url)
    try:
        worker.join(40)
        assert outcome and outcome[0] == {"store_id": "berlin-1", "device_id": "till-3", "brokers": [broker.url]}
    finally:
        server.close()


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
        ('[provision]\nstore_id = "b"\ndevice_id = "t"\nbrokers = ["mqtt://h"]\ntimezone = "localtime"\n',
         "unknown time zone 'localtime'"),
        ('[provision]\nstore_id = "b"\ndevice_id = "t"\nbrokers = ["mqtt://h"]\nlocale = "de_DX"\n',
         "locale 'de_DX' is not one the image has; did you mean 'de_DE'?"),
        ('[provision]\nstore_id = "b"\ndevice_id = "t"\nbrokers = ["mqtt://h"]\n[wifi]\npsk = "long enough"\n',
         "[wifi] ssid must be 1-32 bytes"),
        (f'[provision]\nstore_id = "b"\ndevice_id = "t"\nbrokers = ["mqtt://h"]\n[wifi]\nssid = "{"x" * 33}"\n',
         "[wifi] ssid must be 1-32 bytes"),
        ('[provision]\nstore_id = "b"\ndevice_id = "t"\nbrokers = ["mqtt://h"]\n[wifi]\nssid = "s"\ncountry = "de"\n',
         "country must be a two-letter ISO 3166 code like 'DE', got 'de'"),
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


# -- system settings (tillbox-settings.service, early boot) ----------------------------------------


@pytest.mark.parametrize("psk", ["short", "x" * 64, "tab\there-ok?", "ünïcode-passphrase"])
def test_wifi_key_errors_never_quote_the_key(psk: str) -> None:
    text = f'[provision]\nstore_id = "b"\ndevice_id = "t"\nbrokers = ["mqtt://h"]\n[wifi]\nssid = "s"\npsk = "{psk}"\n'
    with pytest.raises(ProvisionError, match="psk must be") as exc:
        provision.parse(text)
    assert psk not in str(exc.value)


def test_wifi_passphrase_becomes_the_wpa_psk() -> None:
    # IEEE 802.11i-2004, annex H.4.1: passphrase "password", SSID "IEEE"
    net = provision.WifiNetwork.from_table({"ssid": "IEEE", "psk": "password"})
    assert net.psk_hex == "f42c6fc52df0ebef9ebb4b90b38a5f902e83fe1b135a70e23aed762e9710a12e"
    raw = "AB" * 32
    assert provision.WifiNetwork.from_table({"ssid": "x", "psk": raw}).psk_hex == raw.lower()
    assert provision.WifiNetwork.from_table({"ssid": "cafe", "psk": ""}).psk_hex is None


def _network_block(conf: str) -> dict[str, str]:
    body = conf.split("network={\n", 1)[1].split("\n}", 1)[0]
    return dict(line.strip().split("=", 1) for line in body.splitlines())


def test_wpa_supplicant_conf() -> None:
    ssid = 'Café "Nord" = 1'
    net = provision.WifiNetwork.from_table({"ssid": ssid, "psk": "password", "country": "DE"})
    conf = provision.wpa_supplicant_conf(net)
    assert "country=DE" in conf.splitlines() and "update_config=0" in conf.splitlines()
    block = _network_block(conf)
    assert bytes.fromhex(block["ssid"]).decode() == ssid, "the SSID is hex: no quoting can break the file"
    assert block["key_mgmt"] == "WPA-PSK" and block["psk"] == net.psk_hex and "password" not in conf
    assert block["scan_ssid"] == "1", "hidden networks are found too"
    open_net = _network_block(provision.wpa_supplicant_conf(provision.WifiNetwork("guest", None)))
    assert open_net["key_mgmt"] == "NONE" and "psk" not in open_net


@pytest.fixture
def zoneinfo_dir() -> Path:
    """A real tz database (the tzdata wheel's), standing in for /usr/share/zoneinfo."""
    import importlib.resources

    return Path(str(importlib.resources.files("tzdata.zoneinfo")))


def _settings_file(path: Path, **changes: object) -> Path:
    base = provision.Provisioning("berlin-1", "till-3", ("mqtt://hub",), "t" * 24, "Europe/Berlin", "de_DE",
                                  {"ssid": "shop", "psk": "correct horse", "country": "DE"})  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(provision.render(replace(base, **changes)))  # type: ignore[arg-type]
    return path


def test_boot_settings_store_apply_and_survive_the_file(tmp_path: Path, zoneinfo_dir: Path) -> None:
    from zoneinfo import ZoneInfo

    boot, data, run = tmp_path / "boot" / "tillbox-provision.toml", tmp_path / "data", tmp_path / "run"
    data.mkdir(mode=0o700)
    machine_id = tmp_path / "machine-id"
    machine_id.write_text("0123456789abcdef0123456789abcdef\n")
    _settings_file(boot)
    settings = provision.boot_settings(boot, data, run, zoneinfo=zoneinfo_dir, machine_id=machine_id)
    assert (settings.timezone, settings.lang) == ("Europe/Berlin", "de_DE.UTF-8")

    # what /etc/localtime resolves to is the provisioned zone
    with (run / "localtime").open("rb") as fh:
        zone = ZoneInfo.from_file(fh)
    assert datetime(2024, 1, 15, 12, tzinfo=zone).utcoffset() == timedelta(hours=1)
    assert (run / "localtime").resolve() == (zoneinfo_dir / "Europe" / "Berlin").resolve()
    assert (run / "timezone").read_text() == "Europe/Berlin\n"
    assert (run / "locale.conf").read_text() == "LANG=de_DE.UTF-8\n"
    assert (run / "environment").read_text() == "TZ=Europe/Berlin\nLANG=de_DE.UTF-8\n"
    wpa = run / "wpa_supplicant-wlan0.conf"
    assert stat.S_IMODE(wpa.stat().st_mode) == 0o600 and "correct horse" not in wpa.read_text()
    assert bytes.fromhex(_network_block(wpa.read_text())["ssid"]) == b"shop"

    # stored root-only; the key left the boot partition, the token did not (enrollment needs it)
    system = data / provision.SYSTEM_DIR
    assert stat.S_IMODE(system.stat().st_mode) == 0o700
    assert stat.S_IMODE((system / provision.SETTINGS_FILE).stat().st_mode) == 0o600
    assert "correct horse" not in boot.read_text() and provision.load(boot).enrollment_token == "t" * 24
    assert (system / provision.MACHINE_ID_FILE).read_text() == "0123456789abcdef0123456789abcdef\n"
    assert not (data / provision.ERROR_FILE).exists()

    # next boot: a new (transient) machine id does not replace the stored one; with the file gone
    # the stored settings still apply, Wi-Fi included
    machine_id.write_text("fedcba9876543210fedcba9876543210\n")
    boot.unlink()
    shutil.rmtree(run)
    again = provision.boot_settings(boot, data, run, zoneinfo=zoneinfo_dir, machine_id=machine_id)
    assert again == settings
    assert wpa.read_text() == provision.wpa_supplicant_conf(settings.wifi)  # type: ignore[arg-type]
    assert provision.keep_machine_id(data, machine_id) == "0123456789abcdef0123456789abcdef"

    # a later file without [wifi] changes the zone and keeps the network
    _settings_file(boot, timezone="America/New_York", locale="en_US", wifi={})
    later = provision.boot_settings(boot, data, run, zoneinfo=zoneinfo_dir, machine_id=machine_id)
    assert (later.timezone, later.locale, later.wifi) == ("America/New_York", "en_US", settings.wifi)
    assert (run / "locale.conf").read_text() == "LANG=en_US.UTF-8\n"


def test_a_bad_file_is_reported_and_the_stored_settings_still_apply(tmp_path: Path, zoneinfo_dir: Path) -> None:
    boot, data, run = tmp_path / "boot.toml", tmp_path / "data", tmp_path / "run"
    _settings_file(boot, wifi={})
    provision.boot_settings(boot, data, run, zoneinfo=zoneinfo_dir, machine_id=tmp_path / "none")
    boot.write_text(boot.read_text().replace("Europe/Berlin", "Europe/Atlantis"))
    with pytest.raises(ProvisionError, match="unknown time zone 'Europe/Atlantis'"):
        provision.boot_settings(boot, data, run, zoneinfo=zoneinfo_dir, machine_id=tmp_path / "none")
    assert "unknown time zone 'Europe/Atlantis'" in (data / provision.ERROR_FILE).read_text()
    assert (run / "timezone").read_text() == "Europe/Berlin\n", "the stored settings still apply"
    assert not (run / "wpa_supplicant-wlan0.conf").exists()
    assert not (data / provision.SYSTEM_DIR / provision.MACHINE_ID_FILE).exists(), "no valid id to keep"
    # a zone the Python tz database knows but the system's does not
    thin = tmp_path / "zoneinfo"
    (thin / "Europe").mkdir(parents=True)
    shutil.copy(zoneinfo_dir / "Europe" / "Berlin", thin / "Europe" / "Berlin")
    boot.write_text(boot.read_text().replace("Europe/Atlantis", "Asia/Tokyo"))
    with pytest.raises(ProvisionError, match="'Asia/Tokyo' is not in this system's time zone data"):
        provision.boot_settings(boot, data, run, zoneinfo=thin, machine_id=tmp_path / "none")
    assert (run / "localtime").resolve() == (thin / "Europe" / "Berlin").resolve()


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a directory's owner needs root")
def test_stored_settings_the_daemon_could_have_replaced_are_refused(tmp_path: Path, zoneinfo_dir: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    provision.store_settings(data, provision.SystemSettings("Europe/Berlin", "de_DE"))
    system = data / provision.SYSTEM_DIR
    os.chown(system, 901, 901)  # what the daemon (which owns DATA_DIR) could put in its place
    with pytest.raises(ProvisionError, match="must belong to uid 0 with mode 0700"):
        provision.stored_settings(data)
    os.chown(system, 0, 0)
    os.chown(system / provision.SETTINGS_FILE, 901, 901)
    with pytest.raises(ProvisionError, match="belongs to another user"):
        provision.stored_settings(data)
    shutil.rmtree(system)
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    system.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ProvisionError, match="is not a directory"):
        provision.stored_settings(data)
    # the boot still gets its defaults, and the technician a message
    boot = tmp_path / "missing.toml"
    with pytest.raises(ProvisionError, match="is not a directory"):
        provision.boot_settings(boot, data, tmp_path / "run", zoneinfo=zoneinfo_dir, machine_id=tmp_path / "x")
    assert (tmp_path / "run" / "timezone").read_text() == "UTC\n"


def test_stored_settings_are_validated_like_a_file(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    provision.store_settings(data, provision.SystemSettings())
    path = data / provision.SYSTEM_DIR / provision.SETTINGS_FILE
    good = json.loads(path.read_text())
    assert provision.stored_settings(data) == provision.SystemSettings()
    for bad in ({**good, "timezone": "../../etc/passwd"}, {**good, "locale": "xx_XX"}, {**good, "extra": 1},
                {**good, "wifi": {"ssid": "s", "psk_hex": "zz", "country": None}}, [1]):  # fmt: skip
        path.write_text(json.dumps(bad))
        with pytest.raises(ProvisionError, match="not valid stored settings"):
            provision.stored_settings(data)


@pytest.mark.skipif(os.geteuid() != 0, reason="changing owners needs root")
def test_apply_as_root_gives_what_it_writes_to_the_data_directory_owner(tmp_path: Path, broker: Mosquitto,
                                                                       hub: EnrollmentAuthority) -> None:  # fmt: skip
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    os.chown(data, 901, 902)
    token = hub.issue_token("berlin-1", "till-3")
    provision.apply(boot_file(tmp_path, broker, token), data, lambda p, c: enroll(p, c, timeout=10))
    for path in (data / "identity", data / "identity" / "key.pem", data / "identity" / "device.json",
                 data / "tillbox.toml"):  # fmt: skip
        assert (path.stat().st_uid, path.stat().st_gid) == (901, 902), path
    system = data / provision.SYSTEM_DIR
    assert (system.stat().st_uid, stat.S_IMODE(system.stat().st_mode)) == (0, 0o700), "settings stay root's"
    # a failure's message is the daemon's to read too
    other = provision.Provisioning("hamburg-1", "till-1", (broker.url,), None, "UTC", "en_US", {})
    (tmp_path / "other.toml").write_text(provision.render(other))
    with pytest.raises(ProvisionError, match="already provisioned"):
        provision.apply(tmp_path / "other.toml", data, lambda p, c: pytest.fail("no"))
    assert (data / provision.ERROR_FILE).stat().st_uid == 901


def test_settings_command(tmp_path: Path) -> None:
    boot, data, run = tmp_path / "boot.toml", tmp_path / "data", tmp_path / "run"
    _settings_file(boot)
    cmd = [sys.executable, "-m", "appliance.provision", "settings", "--file", str(boot), "--data-dir", str(data),
           "--run-dir", str(run)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "tillbox: time zone Europe/Berlin, locale de_DE.UTF-8, Wi-Fi 'shop'\n"
    assert "correct horse" not in out.stdout + out.stderr
    boot.write_text("[provision\n")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2 and "invalid TOML" in out.stderr
    assert (run / "wpa_supplicant-wlan0.conf").exists(), "the stored network still applies"
