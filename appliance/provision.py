"""Provisioning: the technician's file on the boot partition, and first-boot enrollment.

The file (``tillbox-provision.toml``) names the store and device, the shop's brokers,
a one-time enrollment token, and optionally Wi-Fi, time zone and locale. On first
boot the device generates its own key pair, sends a certificate signing request
and the token to the hub's enrollment endpoint over MQTT, stores the identity it
gets back in the data directory (readable only by the daemon), writes its config,
and removes the token from the boot partition.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.errors import ConfigError

SLUG = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
TOKEN = re.compile(r"[A-Za-z0-9_-]{16,128}")
IDENTITY_DIR = "identity"
ERROR_FILE = "provision-error.txt"

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
    try:
        import zoneinfo

        zoneinfo.ZoneInfo(str(tz))
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        problems.append(f"unknown time zone {tz!r}")
    wifi = data.get("wifi", {})
    if isinstance(wifi, dict) and wifi and not isinstance(wifi.get("ssid"), str):
        problems.append("[wifi] needs an ssid")
    if problems:
        raise ProvisionError(f"{source}: " + "; ".join(problems))
    return Provisioning(
        store_id=prov["store_id"], device_id=prov["device_id"], brokers=tuple(brokers),
        enrollment_token=token, timezone=str(tz), locale=str(prov.get("locale", "en_US")),
        wifi={str(k): str(v) for k, v in wifi.items()} if isinstance(wifi, dict) else {},
    )  # fmt: skip


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


def _write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
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


def apply(boot_file: Path, data_dir: Path, enroll: Enroller) -> dict[str, Any]:
    """First-boot provisioning; idempotent. Returns the identity summary.

    A bad file or a refused token raises :class:`ProvisionError`, whose message is
    also written to ``DATA_DIR/provision-error.txt`` for the technician page.
    """
    error_file = data_dir / ERROR_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        p = load(boot_file)
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
        _write_atomic(ident / "key.pem", key_pem)
        _write_atomic(ident / "cert.pem", cert_pem)
        _write_atomic(ident / "ca.pem", ca_pem)
        _write_atomic(data_dir / "tillbox.toml", _config(p, ident).encode())
        summary = {"store_id": p.store_id, "device_id": p.device_id, "brokers": list(p.brokers)}
        _write_atomic(ident / "device.json", json.dumps(summary, indent=2).encode())
        _remove_token(boot_file, p)
    except ProvisionError as exc:
        _write_atomic(error_file, (str(exc) + "\n").encode(), 0o644)
        raise
    if error_file.exists():
        error_file.unlink()
    return summary


def _remove_token(boot_file: Path, p: Provisioning) -> None:
    """Rewrite the boot file without its token (the FAT boot partition has no permissions to rely on)."""
    if p.enrollment_token is None:
        return
    cleared = Provisioning(p.store_id, p.device_id, p.brokers, None, p.timezone, p.locale, {})
    _write_atomic(boot_file, render(cleared).encode(), 0o600)


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
