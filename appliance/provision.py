"""Provisioning: the technician's file on the boot partition, and first-boot enrollment.

The file (``tillbox-provision.toml``) names the store and device, the shop's brokers,
a one-time enrollment token, and optionally Wi-Fi, time zone and locale. On first
boot the device generates its own key pair, sends a certificate signing request
and the token to the hub's enrollment endpoint over MQTT, stores the identity it
gets back in the data directory (readable only by the daemon), writes its config,
and removes the token from the boot partition.

The system settings (time zone, locale, Wi-Fi) are applied earlier in the boot, before
the network starts, by ``python -m appliance.provision settings`` (tillbox-settings.service):
it stores them in ``DATA_DIR/system/`` (root only), removes the Wi-Fi key from the boot
partition, and writes what the read-only root's ``/etc`` links point at into a runtime
directory (``/run/tillbox-system``). It also keeps the machine id there, which the initrd
hands back to systemd on the next boot.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import os
import re
import sys
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from appliance.errors import ConfigError

SLUG = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
TOKEN = re.compile(r"[A-Za-z0-9_-]{16,128}")
IDENTITY_DIR = "identity"
ERROR_FILE = "provision-error.txt"
#: Root-only directory in the data directory: the stored system settings and the machine id.
SYSTEM_DIR = "system"
SETTINGS_FILE = "settings.json"
MACHINE_ID_FILE = "machine-id"
ZONEINFO = Path("/usr/share/zoneinfo")
#: The glibc locales the image compiles (all UTF-8); ``locale`` in the file must be one of them.
OS_LOCALES = (
    "cs_CZ", "da_DK", "de_AT", "de_CH", "de_DE", "en_AU", "en_CA", "en_GB", "en_IE", "en_US", "es_ES", "fi_FI",
    "fr_BE", "fr_CA", "fr_CH", "fr_FR", "it_CH", "it_IT", "nb_NO", "nl_BE", "nl_NL", "pl_PL", "pt_BR", "pt_PT",
    "sv_SE",
)  # fmt: skip
WIFI_INTERFACE = "wlan0"
_MACHINE_ID = re.compile(r"[0-9a-f]{32}")

_PSK_HEX = re.compile(r"[0-9a-fA-F]{64}")
_PASSPHRASE = re.compile(r"[\x20-\x7e]{8,63}")

_KEYS = {
    "provision": {"store_id", "device_id", "brokers", "enrollment_token", "timezone", "locale"},
    "wifi": {"ssid", "psk", "country"},
}


class ProvisionError(ConfigError):
    """The provisioning file is missing, malformed, or its token was refused."""


@dataclass(frozen=True)
class Provisioning:
    """A validated provisioning file."""

    store_id: str
    device_id: str
    brokers: tuple[str, ...]
    enrollment_token: str | None
    timezone: str = "UTC"
    locale: str = "en_US"
    wifi: Mapping[str, str] = field(default_factory=dict)


def _hint(word: str, options: set[str]) -> str:
    close = difflib.get_close_matches(word, sorted(options), n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def parse(text: str, source: str = "provisioning file") -> Provisioning:
    """Validate provisioning TOML; every problem is named in one :class:`ProvisionError`."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProvisionError(f"{source}: invalid TOML: {exc}") from None
    problems: list[str] = []
    for section, values in data.items():
        if section not in _KEYS:
            problems.append(f"unknown section [{section}]{_hint(section, set(_KEYS))}")
            continue
        if not isinstance(values, dict):
            problems.append(f"[{section}] must be a table")
            continue
        for key in values:
            if key not in _KEYS[section]:
                problems.append(f"unknown key '{key}' in [{section}]{_hint(key, _KEYS[section])}")
    prov = data.get("provision")
    if not isinstance(prov, dict):
        more = f"; {'; '.join(problems)}" if problems else ""
        raise ProvisionError(f"{source}: missing [provision] section{more}")
    for key in ("store_id", "device_id"):
        value = prov.get(key)
        if not isinstance(value, str) or not SLUG.fullmatch(value):
            problems.append(f"{key} must be lower-case letters, digits and '-' (1-32), got {value!r}")
    brokers = prov.get("brokers")
    if not isinstance(brokers, list) or not brokers:
        problems.append("brokers must list at least one mqtt:// or mqtts:// URL")
        brokers = []
    for url in brokers:
        if not isinstance(url, str) or not re.fullmatch(r"mqtts?://[A-Za-z0-9.-]+(:[0-9]{1,5})?", url):
            problems.append(f"broker {url!r} is not an mqtt:// or mqtts:// URL")
    token = prov.get("enrollment_token")
    if token is not None and (not isinstance(token, str) or not TOKEN.fullmatch(token)):
        problems.append("enrollment_token must be 16-128 letters, digits, '-' or '_'")
    tz = prov.get("timezone", "UTC")
    problems += _timezone_problems(tz)
    locale = prov.get("locale", "en_US")
    if locale not in OS_LOCALES:
        problems.append(f"locale {locale!r} is not one the image has{_hint(str(locale), set(OS_LOCALES))} "
                        f"(choose from {', '.join(OS_LOCALES)})")  # fmt: skip
    wifi = data.get("wifi", {})
    if isinstance(wifi, dict) and wifi:
        problems += _wifi_problems(wifi)
    if problems:
        raise ProvisionError(f"{source}: " + "; ".join(problems))
    return Provisioning(
        store_id=prov["store_id"], device_id=prov["device_id"], brokers=tuple(brokers),
        enrollment_token=token, timezone=str(tz), locale=str(locale),
        wifi={str(k): str(v) for k, v in wifi.items()} if isinstance(wifi, dict) else {},
    )  # fmt: skip


def _timezone_problems(tz: object) -> list[str]:
    import zoneinfo

    # Names that are files in zoneinfo but not zones (Debian's localtime links back to /etc/localtime).
    if not isinstance(tz, str) or tz in ("localtime", "posixrules") or tz.startswith(("posix/", "right/")):
        return [f"unknown time zone {tz!r}"]
    try:
        zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return [f"unknown time zone {tz!r}"]
    return []


def _wifi_problems(wifi: Mapping[str, object]) -> list[str]:
    """Problems with a [wifi] table; never quotes the key."""
    problems = []
    ssid, psk, country = wifi.get("ssid"), wifi.get("psk", ""), wifi.get("country")
    if not isinstance(ssid, str) or not 1 <= len(ssid.encode()) <= 32 or "\0" in ssid:
        problems.append("[wifi] ssid must be 1-32 bytes")
    if not isinstance(psk, str) or not (psk == "" or _PSK_HEX.fullmatch(psk) or _PASSPHRASE.fullmatch(psk)):
        problems.append("[wifi] psk must be 8-63 printable ASCII characters, 64 hex digits, or empty (open network)")
    if country is not None and (not isinstance(country, str) or not re.fullmatch(r"[A-Z]{2}", country)):
        problems.append(f"[wifi] country must be a two-letter ISO 3166 code like 'DE', got {country!r}")
    return problems


def render(p: Provisioning) -> str:
    """TOML text of a provisioning file (what ``tillbox provision write`` produces)."""
    lines = ["# tillbox provisioning file: copy to the boot partition as tillbox-provision.toml", "[provision]"]
    lines.append(f'store_id = "{p.store_id}"')
    lines.append(f'device_id = "{p.device_id}"')
    lines.append("brokers = [" + ", ".join(f'"{b}"' for b in p.brokers) + "]")
    if p.enrollment_token:
        lines.append(f'enrollment_token = "{p.enrollment_token}"')
    lines.append(f'timezone = "{p.timezone}"')
    lines.append(f'locale = "{p.locale}"')
    if p.wifi:
        lines.append("\n[wifi]")
        lines.extend(f"{k} = {json.dumps(v)}" for k, v in sorted(p.wifi.items()))
    return "\n".join(lines) + "\n"


def load(path: Path) -> Provisioning:
    """Read and validate a provisioning file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProvisionError(f"no provisioning file at {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProvisionError(f"cannot read {path}: {exc}") from None
    return parse(text, path.name)


def _write_atomic(path: Path, data: bytes, mode: int = 0o600, owner: tuple[int, int] | None = None) -> None:
    """Replace ``path`` with ``data`` (fsynced); as root, owned by ``owner``."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        if owner is not None and os.geteuid() == 0:
            os.fchown(fd, *owner)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def generate_identity(p: Provisioning) -> tuple[bytes, bytes]:
    """A new EC P-256 private key (PEM) and a CSR naming the store and device."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, p.store_id),
        x509.NameAttribute(NameOID.COMMON_NAME, f"{p.store_id}/{p.device_id}"),
    ])  # fmt: skip
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())  # fmt: skip
    return key_pem, csr.public_bytes(serialization.Encoding.PEM)


#: Sends (provisioning, csr pem) to the hub and returns (certificate pem, CA pem); raises ProvisionError.
Enroller = Callable[[Provisioning, bytes], tuple[bytes, bytes]]


def provisioned(data_dir: Path) -> dict[str, Any] | None:
    """The stored identity summary, or None before enrollment."""
    path = data_dir / IDENTITY_DIR / "device.json"
    if not path.is_file():
        return None
    result: dict[str, Any] = json.loads(path.read_text())
    return result


def _owner(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_uid, st.st_gid


def apply(boot_file: Path, data_dir: Path, enroll: Enroller, *, zoneinfo: Path = ZONEINFO) -> dict[str, Any]:
    """First-boot provisioning; idempotent. Returns the identity summary.

    Runs as root on the device; what it writes belongs to the data directory's owner (the
    daemon's user). The file's system settings are stored first (see :func:`boot_settings`),
    so rewriting the file without its token and Wi-Fi key loses nothing.
    A bad file or a refused token raises :class:`ProvisionError`, whose message is
    also written to ``DATA_DIR/provision-error.txt`` for the technician page.
    """
    error_file = data_dir / ERROR_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    owner = _owner(data_dir)
    try:
        p = load(boot_file)
        check_zone_file(p.timezone, zoneinfo)
        store_settings(data_dir, SystemSettings.from_provisioning(p, stored_settings(data_dir)))
        done = provisioned(data_dir)
        if done is not None:
            if (done["store_id"], done["device_id"]) != (p.store_id, p.device_id):
                raise ProvisionError(
                    f"this till is already provisioned as {done['store_id']}/{done['device_id']}; "
                    "re-provisioning needs `tillbox provision reset` first"
                )
            _remove_token(boot_file, p)
            return done
        if not p.enrollment_token:
            raise ProvisionError(f"{boot_file.name}: enrollment_token is missing (or was already used)")
        key_pem, csr_pem = generate_identity(p)
        cert_pem, ca_pem = enroll(p, csr_pem)
        ident = data_dir / IDENTITY_DIR
        ident.mkdir(mode=0o700, exist_ok=True)
        os.chmod(ident, 0o700)
        if os.geteuid() == 0:
            os.chown(ident, *owner)
        for name, pem in (("key.pem", key_pem), ("cert.pem", cert_pem), ("ca.pem", ca_pem)):
            _write_atomic(ident / name, pem, owner=owner)
        _write_atomic(data_dir / "tillbox.toml", _config(p, ident).encode(), owner=owner)
        summary = {"store_id": p.store_id, "device_id": p.device_id, "brokers": list(p.brokers)}
        _write_atomic(ident / "device.json", json.dumps(summary, indent=2).encode(), owner=owner)
        _remove_token(boot_file, p)
    except ProvisionError as exc:
        _write_atomic(error_file, (str(exc) + "\n").encode(), 0o644, owner)
        raise
    if error_file.exists():
        error_file.unlink()
    return summary


def _remove_token(boot_file: Path, p: Provisioning) -> None:
    """Rewrite the boot file without its token and Wi-Fi key (the FAT boot partition has no permissions to rely on)."""
    if p.enrollment_token is None and not p.wifi:
        return
    _write_atomic(boot_file, render(replace(p, enrollment_token=None, wifi={})).encode(), 0o600)


def _config(p: Provisioning, ident: Path) -> str:
    brokers = ", ".join(f'"{b}"' for b in p.brokers)
    tls = any(b.startswith("mqtts://") for b in p.brokers)
    lines = [
        "# written by tillbox provision; local changes are kept until the next provisioning",
        "[store]", f'id = "{p.store_id}"', f'device_id = "{p.device_id}"', f'timezone = "{p.timezone}"',
        "", "[sync]", "enabled = true", f"brokers = [{brokers}]",
    ]  # fmt: skip
    if tls:
        lines += [f'tls_ca_file = "{ident / "ca.pem"}"', f'tls_cert_file = "{ident / "cert.pem"}"',
                  f'tls_key_file = "{ident / "key.pem"}"']  # fmt: skip
    return "\n".join(lines) + "\n"


def reset(data_dir: Path, *, force: bool = False, stamp: str) -> Path:
    """Retire this till's identity (and its ledger) so it can be provisioned again.

    Nothing is deleted: the identity, config and ledger move to ``DATA_DIR/retired-STAMP/``.
    Refused while the ledger holds events the shop has not acknowledged, unless forced.
    """
    import shutil
    import sqlite3

    ledger = data_dir / "ledger.db"
    if ledger.exists() and not force:
        conn = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
        try:
            pending = conn.execute("SELECT count(*) FROM outbox WHERE acked_at IS NULL").fetchone()[0]
        except sqlite3.Error:
            pending = 0
        finally:
            conn.close()
        if pending:
            raise ProvisionError(
                f"{pending} event(s) have not reached the shop yet; let sync drain them first, or use --force"
            )
    target = data_dir / f"retired-{stamp}"
    target.mkdir(mode=0o700)
    for name in (IDENTITY_DIR, "tillbox.toml", "ledger.db", "ledger.db-wal", "ledger.db-shm", ERROR_FILE):
        path = data_dir / name
        if path.exists():
            shutil.move(str(path), target / name)
    return target


# -- system settings: time zone, locale, Wi-Fi, machine id ---------------------------------------


@dataclass(frozen=True)
class WifiNetwork:
    """A WPA2-Personal (or open) network; the key is kept only as the derived 256-bit PSK."""

    ssid: str
    psk_hex: str | None  # None: an open network
    country: str | None = None

    @classmethod
    def from_table(cls, wifi: Mapping[str, str]) -> WifiNetwork:
        """From a validated [wifi] table: a passphrase becomes its PSK (PBKDF2, as wpa_passphrase does)."""
        psk = wifi.get("psk", "")
        if not psk:
            psk_hex = None
        elif _PSK_HEX.fullmatch(psk):
            psk_hex = psk.lower()
        else:
            psk_hex = hashlib.pbkdf2_hmac("sha1", psk.encode(), wifi["ssid"].encode(), 4096, 32).hex()
        return cls(wifi["ssid"], psk_hex, wifi.get("country"))


@dataclass(frozen=True)
class SystemSettings:
    """What the OS takes from provisioning: time zone, locale and an optional Wi-Fi network."""

    timezone: str = "UTC"
    locale: str = "en_US"
    wifi: WifiNetwork | None = None

    @classmethod
    def from_provisioning(cls, p: Provisioning, previous: SystemSettings | None = None) -> SystemSettings:
        """The file's settings; a file without [wifi] keeps the stored network."""
        wifi = WifiNetwork.from_table(p.wifi) if p.wifi else (previous.wifi if previous else None)
        return cls(p.timezone, p.locale, wifi)

    @property
    def lang(self) -> str:
        return f"{self.locale}.UTF-8"

    def to_json(self) -> dict[str, Any]:
        wifi = None
        if self.wifi:
            wifi = {"ssid": self.wifi.ssid, "psk_hex": self.wifi.psk_hex, "country": self.wifi.country}
        return {"timezone": self.timezone, "locale": self.locale, "wifi": wifi}

    @classmethod
    def from_json(cls, data: Any, source: str) -> SystemSettings:
        """Validate stored settings as strictly as a provisioning file."""
        bad = ProvisionError(f"{source} is not valid stored settings; provision the till again")
        if not isinstance(data, dict) or set(data) != {"timezone", "locale", "wifi"}:
            raise bad
        tz, locale, wifi = data["timezone"], data["locale"], data["wifi"]
        if _timezone_problems(tz) or locale not in OS_LOCALES:
            raise bad
        network = None
        if wifi is not None:
            if not isinstance(wifi, dict) or set(wifi) != {"ssid", "psk_hex", "country"}:
                raise bad
            psk = wifi["psk_hex"]
            if (psk is not None and not (isinstance(psk, str) and re.fullmatch(r"[0-9a-f]{64}", psk))) or \
                    _wifi_problems({"ssid": wifi["ssid"], "country": wifi["country"]}):  # fmt: skip
                raise bad
            network = WifiNetwork(wifi["ssid"], psk, wifi["country"])
        return cls(tz, locale, network)


def wpa_supplicant_conf(wifi: WifiNetwork) -> str:
    """wpa_supplicant's configuration for one network (the SSID hex-encoded: no quoting to get wrong)."""
    lines = ["# tillbox: written at boot from DATA_DIR/system/settings.json; do not edit",
             "ctrl_interface=/run/wpa_supplicant", "update_config=0"]  # fmt: skip
    if wifi.country:
        lines.append(f"country={wifi.country}")
    lines += ["network={", f"\tssid={wifi.ssid.encode().hex()}", "\tscan_ssid=1"]
    lines += [f"\tkey_mgmt=WPA-PSK\n\tpsk={wifi.psk_hex}"] if wifi.psk_hex else ["\tkey_mgmt=NONE"]
    return "\n".join([*lines, "}"]) + "\n"


def check_zone_file(tz: str, zoneinfo: Path = ZONEINFO) -> None:
    """The zone must exist in the system's tzdata, which /etc/localtime points into (skipped where there is none)."""
    if zoneinfo.is_dir() and not (zoneinfo / tz).is_file():
        raise ProvisionError(f"time zone {tz!r} is not in this system's time zone data ({zoneinfo})")


def _open_system_dir(data_dir: Path, *, create: bool) -> int | None:
    """An fd of ``DATA_DIR/system``, refusing it unless it is a real directory only this user can change.

    The daemon owns the data directory, so it could swap ``system`` for its own; what it
    makes is owned by it, not by root, and is refused here.
    """
    path = data_dir / SYSTEM_DIR
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ProvisionError(f"{path} is not a directory ({exc.strerror}); refusing the stored settings") from None
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or st.st_mode & 0o077:
        os.close(fd)
        raise ProvisionError(f"{path} must belong to uid {os.geteuid()} with mode 0700; refusing the stored settings")
    return fd


def _system_dir(data_dir: Path) -> int:
    fd = _open_system_dir(data_dir, create=True)
    if fd is None:  # removed between mkdir and open
        raise ProvisionError(f"{data_dir / SYSTEM_DIR} vanished while it was being written")
    return fd


def _read_in(dir_fd: int, name: str) -> bytes | None:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ProvisionError(f"cannot read {SYSTEM_DIR}/{name}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        if os.fstat(fh.fileno()).st_uid != os.geteuid():
            raise ProvisionError(f"{SYSTEM_DIR}/{name} belongs to another user; refusing it")
        return fh.read(64 * 1024)


def _write_in(dir_fd: int, name: str, data: bytes, mode: int) -> bool:
    """Atomically replace ``name`` in the directory unless it already holds ``data``; True when written."""
    try:
        if _read_in(dir_fd, name) == data:
            return False
    except ProvisionError:
        pass
    tmp = f".{name}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp, dir_fd=dir_fd)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode, dir_fd=dir_fd)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    os.fsync(dir_fd)
    return True


def stored_settings(data_dir: Path) -> SystemSettings | None:
    """The settings stored by an earlier boot, or None."""
    fd = _open_system_dir(data_dir, create=False)
    if fd is None:
        return None
    try:
        raw = _read_in(fd, SETTINGS_FILE)
    finally:
        os.close(fd)
    if raw is None:
        return None
    source = f"{SYSTEM_DIR}/{SETTINGS_FILE}"
    try:
        data = json.loads(raw)
    except ValueError:
        raise ProvisionError(f"{source} is not valid stored settings; provision the till again") from None
    return SystemSettings.from_json(data, source)


def store_settings(data_dir: Path, settings: SystemSettings) -> bool:
    """Keep the settings in ``DATA_DIR/system/settings.json`` (0600); True when they changed."""
    fd = _system_dir(data_dir)
    try:
        text = json.dumps(settings.to_json(), indent=1, sort_keys=True) + "\n"
        return _write_in(fd, SETTINGS_FILE, text.encode(), 0o600)
    finally:
        os.close(fd)


def keep_machine_id(data_dir: Path, current: Path = Path("/etc/machine-id")) -> str | None:
    """Store this boot's machine id unless one is stored; returns the stored id.

    The initrd (image/recipe.py, ``initramfs_machine_id``) reads it on the next boot and
    mounts it over the read-only root's empty /etc/machine-id before systemd starts.
    """
    fd = _system_dir(data_dir)
    try:
        stored = (_read_in(fd, MACHINE_ID_FILE) or b"").decode("ascii", "replace").strip()
        if _MACHINE_ID.fullmatch(stored) and stored != "0" * 32:
            return stored
        try:
            now = current.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            return None
        if not _MACHINE_ID.fullmatch(now) or now == "0" * 32:
            return None
        _write_in(fd, MACHINE_ID_FILE, f"{now}\n".encode(), 0o644)
        return now
    finally:
        os.close(fd)


def _replace_file(path: Path, text: str, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def render_settings(settings: SystemSettings, run_dir: Path, zoneinfo: Path = ZONEINFO) -> None:
    """Write what the root's /etc links point at into ``run_dir`` (a tmpfs, remade each boot).

    ``localtime`` (a link into the zoneinfo), ``timezone``, ``locale.conf``, ``environment``
    (TZ and LANG for the kiosk) and, with Wi-Fi, ``wpa_supplicant-wlan0.conf`` (0600).
    """
    run_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    link = run_dir / "localtime"
    tmp = run_dir / ".localtime.tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(zoneinfo / settings.timezone)
    os.replace(tmp, link)
    _replace_file(run_dir / "timezone", settings.timezone + "\n", 0o644)
    _replace_file(run_dir / "locale.conf", f"LANG={settings.lang}\n", 0o644)
    _replace_file(run_dir / "environment", f"TZ={settings.timezone}\nLANG={settings.lang}\n", 0o644)
    wpa = run_dir / f"wpa_supplicant-{WIFI_INTERFACE}.conf"
    if settings.wifi:
        _replace_file(wpa, wpa_supplicant_conf(settings.wifi), 0o600)
    else:
        wpa.unlink(missing_ok=True)


def boot_settings(boot_file: Path, data_dir: Path, run_dir: Path, *, zoneinfo: Path = ZONEINFO,
                  machine_id: Path = Path("/etc/machine-id")) -> SystemSettings:  # fmt: skip
    """Early boot (before the network): apply the system settings and keep the machine id.

    A valid provisioning file's settings are stored, and its Wi-Fi key is removed from the
    boot partition; otherwise the stored settings (or the defaults) apply. Whatever happens,
    ``run_dir`` is written, so the boot goes on; a bad file then raises :class:`ProvisionError`
    (also written to ``DATA_DIR/provision-error.txt``).
    """
    error: ProvisionError | None = None
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        settings = stored_settings(data_dir) or SystemSettings()
    except ProvisionError as exc:
        settings, error = SystemSettings(), exc
    if boot_file.exists():
        try:
            p = load(boot_file)
            check_zone_file(p.timezone, zoneinfo)
            settings = SystemSettings.from_provisioning(p, settings)
            store_settings(data_dir, settings)
            if p.wifi:  # stored: the key leaves the boot partition now, even before enrollment
                _write_atomic(boot_file, render(replace(p, wifi={})).encode(), 0o600)
        except ProvisionError as exc:
            error = exc
    try:
        check_zone_file(settings.timezone, zoneinfo)
    except ProvisionError as exc:
        settings, error = replace(settings, timezone="UTC"), exc
    render_settings(settings, run_dir, zoneinfo)
    try:
        keep_machine_id(data_dir, machine_id)
    except ProvisionError as exc:
        error = error or exc
    if error is not None:
        _write_atomic(data_dir / ERROR_FILE, (str(error) + "\n").encode(), 0o644, _owner(data_dir))
        raise error
    return settings


def main(argv: list[str] | None = None) -> int:
    """``python -m appliance.provision settings``: the early-boot step (tillbox-settings.service)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m appliance.provision")
    sub = parser.add_subparsers(dest="cmd", required=True)
    st = sub.add_parser("settings", help="apply time zone, locale and Wi-Fi; keep the machine id (early boot)")
    st.add_argument("--file", type=Path, required=True, help="the provisioning file on the boot partition")
    st.add_argument("--data-dir", type=Path, required=True)
    st.add_argument("--run-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        s = boot_settings(args.file, args.data_dir, args.run_dir)
    except ProvisionError as exc:
        print(f"tillbox: provisioning failed: {exc}", file=sys.stderr)
        return 2
    wifi = f"Wi-Fi {s.wifi.ssid!r}" if s.wifi else "no Wi-Fi"
    print(f"tillbox: time zone {s.timezone}, locale {s.lang}, {wifi}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
