"""Signed updates, installed beside the running version and switched atomically.

Layout under the install root (``/opt/tillbox`` on the appliance)::

    versions/<version>/    one directory per installed version (a venv or a PyInstaller build)
    current -> versions/<version>     the version systemd starts
    previous -> versions/<version>    the one to go back to
    state.json             the pending update and the versions that failed their gate

A bundle is a tar file with ``manifest.json`` (version and the SHA-256 of every
payload file), ``manifest.sig`` (an ed25519 signature of the manifest bytes) and
``payload/``. A new version is *pending* until the health gate passes: the daemon
is ready, the ledger verifies and the UI answers (peripherals are not part of it).
A version that fails the gate is rolled back. An update never starts during an
open shift or sale unless forced.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from appliance.errors import TillboxError

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
PAYLOAD = "payload"


class UpdateError(TillboxError):
    """A bundle was refused or could not be installed."""


class UpdateBusy(UpdateError):
    """The till is trading (an open sale or shift); try again later or force."""

    retryable = True


@dataclass(frozen=True)
class Manifest:
    """What a bundle claims to contain."""

    version: str
    files: dict[str, str]

    def to_bytes(self) -> bytes:
        return json.dumps({"version": self.version, "files": self.files}, sort_keys=True, indent=1).encode()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_public_keys(paths: Iterable[Path]) -> list[Any]:
    """Trusted ed25519 public keys (PEM files)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    keys = []
    for path in paths:
        key = load_pem_public_key(path.read_bytes())
        if not isinstance(key, Ed25519PublicKey):
            raise UpdateError(f"{path} is not an ed25519 public key")
        keys.append(key)
    return keys


def build_bundle(src: Path, version: str, private_key_pem: bytes, out: Path) -> Manifest:
    """Pack ``src`` as a signed bundle (release tooling: ``tillbox update build``)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key(private_key_pem, None)
    if not isinstance(key, Ed25519PrivateKey):
        raise UpdateError("the signing key must be an ed25519 private key")
    files = {}
    for path in sorted(p for p in src.rglob("*") if p.is_file() and not p.is_symlink()):
        files[path.relative_to(src).as_posix()] = _sha256(path.read_bytes())
    manifest = Manifest(version, files)
    body = manifest.to_bytes()
    with tarfile.open(out, "w") as tar:
        for name, data in ((MANIFEST, body), (SIGNATURE, base64.b64encode(key.sign(body)))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for rel in files:
            tar.add(src / rel, arcname=f"{PAYLOAD}/{rel}", recursive=False)
    return manifest


def verify_bundle(bundle: Path, keys: list[Any]) -> Manifest:
    """Check the signature and every payload hash; refuse anything else in the archive."""
    from cryptography.exceptions import InvalidSignature

    try:
        with tarfile.open(bundle, "r") as tar:
            members = {m.name: m for m in tar.getmembers()}
            body = _read(tar, members, MANIFEST)
            signature = base64.b64decode(_read(tar, members, SIGNATURE), validate=True)
            for key in keys:
                try:
                    key.verify(signature, body)
                    break
                except InvalidSignature:
                    continue
            else:
                raise UpdateError(f"{bundle.name}: bad signature (not signed by a trusted key)")
            raw = json.loads(body)
            manifest = Manifest(str(raw["version"]), {str(k): str(v) for k, v in raw["files"].items()})
            _check_version(manifest.version)
            expected = {f"{PAYLOAD}/{rel}" for rel in manifest.files}
            extra = set(members) - expected - {MANIFEST, SIGNATURE, PAYLOAD}
            extra = {name for name in extra if not members[name].isdir()}
            if extra:
                raise UpdateError(f"{bundle.name}: unexpected file {sorted(extra)[0]} in the bundle")
            for rel, digest in manifest.files.items():
                _safe(rel)
                if _sha256(_read(tar, members, f"{PAYLOAD}/{rel}")) != digest:
                    raise UpdateError(f"{bundle.name}: {rel} does not match its manifest hash")
    except (tarfile.TarError, OSError, ValueError, KeyError) as exc:
        raise UpdateError(f"{bundle.name}: not a valid update bundle ({exc})") from None
    return manifest


def _read(tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo], name: str) -> bytes:
    member = members.get(name)
    if member is None or not member.isfile():
        raise UpdateError(f"bundle lacks {name}")
    handle = tar.extractfile(member)
    assert handle is not None
    return handle.read()


def _safe(rel: str) -> None:
    path = PurePosixPath(rel)
    if path.is_absolute() or ".." in path.parts:
        raise UpdateError(f"bundle path {rel!r} escapes the install directory")


def _check_version(version: str) -> None:
    if not version or len(version) > 64 or not all(c.isalnum() or c in ".-+_" for c in version):
        raise UpdateError(f"bad version {version!r} in the manifest")


class Installer:
    """Installs, switches, confirms and rolls back versions under one root."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "versions").mkdir(parents=True, exist_ok=True)

    # -- state -----------------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        path = self.root / "state.json"
        return json.loads(path.read_text()) if path.exists() else {"pending": None, "failed": []}

    def _save(self, state: dict[str, Any]) -> None:
        tmp = self.root / "state.json.tmp"
        tmp.write_text(json.dumps(state, indent=1))
        with tmp.open("rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, self.root / "state.json")

    def _link(self, name: str) -> str | None:
        path = self.root / name
        return os.readlink(path).rsplit("/", 1)[-1] if path.is_symlink() else None

    @property
    def current(self) -> str | None:
        return self._link("current")

    @property
    def previous(self) -> str | None:
        return self._link("previous")

    @property
    def pending(self) -> str | None:
        pending: str | None = self._state()["pending"]
        return pending

    def _point(self, name: str, version: str) -> None:
        """Atomically repoint a symlink: make the new link beside it, then rename over it."""
        tmp = self.root / f".{name}.new"
        if tmp.is_symlink():
            tmp.unlink()
        tmp.symlink_to(f"versions/{version}")
        os.replace(tmp, self.root / name)
        dir_fd = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    # -- operations ------------------------------------------------------------------------------

    def install(self, bundle: Path, keys: list[Any], *, busy: Callable[[], str | None], force: bool = False) -> str:
        """Verify, unpack beside the running version and switch to it; the new version is pending."""
        manifest = verify_bundle(bundle, keys)
        reason = busy()
        if reason and not force:
            raise UpdateBusy(f"not updating now: {reason}; it will be applied when the till is idle (or use --force)")
        if manifest.version == self.current:
            raise UpdateError(f"version {manifest.version} is already running")
        target = self.root / "versions" / manifest.version
        staging = self.root / "versions" / f".{manifest.version}.partial"
        if staging.exists():
            _rmtree(staging)
        with tarfile.open(bundle, "r") as tar:
            for rel in manifest.files:
                member = tar.getmember(f"{PAYLOAD}/{rel}")
                handle = tar.extractfile(member)
                assert handle is not None
                out = staging / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(handle.read())
                os.chmod(out, member.mode & 0o755)
        if target.exists():
            _rmtree(target)
        os.replace(staging, target)
        old = self.current
        if old:
            self._point("previous", old)
        self._point("current", manifest.version)
        state = self._state()
        state["pending"] = manifest.version
        self._save(state)
        return manifest.version

    def gate(self, healthy: Callable[[], bool]) -> bool:
        """Run the health gate on a pending version: confirm it, or roll back. True when good."""
        pending = self.pending
        if pending is None:
            return True
        state = self._state()
        if healthy():
            state["pending"] = None
            self._save(state)
            return True
        state["failed"] = [*state["failed"], pending]
        state["pending"] = None
        previous = self.previous
        if previous:
            self._point("current", previous)
        self._save(state)
        return False


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path)


def trading(data_dir: Path) -> str | None:
    """Why the till is busy (an open shift, or a sale on screen), or None when it can be updated."""
    import sqlite3

    marker = data_dir / "sale-open"
    if marker.exists():
        return "a sale is open"
    ledger = data_dir / "ledger.db"
    if ledger.exists():
        conn = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
        try:
            row = conn.execute("SELECT id FROM shifts WHERE closed_at IS NULL").fetchone()
        except sqlite3.Error:
            row = None
        finally:
            conn.close()
        if row:
            return f"shift {row[0]} is open"
    return None
