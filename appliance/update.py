"""Signed updates, installed beside the running version and switched atomically.

Layout under the install root (``/opt/tillbox`` on the appliance)::

    versions/<version>/    one directory per installed version (a relocatable venv)
    current -> versions/<version>     the version systemd starts
    previous -> versions/<version>    the one to go back to
    state.json             the pending update and the versions that failed their gate

A bundle is a tar file with ``manifest.json`` (version and the SHA-256 of every
payload file), ``manifest.sig`` (an ed25519 signature of the manifest bytes) and
``payload/``. A new version is *pending* until the health gate passes: the daemon
is ready, the ledger verifies and the UI answers (peripherals are not part of it).
A version that fails the gate is rolled back. An update never starts during an
open shift or sale unless forced.

On the appliance the install root is on the read-only root filesystem. Installing and
gating (as root) remount it read-write only while they write (:func:`writable`), then
sync and remount it read-only, also on error. The code root runs stays on a filesystem
the daemon's user can never write.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from appliance.errors import TillboxError

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
PAYLOAD = "payload"
_CHUNK = 1 << 20


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
    import io

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    _check_version(version)
    key = load_pem_private_key(private_key_pem, None)
    if not isinstance(key, Ed25519PrivateKey):
        raise UpdateError("the signing key must be an ed25519 private key")
    files = {}
    for path in sorted(p for p in src.rglob("*") if p.is_file() and not p.is_symlink()):
        files[path.relative_to(src).as_posix()] = _sha256(path.read_bytes())
    manifest = Manifest(version, files)
    body = manifest.to_bytes()
    # GNU format: one header per file (PAX adds a second for each float mtime), half the parsing on a Pi.
    with tarfile.open(out, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in ((MANIFEST, body), (SIGNATURE, base64.b64encode(key.sign(body)))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for rel in files:
            tar.add(src / rel, arcname=f"{PAYLOAD}/{rel}", recursive=False)
    return manifest


def _signed_manifest(tar: tarfile.TarFile, keys: list[Any], name: str) -> Manifest:
    """The manifest, once its signature is good and the archive holds exactly its files (hashes unchecked)."""
    from cryptography.exceptions import InvalidSignature

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
        raise UpdateError(f"{name}: bad signature (not signed by a trusted key)")
    raw = json.loads(body)
    manifest = Manifest(str(raw["version"]), {str(k): str(v) for k, v in raw["files"].items()})
    _check_version(manifest.version)
    expected = {f"{PAYLOAD}/{rel}" for rel in manifest.files}
    extra = {n for n in set(members) - expected - {MANIFEST, SIGNATURE, PAYLOAD} if not members[n].isdir()}
    if extra:
        raise UpdateError(f"{name}: unexpected file {sorted(extra)[0]} in the bundle")
    for rel in manifest.files:
        _safe(rel)
        member = members.get(f"{PAYLOAD}/{rel}")
        if member is None or not member.isfile():
            raise UpdateError(f"{name}: {rel} is missing or not a regular file")
    return manifest


def _copy_hashed(src: IO[bytes], dst: IO[bytes] | None) -> str:
    digest = hashlib.sha256()
    while block := src.read(_CHUNK):
        digest.update(block)
        if dst is not None:
            dst.write(block)
    return digest.hexdigest()


@contextmanager
def _bundle(bundle: Path) -> Iterator[tarfile.TarFile]:
    """The bundle as a tar file; archive and manifest damage become one clear UpdateError."""
    try:
        with tarfile.open(bundle, "r") as tar:
            yield tar
    except UpdateError:
        raise
    except (tarfile.TarError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UpdateError(f"{bundle.name}: not a valid update bundle ({exc})") from None
    except OSError as exc:
        raise UpdateError(f"{bundle.name}: cannot read the bundle ({exc.strerror or exc})") from None


def verify_bundle(bundle: Path, keys: list[Any]) -> Manifest:
    """Check the signature and every payload hash; refuse anything else in the archive."""
    with _bundle(bundle) as tar:
        manifest = _signed_manifest(tar, keys, bundle.name)
        members = {m.name: m for m in tar.getmembers()}
        for rel, digest in manifest.files.items():
            handle = tar.extractfile(members[f"{PAYLOAD}/{rel}"])
            assert handle is not None
            if _copy_hashed(handle, None) != digest:
                raise UpdateError(f"{bundle.name}: {rel} does not match its manifest hash")
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
    if (not version or len(version) > 64 or version[0] == "."
            or not all(c.isascii() and (c.isalnum() or c in ".-+_") for c in version)):  # fmt: skip
        raise UpdateError(f"bad version {version!r} in the manifest")


# -- the read-only root --------------------------------------------------------------------------


def _existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def read_only(path: Path) -> bool:
    """Whether the filesystem holding ``path`` (or its nearest existing parent) is mounted read-only."""
    return bool(os.statvfs(_existing(path)).f_flag & os.ST_RDONLY)


def mount_point(path: Path, mountinfo: str | None = None) -> str:
    """The mount point holding ``path``: the longest mount point in /proc/self/mountinfo above it."""
    if mountinfo is None:
        mountinfo = Path("/proc/self/mountinfo").read_text()
    target = str(_existing(path).resolve())
    best = "/"
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        point = fields[4]
        for escaped, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
            point = point.replace(escaped, char)
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) > len(best):
            best = point
    return best


def _mount(args: list[str]) -> str | None:
    """Run ``mount ARGS``: None on success, else its message."""
    try:
        result = subprocess.run(["mount", *args], capture_output=True, text=True, check=False, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return None if result.returncode == 0 else (result.stderr.strip() or f"exit {result.returncode}")


def check_can_write(path: Path, *, euid: Callable[[], int] = os.geteuid) -> None:
    """Refuse early, with the reason, when ``path`` is read-only and this process cannot remount it."""
    if read_only(path) and euid() != 0:
        raise UpdateError(f"{path} is on a read-only filesystem: run this as root (it is remounted "
                          "read-write only while the update is written)")  # fmt: skip


@contextmanager
def writable(path: Path, *, euid: Callable[[], int] = os.geteuid, retries: int = 5) -> Iterator[None]:
    """Make the filesystem holding ``path`` writable for the block, then sync and make it read-only again.

    A no-op when it is writable already (a developer machine, or a root that someone remounted
    by hand, which is left as found). Read-only again also when the block raises. If the
    read-only remount keeps failing (a file open for writing), the root stays writable until
    the next boot mounts it read-only; that is logged, not raised: what the block wrote is on
    the card (or the block's own error is on its way).
    """
    if not read_only(path):
        yield
        return
    check_can_write(path, euid=euid)
    point = mount_point(path)
    problem = _mount(["-o", "remount,rw", point])
    if problem:
        raise UpdateError(f"cannot remount {point} read-write for the update: {problem}")
    logger.info("%s is writable for the update", point)
    try:
        yield
    finally:
        os.sync()
        for attempt in range(retries):
            problem = _mount(["-o", "remount,ro", point])
            if problem is None:
                logger.info("%s is read-only again", point)
                break
            time.sleep(0.2 * (attempt + 1))
        else:
            logger.warning("could not remount %s read-only (%s); it will be read-only after a reboot", point, problem)


# -- installing ----------------------------------------------------------------------------------


class Installer:
    """Installs, switches, confirms and rolls back versions under one root."""

    def __init__(self, root: Path) -> None:
        self.root = root

    # -- state -----------------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        path = self.root / "state.json"
        return json.loads(path.read_text()) if path.exists() else {"pending": None, "failed": []}

    def _fsync_root(self) -> None:
        dir_fd = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _save(self, state: dict[str, Any]) -> None:
        tmp = self.root / "state.json.tmp"
        with tmp.open("w") as fh:
            fh.write(json.dumps(state, indent=1))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.root / "state.json")
        self._fsync_root()

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

    @property
    def failed(self) -> list[str]:
        """Versions that failed their health gate, oldest first."""
        return [str(v) for v in self._state()["failed"]]

    def _point(self, name: str, version: str) -> None:
        """Atomically repoint a symlink: make the new link beside it, then rename over it."""
        tmp = self.root / f".{name}.new"
        if tmp.is_symlink():
            tmp.unlink()
        tmp.symlink_to(f"versions/{version}")
        os.replace(tmp, self.root / name)
        self._fsync_root()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """One installer or gate at a time (a lock on the install root directory itself)."""
        if not self.root.exists():
            self.root.mkdir(parents=True)  # a fresh developer install root; the image has one
        fd = os.open(self.root, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _prune(self, keep: set[str]) -> None:
        """Remove versions nothing points at any more, and staging left by an interrupted install."""
        versions = self.root / "versions"
        for entry in sorted(versions.iterdir()) if versions.is_dir() else []:
            if entry.name not in keep and entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)

    # -- operations ------------------------------------------------------------------------------

    def install(self, bundle: Path, keys: list[Any], *, busy: Callable[[], str | None], force: bool = False) -> str:
        """Verify, unpack beside the running version and switch to it; the new version is pending.

        Crash-safe at every step: files are unpacked into a staging directory and synced before
        it is renamed into place; ``previous`` and the pending state are written before
        ``current`` is switched, and the gate ignores a pending version ``current`` never reached.
        """
        check_can_write(self.root)
        with _bundle(bundle) as tar:
            manifest = _signed_manifest(tar, keys, bundle.name)
            reason = busy()
            if reason and not force:
                raise UpdateBusy(f"not updating now: {reason}; try again when the till is idle (or use --force)")
            with self._locked():
                current = self.current
                if manifest.version == current:
                    raise UpdateError(f"version {manifest.version} is already running")
                if self.pending is not None and self.pending == current:
                    raise UpdateError(f"version {current} has not passed its health gate yet; run "
                                      "`tillbox update gate` (or reboot) first")  # fmt: skip
                with writable(self.root):
                    # Only the running version stays: the new one takes the place of the old fallback.
                    self._prune({current} if current else set())
                    self._unpack(tar, manifest, bundle.name)
                    if current:
                        self._point("previous", current)
                    state = self._state()
                    state["pending"] = manifest.version
                    self._save(state)
                    self._point("current", manifest.version)
        return manifest.version

    def _unpack(self, tar: tarfile.TarFile, manifest: Manifest, name: str) -> None:
        """Unpack the payload to ``versions/<version>`` through a staging directory, checking every hash."""
        versions = self.root / "versions"
        versions.mkdir(mode=0o755, exist_ok=True)
        target = versions / manifest.version
        staging = versions / f".{manifest.version}.partial"
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir()
        os.chmod(staging, 0o755)  # noqa: S103 - code the daemon's user runs
        members = {m.name: m for m in tar.getmembers()}  # tar.getmember() scans the whole list each time
        made = {staging}
        try:
            for rel, digest in manifest.files.items():
                member = members[f"{PAYLOAD}/{rel}"]
                handle = tar.extractfile(member)
                assert handle is not None
                out = staging / rel
                _makedirs(out.parent, made)
                with out.open("wb") as fh:
                    if _copy_hashed(handle, fh) != digest:
                        raise UpdateError(f"{name}: {rel} does not match its manifest hash")
                # Readable by the daemon's user whatever the umask or the modes the release was packed with.
                os.chmod(out, 0o755 if member.mode & 0o111 else 0o644)
                # Keep the build's times: Python checks its .pyc files against their sources' mtime,
                # and on a read-only root it could not rewrite them.
                os.utime(out, (member.mtime, member.mtime))
            os.sync()  # every file is on the card before anything points at it
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def gate(self, healthy: Callable[[], bool]) -> bool:
        """Run the health gate on a pending version: confirm it, or roll back. True when good."""
        pending = self.pending
        if pending is None:
            return True
        if pending != self.current:
            # An install stopped before it switched ``current``: nothing to judge.
            with self._locked(), writable(self.root):
                state = self._state()
                state["pending"] = None
                self._save(state)
            return True
        good = healthy()
        with self._locked(), writable(self.root):
            state = self._state()
            state["pending"] = None
            if not good:
                state["failed"] = [*state["failed"], pending]
                previous = self.previous
                if previous and previous != pending and (self.root / "versions" / previous).is_dir():
                    self._point("current", previous)
            self._save(state)
        return good


def _makedirs(path: Path, made: set[Path]) -> None:
    """``mkdir -p`` with mode 0755 on every directory it makes, whatever the umask."""
    if path in made:
        return
    _makedirs(path.parent, made)
    path.mkdir(exist_ok=True)
    os.chmod(path, 0o755)  # noqa: S103 - code the daemon's user runs
    made.add(path)


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
